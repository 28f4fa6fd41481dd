//! Typed configuration.
//!
//! Precedence, lowest first: built-in defaults, a TOML file (`--config FILE` or
//! `PARKADE_CONFIG`), `PARKADE_*` environment variables, command-line flags.
//! Every field and its default is listed in `deploy/parkade.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration of a parkade process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on. Default `127.0.0.1:8080`.
    pub bind: SocketAddr,
    /// Where the event log (and other local state) lives. Default `./parkade-data`.
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the read model; `None` runs without the PostgreSQL projection.
    pub database_url: Option<String>,
    /// HTTP worker threads. Default: the number of CPUs.
    pub http_workers: usize,
    /// Log output: `text` (default) or `json`.
    pub log_format: LogFormat,
    pub limits: Limits,
    pub lots: LotsConfig,
    pub log: LogConfig,
    pub projections: ProjectionsConfig,
    pub archive: ArchiveConfig,
    pub forecast: ForecastConfig,
    pub live: LiveConfig,
    pub auth: AuthConfig,
    /// The file this was read from (not a key of it): said at start.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// Where a configuration file is looked for when none is given (`--config`,
/// `PARKADE_CONFIG`), in order.
pub const CONFIG_FILES: [&str; 2] = ["parkade.toml", "/etc/parkade/parkade.toml"];

/// The first of [`CONFIG_FILES`] that exists.
pub fn default_config_file() -> Option<PathBuf> {
    CONFIG_FILES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Access control (see `api::auth` for roles and the tokens file).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// TOML file of token hashes (`parkade token new` prints an entry). Default: none,
    /// unless `PARKADE_TOKENS` holds the file's text; without tokens every route is open.
    pub tokens_file: Option<PathBuf>,
    /// Reads (lots, history, forecasts, websocket, dashboard) without a token. Default
    /// true; false needs a `read` (or higher) token for them.
    pub reads_open: bool,
    /// Serve with no tokens on an address other than loopback: every write open to
    /// whoever reaches the port. Default false (`serve` refuses to start so).
    pub allow_open: bool,
    /// Names (and addresses) clients may use in the `Host` header; others get 421, so a
    /// web page cannot reach the service through DNS rebinding. Default: `localhost`,
    /// `127.0.0.1` and `[::1]` when listening on loopback; on another address, the
    /// `Host` header is not checked until names are given here.
    pub allowed_hosts: Vec<String>,
    /// Web origins (`https://maps.campus.example`) whose pages may read the API (GET:
    /// lots, history, forecasts) from a browser; writes are never allowed cross-origin.
    /// Default: none (no CORS headers).
    pub cors_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens_file: None,
            reads_open: true,
            allow_open: false,
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
        }
    }
}

/// Settings of the live fan-out (websockets).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// Changes a websocket subscriber may fall behind before it is closed (code 4008).
    /// Default 4,096.
    pub buffer_messages: usize,
    /// Bytes a websocket connection may leave untaken (changes, snapshots, pongs) before
    /// it is closed (code 4008). Default 8 MiB.
    pub outbox_bytes: usize,
    /// Bytes all websocket connections together may leave untaken; past it, one
    /// holding more than its share (this over the connections open) is closed with
    /// 4008, so that many connections that never read (from one address or many)
    /// cannot hold `outbox_bytes` each. What all hold stays under twice this.
    /// 0 (the default): a sixteenth of the machine's memory, between 64 MiB and 1 GiB.
    pub outbox_budget_bytes: usize,
    /// Most websocket subscribers at once; one more is answered 503
    /// `too_many_subscribers`. Default 16,384 (as many as connections, by default).
    pub max_subscribers: usize,
    /// How many events back `?from_offset=` may resume from (400 above: start from a
    /// snapshot instead). Default 1,000,000.
    pub max_replay_events: u64,
    /// Most `?from_offset=` catch-ups reading the log at once; one more is answered
    /// 503 `too_many_catch_ups` with `Retry-After`, so that many subscribers resuming
    /// from far back cannot take the machine from everyone else (each holds at most
    /// `outbox_bytes` while it reads). Default 8.
    pub max_catch_ups: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            buffer_messages: 4_096,
            outbox_bytes: crate::live::MAX_QUEUED_BYTES,
            outbox_budget_bytes: 0,
            max_subscribers: 16_384,
            max_replay_events: 1_000_000,
            max_catch_ups: 8,
        }
    }
}

