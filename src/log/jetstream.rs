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

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use std::path::Path;
use std::sync::Arc;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::domain::{LotId, NewEvent, RecordedEvent, Timestamp};

use super::{
    format, Appended, BoxFuture, CopyState, EventLog, Expect, FileLog, LogCursor, LogError,
    LogOptions,
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

/// Whether connecting makes the stream.
#[derive(Clone, Copy)]
enum Create {
    /// It must exist.
    No,
    /// Made when missing, with this log id or a fresh one.
    IfMissing(Option<Uuid>),
}

/// The stream's metadata key holding the log id.
const LOG_ID_KEY: &str = "parkade_log_id";

/// The stream, connected: the primitives [`JetStreamLog`] is built on.
pub struct Stream {
    context: jetstream::Context,
    stream: stream::Stream,
    name: String,
    log_id: Uuid,
}

impl Stream {
    /// Connect and create the stream (or take the existing one, which must have the
    /// asked-for replicas and be a parkade log). A new stream gets `new_log_id`, or a
    /// fresh id; an existing one with another id than `new_log_id` is refused.
    pub async fn connect(
        o: &JetStreamOptions,
        new_log_id: Option<Uuid>,
    ) -> Result<Stream, JetStreamError> {
        Stream::open(o, Create::IfMissing(new_log_id)).await
    }

    /// Connect to the stream, which must exist (what a copy out of it reads).
    pub async fn connect_existing(o: &JetStreamOptions) -> Result<Stream, JetStreamError> {
        Stream::open(o, Create::No).await
    }

    /// Connect, making the stream when missing if `create` says so.
    async fn open(o: &JetStreamOptions, create: Create) -> Result<Stream, JetStreamError> {
        let new_log_id = match create {
            Create::IfMissing(id) => id,
            Create::No => None,
        };
        let connect_err = |reason: String| JetStreamError::Connect {
            url: o.url.clone(),
            reason,
        };
        // A server that stalls (a stopped process still holds its connections open) is
        // found out by its missing pongs within three ping intervals, and the client
        // goes to another server; a request to it fails after REQUEST_WAIT and is sent
        // again on the new connection. A stalled server also accepts a connection
        // without greeting it: CONNECT_WAIT moves on to the next.
        let mut options = async_nats::ConnectOptions::new()
            .name("parkade")
            .ping_interval(PING_EVERY)
            .connection_timeout(CONNECT_WAIT)
            .request_timeout(Some(REQUEST_WAIT));
        if let Some(path) = &o.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| connect_err(format!("credentials {}: {e}", path.display())))?;
        }
        let servers = o
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| connect_err(e.to_string()))?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let mut context = jetstream::new(client);
        // Publish acknowledgements wait this long too (30 s by default).
        context.set_timeout(REQUEST_WAIT);
        let stream_err = |reason: String| JetStreamError::Stream {
            stream: o.stream.clone(),
            reason,
        };
        let wanted_id = new_log_id.unwrap_or_else(Uuid::now_v7);
        let config = stream::Config {
            name: o.stream.clone(),
            subjects: vec![format!("{}.lot.>", o.stream)],
            storage: stream::StorageType::File,
            num_replicas: o.replicas,
            metadata: [(LOG_ID_KEY.to_owned(), wanted_id.to_string())].into(),
            allow_atomic_publish: true,
            allow_direct: true,
            ..Default::default()
        };
        // A cluster that has just formed (or lost a node) may time the request out
        // while it settles: try again for up to 30 s.
        let started = std::time::Instant::now();
        let mut stream = loop {
            let got = match create {
                Create::IfMissing(_) => context
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(|e| e.to_string()),
                Create::No => match context.get_stream(&o.stream).await {
                    Ok(s) => Ok(s),
                    // An operator's copy: said at once, not tried again.
                    Err(e) => return Err(stream_err(format!("cannot be read: {e}"))),
                },
            };
            match got {
                Ok(s) => break s,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    tracing::warn!(error = %e, "creating the JetStream stream; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(stream_err(e)),
            }
        };
        // A new replicated stream takes a moment to elect its leader; appends before
        // that find no stream.
        let started = std::time::Instant::now();
        let log_id = loop {
            let info = stream.info().await.map_err(|e| stream_err(e.to_string()))?;
            let id = info
                .config
                .metadata
                .get(LOG_ID_KEY)
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or_else(|| {
                    stream_err(format!(
                        "is not a parkade log (no {LOG_ID_KEY} in its metadata)"
                    ))
                })?;
            if new_log_id.is_some_and(|w| w != id) {
                return Err(stream_err(format!(
                    "is log {id}, not the log {wanted_id} being copied into it"
                )));
            }
            if info.config.num_replicas != o.replicas {
                return Err(stream_err(format!(
                    "exists with {} replicas, not the {} configured",
                    info.config.num_replicas, o.replicas
                )));
            }
            if !info.config.allow_atomic_publish || !info.config.allow_direct {
                // Made by an operator or an older parkade: a lot's batch is appended
                // as one atomic batch, and reads are direct gets.
                let mut config = info.config.clone();
                config.allow_atomic_publish = true;
                config.allow_direct = true;
                context.update_stream(config).await.map_err(|e| {
                    stream_err(format!("allowing atomic batches and direct gets: {e}"))
                })?;
                continue;
            }
            let leader = info.cluster.as_ref().and_then(|c| c.leader.as_ref());
            if o.replicas <= 1 || leader.is_some_and(|l| !l.is_empty()) {
                break id;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(stream_err("no leader elected within 30 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Stream {
            context,
            stream,
            name: o.stream.clone(),
            log_id,
        })
    }

    /// Append copies of another log's events (`parkade log copy`), keeping their record
    /// times and ids: each only if it lands at its own offset (the stream's last
    /// sequence is the event's offset: no other writer came between), published
    /// without waiting for each acknowledgement (up to `window` unacknowledged, in
    /// order on one connection). Returns once every one is acknowledged.
    pub async fn append_copies(
        &self,
        events: &[RecordedEvent],
        window: usize,
    ) -> Result<(), JetStreamError> {
        let mut waiting = std::collections::VecDeque::new();
        for e in events {
            let mut buf = Vec::new();
            format::encode_record(&mut buf, 0, e.recorded_at, &e.event);
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                e.offset.to_string().as_str(),
            );
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                e.event.event_id.to_string().as_str(),
            );
            let pending = self
                .context
                .publish_with_headers(self.subject(&e.event.lot_id), headers, Bytes::from(buf))
                .await
                .map_err(|err| JetStreamError::Publish(err.to_string()))?;
            waiting.push_back((e.offset, pending));
            while waiting.len() >= window.max(1) {
                let (offset, ack) = waiting.pop_front().expect("not empty");
                copied(offset, ack.await)?;
            }
        }
        for (offset, ack) in waiting {
            copied(offset, ack.await)?;
        }
        Ok(())
    }

    /// The log id in the stream's metadata.
    pub fn log_id(&self) -> Uuid {
        self.log_id
    }

    /// The subject of a lot's events.
    pub fn subject(&self, lot: &LotId) -> String {
        format!("{}.lot.{}", self.name, lot.as_str().replace('.', "~"))
    }

    /// The number of events in the stream (one past the last offset).
    pub async fn end(&self) -> Result<u64, JetStreamError> {
        Ok(self.state().await?.last_sequence)
    }

    /// The server that leads the stream (`None` for a stream of one replica).
    pub async fn leader(&self) -> Result<Option<String>, JetStreamError> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(|e| JetStreamError::Stream {
            stream: self.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .filter(|l| !l.is_empty()))
    }

    /// The stream's state as its leader knows it: its last sequence, its consumers.
    pub async fn state(&self) -> Result<stream::State, JetStreamError> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(|e| JetStreamError::Stream {
            stream: self.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(info.state.clone())
    }

    /// The stream sequence of the lot's last event (0 when it has none), asked of the
    /// stream's leader; asked again (for up to 15 s) while none answers, as an
    /// append is sent again: a refusal waits out a leader's election as an acceptance
    /// does.
    pub async fn last_of_lot(&self, lot: &LotId) -> Result<u64, JetStreamError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subject = self.subject(lot);
        let last = retried(
            || self.stream.get_last_raw_message_by_subject(&subject),
            |e| e.kind() != LastRawMessageErrorKind::NoMessageFound,
        )
        .await;
        match last {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(JetStreamError::Read {
                sequence: 0,
                reason: e.to_string(),
            }),
        }
    }

    /// Append `events` of one lot in order, the first only if the lot's last message is
    /// still sequence `expected` (0: the lot has none), each next one after the one
    /// before; `None`: no check (events of any lots). Returns each event's offset, once
    /// the server acknowledged it.
    pub async fn append_lot(
        &self,
        expected: Option<u64>,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, JetStreamError> {
        let stored = self.store_lot(expected, events).await?;
        Ok(stored.iter().map(|e| e.offset).collect())
    }

    /// [`Self::append_lot`], returning the events as the stream holds them.
    async fn store_lot(
        &self,
        expected: Option<u64>,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>, JetStreamError> {
        if let (Some(mut last), true) = (expected, events.len() > 1) {
            // One round trip per atomic batch instead of one per event.
            let mut stored = Vec::with_capacity(events.len());
            for chunk in events.chunks(ATOMIC_BATCH) {
                let batch = self.append_atomic_retried(&[(last, chunk)]).await?;
                last = batch.last().map_or(last, |e| e.offset + 1);
                stored.extend(batch);
            }
            return Ok(stored);
        }
        let mut last = expected;
        let mut stored = Vec::with_capacity(events.len());
        let now = Timestamp::now();
        for e in events {
            let mut buf = Vec::new();
            format::encode_record(&mut buf, 0, now, e);
            let payload = Bytes::from(buf);
            let mut headers = HeaderMap::new();
            match last {
                Some(last) => headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    last.to_string().as_str(),
                ),
                None => headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    e.event_id.to_string().as_str(),
                ),
            }
            let ack = self
                .publish(self.subject(&e.lot_id), headers, payload.clone())
                .await;
            match ack {
                // Stored earlier (a retry without a check): as the stream holds it,
                // with the record time of then.
                Ok(ack) if ack.duplicate => {
                    let earlier = self.read_range(ack.sequence - 1, ack.sequence).await?;
                    let [earlier] = <[RecordedEvent; 1]>::try_from(earlier).map_err(|_| {
                        JetStreamError::Read {
                            sequence: ack.sequence,
                            reason: "not there, though the server says it holds it".into(),
                        }
                    })?;
                    stored.push(earlier);
                }
                Ok(ack) => {
                    last = last.map(|_| ack.sequence);
                    stored.push(decode(ack.sequence, &payload)?);
                }
                Err(err) if wrong_last_sequence(&err) => {
                    return Err(JetStreamError::Conflict {
                        lot: e.lot_id.to_string(),
                        expected: last.unwrap_or(0),
                    })
                }
                Err(err) => return Err(JetStreamError::Publish(err.to_string())),
            }
        }
        Ok(stored)
    }

    /// [`Self::append_atomic`], again (for up to [`RETRY_FOR`], backing off) while no server
    /// answers for the stream (a leader being elected, the connection's server gone).
    /// Sending again is safe: if an earlier copy was stored, the server refuses this one
    /// (its lots' expected sequences) and the writer catches up.
    async fn append_atomic_retried(
        &self,
        lots: &[(u64, &[NewEvent])],
    ) -> Result<Vec<RecordedEvent>, JetStreamError> {
        retried(
            || self.append_atomic(lots),
            |e| matches!(e, JetStreamError::Unanswered(_)),
        )
        .await
    }

    /// Append the events of one or more lots (at most [`ATOMIC_BATCH`] in all; each
    /// lot once) as one atomic batch: all stored, at consecutive sequences in the given
    /// order, or none; only if each lot's last message is still the sequence given with
    /// it (the server checks them all against the stream before the batch). The
    /// messages before the last go out without waiting; the last commits the batch and
    /// its reply acknowledges all of them. Returns the events as stored. Not tried
    /// again on an unclear end (a timeout): the lots' next appends then find out, by a
    /// conflict, whether the batch went in.
    async fn append_atomic(
        &self,
        lots: &[(u64, &[NewEvent])],
    ) -> Result<Vec<RecordedEvent>, JetStreamError> {
        let client = self.context.client();
        let batch = Uuid::new_v4().simple().to_string();
        let now = Timestamp::now();
        let publish_err = |e: String| JetStreamError::Publish(format!("atomic batch: {e}"));
        // Each event, with its lot's expectation on the lot's first.
        let mut messages: Vec<(&NewEvent, Option<u64>)> = Vec::new();
        for (expected, events) in lots {
            for (i, e) in events.iter().enumerate() {
                messages.push((e, (i == 0).then_some(*expected)));
            }
        }
        let total = messages.len();
        let mut reply = None;
        let mut payloads = Vec::with_capacity(total);
        for (i, (e, expected)) in messages.into_iter().enumerate() {
            let mut buf = Vec::new();
            format::encode_record(&mut buf, 0, now, e);
            let payload = Bytes::from(buf);
            payloads.push(payload.clone());
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if let Some(expected) = expected {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected.to_string().as_str(),
                );
            }
            let subject = self.subject(&e.lot_id);
            if i + 1 < total {
                client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| publish_err(e.to_string()))?;
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                let answer = client.request_with_headers(subject, headers, payload).await;
                match answer {
                    Ok(answer) => reply = Some(answer.payload),
                    // Nothing stored (no responders), or not known (a timeout: the
                    // connection's server went away): either way safe to send again,
                    // as a copy that was stored is refused by its lots' expectations
                    // (a conflict).
                    Err(e)
                        if matches!(
                            e.kind(),
                            async_nats::RequestErrorKind::NoResponders
                                | async_nats::RequestErrorKind::TimedOut
                        ) =>
                    {
                        return Err(JetStreamError::Unanswered(e.to_string()))
                    }
                    Err(e) => return Err(publish_err(e.to_string())),
                }
            }
        }
        let reply = reply.ok_or_else(|| publish_err("no events".into()))?;
        let ack: BatchReply = serde_json::from_slice(&reply).map_err(|e| {
            publish_err(format!(
                "unreadable reply ({e}): {}",
                String::from_utf8_lossy(&reply)
            ))
        })?;
        match ack {
            BatchReply {
                error: Some(error), ..
            } if matches!(error.err_code, 10071 | 10164) => {
                let (expected, events) = lots[0];
                Err(JetStreamError::Conflict {
                    lot: events[0].lot_id.to_string(),
                    expected,
                })
            }
            BatchReply {
                error: Some(error), ..
            } => Err(publish_err(format!(
                "{} (code {})",
                error.description, error.err_code
            ))),
            BatchReply {
                seq: Some(last),
                count: Some(count),
                batch: Some(id),
                ..
            } if count == total as u64 && id == batch && last >= count => {
                let first = last + 1 - count;
                (first..=last)
                    .zip(&payloads)
                    .map(|(sequence, payload)| decode(sequence, payload))
                    .collect()
            }
            other => Err(publish_err(format!(
                "an acknowledgement that does not match the batch: {other:?}"
            ))),
        }
    }

    /// Publish one message and wait for its acknowledgement, again (for up to [`RETRY_FOR`],
    /// backing off) while the stream cannot be reached: a new replicated stream's
    /// subject is not yet known across the cluster, or a node went away. A retry of a
    /// message the stream did store is answered from its `Nats-Msg-Id` (the server's
    /// duplicate window) with the first sequence.
    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<
        async_nats::jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    > {
        let once = || async {
            self.context
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await?
                .await
        };
        retried(once, |e| {
            matches!(
                e.kind(),
                PublishErrorKind::StreamNotFound
                    | PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
            )
        })
        .await
    }

    /// Up to `max` events from offset `from`, in order: batched direct gets, answered
    /// by any of the stream's replicas, which leave nothing behind on the server.
    pub async fn read(&self, from: u64, max: usize) -> Result<Vec<RecordedEvent>, JetStreamError> {
        let end = self.end().await?;
        self.read_range(from, end.min(from.saturating_add(max as u64)))
            .await
    }

    /// The events of offsets `from..to`, which the stream holds (its end known
    /// already): batched direct gets, answered by any of the stream's replicas, which
    /// leave nothing behind on the server (a consumer per read did: thousands of them
    /// within a minute of a busy cluster, until the server refused new ones). A
    /// replica that has not yet stored the newest sequences answers with fewer; the
    /// rest is asked for again, for up to [`READ_WAIT`]. Checked to be gapless.
    async fn read_range(&self, from: u64, to: u64) -> Result<Vec<RecordedEvent>, JetStreamError> {
        let mut out = Vec::with_capacity(to.saturating_sub(from).min(FOLLOW_BATCH as u64) as usize);
        let started = std::time::Instant::now();
        let mut next = from;
        while next < to {
            let want = (to - next).min(DIRECT_BATCH as u64) as usize;
            let got = self
                .direct_some(next + 1, None, want, started, || {
                    "the stream ends after it".into()
                })
                .await?;
            for (sequence, payload) in got {
                if sequence > to {
                    break;
                }
                if sequence != next + 1 {
                    return Err(JetStreamError::Missing {
                        sequence: next + 1,
                        next: sequence,
                    });
                }
                out.push(decode(sequence, &payload)?);
                next = sequence;
            }
        }
        Ok(out)
    }

    /// The events of `lot` after offset `after` (all for `None`), up to its last message
    /// when this is called (asked of the stream's leader, so nothing acknowledged
    /// before the call is missed), by batched direct gets of the lot's subject.
    pub async fn read_lot(
        &self,
        lot: &LotId,
        after: Option<u64>,
    ) -> Result<Vec<RecordedEvent>, JetStreamError> {
        let last = self.last_of_lot(lot).await?;
        let mut start = after.map_or(1, |a| a + 2);
        let subject = self.subject(lot);
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        while start <= last {
            let got = self
                .direct_some(start, Some(&subject), DIRECT_BATCH, started, || {
                    format!("lot {lot}'s last message is sequence {last}")
                })
                .await?;
            for (sequence, payload) in got {
                if sequence > last {
                    break;
                }
                out.push(decode(sequence, &payload)?);
                start = sequence + 1;
            }
        }
        Ok(out)
    }

    /// [`Self::direct_batch`], asked again while it brings nothing, until [`READ_WAIT`]
    /// after `started`: the stream holds messages from `start` on (`known` says how it
    /// is known), so an empty answer is a replica that has not stored them yet.
    async fn direct_some(
        &self,
        start: u64,
        subject: Option<&str>,
        batch: usize,
        started: std::time::Instant,
        known: impl Fn() -> String,
    ) -> Result<Vec<(u64, Bytes)>, JetStreamError> {
        loop {
            let got = self.direct_batch(start, subject, batch).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            if started.elapsed() > READ_WAIT {
                return Err(JetStreamError::Read {
                    sequence: start,
                    reason: format!(
                        "no server had it within {} s, though {}",
                        READ_WAIT.as_secs(),
                        known()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One batched direct get: up to `batch` messages from sequence `start` on (of
    /// `subject` only, when given), as (sequence, payload), from whichever replica
    /// answers; empty when it holds none from there (or did not answer within
    /// [`DIRECT_WAIT`]).
    async fn direct_batch(
        &self,
        start: u64,
        subject: Option<&str>,
        batch: usize,
    ) -> Result<Vec<(u64, Bytes)>, JetStreamError> {
        use futures_util::StreamExt;
        let read_err = |reason: String| JetStreamError::Read {
            sequence: start,
            reason,
        };
        let client = self.context.client();
        let inbox = client.new_inbox();
        // Dropped at the end of the read: the subscription goes with it.
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| read_err(e.to_string()))?;
        let mut request = serde_json::json!({
            "seq": start,
            "batch": batch,
            "max_bytes": DIRECT_MAX_BYTES,
        });
        if let Some(subject) = subject {
            request["next_by_subj"] = subject.into();
        }
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.name),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| read_err(e.to_string()))?;
        let mut out = Vec::new();
        loop {
            // A replica that stalled may still be asked (until the other servers notice):
            // what came is returned, and the caller asks again, likely another replica.
            let Ok(m) = tokio::time::timeout(DIRECT_WAIT, replies.next()).await else {
                return Ok(out);
            };
            let m =
                m.ok_or_else(|| read_err("the connection closed during a direct get".into()))?;
            match m.status.map(|s| s.as_u16()) {
                None => {}
                // The end of the batch, or nothing from `start` on.
                Some(204 | 404) => return Ok(out),
                Some(503) => {
                    return Err(read_err(
                        "no server answers direct gets for the stream (is allow_direct set?)"
                            .into(),
                    ))
                }
                Some(code) => {
                    return Err(read_err(format!(
                        "direct get answered {code} {}",
                        m.description.unwrap_or_default()
                    )))
                }
            }
            let header = |name: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let sequence = header("Nats-Sequence")
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| read_err("a direct get's reply without Nats-Sequence".into()))?;
            // A server without batched gets answers the first message alone.
            let batched = header("Nats-Num-Pending").is_some();
            out.push((sequence, m.payload));
            if !batched {
                return Ok(out);
            }
        }
    }
}

/// `op` until it succeeds or fails otherwise than `transient` says, for up to
/// [`RETRY_FOR`], backing off from 20 ms to at most [`RETRY_BACKOFF`] between tries.
async fn retried<T, E, Fut>(
    mut op: impl FnMut() -> Fut,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match op().await {
            Err(e) if transient(&e) && started.elapsed() < RETRY_FOR => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF);
            }
            done => return done,
        }
    }
}

