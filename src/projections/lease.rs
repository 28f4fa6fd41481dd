//! Leases: of several parkade processes sharing one database, the one that runs a
//! projection.
//!
//! A lease is a PostgreSQL session advisory lock on a connection of its own
//! (`Lease`); PostgreSQL frees it when the holder's session ends (its process died,
//! its connection broke), and a process standing by takes it over.
//!
//! A projection whose every write carries its checkpoint (the read model, the features)
//! takes a lease of another kind (`ProjectionLease`): a row in `projection_leases`
//! naming its holder, renewed every 2 s, taken over after 6 s without a renewal, so a
//! holder that stalls with its session open is followed too. The checkpoint's compare-and-set keeps a batch from being
//! written twice even while two processes believe they hold the lease. A lake on a shared bucket
//! (the archive, the features lake) has no such check, and a holder whose session ended
//! without its knowing (a network cut, a paused process) could still be writing when the
//! next holder starts. A [`LakeLease`] bounds that in time:
//! - the holder renews it in the database (`projection_leases.renewed_at`, the
//!   database's clock) before a write when less than 10 s is left of the last renewal's
//!   [`WRITE_BUDGET`] (the archive's holder also every 2 s, to find out early when it
//!   lost the lease); a write must end within [`WRITE_BUDGET`] of the renewal before
//!   it, or it is abandoned (and retried);
//! - the next holder, once it has the lock, waits until [`TAKEOVER_GRACE`] has passed
//!   since the last renewal before it touches the lake.
//!
//! So the last write of a holder that lost its lease has ended before the next holder's
//! first, as long as no process stalls for longer than the margin between the two
//! (10 s) between checking its deadline and sending a request. A clean stop removes the
//! renewal, and the next holder does not wait.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

use super::{ProjectionName, ProjectionState, StatusBoard};

/// How often a process standing by tries for a lease, and the holder checks that its
/// session (and so its lease) is still there.
pub(super) const LEASE_EVERY: Duration = Duration::from_secs(2);

/// A projection's lease: a PostgreSQL session advisory lock on its own connection.
pub(super) struct Lease {
    conn: sqlx::PgConnection,
}

impl Lease {
    /// Try once: the lease, or `None` when another session holds it.
    pub(super) async fn try_take(
        pool: &PgPool,
        name: ProjectionName,
    ) -> Result<Option<Lease>, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(format!("parkade projection {name}"))
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then_some(Lease { conn }))
    }
}

/// How long a PostgreSQL projection's lease holder may go without renewing it (three
/// renewals missed) before another process takes it over: its process died, stalled, or
/// lost the database.
pub(super) const TAKEOVER_AFTER: Duration = Duration::from_secs(6);

/// The lease of a PostgreSQL projection (occupancy, features): a row naming the
/// holder, renewed every [`LEASE_EVERY`]; a holder that has not renewed for
/// [`TAKEOVER_AFTER`] is followed by the next process that asks (a clean stop removes
/// the row, and the next follows at once). Two processes may then both believe they
/// hold it for a moment: the checkpoint's compare-and-set keeps a batch from being
/// written twice, and the old holder finds out at its next renewal. (Not a session
/// lock: a stalled process keeps its sessions open.)
pub(super) struct ProjectionLease {
    pool: PgPool,
    name: ProjectionName,
    holder: uuid::Uuid,
}

impl ProjectionLease {
    /// Try once: the lease, or `None` while another process holds it and renews it.
    pub(super) async fn try_take(
        pool: &PgPool,
        name: ProjectionName,
    ) -> Result<Option<ProjectionLease>, sqlx::Error> {
        let holder = uuid::Uuid::now_v7();
        let taken: Option<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO projection_leases (name, holder, renewed_at) VALUES ($1, $2, now()) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, renewed_at = now() \
             WHERE projection_leases.holder IS NULL \
                OR projection_leases.renewed_at < now() - make_interval(secs => $3) \
             RETURNING holder",
        )
        .bind(name.as_str())
        .bind(holder)
        .bind(TAKEOVER_AFTER.as_secs_f64())
        .fetch_optional(pool)
        .await?;
        Ok(taken.map(|_| ProjectionLease {
            pool: pool.clone(),
            name,
            holder,
        }))
    }

    /// Renew the lease; false when it is not this process's any more (another took it
    /// over) or the database did not answer in time.
    pub(super) async fn renew(&mut self) -> bool {
        let renewed = tokio::time::timeout(
            RENEW_WAIT,
            sqlx::query(
                "UPDATE projection_leases SET renewed_at = now() WHERE name = $1 AND holder = $2",
            )
            .bind(self.name.as_str())
            .bind(self.holder)
            .execute(&self.pool),
        )
        .await;
        matches!(renewed, Ok(Ok(r)) if r.rows_affected() == 1)
    }

    /// Give the lease up (a clean stop), so the next process need not wait.
    pub(super) async fn release(self) {
        let _gone = sqlx::query("DELETE FROM projection_leases WHERE name = $1 AND holder = $2")
            .bind(self.name.as_str())
            .bind(self.holder)
            .execute(&self.pool)
            .await;
    }
}

