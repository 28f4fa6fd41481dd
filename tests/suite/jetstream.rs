//! The JetStream servers the scale-out tests run against: the pinned current
//! `nats-server`, syncing every write before it acknowledges, alone and as a three-node
//! cluster that keeps a JetStream leader when a node is killed.

use std::time::Duration;

use crate::common::nats::Nats;

#[test]
fn the_pinned_server_syncs_every_write_alone_and_in_a_cluster_that_survives_a_node() {
    let single = Nats::single();
    let varz = single.nodes[0].monitor("varz").expect("the server answers");
    assert_eq!(varz["version"], "2.15.1", "{varz}");
    assert_eq!(varz["jetstream"]["config"]["sync_always"], true, "{varz}");

    let mut cluster = Nats::cluster(3);
    // Every node sees the three peers (they may take a moment after the leader).
    let started = std::time::Instant::now();
    for node in &cluster.nodes {
        loop {
            let jsz = node.monitor("jsz").expect("the node answers");
            assert_eq!(jsz["config"]["sync_always"], true, "{}: {jsz}", node.name);
            if jsz["meta_cluster"]["cluster_size"] == 3 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{}: {jsz}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Kill -9 the meta leader: the other two elect another; restarted, it rejoins.
    let jsz = cluster.nodes[0].monitor("jsz").unwrap();
    let leader = jsz["meta_cluster"]["leader"].as_str().unwrap().to_owned();
    let i = cluster.nodes.iter().position(|n| n.name == leader).unwrap();
    cluster.nodes[i].kill();
    let started = std::time::Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&j| j != i).collect();
    loop {
        let leaders: Vec<Option<String>> = survivors
            .iter()
            .map(|&j| {
                let jsz = cluster.nodes[j].monitor("jsz")?;
                jsz["meta_cluster"]["leader"].as_str().map(str::to_owned)
            })
            .collect();
        let new = leaders[0]
            .as_deref()
            .filter(|l| !l.is_empty() && *l != leader);
        if new.is_some() && leaders[0] == leaders[1] {
            println!(
                "{leader} killed; {new:?} leads after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no new leader: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.nodes[i].start();
    cluster.wait_ready(Duration::from_secs(30));
}

mod stream {
    use parkade::domain::{LotId, NewEvent};
    use parkade::log::jetstream::{JetStreamError, JetStreamOptions, Stream};

    use crate::common::nats::Nats;
    use crate::conformance::arrivals;

    fn options(nats: &Nats, replicas: usize) -> JetStreamOptions {
        let urls: Vec<String> = nats.nodes.iter().map(|n| n.url()).collect();
        JetStreamOptions {
            url: urls.join(","),
            stream: "PARKADE".into(),
            replicas,
            credentials: None,
            max_copy_lag: parkade::log::jetstream::DEFAULT_MAX_COPY_LAG,
        }
    }

    /// What a read gives back of what was sent: (offset, lot, lot_seq, event id).
    fn keys(events: &[parkade::domain::RecordedEvent]) -> Vec<(u64, String, u64, uuid::Uuid)> {
        events
            .iter()
            .map(|e| {
                let n = &e.event;
                (e.offset, n.lot_id.to_string(), n.lot_seq, n.event_id)
            })
            .collect()
    }

    #[actix_web::test]
    async fn appends_are_ordered_dense_refused_on_a_stale_sequence_and_synced() {
        let mut nats = Nats::single();
        let log = Stream::connect(&options(&nats, 1), None).await.unwrap();
        let north = arrivals("north", 1, 4);
        assert_eq!(log.append_lot(Some(0), &north).await.unwrap(), [0, 1, 2, 3]);
        // A lot id with a dot: its own subject, not a subject of two tokens' prefix.
        let mall = arrivals("west.mall", 1, 2);
        assert_eq!(log.append_lot(Some(0), &mall).await.unwrap(), [4, 5]);
        // A writer that did not see north's events is refused, and nothing is stored.
        let late = arrivals("north", 1, 1);
        match log.append_lot(Some(0), &late).await {
            Err(JetStreamError::Conflict { lot, expected }) => {
                assert_eq!((lot.as_str(), expected), ("north", 0))
            }
            other => panic!("not a conflict: {other:?}"),
        }
        assert_eq!(log.end().await.unwrap(), 6);
        // One that knows the lot's last sequence goes on from it.
        let last = log
            .last_of_lot(&LotId::parse("north").unwrap())
            .await
            .unwrap();
        assert_eq!(last, 4, "north's last event is sequence 4 (offset 3)");
        let next = arrivals("north", 5, 1);
        assert_eq!(log.append_lot(Some(last), &next).await.unwrap(), [6]);

        let sent: Vec<NewEvent> = [&north[..], &mall[..], &next[..]].concat();
        let all = log.read(0, 100).await.unwrap();
        let expected: Vec<_> = sent
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64, e.lot_id.to_string(), e.lot_seq, e.event_id))
            .collect();
        assert_eq!(keys(&all), expected);
        assert_eq!(keys(&log.read(5, 2).await.unwrap()), expected[5..7]);

        // Kill -9 and restart: every acknowledged event is there.
        drop(log);
        nats.nodes[0].kill();
        nats.nodes[0].start();
        nats.wait_ready(std::time::Duration::from_secs(30));
        let log = Stream::connect(&options(&nats, 1), None).await.unwrap();
        assert_eq!(keys(&log.read(0, 100).await.unwrap()), expected);
    }

    /// A checked append carries no message id: what refuses a copy sent again after a
    /// lost reply is the lot's expectation, for one event and for an atomic batch alike.
    #[actix_web::test]
    async fn a_checked_append_sent_again_after_it_was_stored_is_refused_and_stored_once() {
        let nats = Nats::single();
        let log = Stream::connect(&options(&nats, 1), None).await.unwrap();
        let one = arrivals("north", 1, 1);
        let batch = arrivals("south", 1, 3);
        assert_eq!(log.append_lot(Some(0), &one).await.unwrap(), [0]);
        assert_eq!(log.append_lot(Some(0), &batch).await.unwrap(), [1, 2, 3]);
        for (lot, again) in [("north", &one), ("south", &batch)] {
            match log.append_lot(Some(0), again).await {
                Err(JetStreamError::Conflict { lot: l, expected }) => {
                    assert_eq!((l.as_str(), expected), (lot, 0))
                }
                other => panic!("{lot}: sent again, not a conflict: {other:?}"),
            }
        }
        assert_eq!(log.end().await.unwrap(), 4, "each event stored once");
        let sent: Vec<NewEvent> = [&one[..], &batch[..]].concat();
        let ids: Vec<_> = sent.iter().map(|e| e.event_id).collect();
        let stored: Vec<_> = log
            .read(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.event.event_id)
            .collect();
        assert_eq!(stored, ids);
    }

    #[actix_web::test]
    async fn a_replicated_stream_takes_appends_with_a_node_down_and_the_node_catches_up() {
        let mut nats = Nats::cluster(3);
        let log = Stream::connect(&options(&nats, 3), None).await.unwrap();
        let first = arrivals("north", 1, 50);
        log.append_lot(Some(0), &first).await.unwrap();
        nats.nodes[2].kill();
        // Two of three replicas are a quorum: appends go on.
        let second = arrivals("north", 51, 50);
        let offsets = log.append_lot(Some(50), &second).await.unwrap();
        assert_eq!(offsets, (50..100).collect::<Vec<u64>>());
        nats.nodes[2].start();
        nats.wait_ready(std::time::Duration::from_secs(30));
        drop(log);
        // Read through the node that was down.
        let only_third = JetStreamOptions {
            url: nats.nodes[2].url(),
            ..options(&nats, 3)
        };
        let log = Stream::connect(&only_third, None).await.unwrap();
        let sent: Vec<_> = [&first[..], &second[..]]
            .concat()
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64, e.lot_id.to_string(), e.lot_seq, e.event_id))
            .collect();
        let read = crate::common::eventually(
            std::time::Duration::from_secs(20),
            "the restarted node's copy",
            || async {
                match log.read(0, 1_000).await {
                    Ok(r) if keys(&r) == sent => Ok(r),
                    Ok(r) => Err(format!("{} events", r.len())),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        assert_eq!(read.len(), 100);
    }
}

mod copy {
    //! `parkade log copy` as a user runs it: the embedded log into a stream, resumed
    //! after more events, and back into another data directory, keeping offsets, ids,
    //! record times and the log id; a copy of another log, or of a log in use, refused.

    use std::path::Path;
    use std::process::Command;

    use parkade::domain::{LotEvent, LotId, NewEvent, RecordedEvent, Timestamp};
    use parkade::log::{EventLog, FileLog, LogOptions};

    use crate::common::{self, nats::Nats};

    fn events(from: u64, n: u64) -> Vec<NewEvent> {
        (from..from + n)
            .map(|i| NewEvent {
                lot_id: LotId::parse(["north", "west.mall", "south"][(i % 3) as usize]).unwrap(),
                lot_seq: i / 3 + 1,
                event_id: uuid::Uuid::now_v7(),
                client_event_id: i % 2 == 0,
                occurred_at: Timestamp::from_micros(1_764_000_000_000_000 + i as i64),
                event: LotEvent::VehicleArrived,
                occupancy: (i / 3 + 1) as u32,
                capacity: 100_000,
            })
            .collect()
    }

    async fn fill(dir: &Path, from: u64, n: u64) {
        let log = FileLog::open(dir.join("log"), LogOptions::default()).unwrap();
        let batch = events(from, n);
        for chunk in batch.chunks(1000) {
            log.append_any(chunk).unwrap();
        }
        log.wait_durable(from + n).await.unwrap();
        log.close();
    }

    fn read(dir: &Path) -> (uuid::Uuid, Vec<RecordedEvent>) {
        let log = FileLog::open(dir.join("log"), LogOptions::default()).unwrap();
        let mut all = Vec::new();
        parkade::log::scan(&log, 0, log.durable_end(), 5000, |b| {
            all.extend_from_slice(b);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        let id = log.log_id();
        log.close();
        (id, all)
    }

    fn copy(dir: &Path, nats: &Nats, to: &str) -> (bool, String) {
        common::output(
            Command::new(common::binary())
                .args(["log", "copy", "--to", to])
                .env("PARKADE_DATA_DIR", dir)
                .env("PARKADE_NATS_URL", nats.urls())
                .env("RUST_LOG", "warn"),
        )
    }

    #[actix_web::test]
    async fn an_embedded_log_goes_into_a_stream_and_back_whole_and_resumably() {
        let nats = Nats::single();
        let source = common::data_dir();
        fill(source.path(), 0, 2_500).await;
        let (ok, text) = copy(source.path(), &nats, "jetstream");
        assert!(ok, "{text}");
        assert!(
            text.contains("copied 2500 events (0 were there already)"),
            "{text}"
        );
        // More events, then the copy again: it goes on where it stopped.
        fill(source.path(), 2_500, 700).await;
        let (ok, text) = copy(source.path(), &nats, "jetstream");
        assert!(ok, "{text}");
        assert!(
            text.contains("copied 700 events (2500 were there already)"),
            "{text}"
        );

        // And back, into a data directory of its own.
        let back = common::data_dir();
        let (ok, text) = copy(back.path(), &nats, "embedded");
        assert!(ok, "{text}");
        assert!(text.contains("copied 3200 events"), "{text}");
        let (id, original) = read(source.path());
        let (copied_id, copied) = read(back.path());
        assert_eq!(copied_id, id, "the log id goes along");
        assert_eq!(copied, original, "every event, offset, id and record time");

        // A log that is not the one in the stream is refused, changing nothing.
        let other = common::data_dir();
        fill(other.path(), 0, 10).await;
        let (ok, text) = copy(other.path(), &nats, "jetstream");
        assert!(!ok, "{text}");
        assert!(text.contains("not the log"), "{text}");
        // So is a log a server (here: this process) is writing.
        let open = FileLog::open(source.path().join("log"), LogOptions::default()).unwrap();
        let (ok, text) = copy(source.path(), &nats, "jetstream");
        assert!(!ok, "{text}");
        assert!(text.contains("in use"), "{text}");
        open.close();
    }
}

mod liveness {
    //! The JetStream log stays live: its reads leave nothing behind on the server, a
    //! stalled server is left for another within seconds, and appends go on.

    use std::time::{Duration, Instant};

    use parkade::domain::{LotId, NewEvent};
    use parkade::log::jetstream::{JetStreamLog, JetStreamOptions, Stream, DEFAULT_MAX_COPY_LAG};
    use parkade::log::{Appended, EventLog, Expect, LogOptions};

    use crate::common::{self, nats::Nats};
    use crate::conformance::arrivals;

    fn options(nats: &Nats, replicas: usize) -> JetStreamOptions {
        JetStreamOptions {
            url: nats.urls(),
            stream: "PARKADE".into(),
            replicas,
            credentials: None,
            max_copy_lag: DEFAULT_MAX_COPY_LAG,
        }
    }

    /// Append and wait for the acknowledgement.
    async fn append(
        log: &JetStreamLog,
        expect: Expect,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, parkade::log::LogError> {
        match log.append(expect, events)? {
            Appended::Acknowledging(ack) => ack.await,
            Appended::Ordered(_) => unreachable!("JetStream acknowledges"),
        }
    }

    /// Two nodes append to one lot in turn, each following what the other wrote, and
    /// read the lot's events as a writer that lost a conflict does: the server keeps no
    /// consumer for any of it (a consumer per read piled up to the server's limit).
    #[actix_web::test]
    async fn reads_leave_no_consumer_on_the_server_and_both_copies_keep_up() {
        let nats = Nats::single();
        let (da, db) = (common::data_dir(), common::data_dir());
        let a = JetStreamLog::open(&options(&nats, 1), da.path(), LogOptions::default())
            .await
            .unwrap();
        let b = JetStreamLog::open(&options(&nats, 1), db.path(), LogOptions::default())
            .await
            .unwrap();
        let lot = LotId::parse("north").unwrap();
        let events = arrivals("north", 1, 300);
        for (i, e) in events.iter().enumerate() {
            let log = if i % 2 == 0 { &a } else { &b };
            append(log, Expect::Any, std::slice::from_ref(e))
                .await
                .unwrap();
            if i % 3 == 0 {
                let read = log.read_lot(&lot, None).await.unwrap();
                assert_eq!(read.len(), i + 1, "the lot's events up to now");
            }
        }
        for log in [&a, &b] {
            tokio::time::timeout(Duration::from_secs(20), log.wait_durable(300))
                .await
                .expect("the copy reaches the stream's end")
                .unwrap();
        }
        let stream = Stream::connect_existing(&options(&nats, 1)).await.unwrap();
        let state = stream.state().await.unwrap();
        assert_eq!(state.last_sequence, 300);
        assert_eq!(
            state.consumer_count, 0,
            "reads left consumers on the server"
        );
        // The copies are the stream, in order.
        let want: Vec<_> = events.iter().map(|e| e.event_id).collect();
        for log in [&a, &b] {
            let mut got = Vec::new();
            parkade::log::scan(log, 0, 300, 1000, |batch| {
                got.extend(batch.iter().map(|e| e.event.event_id));
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(got, want);
            let copy = log.copy_state().expect("a shared log's copy");
            assert_eq!((copy.copy_end, copy.consumers), (300, 0), "{copy:?}");
        }
    }

    /// One writer appends without pause (one lot unchecked, one lot as checked
    /// batches) while the server its client is connected to is stalled (SIGSTOP: its
    /// connections stay open, it answers nothing), and then the stream's leader: each
    /// time, appends are acknowledged again within 10 s; every acknowledged event is in
    /// the stream once.
    #[actix_web::test]
    async fn a_stalled_server_is_left_and_appends_go_on_within_seconds() {
        let nats = Nats::cluster(3);
        let dir = common::data_dir();
        let log = std::sync::Arc::new(
            JetStreamLog::open(&options(&nats, 3), dir.path(), LogOptions::default())
                .await
                .unwrap(),
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (log, stop) = (log.clone(), stop.clone());
            actix_web::rt::spawn(async move {
                let (mut acked, mut longest) = (Vec::new(), Duration::ZERO);
                let started = Instant::now();
                let mut last_ack = started;
                // Each wait of more than a second: (when it began, how long), in s.
                let mut waits = Vec::new();
                let mut checked_last: Option<u64> = None;
                let (mut n, mut failures) = (0u64, 0u32);
                let b = LotId::parse("b").unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let one = arrivals("a", n, 1);
                    let two = arrivals("b", 2 * n - 1, 2);
                    let got_one = append(&log, Expect::Any, &one).await;
                    let got_two = append(&log, Expect::Last(checked_last), &two).await;
                    match (&got_one, &got_two) {
                        (Ok(_), Ok(offsets)) => {
                            longest = longest.max(last_ack.elapsed());
                            if last_ack.elapsed() > Duration::from_secs(1) {
                                waits.push((
                                    (last_ack - started).as_secs_f32(),
                                    last_ack.elapsed().as_secs_f32(),
                                ));
                            }
                            last_ack = Instant::now();
                            checked_last = offsets.last().copied();
                            acked.extend(one.iter().chain(&two).map(|e| e.event_id));
                        }
                        _ => {
                            failures += 1;
                            if got_one.is_ok() {
                                acked.push(one[0].event_id);
                            }
                            // Where the checked lot stands now (the batch may be in).
                            checked_last = match log.stream().last_of_lot(&b).await {
                                Ok(sequence) => sequence.checked_sub(1),
                                Err(_) => checked_last,
                            };
                            if let Ok(offsets) = got_two {
                                checked_last = offsets.last().copied();
                                acked.extend(two.iter().map(|e| e.event_id));
                            }
                        }
                    }
                }
                longest = longest.max(last_ack.elapsed());
                (acked, longest, failures, waits)
            })
        };
        let test_started = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connected = nats
            .nodes
            .iter()
            .position(|n| n.has_client("parkade"))
            .expect("the client is connected to a server");
        let stream = Stream::connect_existing(&JetStreamOptions {
            url: nats.nodes[(connected + 1) % 3].url(),
            ..options(&nats, 3)
        })
        .await
        .unwrap();
        // (which, server, when it was stalled, and if it led the stream: when another
        // server was elected, both in s from the test's start).
        let mut stalls: Vec<(&str, String, f32, Option<f32>)> = Vec::new();
        for which in ["the client's server", "the stream's leader"] {
            let i = if which == "the client's server" {
                connected
            } else {
                let leader = common::eventually(Duration::from_secs(20), "a leader", || async {
                    match stream.leader().await {
                        Ok(Some(l)) => Ok(l),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await;
                nats.nodes.iter().position(|n| n.name == leader).unwrap()
            };
            let name = nats.nodes[i].name.clone();
            // Watched through a server that goes on.
            let observer = Stream::connect_existing(&JetStreamOptions {
                url: nats.nodes[(i + 1) % 3].url(),
                ..options(&nats, 3)
            })
            .await
            .unwrap();
            let led = observer.leader().await.unwrap().as_deref() == Some(name.as_str());
            let at = test_started.elapsed().as_secs_f32();
            let stalled = Instant::now();
            nats.nodes[i].stall();
            let mut elected = None;
            while stalled.elapsed() < Duration::from_secs(14) {
                if led && elected.is_none() {
                    let now = tokio::time::timeout(Duration::from_secs(1), observer.leader()).await;
                    if let Ok(Ok(Some(l))) = now {
                        if l != name {
                            elected = Some(test_started.elapsed().as_secs_f32());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            nats.nodes[i].resume();
            stalls.push((which, name, at, elected));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (acked, longest, failures, waits) = writer.await.unwrap();
        println!(
            "stalled (which, server, at s, another leader elected at s) {stalls:?} for 14 s each: {} events acknowledged, {failures} appends failed, longest time without an acknowledgement {longest:?}; waits over 1 s (from s, for s): {waits:?}",
            acked.len()
        );
        // No acknowledgement is possible while the stream has no leader: NATS's
        // followers wait 4 to 9 s for a lost leader before they elect another. So the
        // bound: within 10 s of a stall, or (the leader stalled) within 3 s of the new
        // leader's election (one request's wait and a retry).
        for (start, len) in &waits {
            let end = start + len;
            let bound = stalls
                .iter()
                .filter(|(_, _, at, _)| *start <= at + 14.0 && end >= *at)
                .map(|(_, _, at, elected)| elected.map_or(at + 10.0, |e| (e + 3.0).max(at + 10.0)))
                .fold(start + 10.0, f32::max);
            assert!(
                end <= bound,
                "no acknowledgement from {start:.1} s for {len:.1} s (stalls: {stalls:?})"
            );
        }
        let _ = longest;
        let end = stream.end().await.unwrap();
        let mut stored = Vec::new();
        while (stored.len() as u64) < end {
            stored.extend(stream.read(stored.len() as u64, 10_000).await.unwrap());
        }
        let ids: std::collections::HashSet<_> = stored.iter().map(|e| e.event.event_id).collect();
        assert_eq!(ids.len(), stored.len(), "an event stored twice");
        let lost = acked.iter().filter(|id| !ids.contains(id)).count();
        assert_eq!(lost, 0, "acknowledged events not in the stream");
    }
}
