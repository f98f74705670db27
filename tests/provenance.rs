//! Where a run's inputs come from and what its stages did with them:
//! source archives (`host run --source`), the capability audit trail
//! (`host audit`) and artifact digests checked between stages.
use std::path::{Path, PathBuf};

use pipeline_tests::archive::{sha256_of, tar_gz};
use pipeline_tests::cli::{host, host_env, last_run, shown, stage, text};
use pipeline_tests::http::TestServer;
use pipeline_tests::plugins::plugin;

const SECRET: &str = "hunter2-audit-secret-value";

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn pipeline_head(name: &str) -> String {
    format!(
        "[pipeline]\nname = \"{name}\"\n[plugins]\nhostile = \"{}\"\n",
        plugin("hostile").display()
    )
}

#[test]
fn a_source_archive_becomes_the_workspace_and_a_hostile_one_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}[[stage]]\nname = \"read\"\nplugin = \"hostile\"\nwith = {{ attack = \"read-workspace\", path = \"src/VERSION\" }}\ngrants = {{ workspace = \"ro\" }}\n",
            pipeline_head("archive-source")
        ),
    );
    let good = tar_gz(dir.path(), "upload.tar.gz", &[("src/VERSION", "1.4.2\n")]);
    let out = host(
        &state,
        &[
            "run",
            file.to_str().unwrap(),
            "--source",
            good.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let run = last_run(&state);
    assert_eq!(run["event"], "upload");
    assert_eq!(run["stages"][0]["outputs"]["content"], "1.4.2\n");
    let archive = &run["trigger"]["archive"];
    assert_eq!(archive["name"], "upload.tar.gz");
    assert_eq!(archive["files"], 1);
    assert_eq!(archive["sha256"], sha256_of(&good).as_str());
    // The unpacked workspace is gone after the run.
    let left: Vec<_> = std::fs::read_dir(state.join("sources")).unwrap().collect();
    assert!(left.is_empty(), "workspaces left behind: {left:?}");

    // Path traversal: refused before any stage, nothing written outside.
    let evil = tar_gz(
        dir.path(),
        "evil.tar.gz",
        &[("src/VERSION", "1\n"), ("../../escaped", "x")],
    );
    let out = host(
        &state,
        &[
            "run",
            file.to_str().unwrap(),
            "--source",
            evil.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("--source evil.tar.gz: entry `../../escaped`: `..` in a path is not allowed"),
        "{err}"
    );
    assert!(!dir.path().join("escaped").exists() && !state.join("escaped").exists());
    let out = host(&state, &["runs", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        1,
        "a refused archive starts no run"
    );

    // Not an archive at all.
    let junk = write(dir.path(), "notes.txt", "hello");
    let out = host(
        &state,
        &[
            "run",
            file.to_str().unwrap(),
            "--source",
            junk.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("notes.txt: not a .zip, .tar.gz, .tgz or .tar file"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_capability_call_is_audited_allowed_or_denied_without_secret_values() {
    let server = TestServer::start(None).await.unwrap();
    let ok = server.url("/ok");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = write(
        dir.path(),
        "p.toml",
        &format!(
            "{head}[secrets]\ntoken = {{ env = \"AUDIT_TOKEN\" }}\n\
             [[stage]]\nname = \"call\"\nplugin = \"hostile\"\n\
             with = {{ attack = \"http\", url = \"{ok}?t=${{secret:token}}\" }}\n\
             grants = {{ http = [\"http://127.0.0.1:*/ok*\"], secrets = [\"token\"] }}\n\
             [[stage]]\nname = \"sneak\"\nplugin = \"hostile\"\n\
             with = {{ attack = \"secret\", name = \"token\" }}\n\
             grants = {{ secrets = [\"token\"] }}\n\
             [[stage]]\nname = \"exfil\"\nplugin = \"hostile\"\n\
             with = {{ attack = \"http\", url = \"http://127.0.0.1:9/steal\" }}\n",
            head = pipeline_head("audited")
        ),
    );
    let f = file.to_str().unwrap().to_string();
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || {
        host_env(&st, &["run", &f], &[("AUDIT_TOKEN", SECRET)])
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "sneak and exfil fail: {}",
        shown(&out)
    );
    assert_eq!(server.hits(), 1, "only the granted call reached the server");

    let run = last_run(&state);
    let id = run["id"].as_str().unwrap();
    let st = state.clone();
    let idc = id.to_string();
    let (json, table, denied) = tokio::task::spawn_blocking(move || {
        (
            host(&st, &["audit", &idc, "--json"]),
            host(&st, &["audit", &idc]),
            host(&st, &["audit", &idc, "--denied", "--json"]),
        )
    })
    .await
    .unwrap();
    assert!(json.status.success(), "{}", shown(&json));
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let find = |stage: &str| {
        rows.iter()
            .find(|r| r["stage"] == stage)
            .unwrap_or_else(|| panic!("no audit entry of {stage}: {rows:?}"))
    };
    let call = find("call");
    assert_eq!(call["capability"], "http");
    assert_eq!(call["allowed"], true);
    assert_eq!(call["outcome"], "HTTP 200");
    assert_eq!(call["target"], format!("GET {ok}?t=${{secret:token}}"));
    let sneak = find("sneak");
    assert_eq!(
        (&sneak["capability"], &sneak["allowed"]),
        (&"secrets.read".into(), &false.into())
    );
    assert_eq!(sneak["target"], "token");
    let exfil = find("exfil");
    assert_eq!(exfil["allowed"], false);
    assert_eq!(exfil["target"], "GET http://127.0.0.1:9/steal");
    assert!(exfil["outcome"]
        .as_str()
        .unwrap()
        .starts_with("denied: stage `exfil` has no `http` grant"));

    let denied: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap();
    let denied_stages: Vec<&str> = denied
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stage"].as_str().unwrap())
        .collect();
    assert_eq!(denied_stages, ["sneak", "exfil"]);
    let table = text(&table.stdout);
    assert!(table.contains("3 capability calls, 2 denied"), "{table}");
    assert!(table.contains("DENIED"), "{table}");

    // The value is nowhere: not in the audit, the record or the database.
    for out in [&json.stdout, &table.as_bytes().to_vec()] {
        assert!(!text(out).contains(SECRET));
    }
    assert!(!serde_json::to_string(&run).unwrap().contains(SECRET));
    for entry in std::fs::read_dir(&state).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(SECRET),
                "{} holds the secret",
                p.display()
            );
        }
    }
}

fn artifact_pipeline(dir: &Path, tamper: bool) -> PathBuf {
    let middle = if tamper {
        "with = { attack = \"write-workspace\", path = \"dist/app\", content = \"evil\" }\ngrants = { workspace = \"rw\" }\n"
    } else {
        "with = { attack = \"read-workspace\", path = \"dist/app\" }\ngrants = { workspace = \"ro\" }\n"
    };
    write(
        dir,
        if tamper {
            "tampered.toml"
        } else {
            "clean.toml"
        },
        &format!(
            "{}[[stage]]\nname = \"build\"\nplugin = \"hostile\"\n\
             with = {{ attack = \"write-workspace\", path = \"dist/app\", content = \"v1\" }}\n\
             grants = {{ workspace = \"rw\" }}\nartifacts = [\"dist/app\"]\n\
             [[stage]]\nname = \"scan\"\nplugin = \"hostile\"\nneeds = [\"build\"]\n{middle}\
             [[stage]]\nname = \"deploy\"\nplugin = \"hostile\"\nneeds = [\"scan\"]\n\
             with = {{ attack = \"ok\" }}\n",
            pipeline_head("artifacts")
        ),
    )
}

#[test]
fn an_artifact_changed_after_it_was_recorded_stops_the_stages_that_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join("dist")).unwrap();
    let ws_arg = ws.to_str().unwrap().to_string();

    let state = dir.path().join("clean-state");
    let file = artifact_pipeline(dir.path(), false);
    let out = host(
        &state,
        &["run", file.to_str().unwrap(), "--workspace", &ws_arg],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let run = last_run(&state);
    let digest = run["stages"][0]["artifacts"]["dist/app"].as_str().unwrap();
    use sha2::Digest;
    assert_eq!(
        digest,
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"v1")))
    );

    let state = dir.path().join("tampered-state");
    let file = artifact_pipeline(dir.path(), true);
    let out = host(
        &state,
        &["run", file.to_str().unwrap(), "--workspace", &ws_arg],
    );
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let run = last_run(&state);
    assert_eq!(stage(&run, "scan")["status"], "success");
    let deploy = stage(&run, "deploy");
    assert_eq!(deploy["status"], "failure");
    let err = deploy["error"].as_str().unwrap();
    assert!(
        err.starts_with(
            "artifact `dist/app` of stage `build` was changed after `build` recorded it"
        ),
        "{err}"
    );

    // A declared artifact that is never written fails its producer.
    let state = dir.path().join("missing-state");
    let file = write(
        dir.path(),
        "missing.toml",
        &format!(
            "{}[[stage]]\nname = \"build\"\nplugin = \"hostile\"\nwith = {{ attack = \"ok\" }}\n\
             grants = {{ workspace = \"ro\" }}\nartifacts = [\"dist/never\"]\n",
            pipeline_head("artifacts")
        ),
    );
    let out = host(
        &state,
        &["run", file.to_str().unwrap(), "--workspace", &ws_arg],
    );
    assert_eq!(out.status.code(), Some(1));
    let run = last_run(&state);
    assert_eq!(
        run["stages"][0]["error"],
        "declared artifact `dist/never` was not produced"
    );

    // `host check` refuses paths outside the workspace.
    let bad = write(
        dir.path(),
        "bad.toml",
        &format!(
            "{}[[stage]]\nname = \"build\"\nplugin = \"hostile\"\ngrants = {{ workspace = \"rw\" }}\nartifacts = [\"../etc/passwd\"]\n",
            pipeline_head("artifacts")
        ),
    );
    let out = host(&state, &["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("artifact `../etc/passwd` must not contain `..`"),
        "{}",
        shown(&out)
    );
}

/// Artifacts outlive the workspace in the encrypted store: `host
/// artifacts --out` gives back exactly what was recorded, and a blob
/// changed at rest, or opened with another key, is refused by name.
#[test]
fn artifacts_are_kept_encrypted_and_come_back_only_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join("dist")).unwrap();
    let state = dir.path().join("state");
    let file = artifact_pipeline(dir.path(), false);
    let out = host(
        &state,
        &[
            "run",
            file.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let id = last_run(&state)["id"].as_str().unwrap().to_string();
    // The workspace goes away; the artifact does not.
    std::fs::remove_dir_all(&ws).unwrap();
    let got = dir.path().join("got");
    let out = host(
        &state,
        &["artifacts", &id, "--out", got.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["path"], "dist/app");
    assert_eq!(rows[0]["stored"], true);
    assert_eq!(std::fs::read(got.join("build/dist/app")).unwrap(), b"v1");

    // At rest it is ciphertext, and the key is not beside it in the clear
    // of the blob.
    let blobs: Vec<PathBuf> = walk(&state.join("artifacts"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let mut bytes = std::fs::read(&blobs[0]).unwrap();
    assert!(!bytes.windows(2).any(|w| w == b"v1"));

    // Another key (HOST_ARTIFACT_KEY) cannot open it.
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = host_env(
        &state,
        &["artifacts", &id, "--out", got.to_str().unwrap()],
        &[("HOST_ARTIFACT_KEY", other)],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("artifact `dist/app` of stage `build`"),
        "{}",
        shown(&out)
    );

    // One bit changed at rest.
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blobs[0], &bytes).unwrap();
    let out = host(&state, &["artifacts", &id, "--out", got.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("does not decrypt"),
        "{}",
        shown(&out)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
