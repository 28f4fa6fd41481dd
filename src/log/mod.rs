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

pub mod copy;
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

use crate::domain::{LotId, NewEvent, RecordedEvent};

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
    /// A segment or record of a format this build does not read: not damage, and
    /// nothing is cut for it.
    #[error("{path} was written by a newer parkade ({what} {found}; this build reads {reads}): upgrade parkade to open this log; nothing was changed, and `parkade repair-log` will not cut it")]
    NewerFormat {
        path: PathBuf,
        what: &'static str,
        found: u32,
        reads: u32,
    },
    #[error("the log failed to write and refuses appends until parkade restarts: {0}")]
    Failed(Arc<str>),
    #[error("the log is open read-only")]
    ReadOnly,
    #[error("event of lot {lot} is {len} bytes as a record, more than the {max} a record may hold; nothing was appended")]
    TooLarge { lot: String, len: usize, max: usize },
    #[error("the log is closed")]
    Closed,
    #[error("the log in {dir} is log {found}, not log {wanted} that was asked for (a copy of another log is never continued)")]
    OtherLog {
        dir: PathBuf,
        found: Uuid,
        wanted: Uuid,
    },
    #[error("the log in {0} is in use by another parkade process")]
    Locked(PathBuf),
    /// Another writer appended to the lot since the position this append expected:
    /// nothing was appended. The writer reads what it missed and decides again.
    #[error("lot {lot}: its last event is no longer at the expected position ({expected:?}): another writer appended; nothing was appended")]
    Conflict { lot: String, expected: Option<u64> },
    #[error("a copied event holds offset {got} where offset {expected} comes next")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("an append needs at least one event")]
    Empty,
    #[error("an append holds events of one lot, not of {first} and {other}")]
    MixedLots { first: String, other: String },
    /// The shared backend (JetStream) could not be reached or answered with an error.
    #[error("{0}")]
    Backend(String),
    /// No answer came for an append in time: its events may be in the log or not.
    /// The writer's next append finds out (by its expected position); a client's
    /// retry is safe only with the same event ids.
    #[error("the log did not answer in time, so whether the events were stored is unknown: {0}")]
    Unknown(String),
    /// A scan meant to read up to `end` found the log ending at `read` (a damaged log:
    /// what was durable is gone).
    #[error("the log could be read only up to offset {read} of {end}")]
    ShortRead { read: u64, end: u64 },
}

impl LogError {
    /// The same error for one more receiver (an append answers every request it
    /// carried): conflicts and failures as they are, the rest by their message.
    pub fn shared(&self) -> LogError {
        match self {
            LogError::Conflict { lot, expected } => LogError::Conflict {
                lot: lot.clone(),
                expected: *expected,
            },
            LogError::Failed(why) => LogError::Failed(why.clone()),
            LogError::Closed => LogError::Closed,
            LogError::ReadOnly => LogError::ReadOnly,
            LogError::Unknown(why) => LogError::Unknown(why.clone()),
            other => LogError::Backend(other.to_string()),
        }
    }
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

/// What an append expects of its lot's position in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The lot's last event is at this offset (`None`: the lot has none).
    Last(Option<u64>),
    /// No check, and the events may be of several lots: for a writer that knows it is
    /// alone (tests, tools filling a log no service runs on).
    Any,
}

/// What became of an append.
pub enum Appended {
    /// The events hold consecutive offsets from this one, given at once; they are
    /// durable once [`EventLog::wait_durable`] says so (the embedded log's group commit).
    Ordered(u64),
    /// The backend gives offsets with its durable acknowledgement: this resolves with
    /// each event's offset (in order, not necessarily consecutive) once the events are
    /// durable, or with the error that stored none of them, or with
    /// [`LogError::Conflict`].
    Acknowledging(BoxFuture<'static, Result<Vec<u64>, LogError>>),
}

/// How a node's copy of a shared log stands: what `/readyz` and `/metrics` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyState {
    /// Events the shared log holds, as last asked (or answered to this node's appends).
    pub stream_end: u64,
    /// Events this node's copy holds (what its readers see).
    pub copy_end: u64,
    /// Past this many events behind, the node is not ready.
    pub max_lag: u64,
    /// Consumers the server keeps on the stream (for all nodes; parkade's reads make
    /// none).
    pub consumers: u64,
}

