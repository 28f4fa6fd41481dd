//! The follower: copies the stream into the local copy in order and gapless, this
//! node's appends from their answers, other nodes' from the stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;

use tokio::sync::mpsc;

use crate::domain::RecordedEvent;
use crate::log::{EventLog, FileLog, LogError};

use super::client::Stream;
use super::{JetStreamError, FOLLOW_BATCH, GAP_WAIT, POLL_EVERY};

/// What the follower last learnt of the stream, for [`EventLog::copy_state`].
#[derive(Default)]
pub(super) struct Seen {
    /// Events the stream holds at least.
    pub(super) end: AtomicU64,
    /// Consumers on the stream.
    pub(super) consumers: AtomicU64,
}

/// Copy the stream into `copy` from where the copy ends, in order and gapless, until
/// `stop`. What this node appended comes from its own answers (`own`), without a round
/// trip; what other nodes appended (and an append of this node whose answer was lost)
/// is read from the stream: the follower asks where the stream ends every
/// [`POLL_EVERY`], and reads a gap before the copy's end at once when none of this
/// node's appends are on their way (else after [`GAP_WAIT`]). A read that fails is
/// tried again; a message missing from the stream, or one that is not an event, stops
/// the copy for good (the log is not whole: an operator must look).
pub(super) async fn follow(
    stream: &Stream,
    copy: &FileLog,
    mut own: mpsc::UnboundedReceiver<Vec<RecordedEvent>>,
    in_flight: &AtomicUsize,
    seen: &Seen,
    stop: CancellationToken,
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
            _ = stop.cancelled() => return Ok(()),
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
pub(super) fn copy_pending(
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
