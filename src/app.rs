//! Startup: open the log, rebuild the lots, start the projections and the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::Arbiter;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::watch;

use crate::actors::{LotOptions, Lots};
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::config::LogBackend;
use crate::forecast::service::{self as predictor, Predictor, Runs, Store};
use crate::log::jetstream::JetStreamLog;
use crate::log::{EventLog, FileLog, LogError, LogOptions};
use crate::projections::features::memory::MemoryFeatures;
use crate::projections::features::Features;
use crate::projections::lease::LakeLease;
use crate::projections::occupancy::Occupancy;
use crate::projections::supervisor::supervise;
use crate::projections::{
    db, features, occupancy, FaultPoint, ProjectionName, Runner, StatusBoard,
};
use crate::systemd::Notifier;

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
    shutdown: watch::Sender<bool>,
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
        let auth = load_auth(&config)?;
        for o in &config.auth.cors_origins {
            api::auth::check_origin(o).map_err(|e| anyhow::anyhow!("[auth] cors_origins: {e}"))?;
        }
        // The address before the data: a start that cannot listen touches nothing.
        let listener = TcpListener::bind(config.bind).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => ": another program listens there; choose another address with --bind (or PARKADE_BIND), e.g. --bind 127.0.0.1:8081",
                std::io::ErrorKind::PermissionDenied => ": ports below 1024 need privileges; choose another with --bind (or PARKADE_BIND)",
                std::io::ErrorKind::AddrNotAvailable => ": no interface of this machine has that address; choose another with --bind (or PARKADE_BIND)",
                _ => "",
            };
            anyhow::anyhow!("cannot listen on {}: {e}{hint}", config.bind)
        })?;
        let max_connections = fit_open_files(config.limits.max_connections)?;
        return_large_buffers();
        // Before the log opens: its writer binds its metrics when it starts.
        let metrics_handle = crate::metrics::install();
        let (log, lots_thread) = open_log(&config, &hooks).await?;
        // Made once: the start's check reads its progress, then it runs.
        let archive = match config.archive.enabled {
            true => Some(
                crate::projections::archive::Archive::from_config(
                    &config.archive,
                    &config.data_dir,
                )
                .await,
            ),
            false => None,
        };
        refuse_lost_events(&config, &*log, archive.as_ref()).await?;
        let dyn_log = log.clone();
        let lots = recover_lots(&config, dyn_log.clone(), lots_thread)?;
        let board = StatusBoard::default();
        let (shutdown, _) = watch::channel(false);
        if dyn_log.shared() {
            // Other processes append too: each lot follows what they wrote.
            let follower = lots.clone().follow(shutdown.subscribe());
            actix_web::rt::spawn(async move {
                if let Err(e) = follower.await {
                    tracing::error!(error = %e, "the lots stopped following the shared log");
                }
            });
        }
        // The live fan-out starts from the state the lots were rebuilt to.
        let live = crate::live::Live::new(
            lots.views(),
            dyn_log.durable_end(),
            config.live.buffer_messages,
        );
        let live_thread = on_own_thread(
            "parkade-live",
            live.clone().follow(dyn_log.clone(), shutdown.subscribe()),
        )?;
        let forecast_now = Arc::new(tokio::sync::Notify::new());
        let read = start_read_models(
            &config,
            &hooks,
            &dyn_log,
            archive,
            &board,
            &shutdown,
            &forecast_now,
        )
        .await?;
        let state = ApiState {
            lots: lots.clone(),
            log: dyn_log,
            limits: config.limits.clone(),
            board: board.clone(),
            db: read.db,
            archive: read.archive,
            features_lateness_secs: config.projections.features_lateness_secs,
            forecast_tz: config.forecast.tz().map_err(anyhow::Error::msg)?,
            live: live.clone(),
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
            metrics: metrics_handle,
            stale_after_secs: config.lots.stale_after_secs,
            features: read.features,
            forecasts: read.forecasts,
        };
        if let Some(rate) = state.ingest_rate.clone() {
            actix_web::rt::spawn(tidy_rates(rate, shutdown.subscribe()));
        }
        actix_web::rt::spawn(auth.clone().watch(shutdown.subscribe()));
        actix_web::rt::spawn(
            state
                .connections
                .clone()
                .close_stalled_until(shutdown.subscribe()),
        );
        actix_web::rt::spawn(trim_after_bodies(
            state.bodies.clone(),
            shutdown.subscribe(),
        ));
        let (server, port) = serve_http(&config, state, auth, listener)?;
        let notifier = Notifier::from_env();
        stop_on_signals(server.handle(), live, notifier.clone());
        match &config.file {
            Some(f) => tracing::info!(file = %f.display(), "configuration read"),
            None => tracing::info!(
                "no configuration file (none given, none at ./parkade.toml or /etc/parkade/parkade.toml): defaults and PARKADE_* variables"
            ),
        }
        tracing::info!(address = %config.bind, port, "HTTP server listening");
        if let Some(n) = &notifier {
            n.ready();
            actix_web::rt::spawn(n.clone().watch(log.clone(), shutdown.subscribe()));
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
        let _receivers_gone = self.shutdown.send(true);
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

/// Open the configured log (read-write), saying what recovery found. On JetStream,
/// also the thread the log's client runs on, for the lots to run on too.
async fn open_log(
    config: &Config,
    hooks: &Hooks,
) -> anyhow::Result<(Arc<dyn EventLog>, Option<Arbiter>)> {
    let mut log_opts = LogOptions {
        segment_bytes: config.log.segment_bytes,
        ..LogOptions::default()
    };
    if let Some(storage) = hooks.storage.clone() {
        log_opts.storage = storage;
    }
    if config.log.backend == LogBackend::Jetstream {
        let dir = config.stream_copy_dir();
        let o = config.log.jetstream();
        // The lots' first thread: each append and its acknowledgement pass between
        // the lot's actor and the client without waking another thread.
        let thread = Arbiter::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        thread.spawn(async move {
            let _sent = tx.send(tokio::runtime::Handle::current());
        });
        let opened = match rx.await {
            Ok(handle) => JetStreamLog::open_on(&o, &dir, log_opts, handle).await,
            Err(_) => Err(LogError::Backend("the lots' thread did not start".into())),
        };
        if opened.is_err() {
            thread.stop();
        }
        let log = opened.with_context(|| {
            format!(
                "opening the JetStream stream {} at {} (local copy in {})",
                o.stream,
                o.url,
                dir.display()
            )
        })?;
        tracing::info!(
            stream = %o.stream, url = %o.url, replicas = o.replicas, log_id = %log.log_id(),
            events = log.durable_end(), copy = %dir.display(), "event log open on JetStream"
        );
        return Ok((Arc::new(log), Some(thread)));
    }
    let log_dir = config.log_dir();
    let log = Arc::new(
        FileLog::open(&log_dir, log_opts)
            .with_context(|| format!("opening the event log in {}", log_dir.display()))?,
    );
    let rec = log.recovery();
    tracing::info!(
        dir = %log_dir.display(), log_id = %log.log_id(), events = rec.events, segments = rec.segments,
        truncated_bytes = rec.truncated_bytes, "event log open"
    );
    Ok((log, None))
}

/// Every lot rebuilt from the log, each on its actor.
fn recover_lots(
    config: &Config,
    log: Arc<dyn EventLog>,
    first_thread: Option<Arbiter>,
) -> anyhow::Result<Lots> {
    Lots::recover_on(
        log,
        LotOptions {
            dedupe_window: config.lots.dedupe_window,
            threads: config.lots.threads,
            max_future_micros: config.limits.max_future_secs.saturating_mul(1_000_000),
            max_lots: config.limits.max_lots,
            ..LotOptions::default()
        },
        first_thread,
    )
    .context("rebuilding the lots from the log")
}

/// The read models as started: the database pool and the archive the API reads, and
/// the threads their projections run on.
struct ReadModels {
    db: Option<sqlx::PgPool>,
    /// The features in memory, on the embedded defaults (no database).
    features: Option<MemoryFeatures>,
    /// Where the forecasts are kept, when the predictor runs.
    forecasts: Option<Store>,
    archive: Option<crate::projections::archive::Archive>,
    projection: Option<JoinHandle<()>>,
    archive_thread: Option<JoinHandle<()>>,
}

/// A projection whose checkpoint lies past the log's end has folded events the log no
/// longer holds: acknowledged events were lost (a disk that zeroed the log's tail, a
/// data folder put back from an older copy). The service does not start on that: the
/// error names each such projection and both positions, and the ways on (put the log
/// back, or rebuild each projection from the log as it is, which forgets the lost
/// events). The checkpoints are asked within a few seconds; a database or store that
/// does not answer by then is passed over here (its projection then reports the same
/// at `/readyz` once it can read its checkpoint). On a shared log, a checkpoint past
/// this node's copy is lost only if the copy does not reach it within 10 s.
async fn refuse_lost_events(
    config: &Config,
    log: &dyn EventLog,
    archive: Option<&crate::projections::archive::Archive>,
) -> anyhow::Result<()> {
    use crate::projections::ProjectionName;
    const ASK_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
    let end = log.durable_end();
    let mut ahead: Vec<(ProjectionName, u64)> = Vec::new();
    if let Some(url) = &config.database_url {
        let asked = tokio::time::timeout(ASK_WITHIN, async {
            let opts: PgConnectOptions = url.parse()?;
            // What retrying cannot fix (a wrong password, no such database) stops the
            // start; the rest is retried by the projections.
            match crate::projections::db::probe(&opts).await {
                Err(e) if crate::projections::db::is_permanent(&e) => {
                    return Ok(Err(e.to_string()))
                }
                Err(e) => return Err(e.into()),
                Ok(conn) => {
                    use sqlx::Connection;
                    conn.close().await.ok();
                }
            }
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ASK_WITHIN)
                .connect_with(opts)
                .await?;
            // What retrying cannot fix stops the start (the projections would retry it
            // for ever); the rest is checked again by each projection when it starts.
            match crate::projections::db::refuse_newer_schema(&pool).await {
                Err(crate::projections::ProjectionError::NewerSchema(e)) => {
                    pool.close().await;
                    return Ok(Err(e.to_string()));
                }
                Err(e) => return Err(e.into()),
                Ok(()) => {}
            }
            let mut found = Vec::new();
            for name in [ProjectionName::Occupancy, ProjectionName::Features] {
                // A database not yet migrated has no checkpoints at all.
                match crate::projections::db::read_checkpoint(&pool, name).await {
                    Ok(Some(cp)) if cp.log_id == log.log_id() => found.push((name, cp.next_offset)),
                    _ => {}
                }
            }
            pool.close().await;
            anyhow::Ok(Ok(found))
        })
        .await;
        match asked {
            Ok(Ok(Ok(found))) => ahead.extend(found.into_iter().filter(|(_, cp)| *cp > end)),
            Ok(Ok(Err(fatal))) => anyhow::bail!("{fatal}; retrying cannot fix this, so parkade does not start"),
            // Not reachable: the projections say why (once) as they retry.
            Ok(Err(e))
                if matches!(
                    e.downcast_ref::<crate::projections::ProjectionError>(),
                    Some(crate::projections::ProjectionError::Connect { .. })
                ) =>
            {
                tracing::warn!("PostgreSQL is not reachable at start; each projection checks its checkpoint once it connects")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not read the projections' checkpoints at start; each projection checks its own when it starts"),
            Err(_) => tracing::warn!("the database did not answer within 5 s at start; each projection checks its checkpoint when it starts"),
        }
    }
    if let Some(archive) = archive {
        match tokio::time::timeout(ASK_WITHIN, archive.archived_end()).await {
            Ok(Ok(Some(next))) if next > end => ahead.push((ProjectionName::Archive, next)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not read the archive's progress at start; it checks it when it starts"),
            Err(_) => tracing::warn!("the archive's store did not answer within 5 s at start; it checks its progress when it starts"),
        }
    }
    if log.shared() {
        // Other nodes go on appending and folding: a checkpoint past this node's copy
        // is lost only if the copy cannot reach it (the stream does not hold it).
        let mut lost = Vec::new();
        for (name, next) in ahead {
            let reached =
                tokio::time::timeout(std::time::Duration::from_secs(10), log.wait_durable(next))
                    .await;
            if !matches!(reached, Ok(Ok(()))) {
                lost.push((name, next));
            }
        }
        ahead = lost;
    }
    if ahead.is_empty() {
        return Ok(());
    }
    let end = log.durable_end();
    let names: Vec<String> = ahead
        .iter()
        .map(|(name, next)| format!("{name} has folded up to offset {next}"))
        .collect();
    let rebuild: Vec<String> = ahead
        .iter()
        .map(|(name, _)| format!("`parkade replay --projection {name}`"))
        .collect();
    anyhow::bail!(
        "acknowledged events are missing from the log: it ends at offset {end}, but {}. parkade does not start on a log that lost events. Put the log back from a copy that holds them; or, to go on without them, rebuild each from the log as it is ({}), which forgets them, and start again",
        names.join(", and "),
        rebuild.join(", ")
    )
}

/// Start the PostgreSQL projections (when a database is configured) and the archive
/// (when given: it is enabled).
async fn start_read_models(
    config: &Config,
    hooks: &Hooks,
    log: &Arc<dyn EventLog>,
    archive: Option<crate::projections::archive::Archive>,
    board: &StatusBoard,
    shutdown: &watch::Sender<bool>,
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
            .then(|| Store::Postgres(pool.clone()));
        read.db = Some(pool);
        read.projection = Some(spawn_projection(
            url.clone(),
            log.clone(),
            (board.clone(), forecast_now.clone()),
            config,
            hooks,
            shutdown.subscribe(),
        )?);
    } else {
        tracing::info!("no PARKADE_DATABASE_URL: running without the PostgreSQL read model; the features are kept in memory");
        let features = MemoryFeatures::new(MEMORY_FEATURE_DAYS);
        let forecasts = config.forecast.enabled.then(|| Store::Memory {
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
            shutdown.subscribe(),
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
            shutdown.subscribe(),
        )?);
        read.archive = Some(archive);
    }
    Ok(read)
}

/// Bind and start the HTTP server with its middleware; its port.
fn serve_http(
    config: &Config,
    state: ApiState,
    auth: api::auth::Auth,
    listener: TcpListener,
) -> anyhow::Result<(actix_web::dev::Server, u16)> {
    let counting = state.connections.clone();
    let max_connections = counting.max_total();
    let state = web::Data::new(state);
    let cors_origins = config.auth.cors_origins.clone();
    let hosts = api::auth::Hosts::new(&config.auth.allowed_hosts, config.bind);
    if hosts.0.is_none() {
        tracing::warn!(
            "the Host header is not checked: set [auth] allowed_hosts to the names clients use"
        );
    }
    let hosts = web::Data::new(hosts);
    let origins = web::Data::new(api::auth::Origins::new(&config.auth.cors_origins));
    let closed = !auth.is_open();
    let auth_data = web::Data::new(auth);
    let port = listener.local_addr()?.port();
    // One line per request only when asked for (RUST_LOG=parkade::http=info): at
    // tens of thousands of requests a second the wrapper alone costs throughput.
    let log_requests = tracing::enabled!(target: "parkade::http", tracing::Level::INFO);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(auth_data.clone())
            .app_data(hosts.clone())
            .app_data(origins.clone())
            // Without tokens there is nothing to check: no middleware in the way.
            .wrap(actix_web::middleware::Condition::new(
                closed,
                actix_web::middleware::from_fn(api::auth::authorize),
            ))
            // An unknown Host is refused before anything else...
            .wrap(actix_web::middleware::from_fn(api::auth::check_host))
            // ...but a connection over a cap is refused before that.
            .wrap(actix_web::middleware::from_fn(api::limits::refuse_over_cap))
            .wrap(actix_web::middleware::Condition::new(
                !cors_origins.is_empty(),
                api::auth::cors(&cors_origins),
            ))
            .wrap(actix_web::middleware::from_fn(api::observe))
            // The path, never the query string: it may hold an access token.
            .wrap(actix_web::middleware::Condition::new(
                log_requests,
                actix_web::middleware::Logger::new("%{method}xi %U %s %Dms")
                    .custom_request_replace("method", |req| req.method().to_string())
                    .log_target("parkade::http"),
            ))
            .configure(api::routes)
    })
    .on_connect(move |conn, data| counting.on_connect(conn, data))
    .workers(config.http_workers)
    // A backstop under our own count: connections past the caps are still taken,
    // to be told why, up to twice the cap (beyond that they wait in the backlog).
    .max_connections((2 * max_connections).div_ceil(config.http_workers))
    .backlog(2048)
    // Replies and websocket frames are small and wanted now: without this, Nagle's
    // algorithm holds a frame until the client acknowledges the previous one, which
    // a client's delayed acknowledgement can put off for tens of milliseconds.
    .tcp_nodelay(true)
    // Stop signals are ours (`stop_on_signals`): websockets are closed first, else the
    // graceful stop would wait out its timeout for them.
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, port))
}