/// Settings of the forecasts (`parkade train`, the in-service predictor).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForecastConfig {
    /// Run the predictor (on PostgreSQL, or in memory on the embedded defaults).
    /// Default true.
    pub enabled: bool,
    /// Seconds between predictor runs. Default 900 (15 minutes).
    pub interval_secs: u64,
    /// How far ahead each run forecasts, in hours. Default 24.
    pub horizon_hours: u32,
    /// Zone of the lots' local time (the weekly profile's weekday and time of day, and
    /// the hour and day buckets of the history endpoint).
    /// Default "UTC".
    pub timezone: String,
    /// Forecast runs kept in `lot_forecasts`, in hours. Default 48.
    pub keep_hours: u32,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            enabled: true,
            interval_secs: 900,
            horizon_hours: 24,
            timezone: "UTC".into(),
            keep_hours: 48,
        }
    }
}

impl ForecastConfig {
    /// The configured zone, or a clear error naming the key.
    pub fn tz(&self) -> Result<chrono_tz::Tz, String> {
        self.timezone
            .parse()
            .map_err(|e| format!("[forecast] timezone {:?}: {e}", self.timezone))
    }
}

pub use crate::projections::archive::ArchiveConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Input limits of the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes (413 above). Default 4 MiB.
    pub max_body_bytes: usize,
    /// Most events in one `POST /v1/events` request (413 above). Default 10,000.
    pub max_batch_events: usize,
    /// How far ahead of the server clock an event's timestamp may be, in seconds
    /// (clock skew of gates and counters). Default 900. Every path that creates events
    /// keeps this bound and the floor of 2000-01-01T00:00:00Z
    /// ([`check_event_time`](crate::domain::check_event_time)).
    pub max_future_secs: i64,
    /// Longest wait for a whole request body, in seconds (408 after it), so a client
    /// trickling a body cannot hold a connection and its worker for ever. Default 30.
    pub body_timeout_secs: u64,
    /// Request body bytes all requests together may hold at once while they arrive and
    /// are handled; a body past it gets 503 `busy` with `Retry-After`, so many slow or
    /// stalled uploads (from one address or many) cannot take the machine's memory.
    /// 0 (the default): a sixteenth of the machine's memory, between 64 MiB and 1 GiB.
    pub body_budget_bytes: usize,
    /// Most lots the service holds; a registration beyond it is refused (409
    /// `lot_limit`), since every lot costs an actor and a place in every snapshot.
    /// Default 10,000.
    pub max_lots: usize,
    /// Most open connections in all; one past it is answered 503 `too_many_connections`
    /// and closed. The service raises its open-files limit to fit, and refuses to start
    /// when a value set here cannot fit. 0 (the default): [`DEFAULT_MAX_CONNECTIONS`],
    /// or as many as the hard open-files limit fits when that is lower (with a warning).
    pub max_connections: usize,
    /// Most open connections from one client address; one past it is answered 429
    /// `too_many_connections` and closed. 0 (the default): three quarters of
    /// `max_connections`, so that a campus behind one NAT address fits (10,000 phones on
    /// the live feed) and one address still leaves a quarter to everyone else.
    pub max_connections_per_address: usize,
    /// Addresses of reverse proxies in front of parkade: their connections count in
    /// `max_connections` but not per address (every client of a proxy comes from its
    /// address; per-client caps are then the proxy's to keep). parkade never reads
    /// `X-Forwarded-For` or `Forwarded`: nothing in it is decided by a client's address
    /// past the connection. Default none.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Events of one `POST /v1/events` request may span at most this many seconds of
    /// event time (413 `span_too_large` above), so one request cannot scatter events
    /// over years of archive partitions. Default 2,678,400 (31 days).
    pub max_request_span_secs: i64,
    /// Most points (buckets) one history or forecast request may ask for (400 above).
    /// Default 10,000.
    pub max_history_points: i64,
    /// Events per second one `ingest` token may post to `/v1/events` and `/count`
    /// (429 with `Retry-After` above); a request may use up to a second's worth, or one
    /// full batch, at once. Admin tokens (imports) are not limited. 0 turns it off.
    /// Default 5,000.
    pub ingest_events_per_sec: u32,
}

/// Settings of the lot actors.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LotsConfig {
    /// Client event ids remembered per lot for idempotent retries. Default 50,000.
    pub dedupe_window: usize,
    /// Threads the lot actors run on. Default 1.
    pub threads: usize,
    /// A lot with no event for this long (by event time) is marked stale in the API,
    /// the websocket and the dashboard. Default 1,800 (30 minutes).
    pub stale_after_secs: u64,
}

