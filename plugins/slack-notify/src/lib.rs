//! `slack-notify` stage: posts a Block Kit summary of the run to a Slack
//! incoming webhook through the host's `http` import.
//!
//! `with` keys: `webhook` (required; usually `"${secret:slack-webhook}"`,
//! passed unchanged as the URL for the host to expand), `channel`,
//! `username`, `icon-emoji`, `retries` (3), `max-retry-wait` (30 seconds),
//! `only-on` (`"always"` | `"failure"` | `"success"`, default always).
//!
//! Overall status: failure if any finished stage failed, else cancelled if
//! any was cancelled, else success. `only-on = "failure"` sends for failure
//! only, `"success"` for success only; cancelled runs notify only with
//! `"always"`.

use std::time::Duration;

use serde::Deserialize;
use stage_sdk::{http, ConfigKey, Context, PluginInfo, Report, Stage, StageError, StageStatus};

pub mod deliver;
pub mod message;

use deliver::Delivery;
use message::Overrides;

/// Per-request timeout asked of the host.
const REQUEST_TIMEOUT_MS: u32 = 10_000;

/// When to send.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnlyOn {
    Always,
    Failure,
    Success,
}

impl OnlyOn {
    /// Whether a run with `overall` status is notified.
    pub fn wants(self, overall: StageStatus) -> bool {
        match self {
            OnlyOn::Always => true,
            OnlyOn::Failure => overall == StageStatus::Failure,
            OnlyOn::Success => overall == StageStatus::Success,
        }
    }
}

/// The `with` table. `retries`, `max-retry-wait` and `only-on` get their
/// defaults from `describe()` (the SDK fills them in), not from serde.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    pub webhook: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub icon_emoji: Option<String>,
    pub retries: u32,
    pub max_retry_wait: u64,
    pub only_on: OnlyOn,
}

/// Everything but the export glue; `send`/`sleep` are injected for tests.
pub fn notify(
    ctx: &Context,
    send: impl FnMut(&http::Request) -> Result<http::Response, stage_sdk::CapError>,
    sleep: impl FnMut(Duration),
) -> Result<Report, StageError> {
    let with: With = ctx.config_with_defaults()?;
    if with.webhook.trim().is_empty() {
        return Err(StageError::config("with.webhook: must not be empty"));
    }
    let overall = ctx.overall_status();
    if !with.only_on.wants(overall) {
        return Ok(Report::passed(format!(
            "not sent: run is {} and only-on is {:?}",
            overall.as_str(),
            with.only_on
        ))
        .output("sent", "false"));
    }
    let overrides = Overrides {
        channel: with.channel.clone(),
        username: with.username.clone(),
        icon_emoji: with.icon_emoji.clone(),
    };
    let body = message::build_message(ctx.run(), ctx.finished(), overall, &overrides);
    let req = http::Request::new("POST", with.webhook.as_str())
        .json(&body)?
        .timeout_ms(REQUEST_TIMEOUT_MS);
    let max_wait = Duration::from_secs(with.max_retry_wait);
    Ok(
        match deliver::deliver(&req, with.retries, max_wait, send, sleep) {
            Delivery::Sent { attempts, body } => {
                let tries = if attempts == 1 {
                    String::new()
                } else {
                    format!(" after {attempts} attempts")
                };
                let summary = format!("slack: notified ({}){tries}", overall.as_str());
                let report = if body == "ok" {
                    Report::passed(summary)
                } else {
                    Report::warning(format!("{summary}; Slack answered {body:?}"))
                };
                report.output("sent", "true")
            }
            Delivery::Failed(why) => {
                Report::failed(format!("slack: {why}")).output("sent", "false")
            }
        },
    )
}

struct SlackNotify;

