//! Live fan-out: every durable event of the log, as a change message, to any number of
//! websocket subscribers.
//!
//! A follower reads the log (never the lot actors, and never in the way of ingestion:
//! appends do not wait for it) and keeps the state of every lot as of its position. It
//! encodes each change once as a websocket frame ([`frame`]) and puts the same bytes in
//! the outbox of every subscriber that wants it ([`outbox`](mod@outbox)); the connections write
//! them. A subscriber joins under the state lock, its first frame (a snapshot, or the
//! tail of a catch-up from the log) queued before any change: no gap, no duplicate. A
//! subscriber whose connection has not taken `buffer` changes, or has taken nothing for
//! [`SEND_LIMIT`], is closed with [`SLOW_CONSUMER`] and the offset to resume from.

pub mod frame;
pub mod outbox;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

pub use outbox::{outbox, Budget, Outbox, MAX_QUEUED_BYTES};

use crate::domain::LotView;
use crate::domain::{LotEvent, LotId, RecordedEvent};
use crate::log::{EventLog, Subscription};

/// Close code for a subscriber that cannot keep up.
pub const SLOW_CONSUMER: u16 = 4008;
/// Close code when the service shuts down ("going away").
pub const GOING_AWAY: u16 = 1001;
/// A connection that takes nothing for this long while changes wait is closed.
pub const SEND_LIMIT: Duration = Duration::from_secs(5);

/// One change, encoded once for every subscriber.
#[derive(Debug)]
pub struct Change {
    pub lot_id: LotId,
    pub offset: u64,
    /// The whole websocket text frame.
    pub frame: Bytes,
}

/// The websocket's messages (`"type"` names the kind): the server writes them borrowing
/// what it has; a client reads them as `Message<'static>`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message<'a> {
    /// The wanted lots as they are at `offset` (`null` for an empty log); changes
    /// follow from `next_offset`. `history`: whether the history endpoint can answer;
    /// `forecast`: whether the forecast and timespan endpoints can.
    /// `timezone`: the lots' time zone (IANA name), in which their days and hours are
    /// told; `utc_offsets`: that zone's offset from UTC from each instant on, over the
    /// last five weeks and the next two days (so a client tells days and hours from the
    /// server's tz database, not its own). Each lot is the object `GET /v1/lots/{id}` answers, `stale` as of the
    /// snapshot; a lot whose last event (`updated_at`, then each change's
    /// `occurred_at`) is more than `stale_after_secs` old is stale from then on.
    Snapshot {
        offset: Option<u64>,
        next_offset: u64,
        lots: Cow<'a, [Value]>,
        history: bool,
        forecast: bool,
        timezone: Cow<'a, str>,
        utc_offsets: Cow<'a, [UtcOffset]>,
        stale_after_secs: u64,
    },
    /// One event's effect on its lot.
    Change {
        lot_id: Cow<'a, str>,
        occupancy: u32,
        capacity: u32,
        free: u32,
        offset: u64,
        occurred_at: crate::domain::Timestamp,
        event_type: Cow<'a, str>,
    },
    /// A resumed subscriber has caught up: live changes follow from `next_offset`.
    Live { next_offset: u64 },
}

impl Message<'_> {
    /// The message as one websocket text frame.
    pub fn frame(&self) -> Bytes {
        frame::text(&serde_json::to_string(self).expect("messages serialize"))
    }
}

/// The change message of one recorded event.
pub fn change_of(e: &RecordedEvent) -> Change {
    let ev = &e.event;
    let frame = Message::Change {
        lot_id: ev.lot_id.as_str().into(),
        occupancy: ev.occupancy,
        capacity: ev.capacity,
        free: ev.capacity.saturating_sub(ev.occupancy),
        offset: e.offset,
        occurred_at: ev.occurred_at,
        event_type: ev.event.event_type().as_str().into(),
    }
    .frame();
    Change {
        lot_id: ev.lot_id.clone(),
        offset: e.offset,
        frame,
    }
}

fn going_away() -> Bytes {
    frame::close(GOING_AWAY, "parkade is stopping")
}

/// The frames of `changes`, back to back (one change's frame is shared, not copied:
/// a lot's followers all hold the same bytes).
pub fn concat<'a>(changes: impl Iterator<Item = &'a Change> + Clone) -> (Bytes, usize) {
    let mut two = changes.clone().take(2);
    if let (Some(only), None) = (two.next(), two.next()) {
        return (only.frame.clone(), 1);
    }
    let len = changes.clone().map(|c| c.frame.len()).sum();
    let mut out = BytesMut::with_capacity(len);
    let mut n = 0;
    for c in changes {
        out.extend_from_slice(&c.frame);
        n += 1;
    }
    (out.freeze(), n)
}

