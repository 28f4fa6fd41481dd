//! One conformance suite for the `EventLog` trait, run against every backend: the
//! embedded log and JetStream (a real single-node `nats-server`). Each test is written
//! once over [`Backend`] and instantiated per backend by `conformance!` at the bottom.
//!
//! What every backend must do: appends are ordered and read back whole from any offset;
//! an append whose expected position is stale stores nothing, also among many lots'
//! appends in flight at once, each of which gets its own answer; what was acknowledged is
//! there after a restart, under the same log id; a subscription catches up and follows;
//! the lots on top of it take a client event id once, also after a restart; and two
//! writers of one lot (two registries: one process twice for the embedded log, two
//! "nodes" with their own copies for JetStream) never break `0 <= occupancy <=
//! capacity` nor count an event twice.

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use parkade::domain::{Capacity, LotEvent, LotId, LotName, NewEvent, Timestamp};
use parkade::log::jetstream::{JetStreamLog, JetStreamOptions};
use parkade::log::{Appended, EventLog, Expect, FileLog, LogError, LogOptions, Subscription};
use parkade::Lots;
use parkade::{LotOptions, Outcome};
use uuid::Uuid;

use crate::common::nats::Nats;

/// A backend under test, with what it needs to run.
pub enum Backend {
    Embedded(tempfile::TempDir),
    JetStream(Nats, tempfile::TempDir),
}

impl Backend {
    pub fn embedded() -> Backend {
        Backend::Embedded(crate::common::data_dir())
    }

    pub fn jetstream() -> Backend {
        Backend::JetStream(Nats::single(), crate::common::data_dir())
    }

    /// Open the log as one process would (`node` names its local folder; the embedded
    /// log has one folder, whatever the node).
    pub async fn open(&self, node: &str) -> Arc<dyn EventLog> {
        match self {
            Backend::Embedded(dir) => Arc::new(
                FileLog::open(dir.path().join("log"), LogOptions::default())
                    .expect("the embedded log opens"),
            ),
            Backend::JetStream(nats, dir) => Arc::new(
                JetStreamLog::open(
                    &JetStreamOptions {
                        url: nats.urls(),
                        stream: "PARKADE".into(),
                        replicas: 1,
                        credentials: None,
                        max_copy_lag: parkade::log::jetstream::DEFAULT_MAX_COPY_LAG,
                    },
                    &dir.path().join(node),
                    LogOptions::default(),
                )
                .await
                .expect("the JetStream log opens"),
            ),
        }
    }

    /// Two writers of the same log: one process's log twice for the embedded log (one
    /// folder, one writer), two nodes' for JetStream.
    pub async fn two_writers(&self) -> (Arc<dyn EventLog>, Arc<dyn EventLog>) {
        let a = self.open("a").await;
        let b = match self {
            Backend::Embedded(_) => a.clone(),
            Backend::JetStream(..) => self.open("b").await,
        };
        (a, b)
    }
}

fn lot(id: &str) -> LotId {
    LotId::parse(id).unwrap()
}

/// `n` arrivals at lot `id` with lot sequences from `from_seq`, each with its own id.
pub fn arrivals(id: &str, from_seq: u64, n: u64) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            lot_id: lot(id),
            lot_seq: from_seq + i,
            event_id: Uuid::now_v7(),
            client_event_id: true,
            occurred_at: Timestamp::now(),
            event: LotEvent::VehicleArrived,
            occupancy: (from_seq + i) as u32,
            capacity: 1_000,
        })
        .collect()
}

/// Append and wait until durable; the offsets.
async fn append(
    log: &dyn EventLog,
    expect: Expect,
    events: &[NewEvent],
) -> Result<Vec<u64>, LogError> {
    let offsets = match log.append(expect, events)? {
        Appended::Ordered(first) => (first..first + events.len() as u64).collect(),
        Appended::Acknowledging(ack) => ack.await?,
    };
    log.wait_durable(offsets.last().map_or(0, |o| o + 1))
        .await?;
    Ok(offsets)
}

