//! The Docker engine, reached through bollard. Everything here runs only
//! after `policy` allowed the call; this module knows nothing of grants.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters as q;
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::OnceCell;

use super::context::{self, ContextError};
use super::policy::{BuildContext, ContainerLimits, ImageRef, MANAGED_LABEL};
use crate::caps::log::StageLog;
use crate::wit::ci::stage::docker::{ContainerInfo, PortMapping};
use crate::wit::ci::stage::types::RemoteError;
use crate::wit::CapError;

/// Most bytes of container output returned to the plugin (the log has more).
const MAX_RUN_OUTPUT: usize = 256 * 1024;
/// Lines of build output returned with a build result or error.
const BUILD_TAIL_LINES: usize = 40;

/// One connection to the engine per host process, made on first use (a
/// pipeline without docker stages never touches the socket).
#[derive(Clone, Default)]
pub struct DockerEngine {
    client: Arc<OnceCell<Result<Docker, String>>>,
    /// A unix socket to use instead of the local default (`DOCKER_HOST`,
    /// then `/var/run/docker.sock`).
    socket: Option<PathBuf>,
    /// Removals of containers whose stage was cancelled mid-run.
    cleanups: tokio_util::task::TaskTracker,
}

impl DockerEngine {
    pub fn at_socket(socket: PathBuf) -> Self {
        Self {
            socket: Some(socket),
            ..Default::default()
        }
    }

    /// Wait (bounded) for the removal of containers of cancelled stages, so
    /// a cancelled run leaves nothing behind when the process exits.
    pub async fn finish_cleanups(&self, limit: Duration) {
        self.cleanups.close();
        if tokio::time::timeout(limit, self.cleanups.wait())
            .await
            .is_err()
        {
            tracing::warn!("some containers of cancelled stages may not be removed yet");
        }
        self.cleanups.reopen();
    }

    pub async fn client(&self) -> Result<&Docker, CapError> {
        let r = self
            .client
            .get_or_init(|| async {
                let d = match &self.socket {
                    Some(s) => Docker::connect_with_socket(
                        &s.to_string_lossy(),
                        120,
                        bollard::API_DEFAULT_VERSION,
                    ),
                    None => Docker::connect_with_local_defaults(),
                }
                .map_err(|e| format!("cannot connect to the Docker engine: {e}"))?;
                // Debian's engine speaks API 1.41: agree on a version first.
                d.negotiate_version()
                    .await
                    .map_err(|e| format!("cannot reach the Docker engine: {e}"))
            })
            .await;
        r.as_ref().map_err(|e| CapError::Failed(e.clone()))
    }
}

/// Map a bollard error to the contract's error.
pub fn engine_error(e: bollard::errors::Error) -> CapError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => CapError::Remote(RemoteError {
            service: "docker".into(),
            status: Some(status_code),
            code: match status_code {
                400 => "BAD_REQUEST",
                404 => "NOT_FOUND",
                409 => "CONFLICT",
                s if s >= 500 => "SERVER_ERROR",
                _ => "ERROR",
            }
            .into(),
            message,
            transient: status_code >= 500,
        }),
        other => CapError::Failed(format!("Docker engine: {other}")),
    }
}

