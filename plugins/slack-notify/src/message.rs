//! Slack Block Kit message building (pure, unit-tested natively).

use serde_json::{json, Value};
use stage_sdk::{RunContext, StageStatus, StageSummary};

/// Slack allows 50 blocks per message; header + context + overflow note use 3.
const MAX_STAGE_BLOCKS: usize = 46;
/// Slack's limit for a header's plain text.
const MAX_HEADER: usize = 150;
/// Slack's limit for a section's text.
const MAX_SECTION: usize = 3000;

/// Optional top-level message fields from the `with` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub channel: Option<String>,
    pub username: Option<String>,
    pub icon_emoji: Option<String>,
}

/// Slack emoji shortcode for a status.
pub fn emoji(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Success => ":white_check_mark:",
        StageStatus::Failure => ":x:",
        StageStatus::Cancelled => ":no_entry_sign:",
        StageStatus::Skipped => ":fast_forward:",
    }
}

/// `850ms`, `12.3s`, `2m 05s`, `1h 02m`.
pub fn format_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// Escapes `&`, `<` and `>` as Slack's mrkdwn requires.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max_chars - 1).collect();
        s.push('…');
        s
    }
}

fn short_sha(sha: &str) -> &str {
    match sha.char_indices().nth(7) {
        Some((i, _)) => &sha[..i],
        None => sha,
    }
}

/// `branch `main`` / `tag `v1.2.3`` plus `commit `0123abc``, as mrkdwn.
pub fn ref_line(run: &RunContext) -> String {
    let mut parts = Vec::new();
    if let Some(tag) = &run.tag {
        parts.push(format!("tag `{}`", escape(tag)));
    } else if let Some(branch) = &run.branch {
        parts.push(format!("branch `{}`", escape(branch)));
    }
    if !run.commit_sha.is_empty() {
        parts.push(format!("commit `{}`", escape(short_sha(&run.commit_sha))));
    }
    parts.push(format!("build #{}", run.build_number));
    if !run.event.is_empty() {
        parts.push(escape(&run.event));
    }
    parts.join(" · ")
}

/// The JSON body POSTed to the webhook.
pub fn build_message(
    run: &RunContext,
    finished: &[StageSummary],
    overall: StageStatus,
    overrides: &Overrides,
) -> Value {
    let status = overall.as_str();
    let title = format!(
        "{} {} #{}: {status}",
        emoji(overall),
        run.pipeline,
        run.build_number
    );
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(&title, MAX_HEADER), "emoji": true},
    })];

    for s in finished.iter().take(MAX_STAGE_BLOCKS) {
        let mut text = format!(
            "{} *{}* {} in {}",
            emoji(s.status),
            escape(&s.stage),
            s.status.as_str(),
            format_duration(s.duration_ms)
        );
        if !s.summary.is_empty() {
            text.push('\n');
            text.push_str(&escape(&s.summary));
        }
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&text, MAX_SECTION)},
        }));
    }
    if finished.len() > MAX_STAGE_BLOCKS {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn",
                "text": format!("… and {} more stages", finished.len() - MAX_STAGE_BLOCKS)}],
        }));
    }

    let mut context = ref_line(run);
    if !run.url.is_empty() {
        context.push_str(&format!(" · <{}|View run>", run.url));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": context}],
    }));

    let mut fallback = format!("{title} ({})", plain_ref(run));
    if !run.url.is_empty() {
        fallback.push_str(&format!(" {}", run.url));
    }

    let mut msg = json!({ "text": fallback, "blocks": blocks });
    let obj = msg.as_object_mut().expect("object");
    if let Some(c) = &overrides.channel {
        obj.insert("channel".into(), c.clone().into());
    }
    if let Some(u) = &overrides.username {
        obj.insert("username".into(), u.clone().into());
    }
    if let Some(i) = &overrides.icon_emoji {
        obj.insert("icon_emoji".into(), i.clone().into());
    }
    msg
}

