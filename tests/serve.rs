//! `host serve` end to end: the real binary, a real git repository reached
//! by `file://`, signed deliveries built from GitHub's payload examples.
use std::process::Command;
use std::time::Duration;

use pipeline_tests::archive::{sha256_of, tar_gz};
use pipeline_tests::cli::{host, shown, stage, text};
use pipeline_tests::serve::{
    config, hostile_pipeline as pipeline, pull_request_payload, push_payload, GitRepo, Server,
    REPO, SECRET,
};
use serde_json::Value;

const RUN: Duration = Duration::from_secs(120);

const PUSH_MAIN: &str = r#"
[[repository.trigger]]
event = "push"
branch = ["main", "feature/**"]

[[repository.trigger]]
event = "push"
tag = ["v*"]

[[repository.trigger]]
event = "pull_request"
branch = ["main"]
"#;

const READ_VERSION: &str = r#"
[[stage]]
name = "read"
plugin = "hostile"
with = { attack = "read-workspace", path = "VERSION" }
grants = { workspace = "ro" }

[[stage]]
name = "talk"
plugin = "hostile"
needs = ["read"]
with = { attack = "chatty", lines = 3 }
"#;

#[test]
fn a_signed_push_runs_the_pushed_commit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let p = pipeline("served", READ_VERSION);
    let first = repo.push("main", &[("pipeline.toml", &p), ("VERSION", "1.0.0")]);
    let second = repo.push("main", &[("VERSION", "2.0.0")]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));

    // The older commit, delivered late, still runs that commit.
    let run1 = server.push("d-1", "refs/heads/main", &first);
    let run2 = server.push("d-2", "refs/heads/main", &second);
    let r1 = server.wait_run(&run1, RUN);
    let r2 = server.wait_run(&run2, RUN);
    for (r, sha, version) in [(&r1, &first, "1.0.0"), (&r2, &second, "2.0.0")] {
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["commit_sha"], sha.as_str());
        assert_eq!(r["branch"], "main");
        assert_eq!(r["event"], "push");
        assert_eq!(stage(r, "read")["outputs"]["content"], version, "{r}");
        assert_eq!(r["trigger"]["repository"], REPO);
    }
    assert_eq!(r1["trigger"]["delivery"], "d-1");
    assert_eq!(r1["trigger"]["sender"], "Codertocat");
    assert_eq!(
        (r1["build_number"].as_u64(), r2["build_number"].as_u64()),
        (Some(1), Some(2))
    );

    // A tag push runs as a tag build; a push to an untriggered branch is
    // accepted and ignored.
    let tagged = repo.tag("v2.0.0");
    let run3 = server.push("d-3", "refs/tags/v2.0.0", &tagged);
    let r3 = server.wait_run(&run3, RUN);
    assert_eq!(
        (r3["tag"].as_str(), r3["branch"].as_str()),
        (Some("v2.0.0"), None)
    );
    let other = repo.push("experiment", &[("VERSION", "x")]);
    let (status, v) = server.deliver(
        "push",
        "d-4",
        &push_payload("refs/heads/experiment", &other),
        Some(SECRET),
    );
    assert_eq!(status, 202, "{v}");
    assert!(
        v["ignored"].as_str().unwrap().contains("no push trigger"),
        "{v}"
    );

    // A ping is answered; an event nobody handles is ignored.
    let (status, v) = server.deliver(
        "ping",
        "d-5",
        br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#,
        Some(SECRET),
    );
    assert_eq!(
        (status, v["zen"].as_str()),
        (200, Some("Keep it logically awesome."))
    );
    let (status, _) = server.deliver("issues", "d-6", b"{}", Some(SECRET));
    assert_eq!(status, 202);
    assert_eq!(server.runs().0.len(), 3);

    // The history, from the CLI, reading the same store.
    let out = host(&server.state, &["runs"]);
    assert!(out.status.success(), "{}", shown(&out));
    let list = text(&out.stdout);
    for id in [&run1, &run2, &run3] {
        assert!(list.contains(id.as_str()), "{list}");
    }
    assert!(
        list.contains("tag v2.0.0") && list.contains("success"),
        "{list}"
    );
    let out = host(&server.state, &["runs", "show", &run2[..6]]);
    let show = text(&out.stdout);
    assert!(out.status.success(), "{}", shown(&out));
    assert!(
        show.contains(&format!("run {run2}")) && show.contains(&second),
        "{show}"
    );
    assert!(show.contains("output content = 2.0.0"), "{show}");
    assert!(show.contains("delivery d-2"), "{show}");
    let out = host(&server.state, &["logs", &run2, "talk"]);
    assert_eq!(
        text(&out.stdout),
        "line 1 of 3\nline 2 of 3\nline 3 of 3\n",
        "{}",
        shown(&out)
    );
    let out = host(&server.state, &["logs", "nope"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no run `nope`"));
    let out = host(&server.state, &["logs", &run2, "nope"]);
    assert!(
        text(&out.stderr).contains("has no stage `nope`; its stages: read, talk"),
        "{}",
        shown(&out)
    );
}

#[test]
fn wrong_or_missing_signatures_get_401_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let sha = repo.push(
        "main",
        &[
            ("pipeline.toml", &pipeline("served", READ_VERSION)),
            ("VERSION", "1"),
        ],
    );
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let body = push_payload("refs/heads/main", &sha);
    let (status, v) = server.deliver("push", "bad-1", &body, Some("not the secret"));
    assert_eq!(status, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("does not match"),
        "{v}"
    );
    let (status, _) = server.deliver("push", "bad-2", &body, None);
    assert_eq!(status, 401);
    // Signed, then changed on the way.
    let mut tampered = body.clone();
    let at = tampered.len() - 2;
    tampered[at] = b' ';
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/github-webhook/", server.url))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "bad-3")
        .header(
            "X-Hub-Signature-256",
            pipeline_tests::serve::sign(SECRET, &body),
        )
        .body(tampered)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Well signed but not a delivery: 400 naming the problem.
    let (status, v) = server.deliver("push", "bad-4", b"{\"ref\": 7}", Some(SECRET));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("push payload:"),
        "{v}"
    );
    let (status, v) = server.deliver("push", "../../etc", &body, Some(SECRET));
    assert_eq!(status, 400, "{v}");
    // Too big: refused before anything else.
    let huge = vec![b' '; 6 << 20];
    let (status, _) = server.deliver("push", "big-1", &huge, Some(SECRET));
    assert_eq!(status, 413);

    let (runs, queued) = server.runs();
    assert!(runs.is_empty() && queued.is_empty(), "{runs:?} {queued:?}");
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("pipeline_webhook_deliveries_total{outcome=\"unauthorized\"} 3"),
        "{metrics}"
    );
    // The same delivery, now signed, is accepted: refusals were not recorded.
    assert_eq!(server.deliver("push", "bad-1", &body, Some(SECRET)).0, 202);
}

