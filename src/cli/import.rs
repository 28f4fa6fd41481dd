//! `parkade import`: historical CSV files into the log, directly or through a running
//! server, with progress, Ctrl-C and a resuming rerun.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::{parse_tz, Common};
use crate::config::Config;

#[derive(Args)]
pub(super) struct ImportArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// CSV files to import, in order.
    #[arg(required = true)]
    pub(super) files: Vec<PathBuf>,
    /// Layout of the files; recognised from the header when not given.
    #[arg(long, value_enum)]
    pub(super) format: Option<crate::import::Format>,
    /// Time zone of local times in count files.
    #[arg(long, default_value = "Europe/London", value_parser = parse_tz)]
    pub(super) timezone: chrono_tz::Tz,
    /// Write every rejected row to this CSV file (appended).
    #[arg(long)]
    pub(super) rejects: Option<PathBuf>,
    /// Send to a running server instead of writing the data directory.
    #[arg(long)]
    pub(super) url: Option<String>,
    /// Bearer token (admin) for --url.
    #[arg(long, env = "PARKADE_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
}

pub(super) fn import(c: &Config, a: ImportArgs) -> anyhow::Result<ExitCode> {
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
            let bar = super::styled_bar(
                len,
                "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
                format!("importing {}", path.display()),
            );
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
pub(super) static IMPORT_AT: std::sync::Mutex<Option<(String, u64, u64)>> =
    std::sync::Mutex::new(None);

/// An import's progress: a bar on a terminal; elsewhere (a log, a pipe) a line on
/// stderr every [`Progress::EVERY`].
pub(super) struct Progress {
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

pub(super) fn run(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let c = a.common.config()?;
    crate::telemetry::init(c.log_format);
    import(&c, a)
}
