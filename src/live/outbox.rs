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

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
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

struct Shared {
    /// Most bytes held that the connection has not taken.
    max_bytes: usize,
    /// Changes put in and not yet taken by the connection.
    queued: AtomicUsize,
    /// Bytes put in and not yet taken.
    queued_bytes: AtomicUsize,
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

/// A new, empty outbox holding at most `max_bytes` untaken, and the body that drains it.
pub fn outbox(max_bytes: usize) -> (Outbox, Body) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        max_bytes,
        queued: AtomicUsize::new(0),
        queued_bytes: AtomicUsize::new(0),
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
    /// A put past the outbox's byte bound ends it with a 4008 close and is false.
    pub fn put(&self, frames: Bytes, changes: usize) -> bool {
        if self.is_ended() {
            return false;
        }
        let len = frames.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let max = self.shared.max_bytes;
        if before + len > max {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            let why = format!("slow consumer: more than {max} bytes not taken");
            self.end(Some(super::frame::close(super::SLOW_CONSUMER, &why)));
            return false;
        }
        self.shared.queued.fetch_add(changes, Ordering::Relaxed);
        self.tx.send(Item::Frames(frames, changes)).is_ok()
    }

    /// Bytes put in and not yet taken by the connection.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
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
            let _ = self.tx.send(Item::Frames(b, 0));
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
                // The last frame of `end` was never counted.
                let _ =
                    shared
                        .queued_bytes
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            Some(n.saturating_sub(b.len()))
                        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn frames_come_out_in_order_and_the_count_follows_what_was_taken() {
        let (out, mut body) = outbox(MAX_QUEUED_BYTES);
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
        let (out, mut body) = outbox(MAX_QUEUED_BYTES);
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
        assert!(out.queued_bytes() <= MAX_QUEUED_BYTES);
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

    #[tokio::test]
    async fn drained_to_waits_for_the_connection_and_gives_up_at_its_limit() {
        let (out, mut body) = outbox(MAX_QUEUED_BYTES);
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
