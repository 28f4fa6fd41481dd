//! One supervision for every background projection (occupancy, features, the features
//! lake, the archive, the predictor): a run that ends with an error *or a panic* is
//! reported on the status board (so `/readyz` says not ready and the board says
//! failing, with why), logged, and started again after a backoff that doubles up to the
//! configured maximum; a run that stops on the stop signal ends the supervision.
//!
//! Before this, four projections shared one `tokio::join!` on one thread: a panic in
//! any of them ended all four while the board still said running.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use futures_util::FutureExt;

use super::{ProjectionName, ProjectionState, StatusBoard};
use crate::backoff::Backoff;

/// The first wait after a projection's failure; each further failure doubles it up
/// to the configured maximum, and a success starts it over ([`Backoff`]).
pub const FIRST_WAIT: Duration = Duration::from_millis(100);

/// The projections' backoff, for a restart by the supervision and for a retry inside a
/// run alike.
pub fn backoff(max: Duration) -> Backoff {
    Backoff::new(FIRST_WAIT, max)
}

/// Report projection `name`'s failure (`why`) in the log and on the board, then wait
/// out `backoff`. True when the stop signal came instead.
pub async fn wait_after_failure(
    backoff: &mut Backoff,
    board: &StatusBoard,
    name: ProjectionName,
    why: String,
    shutdown: &CancellationToken,
) -> bool {
    let wait = backoff.next_wait();
    tracing::error!(projection = %name, error = %why, retry_in_ms = wait.as_millis() as u64, "projection failed; retrying");
    board.report_failure_text(name, why);
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Run `run` under supervision until the stop signal. `run` is called again for each
/// restart, with the stop signal; it returns `Ok(())` once stopped, or why it failed.
pub async fn supervise<F, Fut>(
    name: ProjectionName,
    board: StatusBoard,
    max_backoff: Duration,
    shutdown: CancellationToken,
    mut run: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut backoff = backoff(max_backoff);
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let started = Instant::now();
        let why = match AssertUnwindSafe(run(shutdown.clone())).catch_unwind().await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => e,
            Err(panic) => format!("panicked: {}", panic_text(panic.as_ref())),
        };
        // A run that went well for a while starts the backoff over.
        if started.elapsed() > max_backoff.max(FIRST_WAIT) * 2 {
            backoff.reset();
        }
        if wait_after_failure(&mut backoff, &board, name, why, &shutdown).await {
            break;
        }
    }
    board.set(name, |s| s.state = ProjectionState::Stopped);
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_panic_is_reported_and_the_run_is_started_again() {
        let board = StatusBoard::default();
        let stop = CancellationToken::new();
        let rx = stop.clone();
        let runs = Arc::new(AtomicU32::new(0));
        let seen = board.clone();
        let counted = runs.clone();
        let task = tokio::spawn(supervise(
            ProjectionName::Predictor,
            board.clone(),
            Duration::from_millis(400),
            rx,
            move |sd| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                async move {
                    match n {
                        0 => panic!("boom {n}"),
                        1 => Err("a plain failure".to_owned()),
                        _ => {
                            seen.set(ProjectionName::Predictor, |s| {
                                s.state = ProjectionState::Running
                            });
                            sd.cancelled().await;
                            Ok(())
                        }
                    }
                }
            },
        ));
        let failing = async {
            loop {
                let s = board.all();
                if let Some(s) = s.iter().find(|s| s.name == ProjectionName::Predictor) {
                    if s.state == ProjectionState::Failing
                        && s.last_error.as_deref() == Some("panicked: boom 0")
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), failing)
            .await
            .expect("the panic is on the board");
        let running = async {
            while runs.load(Ordering::SeqCst) < 3
                || board
                    .all()
                    .iter()
                    .any(|s| s.state != ProjectionState::Running)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("started again after a panic and a failure");
        assert_eq!(board.all()[0].failures, 2);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(board.all()[0].state, ProjectionState::Stopped);
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no restart after the stop");
    }
}
