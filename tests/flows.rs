//! The pipeline files under pipelines/ that reproduce the source write-ups,
//! run as a user runs them (`host run FILE`) on the real engine, registry
//! and Trivy, each with a broken variant that must fail at the right stage
//! with a clear reason.
//!
//! The flows share fixed image names and ports (they are examples people
//! read), so they run one after another in one test.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pipeline_tests::archive::tar_gz;
use pipeline_tests::cli::{host_env, last_run, shown, stage, text};
use pipeline_tests::plugins::{demo_app_workspace, plugin, root, target_dir};
use pipeline_tests::services::{self, docker, REGISTRY, REGISTRY_PASSWORD, REGISTRY_USER};
use serde_json::Value;

fn auth(password: &str) -> String {
    format!("REGISTRY_AUTH={REGISTRY_USER}:{password}")
}

/// `host run FILE --workspace WS --env REGISTRY_AUTH=… ARGS…`.
fn run(state: &Path, file: &Path, ws: &Path, password: &str, args: &[&str]) -> Output {
    let env = auth(password);
    let mut all = vec![
        "run",
        file.to_str().unwrap(),
        "--workspace",
        ws.to_str().unwrap(),
        "--env",
        &env,
        "--branch",
        "main",
    ];
    all.extend_from_slice(args);
    host_env(state, &all, &[])
}

/// A copy of `pipelines/NAME` in `dir` with `edit` applied and plugin
/// paths made absolute (the broken variants).
fn variant(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(root().join("pipelines").join(name)).unwrap();
    let plugins = format!("\"{}/", target_dir().join("plugins").display());
    let text = edit(text).replace("\"../target/plugins/", &plugins);
    let p = dir.join(format!("broken-{name}"));
    std::fs::write(&p, text).unwrap();
    p
}

fn tags(repo: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-u",
            &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"),
            &format!("http://{REGISTRY}/v2/{repo}/tags/list"),
        ])
        .output()
        .unwrap();
    text(&out.stdout)
}

