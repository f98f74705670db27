//! The sequence against a simulated server: its files (live, links,
//! releases), its processes (one per slot, on the slot's port) and a
//! router. Steps are recognised by their `# ssh-deploy: <step> k=v` line;
//! the scripts themselves run for real in `crate::shell_tests`.

use std::collections::{BTreeMap, BTreeSet};

use stage_sdk::health::FakeClock;
use stage_sdk::{Context, ReportStatus, StageError};

use super::*;
use crate::config::{self, Health};
use crate::remote::Unpack;

const BLUE: u16 = 18701;
const GREEN: u16 = 18702;

#[derive(Clone, Debug)]
struct Proc {
    release: String,
    port: u16,
    pid: u32,
}

#[derive(Default)]
struct Server {
    live: Option<Slot>,
    links: BTreeMap<Slot, String>,
    procs: BTreeMap<Slot, Proc>,
    /// Newest first.
    releases: Vec<String>,
    digests: BTreeMap<String, String>,
    /// Uploaded files (remote path → sha256 hex).
    incoming: BTreeMap<String, String>,
    logs: BTreeMap<Slot, String>,
    /// Port the router sends traffic to.
    router: Option<u16>,
}

#[derive(Default)]
struct Sim {
    server: Server,
    clock: FakeClock,
    /// Workspace files: path → sha256 hex.
    files: BTreeMap<String, String>,
    /// Releases whose app answers 200 on /health (others 503).
    healthy: BTreeSet<String>,
    /// Releases whose app exits at once.
    crashes: BTreeSet<String>,
    /// Ports something else listens on.
    squatters: BTreeSet<u16>,
    /// Steps that fail: step → (exit code, stderr).
    failing: BTreeMap<&'static str, (i32, String)>,
    /// `switch` to this port fails.
    switch_fails_for: Option<u16>,
    /// The upload arrives corrupted.
    corrupt: bool,
    /// The stage has no http grant.
    denied: bool,
    /// Every step and upload, in order (`state`, `upload`, `GET :18701`...).
    calls: Vec<String>,
    log: Vec<String>,
    next_pid: u32,
}

