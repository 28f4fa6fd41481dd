//! PostgreSQL plumbing shared by the projections.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{ProjectionError, ProjectionName};

/// How long one attempt to connect may take.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where `opts` connects: host, port and database, never the user or password.
pub fn target(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("(the user's database)")
    )
}

/// One connection to `opts`, within 5 s: its error names the cause
/// (refused, unknown host, authentication, no such database) and where, where a pool's
/// would only say it timed out.
pub async fn probe(opts: &PgConnectOptions) -> Result<sqlx::PgConnection, ProjectionError> {
    use sqlx::Connection;
    let failed = |kind: &'static str, reason: String| ProjectionError::Connect {
        target: target(opts),
        kind,
        reason,
    };
    match tokio::time::timeout(CONNECT_WAIT, sqlx::PgConnection::connect_with(opts)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(failed(classify(&e), e.to_string())),
        Err(_) => Err(failed(
            "connection",
            format!("no answer within {} s", CONNECT_WAIT.as_secs()),
        )),
    }
}

/// Whether a failure to connect is one retrying cannot fix (a wrong password, a
/// database that does not exist, a bad connection string).
pub fn is_permanent(e: &ProjectionError) -> bool {
    matches!(
        e,
        ProjectionError::NewerSchema(_)
            | ProjectionError::Connect {
                kind: "authentication" | "no_such_database" | "configuration",
                ..
            }
    )
}

/// Connect and apply the migrations in `migrations/`.
pub async fn connect(url: &str) -> Result<PgPool, ProjectionError> {
    use sqlx::Connection;
    let opts: PgConnectOptions = url.parse()?;
    probe(&opts).await?.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(opts)
        .await?;
    refuse_newer_schema(&pool).await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// The newest migration this build knows.
pub fn known_schema() -> i64 {
    sqlx::migrate!("./migrations")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// The database was migrated by a newer parkade: retrying cannot fix it.
#[derive(Debug, thiserror::Error)]
#[error("the database was migrated by a newer parkade (its newest migration is {applied}, this build knows up to {known}): upgrade parkade, or point it at another database")]
pub struct NewerSchema {
    pub applied: i64,
    pub known: i64,
}

/// Refuse a database holding a migration newer than this build's ([`NewerSchema`]);
/// a database never migrated (no `_sqlx_migrations`) is fine.
pub async fn refuse_newer_schema(pool: &PgPool) -> Result<(), ProjectionError> {
    let newest: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await;
    let applied = match newest {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(()),
        // undefined_table: never migrated.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let known = known_schema();
    if applied > known {
        return Err(ProjectionError::NewerSchema(NewerSchema { applied, known }));
    }
    Ok(())
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

/// A projection checkpoint: the next offset to fold and the log it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub log_id: uuid::Uuid,
    pub next_offset: u64,
}

/// Read projection `name`'s checkpoint, creating it (at offset 0 of `log_id`) when missing.
pub async fn ensure_checkpoint(
    pool: &PgPool,
    name: ProjectionName,
    log_id: uuid::Uuid,
) -> Result<Checkpoint, ProjectionError> {
    sqlx::query("INSERT INTO projection_checkpoints (projection, log_id, next_offset) VALUES ($1, $2, 0) ON CONFLICT (projection) DO NOTHING")
        .bind(name.as_str())
        .bind(log_id)
        .execute(pool)
        .await?;
    let cp = read_checkpoint(pool, name)
        .await?
        .expect("checkpoint row was just ensured");
    if cp.log_id != log_id {
        return Err(ProjectionError::OtherLog {
            found: cp.log_id,
            expected: log_id,
        });
    }
    Ok(cp)
}

/// Projection `name`'s checkpoint, if it has one.
pub async fn read_checkpoint<'e, E>(
    executor: E,
    name: ProjectionName,
) -> Result<Option<Checkpoint>, ProjectionError>
where
    E: sqlx::PgExecutor<'e>,
{
    let row: Option<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT log_id, next_offset FROM projection_checkpoints WHERE projection = $1",
    )
    .bind(name.as_str())
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|(log_id, next)| Checkpoint {
        log_id,
        next_offset: u64::try_from(next).unwrap_or(0),
    }))
}