/// What a subscriber sees first.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every event below this offset is reflected; changes start here.
    pub next_offset: u64,
    pub lots: Vec<Value>,
}

/// A zone's offset from UTC from `from` on (until the next one).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UtcOffset {
    pub from: crate::domain::Timestamp,
    pub utc_offset_secs: i32,
}

/// `tz`'s offsets from UTC over `[from, to)`: the one at `from`, then each change.
pub fn utc_offsets(
    tz: chrono_tz::Tz,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Vec<UtcOffset> {
    use chrono::Offset;
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&tz).offset().fix().local_minus_utc();
    let mut out = vec![UtcOffset {
        from: crate::domain::Timestamp::from_micros(from.timestamp_micros()),
        utc_offset_secs: at(from),
    }];
    // Zones change on the quarter hour at most; find each change to the minute.
    let mut t = from;
    while t < to {
        let next = t + chrono::Duration::minutes(15);
        if at(next) != out.last().expect("one").utc_offset_secs {
            let mut lo = t;
            while lo < next && at(lo) == at(t) {
                lo += chrono::Duration::minutes(1);
            }
            out.push(UtcOffset {
                from: crate::domain::Timestamp::from_micros(lo.timestamp_micros()),
                utc_offset_secs: at(lo),
            });
        }
        t = next;
    }
    out
}

/// Samples of the recent series: one per 5 minutes of event time, the last 24 hours.
const SAMPLE_MICROS: i64 = 5 * 60 * 1_000_000;
const SAMPLES_KEPT: usize = 24 * 12;

/// A joined subscriber.
struct Subscriber {
    /// The lots it wants (all when `None`).
    keep: Option<HashSet<LotId>>,
    out: Outbox,
    /// The first offset it lacks: changes below it are not put.
    from: u64,
    /// The offset of the last change put in its outbox.
    last: Option<u64>,
}

impl Subscriber {
    fn wants(&self, c: &Change) -> bool {
        c.offset >= self.from && wanted(&self.keep, &c.lot_id)
    }
}

/// Whether a subscriber that keeps `keep` (all lots when `None`) wants `lot`.
pub fn wanted(keep: &Option<HashSet<LotId>>, lot: &LotId) -> bool {
    keep.as_ref().is_none_or(|k| k.contains(lot))
}

struct State {
    lots: BTreeMap<LotId, Value>,
    /// Per lot, (sample start, occupancy at its last event), oldest first.
    recent: BTreeMap<LotId, std::collections::VecDeque<(i64, u32)>>,
    next: u64,
    subscribers: Vec<Subscriber>,
    /// The service is stopping: nobody joins any more.
    closed: bool,
}

impl State {
    /// Put `changes` in every subscriber's outbox; close those that fell behind.
    fn fan_out(&mut self, changes: &[Change], limit: usize) {
        self.subscribers.retain(|s| !s.out.is_ended());
        if changes.is_empty() || self.subscribers.is_empty() {
            return;
        }
        let all = concat(changes.iter());
        let first = changes[0].offset;
        let last_all = changes.last().map(|c| c.offset);
        self.subscribers.retain_mut(|s| {
            let (frames, n, last) = match &s.keep {
                None if s.from <= first => (all.0.clone(), all.1, last_all),
                _ => {
                    let mine = changes.iter().filter(|c| s.wants(c));
                    let last = mine.clone().last().map(|c| c.offset);
                    let (frames, n) = concat(mine);
                    (frames, n, last)
                }
            };
            if n == 0 {
                return true;
            }
            let queued = s.out.queued();
            let stalled = s.out.stalled_for();
            let why = if queued + n > limit {
                Some(format!("slow consumer: {queued} changes not taken"))
            } else if stalled > SEND_LIMIT {
                Some(format!(
                    "slow consumer: nothing taken for {} s",
                    stalled.as_secs()
                ))
            } else {
                None
            };
            if let Some(why) = why {
                let resume = s
                    .last
                    .map_or(String::new(), |o| format!("; resume with from_offset={o}"));
                s.out
                    .end(Some(frame::close(SLOW_CONSUMER, &format!("{why}{resume}"))));
                return false;
            }
            if !s.out.put(frames, n) {
                return false;
            }
            s.last = last;
            true
        });
    }
}

