//! Docker engine access for a stage. The host owns the engine; a stage asks
//! it to build, tag, push, run and manage containers, and every call is
//! checked against `grants.docker` (see [`policy`]) before it reaches the
//! engine (see [`engine`]).
//!
//! Containers run as the workspace owner (never root without the `root`
//! grant), with no capabilities, `no-new-privileges`, memory, CPU and pid
//! limits, the workspace as their only mount and ports on 127.0.0.1 only.
//! A build reads only the base images the stage is granted ([`dockerfile`]),
//! its context is streamed with a size limit ([`context`]), and a secret
//! never goes into a build arg. Every text handed back to the plugin passes
//! the stage's masker on the way out ([`DockerCap::audited`]).
pub mod context;
pub mod dockerfile;
pub mod engine;
pub mod grant;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::caps::audit::Audit;
use crate::caps::capability::{Cap, Capability, GrantCx, StageEnv};
use crate::caps::denied;
use crate::caps::log::StageLog;
use crate::caps::secrets::{contains_reference, Masker, SecretsCap};
use crate::wit::ci::stage::docker::{
    BuildRequest, BuildResult, ContainerInfo, ContainerSpec, Host, MountMode, PushResult,
    RunRequest, RunResult,
};
use crate::wit::{CapError, Denial};
use engine::ContainerRequest;
pub use engine::DockerEngine;
use policy::{plain_text, DockerPolicy, MANAGED_LABEL};

/// A container `run` without its own timeout gets this one (the stage's
/// own timeout still applies on top).
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Why a secret may not be a build arg, and what to do instead.
const BUILD_ARG_SECRET: &str = "a build arg is stored in the image's history (`docker history` shows it to anyone who can pull the image), so the host refuses secrets there. Use the secret where it is needed at run time instead (`${secret:NAME}` in a container's env), or keep it out of the build. BuildKit secret mounts (`RUN --mount=type=secret`) would keep it out of the image, but this engine builds with the legacy builder, which has none";

pub struct DockerCap {
    policy: DockerPolicy,
    engine: DockerEngine,
    secrets: Arc<SecretsCap>,
    log: StageLog,
    run_id: String,
    audit: Audit,
}

type R<T> = wasmtime::Result<Result<T, CapError>>;

impl Capability for DockerCap {
    const NAME: &'static str = "docker";
    type Raw = grant::RawDocker;
    type Grant = grant::DockerGrants;
    type Decls = ();

    fn compile(raw: &Self::Raw, _: &(), cx: &mut GrantCx<'_>) -> Self::Grant {
        grant::compile(cx, raw)
    }

    fn covers(g: &Self::Grant, part: Option<&str>) -> bool {
        match part {
            None => *g != Self::Grant::default(),
            Some("build") => !g.build.is_empty(),
            Some("run") => !g.run.is_empty(),
            Some("tag") => !g.tag.is_empty(),
            Some("push") => !g.push.is_empty(),
            Some("base") => !g.base.is_empty(),
            Some("containers") => !g.containers.is_empty(),
            Some("ports") => !g.ports.is_empty(),
            Some(_) => false,
        }
    }

    /// Building, tagging and scanning stay in the engine; pushing and
    /// containers (which may reach anything) do not.
    fn reaches_outside(g: &Self::Grant) -> bool {
        !g.push.is_empty() || !g.run.is_empty() || !g.containers.is_empty()
    }

    fn hint(part: Option<&str>) -> String {
        format!("grants.docker = {{ {} = [...] }}", part.unwrap_or("run"))
    }

    fn link<T: Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        crate::wit::ci::stage::docker::add_to_linker::<_, Cap<Self>>(linker, get)
    }

    fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self> {
        let policy = DockerPolicy::new(env.stage, &env.grants.docker, env.workspace.clone())
            .with_stage_memory(env.memory);
        Ok(DockerCap::new(
            policy,
            env.shared.docker.clone(),
            env.secrets_cap.clone(),
            env.log.clone(),
            env.run_id,
        )
        .with_audit(env.audit.clone()))
    }
}

