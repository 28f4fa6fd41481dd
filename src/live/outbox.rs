//! One websocket connection's outgoing queue.
//!
//! The fan-out (on its own thread) and the connection's session task put encoded frames
//! in; the HTTP connection takes them out as its response body and writes them. Putting
//! never waits: the fan-out counts what a connection has not taken yet and closes a
//! connection that falls too far behind, so ingestion never waits for a websocket.
//!
//! Every outbox is also bounded in bytes (`[live] outbox_bytes`), whatever is put in it
//! (changes, snapshots, and control frames such as the pongs a client's pings ask for):
//! a put that would pass the bound ends the outbox with a 4008 close instead, so a
//! client that sends and never reads cannot grow the server's memory.
//!
//! All outboxes together are bounded too ([`Budget`], `[live] outbox_budget_bytes`), so
//! that many connections from one address (a campus NAT, or an attacker) cannot hold
//! the bound of each: past the budget, a put to an outbox holding more than its fair
//! share (the budget over the outboxes open) ends that outbox instead. The ones that
//! keep up hold little and go on; what all hold stays under twice the budget.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, Notify};

enum Item {
    /// Encoded frames, carrying this many changes.
    Frames(Bytes, usize),
    /// Nothing follows: the body ends after what came before.
    End,
}

/// Default of the most bytes an outbox holds that its connection has not taken: 8 MiB.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

/// The bytes all outboxes may hold at once that their connections have not taken.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    held: AtomicUsize,
    outboxes: AtomicUsize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            max,
            held: AtomicUsize::new(0),
            outboxes: AtomicUsize::new(0),
        })
    }

    /// Bytes all outboxes hold.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Take `len` more bytes for an outbox that holds `own`: refused when the budget
    /// is spent and the outbox holds more than its share.
    fn charge(&self, len: usize, own: usize) -> bool {
        let after = self.held.fetch_add(len, Ordering::AcqRel) + len;
        let share = self.max / self.outboxes.load(Ordering::Relaxed).max(1);
        if after > self.max && own + len > share {
            self.release(len);
            return false;
        }
        true
    }

    fn release(&self, len: usize) {
        self.held.fetch_sub(len, Ordering::AcqRel);
    }
}

struct Shared {
    /// Most bytes held that the connection has not taken.
    max_bytes: usize,
    budget: Arc<Budget>,
    /// Changes put in and not yet taken by the connection.
    queued: AtomicUsize,
    /// Bytes put in and not yet taken (all charged to the budget), and whether the
    /// connection is gone (then nothing more is put).
    held: Mutex<Held>,
    /// When the connection last took something (ms since [`epoch`]).
    taken_at: AtomicU64,
    /// Signalled each time the connection takes something.
    taken: Notify,
    ended: AtomicBool,
    /// Signalled once when the outbox ends.
    end_signal: Notify,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// The putting side (cheap to clone).
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Item>,
    shared: Arc<Shared>,
}

/// The taking side: the response body of the websocket connection.
pub struct Body {
    rx: mpsc::UnboundedReceiver<Item>,
    shared: Arc<Shared>,
    done: bool,
}

#[derive(Default)]
struct Held {
    bytes: usize,
    gone: bool,
}

/// A new, empty outbox holding at most `max_bytes` untaken (and its part of `budget`),
/// and the body that drains it.
pub fn outbox(max_bytes: usize, budget: &Arc<Budget>) -> (Outbox, Body) {
    let (tx, rx) = mpsc::unbounded_channel();
    budget.outboxes.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        max_bytes,
        budget: budget.clone(),
        queued: AtomicUsize::new(0),
        held: Mutex::default(),
        taken_at: AtomicU64::new(now_ms()),
        taken: Notify::new(),
        ended: AtomicBool::new(false),
        end_signal: Notify::new(),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        Body {
            rx,
            shared,
            done: false,
        },
    )
}

