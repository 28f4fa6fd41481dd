//! `parkade backtest`: the forecasting model scored against two baselines on CSVs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::parse_tz;

#[derive(Args)]
pub(super) struct BacktestArgs {
    /// Readings to learn from: SystemCodeNumber,Capacity,Occupancy,LastUpdated.
    #[arg(long)]
    pub(super) history: PathBuf,
    /// Readings to forecast, same columns; also usable as history before each issue time.
    #[arg(long)]
    pub(super) actuals: PathBuf,
    /// Predictions: lot_id,target_time,horizon_min,predicted_rate,low,high (the model's p10-p90 interval; empty where persistence stood in).
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Horizons in minutes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "30,60,120,1440")]
    pub(super) horizons: Vec<u32>,
    /// Time zone of LastUpdated.
    #[arg(long, default_value = "Europe/London", value_parser = parse_tz)]
    pub(super) timezone: chrono_tz::Tz,
    /// Forecast every lot as a new one: only the last N days before the actuals are
    /// known at forecast time (the model is still fitted on the whole history).
    #[arg(long)]
    pub(super) short_history_days: Option<u32>,
}

pub(super) fn backtest(a: BacktestArgs) -> anyhow::Result<ExitCode> {
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
