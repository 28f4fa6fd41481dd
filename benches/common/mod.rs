//! What the benchmarks share: their settings from the environment, the guard that
//! keeps `cargo test --all-targets` from running them, a free port, and medians.
#![allow(dead_code)]

/// A setting from the environment, or its default.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether this is a benchmark run. `cargo test --all-targets` and nextest run bench
/// targets without `--bench`: there is nothing to test in them, so they leave.
pub fn is_bench_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The median (the upper one of an even count); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Figures as `a, b, c`, rounded.
pub fn fmt_runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
