//! Hostile repository content against `host serve` and `host run`: nothing a
//! repository or a stage writes may make the host read or write outside the
//! checkout, or leave something that runs on the host later.
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pipeline_tests::cli::{host, shown, stage, text};
use pipeline_tests::http::FileServer;
use pipeline_tests::plugins::plugin;
use pipeline_tests::serve::{config, GitRepo, Server};
use serde_json::Value;

const RUN: Duration = Duration::from_secs(120);
/// What must never show up anywhere the server shows or stores a run.
const MARKER: &str = "SERVER-ARTIFACT-KEY-5f1c9e";

const EVERY_BRANCH: &str = r#"
[[repository.trigger]]
event = "push"
branch = ["**"]
"#;

const OK_STAGE: &str =
    "[[stage]]\nname = \"ok\"\nplugin = \"hostile\"\nwith = { attack = \"ok\" }\n";

fn pipeline(plugin_path: &str, rest: &str) -> String {
    format!("[pipeline]\nname = \"attacked\"\n\n[plugins]\nhostile = \"{plugin_path}\"\n\n{rest}")
}

/// One attack: what the commit does, and what the run's reason must say.
struct Attack {
    branch: &'static str,
    change: Box<dyn FnOnce(&Path)>,
    expect: &'static [&'static str],
}

/// Write a file, replacing a link an earlier commit left there.
fn write(work: &Path, rel: &str, text: &str) {
    let p = work.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&p);
    std::fs::write(p, text).unwrap();
}

fn link(work: &Path, rel: &str, target: &Path) {
    let p = work.join(rel);
    let _ = std::fs::remove_file(&p);
    symlink(target, p).unwrap();
}

#[test]
fn files_a_checkout_names_never_lead_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // Not TOML: an error that quoted the file would show the marker.
    std::fs::write(outside.join("artifacts.key"), format!("{MARKER} = = =\n")).unwrap();
    std::fs::copy(plugin("hostile"), outside.join("evil.wasm")).unwrap();
    let hostile = plugin("hostile").display().to_string();
    std::fs::write(
        outside.join("pipeline.toml"),
        pipeline(&hostile, &format!("# {MARKER}\n{OK_STAGE}")),
    )
    .unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("db"), "db-password").unwrap();

    let repo = GitRepo::new(dir.path());
    let key = outside.join("artifacts.key");
    let evil = outside.join("evil.wasm");
    // The checkout is STATE/workspaces/RUN: three levels up is `dir`.
    let climb = Path::new("../../../outside");
    let good = pipeline(&hostile, OK_STAGE);
    let attacks: Vec<Attack> = vec![
        Attack {
            branch: "lock-absolute",
            change: Box::new({
                let (good, key) = (good.clone(), key.clone());
                move |w| {
                    write(w, "pipeline.toml", &good);
                    link(w, "pipeline.lock", &key);
                }
            }),
            expect: &["pipeline.lock", "leads outside the checkout"],
        },
        Attack {
            branch: "lock-relative",
            change: Box::new({
                let good = good.clone();
                move |w| {
                    write(w, "pipeline.toml", &good);
                    link(w, "pipeline.lock", &climb.join("artifacts.key"));
                }
            }),
            expect: &["pipeline.lock", "leads outside the checkout"],
        },
        Attack {
            branch: "pipeline-link",
            change: Box::new({
                let p = outside.join("pipeline.toml");
                move |w| link(w, "pipeline.toml", &p)
            }),
            expect: &["cannot read pipeline file", "leads outside the checkout"],
        },
        Attack {
            branch: "plugin-absolute",
            change: Box::new({
                let p = pipeline(&evil.display().to_string(), OK_STAGE);
                move |w| write(w, "pipeline.toml", &p)
            }),
            expect: &["plugin `hostile`", "leads outside"],
        },
        Attack {
            branch: "plugin-relative",
            change: Box::new({
                let p = pipeline(&climb.join("evil.wasm").display().to_string(), OK_STAGE);
                move |w| write(w, "pipeline.toml", &p)
            }),
            expect: &["plugin `hostile`", "leads outside"],
        },
        Attack {
            branch: "plugin-link",
            change: Box::new({
                let (p, evil) = (pipeline("evil.wasm", OK_STAGE), evil.clone());
                move |w| {
                    write(w, "pipeline.toml", &p);
                    link(w, "evil.wasm", &evil);
                }
            }),
            expect: &["plugin `hostile`", "leads outside"],
        },
    ];

    let server_extra = format!("secrets-dir = \"{}\"", secrets.display());
    let server = Server::start(
        dir.path(),
        &config(&repo.url(), &server_extra, "", EVERY_BRANCH),
    );
    let mut runs = Vec::new();
    for (i, a) in attacks.into_iter().enumerate() {
        let sha = repo.push_with(a.branch, a.change);
        let id = server.push(
            &format!("attack-{i}"),
            &format!("refs/heads/{}", a.branch),
            &sha,
        );
        runs.push((a.branch, id, a.expect));
    }
    for (branch, id, expect) in &runs {
        let r = server.wait_run(id, RUN);
        assert_eq!(r["status"], "failure", "{branch}: {r}");
        let reason = r["reason"].as_str().unwrap_or_default();
        for e in *expect {
            assert!(reason.contains(e), "{branch}: `{e}` not in {reason}");
        }
    }

    // A secret file named by the repository stays inside secrets-dir; a
    // benign pipeline behind an inside link, with an installed plugin, runs.
    let secret_stage = r#"[secrets]
