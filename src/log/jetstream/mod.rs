//! The event log on NATS JetStream: a replicated stream that several parkade processes
//! append to, each keeping a local copy that its readers read.
//!
//! One stream (default `PARKADE`), one subject per lot: `{stream}.lot.{lot}` with the lot
//! id's `.` written as `~` (a lot id never holds `~`; a subject's tokens are split at
//! `.`). An event is one message: the embedded log's record bytes (with their CRC32C)
//! as the payload. Offset `n` is stream sequence `n + 1`
//! (offsets count from 0, sequences from 1), dense as long as nothing is deleted from
//! the stream (a reader that finds a gap stops with an error). The stream's metadata
//! holds the log id (`parkade_log_id`), so projections' checkpoints name it as they name
//! an embedded log, and a copied log keeps its id.
//!
//! A lot's single writer: every append names the sequence of the lot's last message it
//! knows (`Nats-Expected-Last-Subject-Sequence`, 0 for none); if another writer appended
//! since, the server refuses it and nothing is stored ([`LogError::Conflict`]); the lot
//! actor then reads what it missed and decides again. Several events of a lot go in as
//! one atomic batch (the stream allows them: `allow_atomic`): all stored at consecutive
//! sequences or none, acknowledged by one reply. A node sends the appends its lots
//! have waiting at one moment together, as one such batch (each lot's first message
//! carries the lot's expectation, and the server checks them all): one round trip and
//! one replicated write for many lots. If any lot's expectation fails the whole batch is
//! refused, and each lot's append is then sent alone, to get its own answer.
//!
//! A checked append carries no message id: a copy sent again after a lost reply is
//! refused by its lot's expectation (the lot's last message is now that copy), and the
//! writer catches up and finds its events there. Only an unchecked append carries the
//! event id as `Nats-Msg-Id`, so that the server's duplicate window answers a retry
//! with the first copy. (Each id a server keeps for its two-minute window costs it
//! work and memory per message: without them the ingest benchmark's R3 cluster took
//! about 1.8 times the batch and 1.5 times the single-event events per second.)
//!
//! Durable before acknowledged: the server acknowledges a message once it is stored on
//! a quorum of the stream's replicas; on disk only with `jetstream { sync_interval:
//! always }` (otherwise the page cache holds it for up to two minutes).
//!
//! Reads: [`JetStreamLog`] follows the stream into a local copy, an embedded log in the
//! data folder with the stream's log id and offsets; cursors, subscriptions and
//! projections read that copy, so every node serves every event in stream order,
//! whoever appended it. The node's own appends go into the copy from their answers (the
//! events as stored, at the sequences the server gave), not back over the network; what
//! other nodes appended is read from the stream, the follower asking where the stream
//! ends every 50 ms. An append's reply does not wait for the copy (the acknowledgement
//! is the durability). The copy is derived: deleted, it is filled again from the
//! stream.
//!
//! Threads: the client, the combiner and the follower are tasks of one runtime. The
//! server opens the log on the lot actors' first thread ([`JetStreamLog::open_on`]), so
//! an append and its acknowledgement pass between a lot's actor and the client without
//! waking another thread (on two cores shared with the NATS servers, that took the
//! ingest benchmark's R3 single-event figure from 0.75 to 0.92 times the per-event
//! UPSERT baseline's to 1.00 to 1.44 times); [`JetStreamLog::open`] gives the log a
//! thread of its own.
//!
//! | file | what |
//! |---|---|
//! | `client.rs` | [`Stream`]: connecting (creating or checking the stream), checked appends alone or as atomic batches, retried through an election |
//! | `reads.rs` | reads by batched direct gets, and a message decoded back into its event |
//! | `combiner.rs` | the appends a node's lots have waiting at one moment, sent as one batch |
//! | `follower.rs` | the local copy kept in step with the stream |
//! | `mod.rs` | the options, the errors, the timings, and [`JetStreamLog`], the [`EventLog`] over all of it |

use std::time::Duration;
use tokio_util::sync::CancellationToken;

