//! The read side of the start: PostgreSQL or the features in memory, the projections
//! and the predictor under supervision, the archive on a thread of its own.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::Hooks;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::forecast::service::{self as predictor, ForecastStore, Predictor, Runs};
use crate::log::EventLog;
use crate::projections::features::memory::MemoryFeatures;
use crate::projections::features::Features;
use crate::projections::lease::LakeLease;
use crate::projections::occupancy::Occupancy;
use crate::projections::supervisor::supervise;
use crate::projections::{db, features, occupancy, ProjectionName, Runner, StatusBoard};

/// The read models as started: the database pool and the archive the API reads, and
/// the threads their projections run on.
pub(super) struct ReadModels {
    pub(super) db: Option<sqlx::PgPool>,
    /// The features in memory, on the embedded defaults (no database).
    pub(super) features: Option<MemoryFeatures>,
    /// Where the forecasts are kept, when the predictor runs.
    pub(super) forecasts: Option<ForecastStore>,
    pub(super) archive: Option<crate::projections::archive::Archive>,
    pub(super) projection: Option<JoinHandle<()>>,
    pub(super) archive_thread: Option<JoinHandle<()>>,
}

/// Start the PostgreSQL projections (when a database is configured) and the archive
/// (when given: it is enabled).
pub(super) async fn start_read_models(
    config: &Config,
    hooks: &Hooks,
    log: &Arc<dyn EventLog>,
    archive: Option<crate::projections::archive::Archive>,
    board: &StatusBoard,
    shutdown: &CancellationToken,
    forecast_now: &Arc<tokio::sync::Notify>,
) -> anyhow::Result<ReadModels> {
    let mut read = ReadModels {
        db: None,
        features: None,
        forecasts: None,
        archive: None,
        projection: None,
        archive_thread: None,
    };
    if let Some(url) = &config.database_url {
        let opts: PgConnectOptions = url
            .parse()
            .context("PARKADE_DATABASE_URL is not a valid PostgreSQL URL")?;
        tracing::info!(database = %config.redacted_database_url().unwrap_or_default(), "PostgreSQL read model enabled");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(opts);
        read.forecasts = config
            .forecast
            .enabled
            .then(|| ForecastStore::Postgres(pool.clone()));
        read.db = Some(pool);
        read.projection = Some(spawn_projection(
            url.clone(),
            log.clone(),
            (board.clone(), forecast_now.clone()),
            config,
            hooks,
            shutdown.clone(),
        )?);
    } else {
        tracing::info!("no PARKADE_DATABASE_URL: running without the PostgreSQL read model; the features are kept in memory");
        let features = MemoryFeatures::new(MEMORY_FEATURE_DAYS);
        let forecasts = config.forecast.enabled.then(|| ForecastStore::Memory {
            features: features.clone(),
            runs: Runs::default(),
            log: log.clone(),
        });
        read.projection = Some(spawn_memory_features(
            features.clone(),
            forecasts.clone(),
            log.clone(),
            (board.clone(), forecast_now.clone()),
            config,
            shutdown.clone(),
        )?);
        read.features = Some(features);
        read.forecasts = forecasts;
    }
    if let Some(archive) = archive {
        read.archive_thread = Some(spawn_archive(
            archive.clone(),
            log.clone(),
            board.clone(),
            config,
            shutdown.clone(),
        )?);
        read.archive = Some(archive);
    }
    Ok(read)
}