/// Whether the server refused a publish for its expected last (subject) sequence. A
/// cluster answers with error code 10164 where a single server answers 10071; the
/// client names only the latter.
fn wrong_last_sequence(err: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    if err.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|e| {
            e.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
                || e.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
        })
}

/// Check a copied event's acknowledgement: stored at its own offset.
fn copied(
    offset: u64,
    ack: Result<
        async_nats::jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    >,
) -> Result<(), JetStreamError> {
    match ack {
        Ok(a) if a.sequence == offset + 1 => Ok(()),
        Ok(a) => Err(JetStreamError::Publish(format!(
            "the event of offset {offset} was stored at sequence {} (a duplicate of an earlier message?)",
            a.sequence
        ))),
        Err(e) if wrong_last_sequence(&e) => Err(JetStreamError::Publish(format!(
            "the stream's last sequence is not {offset}: another writer appended to it during the copy; stop the servers on it and copy again"
        ))),
        Err(e) => Err(JetStreamError::Publish(e.to_string())),
    }
}

/// The event in the message at `sequence`.
fn decode(sequence: u64, bytes: &[u8]) -> Result<RecordedEvent, JetStreamError> {
    let decode = |reason: &str| JetStreamError::Decode {
        sequence,
        reason: reason.to_owned(),
    };
    let payload = match format::next_frame(bytes) {
        format::Frame::Record(p, len) if len == bytes.len() => p,
        format::Frame::Record(..) => return Err(decode("bytes after the record")),
        format::Frame::Incomplete => return Err(decode("a cut record")),
        format::Frame::Corrupt(why) => return Err(decode(why)),
    };
    // The record's checksum matched: its lot id is one the log wrote.
    let mut e = format::decode_payload(payload, &mut LotId::from_normalised).map_err(decode)?;
    e.offset = sequence - 1;
    Ok(e)
}

