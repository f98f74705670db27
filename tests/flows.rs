//! The pipeline files under pipelines/ that reproduce the source write-ups,
//! run as a user runs them (`host run FILE`) on the real engine, registry
//! and Trivy, each with a broken variant that must fail at the right stage
//! with a clear reason.
//!
//! The flows share fixed image names and ports (they are examples people
//! read), so they run one after another in one test.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::time::Duration;

use pipeline_tests::archive::tar_gz;
use pipeline_tests::argocd::Reconciler;
use pipeline_tests::cli::{host_approving, host_env, last_run, shown, stage, text};
use pipeline_tests::plugins::{demo_app_workspace, plugin, root, target_dir};
use pipeline_tests::remote::{keygen, GitDaemon, RemoteBase, Router, Sshd};
use pipeline_tests::services::{self, docker, REGISTRY, REGISTRY_PASSWORD, REGISTRY_USER};
use pipeline_tests::slack::SlackReceiver;
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
    // `host run FILE --source ARCHIVE`.
    let run = |file: &Path, archive: &Path| {
        host_env(
            &state,
            &[
                "run",
                file.to_str().unwrap(),
                "--source",
                archive.to_str().unwrap(),
                "--env",
                &env,
            ],
            &[],
        )
    };
    let out = run(&file, &bundle);
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
    // The unpacked source is gone; the test report is in the encrypted
    // artifact store.
    let id = r["id"].as_str().unwrap();
    let got = dir.join("archive-artifacts");
    let out = host_env(
        &state,
        &["artifacts", id, "--out", got.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let report = std::fs::read_to_string(got.join("test/reports/demo-app-junit.xml")).unwrap();
    assert!(report.contains("<testsuite"), "{report}");

    // Least privilege: a tag stage not granted the registry repository is
    // denied at `tag`, and the audit trail shows the refused call.
    let broken = variant(dir, "archive-source.toml", |t| {
        t.replace(
            r#"grants = { docker = { tag = ["local/bundle-app", "127.0.0.1:5000/bundle-app"] } }"#,
            r#"grants = { docker = { tag = ["local/bundle-app"] } }"#,
        )
    });
    let out = run(&broken, &bundle);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "tag")["status"], "failure");
    let id = r["id"].as_str().unwrap();
    let denied = host_env(&state, &["audit", id, "--denied", "--json"], &[]);
    let denied: Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(denied[0]["stage"], "tag", "{denied}");
    assert_eq!(denied[0]["capability"], "docker.tag");
    // A compromised stage between `test` and `build` rewrites the test
    // report `test` recorded: `build` refuses to run, naming it.
    let tampered = variant(dir, "archive-source.toml", |t| {
        t.replace(
            "push = \"../target/plugins/push.wasm\"\n",
            "push = \"../target/plugins/push.wasm\"\nhostile = \"../target/plugins/hostile.wasm\"\n",
        )
        .replacen(
            "needs = [\"test\"]",
            "needs = [\"rewrite\"]",
            1,
        ) + "\n[[stage]]\nname = \"rewrite\"\nplugin = \"hostile\"\nneeds = [\"test\"]\n\
             with = { attack = \"write-workspace\", path = \"reports/demo-app-junit.xml\", content = \"<testsuite tests=\\\"0\\\"/>\" }\n\
             grants = { workspace = \"rw\" }\n"
    });
    let out = run(&tampered, &bundle);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "rewrite")["status"], "success");
    let build = stage(&r, "build");
    assert_eq!(build["status"], "failure");
    assert!(
        build["error"].as_str().unwrap().starts_with(
            "artifact `reports/demo-app-junit.xml` of stage `test` was changed after `test` recorded it"
        ),
        "{build}"
    );
    assert_eq!(stage(&r, "push")["status"], "skipped");
    // A hostile archive runs nothing.
    let evil = tar_gz(
        dir,
        "evil.tar.gz",
        &[("Dockerfile", "FROM scratch\n"), ("../../x", "x")],
    );
    let out = run(&file, &evil);
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

