//! Attacks at once while a legitimate client works: `cargo bench --bench attack`.
//!
//! Starts the release `parkade serve` on a fresh data directory with its defaults, but
//! for the two memory budgets, set low so that the attack reaches them
//! (`PARKADE_BENCH_BODY_BUDGET_MIB`, default 256; `PARKADE_BENCH_OUTBOX_BUDGET_MIB`,
//! default 128), fills its log with `PARKADE_BENCH_LOG_EVENTS` events (default
//! 200,000), then runs these from four other loopback addresses for
//! `PARKADE_BENCH_SECONDS` (default 20), none with a token:
//!
//! - metrics labels: requests with a new 4,000-character method each, on one connection;
//! - slowloris: 64 connections per address that send a request, then the next head a
//!   byte a second;
//! - bodies: 768 connections that each send a 4 MiB body's first MiB and stall;
//! - catch-ups: 250 websockets resuming from offset 0 that never read;
//!
//! each reconnecting when the server closes it (`PARKADE_BENCH_ATTACKS=bodies,catch-ups`
//! runs only those named, to see what one costs). Meanwhile the legitimate client, from
//! 127.0.0.1 on its own thread, reads a lot and posts an event every 10 ms each. Prints
//! the legitimate client's p50, p99 and errors, what each attack got, and the server's
//! peak resident memory beside its budgets. Targets: no legitimate error, p99 <= 100 ms,
//! peak RSS within the budgets (bodies, plus twice the outboxes', plus the server's own,
//! plus the HTTP server's own memory of each connection open at the most, 12 KiB each
//! as measured idle).
//!
//! The attacker's thread runs at nice `PARKADE_BENCH_ATTACKER_NICE` (default 19): a real
//! attacker brings its own CPU, while here it shares the server's two cores; at 19 it
//! gets what the server and the legitimate client leave (the counts it prints say how
//! much it sent). `PARKADE_BENCH_ATTACKER_NICE=0` runs it as an equal.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

/// Addresses the attacks come from (all loopback).
const ATTACKERS: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];

fn main() {
    if !is_bench_run() {
        return;
    }
    let secs: u64 = env_or("PARKADE_BENCH_SECONDS", 20);
    let body_mib: usize = env_or("PARKADE_BENCH_BODY_BUDGET_MIB", 256);
    let outbox_mib: usize = env_or("PARKADE_BENCH_OUTBOX_BUDGET_MIB", 128);
    let log_events: usize = env_or("PARKADE_BENCH_LOG_EVENTS", 200_000);
    raise_open_files(4_096);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("parkade.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nbody_budget_bytes = {}\n[live]\noutbox_budget_bytes = {}\n",
            body_mib << 20,
            outbox_mib << 20
        ),
    )
    .unwrap();
    let port = free_port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_parkade"))
            .arg("serve")
            .env("PARKADE_CONFIG", &config)
            .env("PARKADE_DATA_DIR", dir.path().join("data"))
            .env("PARKADE_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .env_remove("PARKADE_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start parkade serve"),
    );
    let pid = server.0.id();
    println!(
        "attack: {secs} s of metrics labels, slowloris, 768 stalled bodies and 250 catch-ups from {} addresses, against a server with a {body_mib} MiB body budget and a {outbox_mib} MiB outbox budget, {log_events} events in its log",
        ATTACKERS.len()
    );
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    rt().block_on(prepare(port, log_events));
    let before = rss_mib(pid);
    let fds_before = open_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let nice: i32 = env_or("PARKADE_BENCH_ATTACKER_NICE", 19);
    let attack = {
        let (stop, tally) = (stop.clone(), tally.clone());
        std::thread::spawn(move || {
            // SAFETY: setpriority only changes this thread's scheduling priority.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
                eprintln!("attack: could not set the attacker's nice to {nice}");
            }
            rt().block_on(attacks(port, stop, tally))
        })
    };
    // The attacks take a few seconds to reach their size.
    std::thread::sleep(Duration::from_secs(3));
    let legit = {
        let stop = stop.clone();
        std::thread::spawn(move || rt().block_on(legitimate(port, stop)))
    };
    let started = Instant::now();
    let mut peak = before;
    let mut most_fds = fds_before;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(rss_mib(pid));
        most_fds = most_fds.max(open_fds(pid));
    }
    stop.store(true, Ordering::SeqCst);
    let l = legit.join().unwrap();
    attack.join().unwrap();
    let hwm = peak_rss_mib(pid);
    drop(server);

    // Connections open at once at the most: the attack's (labels, slowloris, bodies,
    // catch-ups: 1,278) and the ones the server is closing, which it reads for up to a
    // second after refusing a body (their buffers are in the body budget, the rest of
    // them is not).
    let held = most_fds
        .saturating_sub(fds_before)
        .max(ATTACKERS.len() + 256 + 768 + 250);
    let per_connection = 12.0 / 1024.0;
    let ceiling = before + body_mib as f64 + 2.0 * outbox_mib as f64 + held as f64 * per_connection;
    println!(
        "legitimate client: {} requests ({} reads, {} writes), {} errors; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target: no error, p99 <= 100 ms)",
        l.reads + l.writes,
        l.reads,
        l.writes,
        l.errors,
        l.p50,
        l.p99,
        l.max
    );
    println!(
        "  reads p50 {:.2} ms, p99 {:.2} ms; writes p50 {:.2} ms, p99 {:.2} ms",
        l.read_pcts.0, l.read_pcts.1, l.write_pcts.0, l.write_pcts.1
    );
    for (e, n) in l.error_kinds.iter().take(5) {
        println!("  error x{n}: {e}");
    }
    println!(
        "attacks: {} label requests sent; {} slowloris connections closed by the server; {} stalled bodies ({} refused 503 busy); {} catch-ups opened ({} refused 503)",
        tally.labels.load(Ordering::Relaxed),
        tally.loris_closed.load(Ordering::Relaxed),
        tally.bodies.load(Ordering::Relaxed),
        tally.bodies_refused.load(Ordering::Relaxed),
        tally.catch_ups.load(Ordering::Relaxed),
        tally.catch_ups_refused.load(Ordering::Relaxed),
    );
    println!(
        "server resident memory: {before:.0} MiB before, peak {hwm:.0} MiB (sampled {peak:.0} MiB); budgets' ceiling {ceiling:.0} MiB ({before:.0} + bodies {body_mib} + twice the outboxes' {outbox_mib} + {held} connections open at the most, at 12 KiB); attacker at nice {nice}"
    );
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many files `pid` has open now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The resident memory of `pid` now (VmRSS), in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// What the attacks got.
#[derive(Default)]
struct Tally {
    labels: AtomicU64,
    loris_closed: AtomicU64,
    bodies: AtomicU64,
    bodies_refused: AtomicU64,
    catch_ups: AtomicU64,
    catch_ups_refused: AtomicU64,
}

