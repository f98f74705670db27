//! The tag and slack-notify plugins, run by the host against a
//! Slack-compatible receiver on 127.0.0.1.
use host::run::Status;
use pipeline_tests::harness::Harness;
use pipeline_tests::slack::{Answer, SlackReceiver};

const WEBHOOK_SECRET_ENV: &str = "SLACK_WEBHOOK_URL";

fn pipeline(extra_stage: &str, notify_with: &str, grants: &str) -> String {
    format!(
        r##"
[pipeline]
name = "demo-app"

[plugins]
tag = "{{plugin:tag}}"
slack-notify = "{{plugin:slack-notify}}"
hostile = "{{plugin:hostile}}"

[secrets]
slack-webhook = {{ env = "{WEBHOOK_SECRET_ENV}" }}

[[stage]]
name = "tag"
plugin = "tag"
with = {{ image = "127.0.0.1:5000/demo-app" }}
{extra_stage}

[[stage]]
name = "notify"
plugin = "slack-notify"
needs = ["tag"]
when = {{ always = true }}
with = {{ webhook = "${{secret:slack-webhook}}", channel = "#deploys" {notify_with} }}
grants = {grants}
"##
    )
}

const GRANTS: &str = r#"{ http = ["http://127.0.0.1:*/services/*"], secrets = ["slack-webhook"] }"#;

fn harness(slack: &SlackReceiver) -> Harness {
    let mut h = Harness::new().unwrap();
    h.env.insert(WEBHOOK_SECRET_ENV.into(), slack.webhook_url());
    h
}

#[tokio::test]
async fn tags_are_computed_and_slack_gets_a_block_kit_message() {
    let slack = SlackReceiver::start().await.unwrap();
    let h = harness(&slack);
    let run = h
        .run_with(&pipeline("", "", GRANTS), |o| {
            o.build_number = 42;
            o.branch = Some("main".into());
        })
        .await;
    assert_eq!(run.status, Status::Success, "{run:#?}");

    let tags = &run.stage("tag").unwrap().outputs["tags"];
    let tags: Vec<&str> = tags.split(',').collect();
    assert!(tags.contains(&"0123456"), "{tags:?}");
    assert!(tags.contains(&"build-42"), "{tags:?}");
    assert!(tags.contains(&"main"), "{tags:?}");
    assert!(tags.contains(&"latest"), "{tags:?}");

    let msgs = slack.messages();
    assert_eq!(msgs.len(), 1);
    let body = msgs[0].body.to_string();
    assert!(msgs[0].body["blocks"].is_array(), "{body}");
    assert!(body.contains("demo-app"), "{body}");
    assert!(body.contains("tag"), "{body}");
    assert_eq!(msgs[0].body["channel"], "#deploys");
    assert_eq!(msgs[0].content_type.as_deref(), Some("application/json"));

    // The webhook URL is a secret: not in the record.
    let json = serde_json::to_string(&run).unwrap();
    assert!(
        !json.contains(&slack.webhook_url()),
        "webhook leaked into the record"
    );
}

#[tokio::test]
async fn semver_tags_on_a_version_tag() {
    let slack = SlackReceiver::start().await.unwrap();
    let h = harness(&slack);
    let run = h
        .run_with(&pipeline("", "", GRANTS), |o| {
            o.branch = None;
            o.tag = Some("v1.4.2".into());
        })
        .await;
    let tags = &run.stage("tag").unwrap().outputs["tags"];
    for t in ["1.4.2", "1.4", "1"] {
        assert!(tags.split(',').any(|x| x == t), "{t} missing from {tags}");
    }
    assert!(!tags.split(',').any(|x| x == "latest"), "{tags}");
}

#[tokio::test]
async fn notify_runs_after_a_failure_and_reports_it() {
    let slack = SlackReceiver::start().await.unwrap();
    let h = harness(&slack);
    let failing = r#"
[[stage]]
name = "test"
plugin = "hostile"
with = { attack = "fail" }
"#;
    let text =
        pipeline(failing, "", GRANTS).replace(r#"needs = ["tag"]"#, r#"needs = ["tag", "test"]"#);
    let run = h.run(&text).await;
    assert_eq!(run.stage("test").unwrap().status, Status::Failure);
    assert_eq!(run.stage("notify").unwrap().status, Status::Success);
    assert_eq!(run.status, Status::Failure);
    let body = slack.messages()[0].body.to_string().to_lowercase();
    assert!(body.contains("fail"), "{body}");
}

#[tokio::test]
async fn rate_limited_then_delivered() {
    let slack = SlackReceiver::start().await.unwrap();
    slack.push_answer(Answer::RateLimited {
        retry_after_secs: 1,
    });
    let h = harness(&slack);
    let run = h.run(&pipeline("", "", GRANTS)).await;
    let notify = run.stage("notify").unwrap();
    assert_eq!(notify.status, Status::Success, "{notify:#?}");
    assert_eq!(slack.requests(), 2, "one 429, one delivery");
    assert_eq!(slack.messages().len(), 1);
}

#[tokio::test]
async fn slack_errors_fail_the_stage_with_slacks_code() {
    for (status, code) in [
        (410, "channel_is_archived"),
        (404, "channel_not_found"),
        (400, "invalid_payload"),
    ] {
        let slack = SlackReceiver::start().await.unwrap();
        slack.push_answer(Answer::Error { status, code });
        let h = harness(&slack);
        let run = h.run(&pipeline("", ", retries = 0", GRANTS)).await;
        let notify = run.stage("notify").unwrap();
        assert_eq!(notify.status, Status::Failure);
        let err = notify.error.clone().unwrap_or_default();
        assert!(
            err.contains(code) && err.contains(&status.to_string()),
            "{err}"
        );
        assert!(!err.contains(&slack.webhook_url()), "webhook leaked: {err}");
    }
}

#[tokio::test]
async fn webhook_outside_the_grant_is_denied() {
    let slack = SlackReceiver::start().await.unwrap();
    let h = harness(&slack);
    let grants = r#"{ http = ["https://hooks.slack.com/*"], secrets = ["slack-webhook"] }"#;
    let run = h.run(&pipeline("", "", grants)).await;
    let notify = run.stage("notify").unwrap();
    assert_eq!(notify.status, Status::Failure);
    let err = notify.error.clone().unwrap_or_default();
    assert!(err.contains("denied") && err.contains("http"), "{err}");
    // The denial names the URL as written, not the secret's value.
    assert!(err.contains("${secret:slack-webhook}"), "{err}");
    assert!(!err.contains(&slack.webhook_url()), "{err}");
    assert_eq!(slack.requests(), 0);
}

#[tokio::test]
async fn secret_without_grant_is_denied_before_any_request() {
    let slack = SlackReceiver::start().await.unwrap();
    let h = harness(&slack);
    let grants = r#"{ http = ["http://127.0.0.1:*/services/*"] }"#;
    let run = h.run(&pipeline("", "", grants)).await;
    let err = run
        .stage("notify")
        .unwrap()
        .error
        .clone()
        .unwrap_or_default();
    assert!(
        err.contains("denied") && err.contains("slack-webhook"),
        "{err}"
    );
    assert_eq!(slack.requests(), 0);
}
