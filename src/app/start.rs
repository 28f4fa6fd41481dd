//! The log side of the start: the log opened (and recovered), the lots rebuilt from it,
//! and a start refused when projections hold events the log no longer has.

use std::sync::Arc;

use actix::Arbiter;
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{Hooks, Shutdown};
use crate::actors::{LotOptions, Lots};
use crate::config::{Config, LogBackend};
use crate::log::jetstream::JetStreamLog;
use crate::log::{EventLog, FileLog, LogError, LogOptions};
use crate::projections::ProjectionName;

/// Open the configured log (read-write), saying what recovery found. On JetStream,
/// also the thread the log's client runs on, for the lots to run on too.
pub(super) async fn open_log(
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
        truncated_bytes = rec.truncated_bytes, lost_events = rec.lost_events, "event log open"
    );
    Ok((log, None))
}

/// The archive, when it is enabled; made once, so that the start's check of lost events
/// reads its progress before it runs.
pub(super) async fn open_archive(config: &Config) -> Option<crate::projections::archive::Archive> {
    match config.archive.enabled {
        true => Some(
            crate::projections::archive::Archive::from_config(&config.archive, &config.data_dir)
                .await,
        ),
        false => None,
    }
}

/// On a log other processes append to: each lot follows what they wrote, until the stop.
pub(super) fn follow_shared_log(lots: &Lots, shutdown: &Shutdown) {
    let follower = lots.clone().follow(shutdown.token.clone());
    shutdown.spawn(async move {
        if let Err(e) = follower.await {
            tracing::error!(error = %e, "the lots stopped following the shared log");
        }
    });
}

/// The live fan-out, on its own thread, from the state the lots were rebuilt to.
pub(super) fn start_live(
    config: &Config,
    lots: &Lots,
    log: &Arc<dyn EventLog>,
    shutdown: &Shutdown,
) -> anyhow::Result<(crate::live::Live, std::thread::JoinHandle<()>)> {
    let live = crate::live::Live::new(lots.views(), log.durable_end(), config.live.buffer_messages);
    let thread = super::read_models::on_own_thread(
        "parkade-live",
        live.clone().follow(log.clone(), shutdown.token.clone()),
    )?;
    Ok((live, thread))
}

/// Every lot rebuilt from the log, each on its actor.
pub(super) fn recover_lots(
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

/// A projection whose checkpoint lies past the log's end has folded events the log no
/// longer holds: acknowledged events were lost (a disk that zeroed the log's tail, a
/// data folder put back from an older copy). The service does not start on that: the
/// error names each such projection and both positions, and the ways on (put the log
/// back, or rebuild each projection from the log as it is, which forgets the lost
/// events). The checkpoints are asked within a few seconds; a database or store that
/// does not answer by then is passed over here (its projection then reports the same
/// at `/readyz` once it can read its checkpoint). On a shared log, a checkpoint past
/// this node's copy is lost only if the copy does not reach it within 10 s.
pub(super) async fn refuse_lost_events(
    config: &Config,
    log: &dyn EventLog,
    archive: Option<&crate::projections::archive::Archive>,
) -> anyhow::Result<()> {
    let end = log.durable_end();
    let mut ahead: Vec<(ProjectionName, u64)> = Vec::new();
    if let Some(url) = &config.database_url {
        ahead.extend(checkpoints_past(url, log, end).await?);
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

/// How long the start asks a projection's store for its checkpoint.
const ASK_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The PostgreSQL projections whose checkpoint on `log` lies past `end`. An error only
/// for what retrying cannot fix (a wrong password, no such database, a newer schema);
/// a database that cannot be asked now is passed over, with a warning.
async fn checkpoints_past(
    url: &str,
    log: &dyn EventLog,
    end: u64,
) -> anyhow::Result<Vec<(ProjectionName, u64)>> {
    let asked = tokio::time::timeout(ASK_WITHIN, async {
        let opts: PgConnectOptions = url.parse()?;
        // What retrying cannot fix (a wrong password, no such database) stops the
        // start; the rest is retried by the projections.
        match crate::projections::db::probe(&opts).await {
            Err(e) if crate::projections::db::is_permanent(&e) => return Ok(Err(e.to_string())),
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
        Ok(Ok(Ok(found))) => return Ok(found.into_iter().filter(|(_, cp)| *cp > end).collect()),
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
    Ok(Vec::new())
}
