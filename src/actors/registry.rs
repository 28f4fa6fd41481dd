//! The registry of lots: rebuilds every lot from the log at start and hands out handles.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

use actix::prelude::*;
use uuid::Uuid;

use super::lot::{LotCore, LotError, LotHandle};
use crate::domain::{
    Capacity, Command, LotId, LotName, LotView, Outcome, RecordedEvent, Request, Timestamp,
};
use crate::log::{EventLog, LogError, Subscription};

/// Settings of the lot actors.
#[derive(Debug, Clone)]
pub struct LotOptions {
    /// Client event ids remembered per lot (see the module docs).
    pub dedupe_window: usize,
    /// Messages queued per lot actor before senders wait (backpressure).
    pub mailbox: usize,
    /// Threads the lot actors are spread over.
    pub threads: usize,
    /// Most lots; a registration beyond is refused with [`LotError::TooManyLots`].
    pub max_lots: usize,
    /// How far ahead of the server clock an event time may be (the event time rule,
    /// [`check_event_time`](crate::domain::check_event_time)), in microseconds.
    pub max_future_micros: i64,
}

impl Default for LotOptions {
    fn default() -> Self {
        LotOptions {
            dedupe_window: 50_000,
            mailbox: 256,
            threads: 1,
            max_lots: usize::MAX,
            max_future_micros: crate::domain::DEFAULT_MAX_FUTURE_SECS * 1_000_000,
        }
    }
}

/// All lots, by id. Cheap to clone.
#[derive(Clone)]
pub struct Lots {
    inner: Arc<Inner>,
}

struct Inner {
    map: RwLock<HashMap<LotId, LotHandle>>,
    log: Arc<dyn EventLog>,
    arbiters: Vec<Arbiter>,
    /// Serialises registrations, so one id never gets two actors.
    register: tokio::sync::Mutex<()>,
    next_arbiter: AtomicUsize,
    opts: LotOptions,
    /// The log offset recovery folded up to.
    folded_to: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for a in &self.arbiters {
            a.stop();
        }
    }
}

impl Lots {
    /// Fold the whole log into lot states and start one actor per lot, on
    /// `opts.threads` threads of their own.
    /// Must be called inside a running actix system.
    pub fn recover(log: Arc<dyn EventLog>, opts: LotOptions) -> Result<Lots, LogError> {
        Self::recover_on(log, opts, None)
    }

    /// [`Lots::recover`] with `first` as the first of the lots' threads (the one the
    /// log's client runs on, when the log acknowledges over the network: see
    /// [`JetStreamLog::open_on`](crate::log::jetstream::JetStreamLog::open_on)). The lots
    /// stop it when they are dropped.
    pub fn recover_on(
        log: Arc<dyn EventLog>,
        opts: LotOptions,
        first: Option<Arbiter>,
    ) -> Result<Lots, LogError> {
        let started = std::time::Instant::now();
        let mut cores: HashMap<LotId, LotCore> = HashMap::new();
        let mut events = 0u64;
        let folded_to = log.durable_end();
        crate::log::scan(&*log, 0, folded_to, crate::log::SCAN_BATCH, |batch| {
            events += batch.len() as u64;
            for e in batch {
                cores
                    .entry(e.event.lot_id.clone())
                    .or_insert_with(|| LotCore::new(e.event.lot_id.clone(), opts.dedupe_window))
                    .replay(e);
            }
            std::ops::ControlFlow::Continue(())
        })?;
        let threads = opts.threads.max(1);
        let arbiters: Vec<Arbiter> = first
            .into_iter()
            .chain(std::iter::repeat_with(Arbiter::new))
            .take(threads)
            .collect();
        let lots = Lots {
            inner: Arc::new(Inner {
                map: RwLock::new(HashMap::new()),
                log,
                arbiters,
                register: tokio::sync::Mutex::new(()),
                next_arbiter: AtomicUsize::new(0),
                opts,
                folded_to,
            }),
        };
        let count = cores.len();
        for core in cores.into_values() {
            if core.state.is_registered() {
                let handle = lots.spawn(core);
                lots.inner
                    .map
                    .write()
                    .expect("lots lock")
                    .insert(handle.id().clone(), handle);
            }
        }
        tracing::info!(
            lots = count,
            events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "lots rebuilt from the log"
        );
        Ok(lots)
    }

