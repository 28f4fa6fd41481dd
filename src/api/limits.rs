//! Limits on what one client may hold or do: open connections (in all and per client
//! address), and the event rate of an `ingest` token.
//!
//! Connections are counted as the server accepts them ([`Connections::on_connect`]
//! puts a [`Slot`] in the connection's data; dropping it with the connection gives the
//! place back). A connection past a cap is still read, so that its client gets a clear
//! answer (503 or 429 `too_many_connections`) rather than a silent hang, and is closed
//! after that answer ([`refuse_over_cap`]). A connection that never sends a request is
//! closed by the server's request-head timeout (5 s). After that, every request on a
//! connection has a deadline for its head too: a connection with no request in flight
//! must have sent its next whole head within [`NEXT_HEAD_WITHIN`] of its last reply
//! (the server's keep-alive closes a silent one after 5 s; this closes one that
//! trickles a head, or a body its handler did not read, a byte at a time). The bodies
//! handlers read have their own deadline (`[limits] body_timeout_secs`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::ResponseError;
use governor::clock::{Clock, DefaultClock};

use super::ApiError;

/// Open connections, in all and per client address.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Counts>,
}

struct Counts {
    max_total: usize,
    max_per_address: usize,
    /// Reverse proxies: not counted per address.
    trusted: Vec<IpAddr>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// The connections whose next request head is watched, by id.
    watched: Mutex<HashMap<u64, Arc<Watched>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

impl Counts {
    /// Milliseconds since `epoch`.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// How long a connection with no request in flight may take, from its last reply, to
/// send the whole head of its next request: the server's keep-alive (5 s) and as long
/// again for the head.
pub const NEXT_HEAD_WITHIN: Duration = Duration::from_secs(10);

/// How long the HTTP server goes on reading (and dropping) what a client sends after
/// answering a request whose body it did not read to its end, before it closes: so
/// that the client reads the reply instead of a reset. The body budget counts that
/// connection's buffers until it is closed (the server does not always close it then:
/// the wait for the next head, [`NEXT_HEAD_WITHIN`], closes it at the latest).
pub const LINGER: Duration = Duration::from_millis(250);

/// A connection's requests in flight, and since when it has had none.
struct Watched {
    /// The connection's socket: valid while the connection is in `watched`, since the
    /// connection's data (its [`Slot`], which takes it out) is dropped before its
    /// socket is closed.
    fd: RawFd,
    peer: SocketAddr,
    in_flight: AtomicUsize,
    /// Milliseconds since `Counts::epoch` when the last request in flight ended.
    idle_since_ms: AtomicU64,
}

/// One accepted connection's place; what it may do.
pub struct Slot {
    counts: Arc<Counts>,
    peer: Option<IpAddr>,
    refused: Option<Refusal>,
    watched: Option<(u64, Arc<Watched>)>,
    /// Body budget held for the HTTP server's buffers of a body answered before it was
    /// read to its end: the server then reads and drops the rest for up to its client
    /// disconnect timeout before it closes, with its buffers, so the bytes stay counted
    /// until the connection is gone.
    unread: Mutex<Vec<Held>>,
}

#[derive(Clone, Copy)]
enum Refusal {
    Total(usize),
    PerAddress(usize),
}

impl Connections {
    /// Caps of `max_total` connections and `max_per_address` from one address, except
    /// from the `trusted` proxies' addresses.
    pub fn new(max_total: usize, max_per_address: usize, trusted: Vec<IpAddr>) -> Connections {
        Connections {
            inner: Arc::new(Counts {
                max_total,
                max_per_address,
                trusted: trusted.iter().map(IpAddr::to_canonical).collect(),
                open: Mutex::new((0, HashMap::new())),
                watched: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }

    /// The most connections the server holds.
    pub fn max_total(&self) -> usize {
        self.inner.max_total
    }

    /// Watch the next request heads of the connection on `fd` (see [`NEXT_HEAD_WITHIN`]).
    fn watch(&self, slot: &mut Slot, fd: RawFd, peer: SocketAddr) {
        let w = Arc::new(Watched {
            fd,
            peer,
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
        });
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, w.clone());
        slot.watched = Some((id, w));
    }

    /// Close the connections that have had no request in flight for longer than
    /// `within` since their last reply; how many.
    pub fn close_stalled(&self, within: Duration) -> usize {
        let now = self.now_ms();
        let limit = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        let mut watched = self.inner.watched.lock().unwrap_or_else(|e| e.into_inner());
        let stalled: Vec<u64> = watched
            .iter()
            .filter(|(_, w)| {
                w.in_flight.load(Ordering::Acquire) == 0
                    && now.saturating_sub(w.idle_since_ms.load(Ordering::Acquire)) > limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &stalled {
            if let Some(w) = watched.remove(id) {
                // SAFETY: the socket stays open while its connection is in `watched`
                // (see `Watched::fd`), and we hold that map's lock; ManuallyDrop never
                // closes it. The peer is compared before anything is done to it.
                let socket = std::mem::ManuallyDrop::new(unsafe {
                    <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(w.fd)
                });
                if socket.peer_addr().is_ok_and(|p| p == w.peer) {
                    let _closed = socket.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        stalled.len()
    }

    /// Every second until `stop`: close the connections stalled before their next
    /// request head ([`NEXT_HEAD_WITHIN`]).
    pub async fn close_stalled_until(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
            let n = self.close_stalled(NEXT_HEAD_WITHIN);
            if n > 0 {
                tracing::debug!(
                    connections = n,
                    "closed connections stalled before their next request head"
                );
            }
        }
    }

    /// The address a connection from `peer` counts against: none for a trusted proxy.
    fn counted_as(&self, peer: IpAddr) -> Option<IpAddr> {
        let ip = peer.to_canonical();
        (!self.inner.trusted.contains(&ip)).then_some(ip)
    }

    /// Count a connection from `peer`: its slot says whether it is over a cap.
    pub fn open(&self, peer: Option<IpAddr>) -> Slot {
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_peer) = &mut *open;
        *total += 1;
        let mine = match peer {
            Some(ip) => {
                let n = by_peer.entry(ip).or_insert(0);
                *n += 1;
                *n
            }
            None => 0,
        };
        let refused = if *total > self.inner.max_total {
            Some(Refusal::Total(self.inner.max_total))
        } else if mine > self.inner.max_per_address {
            Some(Refusal::PerAddress(self.inner.max_per_address))
        } else {
            None
        };
        Slot {
            counts: self.inner.clone(),
            peer,
            refused,
            watched: None,
            unread: Mutex::new(Vec::new()),
        }
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// For `HttpServer::on_connect`: count each accepted TCP connection.
    pub fn on_connect(&self, conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
        let stream = conn.downcast_ref::<actix_web::rt::net::TcpStream>();
        let peer = stream.and_then(|s| s.peer_addr().ok());
        let mut slot = self.open(peer.and_then(|a| self.counted_as(a.ip())));
        if let (Some(s), Some(p)) = (stream, peer) {
            self.watch(&mut slot, s.as_raw_fd(), p);
        }
        data.insert(slot);
    }
}

impl Slot {
    /// Keep `held` until this connection closes: the HTTP server's buffers of a body
    /// answered before it was read to its end, which it goes on reading for a while.
    pub fn hold_until_closed(&self, held: Held) {
        self.unread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(held);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((id, _)) = self.watched.take() {
            self.counts
                .watched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_peer) = &mut *open;
        *total -= 1;
        if let Some(ip) = self.peer {
            if let Some(n) = by_peer.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_peer.remove(&ip);
                }
            }
        }
    }
}

/// A request in flight on a watched connection; when the last one's reply has been
/// sent (its body dropped), the connection's wait for its next head starts.
struct InFlight {
    watched: Arc<Watched>,
    counts: Arc<Counts>,
}

impl InFlight {
    fn begin(slot: &Slot) -> Option<InFlight> {
        let (_, w) = slot.watched.as_ref()?;
        w.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(InFlight {
            watched: w.clone(),
            counts: slot.counts.clone(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.watched
            .idle_since_ms
            .store(self.counts.now_ms(), Ordering::Release);
        self.watched.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reply's body, ending its request's time in flight when it is dropped (sent, or
/// given up).
struct Tracked<B> {
    body: std::pin::Pin<Box<B>>,
    _in_flight: Option<InFlight>,
}

impl<B: MessageBody> MessageBody for Tracked<B> {
    type Error = B::Error;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<actix_web::web::Bytes, Self::Error>>> {
        self.body.as_mut().poll_next(cx)
    }
}

/// Middleware: a request on a connection past a cap is answered with the cap's error
/// and the connection closed; every other request counts as in flight on its
/// connection until its reply is sent (see [`NEXT_HEAD_WITHIN`]).
pub async fn refuse_over_cap(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let slot = req.request().conn_data::<Slot>();
    let refused = slot.and_then(|s| s.refused);
    let Some(refusal) = refused else {
        let in_flight = slot.and_then(InFlight::begin);
        return next.call(req).await.map(|r| {
            r.map_body(|_, body| Tracked {
                body: Box::pin(body),
                _in_flight: in_flight,
            })
            .map_into_left_body()
        });
    };
    let err = match refusal {
        Refusal::Total(max) => ApiError::limited(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!("the server holds {max} connections, the most it takes ([limits] max_connections); try again later"),
        ),
        Refusal::PerAddress(max) => ApiError::limited(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!("{max} connections are open from your address, the most one address may hold ([limits] max_connections_per_address)"),
        ),
    };
    let mut reply = err.error_response();
    reply
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Ok(req.into_response(reply).map_into_right_body())
}

/// Request body bytes held at once by all requests together (`[limits]
/// body_budget_bytes`). A body takes its bytes from the budget as they arrive, never
/// ahead of them (a declared length alone holds nothing), and gives them back when its
/// request is done.
///
/// A sixteenth of the budget is kept for bodies that declare at most [`SMALL_BODY`]
/// bytes: a gate's event or a lot's registration still goes in while large bodies
/// that stall hold the rest, and to spend that part too takes thousands of
/// connections, not hundreds.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<tokio::sync::Semaphore>,
    small: Arc<tokio::sync::Semaphore>,
    total: usize,
}

/// The most a body may declare (`Content-Length`) to be given bytes from the part of
/// the budget kept for small ones.
pub const SMALL_BODY: usize = 64 << 10;

/// Bytes a body holds from the [`BodyBudget`]; given back on drop.
pub struct Held {
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// Declared small: it may take from the part kept for small bodies.
    small: bool,
}

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        let total = total.min(tokio::sync::Semaphore::MAX_PERMITS);
        let small = total / 16;
        BodyBudget {
            bytes: Arc::new(tokio::sync::Semaphore::new(total - small)),
            small: Arc::new(tokio::sync::Semaphore::new(small)),
            total,
        }
    }

    /// Nothing held yet, for a body of unknown length.
    pub fn none() -> Held {
        BodyBudget::declared(None)
    }

    /// Nothing held yet, for a body that declares `len` bytes.
    pub fn declared(len: Option<usize>) -> Held {
        Held {
            permits: Vec::new(),
            small: len.is_some_and(|n| n <= SMALL_BODY),
        }
    }

    /// Add `n` bytes to what `held` holds, or the 503 to answer when the budget is spent.
    pub fn take(&self, held: &mut Held, n: usize) -> Result<(), ApiError> {
        let take = |pool: &Arc<tokio::sync::Semaphore>| {
            u32::try_from(n)
                .ok()
                .and_then(|n| pool.clone().try_acquire_many_owned(n).ok())
        };
        let permit = if held.small {
            take(&self.small).or_else(|| take(&self.bytes))
        } else {
            take(&self.bytes)
        };
        let Some(permit) = permit else {
            return Err(ApiError::Limited {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "busy",
                message: format!(
                    "the server holds as many request bodies as it may at once ({} bytes, [limits] body_budget_bytes); nothing of this request was taken: send it again in a moment",
                    self.total
                ),
                retry_after_secs: Some(1),
            });
        };
        match held.permits.last_mut() {
            Some(last) if Arc::ptr_eq(last.semaphore(), permit.semaphore()) => last.merge(permit),
            _ => held.permits.push(permit),
        }
        Ok(())
    }

    /// Bytes held by bodies now.
    pub fn in_use(&self) -> usize {
        self.total - self.bytes.available_permits() - self.small.available_permits()
    }
}

/// Events per second per `ingest` token (a keyed GCRA from `governor`).
#[derive(Clone)]
pub struct IngestRate {
    limiter: Arc<governor::DefaultKeyedRateLimiter<Arc<str>>>,
    per_sec: u32,
}

impl IngestRate {
    /// `None` when the limit is off (0). A token may spend a second's worth at once, or
    /// one full batch of `max_batch` events, whichever is more.
    pub fn new(per_sec: u32, max_batch: usize) -> Option<IngestRate> {
        let rate = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(per_sec.max(u32::try_from(max_batch).unwrap_or(u32::MAX)))
            .unwrap_or(rate);
        let quota = governor::Quota::per_second(rate).allow_burst(burst);
        Some(IngestRate {
            limiter: Arc::new(governor::RateLimiter::keyed(quota)),
            per_sec,
        })
    }

    /// Spend `events` of the caller's allowance, or the 429 to answer. Only `ingest`
    /// tokens are limited.
    pub fn spend(
        &self,
        caller: Option<&super::auth::Caller>,
        events: usize,
    ) -> Result<(), ApiError> {
        let Some(c) = caller.filter(|c| c.role == super::auth::Role::Ingest) else {
            return Ok(());
        };
        let n = NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX).max(1))
            .expect("at least one");
        let wait = match self.limiter.check_key_n(&c.name, n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until.wait_time_from(DefaultClock::default().now()),
            // More than the burst: never allowed in one request.
            Err(_) => {
                return Err(ApiError::limited(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "rate_limited",
                    format!("{events} events in one request is more than token {:?} may post at once ([limits] ingest_events_per_sec = {})", &*c.name, self.per_sec),
                ))
            }
        };
        Err(ApiError::Limited {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!(
                "token {:?} may post {} events a second ([limits] ingest_events_per_sec); nothing of this request was taken",
                &*c.name, self.per_sec
            ),
            retry_after_secs: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
        })
    }

    /// Forget tokens whose allowance is full again (called now and then).
    pub fn tidy(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_hold_the_budget_while_they_live_and_give_it_back() {
        // 150 bytes for any body, 10 kept for small ones.
        let b = BodyBudget::new(160);
        let mut one = BodyBudget::none();
        b.take(&mut one, 100).unwrap();
        b.take(&mut one, 40).unwrap();
        assert_eq!(b.in_use(), 140);
        let mut two = BodyBudget::none();
        let err = b.take(&mut two, 20).unwrap_err();
        assert!(matches!(
            err,
            ApiError::Limited {
                retry_after_secs: Some(_),
                ..
            }
        ));
        b.take(&mut two, 10).unwrap();
        drop(one);
        assert_eq!(b.in_use(), 10);
        drop(two);
        assert_eq!(b.in_use(), 0);
    }

    /// Large bodies that stall cannot shut small ones out: a sixteenth of the budget
    /// is theirs; once that is spent too, they are refused like the rest.
    #[test]
    fn large_bodies_leave_room_for_small_ones() {
        const MIB: usize = 1 << 20;
        let b = BodyBudget::new(16 * MIB);
        let mut large = Vec::new();
        loop {
            let mut h = BodyBudget::declared(Some(4 * MIB));
            match b.take(&mut h, MIB) {
                Ok(()) => large.push(h),
                Err(_) => break,
            }
        }
        assert!(b.in_use() > 14 * MIB, "{}", b.in_use());
        // A large body gets no more, nor one of unknown length; an event's still goes in.
        assert!(b
            .take(&mut BodyBudget::declared(Some(4 * MIB)), 8 << 10)
            .is_err());
        assert!(b.take(&mut BodyBudget::none(), 8 << 10).is_err());
        let mut small = Vec::new();
        loop {
            let mut h = BodyBudget::declared(Some(200));
            match b.take(&mut h, 8 << 10) {
                Ok(()) => small.push(h),
                Err(_) => break,
            }
        }
        assert!(small.len() >= 128, "{} small bodies", small.len());
        assert!(b.in_use() <= 16 * MIB);
        drop((large, small));
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn caps_count_in_all_and_per_address_and_give_places_back() {
        let c = Connections::new(3, 2, Vec::new());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = c.open(Some(a));
        let s2 = c.open(Some(a));
        let s3 = c.open(Some(a));
        assert!(s1.refused.is_none() && s2.refused.is_none());
        assert!(matches!(s3.refused, Some(Refusal::PerAddress(2))));
        let s4 = c.open(Some(b));
        assert!(matches!(s4.refused, Some(Refusal::Total(3))));
        drop((s3, s4));
        assert_eq!(c.open_now(), 2);
        assert!(c.open(Some(b)).refused.is_none());
        drop((s1, s2));
        assert_eq!(c.open_now(), 0);
        assert!(c.inner.open.lock().unwrap().1.is_empty());
    }

    /// A reverse proxy's connections are all its clients': counted in all, not against
    /// its address (issue 26); anyone else's still are, IPv4 however it is spelled.
    #[test]
    fn a_trusted_proxy_is_not_capped_per_address_and_others_are() {
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let c = Connections::new(100, 2, vec![proxy]);
        let through: Vec<Slot> = (0..10).map(|_| c.open(c.counted_as(proxy))).collect();
        assert!(through.iter().all(|s| s.refused.is_none()));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let plain: IpAddr = "10.0.0.1".parse().unwrap();
        let _one = c.open(c.counted_as(mapped));
        let _two = c.open(c.counted_as(plain));
        let three = c.open(c.counted_as(plain));
        assert!(matches!(three.refused, Some(Refusal::PerAddress(2))));
        assert_eq!(c.open_now(), 13);
    }
}
