//! The features in memory (the embedded defaults' history store) for a year of a
//! campus: `cargo bench --bench features`.
//!
//! Writes a year of events of `PARKADE_BENCH_LOTS` lots (default 7, the SFU demo's) at
//! `PARKADE_BENCH_EVENTS_PER_DAY` events a lot a day (default 1,000: arrivals and
//! departures from 07:00 to 19:00) into a real event log on disk, then times what a
//! start does: fold the whole log into the in-memory features, `PARKADE_BENCH_RUNS`
//! times (default 3), and prints the median time, the rows kept and the growth of the
//! process's resident memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parkade::domain::{Capacity, LotEvent, LotId, NewEvent, Timestamp};
use parkade::log::{EventLog, FileLog, LogOptions};
use parkade::projections::features::memory::MemoryFeatures;
use parkade::projections::features::query::Width;
use parkade::projections::StatusBoard;

mod common;
use common::*;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A year of events for `lots` lots, oldest first.
fn year(lots: usize, per_day: u64) -> Vec<NewEvent> {
    let day_micros = 86_400 * 1_000_000i64;
    let start = Timestamp::now().micros() / day_micros * day_micros - 365 * day_micros;
    let mut out = Vec::new();
    let mut seq = vec![0u64; lots];
    let mut occupancy = vec![0u32; lots];
    let event = |lot: usize, at: i64, e: LotEvent, occ: u32, seq: &mut Vec<u64>| {
        seq[lot] += 1;
        NewEvent {
            lot_id: LotId::parse(&format!("lot-{lot}")).unwrap(),
            lot_seq: seq[lot],
            event_id: uuid::Uuid::now_v7(),
            client_event_id: false,
            occurred_at: Timestamp::from_micros(at),
            event: e,
            occupancy: occ,
            capacity: 1_000,
        }
    };
    for lot in 0..lots {
        let registered = LotEvent::LotRegistered {
            name: format!("Lot {lot}"),
            capacity: Capacity::new(1_000).unwrap(),
        };
        out.push(event(lot, start, registered, 0, &mut seq));
    }
    // From 07:00 to 19:00, the day's events evenly: arrivals in the morning, departures
    // in the afternoon.
    let step = 12 * 3_600 * 1_000_000 / per_day as i64;
    for day in 0..365 {
        for i in 0..per_day {
            let at = start + day * day_micros + 7 * 3_600 * 1_000_000 + i as i64 * step;
            for (lot, occ) in occupancy.iter_mut().enumerate() {
                let e = if i < per_day / 2 {
                    *occ += 1;
                    LotEvent::VehicleArrived
                } else {
                    *occ -= 1;
                    LotEvent::VehicleDeparted
                };
                out.push(event(lot, at, e, *occ, &mut seq));
            }
        }
    }
    out
}

fn main() {
    if !is_bench_run() {
        return;
    }
    let lots: usize = env_or("PARKADE_BENCH_LOTS", 7);
    let per_day: u64 = env_or("PARKADE_BENCH_EVENTS_PER_DAY", 1_000);
    let runs: usize = env_or("PARKADE_BENCH_RUNS", 3);
    let dir = tempfile::Builder::new()
        .prefix("parkade-bench-features-")
        .tempdir()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = Arc::new(FileLog::open(dir.path(), LogOptions::default()).unwrap());
    let events = year(lots, per_day);
    let end = events.len() as u64;
    for chunk in events.chunks(10_000) {
        let first = log.append_any(chunk).unwrap();
        rt.block_on(log.wait_durable(first + chunk.len() as u64))
            .unwrap();
    }
    drop(events);
    println!("a year of {lots} lots at {per_day} events a lot a day: {end} events in the log");
    let log: Arc<dyn EventLog> = log;
    let mut seconds = Vec::new();
    for run in 0..runs {
        let before = rss();
        let features = MemoryFeatures::new(400);
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let started = Instant::now();
        let follower = rt.spawn(features.clone().follow(
            log.clone(),
            StatusBoard::default(),
            10_000,
            6 * 3_600,
            stopped,
        ));
        while features.position() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed().as_secs_f64();
        let grown = rss().saturating_sub(before);
        let lot = LotId::parse("lot-0").unwrap();
        let (from, to) = (
            chrono::Utc::now() - chrono::Duration::days(400),
            chrono::Utc::now(),
        );
        let rows: i64 = features
            .buckets(&lot, from, to, Width::Quarter, chrono_tz::UTC)
            .len() as i64;
        println!(
            "run {}: folded in {took:.2} s ({:.0} events/s); {rows} rows of lot-0 kept (of {lots} lots); resident memory grew {:.1} MiB",
            run + 1,
            end as f64 / took,
            grown as f64 / (1 << 20) as f64
        );
        seconds.push(took);
        stop.cancel();
        rt.block_on(follower).unwrap().unwrap();
    }
    println!(
        "median: the features of a year folded in {:.2} s at start",
        median(&mut seconds)
    );
}