    fn spawn(&self, core: LotCore) -> LotHandle {
        let next = self.inner.next_arbiter.fetch_add(1, Ordering::Relaxed);
        let arbiter = &self.inner.arbiters[next % self.inner.arbiters.len()];
        let opts = &self.inner.opts;
        LotHandle::start(
            core,
            &arbiter.handle(),
            self.inner.log.clone(),
            opts.mailbox,
            opts.max_future_micros,
        )
    }

    /// Follow a shared log (one other processes append to as well) from where recovery
    /// stopped, until `shutdown`: each lot's actor folds the events it has not seen, so
    /// its view and its next append's expected position keep up with the other writers,
    /// and a lot registered by another process gets its actor here. A lot started this
    /// way is not counted against `max_lots` (the process that registered it did).
    pub async fn follow(self, shutdown: CancellationToken) -> Result<(), LotError> {
        let mut sub = Subscription::new(self.inner.log.clone(), self.inner.folded_to);
        let mut unregistered: HashMap<LotId, LotCore> = HashMap::new();
        loop {
            let batch = tokio::select! {
                b = sub.next_batch(crate::log::SCAN_BATCH) => b?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let mut by_lot: HashMap<LotId, Vec<RecordedEvent>> = HashMap::new();
            for e in batch {
                by_lot.entry(e.event.lot_id.clone()).or_default().push(e);
            }
            for (lot, events) in by_lot {
                if let Some(handle) = self.get(&lot) {
                    handle.observe(events).await?;
                    continue;
                }
                // Under the registration lock: one id never gets two actors.
                let guard = self.inner.register.lock().await;
                if let Some(handle) = self.get(&lot) {
                    drop(guard);
                    handle.observe(events).await?;
                    continue;
                }
                let window = self.inner.opts.dedupe_window;
                let core = unregistered
                    .entry(lot.clone())
                    .or_insert_with(|| LotCore::new(lot.clone(), window));
                core.catch_up(&events, &mut []);
                if core.state.is_registered() {
                    let core = unregistered.remove(&lot).expect("just folded");
                    let handle = self.spawn(core);
                    self.inner
                        .map
                        .write()
                        .expect("lots lock")
                        .insert(lot, handle);
                }
            }
        }
    }

    /// A registered lot as readers see it ([`LotHandle::view`]), without taking a
    /// handle out of the map.
    pub fn view(&self, id: &LotId) -> Option<LotView> {
        self.inner
            .map
            .read()
            .expect("lots lock")
            .get(id)
            .map(LotHandle::view)
    }

    /// The handle of a registered lot.
    pub fn get(&self, id: &LotId) -> Option<LotHandle> {
        self.inner.map.read().expect("lots lock").get(id).cloned()
    }

    /// Every registered lot, sorted by id.
    pub fn handles(&self) -> Vec<LotHandle> {
        let mut all: Vec<LotHandle> = self
            .inner
            .map
            .read()
            .expect("lots lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Views of every registered lot, sorted by id (see [`LotHandle::view`]).
    pub fn views(&self) -> Vec<LotView> {
        self.handles().iter().map(LotHandle::view).collect()
    }

    /// Register a lot. An existing lot answers with its own decision (a duplicate
    /// `event_id`, or a rejection carrying the existing registration).
    pub async fn register(
        &self,
        id: LotId,
        name: LotName,
        capacity: Capacity,
        event_id: Option<Uuid>,
        occurred_at: Timestamp,
    ) -> Result<(Outcome, LotView), LotError> {
        let request = Request {
            command: Command::Register { name, capacity },
            event_id,
            occurred_at,
        };
        if let Some(existing) = self.get(&id) {
            return existing.execute_one(request).await;
        }
        let guard = self.inner.register.lock().await;
        if let Some(existing) = self.get(&id) {
            drop(guard);
            return existing.execute_one(request).await;
        }
        // Checked under the registration lock, so concurrent registrations cannot pass it.
        let held = self.inner.map.read().expect("lots lock").len();
        if held >= self.inner.opts.max_lots {
            return Err(LotError::TooManyLots(self.inner.opts.max_lots));
        }
        let handle = self.spawn(LotCore::new(id.clone(), self.inner.opts.dedupe_window));
        let result = handle.execute_one(request).await;
        if let Ok((Outcome::Accepted { .. }, _)) = &result {
            self.inner
                .map
                .write()
                .expect("lots lock")
                .insert(id, handle);
        }
        drop(guard);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LotEvent, NewEvent};
    use crate::log::{Expect, MemoryLog};

    /// A lot on a log another writer appends to as well: the follower brings the
    /// lot that writer's event (the first after the lot's own, right at the offset it
    /// has folded up to), and the lot's own events, which come back through the
    /// follower too, are not counted twice.
    #[actix_web::test]
    async fn the_follower_brings_a_lot_another_writers_events_and_not_its_own_again() {
        let log = MemoryLog::new();
        let lots = Lots::recover(log.clone(), LotOptions::default()).unwrap();
        let id = LotId::parse("north").unwrap();
        let capacity = Capacity::new(10).unwrap();
        let name = LotName::parse("North").unwrap();
        let now = Timestamp::now();
        lots.register(id.clone(), name, capacity, None, now)
            .await
            .unwrap();
        let lot = lots.get(&id).unwrap();
        let (_, own) = lot.arrive(now, None).await.unwrap();
        assert_eq!((own.occupancy, own.offset), (1, Some(1)));

        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let follower = actix_web::rt::spawn(lots.clone().follow(stopped));
        // Another writer's arrival, decided on the lot as it is after its own two.
        let other = NewEvent {
            lot_id: id.clone(),
            lot_seq: 3,
            event_id: Uuid::new_v4(),
            client_event_id: false,
            occurred_at: now,
            event: LotEvent::VehicleArrived,
            occupancy: 2,
            capacity: 10,
        };
        log.append(Expect::Last(Some(1)), &[other]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let view = loop {
            let view = lot.view();
            if view.offset == Some(2) || std::time::Instant::now() > deadline {
                break view;
            }
            actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        assert_eq!((view.occupancy, view.offset), (2, Some(2)), "{view:?}");
        // The lot decides on top of it: its next append expects offset 2.
        let (_, after) = lot.arrive(now, None).await.unwrap();
        assert_eq!((after.occupancy, after.offset), (3, Some(3)));
        stop.cancel();
        follower.await.unwrap().unwrap();
    }

    /// A read does not wait for the lot's writes (issue 26): while an arrival waits
    /// for a slow sync of the log, the lot reads at once, as it was before the arrival
    /// (never what a crash could still take back), and reads the arrival once the
    /// arrival's reply has come.
    #[actix_web::test]
    async fn a_read_never_waits_for_a_sync_and_never_shows_what_is_not_durable() {
        let log = MemoryLog::new();
        let lots = Lots::recover(log.clone(), LotOptions::default()).unwrap();
        let id = LotId::parse("north").unwrap();
        let now = Timestamp::now();
        let (capacity, name) = (Capacity::new(10).unwrap(), LotName::parse("North").unwrap());
        lots.register(id.clone(), name, capacity, None, now)
            .await
            .unwrap();
        let lot = lots.get(&id).unwrap();
        lot.arrive(now, None).await.unwrap();

        log.hold_syncs();
        let arriving = actix_web::rt::spawn({
            let lot = lot.clone();
            async move { lot.arrive(now, None).await }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while log.events().len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the arrival was not appended"
            );
            actix_web::rt::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let read =
            actix_web::rt::time::timeout(std::time::Duration::from_secs(1), async { lot.view() })
                .await
                .expect("a read waited for the sync");
        assert_eq!((read.occupancy, read.offset), (1, Some(1)), "{read:?}");
        assert_eq!(lots.views(), vec![read]);
        assert!(
            !arriving.is_finished(),
            "the arrival was answered before it was durable"
        );

        log.sync();
        let (_, replied) = arriving.await.unwrap().unwrap();
        assert_eq!((replied.occupancy, replied.offset), (2, Some(2)));
        assert_eq!(lot.view(), replied);
    }
}
