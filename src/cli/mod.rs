//! The `parkade` command line: one file per command, each reading its flags and calling
//! the library; here the commands' list, the options they share and small helpers.

mod backtest;
mod demo;
mod healthcheck;
mod holdout;
mod import;
mod log;
mod repair_log;
mod replay;
mod serve;
mod simulate;
mod token;
mod train;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::log::{EventLog, FileLog, LogOptions, OpenMode};

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
    Serve(serve::ServeArgs),
    /// Import historical CSV files (event rows or Birmingham-style counts) into the log.
    Import(import::ImportArgs),
    /// Rebuild a projection from offset zero of the log.
    Replay(replay::ReplayArgs),
    /// Fold the log and compare it with the read model; exits 1 on any difference.
    Verify(verify::VerifyArgs),
    /// Show (and with --apply make) the cut that makes a damaged event log readable
    /// again: what it removes, and a copy of every file it changes. Only for a log that
    /// `serve` refuses to open; the server must be stopped.
    RepairLog(repair_log::RepairArgs),
    /// Exit 0 if the server answers GET /healthz with 200, 1 otherwise: for container
    /// healthchecks (the runtime image has no curl).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Work on the event log itself: `parkade log copy --to jetstream` moves the
    /// embedded log into a JetStream stream (and `--to embedded` back).
    Log(log::LogArgs),
    /// Make a new access token: prints the token once (give it to the client) and the
    /// entry to add to the tokens file (only its hash is kept).
    Token(token::TokenArgs),
    /// Score the forecasting model against two baselines on Birmingham-layout CSVs
    /// (rolling origin) and write its predictions.
    Backtest(backtest::BacktestArgs),
    /// Split a Birmingham-layout CSV into history and its last full week (the actuals of
    /// a backtest).
    Holdout(holdout::HoldoutArgs),
    /// Train the forecasting model from the features (PostgreSQL) or a CSV, save it in
    /// the data directory (and in forecast_models) and make it the current one.
    Train(train::TrainArgs),
    /// Send realistic campus traffic (or a fixed load) to a running server.
    Simulate(simulate::SimulateArgs),
    /// Start the service on embedded defaults, register the SFU Burnaby lots, run the
    /// simulator against it and print the dashboard URL.
    Demo(demo::DemoArgs),
    /// Print a shell completion script (`parkade completions bash >
    /// /etc/bash_completion.d/parkade`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (`parkade man > parkade.1; man ./parkade.1`).
    Man,
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2016-12-01T00:00:00Z)"))
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
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Import(a) => import::run(a),
        Cmd::Replay(a) => replay::run(a),
        Cmd::Verify(a) => verify::run(a),
        Cmd::RepairLog(a) => repair_log::repair_log(a),
        Cmd::Healthcheck(a) => Ok(healthcheck::healthcheck(a)),
        Cmd::Log(a) => log::run(a),
        Cmd::Token(a) => token::token(a),
        Cmd::Backtest(a) => backtest::backtest(a),
        Cmd::Holdout(a) => holdout::holdout(a),
        Cmd::Train(a) => train::run(a),
        Cmd::Simulate(a) => simulate::simulate(a),
        Cmd::Demo(a) => demo::demo(a),
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
    }
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

fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    styled_bar(
        total,
        "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        format!("replaying {what}"),
    )
}

/// A progress bar of `len` drawn by `template`, saying `message`.
fn styled_bar(len: u64, template: &str, message: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
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
