//! An [`EventLog`] in memory, for unit tests of what sits on the log (the lot core, the
//! live fan-out) without files: appends are durable at once, and a test can make the
//! log fail as the embedded one does on a write error, or hold its syncs back as a slow
//! disk would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use uuid::Uuid;

use super::{Appended, BoxFuture, EventLog, Expect, LogCursor, LogError};
use crate::domain::{LotId, NewEvent, RecordedEvent, Timestamp};

/// The log in memory.
pub struct MemoryLog {
    id: Uuid,
    events: Arc<Mutex<Vec<RecordedEvent>>>,
    /// The durable end, or why the log failed.
    durable: watch::Sender<Result<u64, Arc<str>>>,
    /// Appends are not durable until [`MemoryLog::sync`].
    held: AtomicBool,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog {
            id: Uuid::new_v4(),
            events: Arc::default(),
            durable: watch::channel(Ok(0)).0,
            held: AtomicBool::new(false),
        }
    }
}

impl MemoryLog {
    pub fn new() -> Arc<MemoryLog> {
        Arc::new(MemoryLog::default())
    }

    /// From now on refuse appends, as the embedded log does after a failed write.
    pub fn fail(&self, why: &str) {
        let _previous = self.durable.send_replace(Err(why.into()));
    }

    /// From now on appends are not durable until [`MemoryLog::sync`], as on a disk
    /// that is slow to sync.
    pub fn hold_syncs(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Make every append so far durable, and the ones after it at once again.
    pub fn sync(&self) {
        self.held.store(false, Ordering::SeqCst);
        let end = self.lock().len() as u64;
        self.durable.send_if_modified(|d| match d {
            Ok(n) if *n < end => {
                *n = end;
                true
            }
            _ => false,
        });
    }

    /// Append without an expected position ([`Expect::Any`]); the first offset.
    pub fn append_any(&self, events: &[NewEvent]) -> Result<u64, LogError> {
        match self.append(Expect::Any, events)? {
            Appended::Ordered(first) => Ok(first),
            Appended::Acknowledging(_) => unreachable!("the memory log orders at once"),
        }
    }

    /// Every event appended so far.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordedEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EventLog for MemoryLog {
    fn log_id(&self) -> Uuid {
        self.id
    }

    fn append(&self, expect: Expect, events: &[NewEvent]) -> Result<Appended, LogError> {
        let lot = super::lot_of(expect, events)?;
        self.health()?;
        let mut log = self.lock();
        if let (Some(lot), Expect::Last(expected)) = (lot, expect) {
            let last = log
                .iter()
                .rev()
                .find(|e| &e.event.lot_id == lot)
                .map(|e| e.offset);
            if last != expected {
                return Err(LogError::Conflict {
                    lot: lot.to_string(),
                    expected,
                });
            }
        }
        let first = log.len() as u64;
        let now = Timestamp::now();
        log.extend(events.iter().enumerate().map(|(i, e)| RecordedEvent {
            offset: first + i as u64,
            recorded_at: now,
            schema_version: 1,
            event: e.clone(),
        }));
        drop(log);
        if !self.held.load(Ordering::SeqCst) {
            self.sync();
        }
        Ok(Appended::Ordered(first))
    }

    fn read_lot(
        &self,
        lot: &LotId,
        after: Option<u64>,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, LogError>> {
        let from = after.map_or(0, |a| a + 1) as usize;
        let found: Vec<RecordedEvent> = self
            .lock()
            .iter()
            .skip(from)
            .filter(|e| &e.event.lot_id == lot)
            .cloned()
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn durable_end(&self) -> u64 {
        match &*self.durable.borrow() {
            Ok(end) => *end,
            Err(_) => self.lock().len() as u64,
        }
    }

    fn wait_durable(&self, end: u64) -> BoxFuture<'_, Result<(), LogError>> {
        let mut rx = self.durable.subscribe();
        Box::pin(async move {
            let state = rx
                .wait_for(|d| d.as_ref().map_or(true, |e| *e >= end))
                .await
                .map_err(|_| LogError::Closed)?;
            match &*state {
                Ok(_) => Ok(()),
                Err(why) => Err(LogError::Failed(why.clone())),
            }
        })
    }

    fn cursor(&self, from: u64) -> Box<dyn LogCursor> {
        Box::new(MemoryCursor {
            events: self.events.clone(),
            durable: self.durable.subscribe(),
            next: from,
        })
    }

    fn health(&self) -> Result<(), LogError> {
        match &*self.durable.borrow() {
            Ok(_) => Ok(()),
            Err(why) => Err(LogError::Failed(why.clone())),
        }
    }
}

struct MemoryCursor {
    events: Arc<Mutex<Vec<RecordedEvent>>>,
    durable: watch::Receiver<Result<u64, Arc<str>>>,
    next: u64,
}

impl LogCursor for MemoryCursor {
    fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let end = match &*self.durable.borrow() {
            Ok(end) => *end as usize,
            Err(_) => events.len(),
        };
        let from = (self.next as usize).min(end);
        let to = from.saturating_add(max).min(end);
        let batch = events[from..to].to_vec();
        self.next += batch.len() as u64;
        Ok(batch)
    }

    fn position(&self) -> u64 {
        self.next
    }
}
