//! Classifying Slack's answers and the retry loop (pure, tested with fakes).
//!
//! Slack incoming webhooks answer `200 ok`, or a plain-text error code:
//! 400 `invalid_payload` / `user_not_found`, 403 `action_prohibited`,
//! 404 `channel_not_found` / `no_service`, 410 `channel_is_archived`,
//! 500 `rollup_error`, and 429 with `Retry-After` when rate limited.

use std::time::Duration;

use stage_sdk::http::{Request, Response};
use stage_sdk::CapError;

/// What to do after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Slack took the message (`ok` is the body; anything else is kept).
    Delivered { body: String },
    /// Do not retry; the text names Slack's error code and the HTTP status.
    Fail(String),
    /// Retry after this long (already capped); the text says why.
    Retry { wait: Duration, reason: String },
}

/// Slack's documented webhook error codes and what they mean.
pub fn explain(code: &str) -> Option<&'static str> {
    Some(match code {
        "invalid_payload" => "the message JSON was rejected",
        "user_not_found" => "the user to post to does not exist",
        "action_prohibited" => "an admin restricted posting through this webhook",
        "channel_not_found" => "the channel does not exist or the webhook cannot post to it",
        "no_service" => "the webhook is disabled, removed or invalid",
        "channel_is_archived" => "the channel is archived",
        "rollup_error" => "Slack failed to post the message",
        _ => return None,
    })
}

fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.trim().lines().next().unwrap_or("").trim();
    let mut s: String = line.chars().take(200).collect();
    if s.is_empty() {
        s.push_str("(empty body)");
    }
    s
}

fn describe(status: u16, code: &str) -> String {
    match explain(code) {
        Some(why) => format!("{code} (HTTP {status}): {why}"),
        None => format!("{code} (HTTP {status})"),
    }
}

/// Classifies one HTTP answer. `attempt` is 0 for the first try (for backoff).
pub fn classify(resp: &Response, attempt: u32, max_wait: Duration) -> Outcome {
    let code = first_line(&resp.body);
    match resp.status {
        200..=299 => Outcome::Delivered { body: code },
        429 => {
            let secs = resp
                .header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1);
            Outcome::Retry {
                wait: Duration::from_secs(secs).min(max_wait),
                reason: format!("rate limited (HTTP 429, Retry-After {secs}s)"),
            }
        }
        500 if code == "rollup_error" => Outcome::Fail(describe(500, &code)),
        500..=599 => Outcome::Retry {
            wait: backoff(attempt, max_wait),
            reason: format!("server error {}", describe(resp.status, &code)),
        },
        status => Outcome::Fail(describe(status, &code)),
    }
}

/// 1s, 2s, 4s, ... capped at `max_wait`.
pub fn backoff(attempt: u32, max_wait: Duration) -> Duration {
    Duration::from_secs(1u64 << attempt.min(16)).min(max_wait)
}

/// Classifies a host error: a network failure is retried, the rest fail.
pub fn classify_cap_error(err: &CapError, attempt: u32, max_wait: Duration) -> Outcome {
    match err {
        CapError::Failed(_) => Outcome::Retry {
            wait: backoff(attempt, max_wait),
            reason: err.message(),
        },
        _ => Outcome::Fail(err.message()),
    }
}

/// Final result of [`deliver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered after `attempts` tries; `body` is Slack's answer.
    Sent { attempts: u32, body: String },
    /// Not delivered; the text is for the stage summary.
    Failed(String),
}