#[test]
fn a_duplicate_delivery_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let sha = repo.push(
        "main",
        &[
            ("pipeline.toml", &pipeline("served", READ_VERSION)),
            ("VERSION", "1"),
        ],
    );
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let run = server.push("same-guid", "refs/heads/main", &sha);
    server.wait_run(&run, RUN);
    let (status, v) = server.deliver(
        "push",
        "same-guid",
        &push_payload("refs/heads/main", &sha),
        Some(SECRET),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["runs"][0], run.as_str());
    let (runs, queued) = server.runs();
    assert_eq!((runs.len(), queued.len()), (1, 0), "{runs:?}");
}

#[test]
fn a_killed_or_stopped_server_loses_no_accepted_run() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let slow = r#"
[[stage]]
name = "slow"
plugin = "hostile"
with = { attack = "sleep", ms = 3000 }
"#;
    repo.push("main", &[("pipeline.toml", &pipeline("durable", slow))]);
    let shas: Vec<String> = (1..=3)
        .map(|i| repo.push(&format!("feature/{i}"), &[("N", &i.to_string())]))
        .collect();
    let cfg = config(&repo.url(), "concurrency = 1", "", PUSH_MAIN);
    let server = Server::start(dir.path(), &cfg);
    let ids: Vec<String> = shas
        .iter()
        .enumerate()
        .map(|(i, sha)| {
            server.push(
                &format!("dur-{i}"),
                &format!("refs/heads/feature/{}", i + 1),
                sha,
            )
        })
        .collect();
    // The first one is running, the others wait: kill -9.
    server.wait_until(&ids[0], RUN, "the slow stage running", |r| {
        r["stages"].get(0).is_some_and(|s| s["status"] == "running")
    });
    assert_eq!(server.runs().1.len(), 2);
    server.kill();

    // Restarted: the interrupted run goes again, the queued ones follow.
    let server = Server::start_with(dir.path(), &dir.path().join("server.toml"));
    server.wait_until(&ids[1], RUN, "the second run running", |r| {
        r["stages"].get(0).is_some_and(|s| s["status"] == "running")
    });
    // A clean stop (SIGTERM) puts the running run back too.
    let st = server.stop();
    assert!(st.success(), "host serve exited with {st}");
    let server = Server::start_with(dir.path(), &dir.path().join("server.toml"));
    for (id, sha) in ids.iter().zip(&shas) {
        let r = server.wait_run(id, RUN);
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["commit_sha"], sha.as_str());
    }
    let (runs, queued) = server.runs();
    assert_eq!((runs.len(), queued.len()), (3, 0));
    // Each keeps the build number it first got.
    let mut numbers: Vec<u64> = runs
        .iter()
        .map(|r| r["build_number"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2, 3]);
}

#[test]
fn a_newer_push_cancels_the_run_in_progress_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let slow = "[[stage]]\nname = \"work\"\nplugin = \"hostile\"\nwith = { attack = \"sleep\", ms = 60000 }\n";
    let fast = "[[stage]]\nname = \"work\"\nplugin = \"hostile\"\nwith = { attack = \"ok\" }\n";
    let a = repo.push("main", &[("pipeline.toml", &pipeline("grouped", slow))]);
    let b = repo.push("main", &[("pipeline.toml", &pipeline("grouped", fast))]);
    let cfg = config(
        &repo.url(),
        "",
        "concurrency = { cancel-in-progress = true }",
        PUSH_MAIN,
    );
    let server = Server::start(dir.path(), &cfg);
    let run_a = server.push("c-1", "refs/heads/main", &a);
    server.wait_until(&run_a, RUN, "the slow stage running", |r| {
        r["stages"].get(0).is_some_and(|s| s["status"] == "running")
    });
    let run_b = server.push("c-2", "refs/heads/main", &b);
    let ra = server.wait_run(&run_a, RUN);
    assert_eq!(ra["status"], "cancelled", "{ra}");
    assert_eq!(ra["reason"], format!("superseded by run {run_b}"));
    let rb = server.wait_run(&run_b, RUN);
    assert_eq!(rb["status"], "success", "{rb}");
}

