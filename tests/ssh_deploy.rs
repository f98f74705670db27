//! The `ssh` capability and the `ssh-deploy` target against a real sshd on
//! 127.0.0.1 (key auth as the `deploy` account, the host key pinned in the
//! pipeline): blue-green releases of the demo app behind a router, an
//! unhealthy release that never takes traffic, and every way the
//! connection is refused (wrong host key, wrong key, no grant). Runs
//! through the `host` binary.
use std::path::Path;
use std::process::Command;

use pipeline_tests::cli::{host_env, last_run, shown, stage, text};
use pipeline_tests::plugins::{demo_app_workspace, plugin, root};
use pipeline_tests::remote::{keygen, RemoteBase, Router, Sshd, SSH_USER};
use pipeline_tests::services::free_port;

struct Setup {
    sshd: u16,
    host_key: String,
    base: String,
    blue: u16,
    green: u16,
    admin: u16,
}

impl Setup {
    fn pipeline(&self, dir: &Path, start: &str, grants: &str) -> std::path::PathBuf {
        let text = format!(
            r#"[pipeline]
name = "ssh-test"

[plugins]
ssh-deploy = "{plugin}"

[secrets]
deploy-key = {{ env = "DEPLOY_SSH_KEY" }}

[ssh.server]
address = "{SSH_USER}@127.0.0.1:{sshd}"
host-key = "{host_key}"
key = "deploy-key"

[ssh.elsewhere]
address = "{SSH_USER}@127.0.0.1:{sshd}"
host-key = "{host_key}"
key = "deploy-key"

[[stage]]
name = "deploy"
plugin = "ssh-deploy"
with = {{ target = "server", base = "{base}", release = "dist/demo-app", ports = {{ blue = {blue}, green = {green} }}, start = '{start}', health = {{ url = "http://127.0.0.1:{{port}}/health", timeout = "10s", interval = "200ms" }}, switch = "curl -fsS -X PUT --data '{{\"upstreams\":[\"127.0.0.1:{{port}}\"]}}' http://127.0.0.1:{admin}/pool" }}
grants = {{ {grants} }}
"#,
            plugin = plugin("ssh-deploy").display(),
            sshd = self.sshd,
            host_key = self.host_key,
            base = self.base,
            blue = self.blue,
            green = self.green,
            admin = self.admin,
        );
        let p = dir.join("pipeline.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// The demo app, told its version by the release directory it runs in.
const START: &str = r#"VERSION=$(basename "$(pwd -P)") ./demo-app"#;
const GRANTS: &str = r#"ssh = ["server"], workspace = "ro", http = ["http://127.0.0.1:*/health"]"#;

#[test]
fn ssh_deploy_switches_blue_green_over_a_checked_connection_and_refuses_every_wrong_one() {
    let status = Command::new("bash")
        .arg(root().join("plugins/deploy-proxy/build.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "plugins/deploy-proxy/build.sh");
    let dir = tempfile::tempdir().unwrap();
    let ws = demo_app_workspace(dir.path());
    let sshd = Sshd::start(dir.path(), free_port());
    let router = Router::start(free_port(), free_port());
    let base = RemoteBase::new(&format!(
        "ssh-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let setup = Setup {
        sshd: sshd.port,
        host_key: Sshd::host_key(),
        base: base.name.clone(),
        blue: free_port(),
        green: free_port(),
        admin: router.admin,
    };
    let state = dir.path().join("state");
    let key = sshd.client_key_text();
    let run = |file: &Path, key: &str| {
        let env = format!("DEPLOY_SSH_KEY={key}");
        let out = host_env(
            &state,
            &[
                "run",
                file.to_str().unwrap(),
                "--workspace",
                ws.to_str().unwrap(),
                "--env",
                &env,
            ],
            &[],
        );
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        let line = key.lines().nth(1).unwrap_or("-");
        assert!(!all.contains(line), "the private key leaked:\n{all}");
        out
    };
    let file = setup.pipeline(dir.path(), START, GRANTS);

    // First release: blue.
    let out = run(&file, &key);
    assert!(
        out.status.success(),
        "{}\n--- sshd\n{}",
        shown(&out),
        sshd.log_text()
    );
    let r = last_run(&state);
    let d = stage(&r, "deploy");
    assert_eq!(d["outputs"]["slot"], "blue", "{d}");
    assert_eq!(d["outputs"]["release"], "build-1");
    assert!(d["outputs"].get("previous-image").is_none(), "{d}");
    let (code, body) = router.get("/health").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("build-1"), "{body}");
    let id = r["id"].as_str().unwrap();
    let audit = text(&host_env(&state, &["audit", id, "deploy"], &[]).stdout);
    assert!(
        audit.contains("ssh.upload") && audit.contains("ssh.exec"),
        "{audit}"
    );

    // Second: green takes the traffic, blue keeps running.
    let out = run(&file, &key);
    assert!(out.status.success(), "{}", shown(&out));
    let d = stage(&last_run(&state), "deploy").clone();
    assert_eq!(d["outputs"]["slot"], "green");
    assert_eq!(d["outputs"]["previous-image"], "build-1");
    assert!(router.get("/health").unwrap().1.contains("build-2"));
    assert_eq!(base.live().as_deref(), Some("green"));
    let blue = Command::new("curl")
        .arg("-sf")
        .arg(format!("http://127.0.0.1:{}/health", setup.blue))
        .output()
        .unwrap();
    assert!(
        text(&blue.stdout).contains("build-1"),
        "blue still serves build-1"
    );

    // An unhealthy release never takes traffic: the stage fails, green
    // (build-2) still serves.
    let sick = setup.pipeline(dir.path(), &format!("DEMO_UNHEALTHY=1 {START}"), GRANTS);
    let out = run(&sick, &key);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let d = stage(&last_run(&state), "deploy").clone();
    assert_eq!(d["status"], "failure");
    assert!(router.get("/health").unwrap().1.contains("build-2"));
    assert_eq!(base.live().as_deref(), Some("green"));

    // A server that is not the one pinned: refused before anything is sent.
    let mut other = setup.pipeline(dir.path(), START, GRANTS);
    let (_, impostor_key) = keygen(dir.path(), "impostor");
    let text_now = std::fs::read_to_string(&other)
        .unwrap()
        .replace(&setup.host_key, &impostor_key);
    other = dir.path().join("impostor.toml");
    std::fs::write(&other, text_now).unwrap();
    let releases_before = std::fs::read_dir(base.path.join("releases"))
        .unwrap()
        .count();
    let out = run(&other, &key);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let d = stage(&last_run(&state), "deploy").clone();
    let why = format!("{} {}", d["summary"], d["error"]);
    assert!(why.contains("HOST_KEY_MISMATCH"), "{why}");
    assert_eq!(
        std::fs::read_dir(base.path.join("releases"))
            .unwrap()
            .count(),
        releases_before,
        "nothing reached the server"
    );

    // A key the server does not know.
    let stranger = std::fs::read_to_string(keygen(dir.path(), "stranger").0).unwrap();
    let out = run(&file, &stranger);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let d = stage(&last_run(&state), "deploy").clone();
    let why = format!("{} {}", d["summary"], d["error"]);
    assert!(why.contains("AUTH_FAILED"), "{why}");

    // No `ssh` grant at all: the plugin declares it needs one, so nothing
    // runs and the error says what to add.
    let ungranted = setup.pipeline(
        dir.path(),
        START,
        r#"workspace = "ro", http = ["http://127.0.0.1:*/health"]"#,
    );
    let out = run(&ungranted, &key);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains(
            "stage `deploy`: plugin `ssh-deploy` needs grant ssh; add grants.ssh = [...]"
        ),
        "{}",
        shown(&out)
    );

    // Granted another host: denied in the host, recorded in the audit trail.
    let ungranted = setup.pipeline(
        dir.path(),
        START,
        r#"workspace = "ro", http = ["http://127.0.0.1:*/health"], ssh = ["elsewhere"]"#,
    );
    let out = run(&ungranted, &key);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let r = last_run(&state);
    let id = r["id"].as_str().unwrap();
    let denied = host_env(&state, &["audit", id, "--denied", "--json"], &[]);
    let denied: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(denied[0]["capability"], "ssh.exec", "{denied}");
    assert!(router.get("/health").unwrap().1.contains("build-2"));

    // The key is in no file the host keeps.
    let grep = Command::new("grep")
        .args(["-r", "-l", "-F", key.lines().nth(1).unwrap()])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "the key is stored in {}",
        text(&grep.stdout)
    );
}
