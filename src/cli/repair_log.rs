//! `parkade repair-log`: show (and with `--apply` make) the cut that makes a damaged
//! embedded log readable again.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use super::Common;

#[derive(Args)]
pub(super) struct RepairArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// Make the cut (without it, only show what would be removed).
    #[arg(long)]
    pub(super) apply: bool,
}

pub(super) fn repair_log(a: RepairArgs) -> anyhow::Result<ExitCode> {
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
