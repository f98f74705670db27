//! The deploy against a simulated engine and proxy.

use std::collections::BTreeMap;

use super::*;
use crate::config::{Health, Strategy};
use stage_sdk::docker::{BuildRequest, BuildResult, PushResult, RunRequest, RunResult};

const ADMIN: u16 = 18081;
const PUBLIC: u16 = 18080;

#[derive(Clone, Debug)]
struct SimContainer {
    spec: ContainerSpec,
    running: bool,
    address: String,
}

/// A simulated engine + proxy. App containers whose env has
/// `DEMO_UNHEALTHY=1` answer 503 on their health port.
#[derive(Default)]
struct Sim {
    now: Duration,
    containers: BTreeMap<String, SimContainer>,
    pool: Vec<String>,
    /// Pools as container names, after each PUT.
    history: Vec<Vec<String>>,
    events: Vec<String>,
    next_ip: u8,
    next_suffix: u32,
    /// Host ports someone else holds.
    taken: Vec<u16>,
    /// In-flight requests per address, one fewer per `GET /pool`.
    in_flight: BTreeMap<String, usize>,
    logs: Vec<String>,
}

impl Sim {
    fn name_of(&self, addr: &str) -> String {
        self.containers
            .iter()
            .find(|(_, c)| {
                c.running
                    && c.spec
                        .ports
                        .first()
                        .is_some_and(|p| format!("{}:{}", c.address, p.container_port) == addr)
            })
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("?{addr}"))
    }

    fn info(&self, name: &str, c: &SimContainer) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            name: name.to_string(),
            image: c.spec.image.clone(),
            state: if c.running { "running" } else { "exited" }.into(),
            running: c.running,
            health: None,
            ports: c.spec.ports.clone(),
            labels: c.spec.labels.clone(),
            address: c.running.then(|| c.address.clone()),
        }
    }

    fn apps(&self) -> Vec<(String, String)> {
        self.containers
            .iter()
            .filter(|(n, _)| !n.ends_with("-proxy"))
            .map(|(n, c)| {
                let version = c
                    .spec
                    .env
                    .iter()
                    .find(|(k, _)| k == "VERSION")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (n.clone(), version)
            })
            .collect()
    }

    fn pool_versions(&self) -> Vec<Vec<String>> {
        self.history.clone()
    }
}

impl Clock for Sim {
    fn now(&mut self) -> Duration {
        self.now
    }
    fn sleep(&mut self, d: Duration) {
        self.now += d;
    }
}

fn refused() -> CapError {
    CapError::Failed("request to http://127.0.0.1: connection refused".into())
}

/// The simulation answers only what the deploy uses.
fn unused(what: &str) -> CapError {
    CapError::Unsupported(format!("the deploy does not call docker.{what}"))
}

impl Docker for Sim {
    fn build(&mut self, _: &BuildRequest) -> Result<BuildResult, CapError> {
        Err(unused("build"))
    }
    fn tag(&mut self, _: &str, _: &str) -> Result<(), CapError> {
        Err(unused("tag"))
    }
    fn push(&mut self, _: &str, _: Option<&str>) -> Result<PushResult, CapError> {
        Err(unused("push"))
    }
    fn run(&mut self, _: &RunRequest) -> Result<RunResult, CapError> {
        Err(unused("run"))
    }

    fn list_containers(&mut self, label: &str) -> Result<Vec<ContainerInfo>, CapError> {
        let (k, v) = label.split_once('=').unwrap();
        Ok(self
            .containers
            .iter()
            .filter(|(_, c)| c.spec.labels.iter().any(|(a, b)| a == k && b == v))
            .map(|(n, c)| self.info(n, c))
            .collect())
    }

    fn create(&mut self, spec: &ContainerSpec) -> Result<String, CapError> {
        let spec = spec.clone();
        assert!(
            !self.containers.contains_key(&spec.name),
            "{} exists",
            spec.name
        );
        self.events.push(format!("create {}", spec.name));
        self.next_ip += 1;
        let address = format!("172.17.0.{}", self.next_ip + 1);
        self.containers.insert(
            spec.name.clone(),
            SimContainer {
                spec,
                running: false,
                address,
            },
        );
        Ok(format!("id-{}", self.next_ip))
    }

