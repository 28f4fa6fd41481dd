//! parkade: the one source of truth for parking lot occupancy.
//!
//! parkade is event-sourced. Gates and sensors send ARRIVAL/DEPARTURE events over HTTP;
//! each lot is an actor that decides whether the event is allowed, appends it to an
//! append-only log, and acknowledges it only once the log has synced it to disk.
//! Everything else (the PostgreSQL read model, and later the Parquet archive, features
//! and forecasts) is a projection of that log and can be rebuilt from offset zero.
//!
//! # Module map
//!
//! Data flows one way: `api`/`import` → `actors` → `log` → `projections` → `forecast`. No module reaches back
//! up the chain: projections read the log and never talk to actors; actors never know
//! about HTTP.
//!
//! Modules are layered, and a module names only modules of its own layer or below (the
//! test suite's `architecture` check reads the source for it): `domain`, `backoff`; `datasets`,
//! `log`; `actors`, `ingest`, `projections`; `forecast`, `live`, `metrics`; `config`;
//! `api`, `import`, `simulate`; `systemd`, `telemetry`; `app`; `cli`.
//!
//! | module | what it holds |
//! |---|---|
//! | [`domain`] | Pure, synchronous lot rules: newtypes parsed at the edge ([`LotId`], [`Capacity`], [`LotName`](domain::LotName)), the one event-time rule every path keeps, the events, `decide` and `apply`, and the values passed between the edge, the actors and the live feed ([`Request`](domain::Request), [`Outcome`], [`LotView`](domain::LotView)). No I/O. |
//! | [`backoff`] | The one retry policy (waits doubling up to a ceiling, optionally jittered) and `retry`, for the projections, the JetStream client, a lot's conflicts and the read side's connection alike. |
//! | [`log`] | The event log: the [`EventLog`] trait and the embedded segment-file backend (`file_log`: `recovery` decides at open, as a pure function of each segment's scan, what may be repaired, cutting only a torn tail and refusing other damage; `writer` is the group-commit thread; `cursor` reads), the operator's `repair-log` cut, reads and subscriptions from any offset, `log::scan` for reading a range in batches, `MemoryLog`, a log in memory for unit tests, `log::jetstream`, the NATS JetStream backend (a subject per lot, appends with the lot's expected last sequence as atomic batches, the appends lots have waiting at one moment combined into one, followed into a local copy that readers read), and `log::copy`, `parkade log copy` between the two. Every backend checks an append's expected position ([`log::Expect`]). |
//! | `actors` | One actix actor per lot, reached through a typed [`LotHandle`]; the [`Lots`] registry that rebuilds every lot from the log at start and, on a shared log, follows it for what other processes appended (a lot's own events are not handed back to it). An actor that loses a conflict reads what it missed and decides again. On JetStream the lots' first thread is also the log client's. |
//! | [`projections`] | Read models folded from the log: the PostgreSQL occupancy table with its checkpoint, the 15-minute features (PostgreSQL and the lake, or in memory on the embedded defaults: `features::memory`), the Parquet archive (local folder or S3), one `Runner` that keeps occupancy and the features caught up through the `Projection` trait (and `catch_up` for offline commands), one `db::Rebuild` path for rebuilds, each projection under one supervision (an error or a panic is reported and restarted with backoff), leases so that of several nodes on one database one runs each projection (`lease`: the lakes' writes also bounded in time), `replay` and `verify`. The read side lives with the table's owner: `features::query` (history buckets, means, training readings), `occupancy::capacities`, each a named `sqlx::FromRow` row. |
//! | `forecast` | The forecasting model (weekly profile + deviation, fitted per horizon) as pure computation over readings bounded by an issue time; `parkade backtest`; training from the features, the model artifact and the predictor, whose runs go to `lot_forecasts` (read back through `forecast::query`) or, on the embedded defaults, stay in memory beside the features it reads (`forecast::service::ForecastStore`). Reads projections, never the actors. |
//! | [`live`] | The live fan-out: follows the log, encodes each change once as a websocket frame and puts it in every subscriber's outbox (the connection's response body), with snapshots and catch-ups consistent with the stream; closes subscribers that fall behind. |
//! | [`ingest`] | Edge standardisation of incoming events (JSON, NDJSON, CSV rows): lot ids, event types, timestamps, event ids, each problem named by field. |
//! | `import` | `parkade import`: historical CSVs (event rows, Birmingham-style occupancy counts) sent through the lot actors, or to a running server. |
//! | `datasets` | Readers of published datasets' layouts (`datasets::birmingham`), one for `import` and `backtest` alike. |
//! | [`api`] | The actix-web HTTP API under `/v1`: `api::wire`, the request and reply types shared by the server, its OpenAPI document and every client (`import --url`, the simulator, the tests); access control (bearer tokens with roles), limits (connections, subscribers, the ingest rate per token), edge standardisation of ingest JSON/NDJSON, errors mapped to status codes, health and readiness, the dashboard. |
//! | `simulate` | `parkade simulate`/`demo`: campus traffic (SFU Burnaby preset; `simulate::term`, the campus's year of classes, exams, breaks and holidays) or a fixed load sent to a server over HTTP in the wire types, with a latency summary. |
//! | [`config`] | Typed configuration: defaults, a TOML file, `PARKADE_*` environment variables and flags. |
//! | [`app`] | Startup, building then running: `start` opens the log and rebuilds the lots, `read_models` starts the read side under supervision, `http` the server and its housekeeping; one shutdown (a cancellation token every task and thread watches, and a tracker of the server thread's tasks) stops them all. |
//! | [`cli`] | The command line of the single `parkade` binary, a file per command (`serve`, `import`, `replay`, `verify`, `repair-log`, `log copy`, `token`, `train`, `backtest`, `holdout`, `simulate`, `demo`, `healthcheck`). |
//! | `telemetry` | `tracing` subscriber set-up. |
//! | [`systemd`] | The service manager's notify protocol (the `sd-notify` crate): ready, stopping, and a watchdog pinged only while the log accepts writes. |
//! | `metrics` | The Prometheus page (`GET /metrics`): counters and histograms recorded where things happen (log, live, API), gauges read from the status board at scrape time. |
//!
//! The binary (`src/main.rs`) only parses the command line and calls [`cli::main`].

pub(crate) mod actors;
pub mod api;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod config;
pub(crate) mod datasets;
pub mod domain;
pub(crate) mod forecast;
pub(crate) mod import;
pub mod ingest;
pub mod live;
pub mod log;
pub(crate) mod metrics;
pub mod projections;
pub(crate) mod simulate;
pub mod systemd;
pub(crate) mod telemetry;

pub use actors::{LotError, LotHandle, LotOptions, Lots};
pub use config::Config;
pub use domain::{Capacity, LotId, Outcome};
pub use log::EventLog;
