//! Startup: open the log, rebuild the lots, start the projections and the HTTP server.

use std::sync::Arc;
use std::thread::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use anyhow::Context;

use crate::actors::Lots;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::log::EventLog;
use crate::projections::{FaultPoint, StatusBoard};
use crate::systemd::Notifier;

mod http;
mod read_models;
mod start;

use read_models::{start_read_models, ReadModels};
use start::{
    follow_shared_log, open_archive, open_log, recover_lots, refuse_lost_events, start_live,
};

/// What stops together: the token that every task and thread of the service watches,
/// and the tasks on the server's thread to wait for once it is cancelled. Dropped (a
/// build that failed half way, an application never run), it cancels the token, so
/// nothing it started goes on alone.
#[derive(Default)]
pub(crate) struct Shutdown {
    pub(crate) token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// Run `task` on this (the server's) thread; it must end once `token` is cancelled.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        self.tasks.spawn_local(task);
    }

    /// Cancel, and wait for the tasks (at most `within`, then say how many did not end).
    async fn stop(&self, within: std::time::Duration) {
        self.token.cancel();
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "tasks still running {} s after the stop; leaving them",
                within.as_secs()
            );
        }
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Knobs for tests and drills that a config file does not offer.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Fails projection batches between write and commit while armed.
    pub projection_fault: FaultPoint,
    /// Makes the occupancy projection panic after folding a batch while armed.
    pub projection_panic: FaultPoint,
    /// Write through this storage instead of the OS filesystem.
    pub storage: Option<Arc<dyn crate::log::Storage>>,
}

/// A built, not yet running, parkade service.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    log: Arc<dyn EventLog>,
    lots: Lots,
    board: StatusBoard,
    shutdown: Shutdown,
    projection: Option<JoinHandle<()>>,
    archive_thread: Option<JoinHandle<()>>,
    live_thread: JoinHandle<()>,
    /// Wakes the predictor for a run now.
    forecast_now: Arc<tokio::sync::Notify>,
    /// The service manager, when one runs this process.
    notifier: Option<Notifier>,
}

impl Application {
    /// Build everything. Must run inside an actix system (`actix_web::rt::System`).
    pub async fn build(config: Config, hooks: Hooks) -> anyhow::Result<Application> {
        config.validate()?;
        // Access control first: a service that would start open by mistake does not start.
        let auth = http::load_auth(&config)?;
        // The address before the data: a start that cannot listen touches nothing.
        let listener = http::bind(config.bind)?;
        let max_connections = http::fit_open_files(config.limits.max_connections)?;
        http::return_large_buffers();
        // Before the log opens: its writer binds its metrics when it starts.
        crate::metrics::install();
        let (log, lots_thread) = open_log(&config, &hooks).await?;
        // Made once: the start's check reads its progress, then it runs.
        let archive = open_archive(&config).await;
        refuse_lost_events(&config, &*log, archive.as_ref()).await?;
        let dyn_log = log.clone();
        let lots = recover_lots(&config, dyn_log.clone(), lots_thread)?;
        let board = StatusBoard::default();
        let shutdown = Shutdown::default();
        if dyn_log.shared() {
            follow_shared_log(&lots, &shutdown);
        }
        let (live, live_thread) = start_live(&config, &lots, &dyn_log, &shutdown)?;
        let forecast_now = Arc::new(tokio::sync::Notify::new());
        let mut read = start_read_models(
            &config,
            &hooks,
            &dyn_log,
            archive,
            &board,
            &shutdown.token,
            &forecast_now,
        )
        .await?;
        let state = api_state(
            &config,
            lots.clone(),
            dyn_log,
            &board,
            &mut read,
            live.clone(),
            max_connections,
        )?;
        http::spawn_housekeeping(&state, &auth, &shutdown);
        let (server, port) = http::serve_http(&config, state, auth, listener)?;
        let notifier = Notifier::from_env();
        http::stop_on_signals(server.handle(), live, notifier.clone());
        config.log_which_file();
        tracing::info!(address = %config.bind, port, "HTTP server listening");
        if let Some(n) = &notifier {
            n.ready();
            shutdown.spawn(n.clone().watch(log.clone(), shutdown.token.clone()));
        }
        Ok(Application {
            port,
            server,
            log,
            lots,
            board,
            shutdown,
            projection: read.projection,
            archive_thread: read.archive_thread,
            live_thread,
            forecast_now,
            notifier,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn lots(&self) -> &Lots {
        &self.lots
    }

    pub fn board(&self) -> &StatusBoard {
        &self.board
    }

    /// A handle to stop the HTTP server from elsewhere.
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// A handle that runs the predictor now (it trains a model first when none is
    /// saved): for the demo, once its history is in.
    pub fn forecast_now(&self) -> Arc<tokio::sync::Notify> {
        self.forecast_now.clone()
    }

    /// Serve until the server stops (SIGINT/SIGTERM or a handle), then stop the
    /// projection and flush the log.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let result = self.server.await;
        if let Some(n) = &self.notifier {
            n.stopping();
        }
        self.shutdown.stop(std::time::Duration::from_secs(10)).await;
        for p in [self.projection, self.archive_thread, Some(self.live_thread)]
            .into_iter()
            .flatten()
        {
            let _ = tokio::task::spawn_blocking(move || p.join()).await;
        }
        self.log.close();
        tracing::info!("stopped");
        result.context("HTTP server failed")
    }
}

/// What the handlers share: the lots, the log, the read side (taken from `read`) and
/// the limits.
fn api_state(
    config: &Config,
    lots: Lots,
    log: Arc<dyn EventLog>,
    board: &StatusBoard,
    read: &mut ReadModels,
    live: crate::live::Live,
    max_connections: usize,
) -> anyhow::Result<ApiState> {
    Ok(ApiState {
        lots,
        log,
        limits: config.limits.clone(),
        board: board.clone(),
        db: read.db.take(),
        archive: read.archive.take(),
        features_lateness_secs: config.projections.features_lateness_secs,
        forecast_tz: config.forecast.tz().map_err(anyhow::Error::msg)?,
        live,
        forecast_interval_secs: config.forecast.interval_secs,
        replay: Arc::new(tokio::sync::Mutex::new(())),
        live_config: config.live.clone(),
        outboxes: crate::live::Budget::new(config.live.outbox_budget()),
        ws_slots: Arc::new(tokio::sync::Semaphore::new(config.live.max_subscribers)),
        catch_up_slots: Arc::new(tokio::sync::Semaphore::new(config.live.max_catch_ups)),
        ingest_rate: api::limits::IngestRate::new(
            config.limits.ingest_events_per_sec,
            config.limits.max_batch_events,
        ),
        connections: api::limits::Connections::new(
            max_connections,
            config.limits.per_address(max_connections),
            config.limits.trusted_proxies.clone(),
        ),
        bodies: api::limits::BodyBudget::new(config.limits.body_budget()),
        // The handle installed before the log opened (installed once per process).
        metrics: crate::metrics::install(),
        stale_after_secs: config.lots.stale_after_secs,
        features: read.features.take(),
        forecasts: read.forecasts.take(),
    })
}
