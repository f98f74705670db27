//! Docker engine access for a stage. The host owns the engine; a stage asks
//! it to build, tag, push, run and manage containers, and every call is
//! checked against `grants.docker` (see [`policy`]) before it reaches the
//! engine (see [`engine`]). Containers get the workspace as their only
//! mount, ports on 127.0.0.1 only, and never privileges.
pub mod dockerfile;
pub mod engine;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::caps::audit::Audit;
use crate::caps::denied;
use crate::caps::log::StageLog;
use crate::caps::secrets::SecretsCap;
use crate::runtime::bindings::ci::stage::docker::{
    BuildRequest, BuildResult, ContainerInfo, ContainerSpec, Host, PushResult, RunRequest,
    RunResult,
};
use crate::runtime::bindings::CapError;
use engine::ContainerRequest;
pub use engine::DockerEngine;
use policy::{DockerPolicy, MANAGED_LABEL};

/// A container `run` without its own timeout gets this one (the stage's
/// own timeout still applies on top).
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub struct DockerCap {
    policy: DockerPolicy,
    engine: DockerEngine,
    secrets: Arc<SecretsCap>,
    log: StageLog,
    run_id: String,
    audit: Audit,
}

type R<T> = wasmtime::Result<Result<T, CapError>>;

impl DockerCap {
    pub fn new(
        policy: DockerPolicy,
        engine: DockerEngine,
        secrets: Arc<SecretsCap>,
        log: StageLog,
        run_id: &str,
    ) -> Self {
        Self {
            policy,
            engine,
            secrets,
            log,
            run_id: run_id.to_string(),
            audit: Audit::default(),
        }
    }

    /// Record every call in this trail.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// Record a finished call and hand its result to the guest.
    fn audited<T>(
        &self,
        op: &str,
        target: &str,
        r: Result<T, CapError>,
        ok: impl FnOnce(&T) -> String,
    ) -> R<T> {
        self.audit.record(&format!("docker.{op}"), target, &r, ok);
        Ok(r)
    }

    fn stage(&self) -> &str {
        &self.policy.stage
    }

    /// The labels every container and image of this stage carries.
    fn host_labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (MANAGED_LABEL.to_string(), "true".to_string()),
            ("pipeline-host.run".to_string(), self.run_id.clone()),
            ("pipeline-host.stage".to_string(), self.stage().to_string()),
        ])
    }

    /// Existing container `name`, if this host manages it and the stage may.
    async fn managed(&self, op: &str, name: &str) -> Result<ContainerInfo, CapError> {
        self.policy.container(op, name)?;
        let docker = self.engine.client().await?;
        let (info, managed) = engine::inspect(docker, name).await?;
        if !managed {
            return Err(denied(
                self.stage(),
                &format!("docker.{op}"),
                format!("{name} (not a container this host created)"),
            ));
        }
        Ok(info)
    }

    async fn build(&self, req: BuildRequest) -> Result<BuildResult, CapError> {
        let image = self.policy.build_image(&req.image)?;
        self.policy.labels(&req.labels)?;
        let (context, dockerfile) = self
            .policy
            .build_context(&req.context, req.dockerfile.as_deref())?;
        let mut labels: HashMap<String, String> = req.labels.into_iter().collect();
        labels.extend(self.host_labels());
        let build_args = req
            .build_args
            .into_iter()
            .map(|(k, v)| Ok((k, self.secrets.expand(&v)?)))
            .collect::<Result<_, CapError>>()?;
        let docker = self.engine.client().await?;
        let (image_id, log_tail) = engine::build(
            docker,
            engine::Build {
                context,
                dockerfile,
                image: &image,
                build_args,
                labels,
            },
            &self.log,
        )
        .await?;
        Ok(BuildResult { image_id, log_tail })
    }

    async fn tag(&self, source: String, target: String) -> Result<(), CapError> {
        let target = self.policy.tag_target(&target)?;
        let source = self.policy.tag_source(&source)?;
        let docker = self.engine.client().await?;
        engine::tag(docker, &source, &target).await
    }

    async fn push(&self, image: String, auth: Option<String>) -> Result<PushResult, CapError> {
        let image = self.policy.push_image(&image)?;
        let creds = match auth {
            None => None,
            Some(name) => {
                let value = self.secrets.usable_value(&name)?;
                Some(engine::credentials(value, image.registry()).map_err(|e| {
                    CapError::Invalid(format!("secret `{name}` is not registry credentials: {e}"))
                })?)
            }
        };
        let docker = self.engine.client().await?;
        let digest = engine::push(docker, &image, creds, &self.log).await?;
        Ok(PushResult { digest })
    }

    fn container_name(&self) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("ph-{}-{}-{}", self.run_id, self.stage(), &id[..8])
    }

    async fn run(&self, req: RunRequest) -> Result<RunResult, CapError> {
        self.policy.run_image(&req.image)?;
        self.policy.privileges("run", &req.privileges)?;
        let bind = self.policy.workspace_mount("run", req.workspace)?;
        let env = self.expand_env(req.env)?;
        let timeout = req
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_RUN_TIMEOUT);
        let docker = self.engine.client().await?;
        let r = engine::run(
            &self.engine,
            docker,
            ContainerRequest {
                name: self.container_name(),
                image: req.image,
                command: req.command,
                env,
                workdir: req.workdir,
                bind,
                ports: vec![],
                labels: self.host_labels(),
            },
            timeout,
            &self.log,
        )
        .await?;
        Ok(RunResult {
            exit_code: r.exit_code,
            output: self.secrets.masker().mask(&r.output),
            timed_out: r.timed_out,
        })
    }

    /// `${secret:NAME}` in a container's environment is filled in by the host.
    fn expand_env(&self, env: Vec<(String, String)>) -> Result<Vec<(String, String)>, CapError> {
        env.into_iter()
            .map(|(k, v)| {
                if k.is_empty() || k.contains('=') {
                    return Err(CapError::Invalid(format!(
                        "bad environment variable name `{k}`"
                    )));
                }
                Ok((k, self.secrets.expand(&v)?))
            })
            .collect()
    }

    async fn create(&self, spec: ContainerSpec) -> Result<String, CapError> {
        self.policy.container("create", &spec.name)?;
        self.policy.run_image(&spec.image)?;
        self.policy.privileges("create", &spec.privileges)?;
        self.policy.labels(&spec.labels)?;
        for p in &spec.ports {
            self.policy.port("create", p.host_port)?;
        }
        let mut labels: HashMap<String, String> = spec.labels.into_iter().collect();
        labels.extend(self.host_labels());
        let env = self.expand_env(spec.env)?;
        let docker = self.engine.client().await?;
        engine::create(
            docker,
            ContainerRequest {
                name: spec.name,
                image: spec.image,
                command: spec.command,
                env,
                workdir: None,
                bind: None,
                ports: spec.ports,
                labels,
            },
        )
        .await
    }
}

