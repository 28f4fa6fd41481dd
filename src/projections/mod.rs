//! Projections: read models folded from the log.
//!
//! A projection reads the log from its checkpoint, folds a batch, and writes its rows
//! and its new checkpoint in one transaction, so a crash never double-counts or skips.
//! It never talks to the lot actors. A failing projection stops where it is, says so
//! (log line, `/readyz`, `GET /v1/admin/projections`) and retries with backoff; it never
//! skips an event. Every projection can be rebuilt from offset zero (`parkade replay`)
//! and then holds what the live run holds.
//!
//! | file | what |
//! |---|---|
//! | `archive/` | the Parquet lake (local folder or S3): flushes, resume, rebuild into a new generation |
//! | `features/` | 15-minute features per lot by event time (`lot_features_15m`), late events, rebuild |
//! | `lease.rs` | which of several processes on one database runs a projection; lake writes bounded in time |
//! | `db.rs` | connecting to PostgreSQL, migrations, SQLSTATE classification |
//! | `occupancy.rs` | the `current_lot_occupancy` read model: batch fold, write, rebuild |
//! | `rebuild.rs` | one `rebuild(name, ...)` for `parkade replay` and `POST /v1/admin/replay`, one `RebuildStats` |
//! | `runner.rs` | the loop that keeps a projection caught up, with retries and status |
//! | `verify.rs` | an independent fold of the log compared with the read model |

pub mod archive;
pub mod db;
pub mod features;
pub mod lease;
mod name;
pub mod occupancy;
mod rebuild;
mod runner;
pub mod supervisor;
pub mod verify;

pub use name::ProjectionName;
pub use rebuild::{rebuild, RebuildError, RebuildStats, Stores};
pub use runner::{
    catch_up, FaultPoint, Projection, ProjectionState, ProjectionStatus, Runner, StatusBoard,
};

/// Errors of the projections.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database error ({kind}): {source}")]
    Db {
        kind: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply the database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    NewerSchema(#[from] db::NewerSchema),
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect {
        target: String,
        /// [`db::classify`]'s class of the cause.
        kind: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error("the read model was built from another log (log id {found}, this log is {expected}); rebuild it with `parkade replay --projection occupancy`")]
    OtherLog {
        found: uuid::Uuid,
        expected: uuid::Uuid,
    },
    #[error("the read model is ahead of the log (checkpoint {checkpoint}, log ends at {log_end}); was the data directory replaced? Rebuild it with `parkade replay --projection occupancy`")]
    AheadOfLog { checkpoint: u64, log_end: u64 },
    #[error("injected fault: {0}")]
    Injected(&'static str),
    #[error("unknown projection {0:?} (known: occupancy, archive)")]
    Unknown(String),
    #[error("stopped by a stop signal")]
    Stopped,
    #[error("a rebuild of the {0} projection is already running (by this server or a `parkade replay` beside it); wait for it to finish")]
    RebuildRunning(ProjectionName),
    #[error("event at offset {offset} (lot {lot}) cannot be stored in PostgreSQL ({reason}); the projection stops here rather than skip it")]
    Unstorable {
        offset: u64,
        lot: String,
        reason: String,
    },
}

impl From<sqlx::Error> for ProjectionError {
    fn from(source: sqlx::Error) -> Self {
        ProjectionError::Db {
            kind: db::classify(&source),
            source,
        }
    }
}
