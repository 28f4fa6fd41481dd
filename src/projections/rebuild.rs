//! One rebuild for every rebuildable projection, for `parkade replay` and
//! `POST /v1/admin/replay` alike: the projection is named, its store comes from what
//! the caller has, and the figures come back in one shape.

use std::sync::Arc;

use sqlx::PgPool;

use super::archive::Archive;
use super::{archive, features, occupancy, ProjectionError, ProjectionName};
use crate::log::EventLog;

/// What a rebuild did, whichever projection it was.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RebuildStats {
    /// Events folded: the whole durable log when the rebuild began.
    pub events: u64,
    /// What it wrote, in `unit`s.
    pub written: u64,
    /// `lots` (occupancy), `rows` (features, 15 minutes each) or `files` (archive).
    pub unit: String,
    /// Events too late to fold (features; 0 for the others).
    pub too_late: u64,
    /// From start to swap, in seconds.
    pub seconds: f64,
    /// The archive's new generation (the others swap a table in).
    pub generation: Option<String>,
}

impl RebuildStats {
    /// Events folded per second of the whole rebuild.
    pub fn events_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The stores a rebuild may write: what this process has.
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    pub db: Option<&'a PgPool>,
    pub archive: Option<&'a Archive>,
    /// `[projections] features_lateness_secs`: the features' window for late events.
    pub features_lateness_secs: u64,
}

/// Why a rebuild did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Its store is not configured here.
    #[error("{0}")]
    NotConfigured(String),
    /// Another rebuild of it holds the rebuild lock.
    #[error(transparent)]
    Running(ProjectionError),
    #[error(transparent)]
    Failed(anyhow::Error),
}

impl From<ProjectionError> for RebuildError {
    fn from(e: ProjectionError) -> RebuildError {
        match e {
            e @ ProjectionError::RebuildRunning(_) => RebuildError::Running(e),
            e => RebuildError::Failed(e.into()),
        }
    }
}

/// Rebuild `name` from offset zero of `log` into `stores`; `progress(done, total)` as
/// the fold advances (occupancy and the archive).
pub async fn rebuild(
    name: ProjectionName,
    log: Arc<dyn EventLog>,
    stores: Stores<'_>,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<RebuildStats, RebuildError> {
    let db = || {
        stores.db.ok_or_else(|| {
            RebuildError::NotConfigured(format!(
                "no database is configured (PARKADE_DATABASE_URL), so there is no {name} projection to rebuild"
            ))
        })
    };
    match name {
        ProjectionName::Archive => {
            let a = stores.archive.ok_or_else(|| {
                RebuildError::NotConfigured(
                    "the archive is disabled ([archive] enabled = false)".into(),
                )
            })?;
            a.rebuild(log, progress)
                .await
                .map_err(|e: archive::ArchiveError| RebuildError::Failed(e.into()))
        }
        ProjectionName::Features => {
            Ok(features::rebuild(db()?, log, stores.features_lateness_secs).await?)
        }
        ProjectionName::Occupancy => Ok(occupancy::rebuild(db()?, log, progress).await?),
        other => Err(RebuildError::NotConfigured(format!(
            "{other} is not rebuilt on its own (rebuildable: occupancy, features, archive)"
        ))),
    }
}
