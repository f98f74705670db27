//! One commit status to the forge: `POST {api}/repos/{owner}/{repo}/
//! statuses/{sha}` as GitHub documents it, and what its answer means for
//! the sender (posted; try again, and when; refused for good).
use std::time::Duration;

use serde_json::json;

use super::outbox::OutboxRow;

/// What the forge's answer means.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Posted,
    /// Try again: after `after` when the forge said so (rate limits),
    /// else after the sender's backoff.
    Later {
        after: Option<Duration>,
        why: String,
    },
    /// Never again (422: invalid, or GitHub's 1000 statuses per sha and
    /// context; 401/403 without a rate limit: the token; 404).
    Refused(String),
}

/// The longest wait a rate limit may ask for before the sender tries
/// again anyway.
const MAX_RATE_WAIT: Duration = Duration::from_secs(15 * 60);

pub struct Forge {
    http: reqwest::Client,
    api_url: String,
    token: String,
}

impl Forge {
    pub fn new(api_url: &str, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("pipeline-host/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn statuses_url(&self, s: &OutboxRow) -> String {
        format!("{}/repos/{}/statuses/{}", self.api_url, s.repository, s.sha)
    }

    /// Post one status.
    pub async fn post(&self, s: &OutboxRow) -> Answer {
        let mut body = json!({
            "state": s.state,
            "description": s.description,
            "context": s.context,
        });
        if let Some(u) = &s.target_url {
            body["target_url"] = json!(u);
        }
        let sent = self
            .http
            .post(self.statuses_url(s))
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(resp) => answer(resp).await,
            Err(e) => Answer::Later {
                after: None,
                why: format!("the forge did not answer: {}", without_url(&e)),
            },
        }
    }

    /// Whether the forge already shows this status (a post whose answer
    /// the server did not live to record).
    pub async fn already_there(&self, s: &OutboxRow) -> bool {
        let resp = self
            .http
            .get(self.statuses_url(s))
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.github+json")
            .query(&[("per_page", "100")])
            .send()
            .await;
        let Ok(resp) = resp else { return false };
        let Ok(list) = resp.json::<Vec<serde_json::Value>>().await else {
            return false;
        };
        list.iter().any(|st| {
            st["context"] == s.context.as_str()
                && st["state"] == s.state.as_str()
                && st["description"] == s.description.as_str()
        })
    }
}

/// reqwest's message without the URL (it names the repository and sha,
/// which is fine, but never the token; the token is in a header anyway).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "the forge");
    }
    text
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    if (200..300).contains(&status) {
        return Answer::Posted;
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let m = v["message"].as_str()?.to_string();
            let errors = v["errors"].as_array().map(|e| {
                e.iter()
                    .filter_map(|x| x["message"].as_str().or(x["code"].as_str()))
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            Some(match errors {
                Some(e) if !e.is_empty() => format!("{m}: {e}"),
                _ => m,
            })
        })
        .unwrap_or_else(|| crate::text::cut(&body, 200));
    let why = format!("HTTP {status}: {message}");
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some(after) = rate_limited(status, &header) {
        return Answer::Later {
            after: Some(after.min(MAX_RATE_WAIT)),
            why,
        };
    }
    match status {
        500..=599 => Answer::Later { after: None, why },
        _ => Answer::Refused(why),
    }
}

/// GitHub's rate limits: 403 or 429 with `retry-after` (seconds), or with
/// `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (Unix seconds).
fn rate_limited(status: u16, header: &dyn Fn(&str) -> Option<String>) -> Option<Duration> {
    if !matches!(status, 403 | 429) {
        return None;
    }
    if let Some(secs) = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header("x-ratelimit-remaining").as_deref() == Some("0") {
        let reset = header("x-ratelimit-reset")?.trim().parse::<i64>().ok()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1) as u64));
    }
    // 429 without a hint is still a rate limit.
    (status == 429).then(|| Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(status: u16, pairs: &[(&str, &str)]) -> Option<Duration> {
        let h = |n: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        rate_limited(status, &h)
    }

    #[test]
    fn rate_limits_are_read_as_github_sends_them() {
        assert_eq!(
            limit(403, &[("retry-after", "7")]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            limit(429, &[("retry-after", "2")]),
            Some(Duration::from_secs(2))
        );
        let reset = (time::OffsetDateTime::now_utc().unix_timestamp() + 30).to_string();
        let d = limit(
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ],
        )
        .unwrap();
        assert!((28..=31).contains(&d.as_secs()), "{d:?}");
        // A 403 that is not a rate limit: the token may not do this.
        assert_eq!(limit(403, &[("x-ratelimit-remaining", "4999")]), None);
        assert_eq!(limit(429, &[]), Some(Duration::from_secs(60)));
        assert_eq!(limit(500, &[("retry-after", "1")]), None);
    }
}
