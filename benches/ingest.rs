//! The core benchmark: `cargo bench --bench ingest`.
//!
//! Starts the real `parkade serve` binary (release build) on a fresh data directory and
//! drives it over HTTP from this process, on the same machine:
//!
//! 1. batch ingest: requests of 1,000 durable events from a few connections;
//! 2. single-event requests from 64 concurrent connections (events/s, latency), and
//!    beside them reads from 64 connections: `/healthz`, `GET /v1/lots/{id}` and
//!    `GET /v1/lots` (requests/s, latency, and each as a share of `/healthz`);
//! 3. the old cloud processor's way for comparison: the same events as one UPSERT per
//!    event against PostgreSQL, from 64 concurrent connections;
//! 4. `parkade replay --projection occupancy` of a 10M-event log, timed as a whole
//!    process;
//! 5. 1 and 2 again with the log on NATS JetStream: one local server, then a
//!    three-node cluster on loopback with the stream replicated three times (R3); the
//!    servers sync every write before they acknowledge (`sync_interval: always`), as the
//!    embedded log does. Needs a nats-server (`PARKADE_BENCH_NATS_SERVER`, else the
//!    pinned one `./scripts/test.sh` installs); skipped without one. Beside each, the
//!    JetStream log library alone (no HTTP, no lot actors): one writer per lot appending
//!    with the lot's expectation, so what parkade's request path adds can be told apart
//!    from what the log and its servers take; and raw publish-with-ack through the same
//!    client library (the backend's own ceiling on this machine). On the cluster, also
//!    three parkade nodes taking single events for the same lots at once: how many each
//!    gets acknowledged.
//!
//! Each figure is the median of several runs. Settings (environment):
//! `PARKADE_BENCH_SECONDS` (per run, default 4), `PARKADE_BENCH_RUNS` (default 3),
//! `PARKADE_BENCH_REPLAY_EVENTS` (default 10,000,000),
//! `PARKADE_BENCH_DATABASE_URL` (server-level URL; default the test PostgreSQL; set
//! to `none` to skip the PostgreSQL figures).
//!
//! The HTTP client is a minimal keep-alive HTTP/1.1 client over a TCP stream, so that
//! the client spends as little of the shared two cores as possible.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parkade::domain::{Capacity, LotEvent, LotId, NewEvent, Timestamp};
use parkade::log::{Appended, EventLog, Expect, FileLog, LogOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

/// The test suite's NATS servers (alone, or a cluster on loopback), shared with it.
#[allow(dead_code)]
#[path = "../tests/suite/common/nats.rs"]
mod nats;

const LOTS: usize = 30;

fn main() {
    if !is_bench_run() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let secs: u64 = env_or("PARKADE_BENCH_SECONDS", 4);
    let runs: usize = env_or("PARKADE_BENCH_RUNS", 3);
    let replay_events: u64 = env_or("PARKADE_BENCH_REPLAY_EVENTS", 10_000_000);
    let db_admin = std::env::var("PARKADE_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db_admin = (db_admin != "none").then_some(db_admin);
    let dur = Duration::from_secs(secs);
    println!("parkade core benchmark: {runs} runs of {secs} s per figure, medians; client and server on this machine");
    println!(
        "machine: {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let work = tempfile::Builder::new()
        .prefix("parkade-bench-")
        .tempdir()
        .unwrap();
    // 1 and 2 on the embedded log.
    let embedded = ingest_figures(&work.path().join("serve"), &[], runs, dur).await;
    embedded.print("embedded log");
    let (batch, single) = (embedded.batch, embedded.single);

    // 1 and 2 again on JetStream: one server, then a three-node cluster (R3).
    let mut jetstream = Vec::new();
    match nats_server() {
        Some(bin) => {
            std::env::set_var("PARKADE_TEST_NATS_SERVER", &bin);
            for (label, nodes, replicas) in [
                ("JetStream, one server", 1, "1"),
                ("JetStream, 3-node cluster, R3", 3, "3"),
            ] {
                let servers = if nodes == 1 {
                    nats::Nats::single()
                } else {
                    nats::Nats::cluster(nodes)
                };
                let env = [
                    ("PARKADE_LOG_BACKEND", "jetstream".to_owned()),
                    ("PARKADE_NATS_URL", servers.urls()),
                    ("PARKADE_NATS_REPLICAS", replicas.to_owned()),
                ];
                let dir = work.path().join(format!("serve-js{nodes}"));
                let f = ingest_figures(&dir, &env, runs, dur).await;
                f.print(label);
                let options = parkade::log::jetstream::JetStreamOptions {
                    url: servers.urls(),
                    stream: "bench_log_only".into(),
                    replicas: nodes,
                    credentials: None,
                    max_copy_lag: parkade::log::jetstream::DEFAULT_MAX_COPY_LAG,
                };
                let dir = work.path().join(format!("log-js{nodes}"));
                let lib = log_figures(&options, &dir, runs, dur).await;
                lib.print_library();
                raw_publish_figures(&servers.urls(), nodes, runs, dur).await;
                if nodes > 1 {
                    let dir = work.path().join(format!("contended-js{nodes}"));
                    contention_figures(&dir, &env, dur).await;
                }
                jetstream.push((label, f, lib));
            }
        }
        None => println!("JetStream figures: skipped (no nats-server: set PARKADE_BENCH_NATS_SERVER, or run ./scripts/test.sh once to install the pinned one)"),
    }

    // 3. One UPSERT per event against PostgreSQL.
    let mut upsert = None;
    if let Some(admin) = &db_admin {
        match upsert_runs(admin, runs, dur).await {
            Ok(r) => {
                println!(
                    "one PostgreSQL UPSERT per event, 64 connections:  {:>10.0} events/s; parkade single-event is {:.1}x, batch is {:.1}x",
                    r,
                    single / r,
                    batch / r
                );
                upsert = Some(r);
            }
            Err(e) => println!("one PostgreSQL UPSERT per event: skipped ({e})"),
        }
    } else {
        println!("one PostgreSQL UPSERT per event: skipped (PARKADE_BENCH_DATABASE_URL=none)");
    }

    // 4. Replay of a large log.
    let mut replay = None;
    if let Some(admin) = &db_admin {
        let dir = work.path().join("replay");
        let started = Instant::now();
        write_log(&dir.join("log"), replay_events).await;
        println!(
            "(wrote a {replay_events}-event log for replay in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        match replay_runs(admin, &dir, replay_events, runs).await {
            Ok(r) => {
                println!("replay --projection occupancy, {replay_events} events: {:>10.0} events/s (whole process)", r);
                replay = Some(r);
            }
            Err(e) => println!("replay: skipped ({e})"),
        }
    }
    // 5. Archive replay to the local folder (no PostgreSQL needed).
    let dir = work.path().join("replay");
    if !dir.join("log").exists() {
        write_log(&dir.join("log"), replay_events).await;
    }
    let archive = archive_runs(&dir, replay_events, runs);
    println!("replay --projection archive (local Parquet), {replay_events} events: {archive:>10.0} events/s (whole process)");
    println!();
    println!("summary (events/s): batch {batch:.0} | single {single:.0} | upsert-per-event {} | replay {} | archive replay {archive:.0}",
        upsert.map_or("skipped".into(), |v| format!("{v:.0}")),
        replay.map_or("skipped".into(), |v| format!("{v:.0}")));
    for (label, f, lib) in &jetstream {
        println!(
            "summary {label} (events/s): batch {:.0} | single {:.0} (p50 {:.2} ms, p99 {:.2} ms){} | log library alone: batch {:.0}, single {:.0}",
            f.batch,
            f.single,
            f.p50,
            f.p99,
            upsert.map_or(String::new(), |u| format!(
                " | single is {:.1}x the upsert-per-event",
                f.single / u
            )),
            lib.batch,
            lib.single
        );
    }
    // The scale-out floors, on the three-node cluster.
    if let Some((_, r3, _)) = jetstream.iter().find(|(label, _, _)| label.contains("R3")) {
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "floor: batch into the R3 cluster >= {R3_BATCH_FLOOR} events/s: {} ({:.0})",
            met(r3.batch >= R3_BATCH_FLOOR as f64),
            r3.batch
        );
        match upsert {
            Some(u) => println!(
                "floor: R3 single-event >= the upsert-per-event of this run: {} ({:.0} against {u:.0})",
                met(r3.single >= u),
                r3.single
            ),
            None => println!("floor: R3 single-event >= the upsert-per-event: not checked (no PostgreSQL figure)"),
        }
    }
}

/// The scale-out floor for batch ingest into the three-node cluster (events/s).
const R3_BATCH_FLOOR: u64 = 50_000;

/// The nats-server the JetStream figures run on: `PARKADE_BENCH_NATS_SERVER`, else the
/// pinned one the test command installs (or `PARKADE_TEST_NATS_SERVER`).
fn nats_server() -> Option<PathBuf> {
    let cache = std::env::var("PARKADE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/parkade")
        });
    let candidates = [
        std::env::var("PARKADE_BENCH_NATS_SERVER")
            .ok()
            .map(PathBuf::from),
        std::env::var("PARKADE_TEST_NATS_SERVER")
            .ok()
            .map(PathBuf::from),
        Some(cache.join("venv/bin/nats-server")),
        Some(PathBuf::from("target/py-venv/bin/nats-server")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

/// Batch and single-event figures of one server.
struct Figures {
    batch: f64,
    batch_runs: Vec<f64>,
    single: f64,
    single_runs: Vec<f64>,
    p50: f64,
    p99: f64,
    /// Read figures: (what, requests/s, p50, p99), medians of the runs.
    reads: Vec<(&'static str, f64, f64, f64)>,
}

impl Figures {
    /// The medians of the runs' figures.
    fn of_runs(
        batch_runs: Vec<f64>,
        single_runs: Vec<f64>,
        mut p50s: Vec<f64>,
        mut p99s: Vec<f64>,
    ) -> Figures {
        Figures {
            batch: median(&mut batch_runs.clone()),
            batch_runs,
            single: median(&mut single_runs.clone()),
            single_runs,
            p50: median(&mut p50s),
            p99: median(&mut p99s),
            reads: Vec::new(),
        }
    }

    fn print_library(&self) {
        println!(
            "  straight through the log library (no HTTP, no lot actors), {LOTS} lots, one append per lot in flight:"
        );
        println!(
            "    appends of {LIBRARY_BATCH} events:                       {:>10.0} events/s (runs: {})",
            self.batch,
            fmt_runs(&self.batch_runs)
        );
        println!(
            "    appends of one event:                        {:>10.0} events/s (runs: {}); latency p50 {:.2} ms, p99 {:.2} ms",
            self.single,
            fmt_runs(&self.single_runs),
            self.p50,
            self.p99
        );
    }

    fn print(&self, label: &str) {
        println!("{label}:");
        println!(
            "  batch ingest, 1,000 events/request, 4 connections: {:>10.0} events/s (runs: {})",
            self.batch,
            fmt_runs(&self.batch_runs)
        );
        println!(
            "  single-event requests, 64 connections:           {:>10.0} events/s (runs: {}); latency p50 {:.2} ms, p99 {:.2} ms",
            self.single,
            fmt_runs(&self.single_runs),
            self.p50,
            self.p99
        );
        let healthz = self.reads.first().map_or(f64::NAN, |r| r.1);
        for (what, rate, p50, p99) in &self.reads {
            println!(
                "  reads, 64 connections, {what:<17}          {rate:>10.0} requests/s ({:.0}% of /healthz); latency p50 {p50:.2} ms, p99 {p99:.2} ms",
                100.0 * rate / healthz
            );
        }
    }
}

/// Start `parkade serve` on `data` with `env`, register the lots, and measure batch
/// ingest (1) and single-event requests (2).
async fn ingest_figures(
    data: &Path,
    env: &[(&str, String)],
    runs: usize,
    dur: Duration,
) -> Figures {
    let port = free_port();
    let mut server = Server::start(data, port, None, env);
    server.wait_healthy().await;
    let mut c = Conn::connect(port).await;
    for i in 0..LOTS {
        let body = format!(r#"{{"lot_id":"bench-{i}","name":"Bench lot {i}","capacity":1000000}}"#);
        let (status, _) = c
            .request("POST", "/v1/lots", &body, "application/json")
            .await;
        assert!(status == 201 || status == 200, "register: {status}");
    }
    let batch_body = Arc::new(batch_body(1000));
    let mut batch_runs = Vec::new();
    for _ in 0..runs {
        batch_runs.push(batch_run(port, 4, batch_body.clone(), 1000, dur).await);
    }
    let mut single_runs = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..runs {
        let (rate, p50, p99) = single_run(port, 64, dur).await;
        single_runs.push(rate);
        p50s.push(p50);
        p99s.push(p99);
    }
    let mut c = Conn::connect(port).await;
    let (status, body) = c
        .request("GET", "/v1/lots/bench-0", "", "application/json")
        .await;
    assert_eq!(status, 200, "{body}");
    // Reads, run after run in turn so that each sees the same machine.
    let paths: [(&'static str, PathOf); 3] = [
        ("/healthz", |_| "/healthz".into()),
        ("GET /v1/lots/{id}", |i| {
            format!("/v1/lots/bench-{}", i % LOTS)
        }),
        ("GET /v1/lots", |_| "/v1/lots".into()),
    ];
    let mut reads: Vec<[Vec<f64>; 3]> = vec![Default::default(); paths.len()];
    for _ in 0..runs {
        for (k, (_, path)) in paths.iter().enumerate() {
            let (rate, p50, p99) = read_run(port, 64, *path, dur).await;
            reads[k][0].push(rate);
            reads[k][1].push(p50);
            reads[k][2].push(p99);
        }
    }
    server.stop();
    let mut figures = Figures::of_runs(batch_runs, single_runs, p50s, p99s);
    figures.reads = paths
        .iter()
        .zip(reads)
        .map(|((what, _), [mut r, mut p50, mut p99])| {
            (*what, median(&mut r), median(&mut p50), median(&mut p99))
        })
        .collect();
    figures
}

/// The path the `i`th connection reads.
type PathOf = fn(usize) -> String;

/// `GET path(i)` from `conns` keep-alive connections (the `i`th connection's path) for
/// `dur`: requests/s, p50 and p99 in ms.
async fn read_run(port: u16, conns: usize, path: PathOf, dur: Duration) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(port).await;
            let path = path(i);
            let mut lat = Vec::with_capacity(100_000);
            while start.elapsed() < dur {
                let t = Instant::now();
                let (status, reply) = c.request("GET", &path, "", "application/json").await;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(status, 200, "{reply}");
            }
            lat
        }));
    }
    requests_per_sec(tasks, start).await
}

/// Events per append in the log library's batch figure: a 1,000-event request's share
/// of each lot.
const LIBRARY_BATCH: usize = 1000_usize.div_ceil(LOTS);

/// The JetStream log's own part of the figures: [`LOTS`] writers (one per lot, as the
/// lot actors are) appending straight through the log library with the lot's
/// expectation, each waiting for its acknowledgement before the next append; first
/// appends of [`LIBRARY_BATCH`] events, then of one event. What the HTTP figures add to
/// this is parkade's request path (HTTP, parsing, the lot actors) on the same cores.
async fn log_figures(
    options: &parkade::log::jetstream::JetStreamOptions,
    dir: &Path,
    runs: usize,
    dur: Duration,
) -> Figures {
    let log = Arc::new(
        parkade::log::jetstream::JetStreamLog::open(options, dir, LogOptions::default())
            .await
            .unwrap(),
    );
    let cap = Capacity::new(1_000_000).unwrap();
    // Each lot: its id, its last offset, its last lot sequence.
    let mut lots: Vec<(LotId, Option<u64>, u64)> = Vec::new();
    for l in 0..LOTS {
        let lot = LotId::parse(&format!("bench-{l}")).unwrap();
        let registered = LotEvent::LotRegistered {
            name: format!("Bench lot {l}"),
            capacity: cap,
        };
        let register = bench_event(&lot, 1, Timestamp::now(), registered, 0, cap);
        let offsets = acknowledged(&*log, None, &[register]).await;
        lots.push((lot, offsets.last().copied(), 1));
    }
    let (mut batch_runs, mut single_runs, mut p50s, mut p99s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (size, one_event) in [(LIBRARY_BATCH, false), (1, true)] {
        for _ in 0..runs {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for (lot, last, seq) in lots.drain(..) {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let (mut last, mut seq) = (last, seq);
                    let mut lat = Vec::new();
                    while start.elapsed() < dur {
                        // Arrival/departure pairs: the lot never leaves its bounds.
                        let events: Vec<NewEvent> = (0..size)
                            .map(|i| {
                                let arrive = (seq + i as u64) % 2 == 1;
                                let event = if arrive {
                                    LotEvent::VehicleArrived
                                } else {
                                    LotEvent::VehicleDeparted
                                };
                                let (lot_seq, now) = (seq + 1 + i as u64, Timestamp::now());
                                bench_event(&lot, lot_seq, now, event, u32::from(arrive), cap)
                            })
                            .collect();
                        let t = Instant::now();
                        let offsets = acknowledged(&*log, last, &events).await;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        last = offsets.last().copied();
                        seq += size as u64;
                    }
                    ((lot, last, seq), lat)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                let (state, lat) = t.await.unwrap();
                lots.push(state);
                all.extend(lat);
            }
            let rate = (all.len() * size) as f64 / start.elapsed().as_secs_f64();
            if one_event {
                let (p50, p99) = p50_p99(all);
                single_runs.push(rate);
                p50s.push(p50);
                p99s.push(p99);
            } else {
                batch_runs.push(rate);
            }
        }
    }
    log.close();
    Figures::of_runs(batch_runs, single_runs, p50s, p99s)
}

/// The backend's own ceiling on this machine: 64 tasks publishing 100-byte messages to a
/// stream of its own (the same replicas, the same servers syncing every write), each
/// waiting for its acknowledgement before the next, through the same client library,
/// with no parkade code between.
async fn raw_publish_figures(urls: &str, replicas: usize, runs: usize, dur: Duration) {
    let servers: Vec<async_nats::ServerAddr> =
        urls.split(',').map(|u| u.parse().unwrap()).collect();
    let client = async_nats::ConnectOptions::new()
        .connect(servers)
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "bench_raw".into(),
        subjects: vec!["bench_raw.>".into()],
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("the raw stream");
    let mut rates = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let js = js.clone();
                tokio::spawn(async move {
                    let payload = bytes::Bytes::from(vec![b'x'; 100]);
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        js.publish(format!("bench_raw.{}", i % LOTS), payload.clone())
                            .await
                            .expect("publish")
                            .await
                            .expect("acknowledged");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "  raw JetStream publish-with-ack, 64 publishers, 100 bytes, R{replicas}: {:>8.0} messages/s (runs: {})",
        median(&mut rates.clone()),
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
    );
}

/// Three parkade nodes on one cluster, each sent single events for the same lots by 16
/// connections of its own: how many each node gets acknowledged, and how many it
/// answers otherwise (a lot written hard from every node at once).
async fn contention_figures(dir: &Path, env: &[(&str, String)], dur: Duration) {
    // A stream of its own, so that no node first copies the other figures' events.
    let mut env = env.to_vec();
    env.push(("PARKADE_NATS_STREAM", "bench_contended".to_owned()));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<Server> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let server = Server::start(&dir.join(format!("node{i}")), *port, None, &env);
        server.wait_healthy().await;
        if i == 0 {
            let mut c = Conn::connect(*port).await;
            for l in 0..LOTS {
                let body = format!(
                    r#"{{"lot_id":"bench-{l}","name":"Bench lot {l}","capacity":1000000}}"#
                );
                let (status, _) = c
                    .request("POST", "/v1/lots", &body, "application/json")
                    .await;
                assert!(status == 201 || status == 200, "register: {status}");
            }
        }
        servers.push(server);
    }
    // Each node knows the lots once it has followed the stream.
    for port in &ports {
        let mut c = Conn::connect(*port).await;
        let started = Instant::now();
        loop {
            let (status, _) = c
                .request("GET", "/v1/lots/bench-0", "", "application/json")
                .await;
            if status == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "node on {port}: no lots"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let start = Instant::now();
    let nodes: Vec<_> = ports
        .iter()
        .map(|&port| {
            tokio::spawn(async move {
                let conns: Vec<_> = (0..16)
                    .map(|i| {
                        tokio::spawn(async move {
                            let mut c = Conn::connect(port).await;
                            let lot = i % LOTS;
                            let (mut ok, mut other, mut k) = (0u64, 0u64, 0u64);
                            while start.elapsed() < dur {
                                let kind = if k.is_multiple_of(2) {
                                    "ARRIVAL"
                                } else {
                                    "DEPARTURE"
                                };
                                let body =
                                    format!(r#"{{"lot_id":"bench-{lot}","event_type":"{kind}"}}"#);
                                let (status, _) = c
                                    .request("POST", "/v1/events", &body, "application/json")
                                    .await;
                                if status == 200 {
                                    ok += 1;
                                    k += 1;
                                } else {
                                    other += 1;
                                }
                            }
                            (ok, other)
                        })
                    })
                    .collect();
                let (mut ok, mut other) = (0, 0);
                for c in conns {
                    let (o, x) = c.await.unwrap();
                    ok += o;
                    other += x;
                }
                (ok, other)
            })
        })
        .collect();
    let secs = dur.as_secs_f64();
    let mut line = Vec::new();
    for (i, n) in nodes.into_iter().enumerate() {
        let (ok, other) = n.await.unwrap();
        line.push(format!(
            "node {}: {:.0} accepted/s, {:.0} other/s",
            i + 1,
            ok as f64 / secs,
            other as f64 / secs
        ));
    }
    println!(
        "  contended: 3 nodes x 16 connections on the same {LOTS} lots, single events: {}",
        line.join("; ")
    );
    for mut s in servers {
        s.stop();
    }
}

/// An event of a bench lot, with a fresh event id.
fn bench_event(
    lot: &LotId,
    lot_seq: u64,
    occurred_at: Timestamp,
    event: LotEvent,
    occupancy: u32,
    cap: Capacity,
) -> NewEvent {
    NewEvent {
        lot_id: lot.clone(),
        lot_seq,
        event_id: uuid::Uuid::now_v7(),
        client_event_id: false,
        occurred_at,
        event,
        occupancy,
        capacity: cap.get(),
    }
}

/// Append `events` of one lot after its `last` offset and wait for their offsets.
async fn acknowledged(log: &dyn EventLog, last: Option<u64>, events: &[NewEvent]) -> Vec<u64> {
    match log.append(Expect::Last(last), events).unwrap() {
        Appended::Acknowledging(ack) => ack.await.unwrap(),
        Appended::Ordered(first) => (first..first + events.len() as u64).collect(),
    }
}

/// Arrival/departure pairs spread over the lots: never full, never below zero.
fn batch_body(n: usize) -> String {
    let mut s = String::from("[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        let lot = (i / 2) % LOTS;
        let kind = if i % 2 == 0 { "ARRIVAL" } else { "DEPARTURE" };
        s.push_str(&format!(
            r#"{{"lot_id":"bench-{lot}","event_type":"{kind}","timestamp":"2026-11-27T09:00:00Z"}}"#
        ));
    }
    s.push(']');
    s
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(data: &Path, port: u16, db: Option<&str>, env: &[(&str, String)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_parkade"));
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.arg("serve")
            .env("PARKADE_DATA_DIR", data)
            .env("PARKADE_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        match db {
            Some(url) => cmd.env("PARKADE_DATABASE_URL", url),
            None => cmd.env_remove("PARKADE_DATABASE_URL"),
        };
        Server {
            child: cmd.spawn().expect("start parkade serve"),
            port,
        }
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) =
                tokio::time::timeout(Duration::from_secs(1), Conn::connect_once(self.port))
                    .await
                    .unwrap_or(Err(std::io::Error::other("timeout")))
            {
                if c.request("GET", "/healthz", "", "application/json").await.0 == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    port: u16,
}

impl Conn {
    async fn connect_once(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(1 << 16),
            port,
        })
    }

    async fn connect(port: u16) -> Conn {
        Conn::connect_once(port).await.expect("connect")
    }

    async fn request(&mut self, method: &str, path: &str, body: &str, ct: &str) -> (u16, String) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: {ct}\r\ncontent-length: {}\r\n\r\n",
            self.port,
            body.len()
        );
        let mut msg = Vec::with_capacity(head.len() + body.len());
        msg.extend_from_slice(head.as_bytes());
        msg.extend_from_slice(body.as_bytes());
        self.stream.write_all(&msg).await.expect("write");
        self.read_response().await
    }

    async fn read_response(&mut self) -> (u16, String) {
        self.buf.clear();
        let mut chunk = [0u8; 16384];
        let (head_end, len) = loop {
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..pos]).expect("ascii head");
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                break (pos + 4, len);
            }
        };
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let status: u16 = std::str::from_utf8(&self.buf[9..12])
            .unwrap()
            .parse()
            .unwrap();
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).into_owned();
        (status, body)
    }
}

