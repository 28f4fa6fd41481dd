//! What the benchmarks share: their settings from the environment, the guard that
//! keeps `cargo test --all-targets` from running them, a free port, medians, the
//! open-files limit and a process's peak memory.
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

/// The bench holds a socket per client: raise its open-files limit to `want`.
pub fn raise_open_files(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= want,
        "{want} open files are needed and the hard limit is {hard}: raise it (ulimit -Hn) or take fewer clients"
    );
    if lim.current.unwrap_or(u64::MAX) < want {
        lim.current = Some(want);
        setrlimit(Resource::Nofile, lim).expect("raise the open-files limit");
    }
}

/// The peak resident memory of process `pid` (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
