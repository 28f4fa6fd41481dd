//! The `parkade` command line: `serve`, `import`, `replay`, `verify`, `repair-log`,
//! `train`, `backtest`, `holdout`, `simulate`, `demo`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::app::{Application, Hooks};
use crate::config::{Config, LogFormat};
use crate::log::{EventLog, FileLog, LogOptions, OpenMode};
use crate::projections::{db, features, occupancy, verify, ProjectionName};

#[derive(Parser)]
#[command(
    name = "parkade",
    version,
    about = "Parking occupancy service: live counts, history, rebuildable read models"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service: HTTP API, lot actors, event log, projections.
    Serve(ServeArgs),
    /// Import historical CSV files (event rows or Birmingham-style counts) into the log.
    Import(ImportArgs),
    /// Rebuild a projection from offset zero of the log.
    Replay(ReplayArgs),
    /// Fold the log and compare it with the read model; exits 1 on any difference.
    Verify(VerifyArgs),
    /// Show (and with --apply make) the cut that makes a damaged event log readable
    /// again: what it removes, and a copy of every file it changes. Only for a log that
    /// `serve` refuses to open; the server must be stopped.
    RepairLog(RepairArgs),
    /// Exit 0 if the server answers GET /healthz with 200, 1 otherwise: for container
    /// healthchecks (the runtime image has no curl).
    Healthcheck(HealthcheckArgs),
    /// Work on the event log itself: `parkade log copy --to jetstream` moves the
    /// embedded log into a JetStream stream (and `--to embedded` back).
    Log(LogArgs),
    /// Make a new access token: prints the token once (give it to the client) and the
    /// entry to add to the tokens file (only its hash is kept).
    Token(TokenArgs),
    /// Score the forecasting model against two baselines on Birmingham-layout CSVs
    /// (rolling origin) and write its predictions.
    Backtest(BacktestArgs),
    /// Split a Birmingham-layout CSV into history and its last full week (the actuals of
    /// a backtest).
    Holdout(HoldoutArgs),
    /// Train the forecasting model from the features (PostgreSQL) or a CSV, save it in
    /// the data directory (and in forecast_models) and make it the current one.
    Train(TrainArgs),
    /// Send realistic campus traffic (or a fixed load) to a running server.
    Simulate(SimulateArgs),
    /// Start the service on embedded defaults, register the SFU Burnaby lots, run the
    /// simulator against it and print the dashboard URL.
    Demo(DemoArgs),
    /// Print a shell completion script (`parkade completions bash >
    /// /etc/bash_completion.d/parkade`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (`parkade man > parkade.1; man ./parkade.1`).
    Man,
}

#[derive(Args, Clone)]
struct SimArgs {
    /// Lots: "sfu" (Simon Fraser University, Burnaby) or a JSON file
    /// [{"lot_id","name","capacity","peak"?}].
    #[arg(long, default_value = "sfu")]
    lots: String,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Load mode: this many events a second (ignores the daily curve), with a latency
    /// summary.
    #[arg(long)]
    rate: Option<f64>,
    /// Events per request (1: one event per request, as the old simulator did).
    #[arg(long, default_value = "1")]
    batch: NonZeroUsize,
    /// Concurrent requests.
    #[arg(long, default_value = "4")]
    connections: NonZeroUsize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Simulated start time (RFC 3339). Default: now at speed 1, else 12 hours ago.
    #[arg(long)]
    start: Option<String>,
    /// The campus's time zone (for the daily curve).
    #[arg(long, default_value = "America/Vancouver", value_parser = parse_tz)]
    timezone: chrono_tz::Tz,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bearer token for a server with access control (admin: lots are registered).
    #[arg(long, env = "PARKADE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Args)]
struct DemoArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Data directory of the demo.
    #[arg(long, default_value = "parkade-demo")]
    data_dir: PathBuf,
    /// Days of simulated history sent before the live simulation starts (on a fresh
    /// data directory only), so every lot has a usual profile at once; 0 for none.
    #[arg(long, default_value_t = 28)]
    history_days: u32,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    common: Common,
    /// Train from this Birmingham-layout CSV instead of lot_features_15m.
    #[arg(long, conflicts_with = "lake")]
    csv: Option<PathBuf>,
    /// Train from the features in the Parquet lake (the [archive] folder or S3 bucket,
    /// `features/date=.../features.parquet`) instead of PostgreSQL.
    #[arg(long)]
    lake: bool,
    /// Zone of local times: of the CSV's LastUpdated, or of the lots for the features.
    /// Default: [forecast] timezone (the CSV: Europe/London).
    #[arg(long, value_parser = parse_tz)]
    timezone: Option<chrono_tz::Tz>,
    /// Train on the 12 weeks of readings up to this time (RFC 3339, e.g.
    /// 2016-12-01T00:00:00Z). Default: the newest reading, so that imported history
    /// that ended long ago trains too.
    #[arg(long, value_parser = parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2016-12-01T00:00:00Z)"))
}

