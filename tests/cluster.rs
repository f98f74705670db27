//! Many machines on one: `host serve` with `[cluster]`, `host agent`s, a
//! nats-server of each test's own and a PostgreSQL schema of its own
//! (the server from scripts/services.sh; `PIPELINE_TEST_POSTGRES`).
use std::path::Path;
use std::time::Duration;

use host::store::testing::PgSchema;
use pipeline_tests::cluster::{cluster_table, Agent, Nats};
use pipeline_tests::plugins::plugin;
use pipeline_tests::serve::{config, GitRepo, Server};
use serde_json::Value;

const RUN: Duration = Duration::from_secs(120);

const PUSHES: &str = r#"
[[repository.trigger]]
event = "push"
branch = ["**"]
"#;

/// A pipeline (as committed) whose one stage sleeps `ms`.
fn sleeper(ms: u64) -> String {
    format!(
        "[pipeline]\nname = \"clustered\"\n\n[plugins]\nhostile = \"{}\"\n\n\
         [[stage]]\nname = \"work\"\nplugin = \"hostile\"\nwith = {{ attack = \"sleep\", ms = {ms} }}\n",
        plugin("hostile").display()
    )
}

/// The test's PostgreSQL schema; `None` (skipped) without a test server.
fn database(test: &str) -> Option<PgSchema> {
    PgSchema::new(test)
}

/// A server on `repo` with `[cluster]`; `repo_extra` goes into the
/// repository (its concurrency group).
fn server(dir: &Path, repo: &GitRepo, nats: &Nats, db: &PgSchema, repo_extra: &str) -> Server {
    let mut text = config(&repo.url(), "", repo_extra, PUSHES);
    text.push_str(&cluster_table(dir, nats, &db.url));
    Server::start(dir, &text)
}

