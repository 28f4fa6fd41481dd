//! Talking to a service manager (systemd's `sd_notify` protocol): `READY=1` once the
//! server listens, `STOPPING=1` when it stops, and `WATCHDOG=1` every half watchdog
//! interval *while the log accepts writes*. A log in its fail-stop state (a write or
//! sync failed, say on a full disk) stops the pings, so systemd kills the process
//! after `WatchdogSec` and `Restart=` starts it again: recovery runs, and the service
//! does not run on for ever refusing every event.
//!
//! The protocol is one datagram per message to the socket named by `NOTIFY_SOCKET` (a
//! path, or `@name` in the abstract namespace); `WATCHDOG_USEC` (and `WATCHDOG_PID`,
//! when set, naming this process) turns the watchdog on.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::log::EventLog;

/// Where to send notifications, and how often the watchdog wants a ping.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: String,
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// From the service manager's environment; `None` when not run by one.
    pub fn from_env() -> Option<Notifier> {
        Notifier::from_vars(
            std::env::var("NOTIFY_SOCKET").ok(),
            std::env::var("WATCHDOG_USEC").ok(),
            std::env::var("WATCHDOG_PID").ok(),
            std::process::id(),
        )
    }

    fn from_vars(
        socket: Option<String>,
        usec: Option<String>,
        pid: Option<String>,
        me: u32,
    ) -> Option<Notifier> {
        let socket = socket.filter(|s| !s.is_empty())?;
        let for_me = pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(me));
        let watchdog = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_me)
            .map(Duration::from_micros);
        Some(Notifier { socket, watchdog })
    }

    /// A notifier sending to `socket` (tests).
    pub fn new(socket: impl Into<String>, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            socket: socket.into(),
            watchdog,
        }
    }

    /// Send one message (`READY=1`, ...). Failures are logged, never fatal.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.try_send(message) {
            tracing::warn!(socket = %self.socket, error = %e, "cannot notify the service manager");
        }
    }

    fn try_send(&self, message: &str) -> std::io::Result<()> {
        let addr = match self.socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(&self.socket)?,
        };
        UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
        Ok(())
    }

    /// Ping the watchdog every half interval while `log` accepts writes, until `stop`.
    pub async fn watch(self, log: Arc<dyn EventLog>, mut stop: watch::Receiver<bool>) {
        let Some(every) = self.watchdog.map(|w| w / 2) else {
            return;
        };
        let mut said = false;
        loop {
            match log.health() {
                Ok(()) => self.send("WATCHDOG=1"),
                Err(e) if !said => {
                    said = true;
                    tracing::error!(error = %e, "the log refuses writes: no more watchdog pings, so the service manager restarts the service");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_read_as_systemd_sets_it() {
        let s = |v: &str| Some(v.to_owned());
        assert!(Notifier::from_vars(None, s("1000"), None, 7).is_none());
        assert!(Notifier::from_vars(s(""), None, None, 7).is_none());
        let n = Notifier::from_vars(s("/run/x"), s("30000000"), None, 7).unwrap();
        assert_eq!(n.watchdog, Some(Duration::from_secs(30)));
        // WATCHDOG_PID names another process: no watchdog for this one.
        let n = Notifier::from_vars(s("@x"), s("30000000"), s("8"), 7).unwrap();
        assert_eq!(n.watchdog, None);
        let n = Notifier::from_vars(s("@x"), s("30000000"), s("7"), 7).unwrap();
        assert!(n.watchdog.is_some());
        assert_eq!(
            Notifier::from_vars(s("/x"), s("zero"), None, 7)
                .unwrap()
                .watchdog,
            None
        );
    }

    #[test]
    fn messages_arrive_as_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.to_str().unwrap(), None).send("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