#[test]
fn host_cancel_stops_a_running_run_and_a_queued_one() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let slow = "[[stage]]\nname = \"work\"\nplugin = \"hostile\"\nwith = { attack = \"sleep\", ms = 60000 }\n";
    let a = repo.push("main", &[("pipeline.toml", &pipeline("grouped", slow))]);
    let b = repo.push("main", &[("N", "2")]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let run_a = server.push("k-1", "refs/heads/main", &a);
    server.wait_until(&run_a, RUN, "the slow stage running", |r| {
        r["stages"].get(0).is_some_and(|s| s["status"] == "running")
    });
    // The same group: b waits behind a.
    let run_b = server.push("k-2", "refs/heads/main", &b);
    for id in [&run_b, &run_a] {
        let out = host(&server.state, &["cancel", id, "--by", "carol"]);
        assert!(out.status.success(), "{}", shown(&out));
    }
    for id in [&run_b, &run_a] {
        let r = server.wait_run(id, RUN);
        assert_eq!(r["status"], "cancelled", "{r}");
        assert_eq!(r["reason"], "cancelled by carol", "{r}");
    }
    let out = host(&server.state, &["cancel", "no-such-run"]);
    assert!(!out.status.success());
    assert!(
        shown(&out).contains("no run no-such-run"),
        "{}",
        shown(&out)
    );
}

#[test]
fn pull_requests_run_their_head_and_forks_get_no_server_environment() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let env_stage = r#"
[[stage]]
name = "env"
plugin = "hostile"
with = { attack = "env", name = "HOST_TEST_VISIBLE" }
grants = { env = ["HOST_TEST_VISIBLE"] }

[[stage]]
name = "server-secret"
plugin = "hostile"
with = { attack = "env", name = "TEST_WEBHOOK_SECRET" }
grants = { env = ["TEST_WEBHOOK_SECRET"] }
"#;
    repo.push("main", &[("pipeline.toml", &pipeline("prs", env_stage))]);
    let head = repo.push("feature/x", &[("CHANGE", "1")]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let mut results = Vec::new();
    for (i, fork) in [(1u64, false), (2, true)] {
        let body = pull_request_payload(i, "feature/x", &head, "main", fork);
        let (status, v) = server.deliver("pull_request", &format!("pr-{i}"), &body, Some(SECRET));
        assert_eq!(status, 202, "{v}");
        let r = server.wait_run(v["queued"][0].as_str().unwrap(), RUN);
        assert_eq!(r["event"], "pull_request");
        assert_eq!(r["commit_sha"], head.as_str());
        assert_eq!(r["trigger"]["pull_request"], i);
        results.push(r);
    }
    // Same repository: the granted variable is there (the plugin says so),
    // but never the server's own webhook secret.
    let same = &results[0];
    assert!(
        stage(same, "env")["summary"]
            .as_str()
            .unwrap()
            .starts_with("ESCAPED: env: env var"),
        "{same}"
    );
    assert_eq!(stage(same, "server-secret")["status"], "failure", "{same}");
    // From a fork: nothing of the server's environment.
    let fork = stage(&results[1], "env");
    assert_eq!(fork["status"], "failure", "{fork}");
    for r in &results {
        assert!(!r.to_string().contains(SECRET), "{r}");
    }
    // An action nobody triggers on is ignored.
    let mut closed: Value =
        serde_json::from_slice(&pull_request_payload(3, "feature/x", &head, "main", false))
            .unwrap();
    closed["action"] = "closed".into();
    let (status, v) = server.deliver(
        "pull_request",
        "pr-3",
        &serde_json::to_vec(&closed).unwrap(),
        Some(SECRET),
    );
    assert_eq!(status, 202);
    assert!(
        v["ignored"].as_str().unwrap().contains("action `closed`"),
        "{v}"
    );
}

#[test]
fn a_bad_checkout_or_pipeline_fails_the_run_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let bad = "[pipeline]\nname = \"broken\"\n\n[[stage]]\nname = \"x\"\nplugin = \"missing\"\n";
    let sha = repo.push("main", &[("pipeline.toml", bad)]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let r = server.wait_run(&server.push("b-1", "refs/heads/main", &sha), RUN);
    assert_eq!(r["status"], "failure");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.starts_with("pipeline.toml:6:10: "), "{reason}");
    assert!(reason.contains("missing"), "{reason}");
    // A commit the repository does not have.
    let ghost = "0123456789abcdef0123456789abcdef01234567";
    let r = server.wait_run(&server.push("b-2", "refs/heads/main", ghost), RUN);
    assert_eq!(r["status"], "failure");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("commit {ghost} is not in")),
        "{r}"
    );
}