/// A registry error as the engine reports it (`unauthorized: authentication
/// required`), mapped back to the registry's own code (distribution spec).
pub fn registry_error(message: &str) -> RemoteError {
    let lower = message.to_ascii_lowercase();
    const CODES: &[(&str, &str, u16)] = &[
        ("unauthorized", "UNAUTHORIZED", 401),
        ("denied", "DENIED", 403),
        ("name unknown", "NAME_UNKNOWN", 404),
        ("manifest unknown", "MANIFEST_UNKNOWN", 404),
        ("blob unknown", "BLOB_UNKNOWN", 404),
        ("name invalid", "NAME_INVALID", 400),
        ("tag invalid", "TAG_INVALID", 400),
        ("manifest invalid", "MANIFEST_INVALID", 400),
        ("toomanyrequests", "TOOMANYREQUESTS", 429),
        ("too many requests", "TOOMANYREQUESTS", 429),
        ("unsupported", "UNSUPPORTED", 415),
    ];
    for (needle, code, status) in CODES {
        if lower.starts_with(needle) || lower.contains(&format!(": {needle}")) {
            return RemoteError {
                service: "registry".into(),
                status: Some(*status),
                code: (*code).into(),
                message: message.to_string(),
                transient: *status == 429,
            };
        }
    }
    // "received unexpected HTTP status: 503 Service Unavailable"
    let status = lower
        .split("status: ")
        .nth(1)
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    let unreachable = [
        "connection refused",
        "no such host",
        "i/o timeout",
        "eof",
        "connection reset",
        "dial tcp",
    ]
    .iter()
    .any(|n| lower.contains(n));
    RemoteError {
        service: "registry".into(),
        status,
        code: if unreachable {
            "UNREACHABLE"
        } else {
            "UNKNOWN"
        }
        .into(),
        message: message.to_string(),
        transient: unreachable || status.is_some_and(|s| s >= 500),
    }
}

/// Registry credentials from a secret value: `user:password` or JSON
/// `{"username": .., "password": ..}`.
pub fn credentials(value: &str, registry: Option<&str>) -> anyhow::Result<DockerCredentials> {
    use anyhow::Context;
    let (username, password) = if value.trim_start().starts_with('{') {
        // The value is a secret: the parser's message could quote it.
        let v: serde_json::Value = serde_json::from_str(value)
            .map_err(|_| anyhow::anyhow!("the secret is not valid JSON"))?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        (
            get("username").context("the secret has no `username`")?,
            get("password").context("the secret has no `password`")?,
        )
    } else {
        let (u, p) = value
            .split_once(':')
            .context("expected `user:password` or JSON {\"username\", \"password\"}")?;
        (u.to_string(), p.to_string())
    };
    Ok(DockerCredentials {
        username: Some(username),
        password: Some(password),
        serveraddress: registry.map(str::to_string),
        ..Default::default()
    })
}

pub struct Build<'a> {
    pub context: BuildContext,
    pub image: &'a ImageRef,
    pub build_args: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    /// Memory and CPU of the build's RUN steps.
    pub limits: ContainerLimits,
    /// Largest context sent.
    pub context_limit: u64,
}

/// Build an image from a context streamed to the engine while it is read.
pub async fn build(
    docker: &Docker,
    b: Build<'_>,
    log: &StageLog,
) -> Result<(String, String), CapError> {
    let BuildContext {
        dir,
        dockerfile,
        text,
    } = b.context;
    let (body, packing) = context::stream(dir, dockerfile.clone(), text, b.context_limit);
    let options = build_options(dockerfile, b.image, b.build_args, b.labels, &b.limits);
    let stream = docker.build_image(options, None, Some(bollard::body_try_stream(body)));
    // The stream is dropped when followed: the request is over and the
    // packer stops if it still runs.
    let (tail, outcome) = follow_build(stream, log).await;
    let sent = packing
        .await
        .map_err(|e| CapError::Failed(format!("packing the build context: {e}")))?;
    match sent {
        // Why the context could not be sent is the error, whatever the
        // engine made of the broken request.
        Err(ContextError::Closed) => {}
        Err(e) => return Err(e.into()),
        Ok(sent) if sent.skipped > 0 => log.append_external(
            "host",
            &format!(
                "build context: {} fifos, sockets or devices left out",
                sent.skipped
            ),
        ),
        Ok(_) => {}
    }
    let tail = tail.join("\n");
    match outcome {
        BuildOutcome::Broken(e) => return Err(e),
        BuildOutcome::Failed(e) => {
            return Err(CapError::Failed(format!(
                "build of {} failed: {e}\n{tail}",
                b.image
            )))
        }
        BuildOutcome::Built => {}
    }
    let id = docker
        .inspect_image(&b.image.to_string())
        .await
        .map_err(engine_error)?
        .id
        .unwrap_or_default();
    Ok((id, tail))
}