/// A value handed back to the plugin, with every text in it masked.
trait Masked {
    fn masked(self, m: &Masker) -> Self;
}

impl Masked for () {
    fn masked(self, _: &Masker) -> Self {}
}

impl Masked for String {
    fn masked(self, m: &Masker) -> Self {
        m.mask(&self)
    }
}

impl<T: Masked> Masked for Option<T> {
    fn masked(self, m: &Masker) -> Self {
        self.map(|v| v.masked(m))
    }
}

impl<T: Masked> Masked for Vec<T> {
    fn masked(self, m: &Masker) -> Self {
        self.into_iter().map(|v| v.masked(m)).collect()
    }
}

impl<A: Masked, B: Masked> Masked for (A, B) {
    fn masked(self, m: &Masker) -> Self {
        (self.0.masked(m), self.1.masked(m))
    }
}

impl Masked for BuildResult {
    fn masked(self, m: &Masker) -> Self {
        BuildResult {
            image_id: self.image_id.masked(m),
            log_tail: self.log_tail.masked(m),
        }
    }
}

impl Masked for PushResult {
    fn masked(self, m: &Masker) -> Self {
        PushResult {
            digest: self.digest.masked(m),
        }
    }
}

impl Masked for RunResult {
    fn masked(self, m: &Masker) -> Self {
        RunResult {
            output: self.output.masked(m),
            ..self
        }
    }
}

impl Masked for ContainerInfo {
    fn masked(self, m: &Masker) -> Self {
        ContainerInfo {
            id: self.id.masked(m),
            name: self.name.masked(m),
            image: self.image.masked(m),
            state: self.state.masked(m),
            running: self.running,
            health: self.health.masked(m),
            ports: self.ports,
            labels: self.labels.masked(m),
            address: self.address.masked(m),
        }
    }
}

impl Masked for CapError {
    fn masked(self, m: &Masker) -> Self {
        match self {
            CapError::Denied(d) => CapError::Denied(Denial {
                stage: d.stage,
                capability: d.capability,
                target: d.target.masked(m),
            }),
            CapError::Invalid(s) => CapError::Invalid(s.masked(m)),
            CapError::Limit(s) => CapError::Limit(s.masked(m)),
            CapError::Failed(s) => CapError::Failed(s.masked(m)),
            CapError::Unsupported(s) => CapError::Unsupported(s.masked(m)),
            CapError::Remote(mut r) => {
                r.code = r.code.masked(m);
                r.message = r.message.masked(m);
                CapError::Remote(r)
            }
        }
    }
}

