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