/// Lock projection `name`'s checkpoint in `tx`. `Ok(None)` when it is at `from` in
/// `log_id` (the batch may be written); `Ok(Some(next))` when a rebuild moved it.
pub async fn lock_checkpoint(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: ProjectionName,
    log_id: uuid::Uuid,
    from: u64,
) -> Result<Option<u64>, ProjectionError> {
    let row: Option<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT log_id, next_offset FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(name.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some((found_log, next)) = row else {
        return Ok(Some(0));
    };
    if found_log != log_id {
        return Err(ProjectionError::OtherLog {
            found: found_log,
            expected: log_id,
        });
    }
    let next = u64::try_from(next).unwrap_or(0);
    Ok((next != from).then_some(next))
}

/// Move projection `name`'s checkpoint to `to` in `tx`.
pub async fn set_checkpoint(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: ProjectionName,
    log_id: uuid::Uuid,
    to: u64,
) -> Result<(), ProjectionError> {
    sqlx::query("INSERT INTO projection_checkpoints (projection, log_id, next_offset) VALUES ($1, $2, $3) ON CONFLICT (projection) DO UPDATE SET log_id = $2, next_offset = $3, updated_at = now()")
        .bind(name.as_str())
        .bind(log_id)
        .bind(i64::try_from(to).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The one way a projection's table is rebuilt from offset zero, beside the live one:
/// hold the projection's rebuild lock, fill a side table (`<live>_rebuild`, made
/// `LIKE live INCLUDING ALL`), then swap it in and move the checkpoint to the end of
/// the fold in one transaction. Readers see the old table until the swap and the new
/// one after it; a batch of the running projection that raced the swap finds the
/// checkpoint moved and resumes there.
pub struct Rebuild {
    lock: RebuildLock,
    name: ProjectionName,
    live: &'static str,
    side: String,
}

impl Rebuild {
    /// Take projection `name`'s rebuild lock (refused at once while another rebuild
    /// holds it) for a rebuild of table `live`.
    pub async fn start(
        pool: &PgPool,
        name: ProjectionName,
        live: &'static str,
    ) -> Result<Rebuild, ProjectionError> {
        Ok(Rebuild {
            lock: lock_rebuild(pool, name).await?,
            name,
            live,
            side: format!("{live}_rebuild"),
        })
    }

    /// Create the empty side table (dropping one a failed rebuild left) and return its
    /// name, for the caller to fill.
    pub async fn side_table(&self, pool: &PgPool) -> Result<&str, ProjectionError> {
        let side = &self.side;
        sqlx::query(&format!("DROP TABLE IF EXISTS {side}"))
            .execute(pool)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE {side} (LIKE {} INCLUDING ALL)",
            self.live
        ))
        .execute(pool)
        .await?;
        Ok(side)
    }

    /// Swap the filled side table in and move the checkpoint to `end` of `log_id`, in
    /// one transaction that also runs `also` (statements that must see the new table),
    /// then release the lock.
    pub async fn swap_in(
        self,
        pool: &PgPool,
        log_id: uuid::Uuid,
        end: u64,
        also: &[&str],
    ) -> Result<(), ProjectionError> {
        let (live, side) = (self.live, &self.side);
        let mut tx = pool.begin().await?;
        // The checkpoint row is locked first, so a running batch either committed
        // before the swap or sees the moved checkpoint after it.
        sqlx::query("INSERT INTO projection_checkpoints (projection, log_id, next_offset) VALUES ($1, $2, 0) ON CONFLICT (projection) DO NOTHING")
            .bind(self.name.as_str())
            .bind(log_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "SELECT next_offset FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
        )
        .bind(self.name.as_str())
        .execute(&mut *tx)
        .await?;
        for statement in [
            format!("DROP TABLE {live}"),
            format!("ALTER TABLE {side} RENAME TO {live}"),
            format!("ALTER INDEX {side}_pkey RENAME TO {live}_pkey"),
        ] {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        set_checkpoint(&mut tx, self.name, log_id, end).await?;
        for statement in also {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.lock.release().await;
        Ok(())
    }
}

/// Projection `name`'s rebuild lock: a PostgreSQL session-level advisory lock held on
/// one connection for the whole rebuild, so two rebuilds of one projection (an HTTP
/// replay and a `parkade replay` beside it, or two servers on one database) never run
/// at once and never share the side table. A session that dies releases it.
pub struct RebuildLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: i64,
}

fn rebuild_key(name: ProjectionName) -> i64 {
    // A fixed high word for parkade's rebuild locks, the name's CRC in the low one.
    (0x7061_726b_i64 << 32) | i64::from(crc32c::crc32c(name.as_str().as_bytes()))
}

/// Take projection `name`'s rebuild lock, or fail at once when a rebuild holds it.
pub async fn lock_rebuild(
    pool: &PgPool,
    name: ProjectionName,
) -> Result<RebuildLock, ProjectionError> {
    let mut conn = pool.acquire().await?;
    let key = rebuild_key(name);
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    if !got {
        return Err(ProjectionError::RebuildRunning(name));
    }
    Ok(RebuildLock {
        conn: Some(conn),
        key,
    })
}

impl RebuildLock {
    /// Release the lock (also released when this is dropped: the session is closed).
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                // Closing the session releases every lock it holds.
                drop(conn.detach());
            }
        }
    }
}

impl Drop for RebuildLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
