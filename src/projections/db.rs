//! PostgreSQL plumbing shared by the projections.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::ProjectionError;

/// Connect and apply the migrations in `migrations/`.
pub async fn connect(url: &str) -> Result<PgPool, ProjectionError> {
    let opts: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(opts)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// A coarse class of a database error, from its SQLSTATE (never its message text).
pub fn classify(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(c) if c.starts_with("08") => "connection",
            Some("40001") => "serialization_failure",
            Some("40P01") => "deadlock",
            Some("57P01" | "57P02" | "57P03") => "server_shutdown",
            Some("53300") => "too_many_connections",
            Some("3D000") => "no_such_database",
            Some("28P01" | "28000") => "authentication",
            Some(c) if c.starts_with("23") => "constraint_violation",
            Some(c) if c.starts_with("42") => "schema",
            _ => "database",
        },
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => "connection",
        sqlx::Error::Configuration(_) => "configuration",
        sqlx::Error::Tls(_) => "tls",
        _ => "other",
    }
}