/// The engine's build request, with no network and the stage's limits.
fn build_options(
    dockerfile: String,
    image: &ImageRef,
    build_args: HashMap<String, String>,
    labels: HashMap<String, String>,
    limits: &ContainerLimits,
) -> q::BuildImageOptions {
    // The engine API takes 32-bit sizes here: at most 2GiB for a build.
    let memory = i32::try_from(limits.memory).unwrap_or(i32::MAX);
    q::BuildImageOptions {
        dockerfile,
        t: Some(image.to_string()),
        rm: true,
        forcerm: true,
        buildargs: Some(build_args),
        labels: Some(labels),
        // Builds get no network: nothing can be fetched or sent from a
        // Dockerfile's RUN steps.
        networkmode: Some("none".into()),
        memory: Some(memory),
        memswap: Some(memory),
        cpuperiod: Some(100_000),
        cpuquota: Some(i32::try_from(limits.nano_cpus / 10_000).unwrap_or(i32::MAX)),
        ..Default::default()
    }
}

/// How a build's stream ended.
enum BuildOutcome {
    Built,
    /// The engine reported an error (the last one is kept).
    Failed(String),
    /// The stream itself broke.
    Broken(CapError),
}

/// The build's output appended to the stage log as it comes; the last
/// [`BUILD_TAIL_LINES`] lines and how it ended.
async fn follow_build(
    mut stream: impl futures::Stream<Item = Result<bollard::models::BuildInfo, bollard::errors::Error>>
        + Unpin,
    log: &StageLog,
) -> (Vec<String>, BuildOutcome) {
    let mut tail: Vec<String> = Vec::new();
    let mut push_tail = |line: &str| {
        tail.push(line.to_string());
        if tail.len() > BUILD_TAIL_LINES {
            tail.remove(0);
        }
    };
    let mut failure = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        log.append_external("build", line);
                        push_tail(line);
                    }
                }
                if let Some(e) = info.error {
                    log.append_external("build", &e);
                    push_tail(&e);
                    failure = Some(e);
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                log.append_external("build", &error);
                push_tail(&error);
                failure = Some(error);
            }
            Err(e) => return (tail, BuildOutcome::Broken(engine_error(e))),
        }
    }
    let outcome = failure.map_or(BuildOutcome::Built, BuildOutcome::Failed);
    (tail, outcome)
}

pub async fn tag(docker: &Docker, source: &ImageRef, target: &ImageRef) -> Result<(), CapError> {
    docker
        .tag_image(
            &source.to_string(),
            Some(q::TagImageOptions {
                repo: Some(target.repository.clone()),
                tag: Some(target.tag.clone().unwrap_or_else(|| "latest".into())),
            }),
        )
        .await
        .map_err(engine_error)
}

/// Push; returns the manifest digest the registry answered.
pub async fn push(
    docker: &Docker,
    image: &ImageRef,
    creds: Option<DockerCredentials>,
    log: &StageLog,
) -> Result<String, CapError> {
    let tag = image.tag.clone().unwrap_or_else(|| "latest".into());
    let mut stream = docker.push_image(
        &image.repository,
        Some(q::PushImageOptions {
            tag: Some(tag),
            ..Default::default()
        }),
        creds,
    );
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(CapError::Remote(registry_error(&error)))
            }
            Err(e) => return Err(engine_error(e)),
        };
        if let Some(e) = info.error {
            return Err(CapError::Remote(registry_error(&e)));
        }
        if let Some(status) = info.status.as_deref() {
            // "<tag>: digest: sha256:… size: 736"
            if let Some(d) = status.split("digest: ").nth(1) {
                digest = d.split_whitespace().next().map(str::to_string);
            }
            if info.progress.is_none() {
                log.append_external("push", status);
            }
        }
    }
    digest.ok_or_else(|| CapError::Failed(format!("push of {image} finished without a digest")))
}

