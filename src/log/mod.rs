//! The event log: the single source of truth.
//!
//! [`EventLog`] is the interface every backend implements; the embedded default is
//! [`FileLog`], append-only segment files in the data directory (layout in [`format`](mod@format)).
//!
//! Guarantees of every backend:
//! - offsets are global, dense and start at 0; an append gets consecutive offsets in
//!   the order of its events;
//! - [`EventLog::wait_durable`] resolves only once every event below the given offset
//!   survives a crash (for [`FileLog`]: `sync_data` returned `Ok`, one sync covering all
//!   appends waiting at that moment);
//! - readers ([`EventLog::cursor`], [`Subscription`]) only ever see durable events;
//! - recovery at open cuts only a torn tail (the newest segment's unfinished last write,
//!   with nothing valid after it); any other damage refuses to open, naming the file
//!   and byte, and is cut only by the operator's `parkade repair-log` ([`repair`]);
//! - after a write or sync error the log refuses every further append until the process
//!   restarts and recovery has run (fail-stop: a failed `fsync` leaves the page cache
//!   in an unknown state, so the only safe truth is what recovery finds on disk).

mod file_log;
pub mod format;
pub mod jetstream;
pub mod memory;
pub mod repair;
mod storage;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use uuid::Uuid;

use crate::domain::{NewEvent, RecordedEvent};

pub use file_log::{FileLog, LogOptions, OpenMode, Recovery};
pub use memory::MemoryLog;
pub use storage::{OsStorage, Storage, WritableFile};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log segment {path} is damaged at byte {pos}: {reason}; this is not a torn tail (an unfinished last write), so parkade will not cut it off by itself: `parkade repair-log` shows the cut that would make the log readable and what it removes, `parkade repair-log --apply` makes it (copying the files first)")]
    Corrupt {
        path: PathBuf,
        pos: u64,
        reason: String,
    },
    #[error("the log failed to write and refuses appends until parkade restarts: {0}")]
    Failed(Arc<str>),
    #[error("the log is open read-only")]
    ReadOnly,
    #[error("event of lot {lot} is {len} bytes as a record, more than the {max} a record may hold; nothing was appended")]
    TooLarge { lot: String, len: usize, max: usize },
    #[error("the log is closed")]
    Closed,
    #[error("the log in {0} is in use by another parkade process")]
    Locked(PathBuf),
    /// A scan meant to read up to `end` found the log ending at `read` (a damaged log:
    /// what was durable is gone).
    #[error("the log could be read only up to offset {read} of {end}")]
    ShortRead { read: u64, end: u64 },
}

/// Events a scan reads at once unless it needs otherwise.
pub const SCAN_BATCH: usize = 65_536;

/// Read the log from `from` up to `to` (exclusive) in batches of at most `batch`
/// events, handing each (never past `to`) to `each`, until `to` or until `each`
/// breaks. Returns where it stopped; [`LogError::ShortRead`] when the log ended before
/// `to`, so that nothing built from a part of the log passes for the whole.
pub fn scan(
    log: &dyn EventLog,
    from: u64,
    to: u64,
    batch: usize,
    mut each: impl FnMut(&[RecordedEvent]) -> std::ops::ControlFlow<()>,
) -> Result<u64, LogError> {
    let mut cursor = log.cursor(from);
    while cursor.position() < to {
        let mut events = cursor.next_batch(batch.max(1))?;
        if events.is_empty() {
            return Err(LogError::ShortRead {
                read: cursor.position(),
                end: to,
            });
        }
        events.retain(|e| e.offset < to);
        if each(&events).is_break() {
            return Ok(cursor.position().min(to));
        }
    }
    Ok(cursor.position().min(to))
}

/// An append-only, durable, totally ordered log of lot events.
pub trait EventLog: Send + Sync + 'static {
    /// Identity of this log, kept by projections with their checkpoint so a read model
    /// built from another log is never silently continued.
    fn log_id(&self) -> Uuid;

    /// Append events in order; returns the offset given to the first one. Returns as
    /// soon as the events are ordered; durability is awaited with [`Self::wait_durable`].
    fn append(&self, events: &[NewEvent]) -> Result<u64, LogError>;

    /// One past the offset of the last durable event (the number of durable events).
    fn durable_end(&self) -> u64;

    /// Resolves once `durable_end() >= end`, or with the error that stopped the log.
    fn wait_durable(&self, end: u64) -> BoxFuture<'_, Result<(), LogError>>;

    /// A reader of durable events from `from` on.
    fn cursor(&self, from: u64) -> Box<dyn LogCursor>;

    /// `Err` once the log has stopped accepting appends.
    fn health(&self) -> Result<(), LogError>;
}

/// Sequential reader of durable events.
pub trait LogCursor: Send {
    /// Up to `max` durable events from the cursor's position; empty at the durable end.
    fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError>;
    /// Offset of the next event this cursor returns.
    fn position(&self) -> u64;
}

/// Catch up from an offset, then follow live appends.
pub struct Subscription {
    log: Arc<dyn EventLog>,
    cursor: Box<dyn LogCursor>,
}

impl Subscription {
    pub fn new(log: Arc<dyn EventLog>, from: u64) -> Self {
        let cursor = log.cursor(from);
        Subscription { log, cursor }
    }

    pub fn position(&self) -> u64 {
        self.cursor.position()
    }

    /// The next events (at most `max`), waiting for new appends when caught up.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError> {
        loop {
            let batch = self.cursor.next_batch(max)?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let next = self.cursor.position();
            self.log.wait_durable(next + 1).await?;
        }
    }
}
