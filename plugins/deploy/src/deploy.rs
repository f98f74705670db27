//! The deploy itself, over an [`Env`] (the host's docker and http imports
//! in the plugin, a simulation in the tests).

use std::time::Duration;

use stage_sdk::docker::{ContainerInfo, ContainerSpec, Docker, PortMapping, Privileges};
use stage_sdk::CapError;

use crate::config::{fmt_duration, Config, Strategy};
use crate::plan::{self, PoolDoc, PoolUpdate};
use stage_sdk::health::{self, Clock, Probe};

pub const LABEL_SERVICE: &str = "pipeline.service";
pub const LABEL_ROLE: &str = "pipeline.role";
pub const LABEL_IMAGE: &str = "pipeline.image";
/// The app's container port (so a later deploy can rebuild its address).
pub const LABEL_PORT: &str = "pipeline.port";
/// The `env` it was started with, as JSON, as written in the pipeline
/// (`${secret:…}` placeholders stay placeholders), to restart it on a rollback.
pub const LABEL_ENV: &str = "pipeline.env";

/// How long `docker stop` waits for an old replica before killing it.
const STOP_TIMEOUT_SECS: u32 = 10;
/// How long a new proxy has to answer its admin `/health`.
const PROXY_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Poll interval while draining.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// Attempts at a free host port before giving up.
const PORT_ATTEMPTS: usize = 20;

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What the deploy needs from the outside world: the SDK's [`Docker`]
/// port, a clock, and these.
pub trait Env: Clock + Docker {
    fn http(
        &mut self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
        timeout_ms: u32,
    ) -> Result<Reply, CapError>;
    /// A short random suffix for container names.
    fn suffix(&mut self) -> String;
    fn log(&mut self, level: stage_sdk::Level, msg: &str);
}

/// One app replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub image: String,
    /// `ip:port` on the default bridge, what the proxy sends requests to.
    pub addr: String,
    pub host_port: u16,
    pub port: u16,
    pub env: Vec<(String, String)>,
}

/// A finished deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub image: String,
    pub previous_image: Option<String>,
    pub containers: Vec<String>,
    /// Steps in order, for the summary and the tests.
    pub pool_updates: u32,
}

/// A failed deploy, after the rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub reason: String,
    pub previous_image: Option<String>,
    /// What serves now.
    pub containers: Vec<String>,
}

fn label<'a>(c: &'a ContainerInfo, key: &str) -> Option<&'a str> {
    c.labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn msg(e: &CapError) -> String {
    e.message()
}

struct Deploy<'a, E: Env> {
    env: &'a mut E,
    cfg: &'a Config,
    /// Host ports of every container of the service (and ones found taken).
    used_ports: Vec<u16>,
    names: Vec<String>,
    pool_updates: u32,
}

/// Runs a deploy. `Err(Failed)` after a rollback; `Err` with no previous
/// version when nothing could be kept.
pub fn run<E: Env>(env: &mut E, cfg: &Config) -> Result<Outcome, Failed> {
    let mut d = Deploy {
        env,
        cfg,
        used_ports: Vec::new(),
        names: Vec::new(),
        pool_updates: 0,
    };
    d.run()
}