#[test]
fn logs_follow_a_run_in_progress_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let chatty = "[[stage]]\nname = \"talk\"\nplugin = \"hostile\"\nwith = { attack = \"chatty\", lines = 20, every-ms = 100 }\n";
    let sha = repo.push("main", &[("pipeline.toml", &pipeline("chatty", chatty))]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let id = server.push("f-1", "refs/heads/main", &sha);
    server.wait_until(&id, RUN, "the first log line", |r| {
        r["stages"].get(0).is_some_and(|s| s["status"] == "running")
    });
    let out = Command::new(pipeline_tests::plugins::host_bin())
        .args(["logs", &id, "--follow"])
        .env("HOST_STATE_DIR", &server.state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", shown(&out));
    let printed = text(&out.stdout);
    let expected: String = (1..=20)
        .map(|i| format!("talk │ line {i} of 20\n"))
        .collect();
    assert_eq!(printed, expected);
    // It returned because the run ended, not before.
    assert_eq!(
        server.get_json(&format!("/api/runs/{id}"))["status"],
        "success"
    );
    let page = server.get(&format!("/runs/{id}")).1;
    assert!(page.contains("line 20 of 20"));
}

/// Durations are whole milliseconds in the records; the metrics are
/// computed from the same numbers.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn metrics_match_the_recorded_runs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let stages = |smoke: &str| {
        pipeline(
            "metered",
            &format!(
                r#"
[environments.prod]
branch = ["main"]

[[stage]]
name = "deploy"
plugin = "hostile"
environment = "prod"
with = {{ attack = "echo", image = "app:1" }}

[[stage]]
name = "smoke"
plugin = "hostile"
needs = ["deploy"]
with = {{ attack = "{smoke}" }}
"#
            ),
        )
    };
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let mut ids = Vec::new();
    for (i, smoke) in ["ok", "fail", "ok", "fail"].iter().enumerate() {
        let sha = repo.push("main", &[("pipeline.toml", &stages(smoke))]);
        let id = server.push(&format!("m-{i}"), "refs/heads/main", &sha);
        server.wait_run(&id, RUN);
        ids.push(id);
    }
    // A run of another branch: a build, not a deployment.
    let sha = repo.push("feature/m", &[("pipeline.toml", &stages("ok"))]);
    server.wait_run(&server.push("m-9", "refs/heads/feature/m", &sha), RUN);

    let (runs, _) = server.runs();
    let by_id = |id: &str| runs.iter().find(|r| r["id"] == id).unwrap().clone();
    let recorded: Vec<Value> = ids.iter().map(|i| by_id(i)).collect();
    let statuses: Vec<&str> = recorded
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["success", "failure", "success", "failure"]);
    let end =
        |r: &Value| r["started_unix_ms"].as_i64().unwrap() + r["duration_ms"].as_i64().unwrap();
    let recovery = (end(&recorded[2]) - end(&recorded[1])) as f64 / 1000.0;
    let total_seconds: f64 = runs
        .iter()
        .map(|r| r["duration_ms"].as_f64().unwrap() / 1000.0)
        .sum();

    let (status, body) = server.get("/metrics");
    assert_eq!(status, 200);
    let lines: Vec<String> = body.lines().map(str::to_string).collect();
    let scrape =
        prometheus_parse::Scrape::parse(lines.into_iter().map(Ok)).expect("valid exposition");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{body}"));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain value"),
        }
    };
    let p = ("pipeline", "metered");
    let prod = ("environment", "prod");
    assert_eq!(
        value("pipeline_runs_total", &[p, ("status", "success")]),
        3.0
    );
    assert_eq!(
        value("pipeline_runs_total", &[p, ("status", "failure")]),
        2.0
    );
    assert!(close(
        value("pipeline_build_success_ratio", &[p]),
        3.0 / 5.0
    ));
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "pipeline_run_duration_seconds")
        .expect("duration histogram");
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
        panic!("not a histogram: {:?}", hist.value)
    };
    assert_eq!(buckets.last().unwrap().count, 5.0);
    assert!(
        body.contains("pipeline_run_duration_seconds_count{pipeline=\"metered\"} 5\n"),
        "{body}"
    );
    let sum_line = body
        .lines()
        .find(|l| l.starts_with("pipeline_run_duration_seconds_sum"))
        .unwrap();
    assert!(
        close(
            sum_line.rsplit(' ').next().unwrap().parse().unwrap(),
            total_seconds
        ),
        "{sum_line} vs {total_seconds}"
    );
    assert_eq!(
        value(
            "pipeline_deployments_total",
            &[p, prod, ("status", "success")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "pipeline_deployments_total",
            &[p, prod, ("status", "failure")]
        ),
        2.0
    );
    assert!(close(
        value("pipeline_change_failure_ratio", &[p, prod]),
        0.5
    ));
    assert!(close(
        value("pipeline_deployment_frequency_per_day", &[p, prod]),
        2.0 / 7.0
    ));
    assert!(
        close(
            value("pipeline_mean_time_to_recovery_seconds", &[p, prod]),
            recovery
        ),
        "{body}"
    );
    assert_eq!(value("pipeline_recoveries_total", &[p, prod]), 1.0);
    assert_eq!(
        value(
            "pipeline_webhook_deliveries_total",
            &[("outcome", "queued")]
        ),
        5.0
    );
}