use std::path::Path;
use std::sync::Arc;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::domain::{LotId, NewEvent, RecordedEvent};

mod client;
mod combiner;
mod follower;
mod reads;

pub use client::Stream;
use combiner::{combine, Own, PendingAppend};
use follower::{follow, Seen};

use super::{
    Appended, BoxFuture, CopyState, EventLog, Expect, FileLog, LogCursor, LogError, LogOptions,
};

/// Where the stream is and what it is.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub url: String,
    pub stream: String,
    /// Copies of every message (1, or 3 for a cluster that survives a node).
    pub replicas: usize,
    /// A NATS credentials file, when the server asks for one.
    pub credentials: Option<std::path::PathBuf>,
    /// Past this many events of the stream not yet in this node's copy, the node is
    /// not ready (`/readyz`).
    pub max_copy_lag: u64,
}

/// The default of [`JetStreamOptions::max_copy_lag`]: a few seconds of a busy campus.
pub const DEFAULT_MAX_COPY_LAG: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    /// Another writer appended to the lot since `expected`: nothing was stored.
    #[error(
        "lot {lot}: its last message is no longer sequence {expected}: another writer appended"
    )]
    Conflict { lot: String, expected: u64 },
    #[error("JetStream publish: {0}")]
    Publish(String),
    /// No server answered for the stream (in time).
    #[error("JetStream publish: no server answers for the stream ({0})")]
    Unanswered(String),
    #[error("JetStream read of sequence {sequence}: {reason}")]
    Read { sequence: u64, reason: String },
    /// The stream holds no message at `sequence` though it holds later ones.
    #[error("the stream has no message at sequence {sequence} (the next is {next}): messages were deleted, and the log is no longer whole")]
    Missing { sequence: u64, next: u64 },
    #[error("message at sequence {sequence} is not a parkade event: {reason}")]
    Decode { sequence: u64, reason: String },
}

/// How long an append that no server answered is sent again (a leader being elected,
/// a stalled server left for another) before it fails, its outcome unknown.
const RETRY_FOR: Duration = Duration::from_secs(15);

/// The longest an append may take, retries included.
const APPEND_WAIT: Duration = Duration::from_secs(20);

/// How often the client pings its server; three unanswered pings in a row and it
/// leaves the server for another.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a server may take to greet a new connection.
const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// How long a request (an append's acknowledgement, a read, the stream's state) waits
/// for its answer before it is sent again or fails. A replicated write that syncs
/// to disk takes milliseconds; seconds mean the server or the leader is gone.
const REQUEST_WAIT: Duration = Duration::from_secs(2);

/// The longest wait between two tries of an unanswered append: short, as the try
/// itself has waited [`REQUEST_WAIT`] for its answer (a new leader may be there now).
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// How long a read keeps asking for messages it knows the stream holds.
const READ_WAIT: Duration = Duration::from_secs(5);

/// How long one direct get waits for its next reply before it is asked again.
const DIRECT_WAIT: Duration = Duration::from_secs(1);

/// How often the follower asks the stream where it ends (for what other nodes wrote).
const POLL_EVERY: Duration = Duration::from_millis(50);

/// How long the follower leaves a gap before the copy's end open, while this node has
/// appends on their way (whose answers may fill it), before it reads the gap.
const GAP_WAIT: Duration = Duration::from_millis(20);

/// Events the follower reads from the stream at once at most.
const FOLLOW_BATCH: usize = 16_384;

/// Messages one direct get asks for at most, and the bytes the server sends for it at
/// most (it sends a batch without flow control).
const DIRECT_BATCH: usize = 4_096;
const DIRECT_MAX_BYTES: usize = 4 << 20;

