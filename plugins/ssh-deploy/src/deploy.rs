//! The blue-green sequence over an [`Env`] (the host's ssh and http
//! imports in the plugin, a simulated server in the tests).

use std::time::Duration;

use stage_sdk::health::{self, Clock, Probe};
use stage_sdk::ssh::{ExecRequest, ExecResult, Ssh};
use stage_sdk::{CapError, Level};

use crate::config::{Config, Source};
use crate::remote::{self, Remote, Script, Slot, State};

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What the deploy needs from the outside world: the SDK's [`Ssh`] port
/// (`upload` copies a workspace file and returns the sha256 sent), a
/// clock, and these.
pub trait Env: Clock + Ssh {
    /// Runs `script` with `sh` on the `[ssh.NAME]` host `target`.
    fn sh(&mut self, target: &str, script: &str, timeout_ms: u32) -> Result<ExecResult, CapError> {
        self.exec(&ExecRequest {
            target: target.into(),
            command: remote::sh_command(script),
            stdin: None,
            timeout_ms: Some(timeout_ms),
        })
    }
    fn http_get(&mut self, url: &str, timeout_ms: u32) -> Result<Reply, CapError>;
    fn log(&mut self, level: Level, msg: &str);
}

/// A slot and the release it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub slot: Slot,
    pub release: Option<String>,
    pub port: u16,
}

/// A finished deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Now live.
    pub live: Serving,
    /// Live before (none on a first deploy).
    pub previous: Option<Serving>,
    pub how: How,
    /// Things that went wrong after the switch (pruning).
    pub warnings: Vec<String>,
}

/// What a successful deploy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Started the release in the idle slot, then switched.
    Deployed,
    /// The idle slot was still running the release (`image`) and healthy:
    /// only switched.
    SwitchedOnly,
    /// The release (`image`) was live already and healthy: nothing moved
    /// (the `switch` command ran again, to be sure).
    AlreadyLive,
}

/// A deploy that did not switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub reason: String,
    /// What still serves (none on a first deploy).
    pub serving: Option<Serving>,
    /// `(slot, last lines of its log)` when a started slot failed.
    pub log_tail: Option<(Slot, String)>,
}

/// Longest single health probe.
const PROBE_MAX_MS: u32 = 2000;
/// Least time between two `alive` checks while waiting for health.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Runs a deploy.
pub fn run<E: Env>(env: &mut E, cfg: &Config) -> Result<Outcome, Failed> {
    Deploy {
        env,
        cfg,
        remote: Remote::new(&cfg.base),
    }
    .run()
}

struct Deploy<'a, E: Env> {
    env: &'a mut E,
    cfg: &'a Config,
    remote: Remote,
}

/// Last `n` non-empty lines of `text`, joined with ` | `.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn fmt(d: Duration) -> String {
    stage_sdk::duration::format(d)
}

