//! The loop that keeps a projection caught up with the log, and the board where every
//! projection reports how it is doing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use sqlx::PgPool;

use super::lease::{ProjectionLease, LEASE_EVERY};
use super::supervisor;
use super::{ProjectionError, ProjectionName};
use crate::backoff::Backoff;
use crate::domain::{RecordedEvent, Timestamp};
use crate::log::{EventLog, Subscription};

/// How a projection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    Starting,
    Running,
    /// The last attempt failed; it is retried with backoff, nothing is skipped.
    Failing,
    /// Another process holds the projection's lease and folds it; this one takes over
    /// when that one stops renewing it (see `projections::lease`).
    Standby,
    Stopped,
}

impl ProjectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionState::Starting => "starting",
            ProjectionState::Running => "running",
            ProjectionState::Failing => "failing",
            ProjectionState::Standby => "standby",
            ProjectionState::Stopped => "stopped",
        }
    }
}

/// One projection's line on the [`StatusBoard`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectionStatus {
    pub name: ProjectionName,
    pub state: ProjectionState,
    /// Next log offset to fold: every event below it is in the read model.
    pub checkpoint: u64,
    pub last_error: Option<String>,
    pub failures: u64,
    /// Events a projection did not fold because they came too late (features).
    pub too_late: u64,
    pub updated_at: Timestamp,
}

/// Shared status of all projections, read by `/readyz` and `/v1/admin/projections`.
#[derive(Clone, Default)]
pub struct StatusBoard(Arc<Mutex<BTreeMap<ProjectionName, ProjectionStatus>>>);

impl StatusBoard {
    pub(crate) fn set(&self, name: ProjectionName, f: impl FnOnce(&mut ProjectionStatus)) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(name).or_insert_with(|| ProjectionStatus {
            name,
            state: ProjectionState::Starting,
            checkpoint: 0,
            last_error: None,
            failures: 0,
            too_late: 0,
            updated_at: Timestamp::now(),
        });
        f(entry);
        entry.updated_at = Timestamp::now();
    }

    /// Mark a projection as failing with this error.
    pub fn report_failure(&self, name: ProjectionName, e: &ProjectionError) {
        self.report_failure_text(name, e.to_string());
    }

    /// Mark a projection as failing with this message.
    pub fn report_failure_text(&self, name: ProjectionName, msg: String) {
        self.set(name, |s| {
            s.state = ProjectionState::Failing;
            s.last_error = Some(msg);
            s.failures += 1;
        });
    }

    pub fn all(&self) -> Vec<ProjectionStatus> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Names of projections that are failing.
    pub fn failing(&self) -> Vec<ProjectionName> {
        self.all()
            .into_iter()
            .filter(|s| s.state == ProjectionState::Failing)
            .map(|s| s.name)
            .collect()
    }
}

/// A fault to inject between a batch's write and its commit (tests and drills).
#[derive(Clone, Default)]
pub struct FaultPoint(Arc<AtomicU32>);

impl FaultPoint {
    /// Fail the next `n` batch commits.
    pub fn fail_next(&self, n: u32) {
        self.0.store(n, Ordering::SeqCst);
    }

