//! The remote scripts run for real: `sh -c '<script>'` (what the plugin
//! sends over ssh) in a temporary directory standing for the remote
//! user's home, with a real app (a shell script that sleeps) started,
//! health-checked, switched and stopped. Only the transport is simulated:
//! `upload` copies the file, the health check asks whether the app that
//! wrote `ports/<port>` is alive.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stage_sdk::health::{Clock, SystemClock};
use stage_sdk::ssh::{ExecRequest, ExecResult, Ssh};
use stage_sdk::{CapError, Level};

use crate::config::{Config, Health, Source};
use crate::deploy::{self, Env, How, Reply};
use crate::remote::{sh_quote, Slot, Unpack};
use crate::sh_command;

struct Local {
    home: PathBuf,
    workspace: PathBuf,
    clock: SystemClock,
    steps: Vec<String>,
    /// What arrives on the server differs from what was sent.
    corrupt: bool,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn sh(cmd: &str, dir: &Path) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn alive(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn pgid(pid: &str) -> String {
    let out = Command::new("ps")
        .args(["-o", "pgid=", "-p", pid])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Local {
    fn new(name: &str) -> Local {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("ssh-deploy-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = root.join("home");
        let workspace = root.join("workspace");
        std::fs::create_dir_all(home.join("ports")).unwrap();
        std::fs::create_dir_all(&workspace).unwrap();
        Local {
            home,
            workspace,
            clock: SystemClock::default(),
            steps: Vec::new(),
            corrupt: false,
        }
    }

    /// An app that starts a child (as real apps do), writes
    /// `<pid> <child pid> <mark>` to `ports/$PORT` and sleeps.
    fn app(&self, mark: &str) -> String {
        format!(
            "#!/bin/sh\nsleep 300 &\necho \"$$ $! {mark}\" > {}/\"$PORT\"\necho \"app {mark} on $PORT\"\nexec sleep 300\n",
            sh_quote(&self.home.join("ports").display().to_string())
        )
    }

    fn write_file(&self, rel: &str, content: &str) {
        let p = self.workspace.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn tarball(&self, rel: &str, mark: &str) {
        let dir = self.workspace.join(format!("{rel}.src"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("demo-app"), self.app(mark)).unwrap();
        let out = sh(
            &format!(
                "chmod 755 demo-app && tar -czf {} demo-app",
                sh_quote(&self.workspace.join(rel).display().to_string())
            ),
            &dir,
        );
        assert!(out.status.success());
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.home.join(rel)).unwrap_or_default()
    }

    /// Pids the app on `port` wrote, when it is alive.
    fn pids(&self, port: u16) -> Option<(String, String, String)> {
        let text = self.read(&format!("ports/{port}"));
        let mut w = text.split_whitespace();
        let (a, b, m) = (w.next()?, w.next()?, w.next()?);
        Some((a.into(), b.into(), m.into()))
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Leave no process behind, whatever the test did.
        if let Ok(dir) = std::fs::read_dir(self.home.join("ports")) {
            for e in dir.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                for pid in text.split_whitespace().take(2) {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.home.parent().unwrap());
    }
}

impl Clock for Local {
    fn now(&mut self) -> Duration {
        self.clock.now()
    }
    fn sleep(&mut self, d: Duration) {
        self.clock.sleep(d)
    }
}

impl Ssh for Local {
    fn exec(&mut self, req: &ExecRequest) -> Result<ExecResult, CapError> {
        let script = crate::remote::script_of(&req.command);
        self.steps.push(script.lines().next().unwrap_or("").into());
        let out = sh(&req.command, &self.home);
        Ok(ExecResult {
            exit_code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
            timed_out: false,
        })
    }

    fn upload(&mut self, _target: &str, local: &str, remote: &str) -> Result<String, CapError> {
        let mut bytes = std::fs::read(self.workspace.join(local))
            .map_err(|e| CapError::Invalid(format!("{local}: {e}")))?;
        if self.corrupt {
            bytes.push(b'!');
        }
        std::fs::write(self.home.join(remote), &bytes)
            .map_err(|e| CapError::Failed(format!("{remote}: {e}")))?;
        let out = sh(&format!("sha256sum {}", sh_quote(local)), &self.workspace);
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(format!(
            "sha256:{}",
            text.split_whitespace().next().unwrap()
        ))
    }
}

impl Env for Local {
    fn http_get(&mut self, url: &str, _timeout_ms: u32) -> Result<Reply, CapError> {
        let port: u16 = url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        match self.pids(port) {
            Some((pid, _, mark)) if alive(&pid) => Ok(Reply {
                status: if mark == "healthy" { 200 } else { 503 },
                body: mark.into_bytes(),
            }),
            _ => Err(CapError::Failed("connection refused".into())),
        }
    }

    fn log(&mut self, _level: Level, msg: &str) {
        eprintln!("{msg}");
    }
}

fn cfg(version: &str, release: &str, unpack: Unpack) -> Config {
    Config {
        target: "local".into(),
        base: "srv/demo".into(),
        version: version.into(),
        source: Source::Upload {
            path: release.into(),
            unpack,
        },
        blue_port: 28701,
        green_port: 28702,
        start: "./demo-app".into(),
        health: Health {
            url: "http://127.0.0.1:{port}/health".into(),
            timeout: Duration::from_secs(5),
            interval: Duration::from_millis(50),
            body_contains: None,
        },
        switch: Some("echo {slot} {port} >> switches".into()),
        keep: 3,
    }
}

fn file(version: &str) -> Config {
    cfg(
        version,
        &format!("dist/{version}/demo-app"),
        Unpack::File("demo-app".into()),
    )
}

#[test]
fn quoting_survives_the_shell_twice() {
    let dir = std::env::temp_dir();
    for s in [
        "",
        "plain",
        "it's",
        "''",
        "a'b'c",
        "$(echo pwned) `echo pwned` $HOME ${x:-y}",
        "\"double\" \\back\\slash\\",
        "semi; pipe | amp & redirect > < glob * ? [a]",
        "new\nline\ttab",
        "#comment",
        "-n",
        "ünïcödé",
    ] {
        // Once: what a script does with a quoted value.
        let out = sh(&format!("printf '%s' {}", sh_quote(s)), &dir);
        assert_eq!(String::from_utf8_lossy(&out.stdout), s, "{s:?}");
        // Twice: the script itself wrapped as `sh -c '<script>'`.
        let script = format!("printf '%s' {}", sh_quote(s));
        let out = sh(&sh_command(&script), &dir);
        assert_eq!(String::from_utf8_lossy(&out.stdout), s, "{s:?}");
    }
}

#[test]
fn blue_green_on_a_real_shell() {
    let mut l = Local::new("bg");
    l.write_file("dist/v1/demo-app", &l.app("healthy"));
    l.tarball("dist/v2.tar.gz", "healthy");
    l.write_file("dist/v3/demo-app", &l.app("sick"));

    // First deploy: a single file, to blue.
    let t = Instant::now();
    let out = deploy::run(&mut l, &file("v1")).unwrap();
    assert_eq!(out.live.slot, Slot::Blue);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "ssh would have waited for the app"
    );
    assert_eq!(l.read("srv/demo/live"), "blue\n");
    let link = std::fs::read_link(l.home.join("srv/demo/blue")).unwrap();
    assert_eq!(link, Path::new("releases/v1"));
    let meta = std::fs::metadata(l.home.join("srv/demo/releases/v1/demo-app")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(l.read("srv/demo/releases/v1/.ssh-deploy.sha256").len(), 65);
    assert!(l.read("srv/demo/blue.log").contains("app healthy on 28701"));
    let (blue_pid, blue_child, _) = l.pids(28701).unwrap();
    // The pid file holds the slot's session (and group) leader; the app
    // runs in that group.
    assert_eq!(l.read("srv/demo/blue.pid").trim(), pgid(&blue_pid));
    assert_eq!(pgid(&blue_child), pgid(&blue_pid));
    assert_eq!(l.read("srv/demo/switches"), "blue 28701\n");
    assert!(!l.home.join("srv/demo/.incoming/v1.upload").exists());

    // Second: a tarball, to green; blue keeps running.
    let out = deploy::run(&mut l, &cfg("v2", "dist/v2.tar.gz", Unpack::Tarball)).unwrap();
    assert_eq!(out.live.slot, Slot::Green);
    assert_eq!(out.previous.unwrap().release.as_deref(), Some("v1"));
    assert_eq!(l.read("srv/demo/live"), "green\n");
    assert!(alive(&blue_pid));
    assert!(l.home.join("srv/demo/releases/v2/demo-app").exists());

    // Third: unhealthy, into blue: blue (and its child) stopped, green stays.
    let f = deploy::run(&mut l, &file("v3")).unwrap_err();
    assert!(f.reason.contains("answered 503"), "{}", f.reason);
    assert!(
        f.reason.ends_with("green still serves release v2"),
        "{}",
        f.reason
    );
    assert!(f.log_tail.unwrap().1.contains("app sick on 28701"));
    assert!(
        !alive(&blue_pid) && !alive(&blue_child),
        "the old blue was stopped"
    );
    let (v3_pid, v3_child, _) = l.pids(28701).unwrap();
    assert!(
        !alive(&v3_pid) && !alive(&v3_child),
        "the failed blue was stopped, its child too"
    );
    assert!(!l.home.join("srv/demo/blue.pid").exists());
    assert_eq!(l.read("srv/demo/live"), "green\n");
    let (green_pid, _, _) = l.pids(28702).unwrap();
    assert!(alive(&green_pid));

    // Roll back to v1 (blue points at v3, not running): restarted with v1.
    let out = deploy::run(
        &mut l,
        &Config {
            source: Source::Existing,
            ..file("v1")
        },
    )
    .unwrap();
    assert_eq!(out.how, How::Deployed);
    assert_eq!(out.live.slot, Slot::Blue);
    assert_eq!(
        std::fs::read_link(l.home.join("srv/demo/blue")).unwrap(),
        Path::new("releases/v1")
    );
    assert_eq!(l.read("srv/demo/live"), "blue\n");

    // Back to v2: green still runs it: switch only, same process.
    let mut c = Config {
        source: Source::Existing,
        ..file("v2")
    };
    c.keep = 1;
    l.steps.clear();
    let out = deploy::run(&mut l, &c).unwrap();
    assert_eq!(out.how, How::SwitchedOnly);
    assert_eq!(l.pids(28702).unwrap().0, green_pid);
    assert!(alive(&green_pid));
    assert_eq!(l.read("srv/demo/live"), "green\n");
    let steps: BTreeSet<String> = l
        .steps
        .iter()
        .map(|s| s.split(' ').nth(2).unwrap().to_string())
        .collect();
    assert!(
        !steps.contains("start") && !steps.contains("stop"),
        "{steps:?}"
    );
    // keep = 1 pruned v3 (no slot uses it) and kept v1 (blue) and v2 (green).
    let mut left: Vec<String> = std::fs::read_dir(l.home.join("srv/demo/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["v1", "v2"]);
    assert_eq!(
        l.read("srv/demo/switches"),
        "blue 28701\ngreen 28702\nblue 28701\ngreen 28702\n"
    );

    // A missing image.
    let f = deploy::run(
        &mut l,
        &Config {
            source: Source::Existing,
            ..file("v7")
        },
    )
    .unwrap_err();
    assert!(
        f.reason
            .starts_with("release v7 is not on local under srv/demo/releases (there: v1, v2)"),
        "{}",
        f.reason
    );
}

#[test]
fn steps_fail_with_their_name_exit_code_and_stderr() {
    let mut l = Local::new("fail");
    // `base` is a file: the state step cannot make its directories.
    std::fs::create_dir_all(l.home.join("srv")).unwrap();
    std::fs::write(l.home.join("srv/demo"), "not a directory").unwrap();
    l.write_file("dist/v1/demo-app", &l.app("healthy"));
    let f = deploy::run(&mut l, &file("v1")).unwrap_err();
    assert!(
        f.reason
            .starts_with("step \"state\" failed (exit 1): mkdir: "),
        "{}",
        f.reason
    );

    // A start command that does not exist: the app dies, the deploy fails
    // at once, naming the log.
    let mut l = Local::new("nostart");
    l.write_file("dist/v1/demo-app", &l.app("healthy"));
    let mut c = file("v1");
    c.start = "./no-such-app".into();
    let t = Instant::now();
    let f = deploy::run(&mut l, &c).unwrap_err();
    assert!(
        f.reason.contains("the process of blue exited"),
        "{}",
        f.reason
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(f.log_tail.unwrap().1.contains("no-such-app"));
}

#[test]
fn the_same_version_again() {
    let mut l = Local::new("again");
    l.write_file("dist/v1/demo-app", &l.app("healthy"));
    deploy::run(&mut l, &file("v1")).unwrap();
    // Same content: reused (both slots on v1).
    let out = deploy::run(&mut l, &file("v1")).unwrap();
    assert_eq!(out.live.slot, Slot::Green);
    // Other content under the live version: refused, nothing stopped.
    l.write_file("dist/v1/demo-app", &l.app("healthy").replace("300", "301"));
    let f = deploy::run(&mut l, &file("v1")).unwrap_err();
    assert!(f.reason.contains("the live slot runs it"), "{}", f.reason);
    assert_eq!(l.read("srv/demo/live"), "green\n");
    assert!(alive(&l.pids(28701).unwrap().0));
}

#[test]
fn a_corrupted_upload_is_refused_and_removed() {
    let mut l = Local::new("corrupt");
    l.write_file("dist/v1/demo-app", &l.app("healthy"));
    l.corrupt = true;
    let f = deploy::run(&mut l, &file("v1")).unwrap_err();
    assert!(
        f.reason
            .starts_with("step \"verify\" failed (exit 1): the server has sha256:"),
        "{}",
        f.reason
    );
    assert!(!l.home.join("srv/demo/.incoming/v1.upload").exists());
    assert!(!l.home.join("srv/demo/releases/v1").exists());
}