/// Every durable event: (offset, lot, lot_seq, event id).
fn read_all(log: &dyn EventLog) -> Vec<(u64, String, u64, Uuid)> {
    let mut out = Vec::new();
    parkade::log::scan(log, 0, log.durable_end(), 1000, |batch| {
        out.extend(batch.iter().map(|e| {
            (
                e.offset,
                e.event.lot_id.to_string(),
                e.event.lot_seq,
                e.event.event_id,
            )
        }));
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn keys(offsets: &[u64], events: &[NewEvent]) -> Vec<(u64, String, u64, Uuid)> {
    offsets
        .iter()
        .zip(events)
        .map(|(o, e)| (*o, e.lot_id.to_string(), e.lot_seq, e.event_id))
        .collect()
}

pub async fn appends_are_ordered_dense_and_read_back_from_any_offset(b: Backend) {
    let log = b.open("a").await;
    let north = arrivals("north", 1, 5);
    let west = arrivals("west.mall", 1, 3);
    let o1 = append(&*log, Expect::Last(None), &north).await.unwrap();
    let o2 = append(&*log, Expect::Last(None), &west).await.unwrap();
    assert_eq!(o1, [0, 1, 2, 3, 4]);
    assert_eq!(o2, [5, 6, 7]);
    let more = arrivals("north", 6, 2);
    let o3 = append(&*log, Expect::Last(Some(4)), &more).await.unwrap();
    assert_eq!(o3, [8, 9]);
    let sent = [keys(&o1, &north), keys(&o2, &west), keys(&o3, &more)].concat();
    assert_eq!(read_all(&*log), sent);
    assert_eq!(log.durable_end(), 10);
    for from in [0, 3, 7, 9, 10] {
        let mut cursor = log.cursor(from);
        let got = cursor.next_batch(100).unwrap();
        let want: Vec<u64> = (from..10).collect();
        assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), want);
    }
    // A lot's own events after a position, as a writer that lost a conflict reads them.
    let north_after = log.read_lot(&lot("north"), Some(2)).await.unwrap();
    assert_eq!(
        north_after.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [3, 4, 8, 9]
    );
    let west_all = log.read_lot(&lot("west.mall"), None).await.unwrap();
    assert_eq!(west_all.len(), 3);
    assert!(log.read_lot(&lot("none"), None).await.unwrap().is_empty());
}

pub async fn a_stale_expected_position_is_a_conflict_and_stores_nothing(b: Backend) {
    let log = b.open("a").await;
    append(&*log, Expect::Last(None), &arrivals("north", 1, 3))
        .await
        .unwrap();
    for stale in [None, Some(0), Some(1), Some(7)] {
        match append(&*log, Expect::Last(stale), &arrivals("north", 4, 2)).await {
            Err(LogError::Conflict { lot, expected }) => {
                assert_eq!((lot.as_str(), expected), ("north", stale))
            }
            other => panic!("expected {stale:?}: not a conflict: {other:?}"),
        }
    }
    // Other lots are not held up, and nothing of the refused appends is there.
    append(&*log, Expect::Last(None), &arrivals("west", 1, 1))
        .await
        .unwrap();
    append(&*log, Expect::Last(Some(2)), &arrivals("north", 4, 1))
        .await
        .unwrap();
    let all = read_all(&*log);
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(
        all.iter().map(|k| k.2).collect::<Vec<_>>(),
        [1, 2, 3, 1, 4],
        "lot sequences as appended"
    );
    // An append of two lots, or of none, is not an append.
    let mixed = [arrivals("north", 5, 1), arrivals("west", 2, 1)].concat();
    assert!(matches!(
        log.append(Expect::Last(Some(4)), &mixed),
        Err(LogError::MixedLots { .. })
    ));
    assert!(matches!(
        log.append(Expect::Last(None), &[]),
        Err(LogError::Empty)
    ));
}

/// Many lots' appends in flight at once (JetStream sends what waits together, as
/// atomic batches of up to 1,000 events): each gets its own answer, also when there are
/// more lots than the server takes atomic batches in flight. A stale one among them is
/// a conflict that stores nothing and does not hold the others back; a lot appended
/// twice at once from the same position takes one of the two.
pub async fn appends_of_many_lots_at_once_each_get_their_own_answer(b: Backend) {
    let log = b.open("a").await;
    // More lots than the server takes atomic batches in flight (50 by default).
    let lots: Vec<String> = (0..120).map(|i| format!("lot-{i}")).collect();
    let mut last = Vec::new();
    for id in &lots {
        let offsets = append(&*log, Expect::Last(None), &arrivals(id, 1, 1))
            .await
            .unwrap();
        last.push(offsets[0]);
    }
    let mut stored = read_all(&*log);
    let stale = |i: usize| i % 7 == 3;
    let mut sent = Vec::new();
    let mut answers = Vec::new();
    for (i, id) in lots.iter().enumerate() {
        // Up to 1,000 events go in one batch: 120 lots x 8 events and a ninth.
        let events = arrivals(id, 2, 8);
        let expect = Expect::Last(if stale(i) { None } else { Some(last[i]) });
        // The embedded log answers a conflict at once, JetStream when the server did.
        answers.push(log.append(expect, &events));
        sent.push(events);
    }
    // lot-0 once more, from the same position as its append above.
    let again = arrivals("lot-0", 2, 1);
    answers.push(log.append(Expect::Last(Some(last[0])), &again));
    sent.push(again);
    let mut lot0_taken = 0;
    for (i, (answer, events)) in answers.into_iter().zip(&sent).enumerate() {
        let got = match answer {
            Ok(Appended::Ordered(first)) => Ok((first..first + events.len() as u64).collect()),
            Ok(Appended::Acknowledging(ack)) => ack.await,
            Err(e) => Err(e),
        };
        let lot = i % lots.len();
        match got {
            Ok(offsets) => {
                assert!(
                    !stale(lot) || i >= lots.len(),
                    "{i}: a stale append was taken"
                );
                assert!(
                    offsets.windows(2).all(|w| w[1] == w[0] + 1),
                    "{i}: a lot's events of one append are consecutive: {offsets:?}"
                );
                stored.extend(keys(&offsets, events));
                lot0_taken += usize::from(lot == 0);
            }
            Err(LogError::Conflict { lot: got, expected }) if stale(lot) || lot == 0 => {
                assert_eq!(got.as_str(), lots[lot]);
                assert_eq!(expected, if lot == 0 { Some(last[0]) } else { None });
            }
            Err(other) => panic!("{i} ({}): {other:?}", lots[lot]),
        }
    }
    assert_eq!(
        lot0_taken, 1,
        "lot-0 appended twice from one position: one taken"
    );
    stored.sort();
    let end = stored.last().map_or(0, |k| k.0 + 1);
    log.wait_durable(end).await.unwrap();
    assert_eq!(
        read_all(&*log),
        stored,
        "exactly the answered appends, at their offsets"
    );
}

pub async fn what_was_acknowledged_is_there_after_a_restart(b: Backend) {
    let (id, sent) = {
        let log = b.open("a").await;
        let mut sent = Vec::new();
        let mut last = None;
        for i in 0..20u64 {
            let events = arrivals("north", i * 3 + 1, 3);
            let offsets = append(&*log, Expect::Last(last), &events).await.unwrap();
            last = offsets.last().copied();
            sent.extend(keys(&offsets, &events));
        }
        log.close();
        (log.log_id(), sent)
    };
    let log = b.open("a").await;
    assert_eq!(log.log_id(), id, "the same log");
    assert_eq!(read_all(&*log), sent);
    // And it goes on from there: the expected position survived too.
    append(&*log, Expect::Last(Some(59)), &arrivals("north", 61, 1))
        .await
        .unwrap();
    if let Backend::JetStream(..) = b {
        // A new node copies the whole stream at its first start.
        let fresh = b.open("fresh").await;
        assert_eq!(fresh.log_id(), id);
        assert_eq!(read_all(&*fresh), read_all(&*log));
    }
}

pub async fn a_subscription_catches_up_from_any_offset_and_follows(b: Backend) {
    let log = b.open("a").await;
    append(&*log, Expect::Last(None), &arrivals("north", 1, 10))
        .await
        .unwrap();
    let mut sub = Subscription::new(log.clone(), 4);
    let mut seen = Vec::new();
    while seen.len() < 6 {
        seen.extend(sub.next_batch(3).await.unwrap().iter().map(|e| e.offset));
    }
    assert_eq!(seen, (4..10).collect::<Vec<_>>());
    // Appended after the subscription caught up: it wakes and gets them in order.
    let writer = log.clone();
    let appending = tokio::spawn(async move {
        let mut last = Some(9);
        for i in 0..5u64 {
            let offsets = append(&*writer, Expect::Last(last), &arrivals("north", 11 + i, 1))
                .await
                .unwrap();
            last = offsets.last().copied();
        }
    });
    while seen.len() < 11 {
        let batch = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next_batch(100))
            .await
            .expect("the subscription wakes for new events")
            .unwrap();
        seen.extend(batch.iter().map(|e| e.offset));
    }
    appending.await.unwrap();
    assert_eq!(seen, (4..15).collect::<Vec<_>>());
}