fn attempts(run: &Value) -> Vec<(String, String)> {
    run["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["agent"].as_str().unwrap_or("").to_string(),
                        x["outcome"].as_str().unwrap_or("running").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// No concurrency group: runs of one branch may run side by side.
const NO_GROUP: &str = "concurrency = { group = \"\" }";

#[test]
fn two_agents_drain_the_queue_and_each_run_runs_once() {
    let Some(db) = database("two_agents_drain") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let repo = GitRepo::new(dir.path());
    let server = server(dir.path(), &repo, &nats, &db, NO_GROUP);
    let a1 = Agent::start(dir.path(), "a1", &nats, "concurrency = 2");
    let a2 = Agent::start(dir.path(), "a2", &nats, "concurrency = 2");
    let mut runs = Vec::new();
    for i in 0..8 {
        let sha = repo.push(
            "main",
            &[("pipeline.toml", &sleeper(300)), ("N", &i.to_string())],
        );
        runs.push(server.push(&format!("d-{i}"), "refs/heads/main", &sha));
    }
    let mut by_agent = std::collections::BTreeMap::<String, usize>::new();
    for (i, id) in runs.iter().enumerate() {
        let r = server.wait_run(id, RUN);
        assert_eq!(r["status"], "success", "{r}");
        let a = attempts(&r);
        assert_eq!(a.len(), 1, "run {i} ran once: {r}");
        assert_eq!(a[0].1, "success", "{r}");
        *by_agent.entry(a[0].0.clone()).or_default() += 1;
        assert_eq!(r["stages"][0]["summary"], "slept 300 ms");
    }
    // Build numbers 1..=8, each once.
    let mut numbers: Vec<u64> = runs
        .iter()
        .map(|id| {
            server.get_json(&format!("/api/runs/{id}"))["build_number"]
                .as_u64()
                .unwrap()
        })
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
    assert_eq!(by_agent.len(), 2, "both agents ran runs: {by_agent:?}");
    drop((a1, a2));
}

const ONE_SECOND_ACK: &str = "ack-wait = \"1s\"";

fn wait_running_on(server: &Server, run: &str, attempt: usize, agent: &str) -> Value {
    server.wait_until(run, RUN, &format!("attempt {attempt} on {agent}"), |r| {
        let a = attempts(r);
        a.len() == attempt
            && a[attempt - 1] == (agent.to_string(), "running".to_string())
            && r["stages"][0]["status"] == "running"
    })
}

fn pair(a: &str, outcome: &str) -> (String, String) {
    (a.to_string(), outcome.to_string())
}

#[test]
fn a_run_whose_agent_is_killed_runs_again_elsewhere_and_finishes_once() {
    let Some(db) = database("agent_killed") else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let repo = GitRepo::new(dir.path());
    let server = server(dir.path(), &repo, &nats, &db, "");
    let mut a1 = Agent::start(dir.path(), "a1", &nats, ONE_SECOND_ACK);
    let sha = repo.push("main", &[("pipeline.toml", &sleeper(2000))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    wait_running_on(&server, &run, 1, "a1");
    a1.kill9();
    let _a2 = Agent::start(dir.path(), "a2", &nats, ONE_SECOND_ACK);
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(attempts(&r), [pair("a1", "died"), pair("a2", "success")], "{r}");
    assert_eq!(r["build_number"], 1, "the run kept its number: {r}");
}

#[test]
fn a_run_that_kills_every_agent_is_given_up_after_the_attempt_limit() {
    let Some(db) = database("given_up") else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let repo = GitRepo::new(dir.path());
    let server = server(dir.path(), &repo, &nats, &db, "");
    let sha = repo.push("main", &[("pipeline.toml", &sleeper(60_000))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    for i in 1..=3 {
        let name = format!("a{i}");
        let mut a = Agent::start(dir.path(), &name, &nats, ONE_SECOND_ACK);
        wait_running_on(&server, &run, i, &name);
        a.kill9();
    }
    let _last = Agent::start(dir.path(), "a4", &nats, ONE_SECOND_ACK);
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "failure", "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("stopped answering 3 times"), "{r}");
    assert_eq!(
        attempts(&r),
        [pair("a1", "died"), pair("a2", "died"), pair("a3", "died")],
        "{r}"
    );
}

/// Freeze (SIGSTOP) or thaw (SIGCONT) a process.
fn signal(agent: &Agent, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn a_stale_agents_late_results_are_refused() {
    let Some(db) = database("stale_agent") else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let repo = GitRepo::new(dir.path());
    let server = server(dir.path(), &repo, &nats, &db, "");
    let a1 = Agent::start(dir.path(), "a1", &nats, ONE_SECOND_ACK);
    let sha = repo.push("main", &[("pipeline.toml", &sleeper(1500))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    wait_running_on(&server, &run, 1, "a1");
    // a1 stops answering (as a machine cut off would), then comes back
    // after the run was handed to a2.
    signal(&a1, "-STOP");
    let _a2 = Agent::start(dir.path(), "a2", &nats, ONE_SECOND_ACK);
    wait_running_on(&server, &run, 2, "a2");
    signal(&a1, "-CONT");
    server.wait_log(&format!("run {run} attempt 1: a report dropped: stale"), RUN);
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(attempts(&r), [pair("a1", "died"), pair("a2", "success")], "{r}");
}

#[test]
fn a_newer_push_cancels_the_run_on_its_agent() {
    let Some(db) = database("cancel_in_progress") else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let repo = GitRepo::new(dir.path());
    let extra = "concurrency = { cancel-in-progress = true }";
    let server = server(dir.path(), &repo, &nats, &db, extra);
    let _a1 = Agent::start(dir.path(), "a1", &nats, "");
    let first = repo.push("main", &[("pipeline.toml", &sleeper(60_000))]);
    let run1 = server.push("d-1", "refs/heads/main", &first);
    wait_running_on(&server, &run1, 1, "a1");
    let second = repo.push("main", &[("pipeline.toml", &sleeper(10))]);
    let run2 = server.push("d-2", "refs/heads/main", &second);
    let r1 = server.wait_run(&run1, RUN);
    assert_eq!(r1["status"], "cancelled", "{r1}");
    assert!(
        r1["reason"].as_str().unwrap_or_default().contains(&format!("superseded by run {run2}")),
        "{r1}"
    );
    assert_eq!(server.wait_run(&run2, RUN)["status"], "success");
}