fn hex(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn header(script: &str) -> (String, BTreeMap<String, String>) {
    let first = script.lines().next().unwrap();
    let rest = first.strip_prefix("# ssh-deploy: ").expect("a step header");
    let mut words = rest.split(' ');
    let step = words.next().unwrap().to_string();
    let args = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (step, args)
}

fn ok(stdout: impl Into<String>) -> ExecResult {
    ExecResult {
        exit_code: 0,
        stdout: stdout.into(),
        stderr: String::new(),
        timed_out: false,
    }
}

fn exit(code: i32, stderr: &str) -> ExecResult {
    ExecResult {
        exit_code: code,
        stdout: String::new(),
        stderr: stderr.into(),
        timed_out: false,
    }
}

impl Sim {
    fn new() -> Self {
        let mut s = Sim {
            next_pid: 100,
            ..Sim::default()
        };
        for (n, v) in ["v1", "v2", "v3", "v4", "v5"].iter().enumerate() {
            s.files
                .insert(format!("dist/{v}/demo-app"), hex(n as u8 + 1));
            s.healthy.insert(v.to_string());
        }
        s
    }

    fn touch(&mut self, v: &str) {
        self.server.releases.retain(|r| r != v);
        self.server.releases.insert(0, v.to_string());
    }

    fn slot_arg(args: &BTreeMap<String, String>) -> Slot {
        Slot::parse(&args["slot"]).unwrap()
    }

    fn state(&self) -> String {
        let s = &self.server;
        let mut out = String::new();
        if let Some(l) = s.live {
            out.push_str(&format!("live={l}\n"));
        }
        for slot in Slot::ALL {
            let alive = if s.procs.contains_key(&slot) {
                "yes"
            } else {
                "no"
            };
            let link = s
                .links
                .get(&slot)
                .map(|v| format!("releases/{v}"))
                .unwrap_or_default();
            out.push_str(&format!("{slot}={alive} {link}\n"));
        }
        for r in &s.releases {
            out.push_str(&format!("release={r}\n"));
        }
        out
    }

    fn run_step(&mut self, step: &str, args: &BTreeMap<String, String>, text: &str) -> ExecResult {
        match step {
            "state" => ok(self.state()),
            "verify" => {
                let v = &args["version"];
                let got = &self.server.incoming[&format!("prod/.incoming/{v}.upload")];
                if text.contains(&format!("'{got}'")) {
                    ok("ok\n")
                } else {
                    exit(
                        1,
                        &format!("the server has sha256:{got}, the host sent sha256:…"),
                    )
                }
            }
            "install" => {
                let v = args["version"].clone();
                let got = self
                    .server
                    .incoming
                    .remove(&format!("prod/.incoming/{v}.upload"))
                    .unwrap();
                if self.server.releases.contains(&v) {
                    if self.server.digests.get(&v) == Some(&got) {
                        self.touch(&v);
                        return ok("reused\n");
                    }
                    if text.contains("the live slot runs it") {
                        return exit(1, &format!("release {v} is already on the server with other content, and the live slot runs it: deploy this one under another version"));
                    }
                }
                self.server.digests.insert(v.clone(), got);
                self.touch(&v);
                ok("installed\n")
            }
            "stop" => {
                let slot = Self::slot_arg(args);
                match self.server.procs.remove(&slot) {
                    Some(_) => ok("stopped\n"),
                    None => ok("not running\n"),
                }
            }
            "link" => {
                let slot = Self::slot_arg(args);
                let v = args["version"].clone();
                if !self.server.releases.contains(&v) {
                    return exit(1, &format!("no release directory {v} in releases/"));
                }
                self.server.links.insert(slot, v.clone());
                self.touch(&v);
                ok("linked\n")
            }
            "start" => {
                let slot = Self::slot_arg(args);
                let port: u16 = args["port"].parse().unwrap();
                assert_eq!(port, if slot == Slot::Blue { BLUE } else { GREEN });
                let release = self.server.links[&slot].clone();
                assert!(text.contains("PORT="), "{text}");
                self.next_pid += 1;
                let pid = self.next_pid;
                if self.crashes.contains(&release) {
                    self.server
                        .logs
                        .insert(slot, format!("demo-app {release}\npanic: no config\n"));
                } else {
                    self.server
                        .logs
                        .insert(slot, format!("demo-app {release} listening on {port}\n"));
                    self.server.procs.insert(slot, Proc { release, port, pid });
                }
                ok(format!("{pid}\n"))
            }
            "alive" => {
                let slot = Self::slot_arg(args);
                ok(if self.server.procs.contains_key(&slot) {
                    "yes\n"
                } else {
                    "no\n"
                })
            }
            "log" => {
                let slot = Self::slot_arg(args);
                ok(self.server.logs.get(&slot).cloned().unwrap_or_default())
            }
            "switch" => {
                let port: u16 = args["port"].parse().unwrap();
                assert!(
                    text.contains(&format!("127.0.0.1:{port}")),
                    "placeholders filled in: {text}"
                );
                if self.switch_fails_for == Some(port) {
                    return exit(22, "curl: (22) The requested URL returned error: 500");
                }
                self.server.router = Some(port);
                ok("")
            }
            "mark-live" => {
                self.server.live = Some(Self::slot_arg(args));
                ok("")
            }
            "prune" => {
                for v in args["versions"].split(',') {
                    assert!(
                        !self.server.links.values().any(|l| l == v),
                        "pruned {v}, which a slot uses"
                    );
                    self.server.releases.retain(|r| r != v);
                    self.server.digests.remove(v);
                }
                ok("")
            }
            other => panic!("unknown step {other}"),
        }
    }

    fn running(&self, slot: Slot) -> Option<&str> {
        self.server.procs.get(&slot).map(|p| p.release.as_str())
    }

    fn steps(&self) -> Vec<&str> {
        self.calls.iter().map(String::as_str).collect()
    }
}

impl Clock for Sim {
    fn now(&mut self) -> Duration {
        self.clock.now()
    }
    fn sleep(&mut self, d: Duration) {
        self.clock.sleep(d)
    }
}

impl Ssh for Sim {
    fn exec(&mut self, req: &ExecRequest) -> Result<ExecResult, CapError> {
        assert_eq!(req.target, "prod");
        let script = &remote::script_of(&req.command);
        assert!(
            script.lines().nth(1) == Some("cd -- 'prod' || exit 1")
                || script.contains("mkdir -p -- 'prod'")
        );
        self.clock.now += Duration::from_millis(50);
        let (step, args) = header(script);
        self.calls.push(step.clone());
        if let Some((code, err)) = self.failing.get(step.as_str()) {
            return Ok(exit(*code, err));
        }
        Ok(self.run_step(&step, &args, script))
    }

    fn upload(&mut self, target: &str, local: &str, remote: &str) -> Result<String, CapError> {
        assert_eq!(target, "prod");
        self.calls.push("upload".into());
        let Some(h) = self.files.get(local) else {
            return Err(CapError::Invalid(format!(
                "no file `{local}` in the workspace"
            )));
        };
        let stored = if self.corrupt { hex(0xee) } else { h.clone() };
        self.server.incoming.insert(remote.to_string(), stored);
        Ok(format!("sha256:{h}"))
    }
}

impl Env for Sim {
    fn http_get(&mut self, url: &str, _timeout_ms: u32) -> Result<Reply, CapError> {
        self.clock.now += Duration::from_millis(10);
        let port: u16 = url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        self.calls.push(format!("GET :{port}"));
        if self.denied {
            return Err(CapError::Denied(stage_sdk::Denial {
                stage: "deploy-prod".into(),
                capability: "http".into(),
                target: url.into(),
            }));
        }
        if self.squatters.contains(&port) {
            return Ok(Reply {
                status: 404,
                body: b"not found".to_vec(),
            });
        }
        match self.server.procs.values().find(|p| p.port == port) {
            None => Err(CapError::Failed(format!(
                "connecting to 127.0.0.1:{port}: connection refused"
            ))),
            Some(p) if self.healthy.contains(&p.release) => Ok(Reply {
                status: 200,
                body: format!("ok {}", p.release).into_bytes(),
            }),
            Some(_) => Ok(Reply {
                status: 503,
                body: b"starting".to_vec(),
            }),
        }
    }

    fn log(&mut self, _level: Level, msg: &str) {
        self.log.push(msg.to_string());
    }
}

fn cfg(version: &str) -> Config {
    Config {
        target: "prod".into(),
        base: "prod".into(),
        version: version.into(),
        source: Source::Upload {
            path: format!("dist/{version}/demo-app"),
            unpack: Unpack::File("demo-app".into()),
        },
        blue_port: BLUE,
        green_port: GREEN,
        start: "./demo-app".into(),
        health: Health {
            url: "http://127.0.0.1:{port}/health".into(),
            timeout: Duration::from_secs(20),
            interval: Duration::from_millis(250),
            body_contains: None,
        },
        switch: Some(
            r#"curl -fsS -X PUT --data '{"upstreams":["127.0.0.1:{port}"]}' http://127.0.0.1:18681/pool"#
                .into(),
        ),
        keep: 3,
    }
}

fn image(version: &str) -> Config {
    Config {
        source: Source::Existing,
        ..cfg(version)
    }
}

fn deployed(sim: &mut Sim, c: &Config) -> Outcome {
    sim.calls.clear();
    run(sim, c).unwrap_or_else(|f| panic!("deploy of {} failed: {f:?}", c.version))
}

fn failed(sim: &mut Sim, c: &Config) -> Failed {
    sim.calls.clear();
    match run(sim, c) {
        Ok(o) => panic!("deploy of {} passed: {o:?}", c.version),
        Err(f) => f,
    }
}

/// v1 on blue, v2 on green (live), both running.
fn two_deploys() -> Sim {
    let mut sim = Sim::new();
    deployed(&mut sim, &cfg("v1"));
    deployed(&mut sim, &cfg("v2"));
    sim
}

#[test]
fn first_deploy_goes_to_blue() {
    let mut sim = Sim::new();
    let out = deployed(&mut sim, &cfg("v1"));
    assert_eq!(
        out,
        Outcome {
            live: Serving {
                slot: Slot::Blue,
                release: Some("v1".into()),
                port: BLUE
            },
            previous: None,
            how: How::Deployed,
            warnings: vec![],
        }
    );
    assert_eq!(
        sim.steps()[..9],
        [
            "state",
            "GET :18701",
            "upload",
            "verify",
            "install",
            "stop",
            "GET :18701",
            "link",
            "start"
        ]
    );
    assert_eq!(sim.steps()[8..].last(), Some(&"mark-live"));
    assert_eq!(sim.steps()[sim.steps().len() - 2], "switch");
    let s = &sim.server;
    assert_eq!(s.live, Some(Slot::Blue));
    assert_eq!(s.links[&Slot::Blue], "v1");
    assert_eq!(sim.running(Slot::Blue), Some("v1"));
    assert_eq!(s.router, Some(BLUE));
    assert_eq!(s.digests["v1"], hex(1));
}

#[test]
fn second_deploy_goes_to_green_and_keeps_blue_running() {
    let mut sim = Sim::new();
    deployed(&mut sim, &cfg("v1"));
    let out = deployed(&mut sim, &cfg("v2"));
    assert_eq!(out.live.slot, Slot::Green);
    assert_eq!(out.live.port, GREEN);
    assert_eq!(
        out.previous,
        Some(Serving {
            slot: Slot::Blue,
            release: Some("v1".into()),
            port: BLUE
        })
    );
    assert_eq!(sim.server.live, Some(Slot::Green));
    assert_eq!(sim.server.router, Some(GREEN));
    assert_eq!(sim.running(Slot::Blue), Some("v1"));
    assert_eq!(sim.running(Slot::Green), Some("v2"));
    // A third goes back to blue, replacing v1.
    let out = deployed(&mut sim, &cfg("v3"));
    assert_eq!(out.live.slot, Slot::Blue);
    assert_eq!(out.previous.unwrap().release.as_deref(), Some("v2"));
    assert_eq!(sim.running(Slot::Blue), Some("v3"));
    assert_eq!(sim.running(Slot::Green), Some("v2"));
}

#[test]
fn report_outputs() {
    let mut sim = Sim::new();
    // With the keys `describe()` declares, as the export glue does.
    let ctx = |json: &str| Context::for_test("deploy-prod", json).with_keys(crate::info().config);
    let with = r#"{"target":"prod","base":"prod","release":"dist/v1/demo-app","version":"v1","ports":{"blue":18701,"green":18702},"start":"./demo-app","health":{"url":"http://127.0.0.1:{port}/health"}}"#;
    let r = crate::ssh_deploy_stage(&ctx(with), &mut sim).unwrap();
    assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
    assert_eq!(r.get_output("slot"), Some("blue"));
    assert_eq!(r.get_output("release"), Some("v1"));
    assert_eq!(r.get_output("image"), Some("v1"));
    assert_eq!(r.get_output("port"), Some("18701"));
    assert_eq!(r.get_output("previous-image"), None);
    assert_eq!(r.get_output("previous-slot"), None);
    // No `switch`: only the live file moved.
    assert_eq!(sim.server.router, None);
    let with2 = with.replace("v1", "v2");
    let r = crate::ssh_deploy_stage(&ctx(&with2), &mut sim).unwrap();
    assert_eq!(r.get_output("slot"), Some("green"));
    assert_eq!(r.get_output("previous-image"), Some("v1"));
    assert_eq!(r.get_output("previous-slot"), Some("blue"));
    assert!(
        r.summary.starts_with(
            "deployed release v2 to prod: green is live on port 18702; blue (v1) kept running"
        ),
        "{}",
        r.summary
    );
    // The default version is build-<n>.
    let with3 = with
        .replace(r#""version":"v1","#, "")
        .replace("dist/v1", "dist/v3");
    sim.healthy.insert("build-1".into());
    let r = crate::ssh_deploy_stage(&ctx(&with3), &mut sim).unwrap();
    assert_eq!(r.get_output("release"), Some("build-1"), "{}", r.summary);
    // A config error is a config error, naming the key.
    match crate::ssh_deploy_stage(
        &ctx(&with.replace("\"prod\",\"release", "\"a b\",\"release")),
        &mut sim,
    ) {
        Err(StageError::Config(m)) => assert!(m.starts_with("with.base:"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unhealthy_new_slot_fails_and_leaves_live_alone() {
    let mut sim = two_deploys();
    sim.healthy.remove("v3");
    let f = failed(&mut sim, &cfg("v3"));
    assert_eq!(
        f.reason,
        "health check of blue (release v3, port 18701) failed: GET http://127.0.0.1:18701/health \
         answered 503 for 20s; blue stopped; green still serves release v2"
    );
    assert_eq!(
        f.serving,
        Some(Serving {
            slot: Slot::Green,
            release: Some("v2".into()),
            port: GREEN
        })
    );
    assert_eq!(
        f.log_tail,
        Some((Slot::Blue, "demo-app v3 listening on 18701\n".into()))
    );
    // The new slot is stopped, the live one untouched, no switch.
    assert_eq!(sim.running(Slot::Blue), None);
    assert_eq!(sim.running(Slot::Green), Some("v2"));
    assert_eq!(sim.server.live, Some(Slot::Green));
    assert_eq!(sim.server.router, Some(GREEN));
    assert!(!sim
        .calls
        .iter()
        .any(|c| c == "switch" || c == "mark-live" || c == "prune"));
    assert_eq!(sim.steps().last(), Some(&"stop"));
    // The report: failed, the live slot in the outputs, the log annotated.
    let r = crate::report(&cfg("v3"), Err(f));
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(r.get_output("slot"), Some("green"));
    assert_eq!(r.get_output("release"), Some("v2"));
    assert_eq!(r.get_output("previous-image"), None);
    assert_eq!(r.annotations[1].title, "prod/blue.log (last 40 lines)");
    assert!(r.annotations[1].message.contains("listening on 18701"));
}

#[test]
fn a_crashing_release_fails_without_waiting_for_the_timeout() {
    let mut sim = two_deploys();
    sim.crashes.insert("v3".into());
    let start = sim.clock.now;
    let f = failed(&mut sim, &cfg("v3"));
    assert!(
        f.reason.starts_with(
            "health check of blue (release v3, port 18701) failed: the process of blue exited before GET http://127.0.0.1:18701/health answered 2xx"
        ),
        "{}",
        f.reason
    );
    assert!(sim.clock.now - start < Duration::from_secs(2));
    assert!(f.log_tail.unwrap().1.contains("panic: no config"));
    assert_eq!(sim.server.router, Some(GREEN));
}

#[test]
fn a_first_deploy_that_fails_says_nothing_was_live() {
    let mut sim = Sim::new();
    sim.healthy.remove("v1");
    let f = failed(&mut sim, &cfg("v1"));
    assert!(
        f.reason
            .ends_with("blue stopped; nothing was live (first deploy)"),
        "{}",
        f.reason
    );
    assert_eq!(f.serving, None);
    assert_eq!(sim.server.live, None);
    assert_eq!(sim.running(Slot::Blue), None);
}

#[test]
fn body_contains_is_checked() {
    let mut sim = Sim::new();
    let mut c = cfg("v1");
    c.health.body_contains = Some("ready".into());
    c.health.timeout = Duration::from_secs(1);
    let f = failed(&mut sim, &c);
    assert!(
        f.reason.contains(
            "GET http://127.0.0.1:18701/health answered 200 without \"ready\" in the body for 1s"
        ),
        "{}",
        f.reason
    );
    c.health.body_contains = Some("ok v1".into());
    deployed(&mut sim, &c);
}

#[test]
fn rollback_with_image_switches_to_the_still_running_slot() {
    let mut sim = two_deploys();
    let green_pid = sim.server.procs[&Slot::Green].pid;
    let blue_pid = sim.server.procs[&Slot::Blue].pid;
    let out = deployed(&mut sim, &image("v1"));
    // Nothing stopped, nothing started, nothing uploaded.
    assert_eq!(sim.steps(), ["state", "GET :18701", "switch", "mark-live"]);
    assert_eq!(out.how, How::SwitchedOnly);
    assert_eq!(out.live.slot, Slot::Blue);
    assert_eq!(
        out.previous.as_ref().unwrap().release.as_deref(),
        Some("v2")
    );
    assert_eq!(sim.server.live, Some(Slot::Blue));
    assert_eq!(sim.server.router, Some(BLUE));
    assert_eq!(sim.server.procs[&Slot::Blue].pid, blue_pid);
    assert_eq!(sim.server.procs[&Slot::Green].pid, green_pid);
    // And rolling forward again is just as instant.
    deployed(&mut sim, &image("v2"));
    assert_eq!(sim.steps(), ["state", "GET :18702", "switch", "mark-live"]);
    assert_eq!(sim.server.router, Some(GREEN));
    let r = crate::report(&image("v1"), Ok(out));
    assert_eq!(r.get_output("previous-image"), Some("v2"));
    assert!(
        r.summary
            .starts_with("switched prod to blue (release v1, still running"),
        "{}",
        r.summary
    );
}

#[test]
fn image_restarts_the_idle_slot_when_it_is_not_running_that_release() {
    let mut sim = two_deploys();
    // Blue's process died since.
    sim.server.procs.remove(&Slot::Blue);
    let out = deployed(&mut sim, &image("v1"));
    assert_eq!(out.how, How::Deployed);
    assert_eq!(
        sim.steps()[..6],
        ["state", "GET :18701", "stop", "GET :18701", "link", "start"]
    );
    assert!(!sim.calls.iter().any(|c| c == "upload"));
    assert_eq!(sim.running(Slot::Blue), Some("v1"));
    assert_eq!(sim.server.live, Some(Slot::Blue));
    // Unhealthy although running: restarted too.
    let mut sim = two_deploys();
    sim.healthy.remove("v1");
    let f = failed(&mut sim, &image("v1"));
    assert!(sim.calls.iter().any(|c| c == "start"));
    assert!(f.reason.contains("answered 503"), "{}", f.reason);
}

#[test]
fn image_already_live_changes_nothing() {
    let mut sim = two_deploys();
    let out = deployed(&mut sim, &image("v2"));
    assert_eq!(out.how, How::AlreadyLive);
    assert_eq!(out.previous, None);
    assert_eq!(sim.steps(), ["state", "GET :18701", "GET :18702", "switch"]);
    let r = crate::report(&image("v2"), Ok(out));
    assert_eq!(r.get_output("previous-image"), None);
    assert_eq!(r.get_output("slot"), Some("green"));
}

#[test]
fn image_that_is_not_on_the_server_is_a_clear_error() {
    let mut sim = two_deploys();
    let f = failed(&mut sim, &image("v9"));
    assert_eq!(
        f.reason,
        "release v9 is not on prod under prod/releases (there: v2, v1); green still serves release v2"
    );
    assert_eq!(sim.steps(), ["state"]);
    let mut sim = Sim::new();
    let f = failed(&mut sim, &image("v1"));
    assert!(
        f.reason.contains("(there: none); nothing was live"),
        "{}",
        f.reason
    );
}

#[test]
fn a_failed_switch_switches_back_and_stops_the_new_slot() {
    let mut sim = two_deploys();
    sim.switch_fails_for = Some(BLUE);
    let f = failed(&mut sim, &cfg("v3"));
    assert_eq!(
        f.reason,
        "switching traffic to blue failed: step \"switch\" failed (exit 22): curl: (22) The requested URL \
         returned error: 500; switched back, green still serves release v2; blue stopped"
    );
    assert_eq!(sim.server.router, Some(GREEN));
    assert_eq!(sim.server.live, Some(Slot::Green));
    assert_eq!(sim.running(Slot::Blue), None);
    // Switching back failing too leaves both running and says so.
    let mut sim = two_deploys();
    sim.switch_fails_for = Some(BLUE);
    sim.failing.insert("switch", (1, "router down".into()));
    let f = failed(&mut sim, &cfg("v3"));
    assert!(
        f.reason.contains("switching back to green failed too"),
        "{}",
        f.reason
    );
    assert_eq!(sim.running(Slot::Blue), Some("v3"));
    assert_eq!(sim.running(Slot::Green), Some("v2"));
}

#[test]
fn failing_steps_are_named_with_exit_code_and_stderr() {
    let mut sim = two_deploys();
    sim.failing.insert(
        "install",
        (
            2,
            "tar: short read\ntar: Error is not recoverable: exiting now\n".into(),
        ),
    );
    let f = failed(&mut sim, &cfg("v3"));
    assert_eq!(
        f.reason,
        "step \"install\" failed (exit 2): tar: short read | tar: Error is not recoverable: exiting now; \
         green still serves release v2"
    );
    assert_eq!(sim.running(Slot::Blue), Some("v1"), "nothing stopped yet");
    let mut sim = Sim::new();
    sim.failing.insert(
        "state",
        (
            1,
            "mkdir: cannot create directory 'prod': Permission denied".into(),
        ),
    );
    let f = failed(&mut sim, &cfg("v1"));
    assert!(
        f.reason
            .starts_with("step \"state\" failed (exit 1): mkdir: cannot create"),
        "{}",
        f.reason
    );
    assert!(
        f.reason.ends_with("; nothing was changed on prod"),
        "{}",
        f.reason
    );
    // A start that fails stops what may have started.
    let mut sim = two_deploys();
    sim.failing
        .insert("start", (127, "sh: 1: nohup: not found".into()));
    let f = failed(&mut sim, &cfg("v3"));
    assert!(
        f.reason.starts_with(
            "step \"start\" failed (exit 127): sh: 1: nohup: not found; green still serves"
        ),
        "{}",
        f.reason
    );
    assert_eq!(sim.steps().last(), Some(&"stop"));
}

#[test]
fn a_corrupted_upload_is_caught_before_it_is_unpacked() {
    let mut sim = two_deploys();
    sim.corrupt = true;
    let f = failed(&mut sim, &cfg("v3"));
    assert!(
        f.reason
            .starts_with("step \"verify\" failed (exit 1): the server has sha256:eeee"),
        "{}",
        f.reason
    );
    assert_eq!(sim.steps(), ["state", "GET :18701", "upload", "verify"]);
}

#[test]
fn a_missing_workspace_file_fails_before_anything_changes() {
    let mut sim = Sim::new();
    let mut c = cfg("v1");
    c.source = Source::Upload {
        path: "dist/nope".into(),
        unpack: Unpack::File("nope".into()),
    };
    let f = failed(&mut sim, &c);
    assert!(
        f.reason.starts_with(
            "uploading dist/nope to prod:prod/.incoming/v1.upload: invalid request: no file"
        ),
        "{}",
        f.reason
    );
}

#[test]
fn another_process_on_the_idle_port_stops_the_deploy() {
    let mut sim = two_deploys();
    sim.squatters.insert(BLUE);
    let f = failed(&mut sim, &cfg("v3"));
    assert!(
        f.reason.starts_with("GET http://127.0.0.1:18701/health answers 404 with blue stopped: another process holds port 18701"),
        "{}",
        f.reason
    );
    assert!(!sim.calls.iter().any(|c| c == "start"));
}

#[test]
fn a_missing_http_grant_fails_before_anything_starts() {
    let mut sim = two_deploys();
    sim.denied = true;
    let f = failed(&mut sim, &cfg("v3"));
    assert!(
        f.reason.starts_with(
            "health check GET http://127.0.0.1:18701/health: denied: stage \"deploy-prod\" has no \"http\" grant"
        ),
        "{}",
        f.reason
    );
    assert_eq!(sim.steps(), ["state", "GET :18701"]);
    assert_eq!(sim.server.live, Some(Slot::Green));
}

#[test]
fn redeploying_the_live_version_with_other_content_is_refused() {
    let mut sim = two_deploys();
    // Same content: reused, deployed to the idle slot.
    let out = deployed(&mut sim, &cfg("v2"));
    assert_eq!(out.live.slot, Slot::Blue);
    assert_eq!(sim.running(Slot::Green), Some("v2"));
    // Other content under the live version's name: refused.
    sim.files.insert("dist/v2/demo-app".into(), hex(0x42));
    let f = failed(&mut sim, &cfg("v2"));
    assert!(f.reason.contains("the live slot runs it"), "{}", f.reason);
    assert_eq!(sim.running(Slot::Green), Some("v2"));
    assert_eq!(sim.server.live, Some(Slot::Blue));
}

#[test]
fn old_releases_are_pruned_but_not_those_a_slot_uses() {
    let mut sim = Sim::new();
    let mut c = cfg("v1");
    c.keep = 2;
    for v in ["v1", "v2", "v3", "v4"] {
        c.version = v.into();
        c.source = cfg(v).source;
        deployed(&mut sim, &c);
    }
    assert_eq!(sim.server.releases, vec!["v4", "v3"]);
    // keep = 1: the other slot's release stays anyway.
    c.keep = 1;
    c.version = "v5".into();
    c.source = cfg("v5").source;
    deployed(&mut sim, &c);
    assert_eq!(sim.server.releases, vec!["v5", "v4"]);
    // A prune that fails is a warning, not a failed deploy.
    sim.failing
        .insert("prune", (1, "rm: Permission denied".into()));
    c.version = "v1".into();
    c.source = cfg("v1").source;
    let out = deployed(&mut sim, &c);
    assert_eq!(out.warnings.len(), 1);
    let r = crate::report(&c, Ok(out));
    assert_eq!(r.status, ReportStatus::Warning);
}

#[test]
fn describe_lists_keys_and_capabilities() {
    let info = crate::info();
    assert_eq!(info.name, "ssh-deploy");
    assert_eq!(info.capabilities, vec!["ssh", "http"]);
    let keys: Vec<&str> = info.config.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        keys,
        [
            "target", "base", "release", "version", "image", "ports", "start", "health", "switch",
            "keep"
        ]
    );
    // Every key describe() lists is one the `with` table accepts.
    let full = r#"{"target":"t","base":"b","release":"r","version":"v","image":"i","ports":{"blue":1,"green":2},"start":"s","health":{"url":"http://h:{port}/"},"switch":"x","keep":3}"#;
    let v: serde_json::Value = serde_json::from_str(full).unwrap();
    assert_eq!(v.as_object().unwrap().keys().count(), keys.len());
    config::load(&Context::for_test("s", full)).unwrap();
}