#[derive(Args)]
struct BacktestArgs {
    /// Readings to learn from: SystemCodeNumber,Capacity,Occupancy,LastUpdated.
    #[arg(long)]
    history: PathBuf,
    /// Readings to forecast, same columns; also usable as history before each issue time.
    #[arg(long)]
    actuals: PathBuf,
    /// Predictions: lot_id,target_time,horizon_min,predicted_rate,low,high (the model's p10-p90 interval; empty where persistence stood in).
    #[arg(long)]
    out: PathBuf,
    /// Horizons in minutes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "30,60,120,1440")]
    horizons: Vec<u32>,
    /// Time zone of LastUpdated.
    #[arg(long, default_value = "Europe/London", value_parser = parse_tz)]
    timezone: chrono_tz::Tz,
    /// Forecast every lot as a new one: only the last N days before the actuals are
    /// known at forecast time (the model is still fitted on the whole history).
    #[arg(long)]
    short_history_days: Option<u32>,
}

#[derive(Args)]
struct HoldoutArgs {
    /// The file to split.
    input: PathBuf,
    /// Where every row outside the last full week goes.
    #[arg(long)]
    history: PathBuf,
    /// Where the rows of the last full week (Monday to Sunday) go.
    #[arg(long)]
    actuals: PathBuf,
}

/// Options every command shares. Flags override `PARKADE_*` variables, which override
/// the config file, which overrides the defaults.
#[derive(Args)]
struct Common {
    /// TOML config file (every key is documented in deploy/parkade.toml). Default:
    /// ./parkade.toml, else /etc/parkade/parkade.toml, when one exists.
    #[arg(long, env = "PARKADE_CONFIG", hide_env_values = true)]
    config: Option<PathBuf>,
    /// Data directory holding the event log. Default ./parkade-data.
    #[arg(long, env = "PARKADE_DATA_DIR", hide_env_values = true)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL of the read model; unset or empty runs without it.
    #[arg(long, env = "PARKADE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Log output format.
    #[arg(long, env = "PARKADE_LOG_FORMAT", hide_env_values = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Where the event log lives: embedded (default) or jetstream.
    #[arg(long, env = "PARKADE_LOG_BACKEND", hide_env_values = true, value_enum)]
    log_backend: Option<crate::config::LogBackend>,
    /// NATS server URLs, comma-separated (with --log-backend jetstream).
    #[arg(long, env = "PARKADE_NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    /// The JetStream stream's name. Default PARKADE.
    #[arg(long, env = "PARKADE_NATS_STREAM", hide_env_values = true)]
    nats_stream: Option<String>,
    /// Copies of every event a new stream keeps (1, 3 or 5).
    #[arg(long, env = "PARKADE_NATS_REPLICAS", hide_env_values = true)]
    nats_replicas: Option<usize>,
    /// NATS credentials file.
    #[arg(long, env = "PARKADE_NATS_CREDENTIALS", hide_env_values = true)]
    nats_credentials: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address and port to listen on. Default 127.0.0.1:8080.
    #[arg(long, env = "PARKADE_BIND", hide_env_values = true)]
    bind: Option<SocketAddr>,
    /// HTTP worker threads. Default: number of CPUs.
    #[arg(long, env = "PARKADE_HTTP_WORKERS", hide_env_values = true)]
    http_workers: Option<usize>,
    /// Largest request body in bytes. Default 4 MiB.
    #[arg(long, env = "PARKADE_MAX_BODY_BYTES", hide_env_values = true)]
    max_body_bytes: Option<usize>,
    /// Most events per POST /v1/events request. Default 10,000.
    #[arg(long, env = "PARKADE_MAX_BATCH_EVENTS", hide_env_values = true)]
    max_batch_events: Option<usize>,
    /// Client event ids remembered per lot for idempotent retries. Default 50,000.
    #[arg(long, env = "PARKADE_DEDUPE_WINDOW", hide_env_values = true)]
    dedupe_window: Option<usize>,
    /// Threads the lot actors run on. Default 1.
    #[arg(long, env = "PARKADE_LOT_THREADS", hide_env_values = true)]
    lot_threads: Option<usize>,
    /// Tokens file (see `parkade token new`); without tokens every route is open.
    #[arg(long, env = "PARKADE_TOKENS_FILE", hide_env_values = true)]
    tokens_file: Option<PathBuf>,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    /// The projection to rebuild: occupancy or features (PostgreSQL), or archive (Parquet
    /// lake).
    #[arg(long, default_value = "occupancy", value_parser = ProjectionName::rebuildable)]
    projection: ProjectionName,
    /// Ask a running server to rebuild (POST /v1/admin/replay) instead of doing it here.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token (admin) for --url.
    #[arg(long, env = "PARKADE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    common: Common,
    /// CSV files to import, in order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Layout of the files; recognised from the header when not given.
    #[arg(long, value_enum)]
    format: Option<crate::import::Format>,
    /// Time zone of local times in count files.
    #[arg(long, default_value = "Europe/London", value_parser = parse_tz)]
    timezone: chrono_tz::Tz,
    /// Write every rejected row to this CSV file (appended).
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Send to a running server instead of writing the data directory.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token (admin) for --url.
    #[arg(long, env = "PARKADE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// `new` (the only action).
    action: String,
    /// The token's name, shown in audit lines.
    #[arg(long)]
    name: String,
    /// read, ingest or admin.
    #[arg(long)]
    role: String,
    /// Lots an ingest token may move (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    lots: Vec<String>,
}