/// The [`EventLog`] on a JetStream stream (see the module docs): appends go to the
/// stream; reads come from the local copy the follower keeps.
pub struct JetStreamLog {
    stream: Arc<Stream>,
    copy: Arc<FileLog>,
    /// Where the client, the combiner and the follower run: the thread
    /// [`JetStreamLog::open_on`] was given, or `own`.
    handle: tokio::runtime::Handle,
    /// The log's own thread, when [`JetStreamLog::open`] made one.
    own: Option<tokio::runtime::Runtime>,
    /// Why the follower stopped, once it has.
    failed: watch::Receiver<Option<Arc<str>>>,
    stop: CancellationToken,
    /// Appends on their way to [`combine`].
    combiner: mpsc::UnboundedSender<PendingAppend>,
    seen: Arc<Seen>,
    max_copy_lag: u64,
}

impl JetStreamLog {
    /// Connect to the stream, open (or create) its local copy in `dir`, and follow the
    /// stream into it; returns once the copy holds every event the stream held when this
    /// connected. The client runs on a thread of its own.
    pub async fn open(
        options: &JetStreamOptions,
        dir: &Path,
        copy_options: LogOptions,
    ) -> Result<JetStreamLog, LogError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("parkade-nats")
            .enable_all()
            .build()
            .map_err(|source| LogError::Io {
                path: "<nats runtime>".into(),
                source,
            })?;
        let handle = runtime.handle().clone();
        match Self::open_on(options, dir, copy_options, handle).await {
            Ok(mut log) => {
                log.own = Some(runtime);
                Ok(log)
            }
            Err(e) => {
                // Not dropped here: a runtime may not be dropped inside another's task.
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    /// [`JetStreamLog::open`] with the client, the combiner and the follower on the
    /// runtime of `handle`: the thread of the writers that append most (the lot
    /// actors', in the server), so that an append and its acknowledgement go from one
    /// task to the next without waking another thread.
    pub async fn open_on(
        options: &JetStreamOptions,
        dir: &Path,
        copy_options: LogOptions,
        handle: tokio::runtime::Handle,
    ) -> Result<JetStreamLog, LogError> {
        let o = options.clone();
        let stream = Arc::new(on(&handle, async move { Stream::connect(&o, None).await }).await?);
        let copy = Arc::new(FileLog::open(
            dir,
            LogOptions {
                log_id: Some(stream.log_id()),
                ..copy_options
            },
        )?);
        let s = stream.clone();
        let end = on(&handle, async move { s.end().await }).await?;
        if copy.durable_end() > end {
            return Err(LogError::Backend(format!(
                "the local copy in {} holds {} events, the stream {} only {end}: it is not a copy of this stream as it is now (were messages deleted?); move the folder away to copy the stream afresh",
                dir.display(),
                copy.durable_end(),
                options.stream
            )));
        }
        let (fail, failed) = watch::channel(None);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let (stored, own_events) = mpsc::unbounded_channel();
        let own = Own {
            stored,
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        let seen = Arc::new(Seen {
            end: AtomicU64::new(end),
            consumers: AtomicU64::new(0),
        });
        let (s, c, o, n) = (
            stream.clone(),
            copy.clone(),
            own.in_flight.clone(),
            seen.clone(),
        );
        handle.spawn(async move {
            if let Err(e) = follow(&s, &c, own_events, &o, &n, stopped).await {
                tracing::error!(error = %e, "following the JetStream stream stopped; appends and reads wait until parkade restarts");
                let _sent = fail.send(Some(e.to_string().into()));
            }
        });
        let (combiner, waiting) = mpsc::unbounded_channel();
        handle.spawn(combine(stream.clone(), waiting, own));
        let log = JetStreamLog {
            stream,
            copy,
            handle,
            own: None,
            failed,
            stop,
            combiner,
            seen,
            max_copy_lag: options.max_copy_lag,
        };
        tracing::info!(stream = %options.stream, events = end, "copying the JetStream stream");
        log.wait_durable(end).await?;
        Ok(log)
    }

    /// The stream under this log.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.own.take() {
            rt.shutdown_background();
        }
    }
}

/// Start `fut` on the NATS runtime now; the returned future, awaited from anywhere,
/// gives its result.
fn on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = Result<T, JetStreamError>> + Send + 'static,
) -> BoxFuture<'static, Result<T, LogError>> {
    let task = runtime.spawn(fut);
    Box::pin(async move {
        task.await
            .map_err(|e| LogError::Backend(format!("the NATS task stopped: {e}")))?
            .map_err(LogError::from)
    })
}