    fn start(&mut self, name: &str) -> Result<(), CapError> {
        self.events.push(format!("start {name}"));
        let c = self.containers.get_mut(name).unwrap();
        if let Some(p) = c
            .spec
            .ports
            .iter()
            .find(|p| self.taken.contains(&p.host_port))
        {
            return Err(CapError::Failed(format!(
                "docker: Bind for 127.0.0.1:{} failed: port is already allocated",
                p.host_port
            )));
        }
        c.running = true;
        Ok(())
    }

    fn stop(&mut self, name: &str, _: Option<u32>) -> Result<(), CapError> {
        self.events.push(format!("stop {name}"));
        let addr = {
            let c = &self.containers[name];
            format!("{}:{}", c.address, c.spec.ports[0].container_port)
        };
        assert_eq!(
            self.in_flight.get(&addr).copied().unwrap_or(0),
            0,
            "{name} stopped with requests in flight"
        );
        assert!(
            !self.pool.contains(&addr),
            "{name} stopped while in the pool"
        );
        self.containers.get_mut(name).unwrap().running = false;
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), CapError> {
        self.events.push(format!("remove {name}"));
        self.containers.remove(name);
        Ok(())
    }

    fn inspect(&mut self, name: &str) -> Result<ContainerInfo, CapError> {
        let c = self
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| CapError::Failed("docker NOT_FOUND".into()))?;
        Ok(self.info(name, &c))
    }
}