/// On SIGINT or SIGTERM close the websockets and stop gracefully; on a second one, at once.
fn stop_on_signals(
    handle: actix_web::dev::ServerHandle,
    live: crate::live::Live,
    notifier: Option<Notifier>,
) {
    actix_web::rt::spawn(async move {
        stop_signal().await;
        if let Some(n) = &notifier {
            n.stopping();
        }
        tracing::info!(
            "stop signal: closing websockets and finishing requests (again to stop at once)"
        );
        live.close_all();
        actix_web::rt::spawn(handle.stop(true));
        stop_signal().await;
        tracing::warn!("second stop signal: stopping without waiting for open requests");
        handle.stop(false).await;
    });
}

/// Forget idle tokens' rate state once a minute, so the limiter's memory follows the
/// tokens in use.
async fn tidy_rates(rate: api::limits::IngestRate, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => rate.tidy(),
            _ = stop.changed() => return,
        }
    }
}

/// Make room for the connections `[limits] max_connections` asks for (0: the default
/// number, or fewer when the hard open-files limit is lower) beside the log's and the
/// archive's files: raise the soft open-files limit up to the hard one if needed, and
/// refuse to start when a number set explicitly does not fit, rather than fail to
/// accept at an unknown point. Returns how many connections the server takes.
fn fit_open_files(max_connections: usize) -> anyhow::Result<usize> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    // The log's segments, the archive, PostgreSQL, the runtime's own.
    const RESERVE: u64 = 256;
    let asked = match max_connections {
        0 => crate::config::DEFAULT_MAX_CONNECTIONS,
        n => n,
    };
    let mut lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let mut taken = asked;
    let want = asked as u64 + RESERVE;
    if hard < want {
        if max_connections > 0 {
            anyhow::bail!(
                "[limits] max_connections = {max_connections} needs {want} open files, but the hard limit is {hard}: lower max_connections or raise LimitNOFILE"
            );
        }
        taken = usize::try_from(hard.saturating_sub(RESERVE))
            .unwrap_or(usize::MAX)
            .max(16);
        tracing::warn!(
            hard_limit = hard,
            connections = taken,
            "the open-files hard limit holds fewer than the default {asked} connections; taking {taken} (raise LimitNOFILE, or set [limits] max_connections)"
        );
    }
    let want = taken as u64 + RESERVE;
    if soft < want {
        lim.current = Some(want.min(hard));
        setrlimit(Resource::Nofile, lim).context("raising the open-files limit")?;
        tracing::info!(
            from = soft,
            to = want,
            "raised the open-files limit to fit [limits] max_connections"
        );
    }
    Ok(taken)
}