fn plain_ref(run: &RunContext) -> String {
    let mut parts = Vec::new();
    if let Some(tag) = &run.tag {
        parts.push(format!("tag {tag}"));
    } else if let Some(branch) = &run.branch {
        parts.push(branch.clone());
    }
    if !run.commit_sha.is_empty() {
        parts.push(short_sha(&run.commit_sha).to_string());
    }
    if parts.is_empty() {
        format!("build #{}", run.build_number)
    } else {
        parts.join(" @ ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn run() -> RunContext {
        RunContext {
            run_id: "r1".into(),
            pipeline: "demo".into(),
            build_number: 42,
            commit_sha: "0123abcdef4567890123abcdef4567890123abcd".into(),
            branch: Some("main".into()),
            tag: None,
            event: "push".into(),
            environment: None,
            default_branch: "main".into(),
            url: "https://ci.example/runs/r1".into(),
        }
    }

    fn stage(name: &str, status: StageStatus, ms: u64, summary: &str) -> StageSummary {
        StageSummary {
            stage: name.into(),
            status,
            duration_ms: ms,
            summary: summary.into(),
        }
    }

    #[test]
    fn message_has_header_sections_context_and_fallback() {
        let finished = vec![
            stage("test", StageStatus::Success, 12_345, "42 passed"),
            stage(
                "scan",
                StageStatus::Failure,
                800,
                "2 CRITICAL <CVE-1> & more",
            ),
        ];
        let msg = build_message(
            &run(),
            &finished,
            StageStatus::Failure,
            &Overrides::default(),
        );
        let blocks = msg["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 4);
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], ":x: demo #42: failure");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(
            blocks[1]["text"]["text"],
            ":white_check_mark: *test* success in 12.3s\n42 passed"
        );
        assert_eq!(
            blocks[2]["text"]["text"],
            ":x: *scan* failure in 800ms\n2 CRITICAL &lt;CVE-1&gt; &amp; more"
        );
        assert_eq!(blocks[3]["type"], "context");
        assert_eq!(
            blocks[3]["elements"][0]["text"],
            "branch `main` · commit `0123abc` · build #42 · push · <https://ci.example/runs/r1|View run>"
        );
        assert_eq!(
            msg["text"],
            ":x: demo #42: failure (main @ 0123abc) https://ci.example/runs/r1"
        );
        assert!(msg.get("channel").is_none());
        assert!(msg.get("username").is_none());
    }

    #[test]
    fn tag_runs_without_url_and_overrides() {
        let mut r = run();
        r.tag = Some("v1.2.3".into());
        r.branch = None;
        r.url.clear();
        let o = Overrides {
            channel: Some("#deploys".into()),
            username: Some("ci".into()),
            icon_emoji: Some(":rocket:".into()),
        };
        let msg = build_message(&r, &[], StageStatus::Success, &o);
        assert_eq!(msg["channel"], "#deploys");
        assert_eq!(msg["username"], "ci");
        assert_eq!(msg["icon_emoji"], ":rocket:");
        assert_eq!(
            msg["text"],
            ":white_check_mark: demo #42: success (tag v1.2.3 @ 0123abc)"
        );
        let ctx = &msg["blocks"][1]["elements"][0]["text"];
        assert_eq!(ctx, "tag `v1.2.3` · commit `0123abc` · build #42 · push");
    }

    #[test]
    fn many_stages_stay_within_slack_block_limit() {
        let finished: Vec<_> = (0..60)
            .map(|i| stage(&format!("s{i}"), StageStatus::Success, 1, ""))
            .collect();
        let msg = build_message(
            &run(),
            &finished,
            StageStatus::Success,
            &Overrides::default(),
        );
        let blocks = msg["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50, "{}", blocks.len());
        assert_eq!(
            blocks[blocks.len() - 2]["elements"][0]["text"],
            "… and 14 more stages"
        );
    }

    #[test]
    fn long_header_is_truncated() {
        let mut r = run();
        r.pipeline = "p".repeat(400);
        let msg = build_message(&r, &[], StageStatus::Cancelled, &Overrides::default());
        let header = msg["blocks"][0]["text"]["text"].as_str().unwrap();
        assert_eq!(header.chars().count(), MAX_HEADER);
        assert!(header.starts_with(":no_entry_sign: ppp"));
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0ms");
        assert_eq!(format_duration(999), "999ms");
        assert_eq!(format_duration(1_050), "1.0s");
        assert_eq!(format_duration(59_999), "59.9s");
        assert_eq!(format_duration(125_000), "2m 05s");
        assert_eq!(format_duration(3_720_000), "1h 02m");
    }
}