/// A connection to the server from `ip`.
async fn connect_from(ip: &str, port: u16) -> std::io::Result<TcpStream> {
    use std::os::fd::AsRawFd;
    let sock = tokio::net::TcpSocket::new_v4()?;
    // The port is chosen at connect, not at bind: a bind to port 0 searches every port
    // of the address in use (thousands in TIME_WAIT here), which took most of the two
    // cores for the attacker's own kernel work rather than for the server's.
    let one: libc::c_int = 1;
    // SAFETY: a valid socket, and a pointer to an int of the size given.
    let set = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.bind(format!("{ip}:0").parse().unwrap())?;
    sock.connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
}

/// One request on `s`; the reply's status and body (`Content-Length` replies only).
async fn request(s: &mut TcpStream, head_and_body: &[u8]) -> std::io::Result<(u16, String)> {
    s.write_all(head_and_body).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
        return Ok((status, body));
    }
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Wait for the server, register a lot and fill the log.
async fn prepare(port: u16, events: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut s = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, body) = request(
        &mut s,
        &post(
            "/v1/lots",
            r#"{"lot_id":"north","name":"North","capacity":1000000}"#,
        ),
    )
    .await
    .unwrap();
    assert!(status == 201 || status == 200, "{status} {body}");
    let batch = 10_000.min(events.max(1));
    let one = |i: usize| {
        let kind = if i.is_multiple_of(2) {
            "ARRIVAL"
        } else {
            "DEPARTURE"
        };
        format!(r#"{{"lot_id":"north","event_type":"{kind}"}}"#)
    };
    let body = format!("[{}]", (0..batch).map(one).collect::<Vec<_>>().join(","));
    for _ in 0..events.div_ceil(batch) {
        let (status, reply) = request(&mut s, &post("/v1/events", &body)).await.unwrap();
        assert_eq!(status, 200, "{reply}");
    }
}

/// Whether `attack` is among `PARKADE_BENCH_ATTACKS` (a comma-separated list of
/// labels, slowloris, bodies, catch-ups; all of them when unset), to see what one costs.
fn wanted(attack: &str) -> bool {
    std::env::var("PARKADE_BENCH_ATTACKS")
        .map_or(true, |list| list.split(',').any(|a| a.trim() == attack))
}

