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

/// The first wait before a restart.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

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
    let mut backoff = FIRST_BACKOFF;
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
        if started.elapsed() > max_backoff.max(FIRST_BACKOFF) * 2 {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(projection = %name, error = %why, restart_in_ms = backoff.as_millis() as u64, "projection stopped; restarting it");
        board.report_failure_text(name, why);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => break,
        }
        backoff = (backoff * 2).min(max_backoff.max(FIRST_BACKOFF));
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
