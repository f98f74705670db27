//! `host serve` as a user runs it: the real binary on a free loopback port,
//! a real git repository (bare, reached by `file://`) that tests push to,
//! and signed GitHub deliveries built from GitHub's own payload examples.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::plugins::{host_bin, root};

pub const SECRET: &str = "a webhook secret for tests";
pub const REPO: &str = "acme/demo-app";

/// A git repository: a bare one the server fetches from and a work tree
/// the test commits in.
pub struct GitRepo {
    pub bare: PathBuf,
    pub work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Tester",
            "-c",
            "user.email=tester@example.com",
        ])
        .args(args)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitRepo {
    pub fn new(dir: &Path) -> Self {
        let bare = dir.join("remote.git");
        let work = dir.join("work");
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git(&bare, &["init", "--quiet", "--bare"]);
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Self { bare, work }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Commit `files` (path → content) on `branch` and push it; the sha.
    pub fn push(&self, branch: &str, files: &[(&str, &str)]) -> String {
        self.push_with(branch, |work| {
            for (path, content) in files {
                let p = work.join(path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, content).unwrap();
            }
        })
    }

    /// Commit whatever `change` does to the working tree (links, removals)
    /// on `branch` and push it; the sha.
    pub fn push_with(&self, branch: &str, change: impl FnOnce(&Path)) -> String {
        let exists = Command::new("git")
            .arg("-C")
            .arg(&self.work)
            .args(["rev-parse", "--verify", "-q", "HEAD"])
            .output()
            .unwrap()
            .status
            .success();
        if exists {
            git(&self.work, &["checkout", "--quiet", "-B", branch]);
        } else {
            git(&self.work, &["checkout", "--quiet", "--orphan", branch]);
        }
        change(&self.work);
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &[
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                &format!("change on {branch}"),
            ],
        );
        git(
            &self.work,
            &[
                "push",
                "--quiet",
                "--force",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn tag(&self, tag: &str) -> String {
        git(&self.work, &["tag", "-f", tag]);
        git(
            &self.work,
            &[
                "push",
                "--quiet",
                "--force",
                "origin",
                &format!("refs/tags/{tag}"),
            ],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// GitHub's push payload example, pointed at `git_ref`/`sha` of [`REPO`].
pub fn push_payload(git_ref: &str, sha: &str) -> Vec<u8> {
    let mut v = shared_payload("push_new-branch.payload.json");
    v["ref"] = git_ref.into();
    v["after"] = sha.into();
    v["repository"]["full_name"] = REPO.into();
    v["head_commit"]["id"] = sha.into();
    serde_json::to_vec(&v).unwrap()
}

/// GitHub's pull_request example: PR `number` from `head` (at `sha`) into `base`.
pub fn pull_request_payload(number: u64, head: &str, sha: &str, base: &str, fork: bool) -> Vec<u8> {
    let mut v = shared_payload("pull_request_opened.payload.json");
    v["number"] = number.into();
    v["pull_request"]["number"] = number.into();
    v["pull_request"]["head"]["ref"] = head.into();
    v["pull_request"]["head"]["sha"] = sha.into();
    v["pull_request"]["base"]["ref"] = base.into();
    v["repository"]["full_name"] = REPO.into();
    v["pull_request"]["base"]["repo"]["full_name"] = REPO.into();
    v["pull_request"]["head"]["repo"]["full_name"] =
        if fork { "someone/fork" } else { REPO }.into();
    serde_json::to_vec(&v).unwrap()
}

pub fn shared_payload(name: &str) -> Value {
    let p = root().join("../shared/data/github-webhooks").join(name);
    let text = std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared/ folder must be beside the checkout)",
            p.display()
        )
    });
    serde_json::from_slice(&text).unwrap()
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Send `body`, signed with `secret` (none: unsigned); the status and the
/// answer (JSON when it is).
fn send_signed(
    req: reqwest::blocking::RequestBuilder,
    body: &[u8],
    secret: Option<&str>,
) -> (u16, Value) {
    let mut req = req.body(body.to_vec());
    if let Some(s) = secret {
        req = req.header("X-Hub-Signature-256", sign(s, body));
    }
    let resp = req.send().expect("posting to host serve");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A running `host serve`.
pub struct Server {
    child: Child,
    pub url: String,
    pub state: PathBuf,
    pub config: PathBuf,
    lines: mpsc::Receiver<String>,
    http: reqwest::blocking::Client,
    /// Sent with the helpers' reads (`read = "signed-in"` servers).
    pub bearer: Option<String>,
}

/// A pipeline (as committed to the repository) with the test plugin
/// `hostile` and `stages`.
pub fn hostile_pipeline(name: &str, stages: &str) -> String {
    format!(
        "[pipeline]\nname = \"{name}\"\n\n[plugins]\nhostile = \"{}\"\n\n{stages}",
        crate::plugins::plugin("hostile").display()
    )
}

/// One stage that deploys to `prod`, which needs an approval.
pub const APPROVED_DEPLOY: &str = r#"
[environments.prod]
branch = ["main"]
approval = true

[[stage]]
name = "deploy"
plugin = "hostile"
environment = "prod"
with = { attack = "ok" }
"#;

/// The config file for one repository at `url` with `triggers` (TOML for
/// `[[repository.trigger]]` entries) and extra `[server]` / repository lines.
pub fn config(url: &str, server_extra: &str, repo_extra: &str, triggers: &str) -> String {
    // The built test plugins are the operator's installed plugins: the
    // committed test pipelines name them by absolute path.
    let plugin_dirs = crate::plugins::target_dir().join("plugins");
    let plugin_dirs = plugin_dirs.display();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
webhook-secret = {{ env = "TEST_WEBHOOK_SECRET" }}
plugin-dirs = ["{plugin_dirs}"]
{server_extra}

[[repository]]
name = "{REPO}"
url = "{url}"
{repo_extra}

{triggers}
"#
    )
}

impl Server {
    /// Start `host serve` with `config_text` written to `dir/server.toml`,
    /// state in `dir/state`; returns once it listens.
    pub fn start(dir: &Path, config_text: &str) -> Self {
        let config = dir.join("server.toml");
        std::fs::write(&config, config_text).unwrap();
        Self::start_with(dir, &config)
    }

    pub fn start_with(dir: &Path, config: &Path) -> Self {
        let state = dir.join("state");
        let mut child = Command::new(host_bin())
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("HOST_STATE_DIR", &state)
            .env("TEST_WEBHOOK_SECRET", SECRET)
            .env("HOST_TEST_VISIBLE", "visible to granted stages")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "host=info,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting host serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining the pipe.
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        break rest.split_whitespace().next().unwrap().to_string();
                    }
                }
                Err(_) => panic!("host serve did not start listening within 60 s"),
            }
        };
        Self {
            child,
            url,
            state,
            config: config.to_path_buf(),
            lines: rx,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                // A fresh connection per request: after a refused oversized
                // body the server closes its side, and a pooled connection
                // reused in that moment fails with IncompleteMessage.
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            bearer: None,
        }
    }

    /// POST a delivery, signed with `secret` (none: unsigned).
    pub fn deliver(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        secret: Option<&str>,
    ) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}/github-webhook/", self.url))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .header("User-Agent", "GitHub-Hookshot/test");
        send_signed(req, body, secret)
    }

    /// POST an archive to `/upload/{name}`, signed with `secret` (none:
    /// unsigned).
    pub fn upload(
        &self,
        name: &str,
        filename: &str,
        body: &[u8],
        secret: Option<&str>,
    ) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}/upload/{name}", self.url))
            .header("X-Upload-Filename", filename)
            .header("Content-Type", "application/octet-stream");
        send_signed(req, body, secret)
    }

    /// POST an archive to `/upload/{name}` as upload `id` (`X-Upload-Id`),
    /// signed with [`SECRET`].
    pub fn upload_as(&self, name: &str, filename: &str, id: &str, body: &[u8]) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}/upload/{name}", self.url))
            .header("X-Upload-Filename", filename)
            .header("X-Upload-Id", id)
            .header("Content-Type", "application/octet-stream");
        send_signed(req, body, Some(SECRET))
    }

    /// A counter of `/metrics` (`name{labels}`), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Deliver a signed push of `sha` to `git_ref`; the queued run id.
    pub fn push(&self, delivery: &str, git_ref: &str, sha: &str) -> String {
        let (status, v) = self.deliver("push", delivery, &push_payload(git_ref, sha), Some(SECRET));
        assert_eq!(status, 202, "push delivery answered {status}: {v}");
        v["queued"][0].as_str().expect("a queued run").to_string()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = &self.bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().expect("GET");
        (resp.status().as_u16(), resp.text().unwrap())
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, text) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Wait until run `id` has a final status; its record.
    pub fn wait_run(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, text) = self.get(&format!("/api/runs/{id}"));
            if status == 200 {
                let v: Value = serde_json::from_str(&text).unwrap();
                if matches!(
                    v["status"].as_str(),
                    Some("success" | "failure" | "cancelled" | "skipped")
                ) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not finish within {within:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `pred` holds for run `id`'s record.
    pub fn wait_until(
        &self,
        id: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, text) = self.get(&format!("/api/runs/{id}"));
            if status == 200 {
                let v: Value = serde_json::from_str(&text).unwrap();
                if pred(&v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "run {id}: {what} did not happen within {within:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs recorded and queued.
    pub fn runs(&self) -> (Vec<Value>, Vec<Value>) {
        let v = self.get_json("/api/runs?limit=1000");
        (
            v["runs"].as_array().unwrap().clone(),
            v["queued"].as_array().unwrap().clone(),
        )
    }

    /// Wait for a stderr line containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("the server never logged `{needle}` within {within:?}"),
            }
        }
    }

    /// SIGKILL: no chance to clean up (a crash, an OOM kill, a power cut).
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe_free_sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "host serve did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
