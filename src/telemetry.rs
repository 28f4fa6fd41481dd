//! Structured logs through `tracing`, to stderr. `RUST_LOG` filters (default `info`).
//!
//! The HTTP server library reports each connection it drops with an error at ERROR:
//! a malformed request (a bad head, a broken chunked body), or a client gone in the
//! middle. Anyone on the internet can cause those, as fast as they like: one line each
//! would fill the disk and bury real errors. They are counted instead
//! (`parkade_http_connection_errors_total`) and summed up in one WARN line at most
//! every [`MALFORMED_EVERY`].

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// At most one line about connections dropped with an error this often.
pub const MALFORMED_EVERY: Duration = Duration::from_secs(10);

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,parkade::http=warn"));
    // Colours only for a person at a terminal, not in files or journals.
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let not_malformed = filter_fn(|meta| !is_malformed(meta));
    let malformed = Malformed::default();
    let seen = malformed.seen.clone();
    let registry = tracing_subscriber::registry().with(filter).with(malformed);
    let installed = match format {
        LogFormat::Text => registry.with(lines.with_filter(not_malformed)).try_init(),
        LogFormat::Json => registry
            .with(lines.json().with_filter(not_malformed))
            .try_init(),
    };
    if installed.is_ok() {
        // From a thread of its own: an event written while another is being handled
        // would be dropped (the dispatcher does not enter itself).
        let _ = std::thread::Builder::new()
            .name("parkade-log-summary".into())
            .spawn(move || loop {
                std::thread::sleep(MALFORMED_EVERY);
                sum_up(&seen);
            });
    }
}

/// Write the summary line of the connections dropped since the last one, if any.
fn sum_up(seen: &Mutex<(u64, String)>) {
    let (count, last) = {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut seen.0), std::mem::take(&mut seen.1))
    };
    if count > 0 {
        tracing::warn!(
            target: "parkade::http",
            connections = count,
            last = %last,
            "dropped connections with an error, most often a malformed request, in the last {} s (parkade_http_connection_errors_total counts every one)",
            MALFORMED_EVERY.as_secs()
        );
    }
}

/// The HTTP server library's report of a connection dropped with an error.
fn is_malformed(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("actix_http::h1") && *meta.level() <= Level::WARN
}

/// Counts connections dropped with an error, for their summary line (see the module
/// docs).
#[derive(Default)]
struct Malformed {
    /// Since the last summary: how many, and the last one's message.
    seen: Arc<Mutex<(u64, String)>>,
}

impl<S: Subscriber> Layer<S> for Malformed {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if !is_malformed(event.metadata()) {
            return;
        }
        metrics::counter!("parkade_http_connection_errors_total").increment(1);
        let mut message = String::new();
        event.record(&mut MessageOf(&mut message));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.0 += 1;
        seen.1 = message;
    }
}

/// An event's message, with its other fields after it.
struct MessageOf<'a>(&'a mut String);

impl Visit for MessageOf<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let out = &mut *self.0;
        if !out.is_empty() {
            out.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(out, "{value:?}");
        } else {
            let _ = write!(out, "{}={value:?}", field.name());
        }
        // One client's bytes may be quoted in it: keep the line short.
        if out.len() > 200 {
            let mut cut = 200;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
    }
}