/// Run the PostgreSQL projections (occupancy, features, the features lake, the
/// predictor) on their own thread and runtime, so their log reads and database round
/// trips never share a thread with request handling; each under its own supervision
/// (`projections::supervisor`), so that one failing or panicking does not stop the others.
pub(super) fn spawn_projection(
    url: String,
    log: Arc<dyn EventLog>,
    (board, forecast_now): (StatusBoard, Arc<tokio::sync::Notify>),
    config: &Config,
    hooks: &Hooks,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let batch_events = config.projections.batch_events;
    let max_backoff = Duration::from_secs(config.projections.max_backoff_secs);
    let lateness_secs = config.projections.features_lateness_secs;
    let forecast = config.forecast.enabled.then(|| config.clone());
    let tz = config.forecast.tz().map_err(anyhow::Error::msg)?;
    // The features go to the lake beside the archive, when there is one.
    let lake_config = config.archive.enabled.then(|| config.clone());
    let (fault, panic) = (
        hooks.projection_fault.clone(),
        hooks.projection_panic.clone(),
    );
    let shared = log.shared();
    on_own_thread("parkade-projection", async move {
        let Some(pool) =
            connect_until_stopped(&url, occupancy::NAME, &board, max_backoff, shutdown.clone())
                .await
        else {
            return;
        };
        let occupancy = Runner {
            pool: pool.clone(),
            log,
            board: board.clone(),
            batch_events,
            max_backoff,
            panic,
            holder: uuid::Uuid::now_v7(),
            projection: Occupancy::new(fault),
        };
        let features = occupancy.driving(Features::new(lateness_secs));
        let predictor = forecast.map(|f| {
            Predictor::new(
                ForecastStore::Postgres(pool.clone()),
                &f,
                tz,
                &board,
                forecast_now,
            )
        });
        let lake = match &lake_config {
            Some(c) => {
                let archive =
                    crate::projections::archive::Archive::from_config(&c.archive, &c.data_dir)
                        .await;
                let store = archive.store().clone();
                let lease = lake_leased(shared, &store).then(|| {
                    Arc::new(tokio::sync::Mutex::new(LakeLease::new(
                        pool.clone(),
                        features::lake::NAME,
                    )))
                });
                Some(features::lake::LakeExporter {
                    pool,
                    store,
                    board: board.clone(),
                    every: Duration::from_secs(c.archive.roll_secs.clamp(1, 60)),
                    lease,
                })
            }
            None => None,
        };
        let watch = |name: ProjectionName| (name, board.clone(), max_backoff, shutdown.clone());
        tokio::join!(
            supervised(watch(occupancy::NAME), occupancy, |r, sd| r.run(sd)),
            supervised(watch(features::NAME), features, |r, sd| r.run(sd)),
            async {
                if let Some(p) = predictor {
                    supervised(watch(predictor::NAME), p, |p, sd| p.run(sd)).await
                }
            },
            async {
                if let Some(l) = lake {
                    supervised(watch(features::lake::NAME), l, |l, sd| l.run(sd)).await
                }
            },
        );
    })
}