    /// True (and counts down) when the current batch must fail.
    pub(crate) fn trip(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// A projection folded into PostgreSQL batch by batch under a checkpoint, as the one
/// [`Runner`] (and [`catch_up`]) drive it: occupancy and the features.
pub trait Projection: Send + 'static {
    const NAME: ProjectionName;

    /// Get ready to fold from checkpoint `from`, called at every (re)start before the
    /// first batch. The features refold the log up to `from` here (writing nothing), so
    /// their window of open buckets is what it was; `stop` ends that early with
    /// [`ProjectionError::Stopped`].
    fn resume(
        &mut self,
        log: Arc<dyn EventLog>,
        from: u64,
        stop: CancellationToken,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Fold one batch; its offsets follow on from the previous one's.
    fn fold(&mut self, batch: &[RecordedEvent]);

    /// Write what the last batch folded, moving the checkpoint from `from` to `to` in
    /// the same transaction. `Ok(None)`: committed. `Ok(Some(next))`: the checkpoint
    /// was not at `from` (a rebuild moved it), nothing was written. After an error it
    /// is called again with the same range.
    fn write(
        &mut self,
        pool: &PgPool,
        log_id: uuid::Uuid,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Option<u64>, ProjectionError>> + Send;

    /// Add what the projection knows to its line on the board after a commit.
    fn report(&self, _status: &mut ProjectionStatus) {}
}

/// Keeps projection `P` caught up with the log until shut down: resume at the
/// checkpoint, fold and write each batch the log's subscription hands out, and on any
/// error report it on the board and start again at the checkpoint after a backoff.
/// Nothing is skipped: a batch is written, or retried.
#[derive(Clone)]
pub struct Runner<P> {
    pub pool: PgPool,
    pub log: Arc<dyn EventLog>,
    pub board: StatusBoard,
    pub batch_events: usize,
    pub max_backoff: Duration,
    /// Panics after folding a batch while armed (tests of the supervision).
    pub panic: FaultPoint,
    /// This runner's name in the projection's lease row, the same for all its restarts
    /// (`uuid::Uuid::now_v7()` when it is made).
    pub holder: uuid::Uuid,
    pub projection: P,
}

/// How a batch's write ended.
enum Outcome {
    Committed,
    /// A rebuild moved the checkpoint here.
    Moved(u64),
    ShuttingDown,
}

impl<P> Runner<P> {
    /// The same settings, driving another projection (with no panic armed: an
    /// injected panic is meant for one projection).
    pub fn driving<Q>(&self, projection: Q) -> Runner<Q> {
        Runner {
            pool: self.pool.clone(),
            log: self.log.clone(),
            board: self.board.clone(),
            batch_events: self.batch_events,
            max_backoff: self.max_backoff,
            panic: FaultPoint::default(),
            holder: self.holder,
            projection,
        }
    }
}

impl<P: Projection> Runner<P> {
    /// Take the projection's lease, standing by while another process holds it;
    /// `None` when shutting down.
    async fn lease(
        &self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<ProjectionLease> {
        let mut said = false;
        while !shutdown.is_cancelled() {
            match ProjectionLease::try_take(&self.pool, P::NAME, self.holder).await {
                Ok(Some(lease)) => {
                    if said {
                        tracing::info!(projection = %P::NAME, "took over the projection's lease");
                    }
                    return Some(lease);
                }
                Ok(None) => {
                    if !said {
                        said = true;
                        tracing::info!(projection = %P::NAME, "another process folds this projection; standing by");
                    }
                    // The holder's progress, from the checkpoint both share (a read
                    // that fails leaves the last one shown: the next try tells).
                    let holder = super::db::read_checkpoint(&self.pool, P::NAME).await;
                    self.board.set(P::NAME, |s| {
                        s.state = ProjectionState::Standby;
                        if let Ok(Some(cp)) = holder {
                            s.checkpoint = cp.next_offset;
                        }
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE_EVERY) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
                Err(e) => {
                    if self.failed(&e.into(), backoff, shutdown).await {
                        return None;
                    }
                }
            }
        }
        None
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = supervisor::backoff(self.max_backoff);
        let mut lease: Option<ProjectionLease> = None;
        'restart: while !shutdown.is_cancelled() {
            if lease.is_none() {
                lease = self.lease(&mut backoff, &shutdown).await;
                if lease.is_none() {
                    break;
                }
            }
            let mut from = match self.resume(&shutdown).await {
                Ok(from) => from,
                Err(ProjectionError::Stopped) => break,
                Err(e) if self.failed(&e, &mut backoff, &shutdown).await => break,
                Err(_) => continue,
            };
            self.board.set(P::NAME, |s| {
                s.checkpoint = from;
                s.state = ProjectionState::Running;
            });
            let mut sub = Subscription::new(self.log.clone(), from);
            let mut check = tokio::time::interval(LEASE_EVERY);
            loop {
                let batch = tokio::select! {
                    b = sub.next_batch(self.batch_events) => b,
                    _ = check.tick() => {
                        if let Some(l) = lease.as_mut() {
                            if l.renew().await {
                                continue;
                            }
                        }
                        tracing::warn!(projection = %P::NAME, "the projection's lease is lost (another process took it over, or the database did not answer its renewal); taking it again");
                        lease = None;
                        continue 'restart;
                    }
                    _ = shutdown.cancelled() => break 'restart,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        if self.failed(&e.into(), &mut backoff, &shutdown).await {
                            break 'restart;
                        }
                        continue 'restart;
                    }
                };
                let to = batch[batch.len() - 1].offset + 1;
                self.projection.fold(&batch);
                if self.panic.trip() {
                    panic!("a panic injected after folding offsets {from}..{to}");
                }
                match self.write(from, to, &mut backoff, &shutdown).await {
                    Outcome::Committed => from = to,
                    Outcome::Moved(next) => {
                        tracing::info!(projection = %P::NAME, from, resume = next, "checkpoint moved by a rebuild; resuming there");
                        continue 'restart;
                    }
                    Outcome::ShuttingDown => break 'restart,
                }
            }
        }
        if let Some(l) = lease {
            l.release().await;
        }
        self.board
            .set(P::NAME, |s| s.state = ProjectionState::Stopped);
    }

    /// The checkpoint, once the projection is ready to fold from it.
    async fn resume(&mut self, shutdown: &CancellationToken) -> Result<u64, ProjectionError> {
        if self.log.shared() {
            self.wait_for_copy(shutdown).await?;
        }
        let from = checkpoint::<P>(&self.pool, &*self.log).await?;
        let (log, stop) = (self.log.clone(), shutdown.clone());
        self.projection.resume(log, from, stop).await?;
        Ok(from)
    }

    /// On a shared log, the checkpoint the last holder left may lie past this node's
    /// copy (the copy follows the stream a moment behind): stand by until the copy
    /// has reached it, rather than fail as on a log that lost events.
    async fn wait_for_copy(&self, shutdown: &CancellationToken) -> Result<(), ProjectionError> {
        let Some(cp) = super::db::read_checkpoint(&self.pool, P::NAME).await? else {
            return Ok(());
        };
        let copy_end = self.log.durable_end();
        if cp.next_offset <= copy_end || cp.log_id != self.log.log_id() {
            return Ok(());
        }
        tracing::info!(projection = %P::NAME, checkpoint = cp.next_offset, copy_end, "this node's copy of the log is behind the projection's checkpoint; standing by until it has caught up");
        self.board.set(P::NAME, |s| {
            s.state = ProjectionState::Standby;
            s.checkpoint = cp.next_offset;
        });
        tokio::select! {
            reached = self.log.wait_durable(cp.next_offset) => Ok(reached?),
            _ = shutdown.cancelled() => Err(ProjectionError::Stopped),
        }
    }

    /// Write the folded batch `from..to`, retrying with backoff until it is written.
    async fn write(
        &mut self,
        from: u64,
        to: u64,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Outcome {
        loop {
            let log_id = self.log.log_id();
            match self.projection.write(&self.pool, log_id, from, to).await {
                Ok(None) => {
                    backoff.reset();
                    let projection = &self.projection;
                    self.board.set(P::NAME, |s| {
                        s.checkpoint = to;
                        s.state = ProjectionState::Running;
                        projection.report(s);
                    });
                    return Outcome::Committed;
                }
                Ok(Some(next)) => return Outcome::Moved(next),
                Err(e) if self.failed(&e, backoff, shutdown).await => return Outcome::ShuttingDown,
                Err(_) => {}
            }
        }
    }

    /// Record a failure and wait out the backoff. Returns true when shutting down.
    async fn failed(
        &self,
        e: &ProjectionError,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> bool {
        let why = e.to_string();
        supervisor::wait_after_failure(backoff, &self.board, P::NAME, why, shutdown).await
    }
}

/// Projection `P`'s checkpoint (made at offset 0 when it has none), refused when it
/// lies beyond the end of the log (the read model belongs to a longer log).
async fn checkpoint<P: Projection>(
    pool: &PgPool,
    log: &dyn EventLog,
) -> Result<u64, ProjectionError> {
    let cp = super::db::ensure_checkpoint(pool, P::NAME, log.log_id()).await?;
    let end = log.durable_end();
    if cp.next_offset > end {
        return Err(ProjectionError::AheadOfLog {
            checkpoint: cp.next_offset,
            log_end: end,
        });
    }
    Ok(cp.next_offset)
}

/// Fold everything the log holds beyond projection `P`'s checkpoint and return the new
/// checkpoint: for commands that write the log without a running server (`import`).
pub async fn catch_up<P: Projection>(
    pool: &PgPool,
    log: Arc<dyn EventLog>,
    mut projection: P,
    batch_events: usize,
) -> Result<u64, ProjectionError> {
    let end = log.durable_end();
    // Never stopped: the command waits for it.
    let stop = CancellationToken::new();
    'restart: loop {
        let mut from = checkpoint::<P>(pool, &*log).await?;
        projection.resume(log.clone(), from, stop.clone()).await?;
        let mut cursor = log.cursor(from);
        while from < end {
            let batch = cursor.next_batch(batch_events.min((end - from) as usize))?;
            let Some(last) = batch.last() else { break };
            let to = last.offset + 1;
            projection.fold(&batch);
            if projection
                .write(pool, log.log_id(), from, to)
                .await?
                .is_some()
            {
                continue 'restart;
            }
            from = to;
        }
        return Ok(from);
    }
}
