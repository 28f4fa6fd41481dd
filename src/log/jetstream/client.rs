//! The client of one stream: connecting (and creating the stream), appends checked by
//! the lot's expected last sequence, alone or as atomic batches, retried through an
//! election for a bounded time.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::domain::{LotId, NewEvent, RecordedEvent, Timestamp};
use crate::log::format;

use super::reads::decode;
use super::{
    JetStreamError, JetStreamOptions, CONNECT_WAIT, PING_EVERY, REQUEST_WAIT, RETRY_BACKOFF,
    RETRY_FOR,
};

/// Whether connecting makes the stream.
#[derive(Clone, Copy)]
pub(super) enum Create {
    /// It must exist.
    No,
    /// Made when missing, with this log id or a fresh one.
    IfMissing(Option<Uuid>),
}

/// The stream's metadata key holding the log id.
pub(super) const LOG_ID_KEY: &str = "parkade_log_id";

/// The stream, connected: the primitives [`JetStreamLog`](super::JetStreamLog) is built on.
pub struct Stream {
    pub(super) context: jetstream::Context,
    pub(super) stream: stream::Stream,
    pub(super) name: String,
    pub(super) log_id: Uuid,
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
    pub(super) async fn open(
        o: &JetStreamOptions,
        create: Create,
    ) -> Result<Stream, JetStreamError> {
        let new_log_id = match create {
            Create::IfMissing(id) => id,
            Create::No => None,
        };
        let context = connected(o).await?;
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
        let log_id = settled(&context, &mut stream, o, new_log_id, wanted_id).await?;
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
    pub(super) async fn store_lot(
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
    pub(super) async fn append_atomic_retried(
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
    pub(super) async fn append_atomic(
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
    pub(super) async fn publish(
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
}

/// A client of the servers `o` names, with the timings that find a stalled server out
/// within seconds, and its JetStream context.
async fn connected(o: &JetStreamOptions) -> Result<jetstream::Context, JetStreamError> {
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
    Ok(context)
}

/// The stream's log id, once the stream is as parkade needs it (a parkade log, of the
/// log being copied when `new_log_id` says so, with the configured replicas, atomic
/// batches and direct gets allowed) and has a leader.
async fn settled(
    context: &jetstream::Context,
    stream: &mut stream::Stream,
    o: &JetStreamOptions,
    new_log_id: Option<Uuid>,
    wanted_id: Uuid,
) -> Result<Uuid, JetStreamError> {
    let stream_err = |reason: String| JetStreamError::Stream {
        stream: o.stream.clone(),
        reason,
    };
    // A new replicated stream takes a moment to elect its leader; appends before
    // that find no stream.
    let started = std::time::Instant::now();
    loop {
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
            context
                .update_stream(config)
                .await
                .map_err(|e| stream_err(format!("allowing atomic batches and direct gets: {e}")))?;
            continue;
        }
        let leader = info.cluster.as_ref().and_then(|c| c.leader.as_ref());
        if o.replicas <= 1 || leader.is_some_and(|l| !l.is_empty()) {
            return Ok(id);
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(stream_err("no leader elected within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `op` until it succeeds or fails otherwise than `transient` says, for up to
/// [`RETRY_FOR`], backing off from 20 ms to at most [`RETRY_BACKOFF`] between tries:
/// long enough to ride out a leader election.
pub(super) async fn retried<T, E, Fut>(
    op: impl FnMut() -> Fut,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let backoff = Backoff::new(Duration::from_millis(20), RETRY_BACKOFF);
    crate::backoff::retry(backoff, RETRY_FOR, op, transient).await
}

/// Whether the server refused a publish for its expected last (subject) sequence. A
/// cluster answers with error code 10164 where a single server answers 10071; the
/// client names only the latter.
pub(super) fn wrong_last_sequence(err: &async_nats::jetstream::context::PublishError) -> bool {
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
pub(super) fn copied(
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

/// The most messages in one atomic batch (the server's default limit).
pub(super) const ATOMIC_BATCH: usize = 1_000;

/// The server's reply to an atomic batch's commit.
#[derive(Debug, serde::Deserialize)]
pub(super) struct BatchReply {
    seq: Option<u64>,
    batch: Option<String>,
    count: Option<u64>,
    error: Option<ApiErrorReply>,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ApiErrorReply {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}