async fn batch_run(
    port: u16,
    conns: usize,
    body: Arc<String>,
    per_request: usize,
    dur: Duration,
) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(port).await;
            let mut events = 0usize;
            while start.elapsed() < dur {
                let (status, reply) = c
                    .request("POST", "/v1/events", &body, "application/json")
                    .await;
                assert_eq!(status, 200, "{reply}");
                assert!(
                    reply.starts_with(&format!("{{\"accepted\":{per_request},")),
                    "not all accepted: {}",
                    &reply[..80.min(reply.len())]
                );
                events += per_request;
            }
            events
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn single_run(port: u16, conns: usize, dur: Duration) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(port).await;
            let lot = i % LOTS;
            let arrive = format!(r#"{{"lot_id":"bench-{lot}","event_type":"ARRIVAL"}}"#);
            let depart = format!(r#"{{"lot_id":"bench-{lot}","event_type":"DEPARTURE"}}"#);
            let mut lat = Vec::with_capacity(100_000);
            let mut k = 0u64;
            while start.elapsed() < dur {
                let body = if k.is_multiple_of(2) {
                    &arrive
                } else {
                    &depart
                };
                let t = Instant::now();
                let (status, reply) = c
                    .request("POST", "/v1/events", body, "application/json")
                    .await;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(status, 200, "{reply}");
                k += 1;
            }
            // Leave the lot as found.
            if k % 2 == 1 {
                c.request("POST", "/v1/events", &depart, "application/json")
                    .await;
            }
            lat
        }));
    }
    requests_per_sec(tasks, start).await
}