/// Settings of the event log.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Where the log lives: `embedded` (segment files in the data directory, one
    /// process) or `jetstream` (a NATS JetStream stream several processes share).
    /// Default embedded.
    pub backend: LogBackend,
    /// Segment size before a new segment file is started, in bytes (the embedded log,
    /// and the local copy of a JetStream stream). Default 256 MiB.
    pub segment_bytes: u64,
    /// NATS server URLs, comma-separated (JetStream). Default nats://127.0.0.1:4222.
    pub nats_url: String,
    /// The JetStream stream's name. Default PARKADE.
    pub stream: String,
    /// Copies of every event the stream keeps: 1, or 3 (or 5) in a cluster so a node
    /// may be lost. Used when the stream is created; an existing stream must match.
    /// Default 1.
    pub replicas: usize,
    /// A NATS credentials file (`.creds`), when the server asks for one.
    pub nats_credentials: Option<PathBuf>,
    /// JetStream: past this many events of the stream not yet in this node's copy, the
    /// node says it is not ready (`/readyz`). Default 5,000.
    pub max_copy_lag: u64,
}

/// The event log's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    #[default]
    Embedded,
    Jetstream,
}

/// Settings of the projections.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectionsConfig {
    /// Most events folded into one PostgreSQL transaction. Default 10,000.
    pub batch_events: usize,
    /// Longest wait between retries of a failing projection, in seconds. Default 30.
    pub max_backoff_secs: u64,
    /// Features: an event more than this many seconds older than its lot's newest event
    /// is not folded into `lot_features_15m` (counted as `too_late`). Default 21,600
    /// (6 hours).
    pub features_lateness_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("parkade-data"),
            database_url: None,
            http_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            log_format: LogFormat::Text,
            limits: Limits::default(),
            lots: LotsConfig::default(),
            log: LogConfig::default(),
            projections: ProjectionsConfig::default(),
            archive: ArchiveConfig::default(),
            forecast: ForecastConfig::default(),
            live: LiveConfig::default(),
            auth: AuthConfig::default(),
            file: None,
        }
    }
}

/// Open connections when `[limits] max_connections` is 0 and the open-files limit fits
/// them: a campus's phones on the live feed at 8 am, and room beside them.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

pub use crate::domain::DEFAULT_MAX_FUTURE_SECS;

/// `set`, or when it is 0 a sixteenth of this machine's memory, between 64 MiB and 1 GiB.
fn or_memory_share(set: usize) -> usize {
    if set > 0 {
        return set;
    }
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map_or(1 << 30, |kib| kib.saturating_mul(1024));
    (total / 16).clamp(64 << 20, 1 << 30)
}

impl Limits {
    /// [`Limits::max_connections_per_address`] when the server holds `max_connections`.
    pub fn per_address(&self, max_connections: usize) -> usize {
        match self.max_connections_per_address {
            0 => (max_connections * 3 / 4).max(1),
            n => n,
        }
    }

    /// [`Limits::body_budget_bytes`], with 0 sized for this machine's memory.
    pub fn body_budget(&self) -> usize {
        or_memory_share(self.body_budget_bytes)
    }
}

impl LiveConfig {
    /// [`LiveConfig::outbox_budget_bytes`], with 0 sized for this machine's memory.
    pub fn outbox_budget(&self) -> usize {
        or_memory_share(self.outbox_budget_bytes)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_batch_events: 10_000,
            max_future_secs: DEFAULT_MAX_FUTURE_SECS,
            body_timeout_secs: 30,
            body_budget_bytes: 0,
            max_lots: 10_000,
            max_connections: 0,
            max_connections_per_address: 0,
            trusted_proxies: Vec::new(),
            max_request_span_secs: crate::domain::DEFAULT_MAX_REQUEST_SPAN_SECS,
            max_history_points: 10_000,
            ingest_events_per_sec: 5_000,
        }
    }
}

impl Default for LotsConfig {
    fn default() -> Self {
        LotsConfig {
            dedupe_window: 50_000,
            stale_after_secs: 1_800,
            threads: 1,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            backend: LogBackend::Embedded,
            segment_bytes: 256 << 20,
            nats_url: "nats://127.0.0.1:4222".into(),
            stream: "PARKADE".into(),
            replicas: 1,
            nats_credentials: None,
            max_copy_lag: crate::log::jetstream::DEFAULT_MAX_COPY_LAG,
        }
    }
}