/// An environment's manifest in the deploy-config repository, as a person
/// keeps it (comments, quoting, a sidecar that is not ours).
fn manifest(env: &str) -> String {
    format!(
        "# gitops-app in {env}: the pipeline bumps the image, people the rest.\n\
         apiVersion: apps/v1\n\
         kind: Deployment\n\
         metadata:\n  name: gitops-app\n  namespace: {env}\n\
         spec:\n  replicas: 2   # two pods behind the service\n  template:\n    spec:\n      containers:\n\
         \x20       - name: app\n          image: \"127.0.0.1:5000/gitops-app:bootstrap\"  # set by CI\n\
         \x20       - name: metrics\n          image: 127.0.0.1:5000/metrics-sidecar:3.1\n"
    )
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Ops", "-c", "user.email=ops@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// The bare deploy-config repository under the git daemon's base, with
/// dev's and prod's manifests on main.
fn deploy_config(daemon: &GitDaemon, dir: &Path) -> PathBuf {
    let bare = daemon.base.join("deploy-config.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--quiet", "--bare", "-b", "main"]);
    let work = dir.join("deploy-config-seed");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "-b", "main"]);
    for env in ["dev", "prod"] {
        let p = work.join(format!("apps/gitops-app/{env}/deployment.yaml"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, manifest(env)).unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "gitops-app manifests"]);
    git(
        &work,
        &[
            "push",
            "--quiet",
            bare.to_str().unwrap(),
            "HEAD:refs/heads/main",
        ],
    );
    bare
}

fn shown_manifest(bare: &Path, env: &str) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args([
            "show",
            &format!("main:apps/gitops-app/{env}/deployment.yaml"),
        ])
        .output()
        .unwrap();
    format!("{}\n", text(&out.stdout).trim_end())
}