/// Requests per second since `start`, and the p50 and p99 of their latencies, from
/// tasks that each give their requests' latencies.
async fn requests_per_sec(
    tasks: Vec<tokio::task::JoinHandle<Vec<f64>>>,
    start: Instant,
) -> (f64, f64, f64) {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    let (p50, p99) = p50_p99(all);
    (rate, p50, p99)
}

/// The median and 99th percentile of latencies.
fn p50_p99(mut latencies: Vec<f64>) -> (f64, f64) {
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (pct(0.5), pct(0.99))
}

/// A throwaway database on the benchmark's PostgreSQL server.
struct BenchDb {
    admin: String,
    name: String,
    url: String,
}

impl BenchDb {
    async fn create(admin: &str) -> Result<BenchDb, String> {
        let name = format!("parkade_bench_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(admin)
            .await
            .map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .map_err(|e| e.to_string())?;
        pool.close().await;
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Ok(BenchDb {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn drop_db(self) {
        if let Ok(pool) = sqlx::PgPool::connect(&self.admin).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&pool)
            .await;
        }
    }
}

async fn upsert_runs(admin: &str, runs: usize, dur: Duration) -> Result<f64, String> {
    let db = BenchDb::create(admin).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(64)
        .connect(&db.url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("CREATE TABLE current_lot_occupancy (lot_id TEXT PRIMARY KEY, occupancy INTEGER NOT NULL, updated_at TIMESTAMPTZ NOT NULL)")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    let mut rates = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let lot = format!("bench-{}", i % LOTS);
                let mut n = 0u64;
                while start.elapsed() < dur {
                    let delta = if n.is_multiple_of(2) { 1 } else { -1 };
                    sqlx::query(
                        "INSERT INTO current_lot_occupancy (lot_id, occupancy, updated_at) VALUES ($1, GREATEST($2, 0), now()) \
                         ON CONFLICT (lot_id) DO UPDATE SET occupancy = GREATEST(current_lot_occupancy.occupancy + $2, 0), updated_at = now()",
                    )
                    .bind(&lot)
                    .bind(delta)
                    .execute(&pool)
                    .await
                    .expect("upsert");
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        rates.push(total as f64 / start.elapsed().as_secs_f64());
    }
    pool.close().await;
    db.drop_db().await;
    Ok(median(&mut rates))
}

/// Write `n` events over the bench lots straight through the log library.
async fn write_log(dir: &Path, n: u64) {
    let log = FileLog::open(dir, LogOptions::default()).unwrap();
    let lots: Vec<LotId> = (0..LOTS)
        .map(|i| LotId::parse(&format!("bench-{i}")).unwrap())
        .collect();
    let mut occ = [0u32; LOTS];
    let mut seq = [0u64; LOTS];
    let cap = Capacity::new(1_000_000).unwrap();
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(65_536);
    let t0 = 1_764_234_000_000_000i64;
    while written < n {
        batch.clear();
        while batch.len() < 65_536 && written + (batch.len() as u64) < n {
            let i = written + batch.len() as u64;
            let l = (i % LOTS as u64) as usize;
            let event = if seq[l] == 0 {
                LotEvent::LotRegistered {
                    name: format!("Bench lot {l}"),
                    capacity: cap,
                }
            } else if (i / LOTS as u64) % 2 == 1 {
                occ[l] += 1;
                LotEvent::VehicleArrived
            } else {
                occ[l] -= 1;
                LotEvent::VehicleDeparted
            };
            seq[l] += 1;
            let at = Timestamp::from_micros(t0 + i as i64 * 1000);
            batch.push(bench_event(&lots[l], seq[l], at, event, occ[l], cap));
        }
        let first = log.append_any(&batch).unwrap();
        written = first + batch.len() as u64;
    }
    log.wait_durable(n).await.unwrap();
    log.close();
}

async fn replay_runs(admin: &str, data: &PathBuf, events: u64, runs: usize) -> Result<f64, String> {
    let db = BenchDb::create(admin).await?;
    let mut rates = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_parkade"))
            .args(["replay", "--projection", "occupancy"])
            .env("PARKADE_DATA_DIR", data)
            .env("PARKADE_DATABASE_URL", &db.url)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let secs = started.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "replay failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("from {events} events")), "{text}");
        println!(
            "  replay run: {:.2} s whole process ({})",
            secs,
            text.trim()
        );
        rates.push(events as f64 / secs);
    }
    db.drop_db().await;
    Ok(median(&mut rates))
}

fn archive_runs(data: &Path, events: u64, runs: usize) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_parkade"))
            .args(["replay", "--projection", "archive"])
            .env("PARKADE_DATA_DIR", data)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .output()
            .expect("run parkade replay");
        let secs = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("from {events} events")),
            "{text}"
        );
        println!(
            "  archive replay run: {secs:.2} s whole process ({})",
            text.trim()
        );
        rates.push(events as f64 / secs);
    }
    median(&mut rates)
}
