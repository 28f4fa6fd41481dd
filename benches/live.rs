//! Live fan-out latency: `cargo bench --bench live`.
//!
//! Starts the release `parkade serve` on a fresh data directory and its default limits,
//! opens websocket subscribers to `/v1/ws`, and posts events at a fixed rate (small
//! batches every few milliseconds) over 20 lots. Up to 100 subscribers follow all lots
//! (the dashboard); the others each follow one lot (a phone on a lot's page), round
//! the lots, all from one address as a campus NAT would. For every message every
//! subscriber receives, the latency is the time from sending the POST that carried the
//! event to the message's arrival. Prints p50, p99 and max over all (subscriber,
//! event) pairs, how many messages arrived of those expected (every change of its lots
//! to every subscriber), and the server's peak resident memory.
//!
//! Settings (environment): `PARKADE_BENCH_RATE` (events/s, default 10,000),
//! `PARKADE_BENCH_EVERY_MS` (one batch every so many ms, default 2: 20 events a batch;
//! longer when the rate gives less than one event a batch),
//! `PARKADE_BENCH_SUBSCRIBERS` (default 100), `PARKADE_BENCH_DASHBOARDS` (of them, how
//! many follow all lots; default 100), `PARKADE_BENCH_SECONDS` (default 5),
//! `PARKADE_BENCH_RUNS` (default 3). Client threads share the machine with the server.
//! The campus at 8 am: `PARKADE_BENCH_SUBSCRIBERS=10000 PARKADE_BENCH_RATE=200`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parkade::api::wire;

mod common;
use common::*;

const LOTS: usize = 20;

fn main() {
    if !is_bench_run() {
        return;
    }
    let rate: usize = env_or("PARKADE_BENCH_RATE", 10_000);
    let subs: usize = env_or("PARKADE_BENCH_SUBSCRIBERS", 100);
    let secs: u64 = env_or("PARKADE_BENCH_SECONDS", 5);
    let runs: usize = env_or("PARKADE_BENCH_RUNS", 3);
    // At least one event a batch: a slow rate spaces its batches out instead.
    let every_ms: u64 = env_or("PARKADE_BENCH_EVERY_MS", 2u64)
        .max(1)
        .max(1000u64.div_ceil(rate.max(1) as u64));
    let dashboards: usize = env_or("PARKADE_BENCH_DASHBOARDS", 100).min(subs);
    raise_open_files(subs as u64 + 256);
    println!(
        "live fan-out: {rate} events/s (a batch every {every_ms} ms) for {secs} s over {LOTS} lots, {subs} websocket subscribers ({dashboards} on all lots, {} on one lot each), {runs} runs",
        subs - dashboards
    );
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut rss = Vec::new();
    for run in 0..runs {
        let r = one_run(rate, subs, dashboards, Duration::from_secs(secs), every_ms);
        println!(
            "run {}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} of {} messages received, {} of {subs} snapshots; server peak RSS {:.0} MiB ({} events posted at {:.0}/s; the POSTs alone: p50 {:.2} ms, p99 {:.2} ms)",
            run + 1, r.p50, r.p99, r.max, r.received, r.expected, r.snapshots, r.peak_rss_mib, r.events, r.achieved, r.post_p50, r.post_p99
        );
        p50s.push(r.p50);
        p99s.push(r.p99);
        rss.push(r.peak_rss_mib);
    }
    println!(
        "median of {runs}: p50 {:.2} ms, p99 {:.2} ms, server peak RSS {:.0} MiB (targets: p99 <= 10 ms at 10,000 events/s with 100 subscribers; p99 <= 50 ms and RSS <= 1 GiB with 10,000 at 200 events/s)",
        median(&mut p50s),
        median(&mut p99s),
        median(&mut rss)
    );
}

