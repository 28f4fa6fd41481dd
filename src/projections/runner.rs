//! The loop that keeps a projection caught up with the log, and the board where every
//! projection reports how it is doing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use super::occupancy::{self, Fold, Written};
use super::{ProjectionError, ProjectionName};
use crate::domain::Timestamp;
use crate::log::{EventLog, Subscription};

/// How a projection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    Starting,
    Running,
    /// The last attempt failed; it is retried with backoff, nothing is skipped.
    Failing,
    Stopped,
}

impl ProjectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionState::Starting => "starting",
            ProjectionState::Running => "running",
            ProjectionState::Failing => "failing",
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

/// Runs the occupancy projection until shut down.
#[derive(Clone)]
pub struct Runner {
    pub pool: PgPool,
    pub log: Arc<dyn EventLog>,
    pub board: StatusBoard,
    pub batch_events: usize,
    pub max_backoff: Duration,
    pub fault: FaultPoint,
    /// Panics after folding a batch while armed (tests of the supervision).
    pub panic: FaultPoint,
}

impl Runner {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = occupancy::NAME;
        let mut backoff = Duration::from_millis(100);
        'restart: loop {
            if *shutdown.borrow() {
                break;
            }
            let start = match self.start_position().await {
                Ok(next) => next,
                Err(e) => {
                    self.failed(&e, &mut backoff, &mut shutdown).await;
                    continue 'restart;
                }
            };
            self.board.set(name, |s| {
                s.checkpoint = start;
                s.state = ProjectionState::Running;
            });
            let mut sub = Subscription::new(self.log.clone(), start);
            loop {
                let batch = tokio::select! {
                    b = sub.next_batch(self.batch_events) => b,
                    _ = shutdown.changed() => break 'restart,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        self.failed(&e.into(), &mut backoff, &mut shutdown).await;
                        continue 'restart;
                    }
                };
                let (from, to) = (batch[0].offset, batch[batch.len() - 1].offset + 1);
                let mut fold = Fold::default();
                for e in &batch {
                    fold.add(e);
                }
                if self.panic.trip() {
                    panic!("a panic injected after folding offsets {from}..{to}");
                }
                loop {
                    match occupancy::write_batch(
                        &self.pool,
                        self.log.log_id(),
                        from,
                        to,
                        &fold,
                        &self.fault,
                    )
                    .await
                    {
                        Ok(Written::Committed) => {
                            backoff = Duration::from_millis(100);
                            self.board.set(name, |s| {
                                s.checkpoint = to;
                                s.state = ProjectionState::Running;
                            });
                            break;
                        }
                        Ok(Written::Moved(next)) => {
                            tracing::info!(
                                projection = %name,
                                from,
                                resume = next,
                                "checkpoint moved by a rebuild; resuming there"
                            );
                            continue 'restart;
                        }
                        Err(e) => {
                            if self.failed(&e, &mut backoff, &mut shutdown).await {
                                break 'restart;
                            }
                        }
                    }
                }
            }
        }
        self.board.set(name, |s| s.state = ProjectionState::Stopped);
    }

    async fn start_position(&self) -> Result<u64, ProjectionError> {
        let cp = occupancy::ensure_checkpoint(&self.pool, self.log.log_id()).await?;
        let end = self.log.durable_end();
        if cp.next_offset > end {
            return Err(ProjectionError::AheadOfLog {
                checkpoint: cp.next_offset,
                log_end: end,
            });
        }
        Ok(cp.next_offset)
    }

    /// Record a failure and wait out the backoff. Returns true when shutting down.
    async fn failed(
        &self,
        e: &ProjectionError,
        backoff: &mut Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        failed_then_wait(
            &self.board,
            occupancy::NAME,
            e,
            backoff,
            self.max_backoff,
            shutdown,
        )
        .await
    }
}

/// Log and report a projection's failure, then wait out its backoff (doubling it up to
/// `max`). Returns true when shutting down.
pub(crate) async fn failed_then_wait(
    board: &StatusBoard,
    name: ProjectionName,
    e: &ProjectionError,
    backoff: &mut Duration,
    max: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tracing::error!(projection = %name, error = %e, retry_in_ms = backoff.as_millis() as u64, "projection failed; retrying");
    board.report_failure(name, e);
    let wait = *backoff;
    *backoff = (*backoff * 2).min(max);
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.changed() => true,
    }
}
