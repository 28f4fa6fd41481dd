//! Import benchmark: `cargo bench --bench import`.
//!
//! Writes an event CSV (`lot_id,event_type,timestamp`, arrival/departure pairs over 30
//! lots, `PARKADE_BENCH_IMPORT_ROWS` rows, default 1,000,000), registers the lots with
//! a small count file, then times `parkade import` of the event file as a whole
//! process on a fresh data directory, several runs (`PARKADE_BENCH_RUNS`, default 3),
//! and prints the median rows/s. No PostgreSQL is involved.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

mod common;
use common::*;

const LOTS: usize = 30;

fn main() {
    if !is_bench_run() {
        return;
    }
    let rows: u64 = env_or("PARKADE_BENCH_IMPORT_ROWS", 1_000_000);
    let runs: usize = env_or("PARKADE_BENCH_RUNS", 3);
    let work = tempfile::Builder::new()
        .prefix("parkade-bench-import-")
        .tempdir()
        .unwrap();
    let lots_csv = work.path().join("lots.csv");
    let events_csv = work.path().join("events.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&lots_csv).unwrap());
    writeln!(f, "SystemCodeNumber,Capacity,Occupancy,LastUpdated").unwrap();
    for l in 0..LOTS {
        writeln!(f, "bench-{l},100000,0,2016-10-01 00:00:00").unwrap();
    }
    drop(f);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&events_csv).unwrap());
    writeln!(f, "lot_id,event_type,timestamp").unwrap();
    let t0 = 1_475_539_200_000i64; // 2016-10-04T00:00:00Z in ms
    for i in 0..rows {
        let lot = (i / 2) as usize % LOTS;
        let kind = if i % 2 == 0 { "ARRIVAL" } else { "DEPARTURE" };
        writeln!(f, "bench-{lot},{kind},{}", t0 + i as i64 * 10).unwrap();
    }
    drop(f);
    let size = std::fs::metadata(&events_csv).unwrap().len();
    println!(
        "parkade import benchmark: {rows} event rows ({:.1} MB), {runs} runs, whole process",
        size as f64 / 1e6
    );

    let mut rates = Vec::new();
    for run in 0..runs {
        let data = work.path().join(format!("data-{run}"));
        let parkade = |file: &std::path::Path| {
            let started = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_parkade"))
                .arg("import")
                .arg(file)
                .env("PARKADE_DATA_DIR", &data)
                .env_remove("PARKADE_DATABASE_URL")
                .env("RUST_LOG", "warn")
                .output()
                .expect("run parkade import");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            (started.elapsed().as_secs_f64(), text)
        };
        parkade(&lots_csv);
        let (secs, text) = parkade(&events_csv);
        assert!(
            text.contains(&format!("{rows} accepted")),
            "not every row was accepted: {text}"
        );
        println!(
            "  run {}: {:.2} s, {:.0} rows/s",
            run + 1,
            secs,
            rows as f64 / secs
        );
        rates.push(rows as f64 / secs);
    }
    println!(
        "event CSV import: {:.0} rows/s (median of {runs}, whole process)",
        median(&mut rates)
    );
}
