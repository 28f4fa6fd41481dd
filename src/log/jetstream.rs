//! The event log on NATS JetStream, first part: the stream and its primitives, not yet
//! an [`EventLog`](super::EventLog) backend (the trait appends synchronously with the
//! offset known at once; JetStream's offsets come with the server's acknowledgement, so
//! the trait and the lot actors change next).
//!
//! One stream (default `PARKADE`), one subject per lot: `{stream}.lot.{lot}` with the lot
//! id's `.` written as `~` (a lot id never holds `~`; a subject's tokens are split at
//! `.`). An event is one message: the embedded log's record bytes (with their CRC32C)
//! as the payload, the event id as `Nats-Msg-Id`. Offset `n` is stream sequence `n + 1`
//! (offsets count from 0, sequences from 1), dense as long as nothing is deleted from
//! the stream.
//!
//! A lot's single writer: every append names the sequence of the lot's last message it
//! knows (`Nats-Expected-Last-Subject-Sequence`, 0 for none); if another writer appended
//! since, the server refuses it and nothing is stored ([`JetStreamError::Conflict`]).
//!
//! Durable before acknowledged: the server acknowledges a message once it is stored on
//! a quorum of the stream's replicas; on disk only with `jetstream { sync_interval:
//! always }` (otherwise the page cache holds it for up to two minutes).

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::domain::{LotId, NewEvent, RecordedEvent, Timestamp};

use super::format;

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
}

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
    #[error("JetStream read of sequence {sequence}: {reason}")]
    Read { sequence: u64, reason: String },
    #[error("message at sequence {sequence} is not a parkade event: {reason}")]
    Decode { sequence: u64, reason: String },
}

/// The stream, connected.
pub struct JetStreamLog {
    context: jetstream::Context,
    stream: stream::Stream,
    name: String,
}

impl JetStreamLog {
    /// Connect and create the stream (or take the existing one, which must have the
    /// asked-for replicas).
    pub async fn connect(o: &JetStreamOptions) -> Result<JetStreamLog, JetStreamError> {
        let connect_err = |reason: String| JetStreamError::Connect {
            url: o.url.clone(),
            reason,
        };
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)));
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
        let context = jetstream::new(client);
        let stream_err = |reason: String| JetStreamError::Stream {
            stream: o.stream.clone(),
            reason,
        };
        let config = stream::Config {
            name: o.stream.clone(),
            subjects: vec![format!("{}.lot.>", o.stream)],
            storage: stream::StorageType::File,
            num_replicas: o.replicas,
            ..Default::default()
        };
        // A cluster that has just formed (or lost a node) may time the request out
        // while it settles: try again for up to 30 s.
        let started = std::time::Instant::now();
        let mut stream = loop {
            match context.get_or_create_stream(config.clone()).await {
                Ok(s) => break s,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    tracing::warn!(error = %e, "creating the JetStream stream; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(stream_err(e.to_string())),
            }
        };
        // A new replicated stream takes a moment to elect its leader; appends before
        // that find no stream.
        let started = std::time::Instant::now();
        loop {
            let info = stream.info().await.map_err(|e| stream_err(e.to_string()))?;
            if info.config.num_replicas != o.replicas {
                return Err(stream_err(format!(
                    "exists with {} replicas, not the {} configured",
                    info.config.num_replicas, o.replicas
                )));
            }
            let leader = info.cluster.as_ref().and_then(|c| c.leader.as_ref());
            if o.replicas <= 1 || leader.is_some_and(|l| !l.is_empty()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(stream_err("no leader elected within 30 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(JetStreamLog {
            context,
            stream,
            name: o.stream.clone(),
        })
    }

    /// The subject of a lot's events.
    pub fn subject(&self, lot: &LotId) -> String {
        format!("{}.lot.{}", self.name, lot.as_str().replace('.', "~"))
    }

    /// The number of events in the stream (one past the last offset).
    pub async fn end(&self) -> Result<u64, JetStreamError> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(|e| JetStreamError::Stream {
            stream: self.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(info.state.last_sequence)
    }

    /// The stream sequence of the lot's last event (0 when it has none).
    pub async fn last_of_lot(&self, lot: &LotId) -> Result<u64, JetStreamError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(lot))
            .await
        {
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
    /// before. Returns each event's offset, once the server acknowledged it.
    pub async fn append_lot(
        &self,
        expected: u64,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, JetStreamError> {
        let mut last = expected;
        let mut offsets = Vec::with_capacity(events.len());
        for e in events {
            let mut buf = Vec::new();
            format::encode_record(&mut buf, 0, Timestamp::now(), e);
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                last.to_string().as_str(),
            );
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                e.event_id.to_string().as_str(),
            );
            let ack = self
                .publish(self.subject(&e.lot_id), headers, Bytes::from(buf))
                .await;
            match ack {
                Ok(ack) => {
                    last = ack.sequence;
                    offsets.push(ack.sequence - 1);
                }
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(JetStreamError::Conflict {
                        lot: e.lot_id.to_string(),
                        expected: last,
                    })
                }
                Err(err) => return Err(JetStreamError::Publish(err.to_string())),
            }
        }
        Ok(offsets)
    }

    /// Publish one message and wait for its acknowledgement, again (for up to 30 s,
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
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let sent = self
                .context
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await;
            let ack = match sent {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            let transient = matches!(
                ack.as_ref().map_err(|e| e.kind()),
                Err(PublishErrorKind::StreamNotFound
                    | PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe)
            );
            if !transient || started.elapsed() > Duration::from_secs(30) {
                return ack;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Up to `max` events from offset `from`, in order: an ordered consumer from the
    /// sequence after `from` (one request, the server streaming the messages), checked
    /// to be gapless.
    pub async fn read(&self, from: u64, max: usize) -> Result<Vec<RecordedEvent>, JetStreamError> {
        use async_nats::jetstream::consumer::{pull, DeliverPolicy};
        use futures_util::StreamExt;
        let end = self.end().await?;
        let to = end.min(from.saturating_add(max as u64));
        if to <= from {
            return Ok(Vec::new());
        }
        let read_err = |reason: String| JetStreamError::Read {
            sequence: from + 1,
            reason,
        };
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| read_err(e.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| read_err(e.to_string()))?;
        let mut out = Vec::with_capacity((to - from) as usize);
        for offset in from..to {
            let sequence = offset + 1;
            let m = messages
                .next()
                .await
                .ok_or_else(|| read_err("the stream of messages ended".into()))?
                .map_err(|e| read_err(e.to_string()))?;
            let got = m
                .info()
                .map_err(|e| read_err(e.to_string()))?
                .stream_sequence;
            if got != sequence {
                return Err(JetStreamError::Read {
                    sequence,
                    reason: format!("the stream has no message there (the next is {got}): messages were deleted"),
                });
            }
            out.push(decode(sequence, &m.payload)?);
        }
        Ok(out)
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
