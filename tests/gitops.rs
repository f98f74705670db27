//! The `git` capability and the `gitops-deploy` target on a real bare
//! repository (file://): the manifest's image line changes and nothing
//! else, the commit names the run, and the host clones and pushes only
//! what the pipeline grants. Runs through the `host` binary.
use std::path::Path;
use std::process::Command;

use pipeline_tests::cli::{host_env, last_run, shown, stage, text};
use pipeline_tests::plugins::plugin;
use pipeline_tests::serve::GitRepo;

const MANIFEST: &str = "# The app's dev deployment (kept by hand and by the pipeline).\n\
apiVersion: apps/v1\n\
kind: Deployment\n\
metadata:\n  name: app   # do not rename\n\
spec:\n  template:\n    spec:\n      containers:\n\
        - name: app\n          image: \"127.0.0.1:5000/app:1.0\"   # bumped by CI\n\
          ports:\n            - containerPort: 8080\n\
        - name: sidecar\n          image: 127.0.0.1:5000/proxy:2.1\n";

fn pipeline(dir: &Path, url: &str, grants: &str, push: &str, image: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[pipeline]
name = "gitops-test"

[plugins]
gitops-deploy = "{plugin}"

[git.deploy-config]
url = "{url}"
branch = "main"
push = [{push}]

[git.other-config]
url = "{url}"
branch = "main"

[[stage]]
name = "deploy-dev"
plugin = "gitops-deploy"
with = {{ repo = "deploy-config", paths = ["apps/app/dev/*.yaml"], image = "{image}" }}
grants = {{ {grants} }}
"#,
        plugin = plugin("gitops-deploy").display()
    );
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn gitops_deploy_edits_the_image_line_commits_naming_the_run_and_pushes_only_where_granted() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    repo.push("main", &[("apps/app/dev/deployment.yaml", MANIFEST)]);
    let before = git(&repo.bare, &["rev-parse", "main"]);
    let state = dir.path().join("state");
    let image = "127.0.0.1:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    let file = pipeline(
        dir.path(),
        &repo.url(),
        r#"git = ["deploy-config"]"#,
        r#""main""#,
        image,
    );
    let out = host_env(&state, &["run", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", shown(&out));
    let r = last_run(&state);
    let id = r["id"].as_str().unwrap().to_string();
    let deploy = stage(&r, "deploy-dev");
    assert_eq!(
        deploy["outputs"]["previous-image"],
        "127.0.0.1:5000/app:1.0"
    );
    let commit = deploy["outputs"]["commit"].as_str().unwrap().to_string();
    assert_eq!(git(&repo.bare, &["rev-parse", "main"]), commit);
    assert_eq!(git(&repo.bare, &["rev-parse", "main~1"]), before);
    // Only the image value changed: quotes, comments, the sidecar kept.
    let now = git(&repo.bare, &["show", "main:apps/app/dev/deployment.yaml"]);
    assert_eq!(
        format!("{now}\n"),
        MANIFEST.replace("127.0.0.1:5000/app:1.0", image)
    );
    let message = git(&repo.bare, &["log", "-1", "--format=%B", "main"]);
    assert!(message.contains(&format!("run {id}")), "{message}");
    assert!(
        message.contains(&format!("Pipeline-Run: {id}")),
        "{message}"
    );
    assert!(message.contains("Pipeline-Stage: deploy-dev"), "{message}");
    let audit = host_env(&state, &["audit", &id, "deploy-dev"], &[]);
    let audit = text(&audit.stdout);
    for call in ["git.clone", "git.write", "git.commit", "git.push"] {
        assert!(audit.contains(call), "{call} not in\n{audit}");
    }

    // Deploying the same image again changes nothing and pushes nothing.
    let out = host_env(&state, &["run", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", shown(&out));
    assert_eq!(git(&repo.bare, &["rev-parse", "main"]), commit);
    assert!(stage(&last_run(&state), "deploy-dev")["summary"]
        .as_str()
        .unwrap()
        .contains("already at"));

    // Granted no repository at all: the plugin declares it needs `git`, so
    // the run stops before anything starts and says what to add.
    let file = pipeline(
        dir.path(),
        &repo.url(),
        "",
        r#""main""#,
        "127.0.0.1:5000/app:2.0",
    );
    let out = host_env(&state, &["run", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains(
            "stage `deploy-dev`: plugin `gitops-deploy` needs grant git; add grants.git = [...]"
        ),
        "{}",
        shown(&out)
    );

    // Granted another repository: the clone is refused, named, audited.
    let file = pipeline(
        dir.path(),
        &repo.url(),
        r#"git = ["other-config"]"#,
        r#""main""#,
        "127.0.0.1:5000/app:2.0",
    );
    let out = host_env(&state, &["run", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let why = format!(
        "{} {}",
        stage(&r, "deploy-dev")["summary"],
        stage(&r, "deploy-dev")["error"]
    );
    assert!(
        why.contains("denied") && why.contains("deploy-config"),
        "{why}"
    );
    let id = r["id"].as_str().unwrap();
    let denied = host_env(&state, &["audit", id, "--denied", "--json"], &[]);
    let denied: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(denied[0]["capability"], "git.clone", "{denied}");

    // Granted the repository but not its branch: the push is refused.
    let file = pipeline(
        dir.path(),
        &repo.url(),
        r#"git = ["deploy-config"]"#,
        r#""release/*""#,
        "127.0.0.1:5000/app:2.0",
    );
    let out = host_env(&state, &["run", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let id = r["id"].as_str().unwrap();
    let denied = host_env(&state, &["audit", id, "--denied", "--json"], &[]);
    let denied: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(denied[0]["capability"], "git.push", "{denied}");
    assert_eq!(denied[0]["target"], "deploy-config:main", "{denied}");
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main"]),
        commit,
        "nothing was pushed"
    );

    // A repository that is not there: the remote's answer, named.
    let file = pipeline(
        dir.path(),
        &format!("file://{}/missing.git", dir.path().display()),
        r#"git = ["deploy-config"]"#,
        r#""main""#,
        "127.0.0.1:5000/app:2.0",
    );
    let out = host_env(&state, &["run", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let why = format!(
        "{} {}",
        stage(&r, "deploy-dev")["summary"],
        stage(&r, "deploy-dev")["error"]
    );
    assert!(why.contains("REPOSITORY_NOT_FOUND"), "{why}");
}