db = { file = "../outside/artifacts.key" }
ok = { file = "db" }

[[stage]]
name = "steal"
plugin = "hostile"
with = { attack = "secret", name = "db" }
grants = { secrets-read = ["db"] }

[[stage]]
name = "use"
plugin = "hostile"
with = { attack = "secret", name = "ok" }
grants = { secrets-read = ["ok"] }
"#;
    let p = pipeline(&hostile, secret_stage);
    let sha = repo.push_with("benign", |w| {
        for left in ["pipeline.lock", "evil.wasm"] {
            let _ = std::fs::remove_file(w.join(left));
        }
        write(w, "ci/pipeline.toml", &p);
        link(w, "pipeline.toml", Path::new("ci/pipeline.toml"));
    });
    let id = server.push("benign-1", "refs/heads/benign", &sha);
    let r = server.wait_run(&id, RUN);
    let steal = stage(&r, "steal");
    assert_eq!(steal["status"], "failure", "{r}");
    assert!(
        steal["error"].as_str().unwrap().contains("leads outside"),
        "{steal}"
    );
    assert_eq!(stage(&r, "use")["status"], "success", "{r}");
    runs.push(("benign", id, &[]));

    // Nothing anywhere shows or stores what lies outside.
    for (branch, id, _) in &runs {
        let api = server.get_json(&format!("/api/runs/{id}")).to_string();
        let page = server.get(&format!("/runs/{id}")).1;
        assert!(!api.contains(MARKER) && !page.contains(MARKER), "{branch}");
    }
    let db = std::fs::read(server.state.join("runs.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(MARKER));
}

#[test]
fn the_server_never_writes_into_a_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // A remote plugin the checkout has no lock entry for: resolving it used
    // to write pipeline.lock through pipeline.lock.tmp.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let files = FileServer::default();
    let bytes = std::fs::read(plugin("hostile")).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    files.put("/hostile.wasm", bytes);
    let (addr, _stop) = rt.block_on(files.start()).unwrap();
    let p = format!(
        "[pipeline]\nname = \"remote\"\n\n[plugins]\nhostile = {{ url = \"http://{addr}/hostile.wasm\", sha256 = \"{sha}\" }}\n\n{OK_STAGE}"
    );
    let target = outside.join("written-by-the-host");
    let repo = GitRepo::new(dir.path());
    let commit = repo.push_with("main", |w| {
        write(w, "pipeline.toml", &p);
        link(w, "pipeline.lock.tmp", &target);
        link(w, "pipeline.lock", &target);
    });
    let server = Server::start(
        dir.path(),
        &config(&repo.url(), "keep-workspaces = true", "", EVERY_BRANCH),
    );
    let id = server.push("w-1", "refs/heads/main", &commit);
    let r = server.wait_run(&id, RUN);
    // The lock link leads out: refused, and nothing written anywhere.
    assert_eq!(r["status"], "failure", "{r}");
    assert!(!target.exists(), "the host wrote through a committed link");

    // Without a lock file at all, the run resolves the plugin and runs,
    // and still writes nothing into the checkout.
    let commit = repo.push_with("main", |w| {
        std::fs::remove_file(w.join("pipeline.lock")).unwrap();
    });
    let id = server.push("w-2", "refs/heads/main", &commit);
    let r = server.wait_run(&id, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert!(!target.exists(), "the host wrote through a committed link");
    let workspace = server.state.join("workspaces").join(&id);
    assert!(workspace.join("pipeline.toml").exists(), "workspace kept");
    assert!(!workspace.join("pipeline.lock").exists());
    let extra: Vec<String> = std::fs::read_dir(&workspace)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("lock") && n != "pipeline.lock.tmp")
        .collect();
    assert!(extra.is_empty(), "{extra:?}");
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
}