impl LogConfig {
    /// The JetStream connection these settings name.
    pub fn jetstream(&self) -> crate::log::jetstream::JetStreamOptions {
        crate::log::jetstream::JetStreamOptions {
            url: self.nats_url.clone(),
            stream: self.stream.clone(),
            replicas: self.replicas,
            credentials: self.nats_credentials.clone(),
            max_copy_lag: self.max_copy_lag,
        }
    }
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        ProjectionsConfig {
            batch_events: 10_000,
            max_backoff_secs: 30,
            features_lateness_secs: 6 * 3600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A value out of its range, named by its key (`[section] key`).
    #[error("config {key} = {value}: {rule}")]
    Invalid {
        key: &'static str,
        value: String,
        rule: String,
    },
}

impl Config {
    /// Say at start which configuration file was read, or that none was.
    pub fn log_which_file(&self) {
        match &self.file {
            Some(f) => tracing::info!(file = %f.display(), "configuration read"),
            None => tracing::info!(
                "no configuration file (none given, none at ./parkade.toml or /etc/parkade/parkade.toml): defaults and PARKADE_* variables"
            ),
        }
    }

    /// Defaults overlaid with a TOML file, when one is given.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = file else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.file = Some(path.to_path_buf());
        config.validate()?;
        Ok(config)
    }

    /// Refuse values that would not work, naming the key, instead of bending them later
    /// (a 0 taken for 1, an unknown zone taken for another).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value, min) in self.minimums() {
            if value < min {
                return Err(ConfigError::Invalid {
                    key,
                    value: value.to_string(),
                    rule: format!("must be at least {min}"),
                });
            }
        }
        self.forecast.tz().map_err(|rule| ConfigError::Invalid {
            key: "[forecast] timezone",
            value: format!("{:?}", self.forecast.timezone),
            rule,
        })?;
        let stream = &self.log.stream;
        let fine = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if stream.is_empty() || stream.len() > 64 || !stream.chars().all(fine) {
            return Err(ConfigError::Invalid {
                key: "[log] stream",
                value: format!("{stream:?}"),
                rule: "must be 1 to 64 letters, digits, '_' or '-' (it names the stream and begins its subjects)".into(),
            });
        }
        if !(1..=5).contains(&self.log.replicas) {
            return Err(ConfigError::Invalid {
                key: "[log] replicas",
                value: self.log.replicas.to_string(),
                rule: "must be 1 to 5 (JetStream's limit)".into(),
            });
        }
        if self.log.nats_url.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "[log] nats_url",
                value: String::new(),
                rule: "must name at least one server".into(),
            });
        }
        Ok(())
    }

    /// Every numeric setting with a lower bound: (key, value, least value).
    fn minimums(&self) -> Vec<(&'static str, i128, i128)> {
        let l = &self.limits;
        let n = |v: usize| v as i128;
        vec![
            ("http_workers", n(self.http_workers), 1),
            ("[limits] max_body_bytes", n(l.max_body_bytes), 1024),
            ("[limits] max_batch_events", n(l.max_batch_events), 1),
            ("[limits] body_timeout_secs", l.body_timeout_secs.into(), 1),
            ("[limits] max_lots", n(l.max_lots), 1),
            (
                "[limits] max_request_span_secs",
                l.max_request_span_secs.into(),
                1,
            ),
            (
                "[limits] max_history_points",
                l.max_history_points.into(),
                1,
            ),
            ("[limits] max_future_secs", l.max_future_secs.into(), 0),
            ("[lots] dedupe_window", n(self.lots.dedupe_window), 1),
            (
                "[lots] stale_after_secs",
                self.lots.stale_after_secs.into(),
                1,
            ),
            ("[lots] threads", n(self.lots.threads), 1),
            ("[live] max_catch_ups", n(self.live.max_catch_ups), 1),
            (
                "[log] segment_bytes",
                self.log.segment_bytes.into(),
                1 << 20,
            ),
            (
                "[projections] batch_events",
                n(self.projections.batch_events),
                1,
            ),
            (
                "[projections] max_backoff_secs",
                self.projections.max_backoff_secs.into(),
                1,
            ),
            ("[archive] roll_events", n(self.archive.roll_events), 1),
            ("[archive] roll_secs", self.archive.roll_secs.into(), 1),
            (
                "[archive] row_group_rows",
                n(self.archive.row_group_rows),
                1,
            ),
            (
                "[archive] max_dates_per_flush",
                n(self.archive.max_dates_per_flush),
                1,
            ),
            (
                "[forecast] interval_secs",
                self.forecast.interval_secs.into(),
                1,
            ),
            (
                "[forecast] horizon_hours",
                self.forecast.horizon_hours.into(),
                1,
            ),
            ("[forecast] keep_hours", self.forecast.keep_hours.into(), 1),
            ("[live] buffer_messages", n(self.live.buffer_messages), 16),
            ("[live] outbox_bytes", n(self.live.outbox_bytes), 256),
            ("[live] max_subscribers", n(self.live.max_subscribers), 1),
        ]
    }

    /// Directory of the embedded event log.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    /// Directory of the local copy of the JetStream stream (one per stream name).
    pub fn stream_copy_dir(&self) -> PathBuf {
        self.data_dir.join("jetstream").join(&self.log.stream)
    }

    /// The database URL with any password replaced, for logs.
    pub fn redacted_database_url(&self) -> Option<String> {
        self.database_url.as_deref().map(redact_url)
    }
}

