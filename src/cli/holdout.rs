//! `parkade holdout`: a Birmingham-layout CSV split into history and its last week.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub(super) struct HoldoutArgs {
    /// The file to split.
    pub(super) input: PathBuf,
    /// Where every row outside the last full week goes.
    #[arg(long)]
    pub(super) history: PathBuf,
    /// Where the rows of the last full week (Monday to Sunday) go.
    #[arg(long)]
    pub(super) actuals: PathBuf,
}

pub(super) fn holdout(a: HoldoutArgs) -> anyhow::Result<ExitCode> {
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
