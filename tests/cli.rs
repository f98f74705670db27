//! The `host` binary as a user runs it: check, run, plugin inspect, Ctrl-C.
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::cli::{host, shown, text};
use pipeline_tests::plugins::{host_bin, plugin, root};
use pipeline_tests::slack::SlackReceiver;

#[test]
fn check_reports_file_line_col_for_a_malformed_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "[pipeline]\nname = \"x\"\n\n[[stage]]\nname = \"a\"\nplugin = \"nope\"\ntimeout = \"5 minutes\"\n",
    )
    .unwrap();
    let out = host(&state, &["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let f = file.display().to_string();
    assert!(
        err.contains(&format!("{f}:6:10")),
        "plugin location missing:\n{err}"
    );
    assert!(
        err.contains(&format!("{f}:7:11")),
        "timeout location missing:\n{err}"
    );

    // A TOML syntax error, too.
    std::fs::write(&file, "[pipeline]\nname = \"x\n").unwrap();
    let out = host(&state, &["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("{f}:2:")),
        "{}",
        text(&out.stderr)
    );

    // Machine-readable.
    let out = host(&state, &["check", "--json", file.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], 2);
}

#[test]
fn check_refuses_plugins_that_are_not_stage_components() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A valid component of another world: it exports nothing.
    std::fs::write(
        dir.path().join("other.wasm"),
        wat::parse_str("(component)").unwrap(),
    )
    .unwrap();
    // A core module, not a component.
    std::fs::write(
        dir.path().join("core.wasm"),
        wat::parse_str("(module)").unwrap(),
    )
    .unwrap();
    for (plugin, location, expected) in [
        (
            "other.wasm",
            "p.toml:4:8",
            "does not implement the `ci:stage/stage@0.1.0` world",
        ),
        ("core.wasm", "p.toml:4:8", "core WebAssembly module"),
    ] {
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            format!("[pipeline]\nname = \"x\"\n[plugins]\nplug = \"{plugin}\"\n[[stage]]\nname = \"a\"\nplugin = \"plug\"\n"),
        )
        .unwrap();
        let out = host(&state, &["check", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(err.contains(location) && err.contains(expected), "{err}");
    }
}

#[test]
fn check_validates_with_keys_against_describe() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            r#"[pipeline]
name = "x"
[plugins]
tag = "{}"
[[stage]]
name = "tag"
plugin = "tag"
with = {{ imgae = "typo" }}
"#,
            plugin("tag").display()
        ),
    )
    .unwrap();
    let out = host(&state, &["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("`with.imgae` is not a setting of plugin `tag`"),
        "{err}"
    );
    assert!(err.contains("needs `with.image`"), "{err}");
}

#[test]
fn run_example_pipeline_prints_summary_and_reuses_the_cache() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let slack = rt.block_on(SlackReceiver::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    plugin("tag"); // make sure target/plugins is built
    let file = root().join("pipelines/tag-notify.toml");
    let run = |extra: &[&str]| {
        let mut args = vec!["-v", "run", "--build-number", "7", "--branch", "main"];
        args.extend_from_slice(extra);
        args.push(file.to_str().unwrap());
        Command::new(host_bin())
            .env("HOST_STATE_DIR", &state)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "host=info")
            .env("SLACK_WEBHOOK_URL", slack.webhook_url())
            .current_dir(root())
            .args(&args)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("STAGE") && err.contains("DURATION"),
        "no summary table:\n{err}"
    );
    assert!(err.contains("run ✔ success"), "{err}");
    assert!(err.contains("cache=Compiled"), "first run compiles:\n{err}");
    assert!(
        !err.contains(&slack.webhook_url()),
        "webhook leaked to the console"
    );
    assert_eq!(slack.messages().len(), 1);

    let out = run(&["--json"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("cache=Hit") && !err.contains("cache=Compiled"),
        "second run must use the cache:\n{err}"
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "success");
    assert_eq!(record["stages"][0]["name"], "tag");
    assert!(record["stages"][0]["outputs"]["tags"]
        .as_str()
        .unwrap()
        .contains("build-7"));
    assert_eq!(slack.messages().len(), 2);
}

#[test]
fn plugin_inspect_shows_world_imports_and_describe() {
    let dir = tempfile::tempdir().unwrap();
    let out = host(
        &dir.path().join("state"),
        &[
            "plugin",
            "inspect",
            "--json",
            plugin("slack-notify").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["world"], "ci:stage/stage@0.1.0");
    assert_eq!(v["describe"]["name"], "slack-notify");
    let imports = v["imports"].to_string();
    assert!(imports.contains("ci:stage/http@0.1.0"), "{imports}");
    assert!(v["exports"].to_string().contains("run"));
}

#[test]
fn help_on_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["plugin", "--help"],
        vec!["plugin", "inspect", "--help"],
        vec!["plugin", "push", "--help"],
        vec!["plugin", "pull", "--help"],
        vec!["plugin", "sign", "--help"],
        vec!["plugin", "new", "--help"],
        vec!["lock", "--help"],
    ] {
        let out = host(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains("Usage:"), "{args:?}");
    }
}