impl Env for Sim {
    fn http(
        &mut self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
        _timeout_ms: u32,
    ) -> Result<Reply, CapError> {
        self.now += Duration::from_millis(1);
        let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
        let (port, path) = rest.split_at(rest.find('/').unwrap());
        let port: u16 = port.parse().unwrap();
        let reply = |status: u16, body: String| {
            Ok(Reply {
                status,
                body: body.into_bytes(),
            })
        };
        if port == ADMIN {
            let proxy_up = self.containers.get("demo-proxy").is_some_and(|c| c.running);
            if !proxy_up {
                return Err(refused());
            }
            return match (method, path) {
                ("GET", "/health") => reply(200, "{}".into()),
                ("GET", "/pool") => {
                    let doc = serde_json::json!({
                        "upstreams": self.pool.iter().map(|a| serde_json::json!({
                            "addr": a, "in_flight": self.in_flight.get(a).copied().unwrap_or(0)
                        })).collect::<Vec<_>>(),
                        "draining": self.in_flight.iter().filter(|(a, n)| **n > 0 && !self.pool.contains(a))
                            .map(|(a, n)| serde_json::json!({"addr": a, "in_flight": n})).collect::<Vec<_>>(),
                        "version": self.history.len(),
                    });
                    for n in self.in_flight.values_mut() {
                        *n = n.saturating_sub(1);
                    }
                    reply(200, doc.to_string())
                }
                ("PUT", "/pool") => {
                    let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
                    self.pool = v["upstreams"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect();
                    let names: Vec<String> = self.pool.iter().map(|a| self.name_of(a)).collect();
                    self.events.push(format!("pool [{}]", names.join(",")));
                    self.history.push(names);
                    reply(200, "{}".into())
                }
                _ => reply(404, String::new()),
            };
        }
        let app = self
            .containers
            .values()
            .find(|c| c.running && c.spec.ports.iter().any(|p| p.host_port == port));
        match app {
            None => Err(refused()),
            Some(c)
                if c.spec
                    .env
                    .iter()
                    .any(|(k, v)| k == "DEMO_UNHEALTHY" && v == "1") =>
            {
                reply(503, r#"{"status":"unhealthy"}"#.into())
            }
            Some(_) => reply(200, r#"{"status":"ok"}"#.into()),
        }
    }

    fn suffix(&mut self) -> String {
        self.next_suffix += 1;
        format!("{:04x}", self.next_suffix)
    }

    fn log(&mut self, _: stage_sdk::Level, msg: &str) {
        self.logs.push(msg.to_string());
    }
}

fn cfg(strategy: Strategy, replicas: u32, version: &str) -> Config {
    Config {
        service: "demo".into(),
        image: "local/demo:1".into(),
        strategy,
        replicas,
        port: 8080,
        public_port: PUBLIC,
        admin_port: ADMIN,
        host_ports: (18100, 18109),
        env: vec![("VERSION".into(), version.into())],
        health: Health {
            path: "/health".into(),
            timeout: Duration::from_secs(30),
            interval: Duration::from_millis(500),
            expect_status: 200,
        },
        drain: Duration::from_secs(10),
        proxy_image: "local/deploy-proxy:latest".into(),
    }
}

fn unhealthy(mut c: Config) -> Config {
    c.env.push(("DEMO_UNHEALTHY".into(), "1".into()));
    c.image = "local/demo:2".into();
    c
}

fn versions(sim: &Sim) -> Vec<String> {
    sim.apps().into_iter().map(|(_, v)| v).collect()
}

#[test]
fn first_blue_green_deploy_starts_the_proxy_and_fills_the_pool() {
    let mut sim = Sim::default();
    let out = run(&mut sim, &cfg(Strategy::BlueGreen, 2, "v1")).unwrap();
    assert_eq!(out.previous_image, None);
    assert_eq!(out.containers, vec!["demo-0001", "demo-0002"]);
    assert!(sim.containers["demo-proxy"].running);
    let proxy = &sim.containers["demo-proxy"].spec;
    let ports: Vec<(u16, u16)> = proxy
        .ports
        .iter()
        .map(|p| (p.container_port, p.host_port))
        .collect();
    assert_eq!(ports, vec![(8080, PUBLIC), (8081, ADMIN)]);
    assert!(proxy.labels.contains(&(LABEL_ROLE.into(), "proxy".into())));
    // The fresh proxy's empty pool already matches "no replicas": one PUT.
    assert_eq!(sim.pool_versions(), vec![vec!["demo-0001", "demo-0002"]]);
    let app = &sim.containers["demo-0001"].spec;
    assert_eq!(app.ports[0].host_port, 18100);
    assert_eq!(sim.containers["demo-0002"].spec.ports[0].host_port, 18101);
    for l in [
        (LABEL_SERVICE, "demo"),
        (LABEL_ROLE, "app"),
        (LABEL_IMAGE, "local/demo:1"),
        (LABEL_PORT, "8080"),
        (LABEL_ENV, r#"[["VERSION","v1"]]"#),
    ] {
        assert!(app.labels.contains(&(l.0.into(), l.1.into())), "{l:?}");
    }
}

#[test]
fn blue_green_switches_the_whole_pool_at_once() {
    let mut sim = Sim::default();
    run(&mut sim, &cfg(Strategy::BlueGreen, 2, "v1")).unwrap();
    let mut c = cfg(Strategy::BlueGreen, 2, "v2");
    c.image = "local/demo:2".into();
    let out = run(&mut sim, &c).unwrap();
    assert_eq!(out.previous_image.as_deref(), Some("local/demo:1"));
    assert_eq!(out.containers, vec!["demo-0003", "demo-0004"]);
    assert_eq!(
        sim.pool_versions(),
        vec![
            vec!["demo-0001", "demo-0002"],
            vec!["demo-0003", "demo-0004"]
        ]
    );
    assert_eq!(versions(&sim), vec!["v2", "v2"], "old replicas removed");
    // Both new replicas were checked before the switch.
    let switch = sim
        .events
        .iter()
        .position(|e| e.starts_with("pool [demo-0003"))
        .unwrap();
    let starts = sim
        .events
        .iter()
        .rposition(|e| e == "start demo-0004")
        .unwrap();
    assert!(starts < switch);
}

#[test]
fn rolling_replaces_one_replica_at_a_time() {
    let mut sim = Sim::default();
    run(&mut sim, &cfg(Strategy::Rolling, 2, "v1")).unwrap();
    assert_eq!(
        sim.pool_versions(),
        vec![vec!["demo-0001"], vec!["demo-0001", "demo-0002"]]
    );
    // Requests in flight on the old replicas: they must finish first.
    let old: Vec<String> = sim.pool.clone();
    sim.in_flight.insert(old[0].clone(), 3);
    sim.in_flight.insert(old[1].clone(), 1);
    let out = run(&mut sim, &cfg(Strategy::Rolling, 2, "v2")).unwrap();
    assert_eq!(out.containers, vec!["demo-0003", "demo-0004"]);
    assert_eq!(
        sim.pool_versions()[2..],
        [
            vec!["demo-0002".to_string(), "demo-0003".into()],
            vec!["demo-0003".to_string(), "demo-0004".into()],
        ]
    );
    assert_eq!(versions(&sim), vec!["v2", "v2"]);
    assert!(sim.pool_versions().iter().all(|p| !p.is_empty()));
    assert!(
        sim.logs.iter().any(|l| l.starts_with("drained in")),
        "{:?}",
        sim.logs
    );
}

#[test]
fn rolling_scales_down_and_up() {
    let mut sim = Sim::default();
    run(&mut sim, &cfg(Strategy::Rolling, 3, "v1")).unwrap();
    run(&mut sim, &cfg(Strategy::Rolling, 1, "v2")).unwrap();
    assert_eq!(versions(&sim), vec!["v2"]);
    run(&mut sim, &cfg(Strategy::Rolling, 2, "v3")).unwrap();
    assert_eq!(versions(&sim), vec!["v3", "v3"]);
    assert!(sim.pool_versions().iter().all(|p| !p.is_empty()));
}

#[test]
fn unhealthy_blue_green_keeps_the_old_pool() {
    let mut sim = Sim::default();
    run(&mut sim, &cfg(Strategy::BlueGreen, 2, "v1")).unwrap();
    let before = sim.pool.clone();
    let err = run(&mut sim, &unhealthy(cfg(Strategy::BlueGreen, 2, "v2"))).unwrap_err();
    assert_eq!(
        err.reason,
        "health check of demo-0003 failed: GET /health answered 503 for 30s; rolled back to local/demo:1"
    );
    assert_eq!(err.previous_image.as_deref(), Some("local/demo:1"));
    assert_eq!(err.containers, vec!["demo-0001", "demo-0002"]);
    assert_eq!(sim.pool, before);
    assert_eq!(versions(&sim), vec!["v1", "v1"], "new replicas removed");
}

#[test]
fn unhealthy_rolling_rolls_back_replicas_it_removed() {
    let mut sim = Sim::default();
    run(&mut sim, &cfg(Strategy::Rolling, 2, "v1")).unwrap();
    // The first new replica is healthy, the second is not: simulate by
    // making every replica after the first unhealthy.
    let mut c = cfg(Strategy::Rolling, 2, "v2");
    c.image = "local/demo:2".into();
    struct Flaky(Sim);
    impl Clock for Flaky {
        fn now(&mut self) -> Duration {
            self.0.now()
        }
        fn sleep(&mut self, d: Duration) {
            self.0.sleep(d)
        }
    }
    impl Docker for Flaky {
        fn build(&mut self, r: &BuildRequest) -> Result<BuildResult, CapError> {
            self.0.build(r)
        }
        fn tag(&mut self, s: &str, t: &str) -> Result<(), CapError> {
            self.0.tag(s, t)
        }
        fn push(&mut self, i: &str, a: Option<&str>) -> Result<PushResult, CapError> {
            self.0.push(i, a)
        }
        fn run(&mut self, r: &RunRequest) -> Result<RunResult, CapError> {
            self.0.run(r)
        }
        fn list_containers(&mut self, l: &str) -> Result<Vec<ContainerInfo>, CapError> {
            self.0.list_containers(l)
        }
        fn create(&mut self, spec: &ContainerSpec) -> Result<String, CapError> {
            let mut spec = spec.clone();
            if spec.name == "demo-0004" {
                spec.env.push(("DEMO_UNHEALTHY".into(), "1".into()));
            }
            self.0.create(&spec)
        }
        fn start(&mut self, n: &str) -> Result<(), CapError> {
            self.0.start(n)
        }
        fn stop(&mut self, n: &str, t: Option<u32>) -> Result<(), CapError> {
            self.0.stop(n, t)
        }
        fn remove(&mut self, n: &str) -> Result<(), CapError> {
            self.0.remove(n)
        }
        fn inspect(&mut self, n: &str) -> Result<ContainerInfo, CapError> {
            self.0.inspect(n)
        }
    }
    impl Env for Flaky {
        fn http(
            &mut self,
            m: &str,
            u: &str,
            b: Option<Vec<u8>>,
            t: u32,
        ) -> Result<Reply, CapError> {
            self.0.http(m, u, b, t)
        }
        fn suffix(&mut self) -> String {
            self.0.suffix()
        }
        fn log(&mut self, l: stage_sdk::Level, m: &str) {
            self.0.log(l, m)
        }
    }
    let mut flaky = Flaky(sim);
    let err = run(&mut flaky, &c).unwrap_err();
    let sim = flaky.0;
    assert_eq!(
        err.reason,
        "health check of demo-0004 failed: GET /health answered 503 for 30s; rolled back to local/demo:1"
    );
    // demo-0001 was replaced by demo-0005 (v1, same env), demo-0003 (v2) drained and removed.
    assert_eq!(err.containers, vec!["demo-0002", "demo-0005"]);
    assert_eq!(versions(&sim), vec!["v1", "v1"]);
    assert_eq!(sim.containers["demo-0005"].spec.image, "local/demo:1");
    assert_eq!(
        sim.pool_versions()[2..],
        [
            vec!["demo-0002".to_string(), "demo-0003".into()],
            vec!["demo-0002".to_string(), "demo-0005".into()],
        ]
    );
    assert!(sim.pool_versions().iter().all(|p| !p.is_empty()));
}

#[test]
fn first_deploy_that_fails_just_fails() {
    let mut sim = Sim::default();
    let err = run(&mut sim, &unhealthy(cfg(Strategy::Rolling, 1, "v1"))).unwrap_err();
    assert_eq!(
        err.reason,
        "health check of demo-0001 failed: GET /health answered 503 for 30s"
    );
    assert_eq!(err.previous_image, None);
    assert!(versions(&sim).is_empty());
    assert!(sim.pool.is_empty());
}

#[test]
fn a_taken_host_port_is_skipped() {
    let mut sim = Sim {
        taken: vec![18100],
        ..Sim::default()
    };
    run(&mut sim, &cfg(Strategy::Rolling, 1, "v1")).unwrap();
    let c = &sim.containers["demo-0001"];
    assert_eq!(c.spec.ports[0].host_port, 18101);
    assert!(c.running);
}

#[test]
fn a_fresh_proxy_gets_the_running_replicas() {
    let mut sim = Sim::default();
    run(&mut sim, &cfg(Strategy::Rolling, 1, "v1")).unwrap();
    // The proxy died and lost its pool.
    sim.containers.get_mut("demo-proxy").unwrap().running = false;
    sim.pool.clear();
    run(&mut sim, &cfg(Strategy::Rolling, 1, "v2")).unwrap();
    let h = sim.pool_versions();
    assert_eq!(
        h[h.len() - 2..],
        [vec!["demo-0001".to_string()], vec!["demo-0002".into()]]
    );
}

#[test]
fn a_proxy_on_other_ports_is_an_error() {
    let mut sim = Sim::default();
    run(&mut sim, &cfg(Strategy::Rolling, 1, "v1")).unwrap();
    let mut c = cfg(Strategy::Rolling, 1, "v2");
    c.public_port = 19000;
    let err = run(&mut sim, &c).unwrap_err();
    assert!(
        err.reason.contains("publishes [18080->8080, 18081->8081]"),
        "{}",
        err.reason
    );
    assert_eq!(versions(&sim), vec!["v1"]);
}