struct Inner {
    state: Mutex<State>,
    /// Changes a subscriber may leave untaken before it is closed.
    limit: usize,
}

/// The live view shared by the websocket handlers.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

impl Live {
    /// Start from the lots as they are at log offset `next` (the state the lot actors
    /// were rebuilt to); a subscriber may leave `buffer` changes untaken.
    pub fn new(views: Vec<LotView>, next: u64, buffer: usize) -> Live {
        let lots = views
            .into_iter()
            .map(|v| {
                (
                    v.lot_id.clone(),
                    serde_json::to_value(&v).unwrap_or(Value::Null),
                )
            })
            .collect();
        Live {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    lots,
                    recent: BTreeMap::new(),
                    next,
                    subscribers: Vec::new(),
                    closed: false,
                }),
                limit: buffer.max(16),
            }),
        }
    }

    /// The offset the live state has reached.
    pub fn position(&self) -> u64 {
        self.lock().next
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes a subscriber may leave untaken before it is closed.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Subscribers joined and not yet closed.
    pub fn subscribers(&self) -> usize {
        let st = self.lock();
        st.subscribers.iter().filter(|s| !s.out.is_ended()).count()
    }

    /// Join with a snapshot: `first` renders the snapshot of the wanted lots into the
    /// subscriber's first frame, queued before any change after it.
    pub fn subscribe(
        &self,
        keep: Option<HashSet<LotId>>,
        out: Outbox,
        first: impl FnOnce(Snapshot) -> Bytes,
    ) {
        let mut st = self.lock();
        let lots = st
            .lots
            .iter()
            .filter(|(id, _)| wanted(&keep, id))
            .map(|(_, v)| v.clone())
            .collect();
        let snapshot = Snapshot {
            next_offset: st.next,
            lots,
        };
        let from = snapshot.next_offset;
        if st.closed {
            return out.end(Some(going_away()));
        }
        if out.put(first(snapshot), 0) {
            st.subscribers.push(Subscriber {
                keep,
                out,
                from,
                last: None,
            });
        }
    }

    /// Join after a catch-up that has put every change below `from`: `tail(next)` runs
    /// under the state lock and must put in the outbox the changes from `from` to `next`
    /// (the live position; none when `from` is past it), then return the last offset it
    /// put; the fan-out puts every change from `max(from, next)` on. Blocks the fan-out
    /// while it runs: read only a short tail here.
    pub fn join<E>(
        &self,
        keep: Option<HashSet<LotId>>,
        out: Outbox,
        from: u64,
        tail: impl FnOnce(u64) -> Result<Option<u64>, E>,
    ) -> Result<(), E> {
        let mut st = self.lock();
        if st.closed {
            out.end(Some(going_away()));
            return Ok(());
        }
        let last = tail(st.next)?;
        if !out.is_ended() {
            st.subscribers.push(Subscriber {
                keep,
                out,
                from,
                last,
            });
        }
        Ok(())
    }

    /// The lot's occupancy every 5 minutes of event time (the last 24 hours of samples
    /// seen since the service started): `(sample start in µs, occupancy)`.
    pub fn recent(&self, lot: &LotId) -> Vec<(i64, u32)> {
        self.lock()
            .recent
            .get(lot)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Fold a batch of durable events into the state and publish them.
    pub fn publish(&self, batch: &[RecordedEvent]) {
        let (from, watched) = {
            let st = self.lock();
            (st.next, !st.subscribers.is_empty())
        };
        let fresh: Vec<&RecordedEvent> = batch.iter().filter(|e| e.offset >= from).collect();
        // Encoded outside the lock; nobody watching, nothing to encode (unless someone
        // joins meanwhile: then under the lock, below).
        let render = |fresh: &[&RecordedEvent]| fresh.iter().map(|e| change_of(e)).collect();
        let mut changes: Vec<Change> = if watched { render(&fresh) } else { Vec::new() };
        let mut st = self.lock();
        if !watched && !st.subscribers.is_empty() {
            changes = render(&fresh);
        }
        for e in fresh {
            let ev = &e.event;
            let entry = st
                .lots
                .entry(ev.lot_id.clone())
                .or_insert_with(|| json!({"lot_id": ev.lot_id.as_str(), "name": ""}));
            if let LotEvent::LotRegistered { name, .. } = &ev.event {
                entry["name"] = json!(name);
            }
            entry["capacity"] = json!(ev.capacity);
            entry["occupancy"] = json!(ev.occupancy);
            entry["free"] = json!(ev.capacity.saturating_sub(ev.occupancy));
            entry["offset"] = json!(e.offset);
            entry["updated_at"] = json!(ev.occurred_at);
            let sample = ev.occurred_at.micros().div_euclid(SAMPLE_MICROS) * SAMPLE_MICROS;
            let series = st.recent.entry(ev.lot_id.clone()).or_default();
            match series.back_mut() {
                Some(last) if last.0 == sample => last.1 = ev.occupancy,
                Some(last) if last.0 > sample => {} // a late event: the series keeps event order
                _ => series.push_back((sample, ev.occupancy)),
            }
            while series.len() > SAMPLES_KEPT {
                series.pop_front();
            }
            st.next = e.offset + 1;
        }
        st.fan_out(&changes, self.inner.limit);
    }

    /// Close every subscriber, and any that tries to join later, with "going away": the
    /// service is stopping, and open websockets would hold its graceful stop.
    pub fn close_all(&self) {
        let mut st = self.lock();
        st.closed = true;
        for s in st.subscribers.drain(..) {
            s.out.end(Some(going_away()));
        }
    }

    /// Follow the log from the live position until shut down.
    pub async fn follow(self, log: Arc<dyn EventLog>, shutdown: CancellationToken) {
        let mut sub = Subscription::new(log.clone(), self.position());
        // Bursts no larger than half of what a subscriber may leave untaken, so one
        // large batch does not close a subscriber that keeps up with the rate.
        let burst = (self.inner.limit / 2).clamp(1, 4_096);
        loop {
            let batch = tokio::select! {
                b = sub.next_batch(burst) => b,
                _ = shutdown.cancelled() => return self.close_all(),
            };
            match batch {
                Ok(b) => self.publish(&b),
                Err(e) => {
                    tracing::error!(error = %e, "live fan-out cannot read the log; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return self.close_all(),
                    }
                    sub = Subscription::new(log.clone(), self.position());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewEvent, Timestamp};
    use crate::log::MemoryLog;
    use futures_util::StreamExt;

    fn event(lot: &str, seq: u64, occupancy: u32) -> NewEvent {
        NewEvent {
            lot_id: LotId::parse(lot).unwrap(),
            lot_seq: seq,
            event_id: uuid::Uuid::now_v7(),
            client_event_id: false,
            occurred_at: Timestamp::now(),
            event: LotEvent::VehicleArrived,
            occupancy,
            capacity: 10,
        }
    }

    /// The frames in `bytes` (server frames: unmasked), as (opcode, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= 2 {
            let (len, head) = match bytes[1] {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (usize::from(n), 2),
            };
            out.push((bytes[0] & 0x0f, bytes[head..head + len].to_vec()));
            bytes = &bytes[head + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_subscriber_gets_its_lots_changes_in_order_after_its_snapshot_then_a_goodbye() {
        let log = MemoryLog::new();
        let live = Live::new(Vec::new(), 0, 64);
        let stop = CancellationToken::new();
        let rx = stop.clone();
        let follower = tokio::spawn(live.clone().follow(log.clone(), rx));
        let (out, mut body) = crate::live::outbox(1 << 20, &Budget::new(usize::MAX));
        let keep = Some(HashSet::from([LotId::parse("north").unwrap()]));
        live.subscribe(keep, out, |snap| {
            assert_eq!(snap.next_offset, 0);
            frame::text("snapshot")
        });
        assert_eq!(live.subscribers(), 1);
        for (i, lot) in ["north", "south", "north", "north", "south"]
            .iter()
            .enumerate()
        {
            log.append_any(&[event(lot, i as u64 + 1, i as u32)])
                .unwrap();
        }
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("frames within 5 s")
                .expect("the body goes on")
                .unwrap();
            seen.extend(frames(&chunk));
        }
        assert_eq!(seen[0], (0x1, b"snapshot".to_vec()));
        let offsets: Vec<u64> = seen[1..]
            .iter()
            .map(|(_, p)| {
                let v: Value = serde_json::from_slice(p).unwrap();
                assert_eq!(v["lot_id"], "north", "{v}");
                v["offset"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(
            offsets,
            vec![0, 2, 3],
            "north's changes, in order, no others"
        );
        stop.cancel();
        follower.await.unwrap();
        let mut rest = Vec::new();
        while let Some(chunk) = body.next().await {
            rest.extend(frames(&chunk.unwrap()));
        }
        let (opcode, payload) = rest.last().expect("a close frame").clone();
        assert_eq!(opcode, 0x8);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), GOING_AWAY);
    }
}