impl Outbox {
    /// Queue frames carrying `changes` changes (0 for control frames). False when the
    /// outbox has ended or the connection is gone.
    /// A put past the outbox's byte bound, or past the budget of all outboxes while
    /// this one holds more than its share, ends it with a 4008 close and is false.
    pub fn put(&self, frames: Bytes, changes: usize) -> bool {
        if self.is_ended() {
            return false;
        }
        let len = frames.len();
        let refused = {
            let mut held = self.shared.lock();
            let max = self.shared.max_bytes;
            if held.gone {
                return false;
            }
            if held.bytes + len > max {
                Some(format!("slow consumer: more than {max} bytes not taken"))
            } else if !self.shared.budget.charge(len, held.bytes) {
                Some(format!(
                    "slow consumer: {} bytes not taken while all websocket buffers are full ([live] outbox_budget_bytes)",
                    held.bytes
                ))
            } else {
                held.bytes += len;
                // A wait for the connection starts when something is queued, not at
                // its last take: after a quiet minute, two changes in a row must not
                // look like a minute's stall.
                if self.shared.queued.fetch_add(changes, Ordering::Relaxed) == 0 && changes > 0 {
                    self.shared.taken_at.store(now_ms(), Ordering::Relaxed);
                }
                // Sent under the lock, so the body's drop releases it if it is not taken.
                if self.tx.send(Item::Frames(frames, changes)).is_err() {
                    held.bytes -= len;
                    self.shared.budget.release(len);
                    return false;
                }
                None
            }
        };
        match refused {
            None => true,
            Some(why) => {
                self.end(Some(super::frame::close(super::SLOW_CONSUMER, &why)));
                false
            }
        }
    }

    /// Bytes put in and not yet taken by the connection.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Queue a last frame (a close frame, say) and end: nothing put afterwards is sent.
    /// Only the first call counts.
    pub fn end(&self, last: Option<Bytes>) {
        if self.shared.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(b) = last {
            if let Some(code) = super::frame::close_code(&b) {
                crate::metrics::ws_closed(code);
            }
            // Counted (a few bytes past any bound), so that taking it releases it.
            let mut held = self.shared.lock();
            if !held.gone {
                held.bytes += b.len();
                self.shared.budget.held.fetch_add(b.len(), Ordering::AcqRel);
                // The body is not gone (it is marked first), so this is taken or released.
                let _ = self.tx.send(Item::Frames(b, 0));
            }
        }
        let _ = self.tx.send(Item::End);
        self.shared.end_signal.notify_one();
    }

    pub fn is_ended(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire) || self.tx.is_closed()
    }

    /// Resolves once the outbox has ended (or the connection is gone).
    pub async fn ended(&self) {
        tokio::select! {
            _ = self.shared.end_signal.notified() => {}
            _ = self.tx.closed() => {}
        }
    }

    /// Changes put in and not yet taken by the connection.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// How long changes have been waiting without the connection taking any (zero
    /// when nothing waits).
    pub fn stalled_for(&self) -> Duration {
        if self.queued() == 0 {
            return Duration::ZERO;
        }
        let at = self.shared.taken_at.load(Ordering::Relaxed);
        Duration::from_millis(now_ms().saturating_sub(at))
    }

    /// Wait until at most `n` changes are queued. False if that took longer than
    /// `limit`, or the connection went away.
    pub async fn drained_to(&self, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let taken = self.shared.taken.notified();
            tokio::pin!(taken);
            // Registered before the check, so a take in between is not missed.
            taken.as_mut().enable();
            if self.is_ended() {
                return false;
            }
            if self.queued() <= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, taken).await.is_err() {
                return false;
            }
        }
    }
}