/// Every attack (of those wanted), until `stop`.
async fn attacks(port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut tasks = Vec::new();
    // Metrics labels: a new method each time, on one connection per address.
    if wanted("labels") {
        for ip in ATTACKERS {
            let (stop, tally) = (stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = connect_from(ip, port).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let method = format!("M{n:0>3999}");
                        let req = format!("{method} /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
                        if request(&mut s, req.as_bytes()).await.is_err() {
                            break;
                        }
                        tally.labels.fetch_add(1, Ordering::Relaxed);
                        // Enough to keep the label path busy, not to take a core.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
    }
    // Slowloris on keep-alive connections.
    if wanted("slowloris") {
        for ip in ATTACKERS {
            for _ in 0..64 {
                let (stop, tally) = (stop.clone(), tally.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = connect_from(ip, port).await else {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        };
                        let whole = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
                        if request(&mut s, whole).await.is_err() {
                            continue;
                        }
                        for b in whole.iter().cycle() {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            if s.write_all(&[*b]).await.is_err() {
                                tally.loris_closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }));
            }
        }
    }
    // Stalled bodies: 4 MiB declared, 1 MiB sent.
    if wanted("bodies") {
        let mib = Arc::new(vec![b'['; 1 << 20]);
        for k in 0..768 {
            let (stop, tally, mib) = (stop.clone(), tally.clone(), mib.clone());
            let ip = ATTACKERS[k % ATTACKERS.len()];
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = connect_from(ip, port).await else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    };
                    let head = format!(
                        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        4 << 20
                    );
                    if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&mib).await.is_err()
                    {
                        continue;
                    }
                    tally.bodies.fetch_add(1, Ordering::Relaxed);
                    // Stall until the server answers or closes.
                    let mut reply = [0u8; 512];
                    let got = tokio::select! {
                        r = s.read(&mut reply) => r.unwrap_or(0),
                        _ = wait_for(&stop) => return,
                    };
                    if reply[..got].starts_with(b"HTTP/1.1 503") {
                        tally.bodies_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    // Catch-ups from offset 0 that never read.
    if wanted("catch-ups") {
        for k in 0..250 {
            let (stop, tally) = (stop.clone(), tally.clone());
            let ip = ATTACKERS[k % ATTACKERS.len()];
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = connect_from(ip, port).await else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    };
                    let req = "GET /v1/ws?from_offset=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
                    if s.write_all(req.as_bytes()).await.is_err() {
                        continue;
                    }
                    let mut head = [0u8; 12];
                    if s.read_exact(&mut head).await.is_err() {
                        continue;
                    }
                    if head.starts_with(b"HTTP/1.1 101") {
                        tally.catch_ups.fetch_add(1, Ordering::Relaxed);
                        // Never read: hold the socket until the server closes it (a write
                        // to it fails) or the attack ends.
                        loop {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                                _ = wait_for(&stop) => return,
                            }
                            // A masked ping, which also shows whether the socket still stands.
                            if s.write_all(&[0x89, 0x80, 1, 2, 3, 4]).await.is_err() {
                                break;
                            }
                        }
                    } else {
                        tally.catch_ups_refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Resolves once `stop` is set.
async fn wait_for(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Legit {
    reads: usize,
    writes: usize,
    errors: usize,
    /// Each kind of error, with how often it came.
    error_kinds: Vec<(String, usize)>,
    p50: f64,
    p99: f64,
    max: f64,
    /// p50 and p99 of the reads, then of the writes.
    read_pcts: (f64, f64),
    write_pcts: (f64, f64),
}

/// The `q` quantile of sorted figures.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// A reader and a writer, a request every 10 ms each, until `stop`.
async fn legitimate(port: u16, stop: Arc<AtomicBool>) -> Legit {
    let run = |write: bool| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), std::collections::BTreeMap::new());
            let mut conn: Option<TcpStream> = None;
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                k += 1;
                let req = if write {
                    // An arrival first: a departure from the empty lot would be refused.
                    let kind = if k % 2 == 1 { "ARRIVAL" } else { "DEPARTURE" };
                    post(
                        "/v1/events",
                        &format!(r#"{{"lot_id":"north","event_type":"{kind}"}}"#),
                    )
                } else {
                    b"GET /v1/lots/north HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec()
                };
                let outcome = tokio::time::timeout(Duration::from_secs(5), async {
                    if conn.is_none() {
                        conn = Some(TcpStream::connect(("127.0.0.1", port)).await?);
                    }
                    request(conn.as_mut().unwrap(), &req).await
                })
                .await;
                let failed = match outcome {
                    Ok(Ok((200, _))) => None,
                    Ok(Ok((status, body))) => Some(format!(
                        "{status} {}",
                        body.chars().take(120).collect::<String>()
                    )),
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("no reply within 5 s".into()),
                };
                lat.push(at.elapsed().as_secs_f64() * 1000.0);
                if let Some(e) = failed {
                    *errors.entry(e).or_insert(0usize) += 1;
                    conn = None;
                }
                if let Some(wait) = Duration::from_millis(10).checked_sub(at.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            lat.sort_by(f64::total_cmp);
            (lat, errors)
        })
    };
    let (reads, writes) = (run(false), run(true));
    let (r, w) = (reads.await.unwrap(), writes.await.unwrap());
    let mut all: Vec<f64> = r.0.iter().chain(&w.0).copied().collect();
    all.sort_by(f64::total_cmp);
    let mut kinds = r.1;
    for (e, n) in w.1 {
        *kinds.entry(e).or_insert(0) += n;
    }
    let mut error_kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    error_kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    Legit {
        reads: r.0.len(),
        writes: w.0.len(),
        errors: error_kinds.iter().map(|(_, n)| n).sum(),
        error_kinds,
        p50: quantile(&all, 0.5),
        p99: quantile(&all, 0.99),
        max: all.last().copied().unwrap_or(f64::NAN),
        read_pcts: (quantile(&r.0, 0.5), quantile(&r.0, 0.99)),
        write_pcts: (quantile(&w.0, 0.5), quantile(&w.0, 0.99)),
    }
}