/// Engine-side settings every container gets, whatever the plugin asked:
/// no capabilities at all, `no-new-privileges`, never privileged, no
/// devices, its own IPC namespace, the engine's default bridge network and
/// pid namespace, memory (no swap beyond it), CPU and pid limits, ports on
/// 127.0.0.1 only, and the workspace as the only mount.
fn host_config(
    bind: Option<String>,
    ports: &[PortMapping],
    limits: &ContainerLimits,
) -> HostConfig {
    let port_bindings = (!ports.is_empty()).then(|| {
        ports
            .iter()
            .map(|p| {
                (
                    format!("{}/tcp", p.container_port),
                    Some(vec![PortBinding {
                        // Published on loopback only.
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(p.host_port.to_string()),
                    }]),
                )
            })
            .collect()
    });
    let memory = i64::try_from(limits.memory).unwrap_or(i64::MAX);
    HostConfig {
        binds: bind.map(|b| vec![b]),
        port_bindings,
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(vec![]),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        devices: Some(vec![]),
        ipc_mode: Some("private".into()),
        readonly_rootfs: Some(false),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some(i64::try_from(limits.nano_cpus).unwrap_or(i64::MAX)),
        pids_limit: Some(i64::from(limits.pids)),
        ..Default::default()
    }
}

pub struct ContainerRequest {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub bind: Option<String>,
    pub ports: Vec<PortMapping>,
    pub labels: HashMap<String, String>,
    pub limits: ContainerLimits,
}

