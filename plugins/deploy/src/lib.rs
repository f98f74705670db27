//! `deploy` stage: runs a service as containers behind the deploy proxy
//! (`plugins/deploy-proxy`) and moves traffic to a new version with a
//! rolling or a blue-green deploy, health-checked, rolled back on failure.
//! See `README.md` next to this crate for the mechanism, the `with` keys,
//! the outputs and the grants.

pub mod config;
pub mod deploy;
pub mod plan;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use stage_sdk::docker::{
    BuildRequest, BuildResult, ContainerInfo, ContainerSpec, Docker, HostDocker, PushResult,
    RunRequest, RunResult,
};
use stage_sdk::{
    Annotation, CapError, ConfigKey, Context, Level, PluginInfo, Report, Stage, StageError,
};

use config::{Config, DEFAULT_PROXY_IMAGE};
use deploy::{Env, Reply};
use stage_sdk::health::{Clock, SystemClock};

/// The host's docker and http imports, the WASI clock.
#[derive(Default)]
pub struct HostEnv {
    clock: SystemClock,
    counter: u64,
}

impl Clock for HostEnv {
    fn now(&mut self) -> Duration {
        self.clock.now()
    }
    fn sleep(&mut self, d: Duration) {
        self.clock.sleep(d)
    }
}

/// The SDK's forwarding impl: `Env` needs `Docker` on the same value as
/// the clock and http (the tests' simulation shares state between them).
impl Docker for HostEnv {
    fn build(&mut self, req: &BuildRequest) -> Result<BuildResult, CapError> {
        HostDocker.build(req)
    }
    fn tag(&mut self, source: &str, target: &str) -> Result<(), CapError> {
        HostDocker.tag(source, target)
    }
    fn push(&mut self, image: &str, auth_secret: Option<&str>) -> Result<PushResult, CapError> {
        HostDocker.push(image, auth_secret)
    }
    fn run(&mut self, req: &RunRequest) -> Result<RunResult, CapError> {
        HostDocker.run(req)
    }
    fn create(&mut self, spec: &ContainerSpec) -> Result<String, CapError> {
        HostDocker.create(spec)
    }
    fn start(&mut self, name: &str) -> Result<(), CapError> {
        HostDocker.start(name)
    }
    fn stop(&mut self, name: &str, timeout_secs: Option<u32>) -> Result<(), CapError> {
        HostDocker.stop(name, timeout_secs)
    }
    fn remove(&mut self, name: &str) -> Result<(), CapError> {
        HostDocker.remove(name)
    }
    fn inspect(&mut self, name: &str) -> Result<ContainerInfo, CapError> {
        HostDocker.inspect(name)
    }
    fn list_containers(&mut self, label: &str) -> Result<Vec<ContainerInfo>, CapError> {
        HostDocker.list_containers(label)
    }
}

impl Env for HostEnv {
    fn http(
        &mut self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
        timeout_ms: u32,
    ) -> Result<Reply, CapError> {
        let mut req = stage_sdk::http::Request::new(method, url).timeout_ms(timeout_ms);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send()?;
        Ok(Reply {
            status: r.status,
            body: r.body,
        })
    }
    fn suffix(&mut self) -> String {
        // std's RandomState is seeded from WASI's random source.
        self.counter += 1;
        let mut h = RandomState::new().build_hasher();
        h.write_u64(self.counter);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        format!("{:06x}", h.finish() & 0xff_ffff)
    }
    fn log(&mut self, level: Level, msg: &str) {
        stage_sdk::log::write(level, msg);
    }
}

/// Everything but the export glue.
pub fn deploy_stage(ctx: &Context, env: &mut impl Env) -> Result<Report, StageError> {
    let cfg: Config = config::load(ctx)?;
    let base = |r: Report| {
        r.output("image", cfg.image.as_str())
            .output("endpoint", cfg.endpoint())
            .output("strategy", cfg.strategy.as_str())
    };
    match deploy::run(env, &cfg) {
        Ok(out) => {
            let mut r = base(Report::passed(format!(
                "deployed {} to {} ({}, {} replica(s): {}) at {}",
                out.image,
                cfg.service,
                cfg.strategy.as_str(),
                out.containers.len(),
                out.containers.join(", "),
                cfg.endpoint()
            )))
            .output("containers", out.containers.join(","));
            if let Some(p) = &out.previous_image {
                r = r.output("previous-image", p.as_str());
            }
            Ok(r)
        }
        Err(f) => {
            stage_sdk::log::error(&f.reason);
            let mut r = base(Report::failed(f.reason.clone()))
                .output("containers", f.containers.join(","))
                .annotate(Annotation::error(
                    format!("deploy of {} failed", cfg.service),
                    f.reason.clone(),
                ));
            if let Some(p) = &f.previous_image {
                r = r.output("previous-image", p.as_str());
            }
            Ok(r)
        }
    }
}

struct Deploy;

impl Stage for Deploy {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "deploy",
            env!("CARGO_PKG_VERSION"),
            "Deploys a service as containers behind a reverse proxy: rolling or blue-green, \
             health-checked, rolled back on failure",
        )
        .key(ConfigKey::required(
            "service",
            "Name prefix of the containers (and the proxy's: <service>-proxy)",
        ))
        .key(ConfigKey::optional_no_default(
            "image",
            "Image to deploy; default: the `ref` (image@digest) or `image` output of a stage in `needs`",
        ))
        .key(ConfigKey::optional(
            "strategy",
            "\"rolling\" (one replica at a time) or \"blue-green\" (all, then one switch)",
            "\"rolling\"",
        ))
        .key(ConfigKey::optional("replicas", "Number of app containers", "1"))
        .key(ConfigKey::optional("port", "Container port of the app", "8080"))
        .key(ConfigKey::required(
            "public-port",
            "Host port (127.0.0.1) of the proxy's traffic port",
        ))
        .key(ConfigKey::required(
            "admin-port",
            "Host port (127.0.0.1) of the proxy's admin API",
        ))
        .key(ConfigKey::optional(
            "host-ports",
            "Range of host ports (127.0.0.1) for the app containers' health checks",
            "\"18100-18199\"",
        ))
        .key(ConfigKey::optional(
            "env",
            "Environment of the app containers (${secret:NAME} allowed)",
            "{}",
        ))
        .key(ConfigKey::optional(
            "health",
            "{ path, timeout, interval, expect-status } of the health check",
            config::HealthWith::default_json(),
        ))
        .key(ConfigKey::optional(
            "drain",
            "Longest wait for in-flight requests of a replica leaving the pool",
            "\"10s\"",
        ))
        .key(ConfigKey::optional(
            "proxy-image",
            "Image of the proxy container",
            format!("\"{DEFAULT_PROXY_IMAGE}\""),
        ))
        .capability("docker.run")
        .capability("docker.containers")
        .capability("docker.ports")
        .capability("http")
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        deploy_stage(&ctx, &mut HostEnv::default())
    }
}

stage_sdk::export_stage!(Deploy);