fn gitops_argocd(dir: &Path, ws: &Path, rt: &tokio::runtime::Runtime) {
    let daemon = GitDaemon::start(&dir.join("git"), 19418);
    let bare = deploy_config(&daemon, dir);
    let argocd = Reconciler::start(
        bare.clone(),
        "main",
        "apps/gitops-app/prod/deployment.yaml",
        "argocd-gitops-app-prod",
        18780,
    );
    let slack = rt.block_on(SlackReceiver::start()).unwrap();
    // The coverage report the tests would have written (coverage.py's).
    std::fs::copy(
        root().join("plugins/coverage-gate/tests/coverage.xml"),
        ws.join("coverage.xml"),
    )
    .unwrap();
    let file = root().join("pipelines/gitops-argocd.toml");
    let state = dir.join("gitops-state");
    let registry = auth(REGISTRY_PASSWORD);
    let webhook = format!("SLACK_WEBHOOK_URL={}", slack.webhook_url());
    let run = |file: &Path, ws: &Path, how: &[&str]| {
        let mut args = vec![
            "run",
            file.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
            "--env",
            &registry,
            "--env",
            &webhook,
        ];
        args.extend_from_slice(how);
        host_approving(&state, &args, &[], "alice")
    };

    // A push to main: dev's manifest gets the pushed digest, prod is not
    // touched, nobody is asked.
    let out = run(&file, ws, &["--branch", "main"]);
    assert!(
        out.status.success(),
        "{}\n--- git daemon\n{}",
        shown(&out),
        daemon.log_text()
    );
    let r = last_run(&state);
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(stage(&r, "coverage")["outputs"]["line-rate"], "84.4");
    assert_eq!(stage(&r, "deploy-prod")["status"], "skipped");
    let v0 = stage(&r, "push")["outputs"]["ref"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(v0.starts_with("127.0.0.1:5000/gitops-app@sha256:"), "{v0}");
    assert_eq!(
        shown_manifest(&bare, "dev"),
        manifest("dev").replace("127.0.0.1:5000/gitops-app:bootstrap", &v0),
        "only dev's image value changed"
    );
    assert_eq!(shown_manifest(&bare, "prod"), manifest("prod"));
    let message = git(&bare, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains(&format!("Pipeline-Run: {id}")),
        "{message}"
    );
    assert!(message.contains("to dev"), "{message}");

    // A tag: prod waits for approval, then its manifest moves, ArgoCD
    // syncs it and the smoke test passes.
    let out = run(&file, ws, &["--tag", "v1.0.0"]);
    assert!(out.status.success(), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "deploy-prod")["approval"]["by"], "alice");
    assert_eq!(stage(&r, "deploy-dev")["status"], "skipped");
    let v1 = stage(&r, "push")["outputs"]["ref"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v0, "a tag build is labelled with its version");
    argocd.wait_running(&v1, Duration::from_secs(30));
    assert_eq!(stage(&r, "smoke-prod")["status"], "success");

    // The next release fails its smoke test: prod's manifest goes back to
    // v1.0.0 in a new commit, and ArgoCD runs that again.
    let broken = variant(dir, "gitops-argocd.toml", |t| {
        t.replace(
            r#"body-contains = "Hello from demo-app" }], retries = 10"#,
            r#"body-contains = "Goodbye" }], retries = 0"#,
        )
    });
    let out = run(&broken, ws, &["--tag", "v1.0.1"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let v2 = stage(&r, "push")["outputs"]["ref"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(stage(&r, "smoke-prod")["status"], "failure");
    let rollback = stage(&r, "deploy-prod:rollback");
    assert_eq!(rollback["status"], "success", "{r}");
    assert_eq!(rollback["outputs"]["image"], v1.as_str());
    assert_eq!(
        shown_manifest(&bare, "prod"),
        manifest("prod").replace("127.0.0.1:5000/gitops-app:bootstrap", &v1)
    );
    let log = git(&bare, &["log", "--format=%s", "-3", "main"]);
    assert!(log.contains(&v2) && log.contains(&v1), "{log}");
    argocd.wait_running(&v1, Duration::from_secs(30));

    // Coverage under the bar stops the flow before anything is built.
    let broken = variant(dir, "gitops-argocd.toml", |t| {
        t.replace("min-line = 80.0", "min-line = 95.0")
    });
    let out = run(&broken, ws, &["--branch", "main"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "coverage")["status"], "failure");
    assert!(
        stage(&r, "coverage")["summary"]
            .as_str()
            .unwrap()
            .contains("84.4"),
        "{r}"
    );
    assert_eq!(stage(&r, "build")["status"], "skipped");

    // A credential baked into the image blocks it at the Trivy gate: no
    // push, no manifest change.
    let leaky = demo_app_workspace(&dir.join("leaky"));
    std::fs::copy(ws.join("coverage.xml"), leaky.join("coverage.xml")).unwrap();
    let (creds, key_id) = services::leaked_aws_credentials();
    std::fs::write(leaky.join("creds.env"), creds).unwrap();
    let dockerfile = std::fs::read_to_string(ws.join("Dockerfile")).unwrap();
    std::fs::write(
        leaky.join("Dockerfile"),
        format!("{dockerfile}COPY creds.env /app/creds.env\n"),
    )
    .unwrap();
    let head = git(&bare, &["rev-parse", "main"]);
    let out = run(&file, &leaky, &["--branch", "main"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let scan = stage(&r, "scan");
    assert_eq!(scan["status"], "failure");
    assert!(
        scan["summary"].as_str().unwrap().starts_with("blocked"),
        "{scan}"
    );
    assert_eq!(
        scan["annotations"][0]["title"], "aws-access-key-id",
        "{scan}"
    );
    assert!(
        !format!("{r}").contains(&key_id),
        "the found key is not repeated"
    );
    assert_eq!(stage(&r, "push")["status"], "skipped");
    assert_eq!(
        git(&bare, &["rev-parse", "main"]),
        head,
        "nothing was deployed"
    );

    // Slack heard about every run, failures included.
    let msgs = slack.messages();
    assert_eq!(msgs.len(), 5, "one message per run");
    assert!(msgs.iter().all(|m| m.text().is_some()));
    drop(argocd);
}

fn actions_staging_prod(dir: &Path, ws: &Path) {
    let status = Command::new("bash")
        .arg(root().join("plugins/deploy-proxy/build.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "plugins/deploy-proxy/build.sh");
    // The two "servers": one sshd, a router each, their deploy bases.
    let sshd = Sshd::start(dir, 18622);
    let staging = Router::start(18690, 18691);
    let prod = Router::start(18680, 18681);
    let staging_base = RemoteBase::new("staging");
    let prod_base = RemoteBase::new("prod");
    std::fs::copy(
        root().join("plugins/coverage-gate/tests/coverage.xml"),
        ws.join("coverage.xml"),
    )
    .unwrap();
    let file = root().join("pipelines/actions-staging-prod.toml");
    let state = dir.join("actions-state");
    let key = format!("DEPLOY_SSH_KEY={}", sshd.client_key_text());
    let run = |file: &Path, how: &[&str]| {
        let mut args = vec![
            "run",
            file.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
            "--env",
            &key,
        ];
        args.extend_from_slice(how);
        let out = host_approving(&state, &args, &[], "release-manager");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        let line = sshd.client_key_text().lines().nth(1).unwrap().to_string();
        assert!(!all.contains(&line), "the deploy key leaked");
        out
    };
    let serving = |router: &Router| {
        router
            .get("/health")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };

    // develop → staging over SSH, smoke tested; production untouched.
    let out = run(&file, &["--branch", "develop"]);
    assert!(
        out.status.success(),
        "{}\n--- sshd\n{}",
        shown(&out),
        sshd.log_text()
    );
    let r = last_run(&state);
    for s in ["lint", "test", "scan", "deploy-staging", "smoke-staging"] {
        assert_eq!(stage(&r, s)["status"], "success", "{s}: {r}");
    }
    assert_eq!(stage(&r, "deploy-prod")["status"], "skipped");
    assert!(
        serving(&staging).contains("build-1"),
        "{}",
        serving(&staging)
    );
    assert_eq!(staging_base.live().as_deref(), Some("blue"));
    let id = r["id"].as_str().unwrap();
    let audit = text(&host_env(&state, &["audit", id, "deploy-staging"], &[]).stdout);
    assert!(
        audit.contains("ssh.upload") && audit.contains("staging: "),
        "{audit}"
    );

    // v1.0.0 → approval → blue-green production (blue), smoke tested.
    let out = run(&file, &["--tag", "v1.0.0"]);
    assert!(out.status.success(), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(
        stage(&r, "deploy-prod")["approval"]["by"],
        "release-manager"
    );
    assert_eq!(stage(&r, "smoke-prod")["status"], "success");
    assert!(serving(&prod).contains("build-2"));
    // v1.0.1 → green.
    let out = run(&file, &["--tag", "v1.0.1"]);
    assert!(out.status.success(), "{}", shown(&out));
    assert_eq!(prod_base.live().as_deref(), Some("green"));
    assert!(serving(&prod).contains("build-3"));

    // v1.0.2 fails its smoke test: production switches back to green
    // (build-3), which never stopped.
    let broken = variant(dir, "actions-staging-prod.toml", |t| {
        t.replace(
            r#"url = "http://127.0.0.1:18680/", body-contains = "Hello from demo-app" }], retries = 2"#,
            r#"url = "http://127.0.0.1:18680/", body-contains = "Goodbye" }], retries = 0"#,
        )
    });
    let out = run(&broken, &["--tag", "v1.0.2"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "smoke-prod")["status"], "failure");
    let rollback = stage(&r, "deploy-prod:rollback");
    assert_eq!(rollback["status"], "success", "{r}");
    assert_eq!(rollback["outputs"]["release"], "build-3");
    assert_eq!(prod_base.live().as_deref(), Some("green"));
    assert!(serving(&prod).contains("build-3"), "{}", serving(&prod));

    // An unhealthy release on staging never takes traffic.
    let broken = variant(dir, "actions-staging-prod.toml", |t| {
        t.replacen("start = 'VERSION=", "start = 'DEMO_UNHEALTHY=1 VERSION=", 1)
    });
    let out = run(&broken, &["--branch", "develop"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    assert_eq!(stage(&r, "deploy-staging")["status"], "failure");
    assert_eq!(stage(&r, "smoke-staging")["status"], "skipped");
    assert!(
        serving(&staging).contains("build-1"),
        "staging still serves build-1"
    );

    // A server that does not present the pinned host key gets nothing.
    let (_, impostor) = keygen(dir, "impostor_host_key");
    let broken = variant(dir, "actions-staging-prod.toml", |t| {
        t.replacen(&Sshd::host_key(), &impostor, 1)
    });
    let out = run(&broken, &["--branch", "develop"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let d = stage(&r, "deploy-staging");
    let why = format!("{} {}", d["summary"], d["error"]);
    assert!(why.contains("HOST_KEY_MISMATCH"), "{why}");
    assert!(serving(&staging).contains("build-1"));
}

/// Removes the flows' containers and images, also when a flow fails.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = docker(&["ps", "-aq", "--filter", "label=pipeline.service=ecs-app"]);
        for id in names.lines() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let _ = Command::new("docker")
            .args(["rm", "-f", "argocd-gitops-app-prod"])
            .output();
        for repo in [
            "fintech-app",
            "ecs-app",
            "bundle-app",
            "gitops-app",
            "actions-app",
        ] {
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
        "coverage-gate",
        "gitops-deploy",
        "slack-notify",
        "ssh-deploy",
        "hostile",
    ] {
        plugin(p);
    }
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();
    let ws = demo_app_workspace(dir.path());
    // `FLOWS=gitops,actions cargo test --test flows` runs only those.
    let only = std::env::var("FLOWS").unwrap_or_default();
    // A misspelt name must fail, not run nothing and pass.
    const FLOWS: [&str; 5] = ["fintech", "archive", "ecs", "gitops", "actions"];
    let unknown: Vec<&str> = only
        .split(',')
        .filter(|f| !f.is_empty() && !FLOWS.contains(f))
        .collect();
    assert!(
        unknown.is_empty(),
        "FLOWS names unknown flows {unknown:?}; known: {FLOWS:?}"
    );
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|f| f == name);
    if wanted("fintech") {
        jenkins_fintech(dir.path(), &ws);
    }
    if wanted("archive") {
        archive_source(dir.path(), &ws);
    }
    if wanted("ecs") {
        ecs_rolling(dir.path(), &ws);
    }
    if wanted("gitops") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        gitops_argocd(dir.path(), &ws, &rt);
    }
    if wanted("actions") {
        actions_staging_prod(dir.path(), &ws);
    }
}
