//! The embedded log backend: segment files in one directory, a writer thread doing
//! group commit, and recovery of torn tails at open.
//!
//! The rooms: `recovery` scans the segments at open and decides (a pure function) what
//! may be repaired; `writer` is the thread that writes and syncs appended records in
//! groups and publishes the durable end; `cursor` reads the durable part in order.
//! This module holds what they share: the segment list, the appenders' buffer and the
//! durable end. `mark` records how far the log had been synced, so that recovery can
//! tell a lost tail of acknowledged records from the zeros written ahead of them.

mod cursor;
mod mark;
pub(super) mod recovery;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use tokio::sync::watch;
use uuid::Uuid;

pub(in crate::log) use self::mark::FILE as WRITTEN_MARK;
pub use self::recovery::Recovery;
use super::format::{self, HEADER_LEN};
use super::storage::{OsStorage, Storage};
use super::{Appended, BoxFuture, EventLog, Expect, LogCursor, LogError};
use crate::domain::{LotId, NewEvent, RecordedEvent, Timestamp};
use std::future::Future;

/// The offset of each lot's last event, by the lot id's bytes.
pub(in crate::log) type LotEnds = rustc_hash::FxHashMap<Box<[u8]>, u64>;

/// Note that `lot`'s last event is at `offset` (a lookup, and an allocation only for a
/// lot not seen before).
pub(in crate::log) fn note_lot_end(lots: &mut LotEnds, lot: &[u8], offset: u64) {
    match lots.get_mut(lot) {
        Some(last) => *last = offset,
        None => {
            lots.insert(lot.into(), offset);
        }
    }
}

/// One sparse index entry every this many offsets.
const INDEX_EVERY: u64 = 1024;
/// Bytes read at once by cursors and recovery.
const READ_CHUNK: usize = 1 << 20;

/// How the log was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The one writer: takes the directory lock, repairs a torn tail, starts the writer.
    ReadWrite,
    /// A reader beside a running server (replay, verify): no lock, no repair; it sees the
    /// events that were on disk when it opened.
    ReadOnly,
}

/// Settings of the embedded log.
#[derive(Clone)]
pub struct LogOptions {
    /// A new segment is started once the active one would grow past this many bytes.
    pub segment_bytes: u64,
    pub storage: Arc<dyn Storage>,
    pub mode: OpenMode,
    /// The id a new log gets; an existing log with another id is refused
    /// ([`LogError::OtherLog`]). `None`: a new log gets a fresh id.
    pub log_id: Option<Uuid>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 256 << 20,
            storage: Arc::new(OsStorage),
            mode: OpenMode::ReadWrite,
            log_id: None,
        }
    }
}

/// The embedded, file-backed [`EventLog`].
pub struct FileLog {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
    recovery: Recovery,
}

struct Inner {
    dir: PathBuf,
    log_id: Uuid,
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    segments: RwLock<Vec<Arc<Segment>>>,
    read_only: bool,
    /// The directory lock, released by `close` so the directory can be reopened.
    lock: Mutex<Option<File>>,
}

#[derive(Debug, Clone)]
struct Durable {
    end: u64,
    failed: Option<Arc<str>>,
}

struct Pending {
    buf: Vec<u8>,
    /// (offset, position in `buf`) of records to enter into the sparse index.
    index: Vec<(u64, usize)>,
    /// Offset of the first record in `buf`.
    buf_first: u64,
    next_offset: u64,
    failed: Option<Arc<str>>,
    closed: bool,
    /// The writer thread is waiting for work (so appenders must wake it). While it is
    /// busy writing or syncing, appenders skip the wake-up system call.
    writer_idle: bool,
    /// When the oldest record in `buf` was appended (for the append-latency metric).
    since: Option<std::time::Instant>,
    /// The offset of each lot's last appended event: what an append's expected position
    /// is checked against.
    lots: LotEnds,
}

/// A segment as readers see it: only its durable part.
struct Segment {
    base: u64,
    path: PathBuf,
    file: File,
    /// Durable bytes, header included.
    len: AtomicU64,
    /// One past the last durable offset in this segment.
    end: AtomicU64,
    index: RwLock<Vec<(u64, u64)>>,
}

