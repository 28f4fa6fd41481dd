//! `parkade import` without a server: the log opened here (refused with a clear error
//! while a server holds it), the lots rebuilt from it, rows sent through the lot actors,
//! and afterwards every configured read model (PostgreSQL, the archive, the features'
//! lake) caught up, so a later `serve` starts current.

use std::sync::Arc;

use anyhow::Context;

use super::LocalSink;
use crate::config::Config;
use crate::log::{EventLog, FileLog, LogError, LogOptions};
use crate::projections::occupancy::Occupancy;
use crate::projections::{catch_up, db, features};

/// The log and the sink of an offline import.
pub struct Offline {
    log: Arc<FileLog>,
    sink: LocalSink,
}

impl Offline {
    /// Open the data directory's log and rebuild its lots.
    /// Must be called inside a running actix system (the lots are actors).
    pub fn open(config: &Config) -> anyhow::Result<Offline> {
        if config.log.backend == crate::config::LogBackend::Jetstream {
            anyhow::bail!(
                "the log is the JetStream stream {}, which running servers append to: import through one of them with --url http://HOST:PORT",
                config.log.stream
            );
        }
        let dir = config.log_dir();
        let opts = LogOptions {
            segment_bytes: config.log.segment_bytes,
            ..LogOptions::default()
        };
        let log = match FileLog::open(&dir, opts) {
            Err(LogError::Locked(d)) => anyhow::bail!(
                "the event log in {} is in use by a running parkade server; import through it with --url http://HOST:PORT",
                d.display()
            ),
            other => Arc::new(
                other.with_context(|| format!("opening the event log in {}", dir.display()))?,
            ),
        };
        let dyn_log: Arc<dyn EventLog> = log.clone();
        let lots = crate::actors::Lots::recover(
            dyn_log.clone(),
            crate::actors::LotOptions {
                dedupe_window: config.lots.dedupe_window,
                max_future_micros: config.limits.max_future_secs.saturating_mul(1_000_000),
                max_lots: config.limits.max_lots,
                ..Default::default()
            },
        )?;
        let sink = LocalSink::new(lots, dyn_log.as_ref())?;
        Ok(Offline { log, sink })
    }

    /// Where rows go.
    pub fn sink(&mut self) -> &mut LocalSink {
        &mut self.sink
    }

    /// Bring every configured read model up to the log's end; a line for each.
    pub async fn catch_up(&self, config: &Config) -> anyhow::Result<Vec<String>> {
        let mut said = Vec::new();
        let pool = match &config.database_url {
            Some(url) => Some(db::connect(url).await?),
            None => None,
        };
        if let Some(pool) = &pool {
            let (log, batch) = (self.log.clone(), config.projections.batch_events);
            let at = catch_up(pool, log.clone(), Occupancy::default(), batch).await?;
            said.push(format!("occupancy read model caught up to offset {at}"));
            let lateness = config.projections.features_lateness_secs;
            let at = catch_up(pool, log, features::Features::new(lateness), batch).await?;
            said.push(format!("features caught up to offset {at}"));
        }
        if config.archive.enabled {
            let archive = crate::projections::archive::Archive::from_config(
                &config.archive,
                &config.data_dir,
            )
            .await;
            let at = archive.catch_up(self.log.clone()).await?;
            said.push(format!(
                "archive caught up to offset {at} in {}",
                archive.store().describe()
            ));
            if let Some(pool) = &pool {
                let days = features::lake::export_dirty(pool, archive.store())
                    .await
                    .map_err(anyhow::Error::msg)?;
                said.push(format!("features of {days} days written to the lake"));
            }
        }
        Ok(said)
    }

    /// Flush and release the log.
    pub fn close(self) {
        self.log.close();
    }
}