/// The most messages in one atomic batch (the server's default limit).
const ATOMIC_BATCH: usize = 1_000;

/// The server's reply to an atomic batch's commit.
#[derive(Debug, serde::Deserialize)]
struct BatchReply {
    seq: Option<u64>,
    batch: Option<String>,
    count: Option<u64>,
    error: Option<ApiErrorReply>,
}

#[derive(Debug, serde::Deserialize)]
struct ApiErrorReply {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Combined atomic batches of lots' appends one node has in flight at most (the server
/// takes 50 batches in flight per stream, from all nodes, by default). While they are
/// all in flight, lots' appends wait and go out together in the next.
const BATCHES_IN_FLIGHT: usize = 4;

/// An append waiting to go out, alone or in a combined batch.
struct Waiting {
    /// The sequence of the lot's last message the writer knows (0: none); `None`: no
    /// check.
    expected: Option<u64>,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<u64>, JetStreamError>>,
}

impl Waiting {
    /// Whether it may share a batch: it is checked, and fits one.
    fn combinable(&self) -> bool {
        self.expected.is_some() && self.events.len() <= ATOMIC_BATCH
    }
}

/// Send the appends from `waiting`, up to [`BATCHES_IN_FLIGHT`] at once, as combined
/// atomic batches, each taking every combinable append that waits when it goes (up to
/// [`ATOMIC_BATCH`] events): one round trip, and one replicated write, for many lots
/// instead of one each. An append that is not combinable goes alone.
async fn combine(stream: Arc<Stream>, mut waiting: mpsc::UnboundedReceiver<Waiting>, own: Own) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    let mut carried = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(w) => w,
            None => match waiting.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut size = first.events.len();
        let mut group = vec![first];
        if group[0].combinable() {
            while let Ok(w) = waiting.try_recv() {
                if !w.combinable() || size + w.events.len() > ATOMIC_BATCH {
                    carried = Some(w);
                    break;
                }
                size += w.events.len();
                group.push(w);
            }
        }
        let (stream, own) = (stream.clone(), own.clone());
        own.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            send_combined(&stream, group, &own).await;
            own.in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(slot);
        });
    }
}

