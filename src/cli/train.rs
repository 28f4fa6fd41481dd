//! `parkade train`: fit the forecasting model and make it the current one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::{parse_time, parse_tz, runtime, Common};
use crate::config::Config;
use crate::projections::db;

#[derive(Args)]
pub(super) struct TrainArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// Train from this Birmingham-layout CSV instead of lot_features_15m.
    #[arg(long, conflicts_with = "lake")]
    pub(super) csv: Option<PathBuf>,
    /// Train from the features in the Parquet lake (the [archive] folder or S3 bucket,
    /// `features/date=.../features.parquet`) instead of PostgreSQL.
    #[arg(long)]
    pub(super) lake: bool,
    /// Zone of local times: of the CSV's LastUpdated, or of the lots for the features.
    /// Default: [forecast] timezone (the CSV: Europe/London).
    #[arg(long, value_parser = parse_tz)]
    pub(super) timezone: Option<chrono_tz::Tz>,
    /// Train on the 12 weeks of readings up to this time (RFC 3339, e.g.
    /// 2016-12-01T00:00:00Z). Default: the newest reading, so that imported history
    /// that ended long ago trains too.
    #[arg(long, value_parser = parse_time)]
    pub(super) until: Option<chrono::DateTime<chrono::Utc>>,
}

pub(super) fn train(c: &Config, a: TrainArgs) -> anyhow::Result<ExitCode> {
    use crate::forecast::service;
    use crate::projections::archive::Archive;
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
        let archive;
        let from = match &a.csv {
            Some(path) => service::TrainingSource::Csv(path),
            None if a.lake => {
                archive = Archive::from_config(&config.archive, &config.data_dir).await;
                service::TrainingSource::Lake(archive.store())
            }
            None => match &pool {
                Some(pool) => service::TrainingSource::Features(pool.clone()),
                None => bail!("training from the features needs PostgreSQL (PARKADE_DATABASE_URL), or give --csv FILE"),
            },
        };
        let service::TrainingData {
            history,
            source,
            window_end: window,
            csv_rows,
        } = service::training_data(from, tz, a.until).await?;
        if let Some((read, dropped)) = csv_rows {
            println!("{source}: {read} readings (dropped: {dropped})");
        }
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

pub(super) fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let c = a.common.config()?;
    crate::telemetry::init(c.log_format);
    train(&c, a)
}