impl Host for DockerCap {
    async fn build(&mut self, req: BuildRequest) -> R<BuildResult> {
        let target = format!("{} (context {})", req.image, req.context);
        let r = DockerCap::build(self, req).await;
        self.audited("build", &target, r, |b| format!("image {}", b.image_id))
    }
    async fn tag(&mut self, source: String, target: String) -> R<()> {
        let shown = format!("{source} -> {target}");
        let r = DockerCap::tag(self, source, target).await;
        self.audited("tag", &shown, r, |_| "ok".into())
    }
    async fn push(&mut self, image: String, auth: Option<String>) -> R<PushResult> {
        let target = match &auth {
            Some(secret) => format!("{image} (auth: secret {secret})"),
            None => image.clone(),
        };
        let r = DockerCap::push(self, image, auth).await;
        self.audited("push", &target, r, |p| format!("digest {}", p.digest))
    }
    async fn run(&mut self, req: RunRequest) -> R<RunResult> {
        let target = format!("{} {}", req.image, req.command.join(" "));
        let r = DockerCap::run(self, req).await;
        self.audited("run", target.trim_end(), r, |x| {
            if x.timed_out {
                "timed out".into()
            } else {
                format!("exit {}", x.exit_code)
            }
        })
    }
    async fn create(&mut self, spec: ContainerSpec) -> R<String> {
        let target = format!("{} ({})", spec.name, spec.image);
        let r = DockerCap::create(self, spec).await;
        self.audited("create", &target, r, |id| {
            format!("id {}", &id[..id.len().min(12)])
        })
    }
    async fn start(&mut self, name: String) -> R<()> {
        let r = async {
            self.managed("start", &name).await?;
            let docker = self.engine.client().await?;
            docker
                .start_container(
                    &name,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .map_err(engine::engine_error)
        };
        let r = r.await;
        self.audited("start", &name, r, |_| "ok".into())
    }
    async fn stop(&mut self, name: String, timeout_secs: Option<u32>) -> R<()> {
        let r = async {
            self.managed("stop", &name).await?;
            let docker = self.engine.client().await?;
            docker
                .stop_container(
                    &name,
                    Some(bollard::query_parameters::StopContainerOptions {
                        t: timeout_secs.map(|t| t.min(300) as i32),
                        ..Default::default()
                    }),
                )
                .await
                .map_err(engine::engine_error)
        };
        let r = r.await;
        self.audited("stop", &name, r, |_| "ok".into())
    }
    async fn remove(&mut self, name: String) -> R<()> {
        let r = async {
            self.managed("remove", &name).await?;
            let docker = self.engine.client().await?;
            engine::remove_forced(docker, &name).await;
            Ok(())
        };
        let r = r.await;
        self.audited("remove", &name, r, |_| "ok".into())
    }
    async fn inspect(&mut self, name: String) -> R<ContainerInfo> {
        let r = self.managed("inspect", &name).await;
        self.audited("inspect", &name, r, |c| c.state.clone())
    }
    async fn list_containers(&mut self, label: String) -> R<Vec<ContainerInfo>> {
        let r = async {
            if !self.policy.granted() {
                return Err(denied(self.stage(), "docker.list", label.clone()));
            }
            let docker = self.engine.client().await?;
            let mut out = Vec::new();
            for name in engine::list(docker, &label).await? {
                // Only what this stage could manage by name.
                if self.policy.container("inspect", &name).is_ok() {
                    out.push(engine::inspect(docker, &name).await?.0);
                }
            }
            Ok(out)
        };
        let r = r.await;
        self.audited("list", &label, r, |v| format!("{} containers", v.len()))
    }
}