/// The longest a lake write may end after the renewal before it.
pub const WRITE_BUDGET: Duration = Duration::from_secs(20);
/// A write renews the lease first when less than this is left of the budget.
const RENEW_AHEAD: Duration = Duration::from_secs(10);
/// How long after the last renewal a new holder starts writing.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(30);
/// The longest a renewal may take.
const RENEW_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the lease of {0} is lost (its database session ended): stopped writing to the lake")]
    Lost(ProjectionName),
    #[error(
        "a write to the lake did not end within {} s of the lease's renewal: abandoned, to be tried again",
        WRITE_BUDGET.as_secs()
    )]
    TooSlow,
}

/// The lease of a projection that writes a shared lake (see the module docs).
pub struct LakeLease {
    pool: PgPool,
    name: ProjectionName,
    held: Option<Lease>,
    /// Until when a write may run, from the last renewal.
    until: Option<Instant>,
}

impl LakeLease {
    pub fn new(pool: PgPool, name: ProjectionName) -> LakeLease {
        LakeLease {
            pool,
            name,
            held: None,
            until: None,
        }
    }

    /// Hold the lease: at once when held; else stand by (shown on `board`) while
    /// another process holds it, then wait out the last holder's writes (shown as
    /// starting). `false` when shutting down first.
    pub async fn take(
        &mut self,
        board: &StatusBoard,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let name = self.name;
        let mut said = false;
        while self.held.is_none() {
            if *shutdown.borrow() {
                return false;
            }
            match Lease::try_take(&self.pool, name).await {
                Ok(Some(lease)) => self.held = Some(lease),
                Ok(None) => {
                    if !said {
                        said = true;
                        tracing::info!(projection = %name, "another process writes this projection's lake; standing by");
                    }
                    board.set(name, |s| s.state = ProjectionState::Standby);
                }
                Err(e) => board.report_failure_text(name, format!("taking the lease: {e}")),
            }
            if self.held.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(LEASE_EVERY) => {}
                    _ = shutdown.changed() => return false,
                }
            }
        }
        let Some(lease) = self.held.as_mut() else {
            return false;
        };
        // Seconds since the last holder renewed (None: never held, or released).
        let since: Result<Option<f64>, _> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM now() - renewed_at)::float8 FROM projection_leases WHERE name = $1",
        )
        .bind(name.as_str())
        .fetch_optional(&mut lease.conn)
        .await
        .map(Option::flatten);
        let wait = match since {
            Ok(Some(s)) if s.is_finite() => {
                TAKEOVER_GRACE.saturating_sub(Duration::from_secs_f64(s.max(0.0)))
            }
            Ok(_) => Duration::ZERO,
            Err(e) => {
                tracing::warn!(projection = %name, error = %e, "reading the last renewal; waiting the whole grace");
                TAKEOVER_GRACE
            }
        };
        if !wait.is_zero() {
            tracing::info!(projection = %name, wait_secs = wait.as_secs_f64(), "took the lease over; waiting for the last holder's writes to end");
            board.set(name, |s| s.state = ProjectionState::Starting);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return false,
            }
        }
        true
    }

    /// Renew the lease now; [`LeaseError::Lost`] (and not held any more) when its
    /// session is gone.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let lost = LeaseError::Lost(self.name);
        let Some(lease) = self.held.as_mut() else {
            return Err(lost);
        };
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            RENEW_WAIT,
            sqlx::query(
                "INSERT INTO projection_leases (name, renewed_at) VALUES ($1, now()) \
                 ON CONFLICT (name) DO UPDATE SET renewed_at = now()",
            )
            .bind(self.name.as_str())
            .execute(&mut lease.conn),
        )
        .await;
        if matches!(renewed, Ok(Ok(_))) {
            self.until = Some(sent + WRITE_BUDGET);
            return Ok(());
        }
        self.held = None;
        self.until = None;
        Err(lost)
    }

    /// Run one write to the lake under the lease: renewed first when needed, and
    /// abandoned ([`LeaseError::TooSlow`]) if it has not ended by the budget's end.
    pub async fn write<T, E: From<LeaseError>>(
        &mut self,
        write: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let fresh = self
            .until
            .is_some_and(|until| until > Instant::now() + RENEW_AHEAD);
        if !fresh {
            self.renew().await?;
        }
        let until = self.until.ok_or(LeaseError::Lost(self.name))?;
        match tokio::time::timeout_at(until.into(), write).await {
            Ok(done) => done,
            Err(_) => Err(LeaseError::TooSlow.into()),
        }
    }

    /// Give the lease up after the last write, its renewal removed so that the next
    /// holder need not wait.
    pub async fn release(&mut self) {
        if let Some(mut lease) = self.held.take() {
            let _idle = sqlx::query("DELETE FROM projection_leases WHERE name = $1")
                .bind(self.name.as_str())
                .execute(&mut lease.conn)
                .await;
            // Closing the session frees the lock.
            drop(lease);
        }
        self.until = None;
    }
}

/// Run `write` under `lease` when there is one ([`LakeLease::write`]), else as it is.
pub async fn write_under<T, E: From<LeaseError>>(
    lease: Option<&mut LakeLease>,
    write: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match lease {
        Some(lease) => lease.write(write).await,
        None => write.await,
    }
}
