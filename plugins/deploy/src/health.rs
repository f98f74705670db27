//! The health-check loop, with an injectable clock and sleeper.

use std::time::Duration;

use crate::config::fmt_duration;

/// Time as the deploy sees it: the host's clock in the plugin, a fake one
/// in tests.
pub trait Clock {
    /// Time since some fixed point.
    fn now(&mut self) -> Duration;
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

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Answered the expected status.
    Healthy,
    /// Answered another status.
    Status(u16),
    /// No answer (connection refused, timeout...).
    Unreachable(String),
    /// The container is not running any more: no point waiting.
    Exited(String),
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub last: Probe,
    pub waited: Duration,
    pub attempts: u32,
}

impl Failure {
    /// `GET /health answered 503 for 30s`, `GET /health got no answer for
    /// 30s (connection refused)`, `the container exited (exited) before
    /// GET /health answered 200`.
    pub fn describe(&self, path: &str, expect: u16) -> String {
        let waited = fmt_duration(self.waited);
        match &self.last {
            Probe::Status(s) => format!("GET {path} answered {s} for {waited}"),
            Probe::Unreachable(e) => format!("GET {path} got no answer for {waited} ({e})"),
            Probe::Exited(state) => {
                format!("the container stopped ({state}) before GET {path} answered {expect}")
            }
            Probe::Healthy => format!("GET {path} answered {expect}"),
        }
    }
}

/// Probes until healthy, the container exits, or `timeout` has passed,
/// sleeping `interval` between probes (less near the end). Returns the
/// time it took.
pub fn wait_healthy<C: Clock>(
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
pub mod fake {
    use super::*;

    /// A clock that only moves when slept on (or told to).
    #[derive(Default, Debug)]
    pub struct FakeClock {
        pub now: Duration,
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
}

#[cfg(test)]
mod tests {
    use super::fake::FakeClock;
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
    fn an_exited_container_fails_at_once() {
        let mut c = FakeClock::default();
        let mut n = 0;
        let err = wait_healthy(&mut c, 30 * S, HALF, |_, _| {
            n += 1;
            if n < 3 {
                Probe::Unreachable("refused".into())
            } else {
                Probe::Exited("exited".into())
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
}
