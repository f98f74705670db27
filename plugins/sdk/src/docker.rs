//! The `docker` import: the [`Docker`] port, [`HostDocker`] forwarding it
//! to the host, the generated types, and small helpers. Every call is
//! checked by the host against the stage's `grants.docker`; a refused call
//! returns `CapError::Denied`. Tests use `testing::FakeDocker`.
use crate::bindings::ci::stage::docker as raw;
pub use crate::bindings::ci::stage::docker::*;

/// The `docker` import as a trait, so a plugin's logic runs against the
/// host ([`HostDocker`]) or a fake (`stage_sdk::testing::FakeDocker`).
pub trait Docker {
    fn build(&mut self, req: &BuildRequest) -> Result<BuildResult, CapError>;
    fn tag(&mut self, source: &str, target: &str) -> Result<(), CapError>;
    /// `auth_secret`: the secret holding registry credentials, if any.
    fn push(&mut self, image: &str, auth_secret: Option<&str>) -> Result<PushResult, CapError>;
    fn run(&mut self, req: &RunRequest) -> Result<RunResult, CapError>;
    /// Creates a container; returns its id.
    fn create(&mut self, spec: &ContainerSpec) -> Result<String, CapError>;
    fn start(&mut self, name: &str) -> Result<(), CapError>;
    fn stop(&mut self, name: &str, timeout_secs: Option<u32>) -> Result<(), CapError>;
    fn remove(&mut self, name: &str) -> Result<(), CapError>;
    fn inspect(&mut self, name: &str) -> Result<ContainerInfo, CapError>;
    /// Containers carrying `label`.
    fn list_containers(&mut self, label: &str) -> Result<Vec<ContainerInfo>, CapError>;
}

/// The host's `docker` import.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostDocker;

impl Docker for HostDocker {
    fn build(&mut self, req: &BuildRequest) -> Result<BuildResult, CapError> {
        raw::build(req)
    }
    fn tag(&mut self, source: &str, target: &str) -> Result<(), CapError> {
        raw::tag(source, target)
    }
    fn push(&mut self, image: &str, auth_secret: Option<&str>) -> Result<PushResult, CapError> {
        raw::push(image, auth_secret)
    }
    fn run(&mut self, req: &RunRequest) -> Result<RunResult, CapError> {
        raw::run(req)
    }
    fn create(&mut self, spec: &ContainerSpec) -> Result<String, CapError> {
        raw::create(spec)
    }
    fn start(&mut self, name: &str) -> Result<(), CapError> {
        raw::start(name)
    }
    fn stop(&mut self, name: &str, timeout_secs: Option<u32>) -> Result<(), CapError> {
        raw::stop(name, timeout_secs)
    }
    fn remove(&mut self, name: &str) -> Result<(), CapError> {
        raw::remove(name)
    }
    fn inspect(&mut self, name: &str) -> Result<ContainerInfo, CapError> {
        raw::inspect(name)
    }
    fn list_containers(&mut self, label: &str) -> Result<Vec<ContainerInfo>, CapError> {
        raw::list_containers(label)
    }
}

impl Privileges {
    /// No extra privileges: what every plugin should ask for (the host
    /// refuses anything else).
    pub fn none() -> Self {
        Privileges {
            privileged: false,
            network: None,
            cap_add: Vec::new(),
            devices: Vec::new(),
            mounts: Vec::new(),
        }
    }
}

/// Where the workspace is mounted, in the stage and in containers.
pub const WORKSPACE: &str = "/workspace";

/// Checks a Docker tag against `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Checks a repository name such as `127.0.0.1:5000/demo-app` or
/// `ghcr.io/org/app` (no tag, no digest): an optional registry host, then
/// lower-case path components of `[a-z0-9]` separated by `.`, `_` or `-`.
/// Plugins check early so the error names their `with` key instead of
/// coming back from the engine.
pub fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("must not be empty".into());
    }
    if repo.contains('@') {
        return Err(format!("{repo:?} must not contain a digest"));
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    let first = parts[0];
    if parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost") {
        parts.remove(0);
    }
    if parts.last().is_some_and(|p| p.contains(':')) {
        return Err(format!("{repo:?} must be a repository without a tag"));
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && p.as_bytes()[0].is_ascii_alphanumeric()
            && p.as_bytes()[p.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(format!(
                "{repo:?}: path component {p:?} must be lower-case [a-z0-9] separated by '.', '_' or '-'"
            ));
        }
    }
    Ok(())
}

/// Checks a full reference `[host[:port]/]path:tag` (tag required, no digest).
pub fn validate_reference(image: &str) -> Result<(), String> {
    if image.contains('@') {
        return Err(format!("{image:?} must not contain a digest"));
    }
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    let Some(colon) = image[slash..].rfind(':').map(|i| i + slash) else {
        return Err(format!(
            "{image:?} needs a tag, e.g. \"{image}:build-1\" (the build is tagged with it)"
        ));
    };
    let (repo, tag) = (&image[..colon], &image[colon + 1..]);
    if !is_valid_tag(tag) {
        return Err(format!(
            "{image:?}: tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        ));
    }
    validate_repository(repo).map_err(|e| format!("{image:?}: {e}"))
}