#[test]
fn the_server_refuses_a_bad_config_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\n\n[[repository]]\nname = \"a/b\"\nurl = \"file:///x\"\n").unwrap();
    let out = host(dir.path(), &["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("server.toml:1:1: server.webhook-secret is required"),
        "{err}"
    );
    assert!(
        err.contains("server.toml:4:1: repository `a/b` has no [[repository.trigger]]"),
        "{err}"
    );
    // A secret that is not set stops it too, naming the variable.
    std::fs::write(&cfg, config("file:///x", "", "", PUSH_MAIN)).unwrap();
    let out = pipeline_tests::cli::host_env(
        dir.path(),
        &["serve", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("TEST_WEBHOOK_SECRET"),
        "{}",
        shown(&out)
    );
}

#[test]
fn an_uploaded_source_archive_runs_after_it_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let uploads = r#"
[[upload]]
name = "bundle"
pipeline = "ci/pipeline.toml"
max-size = "1MiB"
"#;
    let server = Server::start(
        dir.path(),
        &config(&repo.url(), "", "", &format!("{PUSH_MAIN}{uploads}")),
    );
    let p = pipeline("uploaded", READ_VERSION);
    let good = tar_gz(
        dir.path(),
        "release-3.1.0.tar.gz",
        &[("ci/pipeline.toml", &p), ("VERSION", "3.1.0")],
    );
    let bytes = std::fs::read(&good).unwrap();

    // Unsigned or wrongly signed: 401, nothing queued.
    let (status, _) = server.upload("bundle", "release-3.1.0.tar.gz", &bytes, None);
    assert_eq!(status, 401);
    let (status, _) = server.upload("bundle", "release-3.1.0.tar.gz", &bytes, Some("wrong"));
    assert_eq!(status, 401);
    let (status, v) = server.upload("nope", "x.tar.gz", &bytes, Some(SECRET));
    assert_eq!(status, 404, "{v}");

    let (status, v) = server.upload("bundle", "release-3.1.0.tar.gz", &bytes, Some(SECRET));
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["sha256"], sha256_of(&good).as_str());
    let id = v["queued"][0].as_str().unwrap().to_string();
    let run = server.wait_run(&id, RUN);
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["event"], "upload");
    assert_eq!(stage(&run, "read")["outputs"]["content"], "3.1.0");
    assert_eq!(run["trigger"]["archive"]["name"], "release-3.1.0.tar.gz");
    assert_eq!(
        run["trigger"]["archive"]["sha256"],
        sha256_of(&good).as_str()
    );

    // A hostile archive is refused before anything is queued.
    let evil = tar_gz(
        dir.path(),
        "evil.tar.gz",
        &[("ci/pipeline.toml", &p), ("../../outside", "x")],
    );
    let (status, v) = server.upload(
        "bundle",
        "evil.tar.gz",
        &std::fs::read(&evil).unwrap(),
        Some(SECRET),
    );
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("evil.tar.gz: entry `../../outside`: `..` in a path is not allowed"),
        "{v}"
    );
    let (status, v) = server.upload("bundle", "notes.txt", b"hello", Some(SECRET));
    assert_eq!(status, 422, "{v}");
    let big = vec![b'x'; (1 << 20) + (1 << 19)];
    let (status, _) = server.upload("bundle", "big.tar", &big, Some(SECRET));
    assert!(
        status == 413,
        "an archive over max-size is refused: {status}"
    );
    assert_eq!(server.runs().0.len(), 1, "only the good upload ran");

    // The stored upload is removed once its run is over.
    let uploads_dir = server.state.join("uploads");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<_> = std::fs::read_dir(&uploads_dir).unwrap().flatten().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "uploads left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A signed body re-sent under a new delivery id answers `duplicate`.
fn assert_duplicate_of(answer: (u16, Value), run: &str) {
    let (status, v) = answer;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["duplicate"], true, "{v}");
    assert_eq!(v["runs"], serde_json::json!([run]), "{v}");
}