/// Query parameters of a connection string that hold secrets (libpq's names).
const SECRET_PARAMS: [&str; 4] = ["password", "sslpassword", "sslkey", "passfile"];

/// A connection string fit for a log: the password of its user info and the values of
/// secret query parameters (`?password=`) replaced by `***`, read with a URL parser (so
/// a password holding `@` or `:` is found whole). What cannot be parsed is not shown.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "(unparsable URL, not shown)".into();
    };
    if url.password().is_some() {
        // Only fails for URLs that cannot have user info, which this one has.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_file_is_a_valid_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/parkade.toml");
        let c = Config::load(Some(&path)).expect("deploy/parkade.toml parses");
        assert_eq!(c.forecast.tz().unwrap(), chrono_tz::America::Vancouver);
        assert_eq!(
            c.live.buffer_messages,
            LiveConfig::default().buffer_messages
        );
        assert_eq!(
            c.projections.features_lateness_secs,
            ProjectionsConfig::default().features_lateness_secs
        );
        assert_eq!(c.limits.max_future_secs, DEFAULT_MAX_FUTURE_SECS);
        assert!(c.auth.reads_open && !c.auth.allow_open && c.auth.tokens_file.is_none());
        // The example carries no password, not even in a comment.
        let text = std::fs::read_to_string(&path).unwrap();
        for url in text.split_whitespace().filter(|w| w.contains("://")) {
            let url = url.trim_matches('"');
            assert!(
                !redact_url(url).contains("***"),
                "a password in deploy/parkade.toml: {url}"
            );
        }
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        // A password holding '@' or ':' is found whole.
        let r = redact_url("postgres://u:p@ss:w0rd@h:5432/db");
        assert!(!r.contains("ss") && !r.contains("w0rd"), "{r}");
        // Secrets given as query parameters, in any case.
        let r = redact_url("postgres://u@h/db?sslmode=require&password=hunter2&PassWord=x");
        assert!(!r.contains("hunter2") && !r.contains("=x"), "{r}");
        assert!(r.contains("sslmode=require"), "{r}");
        assert!(!redact_url("not a url with secret").contains("secret"));
    }

    #[test]
    fn values_that_would_not_work_are_refused_with_their_key() {
        assert!(Config::default().validate().is_ok());
        let bad = |text: &str| {
            let c: Config = toml::from_str(text).unwrap();
            c.validate().unwrap_err().to_string()
        };
        let e = bad("[projections]\nbatch_events = 0\n");
        assert!(
            e.contains("[projections] batch_events = 0: must be at least 1"),
            "{e}"
        );
        let e = bad("[forecast]\ntimezone = \"Mars/Olympus\"\n");
        assert!(
            e.contains("[forecast] timezone") && e.contains("Mars/Olympus"),
            "{e}"
        );
        let e = bad("[live]\nouter = 1\n"
            .replace("outer", "outbox_bytes")
            .as_str());
        assert!(e.contains("[live] outbox_bytes"), "{e}");
        let e = bad("[limits]\nmax_future_secs = -5\n");
        assert!(
            e.contains("max_future_secs = -5: must be at least 0"),
            "{e}"
        );
        // Through a file, the error names it too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[archive]\nroll_secs = 0\n").unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("[archive] roll_secs"), "{e}");
    }

    #[test]
    fn a_file_overrides_defaults_and_unknown_keys_are_refused() {
        let c: Config =
            toml::from_str("bind = \"0.0.0.0:9000\"\n[limits]\nmax_batch_events = 5\n").unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.limits.max_batch_events, 5);
        assert_eq!(c.limits.max_body_bytes, Limits::default().max_body_bytes);
        assert!(toml::from_str::<Config>("bnd = 1").is_err());
    }
}
