//! Telling a service manager how the service is doing (systemd's notify protocol, sent
//! by the `sd-notify` crate): `READY=1` once the server listens, `STOPPING=1` when it
//! begins to stop, and `WATCHDOG=1` every half watchdog interval *while the log accepts
//! writes*. A log in its fail-stop state (a write or sync failed, say on a full disk)
//! stops the pings, so systemd kills the process after `WatchdogSec` and `Restart=`
//! starts it again: recovery runs, and the service does not run on for ever refusing
//! every event.
//!
//! Nothing is sent when `NOTIFY_SOCKET` is unset (not run by a service manager);
//! `WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, naming this process) turns the
//! watchdog on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use sd_notify::NotifyState;

use crate::log::EventLog;

/// The service manager named by the environment, and how often its watchdog wants a
/// ping. Clones share whether `STOPPING=1` was sent.
#[derive(Debug, Clone)]
pub struct Notifier {
    watchdog: Option<Duration>,
    stopping: Arc<AtomicBool>,
}

impl Notifier {
    /// From the service manager's environment; `None` when not run by one.
    pub fn from_env() -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())?;
        Some(Notifier {
            watchdog: sd_notify::watchdog_enabled().filter(|w| !w.is_zero()),
            stopping: Arc::default(),
        })
    }

    /// The watchdog interval the service manager asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// The server listens.
    pub fn ready(&self) {
        send(&NotifyState::Ready);
    }

    /// The service begins to stop (sent once, however many stop paths call it).
    pub fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            send(&NotifyState::Stopping);
        }
    }

    /// Ping the watchdog every half interval while `log` accepts writes, until `stop`.
    pub async fn watch(self, log: Arc<dyn EventLog>, stop: CancellationToken) {
        let Some(every) = self.watchdog.map(|w| w / 2) else {
            return;
        };
        let mut said = false;
        loop {
            match log.health() {
                Ok(()) => send(&NotifyState::Watchdog),
                Err(e) if !said => {
                    said = true;
                    tracing::error!(error = %e, "the log refuses writes: no more watchdog pings, so the service manager restarts the service");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// One message; a failure is logged, never fatal.
fn send(state: &NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(state)) {
        tracing::warn!(message = %state, error = %e, "cannot notify the service manager");
    }
}
