//! Metrics in the Prometheus text format (`GET /metrics`), through the `metrics` facade
//! and its Prometheus exporter.
//!
//! The facade costs nothing until [`install`] sets the process's recorder (the server
//! does, before it opens the log); the command-line tools record into nothing. Gauges
//! that are a view of state kept elsewhere (projection checkpoints, subscribers, open
//! connections, the process's memory and files) are set when the page is rendered.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `parkade_events_total` | counter | `outcome` (accepted, duplicate, rejected, error), `reason` (the rejection's code) |
//! | `parkade_log_append_seconds` | histogram | wait of the oldest append of each group commit until durable |
//! | `parkade_log_sync_seconds` | histogram | write and `fdatasync` of each group commit |
//! | `parkade_log_commit_events` | histogram | events per group commit |
//! | `parkade_log_end_offset` | gauge | durable end of the log |
//! | `parkade_log_copy_lag_events` | gauge | JetStream: events of the stream not yet in this node's copy |
//! | `parkade_jetstream_consumers` | gauge | JetStream: consumers the server keeps on the stream (parkade's reads make none) |
//! | `parkade_projection_checkpoint` | gauge | `projection` |
//! | `parkade_projection_lag_events` | gauge | `projection`: log end minus checkpoint |
//! | `parkade_projection_failing` | gauge | `projection`: 1 while failing |
//! | `parkade_projection_failures_total` | counter | `projection` |
//! | `parkade_ws_subscribers` | gauge | |
//! | `parkade_ws_closes_total` | counter | `code` (1000, 1001, 1002, 1011, 4008, ...) |
//! | `parkade_http_connections` | gauge | open connections |
//! | `parkade_http_requests_total` | counter | `method`, `route` (the route's pattern), `status` |
//! | `parkade_http_request_duration_seconds` | histogram | `route` |
//! | `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds` | gauge | |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::projections::{ProjectionState, StatusBoard};

/// Seconds: 50 µs to 10 s.
const SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
/// Events per group commit: 1 to 100,000.
const EVENTS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 100_000.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Set the process's recorder (once; later calls return the same handle). `None` when
/// another recorder was set first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full("parkade_log_commit_events".into()), &EVENTS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "parkade_events_total",
        "Events by outcome and, for rejections, reason"
    );
    describe_histogram!(
        "parkade_log_append_seconds",
        Unit::Seconds,
        "Wait of the oldest append of each group commit until it was durable"
    );
    describe_histogram!(
        "parkade_log_sync_seconds",
        Unit::Seconds,
        "Write and fdatasync of each group commit"
    );
    describe_histogram!("parkade_log_commit_events", "Events per group commit");
    describe_gauge!("parkade_log_end_offset", "Durable end of the event log");
    describe_gauge!(
        "parkade_log_copy_lag_events",
        "Events of the JetStream stream not yet in this node's copy"
    );
    describe_gauge!(
        "parkade_jetstream_consumers",
        "Consumers the NATS server keeps on the stream"
    );
    describe_gauge!(
        "parkade_projection_checkpoint",
        "Next log offset a projection folds"
    );
    describe_gauge!(
        "parkade_projection_lag_events",
        "Durable events a projection has not folded yet"
    );
    describe_gauge!(
        "parkade_projection_failing",
        "1 while a projection is failing"
    );
    describe_counter!(
        "parkade_projection_failures_total",
        "Failures of a projection"
    );
    describe_gauge!("parkade_ws_subscribers", "Websocket subscribers");
    describe_counter!(
        "parkade_ws_closes_total",
        "Websocket close frames sent, by code"
    );
    describe_gauge!("parkade_http_connections", "Open HTTP connections");
    describe_gauge!(
        "parkade_request_body_bytes",
        Unit::Bytes,
        "Request body bytes held, of [limits] body_budget_bytes (bodies being read and the HTTP server's buffers for them)"
    );
    describe_counter!(
        "parkade_http_requests_total",
        "HTTP requests by route and status"
    );
    describe_histogram!(
        "parkade_http_request_duration_seconds",
        Unit::Seconds,
        "Time to the response head, by route"
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory"
    );
    describe_gauge!("process_open_fds", "Open file descriptors");
    describe_gauge!(
        "process_max_fds",
        "Most file descriptors the process may open"
    );
}

/// The state read when the page is rendered.
pub struct Views<'a> {
    pub board: &'a StatusBoard,
    pub log_end: u64,
    /// How this node's copy of a shared log stands (JetStream).
    pub copy: Option<crate::log::CopyState>,
    pub subscribers: usize,
    pub connections: usize,
    /// Request body bytes held from `[limits] body_budget_bytes`.
    pub body_bytes: usize,
}

/// The page: every recorded metric, with the views' gauges set just before.
pub fn render(handle: &PrometheusHandle, v: Views<'_>) -> String {
    metrics::gauge!("parkade_log_end_offset").set(v.log_end as f64);
    if let Some(c) = v.copy {
        metrics::gauge!("parkade_log_copy_lag_events").set(c.lag() as f64);
        metrics::gauge!("parkade_jetstream_consumers").set(c.consumers as f64);
    }
    for p in v.board.all() {
        let name = p.name.as_str();
        metrics::gauge!("parkade_projection_checkpoint", "projection" => name)
            .set(p.checkpoint as f64);
        metrics::gauge!("parkade_projection_lag_events", "projection" => name)
            .set(v.log_end.saturating_sub(p.checkpoint) as f64);
        let failing = matches!(p.state, ProjectionState::Failing);
        metrics::gauge!("parkade_projection_failing", "projection" => name).set(if failing {
            1.0
        } else {
            0.0
        });
        metrics::counter!("parkade_projection_failures_total", "projection" => name)
            .absolute(p.failures);
    }
    metrics::gauge!("parkade_ws_subscribers").set(v.subscribers as f64);
    metrics::gauge!("parkade_http_connections").set(v.connections as f64);
    metrics::gauge!("parkade_request_body_bytes").set(v.body_bytes as f64);
    let (rss, open, max) = process_figures();
    metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    metrics::gauge!("process_open_fds").set(open as f64);
    metrics::gauge!("process_max_fds").set(max as f64);
    handle.render()
}

/// Resident bytes, open and most file descriptors (Linux; zeros elsewhere).
fn process_figures() -> (u64, u64, u64) {
    let page = rustix::param::page_size() as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let max = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(0);
    (rss, open, max)
}

/// Count a websocket close frame sent with `code`.
pub fn ws_closed(code: u16) {
    metrics::counter!("parkade_ws_closes_total", "code" => code.to_string()).increment(1);
}

/// Count `n` events of one outcome (`reason` is the rejection's code, else empty).
pub fn events(outcome: &'static str, reason: &str, n: u64) {
    if n > 0 {
        metrics::counter!("parkade_events_total", "outcome" => outcome, "reason" => reason.to_owned())
            .increment(n);
    }
}