/// Connect to PostgreSQL (and migrate it), retrying with backoff (the failures shown on
/// projection `name`'s line); `None` once stopped.
pub(super) async fn connect_until_stopped(
    url: &str,
    name: ProjectionName,
    board: &StatusBoard,
    max_backoff: Duration,
    shutdown: CancellationToken,
) -> Option<sqlx::PgPool> {
    let mut backoff = Backoff::new(Duration::from_millis(200), max_backoff);
    // Each cause said once, not at every retry.
    let mut said = String::new();
    loop {
        // A stop does not wait for an attempt to end.
        let attempt = tokio::select! {
            a = db::connect(url) => a,
            _ = shutdown.cancelled() => return None,
        };
        match attempt {
            Ok(pool) => {
                if !said.is_empty() {
                    tracing::info!(projection = %name, "connected to PostgreSQL");
                }
                return Some(pool);
            }
            Err(e) => {
                let cause = e.to_string();
                if cause != said {
                    tracing::error!(error = %cause, "cannot reach PostgreSQL or migrate it; retrying with backoff (said again only if the cause changes)");
                    said = cause;
                }
                board.report_failure(name, &e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_wait()) => {},
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Supervise a runner whose `run` returns once stopped: each restart runs a fresh
/// clone of it, and a panic is reported like an error.
pub(super) async fn supervised<R, Fut>(
    (name, board, max_backoff, shutdown): (
        ProjectionName,
        StatusBoard,
        Duration,
        CancellationToken,
    ),
    runner: R,
    run: impl Fn(R, CancellationToken) -> Fut,
) where
    R: Clone,
    Fut: std::future::Future<Output = ()>,
{
    supervise(name, board, max_backoff, shutdown, |sd| {
        let done = run(runner.clone(), sd);
        async move {
            done.await;
            Ok(())
        }
    })
    .await
}

/// Days of features a lot keeps in memory on the embedded defaults.
pub(super) const MEMORY_FEATURE_DAYS: u32 = 400;

/// Fold the features into memory on a thread of their own, under supervision (a
/// restart folds the log again from offset zero).
pub(super) fn spawn_memory_features(
    features: MemoryFeatures,
    forecasts: Option<ForecastStore>,
    log: Arc<dyn EventLog>,
    (board, forecast_now): (StatusBoard, Arc<tokio::sync::Notify>),
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let max_backoff = Duration::from_secs(config.projections.max_backoff_secs);
    let batch_events = config.projections.batch_events;
    let lateness = config.projections.features_lateness_secs;
    let name = crate::projections::features::NAME;
    let tz = config.forecast.tz().map_err(anyhow::Error::msg)?;
    let predictor = forecasts.map(|store| Predictor::new(store, config, tz, &board, forecast_now));
    let watch = (
        predictor::NAME,
        board.clone(),
        max_backoff,
        shutdown.clone(),
    );
    let fold = supervise(name, board.clone(), max_backoff, shutdown, move |sd| {
        let run = features
            .clone()
            .follow(log.clone(), board.clone(), batch_events, lateness, sd);
        async move { run.await.map_err(|e| e.to_string()) }
    });
    on_own_thread("parkade-features", async move {
        tokio::join!(fold, async {
            if let Some(p) = predictor {
                supervised(watch, p, |p, sd| p.run(sd)).await
            }
        });
    })
}

/// Run the archive projection on its own thread and runtime, under supervision.
pub(super) fn spawn_archive(
    archive: crate::projections::archive::Archive,
    log: Arc<dyn EventLog>,
    board: StatusBoard,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    use crate::projections::archive::NAME;
    let max_backoff = Duration::from_secs(config.projections.max_backoff_secs);
    let leased = lake_leased(log.shared(), archive.store());
    let url = match (&config.database_url, leased) {
        (Some(url), true) => Some(url.clone()),
        (None, true) => {
            tracing::warn!("the archive is on a bucket and the log is shared, but there is no PostgreSQL to lease it: every node writing it must have its own prefix");
            None
        }
        (_, false) => None,
    };
    on_own_thread("parkade-archive", async move {
        let archive = match url {
            Some(url) => {
                let Some(pool) =
                    connect_until_stopped(&url, NAME, &board, max_backoff, shutdown.clone()).await
                else {
                    return;
                };
                archive.leased(LakeLease::new(pool, NAME))
            }
            None => archive,
        };
        let runner = crate::projections::archive::ArchiveRunner {
            archive,
            log,
            board: board.clone(),
            max_backoff,
        };
        let watch = (NAME, board, max_backoff, shutdown);
        supervised(watch, runner, |r, sd| r.run(sd)).await
    })
}

/// Whether a lake in `store` is written under a lease: when it is on a bucket and the
/// log is shared (several nodes, one bucket; see `projections::lease`). A local folder
/// belongs to its node.
pub(super) fn lake_leased(shared_log: bool, store: &crate::projections::archive::Store) -> bool {
    shared_log && matches!(store, crate::projections::archive::Store::S3(_))
}

/// Run a background task on a thread with its own single-threaded runtime, so its
/// log reads and remote round trips never share a thread with request handling.
pub(super) fn on_own_thread(
    name: &str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name(name.into())
        // The main thread's size: a poll through the S3 client's layers under a lease
        // (the archive's flush) goes deeper than the default 2 MiB in a debug build.
        .stack_size(8 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for a background task")
                .block_on(task)
        })?)
}