impl Stream for Body {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Item::Frames(b, changes))) => {
                let shared = &self.shared;
                shared.queued.fetch_sub(changes, Ordering::Relaxed);
                shared.lock().bytes -= b.len();
                shared.budget.release(b.len());
                shared.taken_at.store(now_ms(), Ordering::Relaxed);
                shared.taken.notify_waiters();
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Item::End)) | Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Body {
    /// The connection is gone: what it never took goes back to the budget.
    fn drop(&mut self) {
        let mut held = self.shared.lock();
        held.gone = true;
        self.shared.budget.release(std::mem::take(&mut held.bytes));
        self.shared.budget.outboxes.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// The largest close frame: its head and the most a control frame carries.
    const CLOSE_FRAME: usize = 2 + 125;

    /// A subscriber that took everything and then had nothing to take for a while has
    /// not stalled: the wait is counted from when a change was queued.
    #[tokio::test]
    async fn a_quiet_spell_is_not_a_stall() {
        let (out, mut body) = outbox(MAX_QUEUED_BYTES, &Budget::new(usize::MAX));
        assert!(out.put(Bytes::from_static(b"a"), 1));
        body.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(out.put(Bytes::from_static(b"b"), 1));
        assert!(out.put(Bytes::from_static(b"c"), 1));
        assert!(
            out.stalled_for() < Duration::from_secs(1),
            "{:?}",
            out.stalled_for()
        );
    }

    #[tokio::test]
    async fn frames_come_out_in_order_and_the_count_follows_what_was_taken() {
        let (out, mut body) = outbox(MAX_QUEUED_BYTES, &Budget::new(usize::MAX));
        assert!(out.put(Bytes::from_static(b"a"), 2));
        assert!(out.put(Bytes::from_static(b"b"), 3));
        assert_eq!(out.queued(), 5);
        assert_eq!(body.next().await.unwrap().unwrap(), "a");
        assert_eq!(out.queued(), 3);
        out.end(Some(Bytes::from_static(b"bye")));
        assert!(!out.put(Bytes::from_static(b"late"), 1), "put after end");
        assert_eq!(body.next().await.unwrap().unwrap(), "b");
        assert_eq!(body.next().await.unwrap().unwrap(), "bye");
        assert!(body.next().await.is_none());
        assert_eq!(out.queued(), 0);
    }

    #[tokio::test]
    async fn an_outbox_never_holds_more_than_its_byte_bound() {
        let (out, mut body) = outbox(MAX_QUEUED_BYTES, &Budget::new(usize::MAX));
        let pong = Bytes::from(vec![0x8a; 127]);
        let mut put = 0usize;
        while out.put(pong.clone(), 0) {
            put += pong.len();
            assert!(put <= MAX_QUEUED_BYTES, "put past the bound");
        }
        assert!(
            put + pong.len() > MAX_QUEUED_BYTES,
            "stopped early at {put}"
        );
        assert!(out.is_ended());
        // And the close frame, past the bound.
        assert!(out.queued_bytes() <= MAX_QUEUED_BYTES + CLOSE_FRAME);
        // What was queued still drains, then the 4008 close, then the end.
        let mut taken = 0;
        let mut last = Bytes::new();
        while let Some(b) = body.next().await {
            let b = b.unwrap();
            taken += b.len();
            last = b;
        }
        assert_eq!(taken, put + last.len());
        assert_eq!(&last[2..4], &4008u16.to_be_bytes());
        assert_eq!(out.queued_bytes(), 0);
    }

    /// Past the budget of all outboxes, the one holding more than its share is closed,
    /// while one that keeps up goes on; what all hold stays under twice the budget and
    /// a connection's going gives its bytes back.
    #[tokio::test]
    async fn past_the_budget_the_outbox_over_its_share_is_closed_and_one_that_keeps_up_goes_on() {
        let budget = Budget::new(4_096);
        let (hog, hog_body) = outbox(MAX_QUEUED_BYTES, &budget);
        let (keeper, mut keeper_body) = outbox(MAX_QUEUED_BYTES, &budget);
        let frame = Bytes::from(vec![0x8a; 100]);
        let mut put = 0;
        while hog.put(frame.clone(), 0) {
            put += frame.len();
            assert!(put <= 4_096, "put past the budget: {put}");
        }
        assert!(hog.is_ended(), "the hog is closed");
        assert!(put > 4_096 - frame.len(), "closed early at {put}");
        for _ in 0..100 {
            assert!(keeper.put(frame.clone(), 1), "a keeper was refused");
            keeper_body.next().await.unwrap().unwrap();
        }
        while keeper.put(frame.clone(), 1) {}
        let keeps = keeper.queued_bytes();
        assert!(keeps <= 4_096 / 2 + CLOSE_FRAME, "{keeps}");
        assert!(budget.held() <= 2 * 4_096, "{}", budget.held());
        drop(hog_body);
        assert_eq!(budget.held(), keeps);
        drop(keeper_body);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn drained_to_waits_for_the_connection_and_gives_up_at_its_limit() {
        let (out, mut body) = outbox(MAX_QUEUED_BYTES, &Budget::new(usize::MAX));
        out.put(Bytes::from_static(b"a"), 10);
        assert!(!out.drained_to(5, Duration::from_millis(50)).await);
        let waiter = {
            let out = out.clone();
            tokio::spawn(async move { out.drained_to(5, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        body.next().await.unwrap().unwrap();
        assert!(waiter.await.unwrap());
        drop(body);
        assert!(out.is_ended(), "the connection is gone");
        assert!(!out.put(Bytes::from_static(b"x"), 1));
    }
}