fn lot_options() -> LotOptions {
    LotOptions::default()
}

async fn register(lots: &Lots, id: &str, capacity: i64) {
    let (outcome, _) = lots
        .register(
            lot(id),
            LotName::parse("A lot").unwrap(),
            Capacity::new(capacity).unwrap(),
            None,
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
}

pub async fn a_client_event_id_is_taken_once_also_after_a_restart(b: Backend) {
    let id = Uuid::now_v7();
    let first = {
        let log = b.open("a").await;
        let lots = Lots::recover(log.clone(), lot_options()).unwrap();
        register(&lots, "north", 10).await;
        let h = lots.get(&lot("north")).unwrap();
        let (first, _) = h.arrive(Timestamp::now(), Some(id)).await.unwrap();
        let Outcome::Accepted { offset } = first else {
            panic!("{first:?}")
        };
        let (again, view) = h.arrive(Timestamp::now(), Some(id)).await.unwrap();
        assert_eq!(again, Outcome::Duplicate { offset });
        assert_eq!(view.occupancy, 1);
        log.close();
        offset
    };
    let log = b.open("a").await;
    let lots = Lots::recover(log.clone(), lot_options()).unwrap();
    let h = lots.get(&lot("north")).unwrap();
    let (again, view) = h.arrive(Timestamp::now(), Some(id)).await.unwrap();
    assert_eq!(again, Outcome::Duplicate { offset: first });
    assert_eq!(view.occupancy, 1);
    log.wait_durable(2).await.unwrap();
    assert_eq!(log.durable_end(), 2, "registered, one arrival");
}

pub async fn two_writers_of_one_lot_keep_it_in_bounds_and_count_each_event_once(b: Backend) {
    let (log_a, log_b) = b.two_writers().await;
    let a = Lots::recover(log_a.clone(), lot_options()).unwrap();
    register(&a, "north", 20).await;
    // The registration (offset 0) reached the second writer's copy.
    log_b.wait_durable(1).await.unwrap();
    let b_lots = Lots::recover(log_b.clone(), lot_options()).unwrap();
    // Each follows what the other writes (as the service does on a shared log).
    let stopped = CancellationToken::new();
    for lots in [&a, &b_lots] {
        let follower = lots.clone().follow(stopped.clone());
        actix_web::rt::spawn(follower);
    }
    assert!(
        b_lots.get(&lot("north")).is_some(),
        "the second writer rebuilt the lot from the log"
    );
    // Both write to the lot at once, each from a state the other keeps moving: more
    // arrivals than places, departures, and retries of the same client ids on the other.
    let ids: Vec<Uuid> = (0..60).map(|_| Uuid::now_v7()).collect();
    let run = |lots: Lots, ids: Vec<Uuid>| async move {
        let h = lots.get(&lot("north")).unwrap();
        let mut outcomes = Vec::new();
        let mut busy = 0;
        for (i, id) in ids.into_iter().enumerate() {
            // As a gate does: a busy lot (503) is asked again with the same event id.
            let o = loop {
                let tried = if i % 4 == 3 {
                    h.depart(Timestamp::now(), Some(id)).await
                } else {
                    h.arrive(Timestamp::now(), Some(id)).await
                };
                match tried {
                    Ok((o, _)) => break o,
                    Err(parkade::LotError::Busy(_)) => busy += 1,
                    Err(e) => panic!("{e}"),
                }
            };
            outcomes.push((id, o));
        }
        println!("{busy} requests answered busy and were retried");
        outcomes
    };
    let mut shifted = ids.clone();
    shifted.rotate_left(30);
    let (ra, rb) = tokio::join!(run(a.clone(), ids.clone()), run(b_lots.clone(), shifted));
    // Every id went in once: where both writers took it, the second saw a duplicate
    // of the same offset.
    let events = {
        // Up to the last event either was told about (a reply does not wait for
        // every reader's copy).
        let told = ra.iter().chain(&rb).filter_map(|(_, o)| match o {
            Outcome::Accepted { offset } | Outcome::Duplicate { offset } => Some(offset + 1),
            Outcome::Rejected(_) => None,
        });
        let end = told.max().unwrap_or(1).max(log_a.durable_end());
        log_a.wait_durable(end).await.unwrap();
        let mut all = Vec::new();
        parkade::log::scan(&*log_a, 0, end, 1000, |batch| {
            all.extend_from_slice(batch);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        all
    };
    let mut seen = std::collections::HashSet::new();
    for e in &events {
        assert!(
            seen.insert(e.event.event_id),
            "event {} twice",
            e.event.event_id
        );
    }
    let mut accepted_at = std::collections::HashMap::new();
    for (id, o) in ra.iter().chain(&rb) {
        match o {
            Outcome::Accepted { offset } | Outcome::Duplicate { offset } => {
                let prev = accepted_at.insert(*id, *offset);
                assert!(
                    prev.is_none_or(|p| p == *offset),
                    "{id}: {prev:?} and {offset}"
                );
                let e = events.iter().find(|e| e.offset == *offset).unwrap();
                assert_eq!(
                    e.event.event_id, *id,
                    "the outcome's offset holds its event"
                );
            }
            Outcome::Rejected(_) => {}
        }
    }
    // Both wrote, each after the other: each had to learn of the other's events (from a
    // conflict or by following the log) before its own could go in.
    let accepted = |r: &[(Uuid, Outcome)]| -> Vec<u64> {
        r.iter()
            .filter_map(|(_, o)| match o {
                Outcome::Accepted { offset } => Some(*offset),
                _ => None,
            })
            .collect()
    };
    let (oa, ob) = (accepted(&ra), accepted(&rb));
    assert!(
        !oa.is_empty() && !ob.is_empty(),
        "both writers appended: {oa:?} {ob:?}"
    );
    assert!(
        oa.iter().max() > ob.iter().min() && ob.iter().max() > oa.iter().min(),
        "their events interleave: {oa:?} {ob:?}"
    );
    // Fold the log: the recorded occupancy is the fold's, and within bounds throughout.
    let mut occupancy = 0i64;
    let mut seqs = Vec::new();
    for e in events.iter().filter(|e| e.event.lot_id == lot("north")) {
        match e.event.event {
            LotEvent::VehicleArrived => occupancy += 1,
            LotEvent::VehicleDeparted => occupancy -= 1,
            _ => {}
        }
        assert!(
            (0..=20).contains(&occupancy),
            "occupancy {occupancy} at {}",
            e.offset
        );
        assert_eq!(i64::from(e.event.occupancy), occupancy, "at {}", e.offset);
        seqs.push(e.event.lot_seq);
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "lot_seq dense"
    );
    assert!(events.len() > 20, "both wrote: {} events", events.len());
    // Both writers' lots come to agree with the fold, following the log.
    for lots in [&a, &b_lots] {
        let h = lots.get(&lot("north")).unwrap();
        crate::common::eventually(
            std::time::Duration::from_secs(10),
            "the lot's view to follow the log",
            || async {
                let v = h.view();
                if i64::from(v.occupancy) == occupancy {
                    Ok(())
                } else {
                    Err(format!("occupancy {} not {occupancy}", v.occupancy))
                }
            },
        )
        .await;
    }
}

/// Instantiate a conformance test for each backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(super::Backend::embedded()).await
                }
            )*
        }
        mod jetstream {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(super::Backend::jetstream()).await
                }
            )*
        }
    };
}

conformance!(
    appends_are_ordered_dense_and_read_back_from_any_offset,
    a_stale_expected_position_is_a_conflict_and_stores_nothing,
    appends_of_many_lots_at_once_each_get_their_own_answer,
    what_was_acknowledged_is_there_after_a_restart,
    a_subscription_catches_up_from_any_offset_and_follows,
    a_client_event_id_is_taken_once_also_after_a_restart,
    two_writers_of_one_lot_keep_it_in_bounds_and_count_each_event_once,
);
