//! Running the `host` binary as a user would, with its own state dir.
use std::path::Path;
use std::process::{Command, Output};

use crate::plugins::host_bin;

/// `host ARGS` with `HOST_STATE_DIR=state` and extra environment.
pub fn host_env(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(host_bin());
    cmd.env("HOST_STATE_DIR", state)
        .env("NO_COLOR", "1")
        .env_remove("HOST_REGISTRY_USERNAME")
        .env_remove("HOST_REGISTRY_PASSWORD")
        .env_remove("HOST_DATABASE_URL")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running host");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("panicked"), "host panicked:\n{all}");
    out
}

pub fn host(state: &Path, args: &[&str]) -> Output {
    host_env(state, args, &[])
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// stdout and stderr, for assertion messages.
pub fn shown(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// `host plugin new NAME --lang LANG --dir DIR`: the project a user starts
/// from, with the WIT contract copied in.
pub fn plugin_new(lang: &str, name: &str, dir: &Path) {
    let out = host(
        dir.parent().expect("dir has a parent"),
        &[
            "plugin",
            "new",
            name,
            "--lang",
            lang,
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "plugin new failed:\n{}", shown(&out));
}

/// The newest run recorded in `state`, as `host runs show --json` prints it.
pub fn last_run(state: &Path) -> serde_json::Value {
    let out = host(state, &["runs", "--json", "-n", "1"]);
    assert!(out.status.success(), "{}", shown(&out));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = runs["runs"][0]["id"].as_str().expect("a run").to_string();
    let out = host(state, &["runs", "show", &id, "--json"]);
    assert!(out.status.success(), "{}", shown(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Stage `name` of a run record in JSON.
pub fn stage<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {run}"))
}

/// `host ARGS` that approves, as `approver`, every stage it stops at (the
/// `approve: host approve RUN STAGE` line it prints), from another
/// process, as a person would.
pub fn host_approving(state: &Path, args: &[&str], env: &[(&str, &str)], approver: &str) -> Output {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let mut cmd = Command::new(host_bin());
    cmd.env("HOST_STATE_DIR", state)
        .env("NO_COLOR", "1")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running host");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let mut stderr = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(i) = line.find("approve: host approve ") {
            let rest: Vec<&str> = line[i + "approve: host ".len()..]
                .split_whitespace()
                .collect();
            let out = host(state, &[rest[0], rest[1], rest[2], "--by", approver]);
            assert!(out.status.success(), "{}", shown(&out));
        }
        stderr.extend_from_slice(line.as_bytes());
        stderr.push(b'\n');
    }
    let status = child.wait().unwrap();
    Output {
        status,
        stdout: reader.join().unwrap(),
        stderr,
    }
}
