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

use futures_util::FutureExt;
use tokio::sync::watch;

use super::{ProjectionName, ProjectionState, StatusBoard};

/// The one backoff policy of the projections, for a restart by the supervision and for
/// a retry inside a run alike: the first wait after a failure is [`Backoff::FIRST`],
/// each further failure doubles it up to the configured maximum, and a success starts
/// it over.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);

    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Self::FIRST,
            max: max.max(Self::FIRST),
        }
    }

    /// After a success: the next failure waits [`Backoff::FIRST`] again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Report projection `name`'s failure (`why`) in the log and on the board, then wait
    /// out the backoff, doubling it for the next one. True when the stop signal came
    /// instead.
    pub async fn failed(
        &mut self,
        board: &StatusBoard,
        name: ProjectionName,
        why: String,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let wait = self.next;
        tracing::error!(projection = %name, error = %why, retry_in_ms = wait.as_millis() as u64, "projection failed; retrying");
        board.report_failure_text(name, why);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = shutdown.changed() => true,
        }
    }
}

/// Run `run` under supervision until the stop signal. `run` is called again for each
/// restart, with the stop signal; it returns `Ok(())` once stopped, or why it failed.
pub async fn supervise<F, Fut>(
    name: ProjectionName,
    board: StatusBoard,
    max_backoff: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut run: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut backoff = Backoff::new(max_backoff);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        let why = match AssertUnwindSafe(run(shutdown.clone())).catch_unwind().await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => e,
            Err(panic) => format!("panicked: {}", panic_text(panic.as_ref())),
        };
        // A run that went well for a while starts the backoff over.
        if started.elapsed() > max_backoff.max(Backoff::FIRST) * 2 {
            backoff.reset();
        }
        if backoff.failed(&board, name, why, &mut shutdown).await {
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
        let (stop, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let seen = board.clone();
        let counted = runs.clone();
        let task = tokio::spawn(supervise(
            ProjectionName::Predictor,
            board.clone(),
            Duration::from_millis(400),
            rx,
            move |mut sd| {
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
                            let _ = sd.changed().await;
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
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(board.all()[0].state, ProjectionState::Stopped);
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no restart after the stop");
    }
}