/// Ctrl-C stops a running stage, records the run as cancelled, exits 130.
#[test]
fn ctrl_c_cancels_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            r#"[pipeline]
name = "spin"
[plugins]
hostile = "{}"
[[stage]]
name = "spin"
plugin = "hostile"
with = {{ attack = "loop" }}
timeout = "5m"
[[stage]]
name = "after"
plugin = "hostile"
needs = ["spin"]
with = {{ attack = "ok" }}
"#,
            plugin("hostile").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(host_bin())
        .env("HOST_STATE_DIR", &state)
        .env("NO_COLOR", "1")
        .args(["run", "--json", file.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the looping stage has started.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    loop {
        let line = lines.next().expect("host ended early").unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("spin") && line.contains("started") {
            break;
        }
        assert!(Instant::now() < deadline, "stage never started:\n{seen}");
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{seen}{}", rest.join("\n"));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "cancelled");
    assert_eq!(record["stages"][0]["status"], "cancelled");
    assert_eq!(record["stages"][1]["status"], "cancelled");
}

/// `host rollback` redeploys the previous image recorded in run history.
#[test]
fn rollback_redeploys_a_recorded_image() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("pipeline.toml");
    let write = |image: &str| {
        std::fs::write(
            &file,
            format!(
                r#"[pipeline]
name = "rb"
[plugins]
hostile = "{}"
[environments.prod]
branch = ["main"]
approval = true
[[stage]]
name = "build"
plugin = "hostile"
with = {{ attack = "ok" }}
[[stage]]
name = "deploy"
plugin = "hostile"
needs = ["build"]
environment = "prod"
with = {{ attack = "echo", image = "{image}" }}
"#,
                plugin("hostile").display()
            ),
        )
        .unwrap()
    };
    let host_cmd = |args: &[&str]| {
        Command::new(host_bin())
            .env("HOST_STATE_DIR", &state)
            .env("NO_COLOR", "1")
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    // Three deployments; approvals are given by a second process.
    for v in ["app:1", "app:2", "app:3"] {
        write(v);
        let mut child = Command::new(host_bin())
            .env("HOST_STATE_DIR", &state)
            .env("NO_COLOR", "1")
            .current_dir(dir.path())
            .args(["run", "--branch", "main", "--quiet", file.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let approve = loop {
            let line = lines.next().expect("no approval asked").unwrap();
            if let Some(i) = line.find("approve: host ") {
                break line[i + "approve: host ".len()..].trim().to_string();
            }
        };
        let args: Vec<&str> = approve.split_whitespace().collect();
        let out = host_cmd(&args);
        assert!(out.status.success(), "{}", shown(&out));
        let _ = lines.count();
        assert!(child.wait().unwrap().success());
    }
    let image_of = |out: &Output| {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let deploy = v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "deploy")
            .unwrap()
            .clone();
        (
            v["event"].clone(),
            deploy["outputs"]["image"].clone(),
            v["stages"][0]["status"].clone(),
        )
    };
    let out = host_cmd(&[
        "rollback",
        "prod",
        "-f",
        file.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("from app:3 to app:2"),
        "{}",
        text(&out.stderr)
    );
    let (event, image, build) = image_of(&out);
    assert_eq!(
        (event.as_str(), image.as_str()),
        (Some("rollback"), Some("app:2"))
    );
    assert_eq!(build, "skipped", "only the deploy stage runs");

    let out = host_cmd(&[
        "rollback",
        "prod",
        "--to",
        "app:1",
        "-f",
        file.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(image_of(&out).1, "app:1");

    let out = host_cmd(&[
        "rollback",
        "prod",
        "--to",
        "app:9",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no recorded deployment matches `app:9`"),
        "{}",
        text(&out.stderr)
    );
}

/// A schema of its own on the test PostgreSQL server
/// (`PIPELINE_TEST_POSTGRES`), dropped afterwards.
struct PgSchema {
    admin: host::store::Db,
    name: String,
    url: String,
}

impl PgSchema {
    fn new(test: &str) -> Option<Self> {
        let Some(base) = std::env::var("PIPELINE_TEST_POSTGRES")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("{test}: skipped (PIPELINE_TEST_POSTGRES is not set)");
            return None;
        };
        let admin = host::store::Db::postgres(&base).unwrap();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin.batch(&format!("CREATE SCHEMA {name}")).unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Some(Self { admin, name, url })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = self
            .admin
            .batch(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// `--database URL`: the history and approval commands read and write a
/// run another machine recorded in PostgreSQL, not the state directory.
#[test]
fn history_and_approvals_use_the_postgres_database_given() {
    use host::run::approvals::{ApprovalStore, Decision};
    use host::run::{RunRecord, RunStore, StageRecord, Status};

    let Some(pg) = PgSchema::new("history_and_approvals_use_the_postgres_database_given") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = RunStore::postgres(&pg.url).unwrap();
    let mut deploy = StageRecord::pending("deploy", "deploy.wasm");
    deploy.status = Status::Running;
    let run = RunRecord {
        id: "0123456789ab".into(),
        pipeline: "shop".into(),
        file: "pipeline.toml".into(),
        build_number: 7,
        commit_sha: "c0ffee".into(),
        branch: Some("main".into()),
        tag: None,
        event: "push".into(),
        environment: Some("production".into()),
        status: Status::Running,
        started_at: "2024-05-01T10:00:00Z".into(),
        duration_ms: 0,
        reason: None,
        trigger: None,
        stages: vec![deploy],
        attempts: Vec::new(),
    };
    store.save(&run).unwrap();
    let line = host::caps::log::LogLine {
        at_ms: 1,
        stream: "stdout".into(),
        text: "rolling out v7".into(),
    };
    store
        .append_logs(&run.id, &[("deploy".into(), line)])
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let approvals = ApprovalStore::postgres(&pg.url).unwrap();
    let deadline = rt
        .block_on(approvals.ask(&run.id, "deploy", "production", Duration::from_secs(600)))
        .unwrap();

    let db = ["--database", pg.url.as_str()];
    let with = |args: &[&str]| {
        let all: Vec<&str> = args.iter().chain(db.iter()).copied().collect();
        let out = host(&state, &all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", shown(&out));
        text(&out.stdout)
    };
    let runs: serde_json::Value = serde_json::from_str(&with(&["runs", "--json"])).unwrap();
    assert_eq!(runs["runs"][0]["id"], "0123456789ab", "{runs}");
    assert!(with(&["runs", "show", "0123"]).contains("host approve 0123456789ab deploy"));
    assert!(with(&["logs", "0123"]).contains("rolling out v7"));
    assert_eq!(with(&["audit", "0123", "--json"]).trim(), "[]");
    assert!(with(&["approvals"]).contains("0123456789ab  deploy  → production"));
    assert!(with(&["approve", "0123456789ab", "deploy", "--by", "ann"]).contains("approved"));
    let decided = rt
        .block_on(approvals.wait(&run.id, "deploy", deadline))
        .unwrap();
    assert_eq!(decided.decision, Decision::Approved);
    assert_eq!(decided.by.as_deref(), Some("ann"));
    // The state directory was not used for any of it.
    assert!(!state.join("runs.db").exists());
    // A URL's password is never shown.
    let out = host(
        &state,
        &[
            "runs",
            "--database",
            "postgres://ci:hunter2@127.0.0.1:1/none",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!shown(&out).contains("hunter2"), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains("ci:***@127.0.0.1:1"),
        "{}",
        shown(&out)
    );
}

/// `host hash-password` and `host new-token` make what a `[[user]]` holds;
/// neither writes the secret anywhere but where it was asked for.
#[test]
fn a_users_password_hash_and_token_come_from_the_cli() {
    use std::io::Write;
    let hash_of = |password: &str| {
        let mut child = Command::new(host_bin())
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = hash_of("a long passphrase");
    assert!(out.status.success(), "{}", shown(&out));
    let hash = text(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("passphrase"));
    assert!(host::serve::access::password::verify(
        &hash,
        "a long passphrase"
    ));
    let out = hash_of("short");
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(text(&out.stderr).contains("a password of 8 to 1024 characters"));

    let state = tempfile::tempdir().unwrap();
    let out = host(state.path(), &["new-token"]);
    assert!(out.status.success(), "{}", shown(&out));
    let printed = text(&out.stdout);
    let token = printed
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap();
    assert_eq!(token.len(), 64);
    let line = format!(
        "tokens = [\"sha256:{}\"]",
        host::digest::sha256_hex(token.as_bytes())
    );
    assert!(printed.contains(&line), "{printed}");
}

/// A long-lived host (`host serve`, an agent) does not read and hash an
/// unchanged plugin again for every run, but a file rewritten in place,
/// to the same size and modification time, is read again.
#[test]
fn a_plugin_rewritten_in_place_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = host::runtime::Runtime::new(dir.path().join("cache")).unwrap();
    let file = dir.path().join("p.wasm");
    std::fs::copy(plugin("tag"), &file).unwrap();
    let first = rt.load(&file).unwrap();
    assert_eq!(rt.load(&file).unwrap().sha256, first.sha256);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    match rt.load(&file) {
        Ok(p) => assert_eq!(p.sha256, host::digest::sha256_hex(&bytes)),
        // A changed byte may make it no component at all: read either way.
        Err(e) => assert!(e.to_string().contains("p.wasm"), "{e}"),
    }
}
