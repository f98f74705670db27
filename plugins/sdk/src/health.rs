//! Waiting for something to become healthy: a probe loop with an
//! injectable clock, shared by the deploy plugins.
//!
//! ```ignore
//! use stage_sdk::health::{self, Probe, SystemClock};
//! let mut clock = SystemClock::default();
//! let r = health::wait_healthy(&mut clock, timeout, interval, |_, remaining| {
//!     match stage_sdk::http::Request::new("GET", url).timeout_ms(2000).send() {
//!         Ok(r) if r.is_success() => Probe::Healthy,
//!         Ok(r) => Probe::Status(r.status),
//!         Err(e) => Probe::Unreachable(e.message()),
//!     }
//! });
//! if let Err(f) = r { log::error!("{}", f.describe("/health", 200)) }
//! ```

use std::fmt::Display;
use std::time::Duration;

use crate::duration::format as fmt_duration;

/// Time as a plugin sees it: WASI's monotonic clock in the component
/// ([`SystemClock`]), a [`FakeClock`] in unit tests.
pub trait Clock {
    /// Time since some fixed point.
    fn now(&mut self) -> Duration;
    /// Waits `d`.
    fn sleep(&mut self, d: Duration);
}

/// The real clock (monotonic; WASI's in the plugin).
pub struct SystemClock {
    start: std::time::Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            start: std::time::Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&mut self) -> Duration {
        self.start.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A clock that only moves when slept on (or when a test moves `now`).
#[derive(Default, Debug)]
pub struct FakeClock {
    pub now: Duration,
    /// Every sleep, in order.
    pub slept: Vec<Duration>,
}

impl Clock for FakeClock {
    fn now(&mut self) -> Duration {
        self.now
    }
    fn sleep(&mut self, d: Duration) {
        self.slept.push(d);
        self.now += d;
    }
}

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Answered as expected.
    Healthy,
    /// Answered another status.
    Status(u16),
    /// Answered, but not as expected for another reason, said as what it
    /// answered: `200 without "ready" in the body`.
    Unexpected(String),
    /// No answer (connection refused, timeout...).
    Unreachable(String),
    /// What was checked is gone, no point waiting; said as a phrase:
    /// `the container stopped (exited)`, `the process exited`.
    Exited(String),
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The last probe's answer.
    pub last: Probe,
    pub waited: Duration,
    pub attempts: u32,
}

impl Failure {
    /// `GET /health answered 503 for 30s`, `GET /health got no answer for
    /// 30s (connection refused)`, `the container stopped (exited) before
    /// GET /health answered 200`. `what` is the path or URL probed,
    /// `expect` what a healthy answer is (`200`, `2xx`).
    pub fn describe(&self, what: &str, expect: impl Display) -> String {
        let waited = fmt_duration(self.waited);
        match &self.last {
            Probe::Status(s) => format!("GET {what} answered {s} for {waited}"),
            Probe::Unexpected(s) => format!("GET {what} answered {s} for {waited}"),
            Probe::Unreachable(e) => format!("GET {what} got no answer for {waited} ({e})"),
            Probe::Exited(gone) => format!("{gone} before GET {what} answered {expect}"),
            Probe::Healthy => format!("GET {what} answered {expect}"),
        }
    }
}

/// Probes until healthy, [`Probe::Exited`], or `timeout` has passed,
/// sleeping `interval` between probes (less near the end). The probe gets
/// the time left (for its own request timeout). Returns the time it took.
pub fn wait_healthy<C: Clock + ?Sized>(
    clock: &mut C,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut(&mut C, Duration) -> Probe,
) -> Result<Duration, Failure> {
    let start = clock.now();
    let mut attempts = 0;
    loop {
        let elapsed = clock.now().saturating_sub(start);
        let remaining = timeout.saturating_sub(elapsed);
        attempts += 1;
        let p = probe(clock, remaining);
        let elapsed = clock.now().saturating_sub(start);
        match p {
            Probe::Healthy => return Ok(elapsed),
            Probe::Exited(_) => {
                return Err(Failure {
                    last: p,
                    waited: elapsed,
                    attempts,
                })
            }
            _ if elapsed >= timeout => {
                return Err(Failure {
                    last: p,
                    waited: timeout,
                    attempts,
                })
            }
            _ => clock.sleep(interval.min(timeout - elapsed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const HALF: Duration = Duration::from_millis(500);

    #[test]
    fn healthy_after_a_few_probes() {
        let mut c = FakeClock::default();
        let mut script = vec![
            Probe::Unreachable("refused".into()),
            Probe::Status(503),
            Probe::Healthy,
        ]
        .into_iter();
        let took = wait_healthy(&mut c, 30 * S, HALF, |_, _| script.next().unwrap()).unwrap();
        assert_eq!(took, S);
        assert_eq!(c.slept, vec![HALF, HALF]);
    }

    #[test]
    fn times_out_with_the_last_answer() {
        let mut c = FakeClock::default();
        let err = wait_healthy(&mut c, 2 * S, Duration::from_millis(700), |_, _| {
            Probe::Status(503)
        })
        .unwrap_err();
        assert_eq!(err.last, Probe::Status(503));
        assert_eq!(err.waited, 2 * S);
        // 0, 0.7, 1.4, then a short last sleep to 2.0, and one last probe.
        assert_eq!(err.attempts, 4);
        assert_eq!(c.slept.last(), Some(&Duration::from_millis(600)));
        assert_eq!(
            err.describe("/health", 200),
            "GET /health answered 503 for 2s"
        );
    }

    #[test]
    fn slow_probes_count_against_the_timeout() {
        let mut c = FakeClock::default();
        let mut remaining_seen = Vec::new();
        let err = wait_healthy(&mut c, 3 * S, HALF, |c, remaining| {
            remaining_seen.push(remaining);
            c.now += 2 * S; // a probe that hangs until its own timeout
            Probe::Unreachable("timed out".into())
        })
        .unwrap_err();
        assert_eq!(err.attempts, 2);
        assert_eq!(remaining_seen, vec![3 * S, S - HALF]);
        assert_eq!(
            err.describe("/ready", 200),
            "GET /ready got no answer for 3s (timed out)"
        );
    }

    #[test]
    fn an_exit_fails_at_once() {
        let mut c = FakeClock::default();
        let mut n = 0;
        let err = wait_healthy(&mut c, 30 * S, HALF, |_, _| {
            n += 1;
            if n < 3 {
                Probe::Unreachable("refused".into())
            } else {
                Probe::Exited("the container stopped (exited)".into())
            }
        })
        .unwrap_err();
        assert_eq!(err.attempts, 3);
        assert_eq!(err.waited, S);
        assert_eq!(
            err.describe("/health", 200),
            "the container stopped (exited) before GET /health answered 200"
        );
    }

    #[test]
    fn unexpected_answers_are_described_as_given() {
        let mut c = FakeClock::default();
        let err = wait_healthy(&mut c, S, HALF, |_, _| {
            Probe::Unexpected("200 without \"ready\" in the body".into())
        })
        .unwrap_err();
        assert_eq!(
            err.describe("http://127.0.0.1:8080/health", "2xx"),
            "GET http://127.0.0.1:8080/health answered 200 without \"ready\" in the body for 1s"
        );
    }
}
