//! The one retry policy: after each failure a wait that doubles from a first one up to
//! a ceiling, started over after a success, optionally jittered (each wait drawn
//! uniformly from zero to it, so that writers that keep colliding drift apart). The
//! projections' restarts and retries, the JetStream client's retries through an
//! election, a lot's decision again after a lost conflict and the read side's
//! connection to PostgreSQL all wait through it.

use std::future::Future;
use std::time::{Duration, Instant};

/// Waits between tries: `first`, then doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        let max = if max.as_nanos() < first.as_nanos() {
            first
        } else {
            max
        };
        Backoff {
            first,
            next: first,
            max,
            jitter: false,
        }
    }

    /// Each wait drawn uniformly from zero up to what it would be.
    pub const fn jittered(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// The wait after this failure; the next one is twice as long, up to the ceiling.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter {
            let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
            Duration::from_micros(fastrand::u64(0..=micros))
        } else {
            wait
        }
    }

    /// The wait after the `attempt`th failure in a row (0: the first), for a caller
    /// that counts its attempts rather than keeping a `Backoff`.
    pub fn wait_for(&self, attempt: u32) -> Duration {
        let mut b = Backoff {
            next: self.first,
            ..*self
        };
        for _ in 0..attempt.min(32) {
            b.next = (b.next * 2).min(b.max);
        }
        b.next_wait()
    }

    /// After a success: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// `op` until it succeeds, fails otherwise than `transient` says, or `give_up_after`
/// has passed since the first try, waiting `backoff` between tries. The last error is
/// what a give-up returns.
pub async fn retry<T, E, Fut>(
    mut backoff: Backoff,
    give_up_after: Duration,
    mut op: impl FnMut() -> Fut,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match op().await {
            Err(e) if transient(&e) && started.elapsed() < give_up_after => {
                tokio::time::sleep(backoff.next_wait()).await;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_ceiling_and_start_over_after_a_success() {
        let mut b = Backoff::new(100 * MS, 500 * MS);
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        b.reset();
        assert_eq!(b.next_wait(), 100 * MS);
    }

    #[test]
    fn jittered_waits_stay_under_the_plain_ones_and_vary() {
        let mut b = Backoff::new(8 * MS, 8 * MS).jittered();
        let waits: Vec<_> = (0..200).map(|_| b.next_wait()).collect();
        assert!(waits.iter().all(|w| *w <= 8 * MS), "{waits:?}");
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 50, "{} distinct waits", distinct.len());
    }

    #[tokio::test]
    async fn a_retry_ends_at_success_at_a_lasting_error_or_when_its_time_is_up() {
        let fast = Backoff::new(MS, MS);
        let mut tries = 0;
        let got: Result<u32, &str> = retry(
            fast,
            Duration::from_secs(5),
            || {
                tries += 1;
                let n = tries;
                async move {
                    if n < 3 {
                        Err("again")
                    } else {
                        Ok(n)
                    }
                }
            },
            |e| *e == "again",
        )
        .await;
        assert_eq!(got, Ok(3));
        let mut tries = 0;
        let got: Result<u32, &str> = retry(
            fast,
            Duration::from_secs(5),
            || {
                tries += 1;
                async { Err("lasting") }
            },
            |e| *e == "again",
        )
        .await;
        assert_eq!((got, tries), (Err("lasting"), 1));
        let got: Result<u32, &str> =
            retry(fast, 20 * MS, || async { Err("again") }, |e| *e == "again").await;
        assert_eq!(got, Err("again"));
    }
}