/// Runs recorded plus runs waiting, by id.
fn run_ids(server: &Server) -> Vec<String> {
    let (runs, queued) = server.runs();
    let mut ids: Vec<String> = runs
        .iter()
        .chain(&queued)
        .map(|r| {
            r["id"]
                .as_str()
                .or(r["run_id"].as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_replayed_push_under_a_new_delivery_id_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let p = pipeline("served", READ_VERSION);
    let sha = repo.push("main", &[("pipeline.toml", &p), ("VERSION", "1")]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let body = push_payload("refs/heads/main", &sha);
    let run = server.push("orig-1", "refs/heads/main", &sha);
    // Re-sent at once (the run queued or running) and after it finished:
    // the same signed bytes, a new X-GitHub-Delivery each time.
    assert_duplicate_of(
        server.deliver("push", "replay-1", &body, Some(SECRET)),
        &run,
    );
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_duplicate_of(
        server.deliver("push", "replay-2", &body, Some(SECRET)),
        &run,
    );
    // Told differently (another sender, another message), it still asks
    // for the same commit on the same ref.
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["sender"]["login"] = "someone-else".into();
    v["head_commit"]["message"] = "not the same words".into();
    let reworded = serde_json::to_vec(&v).unwrap();
    assert_duplicate_of(
        server.deliver("push", "replay-3", &reworded, Some(SECRET)),
        &run,
    );
    assert_eq!(run_ids(&server), std::slice::from_ref(&run));
    assert_eq!(
        server.metric("pipeline_webhook_deliveries_total{outcome=\"duplicate\"}"),
        3.0
    );
    assert_eq!(
        server.metric("pipeline_webhook_deliveries_total{outcome=\"queued\"}"),
        1.0
    );
    // A server restarted on the same state still knows it.
    let st = server.stop();
    assert!(st.success(), "host serve exited with {st}");
    let server = Server::start_with(dir.path(), &dir.path().join("server.toml"));
    assert_duplicate_of(
        server.deliver("push", "replay-4", &body, Some(SECRET)),
        &run,
    );
    assert_eq!(run_ids(&server), [run]);
}

#[test]
fn a_push_of_another_commit_to_the_same_ref_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let p = pipeline("served", READ_VERSION);
    let first = repo.push("main", &[("pipeline.toml", &p), ("VERSION", "1")]);
    let second = repo.push("main", &[("VERSION", "2")]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let run1 = server.push("n-1", "refs/heads/main", &first);
    server.wait_run(&run1, RUN);
    let run2 = server.push("n-2", "refs/heads/main", &second);
    let r2 = server.wait_run(&run2, RUN);
    assert_eq!(r2["status"], "success", "{r2}");
    assert_eq!(stage(&r2, "read")["outputs"]["content"], "2", "{r2}");
    let mut both = vec![run1, run2];
    both.sort();
    assert_eq!(run_ids(&server), both);
}

#[test]
fn the_same_commit_pushed_as_a_tag_is_another_run() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let p = pipeline("served", READ_VERSION);
    let sha = repo.push("main", &[("pipeline.toml", &p), ("VERSION", "1")]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let on_main = server.push("t-1", "refs/heads/main", &sha);
    server.wait_run(&on_main, RUN);
    assert_eq!(repo.tag("v1.0.0"), sha);
    let tagged = server.push("t-2", "refs/tags/v1.0.0", &sha);
    let r = server.wait_run(&tagged, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(
        (r["tag"].as_str(), r["commit_sha"].as_str()),
        (Some("v1.0.0"), Some(sha.as_str()))
    );
    // The tag's delivery, replayed, is a duplicate of the tag's run.
    assert_duplicate_of(
        server.deliver(
            "push",
            "t-3",
            &push_payload("refs/tags/v1.0.0", &sha),
            Some(SECRET),
        ),
        &tagged,
    );
    let mut both = vec![on_main, tagged];
    both.sort();
    assert_eq!(run_ids(&server), both);
}

#[test]
fn a_replayed_signed_upload_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let uploads = "[[upload]]\nname = \"bundle\"\npipeline = \"ci/pipeline.toml\"\n";
    let server = Server::start(
        dir.path(),
        &config(&repo.url(), "", "", &format!("{PUSH_MAIN}{uploads}")),
    );
    let p = pipeline("uploaded", READ_VERSION);
    let archive = tar_gz(
        dir.path(),
        "release.tar.gz",
        &[("ci/pipeline.toml", &p), ("VERSION", "4.0.0")],
    );
    let bytes = std::fs::read(&archive).unwrap();
    let (status, v) = server.upload_as("bundle", "release.tar.gz", "up-1", &bytes);
    assert_eq!(status, 202, "{v}");
    let run = v["queued"][0].as_str().unwrap().to_string();
    // The same bytes, re-sent under new ids (or none), under another name.
    assert_duplicate_of(
        server.upload_as("bundle", "release.tar.gz", "up-2", &bytes),
        &run,
    );
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_duplicate_of(
        server.upload_as("bundle", "renamed.tar.gz", "up-3", &bytes),
        &run,
    );
    assert_duplicate_of(
        server.upload("bundle", "release.tar.gz", &bytes, Some(SECRET)),
        &run,
    );
    assert_eq!(run_ids(&server), std::slice::from_ref(&run));
    assert_eq!(
        server.metric("pipeline_webhook_deliveries_total{outcome=\"duplicate\"}"),
        3.0
    );
    // Nothing of the replays is kept.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(server.state.join("uploads"))
        .unwrap()
        .count()
        > 0
    {
        assert!(std::time::Instant::now() < deadline, "uploads left behind");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Other bytes are another run.
    let next = tar_gz(
        dir.path(),
        "release-2.tar.gz",
        &[("ci/pipeline.toml", &p), ("VERSION", "4.0.1")],
    );
    let (status, v) = server.upload_as(
        "bundle",
        "release-2.tar.gz",
        "up-4",
        &std::fs::read(&next).unwrap(),
    );
    assert_eq!(status, 202, "{v}");
    let other = v["queued"][0].as_str().unwrap().to_string();
    server.wait_run(&other, RUN);
    let mut both = vec![run, other];
    both.sort();
    assert_eq!(run_ids(&server), both);
}

mod actions {
    //! The actions of the JSON API: tokens, roles, and the record of who
    //! did what.
    use super::*;
    use serde_json::json;

    const USERS: &str = r#"
[[user]]
name = "olga"
roles = ["operator"]
tokens = ["sha256:OLGA"]

[[user]]
name = "pat"
approves = ["prod"]
tokens = ["sha256:PAT"]

[[user]]
name = "vic"
roles = ["viewer"]
tokens = ["sha256:VIC"]
"#;

    use pipeline_tests::serve::APPROVED_DEPLOY as DEPLOY;

    fn digest(t: &str) -> String {
        host::digest::sha256_hex(t.as_bytes())
    }

    fn post(server: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = reqwest::blocking::Client::new()
            .post(format!("{}{path}", server.url))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    fn users() -> String {
        USERS
            .replace("OLGA", &digest("tok-olga"))
            .replace("PAT", &digest("tok-pat"))
            .replace("VIC", &digest("tok-vic"))
    }

    /// A stage whose result the cache may replay.
    const CACHED: &str = r#"
[[stage]]
name = "read"
plugin = "hostile"
with = { attack = "read-workspace", path = "VERSION" }
grants = { workspace = "ro" }
cache = { inputs = ["VERSION"] }
"#;

    /// Stage `read`'s log lines, as the API serves them.
    fn log_text(server: &Server, run: &str) -> String {
        server.get_json(&format!("/api/runs/{run}/logs?stage=read"))["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| format!("{}\n", l["text"].as_str().unwrap()))
            .collect()
    }

    #[test]
    fn a_rerun_replays_cached_stages_unless_asked_without_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRepo::new(dir.path());
        let p = pipeline("cached", CACHED);
        let sha = repo.push("main", &[("pipeline.toml", &p), ("VERSION", "1.0.0")]);
        let mut cfg = config(&repo.url(), "", "", PUSH_MAIN);
        cfg.push_str(&users());
        let server = Server::start(dir.path(), &cfg);
        let first = server.push("c-1", "refs/heads/main", &sha);
        let r1 = server.wait_run(&first, RUN);
        assert_eq!(r1["status"], "success", "{r1}");
        assert!(stage(&r1, "read").get("cached_from").is_none(), "{r1}");

        let rerun = |of: &str, body: Value| {
            let path = format!("/api/runs/{of}/rerun");
            let (status, v) = post(&server, &path, Some("tok-olga"), body);
            assert_eq!(status, 202, "{v}");
            let run = v["queued"][0].as_str().unwrap().to_string();
            server.wait_run(&run, RUN)
        };
        // A plain re-run: the same inputs, so the stage is replayed.
        let r2 = rerun(&first, json!({}));
        assert_eq!(r2["status"], "success", "{r2}");
        assert_eq!(stage(&r2, "read")["cached_from"]["run_id"], first.as_str());
        assert!(r2["trigger"].get("no_cache").is_none(), "{r2}");

        // Without the cache: it runs, and its log says who asked so.
        let second = r2["id"].as_str().unwrap().to_string();
        let r3 = rerun(&second, json!({ "no_cache": true }));
        assert_eq!(r3["status"], "success", "{r3}");
        assert!(stage(&r3, "read").get("cached_from").is_none(), "{r3}");
        assert_eq!(stage(&r3, "read")["outputs"]["content"], "1.0.0");
        assert_eq!(r3["trigger"]["no_cache"], true, "{r3}");
        let third = r3["id"].as_str().unwrap();
        let log = log_text(&server, third);
        assert!(
            log.contains(&format!(
                "cache: not looked up (olga re-ran {second} without the cache)"
            )),
            "{log}"
        );
        let (_, page) = server.get(&format!("/runs/{third}"));
        assert!(page.contains("without the stage cache"), "{page}");
    }

    #[test]
    fn cancel_rerun_approve_and_reject_need_a_token_and_the_right_role() {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRepo::new(dir.path());
        let sha = repo.push("main", &[("pipeline.toml", &pipeline("acts", DEPLOY))]);
        let mut cfg = config(&repo.url(), "", "", PUSH_MAIN);
        cfg.push_str(&users());
        let server = Server::start(dir.path(), &cfg);
        let run = server.push("a-1", "refs/heads/main", &sha);
        let approve = format!("/api/runs/{run}/stages/deploy/approve");
        // Waiting for approval: only an approver of `prod` may decide.
        let deadline = std::time::Instant::now() + RUN;
        loop {
            let (status, v) = post(&server, &approve, Some("tok-olga"), json!({}));
            if status == 403 {
                assert!(v["error"].as_str().unwrap().contains("`prod`"), "{v}");
                break;
            }
            assert_eq!(status, 409, "{v}");
            assert!(
                std::time::Instant::now() < deadline,
                "never waited for approval"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(post(&server, &approve, None, json!({})).0, 401);
        assert_eq!(post(&server, &approve, Some("tok-guess"), json!({})).0, 401);
        assert_eq!(post(&server, &approve, Some("tok-vic"), json!({})).0, 403);
        let (status, v) = post(
            &server,
            &approve,
            Some("tok-pat"),
            json!({ "comment": "<b>ok</b>" }),
        );
        assert_eq!(status, 200, "{v}");
        let r = server.wait_run(&run, RUN);
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["stages"][0]["approval"]["by"], "pat");
        assert_eq!(r["stages"][0]["approval"]["comment"], "<b>ok</b>");
        // Re-run: operators only; same commit, a new run linked to the old.
        let rerun = format!("/api/runs/{run}/rerun");
        assert_eq!(post(&server, &rerun, Some("tok-pat"), json!({})).0, 403);
        let (status, v) = post(&server, &rerun, Some("tok-olga"), json!({}));
        assert_eq!(status, 202, "{v}");
        let again = v["queued"][0].as_str().unwrap().to_string();
        assert_ne!(again, run);
        // It waits for approval too; the reject path, then.
        let reject = format!("/api/runs/{again}/stages/deploy/reject");
        let r2 = loop {
            let (status, v) = post(
                &server,
                &reject,
                Some("tok-pat"),
                json!({ "comment": "not now" }),
            );
            if status == 200 {
                break server.wait_run(&again, RUN);
            }
            assert_eq!(status, 409, "{v}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(r2["status"], "failure", "{r2}");
        assert_eq!(r2["commit_sha"], sha.as_str());
        assert_eq!(r2["trigger"]["rerun_of"], run.as_str());
        assert_eq!(r2["trigger"]["rerun_by"], "olga");
        // Cancel: operators only; an ended run is past it.
        let cancel = format!("/api/runs/{again}/cancel");
        assert_eq!(post(&server, &cancel, Some("tok-vic"), json!({})).0, 403);
        assert_eq!(post(&server, &cancel, Some("tok-olga"), json!({})).0, 409);
        assert_eq!(
            post(
                &server,
                "/api/runs/nope/cancel",
                Some("tok-olga"),
                json!({})
            )
            .0,
            404
        );
        // Who did what, with the run.
        let v = server.get_json(&format!("/api/runs/{run}"));
        let acts: Vec<(String, String)> = v["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["who"].as_str().unwrap().into(),
                    a["action"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            acts,
            [
                ("pat".into(), "approved".into()),
                ("olga".into(), "rerun".into())
            ]
        );
        let (_, page) = server.get(&format!("/runs/{run}"));
        assert!(
            page.contains("<b>pat</b> approved · deploy: &lt;b&gt;ok&lt;/b&gt;"),
            "{page}"
        );
        let (_, page) = server.get(&format!("/runs/{again}"));
        assert!(page.contains("re-run of"), "{page}");
    }

    #[test]
    fn a_running_run_is_cancelled_by_an_operator() {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRepo::new(dir.path());
        let slow = "[[stage]]\nname = \"work\"\nplugin = \"hostile\"\nwith = { attack = \"sleep\", ms = 60000 }\n";
        let sha = repo.push("main", &[("pipeline.toml", &pipeline("acts", slow))]);
        let mut cfg = config(&repo.url(), "", "", PUSH_MAIN);
        cfg.push_str(&users());
        let server = Server::start(dir.path(), &cfg);
        let run = server.push("c-1", "refs/heads/main", &sha);
        server.wait_until(&run, RUN, "running", |r| {
            r["stages"].get(0).is_some_and(|s| s["status"] == "running")
        });
        let (status, v) = post(
            &server,
            &format!("/api/runs/{run}/cancel"),
            Some("tok-olga"),
            json!({}),
        );
        assert_eq!(status, 202, "{v}");
        let r = server.wait_run(&run, RUN);
        assert_eq!(r["status"], "cancelled");
        assert_eq!(r["reason"], "cancelled by olga");
    }
}

#[test]
fn a_live_page_follows_its_run_by_server_sent_events() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let chatty = "[[stage]]\nname = \"talk\"\nplugin = \"hostile\"\nwith = { attack = \"chatty\", lines = 5, every-ms = 300 }\n";
    let sha = repo.push("main", &[("pipeline.toml", &pipeline("live", chatty))]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH_MAIN));
    let run = server.push("l-1", "refs/heads/main", &sha);
    let r = server.wait_until(&run, RUN, "the stage running", |r| {
        r["stages"].get(0).is_some_and(|s| s["status"] == "running")
    });
    assert_eq!(r["status"], "running");
    // The page of a running run follows it (a reload only without scripts).
    let (_, page) = server.get(&format!("/runs/{run}"));
    assert!(page.contains(&format!("data-run=\"{run}\"")), "{page}");
    assert!(page.contains("new EventSource("), "{page}");
    assert!(
        page.contains("<noscript><meta http-equiv=\"refresh\""),
        "{page}"
    );
    // The stream: every line once, in order, and the status as it changes;
    // it ends with the run.
    let body = reqwest::blocking::Client::builder()
        .timeout(RUN)
        .build()
        .unwrap()
        .get(format!("{}/api/runs/{run}/events", server.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let mut lines = Vec::new();
    let mut keys = Vec::new();
    for block in body.split("\n\n") {
        let event = block.lines().find_map(|l| l.strip_prefix("event: "));
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        let (Some(event), Some(data)) = (event, data) else {
            continue;
        };
        let v: Value = serde_json::from_str(data).unwrap();
        match event {
            "log" => lines.push(v["text"].as_str().unwrap().to_string()),
            "status" => keys.push(v["key"].as_str().unwrap().to_string()),
            _ => {}
        }
    }
    let want: Vec<String> = (1..=5).map(|i| format!("line {i} of 5")).collect();
    assert_eq!(lines, want, "{body}");
    assert_eq!(
        keys.last().map(String::as_str),
        Some("success|talk=success"),
        "{body}"
    );
    // A finished run's page is still.
    let (_, page) = server.get(&format!("/runs/{run}"));
    assert!(
        !page.contains("EventSource") && !page.contains("refresh"),
        "{page}"
    );
}
