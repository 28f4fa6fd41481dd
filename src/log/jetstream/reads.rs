//! Reads of the stream by batched direct gets (no consumer per read): a range, a lot's
//! events after a sequence, and the decoding of a message back into its event.

use std::time::Duration;

use bytes::Bytes;

use crate::domain::{LotId, RecordedEvent};
use crate::log::format;

use super::client::Stream;
use super::{JetStreamError, DIRECT_BATCH, DIRECT_MAX_BYTES, DIRECT_WAIT, FOLLOW_BATCH, READ_WAIT};

impl Stream {
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
    pub(super) async fn read_range(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<RecordedEvent>, JetStreamError> {
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
    pub(super) async fn direct_some(
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
    pub(super) async fn direct_batch(
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

/// The event in the message at `sequence`.
pub(super) fn decode(sequence: u64, bytes: &[u8]) -> Result<RecordedEvent, JetStreamError> {
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