/// One combined batch: all its lots' appends stored, or (any refused: a conflict, a
/// lot twice, a server's limit) each sent again alone, so that each lot gets its own
/// answer; an unknown outcome (no server answered) goes to every lot as it is (each
/// lot's next append finds out by a conflict whether its events went in).
async fn send_combined(stream: &Stream, group: Vec<Waiting>, own: &Own) {
    let lots: Option<Vec<(u64, &[NewEvent])>> = group
        .iter()
        .map(|w| Some((w.expected?, w.events.as_slice())))
        .collect();
    if let (true, Some(lots)) = (group.len() > 1, lots) {
        match stream.append_atomic_retried(&lots).await {
            Ok(stored) => {
                let mut offsets = stored.iter().map(|e| e.offset);
                let answers: Vec<Vec<u64>> = group
                    .iter()
                    .map(|w| offsets.by_ref().take(w.events.len()).collect())
                    .collect();
                own.stored(stored);
                for (w, mine) in group.into_iter().zip(answers) {
                    let _sent = w.reply.send(Ok(mine));
                }
                return;
            }
            Err(JetStreamError::Unanswered(why)) => {
                for w in group {
                    let _sent = w.reply.send(Err(JetStreamError::Unanswered(why.clone())));
                }
                return;
            }
            Err(_) => {}
        }
    }
    let alone = group.into_iter().map(|w| async move {
        let answer = match stream.store_lot(w.expected, &w.events).await {
            Ok(stored) => {
                let offsets = stored.iter().map(|e| e.offset).collect();
                own.stored(stored);
                Ok(offsets)
            }
            Err(e) => Err(e),
        };
        let _sent = w.reply.send(answer);
    });
    futures_util::future::join_all(alone).await;
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

/// What this node appended, for its follower: the events as the stream stored them
/// (sent on as each append is answered), and how many combined appends are on their
/// way.
#[derive(Clone)]
struct Own {
    stored: mpsc::UnboundedSender<Vec<RecordedEvent>>,
    in_flight: Arc<AtomicUsize>,
}

/// What the follower last learnt of the stream, for [`EventLog::copy_state`].
#[derive(Default)]
struct Seen {
    /// Events the stream holds at least.
    end: AtomicU64,
    /// Consumers on the stream.
    consumers: AtomicU64,
}

impl Own {
    fn stored(&self, events: Vec<RecordedEvent>) {
        if !events.is_empty() {
            // The follower gone: the log is closing.
            let _sent = self.stored.send(events);
        }
    }
}

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
    stop: watch::Sender<bool>,
    /// Appends on their way to [`combine`].
    combiner: mpsc::UnboundedSender<Waiting>,
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
        let (stop, stopped) = watch::channel(false);
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
        let _sent = self.stop.send(true);
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

/// Copy the stream into `copy` from where the copy ends, in order and gapless, until
/// `stop`. What this node appended comes from its own answers (`own`), without a round
/// trip; what other nodes appended (and an append of this node whose answer was lost)
/// is read from the stream: the follower asks where the stream ends every
/// [`POLL_EVERY`], and reads a gap before the copy's end at once when none of this
/// node's appends are on their way (else after [`GAP_WAIT`]). A read that fails is
/// tried again; a message missing from the stream, or one that is not an event, stops
/// the copy for good (the log is not whole: an operator must look).
async fn follow(
    stream: &Stream,
    copy: &FileLog,
    mut own: mpsc::UnboundedReceiver<Vec<RecordedEvent>>,
    in_flight: &AtomicUsize,
    seen: &Seen,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LogError> {
    let mut next = copy.durable_end();
    // The stream holds at least this many events.
    let mut known = next;
    // This node's answered appends, by first offset, not yet in the copy.
    let mut pending: BTreeMap<u64, Vec<RecordedEvent>> = BTreeMap::new();
    let mut gap_since: Option<std::time::Instant> = None;
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut said = false;
    let take = |pending: &mut BTreeMap<u64, Vec<RecordedEvent>>,
                known: &mut u64,
                events: Vec<RecordedEvent>| {
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            *known = (*known).max(last.offset + 1);
            pending.insert(first.offset, events);
        }
    };
    loop {
        tokio::select! {
            got = own.recv() => match got {
                Some(events) => take(&mut pending, &mut known, events),
                None => return Ok(()),
            },
            _ = poll.tick() => match stream.state().await {
                Ok(state) => {
                    known = known.max(state.last_sequence);
                    seen.consumers.store(state.consumer_count as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    if !said {
                        said = true;
                        tracing::warn!(error = %e, "following the stream: cannot ask where it ends; trying again");
                    }
                }
            },
            _ = stop.changed() => return Ok(()),
        }
        loop {
            while let Ok(events) = own.try_recv() {
                take(&mut pending, &mut known, events);
            }
            seen.end.fetch_max(known, Ordering::Relaxed);
            next = copy_pending(copy, &mut pending, next)?;
            if known <= next {
                gap_since = None;
                break;
            }
            let since = *gap_since.get_or_insert_with(std::time::Instant::now);
            if in_flight.load(Ordering::SeqCst) > 0 && since.elapsed() < GAP_WAIT {
                break;
            }
            // Read the gap (the stream holds it: its end is known): up to this node's
            // first answered append not yet copied.
            let upto = pending
                .keys()
                .next()
                .map_or(known, |&first| first.min(known));
            let to = upto.min(next + FOLLOW_BATCH as u64);
            match stream.read_range(next, to).await {
                Ok(events) if !events.is_empty() => {
                    next += events.len() as u64;
                    copy.append_copy(&events)?;
                    gap_since = None;
                    said = false;
                }
                Ok(_) => break,
                Err(e @ (JetStreamError::Missing { .. } | JetStreamError::Decode { .. })) => {
                    return Err(e.into())
                }
                Err(e) => {
                    if !said {
                        said = true;
                        tracing::warn!(error = %e, at = next, "following the stream: a read failed; trying again");
                    }
                    break;
                }
            }
        }
    }
}

/// Copy the answered appends in `pending` that continue the copy at `next` (each
/// event once: a read may have copied some already); returns the copy's new end.
fn copy_pending(
    copy: &FileLog,
    pending: &mut BTreeMap<u64, Vec<RecordedEvent>>,
    mut next: u64,
) -> Result<u64, LogError> {
    let mut run = Vec::new();
    while let Some(entry) = pending.first_entry() {
        let first = *entry.key();
        if first > next {
            break;
        }
        let events = entry.remove();
        let end = first + events.len() as u64;
        if end > next {
            run.extend(events.into_iter().skip((next - first) as usize));
            next = end;
        }
    }
    if !run.is_empty() {
        copy.append_copy(&run)?;
    }
    Ok(next)
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
        let waiting = Waiting {
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
        let _sent = self.stop.send(true);
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
        if *self.stop.borrow() {
            return Err(LogError::Closed);
        }
        if let Some(why) = self.failed.borrow().clone() {
            return Err(LogError::Failed(why));
        }
        self.copy.health()
    }
}
