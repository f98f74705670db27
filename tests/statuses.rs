//! Commit statuses on GitHub: `host serve` with `[github]` against a
//! loopback server that speaks GitHub's status API (the recorded
//! exchanges in ../shared/data/github-api/): the exact requests, retries
//! on 5xx and rate limits, no retry on 422, and a restart in the middle
//! without loss or double posts.
use std::time::Duration;

use pipeline_tests::github::{created, FakeGithub, Post, Reply};
use pipeline_tests::plugins::plugin;
use pipeline_tests::serve::{config, GitRepo, Server, REPO};
use serde_json::Value;

const RUN: Duration = Duration::from_secs(120);
const TOKEN: &str = "ghp_test_token_0123456789";

const PUSHES: &str = r#"
[[repository.trigger]]
event = "push"
branch = ["main"]
"#;

fn pipeline(stages: &str) -> String {
    format!(
        "[pipeline]\nname = \"gh\"\n\n[plugins]\nhostile = \"{}\"\n\n{stages}",
        plugin("hostile").display()
    )
}

const TWO_STAGES: &str = r#"
[[stage]]
name = "build"
plugin = "hostile"
with = { attack = "ok" }

[[stage]]
name = "test"
plugin = "hostile"
needs = ["build"]
with = { attack = "fail" }
"#;

/// A server whose `[github]` points at `gh` (`extra` lines added to it).
fn server(dir: &std::path::Path, repo: &GitRepo, gh: &FakeGithub, extra: &str) -> Server {
    let token = dir.join("github-token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut text = config(
        &repo.url(),
        "public-url = \"https://ci.example.com\"",
        "",
        PUSHES,
    );
    text.push_str(&format!(
        "\n[github]\napi-url = \"{}\"\ntoken = {{ file = \"{}\" }}\n{extra}\n",
        gh.url,
        token.display()
    ));
    Server::start(dir, &text)
}

fn statuses(run: &Value) -> Vec<(String, String, String)> {
    run["statuses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let f = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                    (f("context"), f("state"), f("outcome"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn header<'a>(p: &'a Post, name: &str) -> &'a str {
    p.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[test]
fn a_pushed_run_gets_pending_then_its_result_as_github_expects_them() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let gh = FakeGithub::start();
    let server = server(dir.path(), &repo, &gh, "per-stage = true");
    let sha = repo.push("main", &[("pipeline.toml", &pipeline(TWO_STAGES))]);
    let run = server.push("d-1", "refs/heads/main", &sha);
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "failure");
    let posts = gh.wait(RUN, "four statuses", |p| p.len() >= 4);
    let first = &posts[0];
    assert_eq!(first.path, format!("/repos/{REPO}/statuses/{sha}"));
    assert_eq!(header(first, "authorization"), format!("Bearer {TOKEN}"));
    assert_eq!(header(first, "accept"), "application/vnd.github+json");
    assert!(header(first, "user-agent").starts_with("pipeline-host/"));
    assert_eq!(first.body["state"], "pending");
    assert_eq!(first.body["context"], "pipeline-host");
    assert_eq!(first.body["description"], "queued");
    let url = format!("https://ci.example.com/runs/{run}");
    assert_eq!(first.body["target_url"], url.as_str());
    // Each stage, then the run; every one once.
    assert_eq!(created(&posts, "pipeline-host/build", "success"), 1);
    assert_eq!(created(&posts, "pipeline-host/test", "failure"), 1);
    assert_eq!(created(&posts, "pipeline-host", "failure"), 1);
    let last = posts
        .iter()
        .rfind(|p| p.body["context"] == "pipeline-host")
        .unwrap();
    let description = last.body["description"].as_str().unwrap();
    assert!(description.starts_with("failure in "), "{description}");
    assert!(description.ends_with("· #1"), "{description}");
    assert!(description.chars().count() <= 140);
    let shown = server.wait_until(&run, RUN, "statuses recorded", |r| {
        statuses(r).iter().all(|s| s.2 == "posted") && statuses(r).len() == 4
    });
    assert_eq!(
        statuses(&shown)[0],
        ("pipeline-host".into(), "pending".into(), "posted".into())
    );
}

