//! `parkade demo`: the service on embedded defaults with the SFU lots, four weeks of
//! history, a trained model and live traffic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::simulate::{sim_settings, SimArgs};
use crate::app::{Application, Hooks};
use crate::config::{Config, LogFormat};

#[derive(Args)]
pub(super) struct DemoArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(super) bind: SocketAddr,
    /// Data directory of the demo.
    #[arg(long, default_value = "parkade-demo")]
    pub(super) data_dir: PathBuf,
    /// Days of simulated history sent before the live simulation starts (on a fresh
    /// data directory only), so every lot has a usual profile at once; 0 for none.
    #[arg(long, default_value_t = 28)]
    pub(super) history_days: u32,
    #[command(flatten)]
    pub(super) sim: SimArgs,
}

pub(super) fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
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
pub(super) async fn demo_forecasts(url: &str, lots: &[crate::simulate::SimLot]) {
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
