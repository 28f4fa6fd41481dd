//! Live fan-out: every durable event of the log, as a change message, to any number of
//! websocket subscribers.
//!
//! A follower reads the log (never the lot actors, and never in the way of ingestion:
//! appends do not wait for it) and keeps the state of every lot as of its position. It
//! publishes each change on a bounded broadcast channel. A subscriber takes a snapshot
//! and a receiver under the same lock, so the first change it receives is the first
//! after its snapshot: no gap, no duplicate. A subscriber that falls further behind
//! than the channel holds is told so by the channel (and closed by the websocket).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::actors::LotView;
use crate::domain::{LotEvent, LotId, RecordedEvent};
use crate::log::{EventLog, Subscription};

/// One change, rendered once for every subscriber.
#[derive(Debug)]
pub struct Change {
    pub lot_id: LotId,
    pub offset: u64,
    /// Shared by every subscriber's send (a reference count, not a copy).
    pub json: actix_web::web::Bytes,
}

/// A change message: `{"type":"change", lot_id, occupancy, capacity, free, offset,
/// occurred_at, event_type}`.
pub fn change_of(e: &RecordedEvent) -> Change {
    let ev = &e.event;
    let json = json!({
        "type": "change",
        "lot_id": ev.lot_id.as_str(),
        "occupancy": ev.occupancy,
        "capacity": ev.capacity,
        "free": ev.capacity.saturating_sub(ev.occupancy),
        "offset": e.offset,
        "occurred_at": ev.occurred_at,
        "event_type": ev.event.event_type().as_str(),
    })
    .to_string();
    let json = actix_web::web::Bytes::from(json);
    Change {
        lot_id: ev.lot_id.clone(),
        offset: e.offset,
        json,
    }
}

/// What a subscriber sees first.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every event below this offset is reflected; changes start here.
    pub next_offset: u64,
    pub lots: Vec<Value>,
}

/// Samples of the recent series: one per 5 minutes of event time, the last 24 hours.
const SAMPLE_MICROS: i64 = 5 * 60 * 1_000_000;
const SAMPLES_KEPT: usize = 24 * 12;

struct State {
    lots: BTreeMap<LotId, Value>,
    /// Per lot, (sample start, occupancy at its last event), oldest first.
    recent: BTreeMap<LotId, std::collections::VecDeque<(i64, u32)>>,
    next: u64,
}

struct Inner {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Change>>,
    tx_capacity: usize,
}

/// The live view shared by the websocket handlers.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

impl Live {
    /// Start from the lots as they are at log offset `next` (the state the lot actors
    /// were rebuilt to), with a channel of `buffer` changes.
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
        let tx_capacity = buffer.max(16);
        let (tx, _) = broadcast::channel(tx_capacity);
        Live {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    lots,
                    recent: BTreeMap::new(),
                    next,
                }),
                tx,
                tx_capacity,
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

    /// A snapshot of the lots accepted by `keep`, and the changes after it.
    pub fn subscribe(
        &self,
        keep: impl Fn(&LotId) -> bool,
    ) -> (Snapshot, broadcast::Receiver<Arc<Change>>) {
        let st = self.lock();
        let rx = self.inner.tx.subscribe();
        let lots = st
            .lots
            .iter()
            .filter(|(id, _)| keep(id))
            .map(|(_, v)| v.clone())
            .collect();
        (
            Snapshot {
                next_offset: st.next,
                lots,
            },
            rx,
        )
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
        let from = self.position();
        let fresh: Vec<&RecordedEvent> = batch.iter().filter(|e| e.offset >= from).collect();
        let changes: Vec<Arc<Change>> = fresh.iter().map(|e| Arc::new(change_of(e))).collect();
        let mut st = self.lock();
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
        for c in changes {
            // No receivers is fine; nobody is waiting on this.
            let _ = self.inner.tx.send(c);
        }
    }

    /// Follow the log from the live position until shut down.
    pub async fn follow(self, log: Arc<dyn EventLog>, mut shutdown: watch::Receiver<bool>) {
        let mut sub = Subscription::new(log.clone(), self.position());
        // Bursts no larger than half the channel, so a subscriber that keeps up with the
        // rate is not dropped by one large batch.
        let burst = (self.inner.tx_capacity / 2).clamp(1, 4_096);
        loop {
            let batch = tokio::select! {
                b = sub.next_batch(burst) => b,
                _ = shutdown.changed() => return,
            };
            match batch {
                Ok(b) => self.publish(&b),
                Err(e) => {
                    tracing::error!(error = %e, "live fan-out cannot read the log; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                    sub = Subscription::new(log.clone(), self.position());
                }
            }
        }
    }
}
