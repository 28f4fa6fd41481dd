//! `parkade verify`: fold the log and compare it with the read model.

use std::process::ExitCode;

use clap::Args;

use super::{database_url, open_read_only, runtime, Common};
use crate::config::Config;
use crate::projections::{db, verify};

#[derive(Args)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    pub(super) common: Common,
}

pub(super) fn verify_local(c: &Config) -> anyhow::Result<ExitCode> {
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

pub(super) fn run(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let c = a.common.config()?;
    crate::telemetry::init(c.log_format);
    verify_local(&c)
}