/// A user's checkout with a pipeline whose stage may write the workspace.
fn users_checkout(root: &Path) -> std::path::PathBuf {
    let repo = root.join("app");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "-b", "main"]);
    git(&repo, &["config", "user.email", "dev@example.com"]);
    git(&repo, &["config", "user.name", "Dev"]);
    std::fs::write(repo.join("VERSION"), "1.0.0").unwrap();
    std::fs::write(repo.join(".gitignore"), "target/\n").unwrap();
    std::fs::create_dir_all(repo.join("target")).unwrap();
    std::fs::write(repo.join("target/big.bin"), "build output").unwrap();
    let p = format!(
        "[pipeline]\nname = \"local\"\n[plugins]\nhostile = \"{}\"\n\n\
         [[stage]]\nname = \"read\"\nplugin = \"hostile\"\nwith = {{ attack = \"read-workspace\", path = \"VERSION\" }}\ngrants = {{ workspace = \"ro\" }}\n\n\
         [[stage]]\nname = \"plant\"\nplugin = \"hostile\"\nwith = {{ attack = \"write-workspace\", path = \".git/config\", content = \"[core]\\n\\tfsmonitor = touch /tmp/pwned\\n\" }}\ngrants = {{ workspace = \"rw\" }}\n\n\
         [[stage]]\nname = \"report\"\nplugin = \"hostile\"\nwith = {{ attack = \"write-workspace\", path = \"report.txt\", content = \"done\" }}\ngrants = {{ workspace = \"rw\" }}\n",
        plugin("hostile").display()
    );
    std::fs::write(repo.join("pipeline.toml"), p).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "--quiet", "-m", "app"]);
    // An uncommitted change: the run sees what the developer sees.
    std::fs::write(repo.join("VERSION"), "1.1.0-dev").unwrap();
    repo
}

#[test]
fn a_stage_never_gets_the_users_git_directory() {
    let t = tempfile::tempdir().unwrap();
    let repo = users_checkout(t.path());
    let config_before = std::fs::read_to_string(repo.join(".git/config")).unwrap();
    let state = t.path().join("state");
    let file = repo.join("pipeline.toml");
    let ws = repo.to_str().unwrap();
    let out = host(
        &state,
        &["run", file.to_str().unwrap(), "--workspace", ws, "--json"],
    );
    let r: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", shown(&out)));
    assert!(text(&out.stderr).contains("a copy of"), "{}", shown(&out));
    assert_eq!(stage(&r, "read")["outputs"]["content"], "1.1.0-dev", "{r}");
    assert_eq!(stage(&r, "plant")["status"], "failure", "{r}");
    assert_eq!(stage(&r, "report")["status"], "success", "{r}");
    assert_eq!(
        std::fs::read_to_string(repo.join(".git/config")).unwrap(),
        config_before
    );
    // Written into the run's copy, not into the checkout; the copy is gone.
    assert!(!repo.join("report.txt").exists());
    let copies = state.join("workspaces");
    let left = std::fs::read_dir(&copies).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the per-run copy is removed after the run");

    // `--in-place` is the explicit way to run in the checkout itself.
    let out = host(
        &state,
        &[
            "run",
            file.to_str().unwrap(),
            "--workspace",
            ws,
            "--in-place",
        ],
    );
    assert!(text(&out.stderr).contains("in place"), "{}", shown(&out));
    assert_eq!(
        std::fs::read_to_string(repo.join("report.txt")).unwrap(),
        "done"
    );
}

#[test]
fn a_state_directory_inside_any_workspace_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let file = t.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nname = \"ro\"\n[plugins]\nhostile = \"{}\"\n[[stage]]\nname = \"read\"\nplugin = \"hostile\"\nwith = {{ attack = \"ok\" }}\ngrants = {{ workspace = \"ro\" }}\n",
            plugin("hostile").display()
        ),
    )
    .unwrap();
    let out = host(
        &ws.join(".state"),
        &[
            "run",
            file.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains("is inside the workspace"),
        "{}",
        shown(&out)
    );
}
