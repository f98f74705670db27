//! Environments and approvals: branches and tags map to environments; a
//! stage deploying to an environment that needs approval waits for
//! `host approve` / `host reject`, or times out.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host::run::approvals::{ApprovalStore, Decision};
use host::run::Status;
use pipeline_tests::harness::Harness;
use pipeline_tests::plugins::{host_bin, plugin};

const PIPELINE: &str = r#"
[pipeline]
name = "envs"
[plugins]
hostile = "{plugin:hostile}"

[environments.dev]
branch = ["develop"]

[environments.prod]
branch = ["main"]
approval = true
approval-timeout = "TIMEOUT"

[environments.production]
tag = ["v*"]
approval = true

[[stage]]
name = "build"
plugin = "hostile"
with = { attack = "ok" }

[[stage]]
name = "deploy-dev"
plugin = "hostile"
needs = ["build"]
environment = "dev"
with = { attack = "ok" }

[[stage]]
name = "deploy-prod"
plugin = "hostile"
needs = ["build"]
environment = "prod"
with = { attack = "ok" }

[[stage]]
name = "smoke"
plugin = "hostile"
needs = ["deploy-prod"]
with = { attack = "ok" }
"#;

fn pipeline(timeout: &str) -> String {
    PIPELINE.replace("TIMEOUT", timeout)
}

/// Wait until `stage` is pending approval, then decide.
async fn decide_when_pending(
    store: ApprovalStore,
    stage: &str,
    decision: Decision,
    comment: Option<&str>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = store.pending().await.unwrap();
        if let Some(p) = pending.iter().find(|p| p.stage == stage) {
            store
                .decide(&p.run_id, stage, decision, "tester", comment)
                .await
                .unwrap();
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stage} never asked for approval"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn develop_deploys_to_dev_without_approval() {
    let h = Harness::new().unwrap();
    let run = h
        .run_with(&pipeline("1h"), |o| o.branch = Some("develop".into()))
        .await;
    assert_eq!(run.environment.as_deref(), Some("dev"));
    assert_eq!(run.stage("deploy-dev").unwrap().status, Status::Success);
    let prod = run.stage("deploy-prod").unwrap();
    assert_eq!(prod.status, Status::Skipped);
    assert!(prod
        .error
        .as_deref()
        .unwrap()
        .contains("deploys to `prod`; this run deploys to `dev`"));
    assert_eq!(run.status, Status::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_waits_for_approval_then_proceeds() {
    let h = Harness::new().unwrap();
    let decider = tokio::spawn(decide_when_pending(
        h.approvals(),
        "deploy-prod",
        Decision::Approved,
        Some("ship it"),
    ));
    let run = h
        .run_with(&pipeline("1h"), |o| o.branch = Some("main".into()))
        .await;
    decider.await.unwrap();
    assert_eq!(run.environment.as_deref(), Some("prod"));
    let prod = run.stage("deploy-prod").unwrap();
    assert_eq!(prod.status, Status::Success, "{:?}", prod.error);
    let approval = prod.approval.as_ref().expect("approval recorded");
    assert_eq!(approval.decision, Decision::Approved);
    assert_eq!(approval.by.as_deref(), Some("tester"));
    assert_eq!(approval.comment.as_deref(), Some("ship it"));
    assert_eq!(run.stage("smoke").unwrap().status, Status::Success);
    assert_eq!(run.stage("deploy-dev").unwrap().status, Status::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_fails_the_stage_and_skips_what_follows() {
    let h = Harness::new().unwrap();
    let decider = tokio::spawn(decide_when_pending(
        h.approvals(),
        "deploy-prod",
        Decision::Rejected,
        Some("not on a Friday"),
    ));
    let run = h
        .run_with(&pipeline("1h"), |o| o.branch = Some("main".into()))
        .await;
    decider.await.unwrap();
    let prod = run.stage("deploy-prod").unwrap();
    assert_eq!(prod.status, Status::Failure);
    assert_eq!(
        prod.error.as_deref(),
        Some("deployment to `prod` rejected by tester: not on a Friday")
    );
    assert_eq!(prod.approval.as_ref().unwrap().decision, Decision::Rejected);
    assert_eq!(run.stage("smoke").unwrap().status, Status::Skipped);
    assert_eq!(run.status, Status::Failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_times_out() {
    let h = Harness::new().unwrap();
    let run = h
        .run_with(&pipeline("1s"), |o| o.branch = Some("main".into()))
        .await;
    let prod = run.stage("deploy-prod").unwrap();
    assert_eq!(prod.status, Status::Failure);
    assert!(
        prod.error
            .as_deref()
            .unwrap()
            .contains("no approval for `prod` within 1.0s"),
        "{:?}",
        prod.error
    );
    assert_eq!(prod.approval.as_ref().unwrap().decision, Decision::TimedOut);
    // A late approval is refused: nothing is pending any more.
    let err = h
        .approvals()
        .decide(&run.id, "deploy-prod", Decision::Approved, "late", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not waiting for approval"), "{err}");
}

/// The real flow across processes: `host run` waits, `host approve` from
/// another process lets it go on.
#[test]
fn host_approve_resumes_a_waiting_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        pipeline("10m").replace("{plugin:hostile}", plugin("hostile").to_str().unwrap()),
    )
    .unwrap();
    let mut child = Command::new(host_bin())
        .env("HOST_STATE_DIR", &state)
        .env("NO_COLOR", "1")
        .args(["run", "--branch", "main", "--json", file.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut run_id, mut approve_cmd, mut seen) = (String::new(), String::new(), String::new());
    while approve_cmd.is_empty() {
        let line = lines
            .next()
            .expect("host ended before asking for approval")
            .unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.strip_prefix("run ") {
            run_id = rest.split_whitespace().next().unwrap().to_string();
        }
        if let Some(i) = line.find("approve: ") {
            approve_cmd = line[i + "approve: ".len()..].trim().to_string();
        }
    }
    assert_eq!(
        approve_cmd,
        format!("host approve {run_id} deploy-prod"),
        "{seen}"
    );
    // Listed as pending.
    let out = Command::new(host_bin())
        .env("HOST_STATE_DIR", &state)
        .args(["approvals"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&run_id));
    let out = Command::new(host_bin())
        .env("HOST_STATE_DIR", &state)
        .args([
            "approve",
            &run_id,
            "deploy-prod",
            "--by",
            "alice",
            "--comment",
            "LGTM",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{seen}{}", rest.join("\n"));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prod = record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "deploy-prod")
        .unwrap();
    assert_eq!(prod["approval"]["decision"], "approved");
    assert_eq!(prod["approval"]["by"], "alice");
    assert_eq!(record["environment"], "prod");
}