/// Have the allocator give large buffers (request bodies up to `[limits]
/// max_body_bytes`) back to the OS when they are freed. glibc raises its mmap threshold
/// each time such a buffer is freed, after which the next ones come from the heap and
/// stay resident after their requests: a burst of large bodies would keep its memory.
/// A fixed threshold keeps every buffer above 256 KiB in its own mapping.
fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before the server
        // starts its threads' work, with documented parameters and values.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
        if ok != 1 {
            tracing::warn!("could not fix the allocator's mmap threshold; large request bodies may stay resident after they are freed");
        }
    }
}

/// Give the memory of request bodies back to the OS once a burst of them is over: every
/// 200 ms, when bodies held more than 16 MiB at some point since the last trim and hold
/// little now, ask the allocator to return its free pages (glibc's `malloc_trim`: the
/// connections' read buffers of such a burst are many small blocks, below the mmap
/// threshold that returns large ones at once).
async fn trim_after_bodies(bodies: api::limits::BodyBudget, mut stop: watch::Receiver<bool>) {
    const BURST: usize = 16 << 20;
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
        let now = bodies.in_use();
        peak = peak.max(now);
        if peak > BURST && now < BURST / 4 {
            peak = 0;
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only gives free pages of the allocator back to the OS.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Run the PostgreSQL projections (occupancy, features, the features lake, the
/// predictor) on their own thread and runtime, so their log reads and database round
/// trips never share a thread with request handling; each under its own supervision
/// (`projections::supervisor`), so that one failing or panicking does not stop the others.
fn spawn_projection(
    url: String,
    log: Arc<dyn EventLog>,
    (board, forecast_now): (StatusBoard, Arc<tokio::sync::Notify>),
    config: &Config,
    hooks: &Hooks,
    shutdown: watch::Receiver<bool>,
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
            projection: Occupancy::new(fault),
        };
        let features = occupancy.driving(Features::new(lateness_secs));
        let predictor = forecast
            .map(|f| Predictor::new(Store::Postgres(pool.clone()), &f, tz, &board, forecast_now));
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
async fn connect_until_stopped(
    url: &str,
    name: ProjectionName,
    board: &StatusBoard,
    max_backoff: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Option<sqlx::PgPool> {
    let mut backoff = Duration::from_millis(200);
    // Each cause said once, not at every retry.
    let mut said = String::new();
    loop {
        // A stop does not wait for an attempt to end.
        let attempt = tokio::select! {
            a = db::connect(url) => a,
            _ = shutdown.changed() => return None,
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
                    _ = tokio::time::sleep(backoff) => {},
                    _ = shutdown.changed() => return None,
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

/// Supervise a runner whose `run` returns once stopped: each restart runs a fresh
/// clone of it, and a panic is reported like an error.
async fn supervised<R, Fut>(
    (name, board, max_backoff, shutdown): (
        ProjectionName,
        StatusBoard,
        Duration,
        watch::Receiver<bool>,
    ),
    runner: R,
    run: impl Fn(R, watch::Receiver<bool>) -> Fut,
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
const MEMORY_FEATURE_DAYS: u32 = 400;

/// Fold the features into memory on a thread of their own, under supervision (a
/// restart folds the log again from offset zero).
fn spawn_memory_features(
    features: MemoryFeatures,
    forecasts: Option<Store>,
    log: Arc<dyn EventLog>,
    (board, forecast_now): (StatusBoard, Arc<tokio::sync::Notify>),
    config: &Config,
    shutdown: watch::Receiver<bool>,
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
fn spawn_archive(
    archive: crate::projections::archive::Archive,
    log: Arc<dyn EventLog>,
    board: StatusBoard,
    config: &Config,
    shutdown: watch::Receiver<bool>,
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
fn lake_leased(shared_log: bool, store: &crate::projections::archive::Store) -> bool {
    shared_log && matches!(store, crate::projections::archive::Store::S3(_))
}

/// Run a background task on a thread with its own single-threaded runtime, so its
/// log reads and remote round trips never share a thread with request handling.
fn on_own_thread(
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

/// The tokens of `[auth] tokens_file`, else of `PARKADE_TOKENS`, else none; refuses to
/// serve with no tokens on an address other than loopback unless `[auth] allow_open`.
fn load_auth(config: &Config) -> anyhow::Result<api::auth::Auth> {
    use api::auth::{Auth, TokenSource};
    let source = match (&config.auth.tokens_file, std::env::var("PARKADE_TOKENS")) {
        (Some(path), _) => TokenSource::File(path.clone()),
        (None, Ok(text)) if !text.trim().is_empty() => TokenSource::Inline(text),
        _ => TokenSource::None,
    };
    let auth = Auth::load(source, config.auth.reads_open).context("loading the tokens")?;
    if auth.is_open() && !config.bind.ip().is_loopback() && !config.auth.allow_open {
        anyhow::bail!(
            "refusing to serve on {} with no tokens: anyone who reaches it could post events, \
             change lots and start rebuilds. Create tokens (`parkade token new --name NAME \
             --role admin`, then [auth] tokens_file), or set [auth] allow_open = true to \
             serve open on purpose",
            config.bind
        );
    }
    if auth.is_open() {
        tracing::warn!("no tokens configured: every route is open (loopback only)");
    } else {
        tracing::info!(
            tokens = auth.count(),
            reads_open = auth.reads_open,
            "access control on"
        );
    }
    Ok(auth)
}