#[derive(Args)]
struct RepairArgs {
    #[command(flatten)]
    common: Common,
    /// Make the cut (without it, only show what would be removed).
    #[arg(long)]
    apply: bool,
}

#[derive(Args)]
struct HealthcheckArgs {
    /// The server's address. Default: PARKADE_BIND's port on 127.0.0.1.
    #[arg(long)]
    address: Option<SocketAddr>,
    /// Address the server listens on (what `serve` takes), to find its port.
    #[arg(
        long,
        env = "PARKADE_BIND",
        hide_env_values = true,
        default_value = "127.0.0.1:8080"
    )]
    bind: SocketAddr,
}

#[derive(Args)]
struct LogArgs {
    #[command(subcommand)]
    action: LogAction,
}

#[derive(Subcommand)]
enum LogAction {
    /// Copy the embedded log (data directory) into the JetStream stream named by the
    /// [log] settings, or the stream into the embedded log, keeping every event's offset,
    /// id and time and the log's id. Resumable: run it again after an interruption. The
    /// servers must be stopped while it runs.
    Copy(CopyArgs),
}

#[derive(Args)]
struct CopyArgs {
    #[command(flatten)]
    common: Common,
    /// Where the events go: jetstream (from the embedded log) or embedded (from the
    /// stream).
    #[arg(long, value_enum)]
    to: crate::config::LogBackend,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    common: Common,
}

impl Common {
    fn config(&self) -> anyhow::Result<Config> {
        let file = self
            .config
            .clone()
            .or_else(crate::config::default_config_file);
        let mut c = Config::load(file.as_deref())?;
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        if let Some(u) = &self.database_url {
            c.database_url = Some(u.clone());
        }
        if c.database_url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            c.database_url = None;
        }
        if let Some(f) = self.log_format {
            c.log_format = f;
        }
        if let Some(b) = self.log_backend {
            c.log.backend = b;
        }
        if let Some(u) = &self.nats_url {
            c.log.nats_url = u.clone();
        }
        if let Some(s) = &self.nats_stream {
            c.log.stream = s.clone();
        }
        if let Some(r) = self.nats_replicas {
            c.log.replicas = r;
        }
        if let Some(p) = &self.nats_credentials {
            c.log.nats_credentials = Some(p.clone());
        }
        c.validate()?;
        Ok(c)
    }
}

/// `--timezone`: an IANA zone name, refused by the parser when it is not one.
fn parse_tz(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not an IANA time zone (like America/Vancouver): {e}"))
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Serve(a) => serve(a),
        Cmd::Import(a) => {
            let c = a.common.config()?;
            crate::telemetry::init(c.log_format);
            import(&c, a)
        }
        Cmd::Replay(a) => {
            let c = a.common.config()?;
            crate::telemetry::init(c.log_format);
            match (a.url, a.projection) {
                (Some(url), p) => replay_remote(&url, p, a.token.as_deref()),
                (None, ProjectionName::Archive) => replay_archive(&c),
                (None, ProjectionName::Features) => replay_features(&c),
                // The value parser lets only the rebuildable ones through.
                (None, _) => replay_local(&c),
            }
        }
        Cmd::Backtest(a) => backtest(a),
        Cmd::Simulate(a) => simulate(a),
        Cmd::Demo(a) => demo(a),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "parkade", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Train(a) => {
            let c = a.common.config()?;
            crate::telemetry::init(c.log_format);
            train(&c, a)
        }
        Cmd::Holdout(a) => holdout(a),
        Cmd::Verify(a) => {
            let c = a.common.config()?;
            crate::telemetry::init(c.log_format);
            verify_local(&c)
        }
        Cmd::Token(a) => token(a),
        Cmd::RepairLog(a) => repair_log(a),
        Cmd::Log(LogArgs {
            action: LogAction::Copy(a),
        }) => copy_log(a),
        Cmd::Healthcheck(a) => Ok(healthcheck(a)),
    }
}

