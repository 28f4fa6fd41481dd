//! `parkade log copy`: the embedded log into a JetStream stream, or back.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{progress_bar, runtime, Common};

#[derive(Args)]
pub(super) struct LogArgs {
    #[command(subcommand)]
    pub(super) action: LogAction,
}

#[derive(Subcommand)]
pub(super) enum LogAction {
    /// Copy the embedded log (data directory) into the JetStream stream named by the
    /// [log] settings, or the stream into the embedded log, keeping every event's offset,
    /// id and time and the log's id. Resumable: run it again after an interruption. The
    /// servers must be stopped while it runs.
    Copy(CopyArgs),
}

#[derive(Args)]
pub(super) struct CopyArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// Where the events go: jetstream (from the embedded log) or embedded (from the
    /// stream).
    #[arg(long, value_enum)]
    pub(super) to: crate::config::LogBackend,
}

pub(super) fn copy_log(a: CopyArgs) -> anyhow::Result<ExitCode> {
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

pub(super) fn run(a: LogArgs) -> anyhow::Result<ExitCode> {
    match a.action {
        LogAction::Copy(a) => copy_log(a),
    }
}
