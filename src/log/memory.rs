//! An [`EventLog`] in memory, for unit tests of what sits on the log (the lot core, the
//! live fan-out) without files: appends are durable at once, and a test can make the
//! log fail as the embedded one does on a write error.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use uuid::Uuid;

use super::{BoxFuture, EventLog, LogCursor, LogError};
use crate::domain::{NewEvent, RecordedEvent, Timestamp};

/// The log in memory.
pub struct MemoryLog {
    id: Uuid,
    events: Arc<Mutex<Vec<RecordedEvent>>>,
    /// The durable end, or why the log failed.
    durable: watch::Sender<Result<u64, Arc<str>>>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog {
            id: Uuid::new_v4(),
            events: Arc::default(),
            durable: watch::channel(Ok(0)).0,
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

    fn append(&self, events: &[NewEvent]) -> Result<u64, LogError> {
        self.health()?;
        let mut log = self.lock();
        let first = log.len() as u64;
        let now = Timestamp::now();
        log.extend(events.iter().enumerate().map(|(i, e)| RecordedEvent {
            offset: first + i as u64,
            recorded_at: now,
            schema_version: 1,
            event: e.clone(),
        }));
        let end = log.len() as u64;
        drop(log);
        let _previous = self.durable.send_replace(Ok(end));
        Ok(first)
    }

    fn durable_end(&self) -> u64 {
        self.lock().len() as u64
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
    next: u64,
}

impl LogCursor for MemoryCursor {
    fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let from = (self.next as usize).min(events.len());
        let to = from.saturating_add(max).min(events.len());
        let batch = events[from..to].to_vec();
        self.next += batch.len() as u64;
        Ok(batch)
    }

    fn position(&self) -> u64 {
        self.next
    }
}