impl Segment {
    fn open(
        path: PathBuf,
        base: u64,
        len: u64,
        end: u64,
        index: Vec<(u64, u64)>,
    ) -> Result<Self, LogError> {
        let file = File::open(&path).map_err(|source| LogError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Segment {
            base,
            path,
            file,
            len: AtomicU64::new(len),
            end: AtomicU64::new(end),
            index: RwLock::new(index),
        })
    }

    /// The file position to start scanning from to find `offset`.
    fn seek_pos(&self, offset: u64) -> u64 {
        let index = self.index.read().expect("index lock");
        match index.partition_point(|(o, _)| *o <= offset) {
            0 => HEADER_LEN as u64,
            i => index[i - 1].1,
        }
    }
}

impl Pending {
    /// Encode `e` as the next record.
    fn push(&mut self, recorded_at: Timestamp, e: &NewEvent) {
        let offset = self.next_offset;
        if offset.is_multiple_of(INDEX_EVERY) {
            let at = self.buf.len();
            self.index.push((offset, at));
        }
        format::encode_record(&mut self.buf, offset, recorded_at, e);
        self.next_offset += 1;
    }

    /// Encode `events` (of any lots) as the next records, noting each lot's end.
    fn push_each<'a>(&mut self, events: impl IntoIterator<Item = (Timestamp, &'a NewEvent)>) {
        for (recorded_at, e) in events {
            let offset = self.next_offset;
            self.push(recorded_at, e);
            note_lot_end(&mut self.lots, e.lot_id.as_str().as_bytes(), offset);
        }
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileLog {
    /// Open (or create) the log in `dir`, recovering a torn tail.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<FileLog, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let read_only = opts.mode == OpenMode::ReadOnly;
        let lock = if read_only {
            None
        } else {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            Some(recovery::take_lock(&dir)?)
        };
        let recovered = recovery::recover(&dir, &opts)?;
        let end = recovered.end;
        let (durable, _) = watch::channel(Durable { end, failed: None });
        let inner = Arc::new(Inner {
            dir,
            log_id: recovered.log_id,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                index: Vec::new(),
                buf_first: end,
                next_offset: end,
                failed: read_only.then(|| "read-only".into()),
                closed: false,
                writer_idle: false,
                since: None,
                lots: recovered.lots,
            }),
            wake: Condvar::new(),
            durable,
            segments: RwLock::new(recovered.segments),
            read_only,
            lock: Mutex::new(lock),
        });
        let writer = match recovered.active {
            Some(active) => Some(writer::spawn(
                inner.clone(),
                active,
                opts.segment_bytes,
                opts.storage.clone(),
            )?),
            None => None,
        };
        Ok(FileLog {
            inner,
            writer: Mutex::new(writer),
            recovery: recovered.recovery,
        })
    }

    /// What recovery found at open.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Append without an expected position ([`Expect::Any`]); the first offset.
    pub fn append_any(&self, events: &[NewEvent]) -> Result<u64, LogError> {
        match self.append(Expect::Any, events)? {
            Appended::Ordered(first) => Ok(first),
            Appended::Acknowledging(_) => unreachable!("the embedded log orders at once"),
        }
    }

    /// Append a copy of another log's events, keeping their offsets and record times:
    /// each must hold the next offset of this log (a gap or a repeat is refused with
    /// nothing appended). Returns the first offset; durable once
    /// [`EventLog::wait_durable`] says so. What copies a JetStream stream into a local
    /// folder and the reverse of `parkade log copy`.
    pub fn append_copy(&self, events: &[RecordedEvent]) -> Result<u64, LogError> {
        super::check_encodable(events.iter().map(|e| &e.event))?;
        self.write(|p| {
            for (i, e) in events.iter().enumerate() {
                let expected = p.next_offset + i as u64;
                if e.offset != expected {
                    return Err(LogError::OutOfOrder {
                        expected,
                        got: e.offset,
                    });
                }
            }
            p.push_each(events.iter().map(|e| (e.recorded_at, &e.event)));
            Ok(())
        })
    }

    /// Under the appenders' lock, check the log takes appends and run `append` (which
    /// checks before it pushes: an `Err` pushed nothing). Returns the first offset given.
    fn write(
        &self,
        append: impl FnOnce(&mut Pending) -> Result<(), LogError>,
    ) -> Result<u64, LogError> {
        if self.inner.read_only {
            return Err(LogError::ReadOnly);
        }
        let mut p = lock(&self.inner.pending);
        if let Some(f) = &p.failed {
            return Err(LogError::Failed(f.clone()));
        }
        if p.closed {
            return Err(LogError::Closed);
        }
        let first = p.next_offset;
        let was_empty = p.buf.is_empty();
        append(&mut p)?;
        if was_empty && !p.buf.is_empty() {
            p.since = Some(std::time::Instant::now());
        }
        let wake = p.writer_idle;
        drop(p);
        if wake {
            self.inner.wake.notify_one();
        }
        Ok(first)
    }

    /// Flush what is pending, stop the writer thread and refuse further appends.
    pub fn close(&self) {
        lock(&self.inner.pending).closed = true;
        self.inner.wake.notify_all();
        let handle = self.writer.lock().expect("writer handle lock").take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the log writer thread panicked");
            }
        }
        lock(&self.inner.lock).take();
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Resolves once the durable end reaches `end`, or with the error that stopped the log.
fn wait_durable(inner: &Inner, end: u64) -> impl Future<Output = Result<(), LogError>> + 'static {
    let mut rx = inner.durable.subscribe();
    async move {
        let state = rx
            .wait_for(|d| d.end >= end || d.failed.is_some())
            .await
            .map_err(|_| LogError::Closed)?;
        if state.end >= end {
            Ok(())
        } else {
            Err(LogError::Failed(
                state.failed.clone().unwrap_or_else(|| "unknown".into()),
            ))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave `Pending` half-updated in a way that
    // matters more than the panic itself; keep serving the error paths.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventLog for FileLog {
    fn log_id(&self) -> Uuid {
        self.inner.log_id
    }

    fn append(&self, expect: Expect, events: &[NewEvent]) -> Result<Appended, LogError> {
        let lot = super::lot_of(expect, events)?;
        super::check_encodable(events)?;
        let now = Timestamp::now();
        self.write(|p| {
            let Some(lot) = lot else {
                p.push_each(events.iter().map(|e| (now, e)));
                return Ok(());
            };
            let key = lot.as_str().as_bytes();
            if let Expect::Last(expected) = expect {
                if p.lots.get(key).copied() != expected {
                    return Err(LogError::Conflict {
                        lot: lot.to_string(),
                        expected,
                    });
                }
            }
            // One lot: its end is noted once, not per event.
            for e in events {
                p.push(now, e);
            }
            note_lot_end(&mut p.lots, key, p.next_offset - 1);
            Ok(())
        })
        .map(Appended::Ordered)
    }

    fn read_lot(
        &self,
        lot: &LotId,
        after: Option<u64>,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, LogError>> {
        let last = lock(&self.inner.pending)
            .lots
            .get(lot.as_str().as_bytes())
            .copied();
        let inner = self.inner.clone();
        let lot = lot.clone();
        Box::pin(async move {
            let Some(last) = last.filter(|l| after.is_none_or(|a| *l > a)) else {
                return Ok(Vec::new());
            };
            wait_durable(&inner, last + 1).await?;
            let from = after.map_or(0, |a| a + 1);
            tokio::task::spawn_blocking(move || {
                let mut cursor = cursor::FileCursor::new(inner, from);
                let mut found = Vec::new();
                while cursor.position() <= last {
                    let batch = cursor.next_batch(super::SCAN_BATCH)?;
                    if batch.is_empty() {
                        return Err(LogError::ShortRead {
                            read: cursor.position(),
                            end: last + 1,
                        });
                    }
                    found.extend(
                        batch
                            .into_iter()
                            .filter(|e| e.offset <= last && e.event.lot_id == lot),
                    );
                }
                Ok(found)
            })
            .await
            .map_err(|e| LogError::Failed(format!("reading a lot: {e}").into()))?
        })
    }

    fn durable_end(&self) -> u64 {
        self.inner.durable.borrow().end
    }

    fn wait_durable(&self, end: u64) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(wait_durable(&self.inner, end))
    }

    fn cursor(&self, from: u64) -> Box<dyn LogCursor> {
        Box::new(cursor::FileCursor::new(self.inner.clone(), from))
    }

    fn close(&self) {
        FileLog::close(self);
    }

    fn health(&self) -> Result<(), LogError> {
        match &lock(&self.inner.pending).failed {
            Some(_) if self.inner.read_only => Ok(()),
            Some(f) => Err(LogError::Failed(f.clone())),
            None => Ok(()),
        }
    }
}