/// `cmd arg 'two words'`: the command as one unambiguous line.
fn shown_command(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

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

    /// Every result goes back to the plugin through here: masked with the
    /// stage's masker (values, errors, log tails, container output,
    /// inspect output), and recorded in the audit trail.
    fn audited<T: Masked>(
        &self,
        op: &str,
        target: &str,
        r: Result<T, CapError>,
        ok: impl FnOnce(&T) -> String,
    ) -> R<T> {
        let m = self.secrets.masker();
        let r = r.map(|v| v.masked(m)).map_err(|e| e.masked(m));
        self.audit.record(&format!("docker.{op}"), target, &r, ok);
        Ok(r)
    }

    fn stage(&self) -> &str {
        &self.policy.stage
    }

    /// Whether `text` holds the value of one of the run's secrets.
    fn holds_secret(&self, text: &str) -> bool {
        let m = self.secrets.masker();
        !m.is_empty() && m.mask(text) != text
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

    /// Build args: plain names, no secrets (not by reference, not by value).
    fn build_args(&self, args: Vec<(String, String)>) -> Result<HashMap<String, String>, CapError> {
        args.into_iter()
            .map(|(k, v)| {
                plain_text("a build arg name", &k, false)?;
                if k.is_empty() || k.contains('=') {
                    return Err(CapError::Invalid(format!("bad build arg name `{k}`")));
                }
                plain_text(&format!("build arg `{k}`"), &v, true)?;
                if contains_reference(&v) {
                    return Err(CapError::Invalid(format!(
                        "build arg `{k}` names a secret (`${{secret:…}}`): {BUILD_ARG_SECRET}"
                    )));
                }
                if self.holds_secret(&v) {
                    return Err(CapError::Invalid(format!(
                        "build arg `{k}` holds the value of a secret: {BUILD_ARG_SECRET}"
                    )));
                }
                Ok((k, v))
            })
            .collect()
    }

    async fn build(&self, req: BuildRequest) -> Result<BuildResult, CapError> {
        let image = self.policy.build_image(&req.image)?;
        self.policy.labels(&req.labels)?;
        if let Some((k, _)) = req.labels.iter().find(|(_, v)| self.holds_secret(v)) {
            return Err(CapError::Invalid(format!(
                "label `{k}` holds the value of a secret: labels are stored in the image for anyone who can pull it"
            )));
        }
        let build_args = self.build_args(req.build_args)?;
        let context = self
            .policy
            .build_context(&req.context, req.dockerfile.as_deref())?;
        if self.holds_secret(&context.text) {
            return Err(CapError::Invalid(format!(
                "the Dockerfile `{}` holds the value of a secret: it would be stored in the image's history",
                context.dockerfile
            )));
        }
        let bases = dockerfile::external_images(&context.text, &build_args)
            .map_err(|e| CapError::Invalid(format!("`{}`: {e}", context.dockerfile)))?;
        for b in &bases {
            self.policy.base_image(b)?;
        }
        let mut labels: HashMap<String, String> = req.labels.into_iter().collect();
        labels.extend(self.host_labels());
        let docker = self.engine.client().await?;
        let (image_id, log_tail) = engine::build(
            docker,
            engine::Build {
                context,
                image: &image,
                build_args,
                labels,
                limits: self.policy.limits(),
                context_limit: self.policy.context_limit(),
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
                plain_text("the auth secret name", &name, false)?;
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

    fn command(command: &[String], workdir: Option<&str>) -> Result<(), CapError> {
        for (i, a) in command.iter().enumerate() {
            plain_text(&format!("command argument {}", i + 1), a, false)?;
        }
        if let Some(w) = workdir {
            plain_text("the working directory", w, false)?;
        }
        Ok(())
    }

    /// Say in the stage log what a container runs as and with.
    fn note_limits(&self, name: &str, mount: Option<MountMode>) {
        let limits = self.policy.limits();
        self.log
            .append_external("host", &format!("container {name}: {limits}"));
        if mount == Some(MountMode::ReadWrite) && self.policy.workspace_root_owned() {
            self.log.append_external(
                "host",
                &format!(
                    "the workspace belongs to root and containers never run as root without `grants.docker.root`: this one runs as {}:{} and cannot write it",
                    limits.uid, limits.gid
                ),
            );
        }
    }

    async fn run(&self, req: RunRequest) -> Result<RunResult, CapError> {
        self.policy.run_image(&req.image)?;
        self.policy.privileges("run", &req.privileges)?;
        Self::command(&req.command, req.workdir.as_deref())?;
        let bind = self.policy.workspace_mount("run", req.workspace)?;
        let env = self.expand_env(req.env)?;
        let timeout = req
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_RUN_TIMEOUT);
        let docker = self.engine.client().await?;
        let name = self.container_name();
        self.note_limits(&name, Some(req.workspace));
        let r = engine::run(
            &self.engine,
            docker,
            ContainerRequest {
                name,
                image: req.image,
                command: req.command,
                env,
                workdir: req.workdir,
                bind,
                ports: vec![],
                labels: self.host_labels(),
                limits: self.policy.limits(),
            },
            timeout,
            &self.log,
        )
        .await?;
        Ok(RunResult {
            exit_code: r.exit_code,
            output: r.output,
            timed_out: r.timed_out,
        })
    }

    /// `${secret:NAME}` in a container's environment is filled in by the host.
    fn expand_env(&self, env: Vec<(String, String)>) -> Result<Vec<(String, String)>, CapError> {
        env.into_iter()
            .map(|(k, v)| {
                plain_text("an environment variable name", &k, false)?;
                if k.is_empty() || k.contains('=') {
                    return Err(CapError::Invalid(format!(
                        "bad environment variable name `{k}`"
                    )));
                }
                plain_text(&format!("environment variable `{k}`"), &v, true)?;
                Ok((k, self.secrets.expand(&v)?))
            })
            .collect()
    }

    async fn create(&self, spec: ContainerSpec) -> Result<String, CapError> {
        self.policy.container("create", &spec.name)?;
        self.policy.run_image(&spec.image)?;
        self.policy.privileges("create", &spec.privileges)?;
        self.policy.labels(&spec.labels)?;
        Self::command(&spec.command, None)?;
        for p in &spec.ports {
            self.policy.port("create", p.host_port)?;
        }
        let mut labels: HashMap<String, String> = spec.labels.into_iter().collect();
        labels.extend(self.host_labels());
        let env = self.expand_env(spec.env)?;
        let docker = self.engine.client().await?;
        self.note_limits(&spec.name, None);
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
                limits: self.policy.limits(),
            },
        )
        .await
    }
}

impl Host for DockerCap {
    async fn build(&mut self, req: BuildRequest) -> R<BuildResult> {
        let target = format!("{} (context {})", req.image, req.context);
        let limits = self.policy.limits().build_summary();
        let r = DockerCap::build(self, req).await;
        self.audited("build", &target, r, |b| {
            format!("image {} ({limits})", b.image_id)
        })
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
        let target = format!("{} {}", req.image, shown_command(&req.command));
        let limits = self.policy.limits().summary();
        let r = DockerCap::run(self, req).await;
        self.audited("run", target.trim_end(), r, |x| {
            if x.timed_out {
                format!("timed out ({limits})")
            } else {
                format!("exit {} ({limits})", x.exit_code)
            }
        })
    }
    async fn create(&mut self, spec: ContainerSpec) -> R<String> {
        let target = format!("{} ({})", spec.name, spec.image);
        let limits = self.policy.limits().summary();
        let r = DockerCap::create(self, spec).await;
        self.audited("create", &target, r, |id| {
            format!("id {} ({limits})", &id[..id.len().min(12)])
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
            plain_text("the label filter", &label, false)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::secrets::SecretStore;
    use crate::wit::ci::stage::types::RemoteError;

    #[test]
    fn commands_are_shown_unambiguously() {
        let c = |a: &[&str]| shown_command(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            c(&["/bin/sh", "-c", "echo hi; rm -rf /"]),
            "/bin/sh -c 'echo hi; rm -rf /'"
        );
        assert_eq!(c(&["a", "", "it's"]), r"a '' 'it'\''s'");
    }

    #[test]
    fn everything_returned_is_masked() {
        let m = SecretStore::from_values([("t".to_string(), "hunter2-token".to_string())])
            .masker()
            .clone();
        let e = CapError::Remote(RemoteError {
            service: "docker".into(),
            status: Some(500),
            code: "ERROR".into(),
            message: "bad hunter2-token".into(),
            transient: false,
        })
        .masked(&m);
        assert!(matches!(e, CapError::Remote(r) if r.message == "bad ***"));
        let b = BuildResult {
            image_id: "sha256:x".into(),
            log_tail: "Step 2: hunter2-token".into(),
        }
        .masked(&m);
        assert_eq!(b.log_tail, "Step 2: ***");
        let r = RunResult {
            exit_code: 0,
            output: "hunter2-token\n".into(),
            timed_out: false,
        }
        .masked(&m);
        assert_eq!(r.output, "***\n");
        let i = ContainerInfo {
            id: "x".into(),
            name: "n".into(),
            image: "i".into(),
            state: "running".into(),
            running: true,
            health: None,
            ports: vec![],
            labels: vec![("k".into(), "hunter2-token".into())],
            address: None,
        }
        .masked(&m);
        assert_eq!(i.labels[0].1, "***");
        let d = CapError::Denied(Denial {
            stage: "s".into(),
            capability: "docker.run".into(),
            target: "x hunter2-token".into(),
        })
        .masked(&m);
        assert!(matches!(d, CapError::Denied(d) if d.target == "x ***"));
    }
}