impl Stage for SlackNotify {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "slack-notify",
            env!("CARGO_PKG_VERSION"),
            "Posts a summary of the run to a Slack incoming webhook",
        )
        .key(ConfigKey::required(
            "webhook",
            "Webhook URL, usually \"${secret:slack-webhook}\" (expanded by the host)",
        ))
        .key(ConfigKey::optional_no_default(
            "channel",
            "Channel override",
        ))
        .key(ConfigKey::optional_no_default(
            "username",
            "Username override",
        ))
        .key(ConfigKey::optional_no_default(
            "icon-emoji",
            "Icon override, e.g. \":rocket:\"",
        ))
        .key(ConfigKey::optional(
            "retries",
            "Retries on 429 and 5xx",
            "3",
        ))
        .key(ConfigKey::optional(
            "max-retry-wait",
            "Longest wait between retries, seconds",
            "30",
        ))
        .key(ConfigKey::optional(
            "only-on",
            "\"always\", \"failure\" or \"success\"",
            "\"always\"",
        ))
        .capability("http")
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        notify(&ctx, http::send, std::thread::sleep)
    }
}

stage_sdk::export_stage!(SlackNotify);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::{ReportStatus, StageSummary};

    fn ctx(with: &str, failed: bool) -> Context {
        let mut raw = Context::for_test("notify", with).into_raw();
        raw.finished.push(StageSummary {
            stage: "test".into(),
            status: if failed {
                StageStatus::Failure
            } else {
                StageStatus::Success
            },
            duration_ms: 1500,
            summary: "done".into(),
        });
        // With the keys `describe()` declares, as the export glue does.
        Context::new(raw).with_keys(SlackNotify::describe().config)
    }

    fn ok(_: &http::Request) -> Result<http::Response, stage_sdk::CapError> {
        Ok(http::Response {
            status: 200,
            headers: vec![],
            body: b"ok".to_vec(),
        })
    }

    #[test]
    fn posts_json_to_the_webhook_unchanged() {
        let mut seen = None;
        let r = notify(
            &ctx(
                r##"{"webhook":"${secret:slack-webhook}","channel":"#deploys"}"##,
                false,
            ),
            |req| {
                seen = Some(req.clone());
                ok(req)
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(r.status, ReportStatus::Passed);
        assert_eq!(r.get_output("sent"), Some("true"));
        let req = seen.unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.url, "${secret:slack-webhook}");
        assert!(req
            .headers
            .contains(&("content-type".into(), "application/json".into())));
        let body: serde_json::Value = serde_json::from_slice(req.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["channel"], "#deploys");
        assert_eq!(body["blocks"][0]["type"], "header");
        assert!(body["text"].as_str().unwrap().contains("success"));
    }

    #[test]
    fn only_on_failure_skips_successful_runs() {
        let with = r#"{"webhook":"https://h","only-on":"failure"}"#;
        let r = notify(&ctx(with, false), |_| panic!("must not send"), |_| {}).unwrap();
        assert_eq!(r.status, ReportStatus::Passed);
        assert_eq!(r.get_output("sent"), Some("false"));
        let r = notify(&ctx(with, true), ok, |_| {}).unwrap();
        assert_eq!(r.get_output("sent"), Some("true"));
        assert!(!OnlyOn::Success.wants(StageStatus::Cancelled));
        assert!(!OnlyOn::Failure.wants(StageStatus::Cancelled));
        assert!(OnlyOn::Always.wants(StageStatus::Cancelled));
    }

    #[test]
    fn slack_error_fails_the_stage() {
        let r = notify(
            &ctx(r#"{"webhook":"https://h"}"#, false),
            |_| {
                Ok(http::Response {
                    status: 410,
                    headers: vec![],
                    body: b"channel_is_archived".to_vec(),
                })
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert!(
            r.summary
                .starts_with("slack: channel_is_archived (HTTP 410)"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn config_errors() {
        let err = |with: &str| match notify(&ctx(with, false), ok, |_| {}) {
            Err(StageError::Config(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(err("{}"), "with.webhook: required key is missing");
        assert!(err(r#"{"webhook":"u","only-on":"sometimes"}"#).starts_with("with.only-on:"));
        assert!(err(r#"{"webhook":"u","retries":-1}"#).starts_with("with.retries:"));
        assert_eq!(err(r#"{"webhook":" "}"#), "with.webhook: must not be empty");
    }
}