pub async fn create(docker: &Docker, r: ContainerRequest) -> Result<String, CapError> {
    let exposed = (!r.ports.is_empty()).then(|| {
        r.ports
            .iter()
            .map(|p| (format!("{}/tcp", p.container_port), HashMap::new()))
            .collect()
    });
    let body = ContainerCreateBody {
        image: Some(r.image),
        cmd: (!r.command.is_empty()).then_some(r.command),
        env: Some(r.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: r.workdir,
        // Never the image's own user: the workspace owner, or root only
        // with the stage's `root` grant.
        user: Some(format!("{}:{}", r.limits.uid, r.limits.gid)),
        labels: Some(r.labels),
        exposed_ports: exposed,
        host_config: Some(host_config(r.bind, &r.ports, &r.limits)),
        ..Default::default()
    };
    let resp = docker
        .create_container(
            Some(q::CreateContainerOptions {
                name: Some(r.name),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(engine_error)?;
    Ok(resp.id)
}

/// Removes a container when dropped unless removed already, so a stage
/// that times out or is cancelled mid-run leaves nothing behind.
struct RemoveOnDrop {
    docker: Docker,
    name: String,
    armed: bool,
    cleanups: tokio_util::task::TaskTracker,
}

impl RemoveOnDrop {
    async fn remove_now(mut self) {
        remove_forced(&self.docker, &self.name).await;
        self.armed = false;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let docker = self.docker.clone();
        let name = std::mem::take(&mut self.name);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.cleanups
                .spawn_on(async move { remove_forced(&docker, &name).await }, &handle);
        }
    }
}

pub async fn remove_forced(docker: &Docker, name: &str) {
    let _ = docker
        .remove_container(
            name,
            Some(q::RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
}

pub struct RunOutcome {
    pub exit_code: i64,
    pub output: String,
    pub timed_out: bool,
}

/// Run a container to completion, streaming its output into the stage log,
/// and always remove it.
pub async fn run(
    engine: &DockerEngine,
    docker: &Docker,
    r: ContainerRequest,
    timeout: Duration,
    log: &StageLog,
) -> Result<RunOutcome, CapError> {
    let name = r.name.clone();
    create(docker, r).await?;
    let guard = RemoveOnDrop {
        docker: docker.clone(),
        name: name.clone(),
        armed: true,
        cleanups: engine.cleanups.clone(),
    };
    docker
        .start_container(&name, None::<q::StartContainerOptions>)
        .await
        .map_err(engine_error)?;
    let mut output = String::new();
    let follow = async {
        let mut logs = docker.logs(
            &name,
            Some(q::LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        let mut partial = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(i) = partial.find('\n') {
                let line: String = partial.drain(..=i).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                log.append_external("container", line);
                if output.len() + line.len() < MAX_RUN_OUTPUT {
                    output.push_str(line);
                    output.push('\n');
                }
            }
        }
        if !partial.is_empty() {
            log.append_external("container", &partial);
            if output.len() + partial.len() < MAX_RUN_OUTPUT {
                output.push_str(&partial);
            }
        }
    };
    let wait = async {
        let mut w = docker.wait_container(&name, None::<q::WaitContainerOptions>);
        match w.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // A non-zero exit arrives as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(engine_error(e)),
            None => Err(CapError::Failed(
                "the engine ended the wait without a status".into(),
            )),
        }
    };
    let both = async { tokio::join!(wait, follow).0 };
    let outcome = match tokio::time::timeout(timeout, both).await {
        Ok(code) => code.map(|exit_code| (exit_code, false)),
        Err(_) => {
            let _ = docker
                .kill_container(&name, None::<q::KillContainerOptions>)
                .await;
            Ok((-1, true))
        }
    };
    guard.remove_now().await;
    let (exit_code, timed_out) = outcome?;
    Ok(RunOutcome {
        exit_code,
        output,
        timed_out,
    })
}

pub async fn inspect(docker: &Docker, name: &str) -> Result<(ContainerInfo, bool), CapError> {
    let c = docker
        .inspect_container(name, None::<q::InspectContainerOptions>)
        .await
        .map_err(engine_error)?;
    let config = c.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let managed = labels.get(MANAGED_LABEL).is_some_and(|v| v == "true");
    let state = c.state.unwrap_or_default();
    let network = c.network_settings.unwrap_or_default();
    let ports = network
        .ports
        .as_ref()
        .map(port_mappings)
        .unwrap_or_default();
    let address = network
        .networks
        .as_ref()
        .and_then(|n| n.get("bridge"))
        .and_then(|b| b.ip_address.clone())
        .filter(|a| !a.is_empty());
    let info = ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        state: state.status.map(|s| s.to_string()).unwrap_or_default(),
        running: state.running.unwrap_or(false),
        health: state.health.and_then(|h| h.status).map(|s| s.to_string()),
        ports,
        labels: sorted(labels),
        address,
    };
    Ok((info, managed))
}

fn sorted(m: HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort();
    v
}

fn port_mappings(m: &HashMap<String, Option<Vec<PortBinding>>>) -> Vec<PortMapping> {
    let mut out = Vec::new();
    for (k, bindings) in m {
        let Some(container_port) = k.split('/').next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        for b in bindings.iter().flatten() {
            if let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse().ok()) {
                out.push(PortMapping {
                    container_port,
                    host_port,
                });
            }
        }
    }
    out.sort_by_key(|p| (p.container_port, p.host_port));
    out.dedup_by_key(|p| (p.container_port, p.host_port));
    out
}

/// Containers with the host's label and `label` (`key` or `key=value`).
pub async fn list(docker: &Docker, label: &str) -> Result<Vec<String>, CapError> {
    let mut filters = HashMap::new();
    let mut labels = vec![format!("{MANAGED_LABEL}=true")];
    if !label.is_empty() {
        labels.push(label.to_string());
    }
    filters.insert("label".to_string(), labels);
    let list = docker
        .list_containers(Some(q::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(engine_error)?;
    Ok(list
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
        .map(|n| n.trim_start_matches('/').to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_keep_the_registry_code() {
        let e = registry_error("unauthorized: authentication required");
        assert_eq!(
            (e.code.as_str(), e.status, e.transient),
            ("UNAUTHORIZED", Some(401), false)
        );
        let e = registry_error("denied: requested access to the resource is denied");
        assert_eq!((e.code.as_str(), e.status), ("DENIED", Some(403)));
        let e = registry_error("received unexpected HTTP status: 503 Service Unavailable");
        assert_eq!((e.status, e.transient), (Some(503), true));
        let e = registry_error("Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused");
        assert_eq!((e.code.as_str(), e.transient), ("UNREACHABLE", true));
    }

    #[test]
    fn credentials_from_secret_values() {
        let c = credentials("ci:pa:ss", Some("127.0.0.1:5000")).unwrap();
        assert_eq!(c.username.as_deref(), Some("ci"));
        assert_eq!(c.password.as_deref(), Some("pa:ss"));
        let c = credentials(r#"{"username":"u","password":"p"}"#, None).unwrap();
        assert_eq!(c.password.as_deref(), Some("p"));
        assert!(credentials("nocolon", None).is_err());
    }
}