impl<E: Env> Deploy<'_, E> {
    fn info(&mut self, m: &str) {
        self.env.log(Level::Info, m);
    }

    fn warn(&mut self, m: &str) {
        self.env.log(Level::Warn, m);
    }

    /// Runs a step; its stdout, or `step "x" failed (exit N): <stderr tail>`.
    fn step(&mut self, s: &Script) -> Result<String, String> {
        let r = self
            .env
            .sh(&self.cfg.target, &s.text, s.timeout_ms)
            .map_err(|e| format!("step {:?}: {}", s.step, e.message()))?;
        if r.timed_out {
            return Err(format!(
                "step {:?} timed out after {}",
                s.step,
                fmt(Duration::from_millis(s.timeout_ms.into()))
            ));
        }
        if r.exit_code != 0 {
            let why = match tail(&r.stderr, 5) {
                t if t.is_empty() => tail(&r.stdout, 5),
                t => t,
            };
            return Err(format!(
                "step {:?} failed (exit {}): {}",
                s.step,
                r.exit_code,
                if why.is_empty() { "no output" } else { &why }
            ));
        }
        Ok(r.stdout)
    }

    fn serving(&self, state: &State, slot: Slot) -> Serving {
        Serving {
            slot,
            release: state.slot(slot).release.clone(),
            port: self.cfg.port(slot),
        }
    }

    /// `blue still serves release v1`, or what a first deploy leaves.
    fn still_live(&self, state: &State) -> String {
        match state.live {
            None => "nothing was live (first deploy)".into(),
            Some(l) => {
                let s = state.slot(l);
                let rel = s.release.as_deref().unwrap_or("(no release)");
                if s.alive {
                    format!("{l} still serves release {rel}")
                } else {
                    format!("{l} (release {rel}) stays live, though its process was not running")
                }
            }
        }
    }

    fn fail(&self, state: &State, reason: String) -> Failed {
        Failed {
            reason: format!("{reason}; {}", self.still_live(state)),
            serving: state.live.map(|l| self.serving(state, l)),
            log_tail: None,
        }
    }

    fn run(&mut self) -> Result<Outcome, Failed> {
        let cfg = self.cfg;
        // Before the state is known, nothing has been changed either.
        let unchanged = |reason: String| Failed {
            reason: format!("{reason}; nothing was changed on {}", cfg.target),
            serving: None,
            log_tail: None,
        };
        let out = self.step(&self.remote.state()).map_err(unchanged)?;
        let state = State::parse(&out).map_err(unchanged)?;
        let idle = state.live.map_or(Slot::Blue, Slot::other);
        let version = cfg.version.as_str();
        self.info(&format!(
            "{}: live {}, deploying release {version} to {idle} (port {})",
            cfg.target,
            match state.live {
                Some(l) => format!(
                    "{l} ({})",
                    state.slot(l).release.as_deref().unwrap_or("no release")
                ),
                None => "none (first deploy)".into(),
            },
            cfg.port(idle)
        ));

        if matches!(cfg.source, Source::Existing) && !state.releases.iter().any(|r| r == version) {
            let have = if state.releases.is_empty() {
                "none".to_string()
            } else {
                state.releases.join(", ")
            };
            return Err(self.fail(
                &state,
                format!(
                    "release {version} is not on {} under {}/releases (there: {have})",
                    cfg.target, cfg.base
                ),
            ));
        }
        // One probe of the idle slot before anything changes: a missing
        // `http` grant or a refused URL fails here, and a still-running
        // idle slot may turn out healthy.
        let idle_url = cfg.health.url_for(cfg.port(idle));
        let idle_now = match self.probe_result(&idle_url, PROBE_MAX_MS) {
            Ok(p) => p,
            Err(e) => {
                return Err(self.fail(
                    &state,
                    format!("health check GET {idle_url}: {}", e.message()),
                ))
            }
        };
        match &cfg.source {
            Source::Existing => {
                if let Some(done) = self.shortcut(&state, idle, &idle_now) {
                    return done;
                }
            }
            Source::Upload { path, unpack } => {
                let live_uses = state
                    .live
                    .is_some_and(|l| state.slot(l).release.as_deref() == Some(version));
                self.upload(path, unpack, live_uses)
                    .map_err(|e| self.fail(&state, e))?;
            }
        }

        self.replace(&state, idle)?;
        self.go_live(&state, idle, How::Deployed)
    }

    /// `image` activation: already live and healthy → nothing to do; the
    /// idle slot already runs it and is healthy → only switch.
    fn shortcut(
        &mut self,
        state: &State,
        idle: Slot,
        idle_now: &Probe,
    ) -> Option<Result<Outcome, Failed>> {
        let version = self.cfg.version.as_str();
        if let Some(live) = state.live {
            let s = state.slot(live);
            if s.release.as_deref() == Some(version) && s.alive && self.healthy_now(live) {
                self.info(&format!(
                    "release {version} is live on {live} already and healthy"
                ));
                return Some(self.go_live(state, live, How::AlreadyLive));
            }
        }
        let s = state.slot(idle);
        if s.release.as_deref() == Some(version) && s.alive {
            if *idle_now == Probe::Healthy {
                self.info(&format!(
                    "{idle} still runs release {version} and is healthy: switching only"
                ));
                return Some(self.go_live(state, idle, How::SwitchedOnly));
            }
            self.info(&format!(
                "{idle} runs release {version} but is not healthy: restarting it"
            ));
        }
        None
    }

    fn upload(
        &mut self,
        path: &str,
        unpack: &remote::Unpack,
        live_uses: bool,
    ) -> Result<(), String> {
        let cfg = self.cfg;
        let version = cfg.version.as_str();
        let dest = self.remote.upload_path(version);
        let digest = self
            .env
            .upload(&cfg.target, path, &dest)
            .map_err(|e| format!("uploading {path} to {}:{dest}: {}", cfg.target, e.message()))?;
        let hex = match digest.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                h.to_ascii_lowercase()
            }
            _ => {
                return Err(format!(
                    "the host returned {digest:?} for the upload, not sha256:<hex>"
                ))
            }
        };
        self.info(&format!(
            "uploaded {path} ({digest}) to {}:{dest}",
            cfg.target
        ));
        self.step(&self.remote.verify(version, &hex))?;
        let how = self.step(&self.remote.install(version, &hex, unpack, live_uses))?;
        if how.trim() == "reused" {
            self.info(&format!(
                "release {version} is on the server already with the same digest"
            ));
        } else {
            self.info(&format!(
                "installed release {version} in {}/releases/{version}",
                cfg.base
            ));
        }
        Ok(())
    }

    /// Stops the idle slot, points it at the release, starts it and waits
    /// until it is healthy. On failure the idle slot is stopped again.
    fn replace(&mut self, state: &State, idle: Slot) -> Result<(), Failed> {
        let cfg = self.cfg;
        let version = cfg.version.as_str();
        let port = cfg.port(idle);
        let stopped = self
            .step(&self.remote.stop(idle))
            .map_err(|e| self.fail(state, e))?;
        self.info(&format!("{idle}: {}", stopped.trim()));
        let url = cfg.health.url_for(port);
        // Nothing may answer on the idle port now (or the health check
        // would see it).
        if let Ok(r) = self.env.http_get(&url, 1000) {
            let why = format!(
                "GET {url} answers {} with {idle} stopped: another process holds port {port}",
                r.status
            );
            return Err(self.fail(state, why));
        }
        let started = self
            .step(&self.remote.link(idle, version))
            .and_then(|_| self.step(&self.remote.start(idle, port, &cfg.start)));
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                self.stop_quietly(idle);
                return Err(self.fail(state, e));
            }
        };
        self.info(&format!(
            "started {idle} (release {version}, pid {}) on port {port}: {}",
            pid.trim(),
            cfg.start
        ));
        if let Err(why) = self.wait_healthy(idle) {
            let log = self
                .step(&self.remote.log_tail(idle))
                .unwrap_or_else(|e| format!("(could not read {idle}.log: {e})"));
            let stopped = self.stop_quietly(idle);
            let mut f = self.fail(
                state,
                format!(
                    "health check of {idle} (release {version}, port {port}) failed: {why}; {stopped}"
                ),
            );
            f.log_tail = Some((idle, log));
            return Err(f);
        }
        Ok(())
    }

    /// Stops a slot that failed; says how that went (`blue stopped`).
    fn stop_quietly(&mut self, slot: Slot) -> String {
        match self.step(&self.remote.stop(slot)) {
            Ok(_) => format!("{slot} stopped"),
            Err(e) => {
                self.warn(&format!("stopping {slot}: {e}"));
                format!("stopping {slot} failed too ({e})")
            }
        }
    }

    fn probe(&mut self, url: &str, ms: u32) -> Probe {
        self.probe_result(url, ms)
            .unwrap_or_else(|e| Probe::Unreachable(e.message()))
    }

    /// A probe; `Err` when the host refuses the request itself (no grant,
    /// a malformed URL): no point waiting then.
    fn probe_result(&mut self, url: &str, ms: u32) -> Result<Probe, CapError> {
        let h = &self.cfg.health;
        Ok(match self.env.http_get(url, ms) {
            Ok(r) if (200..300).contains(&r.status) => match &h.body_contains {
                Some(want) if !String::from_utf8_lossy(&r.body).contains(want.as_str()) => {
                    Probe::Unexpected(format!("{} without {want:?} in the body", r.status))
                }
                _ => Probe::Healthy,
            },
            Ok(r) => Probe::Status(r.status),
            Err(e @ (CapError::Denied(_) | CapError::Invalid(_))) => return Err(e),
            Err(e) => Probe::Unreachable(e.message()),
        })
    }

    /// One probe of a running slot.
    fn healthy_now(&mut self, slot: Slot) -> bool {
        let url = self.cfg.health.url_for(self.cfg.port(slot));
        self.probe(&url, PROBE_MAX_MS) == Probe::Healthy
    }

    fn wait_healthy(&mut self, slot: Slot) -> Result<(), String> {
        let h = self.cfg.health.clone();
        let url = h.url_for(self.cfg.port(slot));
        let alive = self.remote.alive(slot);
        let target = self.cfg.target.clone();
        let mut last_alive_check: Option<Duration> = None;
        let r = health::wait_healthy(self, h.timeout, h.interval, |d, remaining| {
            let ms = (remaining.as_millis() as u32).clamp(200, PROBE_MAX_MS);
            match d.probe(&url, ms) {
                Probe::Unreachable(e) => {
                    // No answer: has it died? (At most once a second: each
                    // check is an ssh round trip.)
                    let now = d.env.now();
                    if last_alive_check.is_none_or(|t| now.saturating_sub(t) >= ALIVE_EVERY) {
                        last_alive_check = Some(now);
                        if let Ok(r) = d.env.sh(&target, &alive.text, alive.timeout_ms) {
                            if r.exit_code == 0 && r.stdout.trim() == "no" {
                                return Probe::Exited(format!("the process of {slot} exited"));
                            }
                        }
                    }
                    Probe::Unreachable(e)
                }
                p => p,
            }
        });
        match r {
            Ok(took) => {
                self.info(&format!(
                    "{slot} is healthy (GET {url} after {})",
                    fmt(took)
                ));
                Ok(())
            }
            Err(f) => Err(f.describe(&url, "2xx")),
        }
    }

    /// Moves traffic to `slot` (already healthy) and records it; prunes.
    fn go_live(&mut self, state: &State, slot: Slot, how: How) -> Result<Outcome, Failed> {
        let already = how == How::AlreadyLive;
        let cfg = self.cfg;
        let version = cfg.version.clone();
        let port = cfg.port(slot);
        if let Some(tpl) = &cfg.switch {
            if let Err(e) = self.step(&self.remote.switch(slot, port, tpl)) {
                return Err(self.switch_failed(state, slot, e, already));
            }
            self.info(&format!("switched traffic to {slot} (port {port})"));
        }
        let live = Serving {
            slot,
            release: Some(version.clone()),
            port,
        };
        if already {
            return Ok(Outcome {
                live,
                previous: None,
                how,
                warnings: Vec::new(),
            });
        }
        if let Err(e) = self.step(&self.remote.mark_live(slot)) {
            let traffic = if cfg.switch.is_some() {
                format!("traffic goes to {slot} (release {version})")
            } else {
                "nothing moved".into()
            };
            return Err(Failed {
                reason: format!(
                    "{e}; {traffic}, but {}/live still says {}: fix it before the next deploy",
                    cfg.base,
                    state.live.map_or("nothing", Slot::as_str)
                ),
                serving: Some(live),
                log_tail: None,
            });
        }
        self.info(&format!("{slot} is live (release {version})"));
        let previous = state.live.map(|l| self.serving(state, l));
        let mut warnings = Vec::new();
        // Newest first, as `state` listed them, with this one at the front.
        let mut releases = vec![version.clone()];
        releases.extend(state.releases.iter().filter(|r| **r != version).cloned());
        let mut referenced = vec![version.as_str()];
        if let Some(r) = state.slot(slot.other()).release.as_deref() {
            referenced.push(r);
        }
        let prune = remote::to_prune(&releases, cfg.keep, &referenced);
        if !prune.is_empty() {
            match self.step(&self.remote.prune(&prune)) {
                Ok(_) => self.info(&format!("pruned releases {}", prune.join(", "))),
                Err(e) => {
                    let w = format!("pruning old releases: {e}");
                    self.warn(&w);
                    warnings.push(w);
                }
            }
        }
        Ok(Outcome {
            live,
            previous,
            how,
            warnings,
        })
    }

    /// The switch command failed: point the router back at the live slot
    /// (the command may have half-run) and stop the new one; if that fails
    /// too, leave the new one running (it may be serving).
    fn switch_failed(&mut self, state: &State, slot: Slot, e: String, already: bool) -> Failed {
        let cfg = self.cfg;
        let tpl = cfg.switch.clone().unwrap_or_default();
        let version = cfg.version.as_str();
        let this = Serving {
            slot,
            release: Some(version.to_string()),
            port: cfg.port(slot),
        };
        if already {
            return Failed {
                reason: format!("{e}; {slot} (release {version}) stays live"),
                serving: Some(this),
                log_tail: None,
            };
        }
        let Some(live) = state.live else {
            return Failed {
                reason: format!(
                    "switching traffic to {slot} failed: {e}; nothing was live (first deploy), {slot} (release {version}) is left running"
                ),
                serving: None,
                log_tail: None,
            };
        };
        let back = self.remote.switch(live, cfg.port(live), &tpl);
        match self.step(&back) {
            Ok(_) => {
                self.info(&format!("switched traffic back to {live}"));
                let stopped = self.stop_quietly(slot);
                Failed {
                    reason: format!(
                        "switching traffic to {slot} failed: {e}; switched back, {}; {stopped}",
                        self.still_live(state)
                    ),
                    serving: Some(self.serving(state, live)),
                    log_tail: None,
                }
            }
            Err(e2) => Failed {
                reason: format!(
                    "switching traffic to {slot} failed: {e}; switching back to {live} failed too: {e2}; \
                     both slots are left running and {}/live still says {live}: check the router",
                    cfg.base
                ),
                serving: None,
                log_tail: None,
            },
        }
    }
}

impl<E: Env> Clock for Deploy<'_, E> {
    fn now(&mut self) -> Duration {
        self.env.now()
    }
    fn sleep(&mut self, d: Duration) {
        self.env.sleep(d)
    }
}

#[cfg(test)]
mod tests;