/// GET /healthz over a plain TCP connection with a deadline; 200 is healthy.
fn healthcheck(a: HealthcheckArgs) -> ExitCode {
    use std::io::{Read, Write};
    let address = a.address.unwrap_or_else(|| {
        let ip = if a.bind.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            a.bind.ip()
        };
        SocketAddr::new(ip, a.bind.port())
    });
    let deadline = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&address, deadline)?;
        s.set_read_timeout(Some(deadline))?;
        s.set_write_timeout(Some(deadline))?;
        write!(
            s,
            "GET /healthz HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )?;
        // The status line is enough: read until the headers end (or the server closes).
        let mut reply = Vec::new();
        let mut chunk = [0u8; 1024];
        while !reply.windows(4).any(|w| w == b"\r\n\r\n") && reply.len() < 64 << 10 {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    })();
    match answer {
        Ok(reply) if reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200") => {
            println!("healthy: {address}");
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            println!(
                "unhealthy: {address} answered {}",
                reply.lines().next().unwrap_or("nothing")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unhealthy: {address}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn copy_log(a: CopyArgs) -> anyhow::Result<ExitCode> {
    use crate::config::LogBackend;
    use crate::log::copy;
    let c = a.common.config()?;
    crate::telemetry::init(c.log_format);
    let o = c.log.jetstream();
    let dir = c.log_dir();
    let bar = progress_bar(0, "");
    bar.set_message(match a.to {
        LogBackend::Jetstream => format!("copying {} into stream {}", dir.display(), o.stream),
        LogBackend::Embedded => format!("copying stream {} into {}", o.stream, dir.display()),
    });
    let tick = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let copied = runtime()?.block_on(async {
        match a.to {
            LogBackend::Jetstream => copy::embedded_to_jetstream(&dir, &o, tick).await,
            LogBackend::Embedded => copy::jetstream_to_embedded(&o, &dir, tick).await,
        }
    });
    bar.finish_and_clear();
    let copied = copied.with_context(|| match a.to {
        LogBackend::Jetstream => format!(
            "copying {} into the JetStream stream {} at {}",
            dir.display(),
            o.stream,
            o.url
        ),
        LogBackend::Embedded => format!(
            "copying the JetStream stream {} at {} into {}",
            o.stream,
            o.url,
            dir.display()
        ),
    })?;
    println!(
        "copied {} events ({} were there already); the copy holds {} events, the whole log",
        copied.copied, copied.resumed_at, copied.end
    );
    Ok(ExitCode::SUCCESS)
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut c = a.common.config()?;
    if let Some(b) = a.bind {
        c.bind = b;
    }
    if let Some(n) = a.http_workers {
        c.http_workers = n;
    }
    if let Some(n) = a.max_body_bytes {
        c.limits.max_body_bytes = n;
    }
    if let Some(n) = a.max_batch_events {
        c.limits.max_batch_events = n;
    }
    if let Some(n) = a.dedupe_window {
        c.lots.dedupe_window = n;
    }
    if let Some(n) = a.lot_threads {
        c.lots.threads = n;
    }
    if let Some(f) = a.tokens_file {
        c.auth.tokens_file = Some(f);
    }
    crate::telemetry::init(c.log_format);
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(c, Hooks::default()).await?;
        app.run_until_stopped().await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn simulate(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(LogFormat::Text);
    let settings = sim_settings(&a.sim, a.url.clone())?;
    actix_web::rt::System::new().block_on(async move {
        let stop = stop_on_ctrl_c();
        let summary = crate::simulate::run(&settings, stop).await?;
        println!("{summary}");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn holdout(a: HoldoutArgs) -> anyhow::Result<ExitCode> {
    let (monday, h, n) =
        crate::forecast::backtest::split_last_week(&a.input, &a.history, &a.actuals)?;
    println!(
        "{}: the week from {monday} to {} ({n} rows) -> {}; {h} other rows -> {}",
        a.input.display(),
        monday + chrono::Days::new(6),
        a.actuals.display(),
        a.history.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn repair_log(a: RepairArgs) -> anyhow::Result<ExitCode> {
    let c = a.common.config()?;
    crate::telemetry::init(c.log_format);
    if c.log.backend == crate::config::LogBackend::Jetstream {
        bail!(
            "the log is the JetStream stream {}: NATS keeps its replicas whole; a damaged local copy ({}) is moved away and parkade copies the stream afresh at its next start",
            c.log.stream,
            c.stream_copy_dir().display()
        );
    }
    let dir = c.log_dir();
    let outcome = crate::log::repair::repair(&dir, a.apply)
        .with_context(|| format!("repairing the event log in {}", dir.display()))?;
    println!("{outcome}");
    Ok(match outcome {
        crate::log::repair::RepairOutcome::Planned(_) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The log for reading beside a running server: the embedded log, or this node's copy
/// of the JetStream stream (as far as it has copied).
fn open_read_only(c: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    let dir = match c.log.backend {
        crate::config::LogBackend::Embedded => c.log_dir(),
        crate::config::LogBackend::Jetstream => c.stream_copy_dir(),
    };
    if !dir.exists() {
        bail!(
            "no event log in {} (set --data-dir or PARKADE_DATA_DIR)",
            dir.display()
        );
    }
    let log = FileLog::open(
        &dir,
        LogOptions {
            mode: OpenMode::ReadOnly,
            ..LogOptions::default()
        },
    )
    .with_context(|| format!("opening the event log in {}", dir.display()))?;
    Ok(Arc::new(log))
}

fn database_url(c: &Config) -> anyhow::Result<&str> {
    c.database_url
        .as_deref()
        .context("no database configured: set --database-url or PARKADE_DATABASE_URL")
}

fn replay_local(c: &Config) -> anyhow::Result<ExitCode> {
    let log = open_read_only(c)?;
    let url = database_url(c)?.to_owned();
    let bar = progress_bar(log.durable_end(), "occupancy");
    let progress = bar.clone();
    let stats = runtime()?.block_on(async move {
        let pool = db::connect(&url).await?;
        occupancy::rebuild(&pool, log, move |done, _| progress.set_position(done)).await
    })?;
    bar.finish_and_clear();
    let rate = per_second(stats.events, stats.fold_seconds);
    println!(
        "rebuilt occupancy from {} events ({} lots) in {:.3} s: fold {:.3} s ({:.0} events/s), table swapped in",
        stats.events, stats.lots, stats.total_seconds, stats.fold_seconds, rate
    );
    Ok(ExitCode::SUCCESS)
}

fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("replaying {what}"));
    bar
}

fn replay_features(c: &Config) -> anyhow::Result<ExitCode> {
    let log = open_read_only(c)?;
    let url = database_url(c)?.to_owned();
    let lateness = c.projections.features_lateness_secs;
    let stats = runtime()?.block_on(async move {
        let pool = db::connect(&url).await?;
        features::rebuild(&pool, log, lateness).await
    })?;
    println!(
        "rebuilt features from {} events: {} rows of 15 minutes in {:.3} s ({} events too late to fold), table swapped in",
        stats.events, stats.rows, stats.total_seconds, stats.too_late
    );
    Ok(ExitCode::SUCCESS)
}

fn replay_archive(c: &Config) -> anyhow::Result<ExitCode> {
    let log = open_read_only(c)?;
    let bar = progress_bar(log.durable_end(), "archive");
    let progress = bar.clone();
    let stats = runtime()?.block_on(async move {
        crate::projections::archive::Archive::from_config(c)
            .await
            .rebuild(log, move |done, _| progress.set_position(done))
            .await
    })?;
    bar.finish_and_clear();
    let rate = per_second(stats.events, stats.seconds);
    println!(
        "rebuilt the archive from {} events into {} ({} files) in {:.3} s ({:.0} events/s); it is now the current generation",
        stats.events, stats.generation, stats.files, stats.seconds, rate
    );
    Ok(ExitCode::SUCCESS)
}

fn replay_remote(
    url: &str,
    projection: ProjectionName,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let target = format!(
        "{}/v1/admin/replay?projection={projection}",
        url.trim_end_matches('/')
    );
    actix_web::rt::System::new().block_on(async move {
        let mut client = awc::Client::builder().timeout(std::time::Duration::from_secs(3600));
        if let Some(t) = token {
            client = client.bearer_auth(t);
        }
        let client = client.finish();
        // JSON, like every write a browser form cannot make (the server refuses others
        // that carry no token).
        let mut resp = client
            .post(&target)
            .insert_header(("content-type", "application/json"))
            .send_body("{}")
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {target}: {e}"))?;
        let body = resp.body().limit(1 << 20).await?;
        let text = String::from_utf8_lossy(&body);
        if resp.status().is_success() {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        } else {
            bail!("the server answered {}: {text}", resp.status())
        }
    })
}

fn verify_local(c: &Config) -> anyhow::Result<ExitCode> {
    let log = open_read_only(c)?;
    let url = database_url(c)?.to_owned();
    let report = runtime()?.block_on(async move {
        let pool = db::connect(&url).await?;
        verify::verify(&pool, log).await
    })?;
    println!(
        "verified {} lots against the log up to offset {} (log end {}, projection lag {})",
        report.lots,
        report.checkpoint,
        report.log_end,
        report.log_end - report.checkpoint
    );
    if report.is_clean() {
        println!("no differences");
        Ok(ExitCode::SUCCESS)
    } else {
        for d in &report.differences {
            println!("DIFFERENCE {d}");
        }
        println!("{} differences", report.differences.len());
        Ok(ExitCode::from(1))
    }
}

fn import(c: &Config, a: ImportArgs) -> anyhow::Result<ExitCode> {
    use crate::import::{import_file, HttpSink, Options};
    let opts = Options {
        format: a.format,
        timezone: a.timezone,
        rejects: a.rejects.clone(),
        max_future_secs: c.limits.max_future_secs,
    };
    for f in &a.files {
        if !f.is_file() {
            bail!("{} is not a readable file", f.display());
        }
    }
    let files = a.files.clone();
    let url = a.url.clone();
    let token = a.token.clone();
    let config = c.clone();
    actix_web::rt::System::new().block_on(async move {
        // Ctrl-C: say how far it got and that a rerun resumes (rows already in the log
        // are recognised and skipped), then stop.
        actix_web::rt::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                let at = IMPORT_AT.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match at {
                    Some((file, n, len)) => eprintln!(
                        "parkade import: stopped by Ctrl-C at byte {n} of {len} of {file} ({:.0}%): the rows sent before it are in the log; run the same command again to resume (rows already imported are skipped)",
                        100.0 * n as f64 / len.max(1) as f64
                    ),
                    None => eprintln!("parkade import: stopped by Ctrl-C before the first file was read; nothing was imported"),
                }
                std::process::exit(130);
            }
        });
        let bar = |path: &std::path::Path| {
            let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("importing {}", path.display()));
            Progress::new(bar, path, len)
        };
        let mut summaries = Vec::new();
        match url {
            Some(url) => {
                let mut sink = HttpSink::new(&url, token.as_deref());
                for f in &files {
                    let pb = bar(f);
                    let s = import_file(&mut sink, f, &opts, &|n| pb.at(n)).await?;
                    pb.bar.finish_and_clear();
                    println!("{s}");
                    summaries.push(s);
                }
            }
            None => {
                let mut offline = crate::import::offline::Offline::open(&config)?;
                for f in &files {
                    let pb = bar(f);
                    let s = import_file(offline.sink(), f, &opts, &|n| pb.at(n)).await?;
                    pb.bar.finish_and_clear();
                    println!("{s}");
                    summaries.push(s);
                }
                for line in offline.catch_up(&config).await? {
                    println!("{line}");
                }
                offline.close();
            }
        }
        if let Some(r) = &opts.rejects {
            if summaries.iter().any(|s| s.rejected_total() > 0) {
                println!("rejected rows written to {}", r.display());
            }
        }
        // Nothing went in and nothing was there already: every row refused, or no row.
        let taken: u64 = summaries.iter().map(|s| s.accepted + s.already_imported).sum();
        if taken == 0 {
            eprintln!("parkade import: nothing imported: no row was accepted (see the reasons above)");
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// How far the import got: file, bytes read, its length (said on Ctrl-C).
static IMPORT_AT: std::sync::Mutex<Option<(String, u64, u64)>> = std::sync::Mutex::new(None);

/// An import's progress: a bar on a terminal; elsewhere (a log, a pipe) a line on
/// stderr every [`Progress::EVERY`].
struct Progress {
    bar: indicatif::ProgressBar,
    terminal: bool,
    file: String,
    len: u64,
    said: std::sync::Mutex<std::time::Instant>,
}

impl Progress {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(2);

    fn new(bar: indicatif::ProgressBar, path: &std::path::Path, len: u64) -> Progress {
        Progress {
            bar,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            file: path.display().to_string(),
            len,
            said: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// `n` bytes of the file read.
    fn at(&self, n: u64) {
        self.bar.set_position(n);
        *IMPORT_AT.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((self.file.clone(), n, self.len));
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if !self.terminal && said.elapsed() >= Self::EVERY {
            *said = std::time::Instant::now();
            eprintln!(
                "parkade import: {}: {n} of {} bytes read ({:.0}%)",
                self.file,
                self.len,
                100.0 * n as f64 / self.len.max(1) as f64
            );
        }
    }
}

fn backtest(a: BacktestArgs) -> anyhow::Result<ExitCode> {
    use crate::forecast::backtest;
    let timezone = a.timezone;
    if a.horizons.is_empty() || a.horizons.contains(&0) {
        bail!("--horizons: give one or more horizons in minutes, each above zero");
    }
    let settings = backtest::Settings {
        horizons: a.horizons,
        timezone,
        short_history_days: a.short_history_days,
        ..backtest::Settings::default()
    };
    let started = std::time::Instant::now();
    let report = backtest::run(&a.history, &a.actuals, &a.out, &settings)?;
    println!("{report}");
    println!(
        "predictions written to {} in {:.1} s",
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn train(c: &Config, a: TrainArgs) -> anyhow::Result<ExitCode> {
    use crate::forecast::{backtest as bt, service};
    let tz = match (a.timezone, &a.csv) {
        (Some(z), _) => z,
        (None, Some(_)) => chrono_tz::Europe::London,
        (None, None) => c.forecast.tz().map_err(anyhow::Error::msg)?,
    };
    let data_dir = c.data_dir.clone();
    let db_url = c.database_url.clone();
    let config = c.clone();
    runtime()?.block_on(async move {
        let pool = match &db_url {
            Some(u) => Some(db::connect(u).await?),
            None => None,
        };
        // Counted back from --until, else from the newest reading (not the clock).
        let chosen = if a.until.is_some() { "--until" } else { "the newest reading" };
        let none_yet = |source: &str| {
            anyhow::anyhow!("no readings in {source} to train on: import history (`parkade import`) or send events first, and let the features fold them")
        };
        let mut window = None;
        let (history, source) = match &a.csv {
            None if a.lake => {
                let archive = crate::projections::archive::Archive::from_config(&config).await;
                let store = archive.store();
                let until = match a.until {
                    Some(t) => t,
                    None => crate::projections::features::lake::newest_day_end(store)
                        .await
                        .map_err(anyhow::Error::msg)?
                        .ok_or_else(|| none_yet(&store.describe()))?,
                };
                window = Some(until);
                let history = service::observations_in_lake(store, tz, until).await?;
                (history, format!("features lake {}", store.describe()))
            }
            Some(path) => {
                let (rows, dropped) = bt::read_readings(path, tz)?;
                println!("{}: {} readings (dropped: {dropped})", path.display(), rows.len());
                (
                    crate::forecast::History::new(rows.into_iter().map(|r| (r.lot, r.obs))),
                    path.display().to_string(),
                )
            }
            None => {
                let Some(pool) = &pool else {
                    bail!("training from the features needs PostgreSQL (PARKADE_DATABASE_URL), or give --csv FILE");
                };
                let store = service::Store::Postgres(pool.clone());
                let until = match a.until {
                    Some(t) => t,
                    None => store
                        .newest_reading(None)
                        .await?
                        .ok_or_else(|| none_yet("lot_features_15m"))?,
                };
                window = Some(until);
                (
                    store.observations(tz, until, None).await?,
                    "features".to_owned(),
                )
            }
        };
        let newest = history
            .lots()
            .filter_map(|l| history.observations(l).last().map(|o| o.utc))
            .max()
            .unwrap_or(0);
        let until = a.until.map_or(newest, |t| t.timestamp().min(newest));
        let readings: usize = history.lots().map(|l| history.observations(l).len()).sum();
        let lots = history.lots().count();
        match window {
            Some(end) => println!(
                "training on {readings} readings of {lots} lots from {source}: the {} weeks up to {} ({chosen})",
                service::WEEKS_READ,
                end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => println!("training on {readings} readings of {lots} lots from {source}"),
        }
        let model = service::train(&history, until, tz, source)?;
        let path = service::save(&model, &data_dir, pool.as_ref()).await?;
        println!("| horizon | samples | training MAE | interval (p10, p90 of residuals) |");
        println!("|---|---|---|---|");
        for h in &model.horizons {
            println!(
                "| {} min | {} | {:.4} | {:+.3}, {:+.3} |",
                h.minutes, h.samples, h.train_mae, h.residual_p10, h.residual_p90
            );
        }
        println!(
            "model {} saved to {} and made current{}",
            model.version,
            path.display(),
            if pool.is_some() { " (and recorded in forecast_models)" } else { "" }
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn sim_settings(a: &SimArgs, url: String) -> anyhow::Result<crate::simulate::Settings> {
    let lots = match a.lots.as_str() {
        "sfu" => crate::simulate::sfu_burnaby(),
        path => crate::simulate::lots_from_file(std::path::Path::new(path))?,
    };
    let timezone = a.timezone;
    if !(a.speed > 0.0 && a.speed.is_finite()) {
        bail!("--speed must be a positive number (got {})", a.speed);
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of events a second");
    }
    let start = match &a.start {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| anyhow::anyhow!("--start {t:?}: {e} (expected RFC 3339)"))?
            .to_utc(),
        None if a.speed > 1.0 => chrono::Utc::now() - chrono::Duration::hours(12),
        None => chrono::Utc::now(),
    };
    // The simulator keeps the event time rule too: it starts no later than now.
    let now = crate::domain::Timestamp::now();
    crate::domain::check_event_time(crate::domain::Timestamp::from_datetime(start), now, 0)
        .map_err(|e| anyhow::anyhow!("--start: {e}"))?;
    Ok(crate::simulate::Settings {
        url,
        lots,
        speed: a.speed,
        rate: a.rate,
        batch: a.batch,
        connections: a.connections,
        duration: a.duration.map(std::time::Duration::from_secs_f64),
        start,
        timezone,
        seed: a.seed,
        token: a.token.clone(),
        report_every: std::time::Duration::from_secs(10),
    })
}

/// A flag set by Ctrl-C.
fn stop_on_ctrl_c() -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    actix_web::rt::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    stop
}

fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(LogFormat::Text);
    let mut config = Config {
        bind: a.bind,
        data_dir: a.data_dir.clone(),
        database_url: None,
        ..Config::default()
    };
    // A quiet campus sends few events at night: the demo's lots are not called stale
    // for half a day without one.
    config.lots.stale_after_secs = 12 * 3_600;
    let mut sim = a.sim.clone();
    // Days and hours are the campus's.
    config.forecast.timezone = sim.timezone.name().to_owned();
    if sim.speed == 1.0 && sim.rate.is_none() {
        // Behind the present, an hour of campus traffic a minute.
        sim.speed = 60.0;
    }
    // Written once the history is in: a folder without it either holds nothing yet
    // (a start that failed before the first event: prepared now) or a demo stopped
    // while its history went in (said, with how to start over).
    let prepared = a.data_dir.join("demo-history-done");
    actix_web::rt::System::new().block_on(async move {
        // Binds first: a start that cannot listen leaves the folder as it was.
        let app = Application::build(config, Hooks::default()).await?;
        // History only goes into a demo that holds nothing yet: its events come before
        // the live ones.
        let fresh = !prepared.exists() && app.lots().views().is_empty();
        let history_days = if fresh { a.history_days } else { 0 };
        if !fresh && !prepared.exists() {
            println!(
                "parkade demo: {} holds a demo whose history was not finished (stopped while it went in?): going on live without the rest of it. To start over: stop, remove the folder (rm -rf {}) or give another --data-dir, and run the demo again",
                a.data_dir.display(),
                a.data_dir.display()
            );
        } else if !fresh {
            println!(
                "parkade demo: going on with the demo in {} (its history is there; remove the folder to start over)",
                a.data_dir.display()
            );
        }
        if sim.start.is_none() {
            // The history ends two hours ago; the live simulation plays those two hours
            // in two minutes, then goes on at the pace of the clock.
            let lag = chrono::Duration::hours(if fresh { 2 } else { 0 });
            sim.start = Some((chrono::Utc::now() - lag).to_rfc3339());
        }
        let url = format!("http://{}:{}", a.bind.ip(), app.port());
        let settings = sim_settings(&sim, url.clone())?;
        let handle = app.server_handle();
        let forecast_now = app.forecast_now();
        let lots = settings.lots.len();
        // The server serves while the history goes in.
        let serving = actix_web::rt::spawn(app.run_until_stopped());
        if history_days > 0 {
            let started = std::time::Instant::now();
            let sent = crate::simulate::prepare_history(&settings, history_days, |day, days, n| {
                if day % 7 == 0 || day == days {
                    println!("parkade demo: preparing history: day {day} of {days} ({n} events)");
                }
            })
            .await?;
            println!(
                "parkade demo: {history_days} days of history ({sent} events) in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            forecast_now.notify_one();
            demo_forecasts(&url, &settings.lots).await;
        }
        if fresh {
            std::fs::write(&prepared, format!("history of {history_days} days\n"))
                .with_context(|| format!("writing {}", prepared.display()))?;
        }
        actix_web::rt::spawn(async move {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            match crate::simulate::run(&settings, stop).await {
                Ok(s) => println!("simulator: {s}"),
                Err(e) => eprintln!("simulator stopped: {e:#}"),
            }
            if settings.duration.is_some() {
                handle.stop(true).await;
            }
        });
        println!(
            "parkade demo: {lots} SFU Burnaby lots, simulated at {}x while behind the clock, then live; data in {}",
            sim.speed,
            a.data_dir.display()
        );
        println!("Dashboard: {url}/");
        println!(
            "API:       {url}/v1/lots   live: {}/v1/ws   (Ctrl-C to stop)",
            url.replace("http://", "ws://")
        );
        serving
            .await
            .map_err(|e| anyhow::anyhow!("the server task failed: {e}"))?
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Wait (a minute at most) until every lot of the demo has a forecast, saying how far
/// the training and the first forecasts are.
async fn demo_forecasts(url: &str, lots: &[crate::simulate::SimLot]) {
    println!("parkade demo: training the model on the history and forecasting every lot");
    let started = std::time::Instant::now();
    let client = awc::Client::default();
    let mut pending: Vec<&str> = lots.iter().map(|l| l.lot_id.as_str()).collect();
    let mut model = None;
    while !pending.is_empty() && started.elapsed() < std::time::Duration::from_secs(60) {
        let mut still = Vec::new();
        for lot in pending {
            let reply = client
                .get(format!("{url}/v1/lots/{lot}/forecast"))
                .send()
                .await;
            match reply {
                Ok(mut r) if r.status().is_success() => {
                    if let Ok(f) = r.json::<crate::api::wire::Forecast>().limit(1 << 22).await {
                        model = Some(f.model_version);
                        continue;
                    }
                    still.push(lot);
                }
                _ => still.push(lot),
            }
        }
        pending = still;
        if !pending.is_empty() {
            actix_web::rt::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    let took = started.elapsed().as_secs_f64();
    match (pending.is_empty(), model) {
        (true, Some(m)) => println!(
            "parkade demo: model {m}: forecasts for {} lots in {took:.1} s",
            lots.len()
        ),
        _ => println!(
            "parkade demo: no forecast yet for {} after {took:.0} s (see GET /v1/admin/projections, \"predictor\"); the dashboard shows them once the predictor has run",
            pending.join(", ")
        ),
    }
}

fn token(a: TokenArgs) -> anyhow::Result<ExitCode> {
    if a.action != "new" {
        bail!("unknown action {:?} (known: new)", a.action);
    }
    if !["read", "ingest", "admin"].contains(&a.role.as_str()) {
        bail!("--role must be read, ingest or admin (got {:?})", a.role);
    }
    if a.name.trim().is_empty() || a.name.contains(['"', '\\', '\n']) {
        bail!("--name must be non-empty, without quotes, backslashes or line breaks");
    }
    let mut lots = Vec::new();
    for l in &a.lots {
        lots.push(
            crate::domain::LotId::parse(l)
                .map_err(|e| anyhow::anyhow!("--lots: {l:?}: {e}"))?
                .to_string(),
        );
    }
    let (token, hash) = crate::api::auth::new_token()
        .map_err(|e| anyhow::anyhow!("no randomness from the operating system: {e}"))?;
    println!("token (shown once; give it to the client as `Authorization: Bearer <token>`):");
    println!("  {token}");
    println!();
    println!("add to the tokens file ([auth] tokens_file; reloaded within 2 s):");
    println!();
    println!("[[token]]");
    println!("name = \"{}\"", a.name.trim());
    println!("role = \"{}\"", a.role);
    if !lots.is_empty() {
        let quoted: Vec<String> = lots.iter().map(|l| format!("\"{l}\"")).collect();
        println!("lots = [{}]", quoted.join(", "));
    } else if a.role == "ingest" {
        println!("lots = \"*\"");
    }
    println!("sha256 = \"{hash}\"");
    Ok(ExitCode::SUCCESS)
}
