//! Many machines on one: `host serve` with `[cluster]`, `host agent`s, a
//! nats-server of each test's own and a PostgreSQL schema of its own
//! (the server from scripts/services.sh; `PIPELINE_TEST_POSTGRES`).
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

/// One test's cluster: its own PostgreSQL schema, directory, nats-server
/// and repository.
struct Setup {
    db: PgSchema,
    dir: tempfile::TempDir,
    nats: Nats,
    repo: GitRepo,
}

impl Setup {
    /// `None` (the test is skipped, saying so) without a test PostgreSQL.
    fn new(test: &str) -> Option<Self> {
        Self::with_nats_conf(test, "")
    }

    /// With `conf` in the nats-server's configuration.
    fn with_nats_conf(test: &str, conf: &str) -> Option<Self> {
        let db = PgSchema::new(test)?;
        let dir = tempfile::tempdir().unwrap();
        let nats = Nats::start_conf(dir.path(), conf);
        let repo = GitRepo::new(dir.path());
        Some(Self {
            db,
            dir,
            nats,
            repo,
        })
    }

    /// A server on the repository with `[cluster]` on `database_url`;
    /// `repo_extra` goes into the repository (its concurrency group).
    fn server_on(&self, database_url: &str, repo_extra: &str) -> Server {
        let mut text = config(&self.repo.url(), "", repo_extra, PUSHES);
        text.push_str(&cluster_table(self.dir.path(), &self.nats, database_url));
        Server::start(self.dir.path(), &text)
    }

    fn server(&self, repo_extra: &str) -> Server {
        self.server_on(&self.db.url, repo_extra)
    }

    /// A server whose `[cluster]` has `cluster_extra` too.
    fn server_with(&self, cluster_extra: &str) -> Server {
        let mut text = config(&self.repo.url(), "", "", PUSHES);
        text.push_str(&cluster_table(self.dir.path(), &self.nats, &self.db.url));
        text.push_str(cluster_extra);
        Server::start(self.dir.path(), &text)
    }

    fn agent(&self, name: &str, extra: &str) -> Agent {
        Agent::start(self.dir.path(), name, &self.nats, extra)
    }

    fn agent_env(&self, name: &str, extra: &str, env: &[(&str, &str)]) -> Agent {
        Agent::start_env(self.dir.path(), name, &self.nats, extra, env)
    }

