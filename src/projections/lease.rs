//! Leases: of several parkade processes sharing one database, the one that runs a
//! projection.
//!
//! Every lease is a row in `projection_leases` naming its holder and when it last
//! renewed it (the database's clock). Not a session lock: a process that stalls keeps
//! its sessions open, and a lock would follow it for as long as it is stalled.
//!
//! A projection whose every write carries its checkpoint (the read model, the features)
//! takes a `ProjectionLease`: renewed every 2 s, taken over after 6 s without a
//! renewal. The checkpoint's compare-and-set keeps a batch from being written twice even
//! while two processes believe they hold the lease.
//!
//! A lake on a shared bucket (the archive, the features lake) has no such check: a
//! holder that stalled, or lost the database without knowing, could still be writing
//! when the next holder starts. A [`LakeLease`] bounds that in time:
//! - the holder renews it every 2 s while it holds it, and before a write when less than
//!   10 s is left of the last renewal's [`WRITE_BUDGET`]; a write must end within
//!   [`WRITE_BUDGET`] of the renewal before it, or it is abandoned (and retried);
//! - another process takes it over only once [`TAKEOVER_GRACE`] has passed since the
//!   last renewal, so the last holder's writes have ended by then.
//!
//! So the last write of a holder that lost its lease has ended before the next holder's
//! first, as long as no process stalls for longer than the margin between the two
//! (10 s) between checking its deadline and sending a request. A clean stop removes the
//! row, and the next holder follows at once.

use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use sqlx::PgPool;

use super::{ProjectionName, ProjectionState, StatusBoard};

/// How often a process standing by tries for a lease, and its holder renews it.
pub(super) const LEASE_EVERY: Duration = Duration::from_secs(2);

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
    /// Take it as `holder` (the same for every restart of one runner, so a run that
    /// panicked without giving it up is followed by the restart at once).
    pub(super) async fn try_take(
        pool: &PgPool,
        name: ProjectionName,
        holder: uuid::Uuid,
    ) -> Result<Option<ProjectionLease>, sqlx::Error> {
        let taken: Option<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO projection_leases (name, holder, renewed_at) VALUES ($1, $2, now()) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, renewed_at = now() \
             WHERE projection_leases.holder IS NULL \
                OR projection_leases.holder = EXCLUDED.holder \
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
    #[error("the lease of {0} is lost (another process took it over, or its renewal got no answer in time): stopped writing to the lake")]
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
    /// This process's name in the lease's row, the same for every holding.
    me: uuid::Uuid,
    held: bool,
    /// Until when a write may run, from the last renewal.
    until: Option<Instant>,
}

impl LakeLease {
    pub fn new(pool: PgPool, name: ProjectionName) -> LakeLease {
        LakeLease {
            pool,
            name,
            me: uuid::Uuid::now_v7(),
            held: false,
            until: None,
        }
    }

    /// Hold the lease: at once when held; else stand by (shown on `board`) while
    /// another process holds it and renews it. `false` when shutting down first.
    pub async fn take(&mut self, board: &StatusBoard, shutdown: &CancellationToken) -> bool {
        let name = self.name;
        let mut said = false;
        while !self.held {
            if shutdown.is_cancelled() {
                return false;
            }
            let sent = Instant::now();
            // Free (no row), this process's own, or not renewed for the grace: the
            // last holder's writes have ended.
            let taken: Result<Option<uuid::Uuid>, _> = sqlx::query_scalar(
                "INSERT INTO projection_leases (name, holder, renewed_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, renewed_at = now() \
                 WHERE projection_leases.holder = EXCLUDED.holder \
                    OR projection_leases.renewed_at < now() - make_interval(secs => $3) \
                 RETURNING holder",
            )
            .bind(name.as_str())
            .bind(self.me)
            .bind(TAKEOVER_GRACE.as_secs_f64())
            .fetch_optional(&self.pool)
            .await;
            match taken {
                Ok(Some(_)) => {
                    self.held = true;
                    self.until = Some(sent + WRITE_BUDGET);
                }
                Ok(None) => {
                    if !said {
                        said = true;
                        tracing::info!(
                            projection = %name,
                            takeover_after_secs = TAKEOVER_GRACE.as_secs(),
                            "another process writes this projection's lake; standing by"
                        );
                    }
                    board.set(name, |s| s.state = ProjectionState::Standby);
                }
                Err(e) => board.report_failure_text(name, format!("taking the lease: {e}")),
            }
            if !self.held {
                tokio::select! {
                    _ = tokio::time::sleep(LEASE_EVERY) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
        }
        true
    }

    /// Renew the lease now; [`LeaseError::Lost`] (and not held any more) when another
    /// process took it over or the renewal got no answer in time.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        if !self.held {
            return Err(LeaseError::Lost(self.name));
        }
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            RENEW_WAIT,
            sqlx::query(
                "UPDATE projection_leases SET renewed_at = now() WHERE name = $1 AND holder = $2",
            )
            .bind(self.name.as_str())
            .bind(self.me)
            .execute(&self.pool),
        )
        .await;
        if matches!(renewed, Ok(Ok(r)) if r.rows_affected() == 1) {
            self.until = Some(sent + WRITE_BUDGET);
            return Ok(());
        }
        self.held = false;
        self.until = None;
        Err(LeaseError::Lost(self.name))
    }

    /// Wait `wait` (or until shut down: `Ok(true)`), renewing the lease every
    /// 2 s so that nobody takes it over from a holder that is only idle.
    pub async fn hold_for(
        &mut self,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<bool, LeaseError> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let next = end.min(tokio::time::Instant::now() + LEASE_EVERY);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.cancelled() => return Ok(true),
            }
            if next >= end {
                return Ok(false);
            }
            self.renew().await?;
        }
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
        // Not even started past the deadline (a timeout polls its future once first,
        // and one poll may send the request).
        if until <= Instant::now() {
            return Err(LeaseError::TooSlow.into());
        }
        match tokio::time::timeout_at(until.into(), write).await {
            Ok(done) => done,
            Err(_) => Err(LeaseError::TooSlow.into()),
        }
    }

    /// Give the lease up after the last write: its row removed, so that the next
    /// holder follows at once.
    pub async fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            let _gone =
                sqlx::query("DELETE FROM projection_leases WHERE name = $1 AND holder = $2")
                    .bind(self.name.as_str())
                    .bind(self.me)
                    .execute(&self.pool)
                    .await;
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