impl<E: Env> Deploy<'_, E> {
    fn info(&mut self, m: &str) {
        self.env.log(stage_sdk::Level::Info, m);
    }

    fn warn(&mut self, m: &str) {
        self.env.log(stage_sdk::Level::Warn, m);
    }

    fn fail(&self, reason: String, previous: Option<String>, serving: &[App]) -> Failed {
        Failed {
            reason,
            previous_image: previous,
            containers: serving.iter().map(|a| a.name.clone()).collect(),
        }
    }

    fn run(&mut self) -> Result<Outcome, Failed> {
        let cfg = self.cfg;
        let svc_label = format!("{LABEL_SERVICE}={}", cfg.service);
        let all = self
            .env
            .list_containers(&svc_label)
            .map_err(|e| self.fail(format!("listing containers: {}", msg(&e)), None, &[]))?;
        for c in &all {
            self.used_ports.extend(c.ports.iter().map(|p| p.host_port));
            self.names.push(c.name.clone());
        }
        let proxy = all.iter().find(|c| c.name == cfg.proxy_name()).cloned();
        let mut current: Vec<App> = Vec::new();
        for c in &all {
            if label(c, LABEL_ROLE) != Some("app") {
                continue;
            }
            if !c.running {
                self.info(&format!(
                    "removing stopped replica {} ({})",
                    c.name, c.state
                ));
                let _ = self.env.remove(&c.name);
                continue;
            }
            match self.app_of(c) {
                Some(app) => current.push(app),
                None => self.warn(&format!(
                    "replica {} has no bridge address; leaving it out",
                    c.name
                )),
            }
        }
        current.sort_by(|a, b| a.name.cmp(&b.name));
        let previous = plan::majority_image(current.iter().map(|a| a.image.as_str()));

        self.ensure_proxy(proxy.as_ref())
            .map_err(|e| self.fail(e, previous.clone(), &current))?;
        // The pool should hold the current replicas (a fresh proxy holds none).
        let doc = self
            .get_pool()
            .map_err(|e| self.fail(e, previous.clone(), &current))?;
        let current_addrs: Vec<String> = current.iter().map(|a| a.addr.clone()).collect();
        if !doc.same_set(&current_addrs) {
            self.info(&format!(
                "proxy pool [{}] differs from the running replicas [{}]: setting it",
                doc.addrs().join(", "),
                current_addrs.join(", ")
            ));
            self.put_pool(&current)
                .map_err(|e| self.fail(e, previous.clone(), &current))?;
        }
        match &previous {
            Some(p) => self.info(&format!(
                "deploying {} over {} replica(s) of {p} ({})",
                cfg.image,
                current.len(),
                cfg.strategy.as_str()
            )),
            None => self.info(&format!(
                "first deploy of {} ({}, {} replica(s))",
                cfg.image,
                cfg.strategy.as_str(),
                cfg.replicas
            )),
        }
        let result = match cfg.strategy {
            Strategy::BlueGreen => self.blue_green(&current, previous.clone()),
            Strategy::Rolling => self.rolling(&current, previous.clone()),
        };
        let new = result?;
        Ok(Outcome {
            image: cfg.image.clone(),
            previous_image: previous,
            containers: new.iter().map(|a| a.name.clone()).collect(),
            pool_updates: self.pool_updates,
        })
    }

    fn app_of(&self, c: &ContainerInfo) -> Option<App> {
        let port = label(c, LABEL_PORT)
            .and_then(|p| p.parse().ok())
            .unwrap_or(self.cfg.port);
        let env = label(c, LABEL_ENV)
            .and_then(|e| serde_json::from_str::<Vec<(String, String)>>(e).ok())
            .unwrap_or_default();
        Some(App {
            name: c.name.clone(),
            image: label(c, LABEL_IMAGE).unwrap_or(&c.image).to_string(),
            addr: format!("{}:{port}", c.address.as_deref()?),
            host_port: c
                .ports
                .iter()
                .find(|p| p.container_port == port)
                .map(|p| p.host_port)
                .unwrap_or(0),
            port,
            env,
        })
    }

    // ---- the proxy -------------------------------------------------------

    fn ensure_proxy(&mut self, existing: Option<&ContainerInfo>) -> Result<(), String> {
        let cfg = self.cfg;
        let name = cfg.proxy_name();
        if let Some(p) = existing {
            let publishes = |container: u16, host: u16| {
                p.ports
                    .iter()
                    .any(|m| m.container_port == container && m.host_port == host)
            };
            if !publishes(8080, cfg.public_port) || !publishes(8081, cfg.admin_port) {
                let shown: Vec<String> = p
                    .ports
                    .iter()
                    .map(|m| format!("{}->{}", m.host_port, m.container_port))
                    .collect();
                return Err(format!(
                    "the proxy {name} publishes [{}], not public-port {} and admin-port {}: \
                     remove it (it serves the service) to change its ports",
                    shown.join(", "),
                    cfg.public_port,
                    cfg.admin_port
                ));
            }
            if p.running {
                let image = label(p, LABEL_IMAGE).unwrap_or(&p.image).to_string();
                if image != cfg.proxy_image {
                    self.warn(&format!(
                        "proxy {name} runs {image}, not {}; keeping it (replacing it would interrupt traffic)",
                        cfg.proxy_image
                    ));
                }
                return self.wait_proxy();
            }
            self.info(&format!("proxy {name} is {}: recreating it", p.state));
            let _ = self.env.remove(&name);
        }
        self.info(&format!(
            "starting proxy {name} ({}) on 127.0.0.1:{} (admin {})",
            cfg.proxy_image, cfg.public_port, cfg.admin_port
        ));
        let spec = ContainerSpec {
            name: name.clone(),
            image: cfg.proxy_image.clone(),
            command: Vec::new(),
            env: Vec::new(),
            ports: vec![
                PortMapping {
                    container_port: 8080,
                    host_port: cfg.public_port,
                },
                PortMapping {
                    container_port: 8081,
                    host_port: cfg.admin_port,
                },
            ],
            labels: vec![
                (LABEL_SERVICE.into(), cfg.service.clone()),
                (LABEL_ROLE.into(), "proxy".into()),
                (LABEL_IMAGE.into(), cfg.proxy_image.clone()),
            ],
            privileges: Privileges::none(),
        };
        self.env
            .create(&spec)
            .map_err(|e| format!("creating the proxy {name}: {}", msg(&e)))?;
        if let Err(e) = self.env.start(&name) {
            let _ = self.env.remove(&name);
            return Err(format!("starting the proxy {name}: {}", msg(&e)));
        }
        self.wait_proxy()
    }

    fn wait_proxy(&mut self) -> Result<(), String> {
        let url = self.cfg.proxy_health_url();
        let name = self.cfg.proxy_name();
        let r = health::wait_healthy(
            self.env,
            PROXY_START_TIMEOUT,
            Duration::from_millis(200),
            |env, _| match env.http("GET", &url, None, 2000) {
                Ok(r) if r.status == 200 => Probe::Healthy,
                Ok(r) => Probe::Status(r.status),
                Err(e) => Probe::Unreachable(msg(&e)),
            },
        );
        r.map(|_| ()).map_err(|f| {
            format!(
                "the proxy {name} is not answering: {}",
                f.describe("/health", 200)
            )
        })
    }

    fn get_pool(&mut self) -> Result<PoolDoc, String> {
        let url = self.cfg.pool_url();
        let r = self
            .env
            .http("GET", &url, None, 5000)
            .map_err(|e| format!("GET {url}: {}", msg(&e)))?;
        if r.status != 200 {
            return Err(format!("GET {url} answered {}", r.status));
        }
        serde_json::from_slice(&r.body).map_err(|e| format!("GET {url}: not a pool document: {e}"))
    }

    /// Replaces the proxy's pool with `apps`.
    fn put_pool(&mut self, apps: &[App]) -> Result<(), String> {
        let url = self.cfg.pool_url();
        let addrs: Vec<String> = apps.iter().map(|a| a.addr.clone()).collect();
        let body = serde_json::to_vec(&PoolUpdate { upstreams: &addrs }).expect("serializes");
        let r = self
            .env
            .http("PUT", &url, Some(body), 5000)
            .map_err(|e| format!("PUT {url}: {}", msg(&e)))?;
        if r.status != 200 {
            return Err(format!(
                "PUT {url} answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        self.pool_updates += 1;
        let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
        self.info(&format!(
            "pool → [{}] ({})",
            names.join(", "),
            addrs.join(", ")
        ));
        Ok(())
    }

    /// Waits (at most `drain`) until no request is in flight on `apps`.
    fn drain(&mut self, apps: &[App]) {
        if apps.is_empty() {
            return;
        }
        let addrs: Vec<String> = apps.iter().map(|a| a.addr.clone()).collect();
        let start = self.env.now();
        loop {
            let busy = match self.get_pool() {
                Ok(doc) => doc.in_flight(&addrs),
                Err(e) => {
                    self.warn(&format!("draining: {e}"));
                    return;
                }
            };
            let waited = self.env.now().saturating_sub(start);
            if busy == 0 {
                if !waited.is_zero() {
                    self.info(&format!("drained in {}", fmt_duration(waited)));
                }
                return;
            }
            if waited >= self.cfg.drain {
                self.warn(&format!(
                    "{busy} request(s) still in flight on [{}] after {}; stopping anyway",
                    addrs.join(", "),
                    fmt_duration(self.cfg.drain)
                ));
                return;
            }
            self.env.sleep(DRAIN_POLL.min(self.cfg.drain - waited));
        }
    }

    fn stop_remove(&mut self, app: &App) {
        if let Err(e) = self.env.stop(&app.name, Some(STOP_TIMEOUT_SECS)) {
            self.warn(&format!("stopping {}: {}", app.name, msg(&e)));
        }
        if let Err(e) = self.env.remove(&app.name) {
            self.warn(&format!("removing {}: {}", app.name, msg(&e)));
        }
    }

    // ---- app replicas ----------------------------------------------------

    fn new_name(&mut self) -> String {
        loop {
            let name = plan::app_name(&self.cfg.service, &self.env.suffix());
            if name != self.cfg.proxy_name() && !self.names.contains(&name) {
                self.names.push(name.clone());
                return name;
            }
        }
    }

    /// Creates and starts a replica of `image` (not yet in the pool).
    fn start_app(
        &mut self,
        image: &str,
        env: &[(String, String)],
        port: u16,
    ) -> Result<App, String> {
        let cfg = self.cfg;
        let name = self.new_name();
        let env_json = serde_json::to_string(env).expect("serializes");
        for _ in 0..PORT_ATTEMPTS {
            let Some(host_port) = plan::pick_port(cfg.host_ports, &self.used_ports) else {
                return Err(format!(
                    "no free port left in host-ports {}-{} for {name}",
                    cfg.host_ports.0, cfg.host_ports.1
                ));
            };
            self.used_ports.push(host_port);
            let spec = ContainerSpec {
                name: name.clone(),
                image: image.to_string(),
                command: Vec::new(),
                env: env.to_vec(),
                ports: vec![PortMapping {
                    container_port: port,
                    host_port,
                }],
                labels: vec![
                    (LABEL_SERVICE.into(), cfg.service.clone()),
                    (LABEL_ROLE.into(), "app".into()),
                    (LABEL_IMAGE.into(), image.to_string()),
                    (LABEL_PORT.into(), port.to_string()),
                    (LABEL_ENV.into(), env_json.clone()),
                ],
                privileges: Privileges::none(),
            };
            self.env
                .create(&spec)
                .map_err(|e| format!("creating {name} ({image}): {}", msg(&e)))?;
            match self.env.start(&name) {
                Ok(()) => {}
                Err(e) if plan::is_port_conflict(&msg(&e)) => {
                    self.info(&format!("host port {host_port} is taken; trying another"));
                    let _ = self.env.remove(&name);
                    continue;
                }
                Err(e) => {
                    let _ = self.env.remove(&name);
                    return Err(format!("starting {name} ({image}): {}", msg(&e)));
                }
            }
            let info = match self.env.inspect(&name) {
                Ok(i) => i,
                Err(e) => {
                    let _ = self.env.remove(&name);
                    return Err(format!("inspecting {name}: {}", msg(&e)));
                }
            };
            let Some(address) = info.address.filter(|a| !a.is_empty()) else {
                let _ = self.env.remove(&name);
                return Err(format!(
                    "{name} has no address on the default bridge (state {})",
                    info.state
                ));
            };
            self.info(&format!(
                "started {name} ({image}) at {address}:{port}, health on 127.0.0.1:{host_port}"
            ));
            return Ok(App {
                name,
                image: image.to_string(),
                addr: format!("{address}:{port}"),
                host_port,
                port,
                env: env.to_vec(),
            });
        }
        Err(format!(
            "no free host port for {name} after {PORT_ATTEMPTS} attempts in {}-{}",
            cfg.host_ports.0, cfg.host_ports.1
        ))
    }

    /// Health-checks `app` through its published port.
    fn check(&mut self, app: &App) -> Result<(), String> {
        let cfg = self.cfg;
        let h = &cfg.health;
        let url = format!("http://127.0.0.1:{}{}", app.host_port, h.path);
        let name = app.name.clone();
        let expect = h.expect_status;
        let r = health::wait_healthy(self.env, h.timeout, h.interval, |env, remaining| {
            let ms = remaining.as_millis().clamp(200, 2000) as u32;
            match env.http("GET", &url, None, ms) {
                Ok(r) if r.status == expect => Probe::Healthy,
                Ok(r) => Probe::Status(r.status),
                Err(e) => match env.inspect(&name) {
                    Ok(i) if !i.running => {
                        Probe::Exited(format!("the container stopped ({})", i.state))
                    }
                    _ => Probe::Unreachable(msg(&e)),
                },
            }
        });
        match r {
            Ok(took) => {
                self.info(&format!(
                    "{} is healthy (GET {} → {expect} after {})",
                    app.name,
                    h.path,
                    fmt_duration(took)
                ));
                Ok(())
            }
            Err(f) => Err(format!(
                "health check of {} failed: {}",
                app.name,
                f.describe(&h.path, expect)
            )),
        }
    }

    fn start_checked(
        &mut self,
        image: &str,
        env: &[(String, String)],
        port: u16,
    ) -> Result<App, (String, Option<Box<App>>)> {
        let app = self.start_app(image, env, port).map_err(|e| (e, None))?;
        match self.check(&app) {
            Ok(()) => Ok(app),
            Err(e) => Err((e, Some(Box::new(app)))),
        }
    }

    // ---- strategies ------------------------------------------------------

    fn blue_green(&mut self, old: &[App], previous: Option<String>) -> Result<Vec<App>, Failed> {
        let cfg = self.cfg;
        let mut new: Vec<App> = Vec::new();
        let mut error = None;
        for _ in 0..cfg.replicas {
            match self.start_app(&cfg.image, &cfg.env, cfg.port) {
                Ok(a) => new.push(a),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_none() {
            for a in new.clone() {
                if let Err(e) = self.check(&a) {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_none() {
            if let Err(e) = self.put_pool(&new) {
                error = Some(e);
            }
        }
        if let Some(reason) = error {
            // Nothing new ever served: the old pool stays.
            for a in &new {
                self.stop_remove(a);
            }
            if let Err(e) = self.put_pool(old) {
                self.warn(&format!("restoring the pool: {e}"));
            }
            return Err(self.fail(with_rollback(reason, &previous), previous, old));
        }
        self.drain(old);
        for a in old {
            self.stop_remove(a);
        }
        Ok(new)
    }

    fn rolling(&mut self, old: &[App], previous: Option<String>) -> Result<Vec<App>, Failed> {
        let cfg = self.cfg;
        let steps = plan::rolling_steps(old.len(), cfg.replicas as usize);
        let mut pool: Vec<App> = old.to_vec();
        let mut new: Vec<App> = Vec::new();
        let mut removed: Vec<App> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let mut failed: Option<String> = None;
            if step.add {
                match self.start_checked(&cfg.image, &cfg.env, cfg.port) {
                    Ok(a) => {
                        new.push(a.clone());
                        pool.push(a);
                    }
                    Err((e, started)) => {
                        if let Some(a) = started {
                            self.stop_remove(&a);
                        }
                        failed = Some(e);
                    }
                }
            }
            if failed.is_none() {
                let gone = step.remove.map(|r| old[r].clone());
                if let Some(g) = &gone {
                    pool.retain(|a| a.name != g.name);
                }
                match self.put_pool(&pool) {
                    Ok(()) => {
                        if let Some(g) = gone {
                            self.info(&format!("step {}/{}: {} out", i + 1, steps.len(), g.name));
                            self.drain(std::slice::from_ref(&g));
                            self.stop_remove(&g);
                            removed.push(g);
                        }
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(reason) = failed {
                let kept: Vec<App> = old
                    .iter()
                    .filter(|o| !removed.iter().any(|r| r.name == o.name))
                    .cloned()
                    .collect();
                return Err(self.roll_back(reason, previous, kept, removed, new));
            }
        }
        Ok(new)
    }

    /// Back to the previous version: replace the old replicas already
    /// removed, put the old set back in the pool, drain and remove the new.
    fn roll_back(
        &mut self,
        reason: String,
        previous: Option<String>,
        kept: Vec<App>,
        removed: Vec<App>,
        new: Vec<App>,
    ) -> Failed {
        let mut serving = kept;
        let mut problems = Vec::new();
        for r in &removed {
            self.info(&format!("rollback: replacing {} ({})", r.name, r.image));
            match self.start_checked(&r.image, &r.env, r.port) {
                Ok(a) => serving.push(a),
                Err((e, started)) => {
                    if let Some(a) = started {
                        self.stop_remove(&a);
                    }
                    problems.push(e);
                }
            }
        }
        let pool = if serving.is_empty() && previous.is_some() {
            // Nothing of the old version could come back: keep what serves.
            problems.push("no replica of the previous version is running".into());
            new.clone()
        } else {
            serving.clone()
        };
        if let Err(e) = self.put_pool(&pool) {
            problems.push(format!("restoring the pool: {e}"));
        }
        let retired: Vec<App> = new
            .into_iter()
            .filter(|n| !pool.iter().any(|p| p.name == n.name))
            .collect();
        self.drain(&retired);
        for a in &retired {
            self.stop_remove(a);
        }
        let mut reason = with_rollback(reason, &previous);
        if !problems.is_empty() {
            reason.push_str(&format!(" (rollback incomplete: {})", problems.join("; ")));
        }
        self.fail(reason, previous, &pool)
    }
}

fn with_rollback(reason: String, previous: &Option<String>) -> String {
    match previous {
        Some(p) => format!("{reason}; rolled back to {p}"),
        None => reason,
    }
}

#[cfg(test)]
mod tests;