struct RunResult {
    /// Round trip of the POSTs themselves (durable append included).
    post_p50: f64,
    post_p99: f64,
    p50: f64,
    p99: f64,
    max: f64,
    received: usize,
    expected: usize,
    snapshots: usize,
    peak_rss_mib: f64,
    events: usize,
    achieved: f64,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn one_run(rate: usize, subs: usize, dashboards: usize, dur: Duration, every_ms: u64) -> RunResult {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_parkade"))
            .arg("serve")
            .env("PARKADE_DATA_DIR", dir.path())
            .env("PARKADE_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .env_remove("PARKADE_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start parkade serve"),
    );
    // Register the lots and wait for the server.
    actix_rt::System::new().block_on({
        let base = base.clone();
        async move {
            let client = awc::Client::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while client.get(format!("{base}/healthz")).send().await.is_err() {
                assert!(Instant::now() < deadline, "the server did not start");
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
            for i in 0..LOTS {
                client
                    .post(format!("{base}/v1/lots"))
                    .send_json(&wire::RegisterIn {
                        lot_id: format!("l{i}"),
                        name: format!("Lot {i}"),
                        capacity: 100_000,
                        ..Default::default()
                    })
                    .await
                    .expect("register");
            }
        }
    });
    let server_pid = _server.0.id();
    // Subscribers on two threads; each records (offset, arrival) per message. The
    // `i`th follows all lots below `dashboards`, else lot `i % LOTS`.
    let lot_of = move |i: usize| (i >= dashboards).then_some(i % LOTS);
    let threads = 2.min(subs.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop_at = Instant::now() + dur + Duration::from_secs(8);
    let mut handles = Vec::new();
    for t in 0..threads {
        let mine: Vec<usize> = (0..subs).filter(|i| i % threads == t).collect();
        let ready = ready_tx.clone();
        handles.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for i in mine {
                    let ws = RawWs::connect(port, lot_of(i)).await;
                    tasks.push(tokio::spawn(ws.record_until(stop_at)));
                }
                ready.send(()).unwrap();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                all
            })
        }));
    }
    for _ in 0..threads {
        ready_rx.recv().unwrap();
    }
    // The sender: a batch every `every_ms`.
    let per_batch = (rate * every_ms as usize / 1000).max(1);
    let (sent, lots_of, events, achieved, post_p50, post_p99) =
        actix_rt::System::new().block_on(async move {
            let client = awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish();
            let started = Instant::now();
            let mut next = started;
            let mut k = 0usize;
            let mut inflight = Vec::new();
            // Requests leave on schedule, whether or not the previous one has been answered.
            while started.elapsed() < dur {
                next += Duration::from_millis(every_ms);
                let body: Vec<wire::EventIn> = (0..per_batch)
                    .map(|i| {
                        k += 1;
                        let kind = if (k / LOTS).is_multiple_of(2) {
                            "ARRIVAL"
                        } else {
                            "DEPARTURE"
                        };
                        wire::EventIn {
                            lot_id: format!("l{}", (k + i) % LOTS),
                            event_type: kind.into(),
                            ..Default::default()
                        }
                    })
                    .collect();
                let client = client.clone();
                let url = format!("{base}/v1/events");
                inflight.push(actix_rt::spawn(async move {
                    let at = Instant::now();
                    let mut resp = client.post(url).send_json(&body).await.expect("post");
                    let reply: wire::BatchReply = resp.json().limit(1 << 24).await.expect("reply");
                    let offsets: Vec<(u64, usize)> = reply
                        .results
                        .iter()
                        .zip(&body)
                        .filter_map(|(r, e)| match r {
                            wire::BatchItem::Accepted { offset }
                            | wire::BatchItem::Duplicate { offset } => {
                                Some((*offset, e.lot_id[1..].parse().expect("a bench lot")))
                            }
                            _ => None,
                        })
                        .collect();
                    (offsets, at, at.elapsed().as_secs_f64() * 1000.0)
                }));
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    actix_rt::time::sleep(wait).await;
                }
            }
            // Concurrent requests interleave their offsets: keep each offset's send time.
            let mut sent: Vec<Option<Instant>> = Vec::new();
            let mut lots_of = [0usize; LOTS];
            let mut events = 0usize;
            let mut rtts = Vec::new();
            for h in inflight {
                let (offsets, at, rtt) = h.await.unwrap();
                rtts.push(rtt);
                events += offsets.len();
                for (o, lot) in offsets {
                    lots_of[lot] += 1;
                    let o = o as usize;
                    if sent.len() <= o {
                        sent.resize(o + 1, None);
                    }
                    sent[o] = Some(at);
                }
            }
            let achieved = events as f64 / dur.as_secs_f64();
            rtts.sort_by(f64::total_cmp);
            let rtt99 = rtts
                .get((rtts.len().max(1) - 1) * 99 / 100)
                .copied()
                .unwrap_or(f64::NAN);
            (
                sent,
                lots_of,
                events,
                achieved,
                rtts.get(rtts.len() / 2).copied().unwrap_or(f64::NAN),
                rtt99,
            )
        });
    let mut lat = Vec::new();
    let (mut received, mut snapshots) = (0, 0);
    for h in handles {
        for (snapshot, seen) in h.join().unwrap() {
            snapshots += usize::from(snapshot);
            received += seen.len();
            for (o, at) in seen {
                if let Some(Some(t)) = sent.get(o as usize) {
                    lat.push(at.saturating_duration_since(*t).as_secs_f64() * 1000.0);
                }
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let peak_rss_mib = peak_rss_mib(server_pid);
    // Every event to each dashboard, and to the phones on its lot.
    let expected = (0..subs)
        .map(|i| lot_of(i).map_or(events, |lot| lots_of[lot]))
        .sum();
    RunResult {
        post_p50,
        post_p99,
        p50: pct(0.5),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or(f64::NAN),
        received,
        expected,
        snapshots,
        peak_rss_mib,
        events,
        achieved,
    }
}

/// The `"offset":N` of a change message, without parsing the rest.
fn offset_of(b: &[u8]) -> Option<u64> {
    let key = b"\"offset\":";
    let at = b.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&b[at..at + digits]).ok()?.parse().ok()
}

/// A minimal websocket reader over TCP (the server's frames are unmasked): the bench's
/// own client costs as little of the shared cores as it can.
struct RawWs {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// A subscriber to lot `l{lot}`, or to all lots.
    async fn connect(port: u16, lot: Option<usize>) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        let query = lot.map_or(String::new(), |l| format!("?lots=l{l}"));
        let req = format!(
            "GET /v1/ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(
                    buf.starts_with(b"HTTP/1.1 101"),
                    "{}",
                    String::from_utf8_lossy(&buf)
                );
                buf.drain(..end + 4);
                break;
            }
        }
        RawWs { stream, buf }
    }

    /// Whether the snapshot came, and (offset, arrival) of every change, until `stop_at`.
    async fn record_until(mut self, stop_at: Instant) -> (bool, Vec<(u64, Instant)>) {
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        let mut chunk = vec![0u8; 16 << 10];
        // The first text frame is the snapshot.
        let mut snapshot_skipped = false;
        loop {
            // Parse every whole frame in the buffer.
            let mut at = 0;
            loop {
                let b = &self.buf[at..];
                if b.len() < 2 {
                    break;
                }
                let (len, head) = match b[1] & 0x7f {
                    126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                    127 if b.len() >= 10 => (
                        u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => break,
                    l => (l as usize, 2),
                };
                if b.len() < head + len {
                    break;
                }
                if b[0] & 0x0f == 1 && !snapshot_skipped {
                    snapshot_skipped = true;
                } else if b[0] & 0x0f == 1 {
                    if let Some(o) = offset_of(&b[head..head + len]) {
                        seen.push((o, Instant::now()));
                    }
                }
                at += head + len;
            }
            self.buf.drain(..at);
            let left = stop_at.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return (snapshot_skipped, seen),
            }
        }
    }
}