fn jenkins_fintech(dir: &Path, ws: &Path) {
    let file = root().join("pipelines/jenkins-fintech.toml");
    let state = dir.join("fintech-state");
    let out = run(
        &state,
        &file,
        ws,
        REGISTRY_PASSWORD,
        &["--build-number", "42"],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !all.contains(REGISTRY_PASSWORD),
        "the password leaked:\n{all}"
    );
    let tags = tags("fintech-app");
    for t in ["\"latest\"", "\"build-42\"", "\"main\""] {
        assert!(tags.contains(t), "{t} not in {tags}");
    }
    let r = last_run(&state);
    assert_eq!(stage(&r, "test")["outputs"]["failed"], "0");
    assert!(stage(&r, "test")["artifacts"]["reports/demo-app-junit.xml"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let id = r["id"].as_str().unwrap();
    let audit = host_env(&state, &["audit", id, "push"], &[]);
    let audit = text(&audit.stdout);
    assert!(
        audit.contains("docker.push") && audit.contains("(auth: secret registry)"),
        "{audit}"
    );
    assert!(!audit.contains(REGISTRY_PASSWORD));

    // A failing test stops the flow at `test`, naming the test.
    let broken = variant(dir, "jenkins-fintech.toml", |t| {
        t.replace(
            r#"env = { REPORT_DIR = "reports" }"#,
            r#"env = { REPORT_DIR = "reports", FAIL_TEST = "health" }"#,
        )
    });
    let out = run(&state, &broken, ws, REGISTRY_PASSWORD, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "test")["status"], "failure");
    let test = stage(&r, "test");
    assert!(
        test["summary"].as_str().unwrap().contains("1 failed"),
        "{r}"
    );
    assert_eq!(
        test["annotations"][0]["title"],
        "demo-app.container::health"
    );
    assert_eq!(stage(&r, "push")["status"], "skipped");
    // Wrong credentials: the registry's own refusal, at `push`.
    let out = run(&state, &file, ws, "wrong-password", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let push = stage(&r, "push");
    assert_eq!(push["status"], "failure");
    let why = format!("{} {}", push["summary"], push["error"]);
    assert!(why.contains("UNAUTHORIZED") || why.contains("401"), "{why}");
    assert!(!why.contains("wrong-password"));
}

fn archive_source(dir: &Path, ws: &Path) {
    // The app's source as a user would pack it (binaries included).
    let bundle = dir.join("bundle.tar.gz");
    let status = Command::new("tar")
        .args(["-czf", bundle.to_str().unwrap(), "-C", ws.to_str().unwrap()])
        .args(["Dockerfile", "Dockerfile.test", "tests", "dist"])
        .status()
        .unwrap();
    assert!(status.success());
    let file = root().join("pipelines/archive-source.toml");
    let state = dir.join("archive-state");
    let env = auth(REGISTRY_PASSWORD);
    let out = host_env(
        &state,
        &[
            "run",
            file.to_str().unwrap(),
            "--source",
            bundle.to_str().unwrap(),
            "--env",
            &env,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(r["event"], "upload");
    assert_eq!(r["trigger"]["archive"]["name"], "bundle.tar.gz");
    assert!(
        tags("bundle-app").contains("build-1"),
        "{}",
        tags("bundle-app")
    );
    assert_eq!(stage(&r, "scan")["status"], "success");

    // Least privilege: a tag stage not granted the registry repository is
    // denied at `tag`, and the audit trail shows the refused call.
    let broken = variant(dir, "archive-source.toml", |t| {
        t.replace(
            r#"grants = { docker = { tag = ["local/bundle-app", "127.0.0.1:5000/bundle-app"] } }"#,
            r#"grants = { docker = { tag = ["local/bundle-app"] } }"#,
        )
    });
    let out = host_env(
        &state,
        &[
            "run",
            broken.to_str().unwrap(),
            "--source",
            bundle.to_str().unwrap(),
            "--env",
            &env,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "tag")["status"], "failure");
    let id = r["id"].as_str().unwrap();
    let denied = host_env(&state, &["audit", id, "--denied", "--json"], &[]);
    let denied: Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(denied[0]["stage"], "tag", "{denied}");
    assert_eq!(denied[0]["capability"], "docker.tag");
    // A hostile archive runs nothing.
    let evil = tar_gz(
        dir,
        "evil.tar.gz",
        &[("Dockerfile", "FROM scratch\n"), ("../../x", "x")],
    );
    let out = host_env(
        &state,
        &[
            "run",
            file.to_str().unwrap(),
            "--source",
            evil.to_str().unwrap(),
            "--env",
            &env,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains("entry `../../x`"),
        "{}",
        shown(&out)
    );
}

fn ecs_rolling(dir: &Path, ws: &Path) {
    let status = Command::new("bash")
        .arg(root().join("plugins/deploy-proxy/build.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "plugins/deploy-proxy/build.sh");
    let file = root().join("pipelines/ecs-rolling.toml");
    let state = dir.join("ecs-state");
    let out = run(&state, &file, ws, REGISTRY_PASSWORD, &[]);
    assert!(out.status.success(), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "deploy")["outputs"]["strategy"], "rolling");
    let body = Command::new("curl")
        .args(["-sf", "http://127.0.0.1:18480/"])
        .output()
        .unwrap();
    assert!(
        text(&body.stdout).starts_with("Hello from demo-app"),
        "{}",
        text(&body.stdout)
    );

    // A second update whose smoke test fails is rolled back.
    let broken = variant(dir, "ecs-rolling.toml", |t| {
        t.replace(
            r#"body-contains = "Hello from demo-app""#,
            r#"body-contains = "Goodbye""#,
        )
        .replace("retries = 3,", "retries = 0,")
    });
    let out = run(&state, &broken, ws, REGISTRY_PASSWORD, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let smoke = stage(&r, "smoke");
    assert_eq!(smoke["status"], "failure");
    assert!(
        smoke["error"]
            .as_str()
            .unwrap()
            .contains("rolled back `deploy` to 127.0.0.1:5000/ecs-app"),
        "{r}"
    );
    assert_eq!(stage(&r, "deploy:rollback")["status"], "success");
    let body = Command::new("curl")
        .args(["-sf", "http://127.0.0.1:18480/health"])
        .output()
        .unwrap();
    assert!(
        text(&body.stdout).contains("ok"),
        "the service answers after the rollback"
    );
}

/// Removes the flows' containers and images, also when a flow fails.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = docker(&["ps", "-aq", "--filter", "label=pipeline.service=ecs-app"]);
        for id in names.lines() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        for repo in ["fintech-app", "ecs-app", "bundle-app"] {
            services::remove_images(&format!("local/{repo}"));
            services::remove_images(&format!("local/{repo}-test"));
            services::remove_images(&format!("{REGISTRY}/{repo}"));
        }
    }
}

#[test]
fn the_write_ups_flows_run_and_their_broken_variants_fail_where_they_should() {
    services::require();
    // Every plugin the files name, built.
    for p in [
        "build",
        "test-runner",
        "tag",
        "push",
        "trivy-gate",
        "deploy",
        "smoke-test",
    ] {
        plugin(p);
    }
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();
    let ws = demo_app_workspace(dir.path());
    jenkins_fintech(dir.path(), &ws);
    archive_source(dir.path(), &ws);
    ecs_rolling(dir.path(), &ws);
}
