//! `parkade simulate`: campus traffic or a fixed load sent to a running server.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::{parse_tz, stop_on_ctrl_c};
use crate::config::LogFormat;

#[derive(Args, Clone)]
pub(super) struct SimArgs {
    /// Lots: "sfu" (Simon Fraser University, Burnaby) or a JSON file
    /// [{"lot_id","name","capacity","peak"?}].
    #[arg(long, default_value = "sfu")]
    pub(super) lots: String,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    pub(super) speed: f64,
    /// Load mode: this many events a second (ignores the daily curve), with a latency
    /// summary.
    #[arg(long)]
    pub(super) rate: Option<f64>,
    /// Events per request (1: one event per request, as the old simulator did).
    #[arg(long, default_value = "1")]
    pub(super) batch: NonZeroUsize,
    /// Concurrent requests.
    #[arg(long, default_value = "4")]
    pub(super) connections: NonZeroUsize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub(super) duration: Option<f64>,
    /// Simulated start time (RFC 3339). Default: now at speed 1, else 12 hours ago.
    #[arg(long)]
    pub(super) start: Option<String>,
    /// The campus's time zone (for the daily curve).
    #[arg(long, default_value = "America/Vancouver", value_parser = parse_tz)]
    pub(super) timezone: chrono_tz::Tz,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Bearer token for a server with access control (admin: lots are registered).
    #[arg(long, env = "PARKADE_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
}

#[derive(Args)]
pub(super) struct SimulateArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(super) url: String,
    #[command(flatten)]
    pub(super) sim: SimArgs,
}

pub(super) fn sim_settings(a: &SimArgs, url: String) -> anyhow::Result<crate::simulate::Settings> {
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

pub(super) fn simulate(a: SimulateArgs) -> anyhow::Result<ExitCode> {
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