impl CopyState {
    /// Events the shared log holds that this node's copy does not yet.
    pub fn lag(&self) -> u64 {
        self.stream_end.saturating_sub(self.copy_end)
    }
}

/// An append-only, durable, totally ordered log of lot events.
pub trait EventLog: Send + Sync + 'static {
    /// Identity of this log, kept by projections with their checkpoint so a read model
    /// built from another log is never silently continued.
    fn log_id(&self) -> Uuid;

    /// Append events of one lot in order, if the lot's last event in the log is still
    /// where `expect` says ([`Expect::Last`]); otherwise nothing is appended and the
    /// answer is [`LogError::Conflict`] (at once, or from [`Appended::Acknowledging`]).
    /// `events` must all belong to one lot (unless [`Expect::Any`]); an empty append is
    /// refused.
    ///
    /// The expected position is what keeps a lot's writer single: two writers that
    /// decided on the same state cannot both append. A backend with one stream per lot
    /// and expected revisions checks the first event's `lot_seq - 1` instead; the two
    /// name the same position.
    fn append(&self, expect: Expect, events: &[NewEvent]) -> Result<Appended, LogError>;

    /// The events of `lot` after offset `after` (all of them for `None`), up to the
    /// lot's last event appended before this call: what a writer that lost a conflict
    /// missed.
    fn read_lot(
        &self,
        lot: &LotId,
        after: Option<u64>,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, LogError>>;

    /// Whether other processes append to this log too (a shared, replicated backend):
    /// then the lots follow it for what the others wrote.
    fn shared(&self) -> bool {
        false
    }

    /// How this node's copy of a shared log stands against the shared log (`None`
    /// for a log of one process).
    fn copy_state(&self) -> Option<CopyState> {
        None
    }

    /// Whether an event this process appended is durable once its append is answered
    /// (a replicated backend's acknowledgement), so a writer's reply need not wait
    /// for [`Self::wait_durable`], which tells when readers here can see it.
    fn durable_when_acknowledged(&self) -> bool {
        false
    }

    /// One past the offset of the last durable event (the number of durable events).
    fn durable_end(&self) -> u64;

    /// Resolves once `durable_end() >= end`, or with the error that stopped the log.
    fn wait_durable(&self, end: u64) -> BoxFuture<'_, Result<(), LogError>>;

    /// A reader of durable events from `from` on.
    fn cursor(&self, from: u64) -> Box<dyn LogCursor>;

    /// `Err` once the log has stopped accepting appends.
    fn health(&self) -> Result<(), LogError>;

    /// Flush what is pending and refuse further appends (a process stopping; a test
    /// reopening the log while old handles to it are still about).
    fn close(&self) {}
}

/// Never write a record the reader would refuse: that would stall every reader at it
/// and look like damage at the next start.
pub(crate) fn check_encodable<'a>(
    events: impl IntoIterator<Item = &'a NewEvent>,
) -> Result<(), LogError> {
    match events.into_iter().find(|e| !format::encodable(e)) {
        Some(e) => Err(LogError::TooLarge {
            lot: e.lot_id.to_string(),
            len: format::payload_len(e),
            max: format::MAX_PAYLOAD,
        }),
        None => Ok(()),
    }
}

/// The one lot of an append's events (`None` for [`Expect::Any`], which may mix lots),
/// or why they are not an append.
pub(crate) fn lot_of(expect: Expect, events: &[NewEvent]) -> Result<Option<&LotId>, LogError> {
    let first = events.first().ok_or(LogError::Empty)?;
    if expect == Expect::Any {
        return Ok(None);
    }
    match events.iter().find(|e| e.lot_id != first.lot_id) {
        Some(other) => Err(LogError::MixedLots {
            first: first.lot_id.to_string(),
            other: other.lot_id.to_string(),
        }),
        None => Ok(Some(&first.lot_id)),
    }
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