impl From<JetStreamError> for LogError {
    fn from(e: JetStreamError) -> Self {
        match e {
            JetStreamError::Conflict { lot, expected } => LogError::Conflict {
                lot,
                expected: expected.checked_sub(1),
            },
            JetStreamError::Unanswered(why) => LogError::Unknown(why),
            other => LogError::Backend(other.to_string()),
        }
    }
}

impl EventLog for JetStreamLog {
    fn log_id(&self) -> Uuid {
        self.stream.log_id()
    }

    fn append(&self, expect: Expect, events: &[NewEvent]) -> Result<Appended, LogError> {
        super::lot_of(expect, events)?;
        super::check_encodable(events)?;
        self.health()?;
        let expected = match expect {
            Expect::Last(last) => Some(last.map_or(0, |o| o + 1)),
            Expect::Any => None,
        };
        // One queue, unbounded but bounded by its senders: a lot's actor has one
        // append in flight at a time.
        let (reply, answer) = oneshot::channel();
        let waiting = PendingAppend {
            expected,
            events: events.to_vec(),
            reply,
        };
        self.combiner.send(waiting).map_err(|_| LogError::Closed)?;
        // Never an append left waiting for ever: past the retries it fails, its
        // outcome unknown (the lot's next append finds out).
        Ok(Appended::Acknowledging(Box::pin(async move {
            match tokio::time::timeout(APPEND_WAIT, answer).await {
                Ok(Ok(stored)) => stored.map_err(LogError::from),
                Ok(Err(_)) => Err(LogError::Backend(
                    "the NATS task stopped before the append was answered".into(),
                )),
                Err(_) => Err(JetStreamError::Unanswered(format!(
                    "no acknowledgement within {} s",
                    APPEND_WAIT.as_secs()
                ))
                .into()),
            }
        })))
    }

    fn read_lot(
        &self,
        lot: &LotId,
        after: Option<u64>,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, LogError>> {
        let stream = self.stream.clone();
        let lot = lot.clone();
        on(
            &self.handle,
            async move { stream.read_lot(&lot, after).await },
        )
    }

    fn shared(&self) -> bool {
        true
    }

    fn copy_state(&self) -> Option<CopyState> {
        Some(CopyState {
            stream_end: self.seen.end.load(Ordering::Relaxed),
            copy_end: self.copy.durable_end(),
            max_lag: self.max_copy_lag,
            consumers: self.seen.consumers.load(Ordering::Relaxed),
        })
    }

    /// Acknowledged means stored on a quorum of the stream's replicas; the local copy
    /// only tells when this node's readers see it.
    fn durable_when_acknowledged(&self) -> bool {
        true
    }

    /// Stop following and close the local copy; appends are refused from then on.
    fn close(&self) {
        self.stop.cancel();
        self.copy.close();
    }

    fn durable_end(&self) -> u64 {
        self.copy.durable_end()
    }

    fn wait_durable(&self, end: u64) -> BoxFuture<'_, Result<(), LogError>> {
        let mut failed = self.failed.clone();
        Box::pin(async move {
            tokio::select! {
                r = self.copy.wait_durable(end) => r,
                f = failed.wait_for(Option::is_some) => match f {
                    Ok(why) => Err(LogError::Failed(why.clone().unwrap_or_else(|| "unknown".into()))),
                    Err(_) => Err(LogError::Closed),
                },
            }
        })
    }

    fn cursor(&self, from: u64) -> Box<dyn LogCursor> {
        self.copy.cursor(from)
    }

    fn health(&self) -> Result<(), LogError> {
        if self.stop.is_cancelled() {
            return Err(LogError::Closed);
        }
        if let Some(why) = self.failed.borrow().clone() {
            return Err(LogError::Failed(why));
        }
        self.copy.health()
    }
}
