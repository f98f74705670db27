//! `ssh-deploy` stage: blue-green deploy of a release to a server over
//! SSH. Two slots (blue, green) each run the app on their own port; a
//! router on the server sends traffic to the live one. The release goes to
//! the idle slot, is health-checked, then traffic switches; the old slot
//! keeps running for an instant switch back.
//! See `README.md` next to this crate for the mechanism, the `with` keys,
//! the outputs and the grants.

pub mod config;
pub mod deploy;
pub mod remote;
#[cfg(all(test, unix))]
mod shell_tests;

use std::time::Duration;

use stage_sdk::health::{Clock, SystemClock};
use stage_sdk::ssh::{ExecRequest, ExecResult, HostSsh, Ssh};
use stage_sdk::{
    Annotation, CapError, ConfigKey, Context, Level, PluginInfo, Report, Stage, StageError,
};

use config::Config;
use deploy::{Env, How, Reply};

/// The host's ssh and http imports, the WASI clock.
#[derive(Default)]
pub struct HostEnv {
    clock: SystemClock,
}

impl Clock for HostEnv {
    fn now(&mut self) -> Duration {
        self.clock.now()
    }
    fn sleep(&mut self, d: Duration) {
        self.clock.sleep(d)
    }
}

pub use remote::sh_command;

/// The SDK's forwarding impl, on the value that also carries the clock.
impl Ssh for HostEnv {
    fn exec(&mut self, req: &ExecRequest) -> Result<ExecResult, CapError> {
        HostSsh.exec(req)
    }
    fn upload(&mut self, target: &str, local: &str, remote: &str) -> Result<String, CapError> {
        HostSsh.upload(target, local, remote)
    }
}

impl Env for HostEnv {
    fn http_get(&mut self, url: &str, timeout_ms: u32) -> Result<Reply, CapError> {
        let r = stage_sdk::http::Request::new("GET", url)
            .timeout_ms(timeout_ms)
            .send()?;
        Ok(Reply {
            status: r.status,
            body: r.body,
        })
    }
    fn log(&mut self, level: Level, msg: &str) {
        stage_sdk::log::write(level, msg);
    }
}

/// Everything but the export glue.
pub fn ssh_deploy_stage(ctx: &Context, env: &mut impl Env) -> Result<Report, StageError> {
    let cfg: Config = config::load(ctx)?;
    let r = deploy::run(env, &cfg);
    if let Err(f) = &r {
        env.log(Level::Error, &f.reason);
    }
    Ok(report(&cfg, r))
}

fn report(cfg: &Config, r: Result<deploy::Outcome, deploy::Failed>) -> Report {
    let target = &cfg.target;
    match r {
        Ok(out) => {
            let live = &out.live;
            let release = live.release.clone().unwrap_or_default();
            let summary = match out.how {
                How::AlreadyLive => format!(
                    "release {release} is live on {target} already ({}, port {})",
                    live.slot, live.port
                ),
                How::SwitchedOnly => format!(
                    "switched {target} to {} (release {release}, still running, port {})",
                    live.slot, live.port
                ),
                How::Deployed => format!(
                    "deployed release {release} to {target}: {} is live on port {}",
                    live.slot, live.port
                ),
            };
            let summary = match &out.previous {
                Some(p) => format!(
                    "{summary}; {} ({}) kept running for a switch back",
                    p.slot,
                    p.release.as_deref().unwrap_or("no release")
                ),
                None => summary,
            };
            let mut rep = if out.warnings.is_empty() {
                Report::passed(summary)
            } else {
                Report::warning(summary)
            }
            .output("slot", live.slot.as_str())
            .output("release", release.as_str())
            .output("image", release.as_str())
            .output("port", live.port.to_string());
            if let Some(p) = &out.previous {
                if let Some(r) = &p.release {
                    rep = rep.output("previous-image", r.as_str());
                }
                rep = rep.output("previous-slot", p.slot.as_str());
            }
            for w in &out.warnings {
                rep = rep.annotate(Annotation::warning("ssh-deploy", w.clone()));
            }
            rep
        }
        Err(f) => {
            let mut rep = Report::failed(f.reason.clone()).annotate(Annotation::error(
                format!("deploy of {} to {target} failed", cfg.version),
                f.reason.clone(),
            ));
            if let Some(s) = &f.serving {
                rep = rep
                    .output("slot", s.slot.as_str())
                    .output("port", s.port.to_string());
                if let Some(r) = &s.release {
                    rep = rep.output("release", r.as_str());
                }
            }
            if let Some((slot, log)) = f.log_tail {
                let log = if log.trim().is_empty() {
                    "(empty)".to_string()
                } else {
                    log
                };
                rep = rep.annotate(Annotation::error(
                    format!(
                        "{}/{slot}.log (last {} lines)",
                        cfg.base,
                        remote::LOG_TAIL_LINES
                    ),
                    log,
                ));
            }
            rep
        }
    }
}

struct SshDeploy;

/// `describe()` (also what `host check` validates `with` keys against).
pub fn info() -> PluginInfo {
    PluginInfo::new(
        "ssh-deploy",
        env!("CARGO_PKG_VERSION"),
        "Blue-green deploy of a release to a server over SSH: the idle slot gets the release, \
         is health-checked, then traffic switches; the old slot keeps running for a switch back",
    )
    .key(ConfigKey::required(
        "target",
        "The [ssh.NAME] host to deploy to (granted with `ssh = [NAME]`)",
    ))
    .key(ConfigKey::required(
        "base",
        "Remote directory of the deploy (absolute, or relative to the remote user's home): \
         releases/, blue, green, live, <slot>.pid, <slot>.log",
    ))
    .key(ConfigKey::optional_no_default(
        "release",
        "Workspace file to deploy: a .tar.gz/.tgz (unpacked) or a single file (mode 755); \
         required unless `image`",
    ))
    .key(ConfigKey::optional_no_default(
        "version",
        "Release id ([A-Za-z0-9._-]+); default build-<build number>",
    ))
    .key(ConfigKey::optional_no_default(
        "image",
        "Activate this release id, already on the server, instead of uploading \
         (what a rollback sets, from `previous-image`)",
    ))
    .key(ConfigKey::required(
        "ports",
        "{ blue = N, green = M }: each slot's port (distinct)",
    ))
    .key(ConfigKey::required(
        "start",
        "Command starting the app in the slot's release directory, with PORT set; \
         the plugin detaches it",
    ))
    .key(ConfigKey::required(
        "health",
        format!(
            "{{ url = \"http://host:{{port}}/health\", timeout = \"{}\", \
             interval = \"{}\", body-contains }}: 2xx (and the text) means healthy",
            config::DEFAULT_HEALTH_TIMEOUT,
            config::DEFAULT_HEALTH_INTERVAL
        ),
    ))
    .key(ConfigKey::optional_no_default(
        "switch",
        "Remote command moving traffic ({port}, {slot} filled in), run in base; \
         without it only the `live` file switches",
    ))
    .key(ConfigKey::optional(
        "keep",
        "Releases kept on the server (those a slot uses are never pruned)",
        config::DEFAULT_KEEP.to_string(),
    ))
    .capability("ssh")
    .capability("http")
}

impl Stage for SshDeploy {
    fn describe() -> PluginInfo {
        info()
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        ssh_deploy_stage(&ctx, &mut HostEnv::default())
    }
}

stage_sdk::export_stage!(SshDeploy);
