//! The appends a node's lots have waiting at one moment, combined into one atomic batch
//! (one round trip and one replicated write for many lots), or each sent alone when the
//! batch is refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::domain::{NewEvent, RecordedEvent};

use super::client::{Stream, ATOMIC_BATCH};
use super::JetStreamError;

/// Combined atomic batches of lots' appends one node has in flight at most (the server
/// takes 50 batches in flight per stream, from all nodes, by default). While they are
/// all in flight, lots' appends wait and go out together in the next.
pub(super) const BATCHES_IN_FLIGHT: usize = 4;

/// An append waiting to go out, alone or in a combined batch.
pub(super) struct PendingAppend {
    /// The sequence of the lot's last message the writer knows (0: none); `None`: no
    /// check.
    pub(super) expected: Option<u64>,
    pub(super) events: Vec<NewEvent>,
    pub(super) reply: oneshot::Sender<Result<Vec<u64>, JetStreamError>>,
}

impl PendingAppend {
    /// Whether it may share a batch: it is checked, and fits one.
    pub(super) fn combinable(&self) -> bool {
        self.expected.is_some() && self.events.len() <= ATOMIC_BATCH
    }
}

/// Send the appends from `waiting`, up to [`BATCHES_IN_FLIGHT`] at once, as combined
/// atomic batches, each taking every combinable append that waits when it goes (up to
/// [`ATOMIC_BATCH`] events): one round trip, and one replicated write, for many lots
/// instead of one each. An append that is not combinable goes alone.
pub(super) async fn combine(
    stream: Arc<Stream>,
    mut waiting: mpsc::UnboundedReceiver<PendingAppend>,
    own: Own,
) {
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
pub(super) async fn send_combined(stream: &Stream, group: Vec<PendingAppend>, own: &Own) {
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

/// What this node appended, for its follower: the events as the stream stored them
/// (sent on as each append is answered), and how many combined appends are on their
/// way.
#[derive(Clone)]
pub(super) struct Own {
    pub(super) stored: mpsc::UnboundedSender<Vec<RecordedEvent>>,
    pub(super) in_flight: Arc<AtomicUsize>,
}

impl Own {
    pub(super) fn stored(&self, events: Vec<RecordedEvent>) {
        if !events.is_empty() {
            // The follower gone: the log is closing.
            let _sent = self.stored.send(events);
        }
    }
}