#[test]
fn failures_are_retried_rate_limits_waited_out_and_a_422_recorded_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let gh = FakeGithub::start();
    // pending: 502, 429 (retry-after 1 s), 403 rate limit (reset in 1 s),
    // then created; the run's result: 422.
    gh.script(
        &[
            Reply::ServerError,
            Reply::RetryAfter(1),
            Reply::RateLimited(1),
            Reply::Created,
            Reply::Invalid,
        ],
        None,
    );
    let server = server(dir.path(), &repo, &gh, "");
    let sha = repo.push(
        "main",
        &[(
            "pipeline.toml",
            &pipeline(
                "[[stage]]\nname = \"a\"\nplugin = \"hostile\"\nwith = { attack = \"ok\" }\n",
            ),
        )],
    );
    let run = server.push("d-1", "refs/heads/main", &sha);
    let r = server.wait_until(&run, RUN, "the 422 recorded", |r| {
        statuses(r)
            .iter()
            .any(|s| s.1 == "success" && s.2 == "refused")
    });
    // The run itself is not failed by the forge's refusal.
    assert_eq!(r["status"], "success", "{r}");
    let refused = r["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "success")
        .unwrap();
    let detail = refused["detail"].as_str().unwrap();
    assert!(detail.contains("HTTP 422: Validation Failed"), "{detail}");
    let posts = gh.posts();
    let answers: Vec<u16> = posts.iter().map(|p| p.answered).collect();
    assert_eq!(answers, [502, 429, 403, 201, 422], "{posts:#?}");
    assert_eq!(created(&posts, "pipeline-host", "pending"), 1);
    // Refused is final: the sender keeps no such row waiting.
    let (_, page) = server.get(&format!("/api/runs/{run}"));
    assert!(!page.contains(TOKEN), "the token shows: {page}");
    // Shown on the run's page too.
    let (_, page) = server.get(&format!("/runs/{run}"));
    assert!(
        page.contains("Commit statuses") && page.contains("HTTP 422: Validation Failed"),
        "{page}"
    );
}

#[test]
fn a_restart_in_the_middle_neither_loses_nor_doubles_a_status() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let gh = FakeGithub::start();
    // GitHub is down while the run goes.
    gh.script(&[], Some(Reply::ServerError));
    let first = server(dir.path(), &repo, &gh, "");
    let sha = repo.push(
        "main",
        &[(
            "pipeline.toml",
            &pipeline(
                "[[stage]]\nname = \"a\"\nplugin = \"hostile\"\nwith = { attack = \"ok\" }\n",
            ),
        )],
    );
    let run = first.push("d-1", "refs/heads/main", &sha);
    first.wait_run(&run, RUN);
    first.wait_until(&run, RUN, "both statuses tried", |r| statuses(r).len() == 2);
    gh.wait(RUN, "a failed post", |p| !p.is_empty());
    first.stop();
    // Back up, and the server too: what waited in its outbox is posted,
    // each once.
    gh.script(&[], Some(Reply::Created));
    let config = dir.path().join("server.toml");
    let second = Server::start_with(dir.path(), &config);
    let posts = gh.wait(RUN, "both statuses created", |p| {
        created(p, "pipeline-host", "pending") == 1 && created(p, "pipeline-host", "success") == 1
    });
    let r = second.wait_until(&run, RUN, "both posted", |r| {
        statuses(r).iter().filter(|s| s.2 == "posted").count() == 2
    });
    assert_eq!(r["status"], "success");
    // In order: pending before success.
    let order: Vec<&str> = posts
        .iter()
        .filter(|p| p.answered == 201)
        .map(|p| p.body["state"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["pending", "success"]);
}