/// Sends `req` up to `1 + retries` times, sleeping as [`classify`] says.
pub fn deliver(
    req: &Request,
    retries: u32,
    max_wait: Duration,
    mut send: impl FnMut(&Request) -> Result<Response, CapError>,
    mut sleep: impl FnMut(Duration),
) -> Delivery {
    let mut attempt = 0;
    loop {
        let outcome = match send(req) {
            Ok(resp) => classify(&resp, attempt, max_wait),
            Err(e) => classify_cap_error(&e, attempt, max_wait),
        };
        match outcome {
            Outcome::Delivered { body } => {
                return Delivery::Sent {
                    attempts: attempt + 1,
                    body,
                }
            }
            Outcome::Fail(why) => return Delivery::Failed(why),
            Outcome::Retry { wait, reason } => {
                if attempt >= retries {
                    return Delivery::Failed(format!(
                        "gave up after {} attempts: {reason}",
                        attempt + 1
                    ));
                }
                stage_sdk::log::warn!(
                    "slack: {reason}; retrying in {}s ({}/{retries})",
                    wait.as_secs_f32(),
                    attempt + 1
                );
                sleep(wait);
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::Denial;

    const MAX: Duration = Duration::from_secs(30);

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn ok_is_delivered() {
        assert_eq!(
            classify(&resp(200, "ok"), 0, MAX),
            Outcome::Delivered { body: "ok".into() }
        );
    }

    #[test]
    fn documented_errors_fail_naming_code_and_status() {
        for (status, code) in [
            (400, "invalid_payload"),
            (400, "user_not_found"),
            (403, "action_prohibited"),
            (404, "channel_not_found"),
            (404, "no_service"),
            (410, "channel_is_archived"),
            (500, "rollup_error"),
        ] {
            match classify(&resp(status, code), 0, MAX) {
                Outcome::Fail(m) => {
                    assert!(m.starts_with(&format!("{code} (HTTP {status})")), "{m}");
                    assert!(explain(code).is_some());
                }
                other => panic!("{status} {code}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_4xx_fails_with_body() {
        assert_eq!(
            classify(&resp(401, "invalid_token\n"), 0, MAX),
            Outcome::Fail("invalid_token (HTTP 401)".into())
        );
        assert_eq!(
            classify(&resp(404, ""), 0, MAX),
            Outcome::Fail("(empty body) (HTTP 404)".into())
        );
    }

    #[test]
    fn rate_limit_honours_retry_after_capped() {
        let mut r = resp(429, "rate_limited");
        r.headers.push(("Retry-After".into(), "5".into()));
        match classify(&r, 0, MAX) {
            Outcome::Retry { wait, .. } => assert_eq!(wait, Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
        r.headers[0].1 = "120".into();
        match classify(&r, 0, MAX) {
            Outcome::Retry { wait, reason } => {
                assert_eq!(wait, MAX);
                assert!(reason.contains("Retry-After 120s"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        r.headers.clear();
        match classify(&r, 0, MAX) {
            Outcome::Retry { wait, .. } => assert_eq!(wait, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_5xx_backs_off() {
        assert!(matches!(
            classify(&resp(503, "unavailable"), 2, MAX),
            Outcome::Retry { wait, .. } if wait == Duration::from_secs(4)
        ));
        assert_eq!(backoff(10, MAX), MAX);
        assert_eq!(backoff(40, Duration::from_secs(3)), Duration::from_secs(3));
    }

    #[test]
    fn retries_then_succeeds_and_sleeps_as_told() {
        let mut answers = vec![resp(200, "ok"), resp(503, "x"), {
            let mut r = resp(429, "rate_limited");
            r.headers.push(("retry-after".into(), "2".into()));
            r
        }];
        let mut slept = Vec::new();
        let d = deliver(
            &Request::new("POST", "u"),
            3,
            MAX,
            |_| Ok(answers.pop().unwrap()),
            |w| slept.push(w),
        );
        assert_eq!(
            d,
            Delivery::Sent {
                attempts: 3,
                body: "ok".into()
            }
        );
        assert_eq!(slept, vec![Duration::from_secs(2), Duration::from_secs(2)]);
    }

    #[test]
    fn gives_up_after_retries() {
        let mut calls = 0;
        let d = deliver(
            &Request::new("POST", "u"),
            2,
            MAX,
            |_| {
                calls += 1;
                Ok(resp(502, "bad gateway"))
            },
            |_| {},
        );
        assert_eq!(calls, 3);
        match d {
            Delivery::Failed(m) => {
                assert!(
                    m.starts_with("gave up after 3 attempts: server error"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hard_errors_are_not_retried() {
        let mut calls = 0;
        let d = deliver(
            &Request::new("POST", "u"),
            3,
            MAX,
            |_| {
                calls += 1;
                Ok(resp(404, "channel_not_found"))
            },
            |_| panic!("must not sleep"),
        );
        assert_eq!(calls, 1);
        assert!(matches!(d, Delivery::Failed(m) if m.starts_with("channel_not_found (HTTP 404)")));
    }

    #[test]
    fn denial_fails_with_its_text() {
        let d = deliver(
            &Request::new("POST", "u"),
            3,
            MAX,
            |_| {
                Err(CapError::Denied(Denial {
                    stage: "notify".into(),
                    capability: "http".into(),
                    target: "https://hooks.slack.com/x".into(),
                }))
            },
            |_| panic!("must not sleep"),
        );
        assert_eq!(
            d,
            Delivery::Failed(
                "denied: stage \"notify\" has no \"http\" grant for \"https://hooks.slack.com/x\""
                    .into()
            )
        );
    }

    #[test]
    fn network_failures_are_retried() {
        let mut calls = 0;
        let d = deliver(
            &Request::new("POST", "u"),
            1,
            MAX,
            |_| {
                calls += 1;
                if calls == 1 {
                    Err(CapError::Failed("connection refused".into()))
                } else {
                    Ok(resp(200, "ok"))
                }
            },
            |_| {},
        );
        assert!(matches!(d, Delivery::Sent { attempts: 2, .. }));
    }
}