    /// `host` with `--database` (another process, maybe another machine).
    fn host(&self, args: &[&str]) -> std::process::Output {
        let elsewhere = self.dir.path().join("elsewhere");
        pipeline_tests::cli::host_env(&elsewhere, args, &[("HOST_DATABASE_URL", &self.db.url)])
    }
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
    let Some(c) = Setup::new("two_agents_drain") else {
        return;
    };
    let server = c.server(NO_GROUP);
    let a1 = c.agent("a1", "concurrency = 2");
    let a2 = c.agent("a2", "concurrency = 2");
    let mut runs = Vec::new();
    for i in 0..8 {
        let sha = c.repo.push(
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

/// Short, for the tests; long enough that a busy machine's heartbeats
/// (every third of it) still arrive.
const SHORT_ACK: &str = "ack-wait = \"2s\"";

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
    let Some(c) = Setup::new("agent_killed") else {
        return;
    };
    let server = c.server("");
    let mut a1 = c.agent("a1", SHORT_ACK);
    let sha = c.repo.push("main", &[("pipeline.toml", &sleeper(2000))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    wait_running_on(&server, &run, 1, "a1");
    a1.kill9();
    let _a2 = c.agent("a2", SHORT_ACK);
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(
        attempts(&r),
        [pair("a1", "died"), pair("a2", "success")],
        "{r}"
    );
    assert_eq!(r["build_number"], 1, "the run kept its number: {r}");
    let out = c.host(&["runs", "show", &run]);
    let shown = pipeline_tests::cli::text(&out.stdout);
    assert!(
        shown.contains("attempts     1 died (a1), 2 success (a2)"),
        "{shown}"
    );
    let (_, page) = server.get(&format!("/runs/{run}"));
    assert!(
        page.contains("Attempts: 1 died (a1), 2 success (a2)"),
        "{page}"
    );
}

#[test]
fn a_run_that_kills_every_agent_is_given_up_after_the_attempt_limit() {
    let Some(c) = Setup::new("given_up") else {
        return;
    };
    let server = c.server("");
    let sha = c.repo.push("main", &[("pipeline.toml", &sleeper(60_000))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    for i in 1..=3 {
        let name = format!("a{i}");
        let mut a = c.agent(&name, SHORT_ACK);
        wait_running_on(&server, &run, i, &name);
        a.kill9();
    }
    let _last = c.agent("a4", SHORT_ACK);
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
    let Some(c) = Setup::new("stale_agent") else {
        return;
    };
    let server = c.server("");
    let a1 = c.agent("a1", SHORT_ACK);
    let sha = c.repo.push("main", &[("pipeline.toml", &sleeper(1500))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    wait_running_on(&server, &run, 1, "a1");
    // a1 stops answering (as a machine cut off would), then comes back
    // after the run was handed to a2.
    signal(&a1, "-STOP");
    let _a2 = c.agent("a2", SHORT_ACK);
    wait_running_on(&server, &run, 2, "a2");
    signal(&a1, "-CONT");
    server.wait_log(
        &format!("run {run} attempt 1: a report dropped: stale"),
        RUN,
    );
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(
        attempts(&r),
        [pair("a1", "died"), pair("a2", "success")],
        "{r}"
    );
}

#[test]
fn a_newer_push_cancels_the_run_on_its_agent() {
    let Some(c) = Setup::new("cancel_in_progress") else {
        return;
    };
    let extra = "concurrency = { cancel-in-progress = true }";
    let server = c.server(extra);
    let _a1 = c.agent("a1", "");
    let first = c.repo.push("main", &[("pipeline.toml", &sleeper(60_000))]);
    let run1 = server.push("d-1", "refs/heads/main", &first);
    wait_running_on(&server, &run1, 1, "a1");
    let second = c.repo.push("main", &[("pipeline.toml", &sleeper(10))]);
    let run2 = server.push("d-2", "refs/heads/main", &second);
    let r1 = server.wait_run(&run1, RUN);
    assert_eq!(r1["status"], "cancelled", "{r1}");
    assert!(
        r1["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("superseded by run {run2}")),
        "{r1}"
    );
    assert_eq!(server.wait_run(&run2, RUN)["status"], "success");
}

/// `stages` after the test plugin's header.
fn pipeline(stages: &str) -> String {
    format!(
        "[pipeline]\nname = \"clustered\"\n\n[plugins]\nhostile = \"{}\"\n\n{stages}",
        plugin("hostile").display()
    )
}

const APPROVED_DEPLOY: &str = r#"
[environments.prod]
branch = ["main"]
approval = true

[[stage]]
name = "build"
plugin = "hostile"
with = { attack = "chatty", lines = 3 }

[[stage]]
name = "deploy"
plugin = "hostile"
needs = ["build"]
environment = "prod"
with = { attack = "ok" }
"#;

#[test]
fn an_approval_given_elsewhere_releases_the_run_on_its_agent() {
    let Some(c) = Setup::new("approval_elsewhere") else {
        return;
    };
    let server = c.server("");
    let _a1 = c.agent("a1", "");
    let sha = c
        .repo
        .push("main", &[("pipeline.toml", &pipeline(APPROVED_DEPLOY))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    // Pending, as another machine sees it in the database.
    let deadline = std::time::Instant::now() + RUN;
    loop {
        let out = c.host(&["approvals"]);
        if pipeline_tests::cli::text(&out.stdout).contains(&run) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no pending approval");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Following the log from another machine while the run waits: it ends
    // when the run does.
    let follow = std::process::Command::new(pipeline_tests::plugins::host_bin())
        .args(["logs", &run, "--follow"])
        .env("HOST_DATABASE_URL", &c.db.url)
        .env("HOST_STATE_DIR", c.dir.path().join("follower"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.host(&["approve", &run, "deploy", "--by", "alice", "-c", "ship"]);
    assert!(out.status.success(), "{}", pipeline_tests::cli::shown(&out));
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    let deploy = &r["stages"][1];
    assert_eq!(deploy["approval"]["by"], "alice", "{r}");
    assert_eq!(deploy["approval"]["comment"], "ship", "{r}");
    // The log, the web page and the metrics come from PostgreSQL too.
    let followed = follow.wait_with_output().unwrap();
    let followed = pipeline_tests::cli::text(&followed.stdout);
    assert!(followed.contains("line 3 of 3"), "{followed}");
    let logs = c.host(&["logs", &run]);
    let text = pipeline_tests::cli::text(&logs.stdout);
    assert!(
        text.contains("line 3 of 3"),
        "{}",
        pipeline_tests::cli::shown(&logs)
    );
    let (status, page) = server.get(&format!("/runs/{run}"));
    assert_eq!(status, 200);
    assert!(
        page.contains("line 2 of 3") && page.contains("alice"),
        "{page}"
    );
    assert_eq!(
        server.metric("pipeline_runs_total{pipeline=\"clustered\",status=\"success\"}"),
        1.0
    );
}

#[test]
fn restarting_nats_loses_no_run() {
    let Some(mut c) = Setup::new("nats_restart") else {
        return;
    };
    let server = c.server(NO_GROUP);
    let _a1 = c.agent("a1", "concurrency = 2");
    let sha = c.repo.push("main", &[("pipeline.toml", &sleeper(1500))]);
    let running = server.push("d-0", "refs/heads/main", &sha);
    wait_running_on(&server, &running, 1, "a1");
    c.nats.kill();
    // Accepted while NATS is away: kept in the queue, published later.
    let mut queued = Vec::new();
    for i in 1..=3 {
        let sha = c
            .repo
            .push(&format!("b{i}"), &[("pipeline.toml", &sleeper(100))]);
        queued.push(server.push(&format!("d-{i}"), &format!("refs/heads/b{i}"), &sha));
    }
    c.nats.restart();
    for id in std::iter::once(&running).chain(&queued) {
        let r = server.wait_run(id, RUN);
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(attempts(&r).len(), 1, "ran once: {r}");
    }
}

#[test]
fn stopping_and_starting_postgres_loses_nothing() {
    let Some(c) = Setup::new("postgres_restart") else {
        return;
    };
    // A PostgreSQL of its own, to stop and start.
    let pg = pipeline_tests::cluster::Postgres::start();
    let server = c.server_on(&pg.url(), NO_GROUP);
    let _a1 = c.agent("a1", "");
    let sha = c.repo.push("main", &[("pipeline.toml", &sleeper(1000))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    wait_running_on(&server, &run, 1, "a1");
    pg.down();
    // The run ends while the store is away: its report waits.
    server.wait_log("writing a report", RUN);
    // A delivery now is refused (GitHub delivers it again), not lost.
    let later = c.repo.push("other", &[("pipeline.toml", &sleeper(10))]);
    let body = pipeline_tests::serve::push_payload("refs/heads/other", &later);
    let secret = Some(pipeline_tests::serve::SECRET);
    let (status, _) = server.deliver("push", "d-2", &body, secret);
    assert!(status >= 500, "answered {status} without its store");
    pg.up();
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(attempts(&r), [pair("a1", "success")], "{r}");
    let (status, v) = server.deliver("push", "d-2", &body, secret);
    assert_eq!(status, 202, "{v}");
    let again = v["queued"][0].as_str().unwrap().to_string();
    assert_eq!(server.wait_run(&again, RUN)["status"], "success");
}

#[test]
fn host_cancel_stops_a_run_on_its_agent_and_a_queued_one() {
    let Some(c) = Setup::new("host_cancel") else {
        return;
    };
    let server = c.server("");
    let _a1 = c.agent("a1", "");
    let first = c.repo.push("main", &[("pipeline.toml", &sleeper(60_000))]);
    let running = server.push("d-1", "refs/heads/main", &first);
    wait_running_on(&server, &running, 1, "a1");
    // Same group: this one waits in the queue behind the first.
    let second = c.repo.push("main", &[("N", "2")]);
    let waiting = server.push("d-2", "refs/heads/main", &second);
    for id in [&waiting, &running] {
        let out = c.host(&["cancel", id, "--by", "bob"]);
        assert!(out.status.success(), "{}", pipeline_tests::cli::shown(&out));
    }
    for id in [&waiting, &running] {
        let r = server.wait_run(id, RUN);
        assert_eq!(r["status"], "cancelled", "{r}");
        assert_eq!(r["reason"], "cancelled by bob", "{r}");
    }
    // An ended run cannot be cancelled.
    let out = c.host(&["cancel", &running]);
    assert!(!out.status.success());
    assert!(pipeline_tests::cli::shown(&out).contains("has already ended"));
}

#[test]
fn runs_go_to_agents_offering_the_labels_their_pipeline_needs() {
    let Some(c) = Setup::new("labels") else {
        return;
    };
    let server = c.server(NO_GROUP);
    let _plain = c.agent("plain", "concurrency = 2");
    let _docker = c.agent("docker", "labels = [\"docker\"]");
    let needs = pipeline(
        "[[stage]]\nname = \"work\"\nplugin = \"hostile\"\nlabels = [\"docker\"]\nwith = { attack = \"ok\" }\n",
    );
    let mut runs = Vec::new();
    for i in 0..3 {
        let sha = c
            .repo
            .push("main", &[("pipeline.toml", &needs), ("N", &i.to_string())]);
        runs.push(server.push(&format!("d-{i}"), "refs/heads/main", &sha));
    }
    for id in &runs {
        let r = server.wait_run(id, RUN);
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(attempts(&r), [pair("docker", "success")], "{r}");
    }
}

const SECRETS: &str = r#"
[secrets.token]
file = "token"

[[stage]]
name = "env"
plugin = "hostile"
with = { attack = "env", name = "HOST_TEST_VISIBLE" }
grants = { env = ["HOST_TEST_VISIBLE"] }

[[stage]]
name = "secret"
plugin = "hostile"
with = { attack = "secret", name = "token" }
grants = { secrets-read = ["token"] }
"#;

#[test]
fn an_agent_gives_runs_its_own_environment_and_secrets_not_the_servers() {
    let Some(c) = Setup::new("agent_secrets") else {
        return;
    };
    // The server has no secrets-dir; the agent has one.
    let server = c.server("");
    let secrets = c.dir.path().join("a1-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("token"), "agent-token-value").unwrap();
    let extra = format!("secrets-dir = \"{}\"", secrets.display());
    let env = [("HOST_TEST_VISIBLE", "set on the agent")];
    let _a1 = c.agent_env("a1", &extra, &env);
    let sha = c
        .repo
        .push("main", &[("pipeline.toml", &pipeline(SECRETS))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    let r = server.wait_run(&run, RUN);
    let env_stage = &r["stages"][0];
    assert_eq!(env_stage["outputs"]["value"], "set on the agent", "{r}");
    let secret = &r["stages"][1];
    assert_eq!(
        secret["summary"], "ESCAPED: secret: read secret token",
        "{r}"
    );
    // Read on the agent, masked in what it reports.
    assert!(!r.to_string().contains("agent-token-value"), "{r}");
    let (_, raw) = server.get(&format!("/api/runs/{run}"));
    assert!(!raw.contains("agent-token-value"));
}

#[test]
fn an_agent_that_is_stopped_hands_its_run_back() {
    let Some(c) = Setup::new("agent_stopped") else {
        return;
    };
    let server = c.server("");
    let mut a1 = c.agent("a1", "");
    let sha = c.repo.push("main", &[("pipeline.toml", &sleeper(60_000))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    wait_running_on(&server, &run, 1, "a1");
    a1.stop();
    // Given back at once (no ack wait): the next agent takes it.
    let _a2 = c.agent("a2", "");
    let r = wait_running_on(&server, &run, 2, "a2");
    assert_eq!(attempts(&r)[0], pair("a1", "stopped"), "{r}");
    assert_eq!(r["status"], "running", "{r}");
}

#[test]
fn nats_credentials_come_from_a_secret_and_wrong_ones_are_refused() {
    let conf = "authorization { user: ci, password: \"nats-pass-4711\" }";
    let Some(c) = Setup::with_nats_conf("nats_credentials", conf) else {
        return;
    };
    let creds = c.dir.path().join("nats-credentials");
    std::fs::write(&creds, "ci:nats-pass-4711\n").unwrap();
    let line = format!("nats-credentials = {{ file = \"{}\" }}\n", creds.display());
    let server = c.server_with(&line);
    let _a1 = c.agent("a1", &line);
    let sha = c.repo.push("main", &[("pipeline.toml", &sleeper(10))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    assert_eq!(server.wait_run(&run, RUN)["status"], "success");
    // Wrong credentials: a clear refusal, at once, without the secret.
    let wrong = c.dir.path().join("wrong");
    std::fs::write(&wrong, "ci:not-the-password").unwrap();
    let home = c.dir.path().join("intruder");
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nnats = \"{}\"\nnats-credentials = {{ file = \"{}\" }}\n",
            c.nats.url(),
            wrong.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(pipeline_tests::plugins::host_bin())
        .args(["agent", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = pipeline_tests::cli::text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("refused this client's credentials"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
}
