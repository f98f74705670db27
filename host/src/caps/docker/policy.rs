//! What a stage may ask of the Docker engine: its `grants.docker`, checked
//! on every call before anything reaches the engine. Pure: no engine here.
use std::path::PathBuf;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::caps::denied;
use crate::caps::paths::{existing as inside, Resolve};
use crate::pipeline::{DockerGrants, PortRange};
use crate::runtime::bindings::ci::stage::docker::{MountMode, Privileges};
use crate::runtime::bindings::CapError;

/// Labels the host puts on every container it creates; plugins cannot set them.
pub const LABEL_PREFIX: &str = "pipeline-host.";
pub const MANAGED_LABEL: &str = "pipeline-host.managed";

/// Image patterns. A pattern with a tag part (`repo:tag*`) is matched
/// against `repository:tag`; one without is matched against the repository,
/// so `127.0.0.1:5000/app` allows every tag of that repository.
#[derive(Clone)]
pub struct ImagePatterns {
    with_tag: GlobSet,
    repo_only: GlobSet,
}

fn glob_set<'a>(patterns: impl Iterator<Item = &'a String>) -> Result<GlobSet, globset::Error> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(GlobBuilder::new(p).literal_separator(false).build()?);
    }
    b.build()
}

impl ImagePatterns {
    pub fn new(patterns: &[String]) -> Result<Self, globset::Error> {
        let (with_tag, repo_only): (Vec<&String>, Vec<&String>) =
            patterns.iter().partition(|p| has_tag(p));
        Ok(Self {
            with_tag: glob_set(with_tag.into_iter())?,
            repo_only: glob_set(repo_only.into_iter())?,
        })
    }

    pub fn allows(&self, r: &ImageRef) -> bool {
        self.repo_only.is_match(&r.repository)
            || self.with_tag.is_match(format!(
                "{}:{}",
                r.repository,
                r.tag.as_deref().unwrap_or("latest")
            ))
    }
}

/// `host:port/path` has a `:` before the last `/`: that one is no tag.
fn has_tag(reference: &str) -> bool {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.contains(':')
}

/// An image reference split into repository, tag and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Accepts the reference grammar's characters only, so a reference can
    /// never be mistaken for an engine option or a path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 255 {
            return Err("an image reference must be 1 to 255 characters".into());
        }
        if s.starts_with(['-', '/', '.', ':']) || s.contains("..") || s.contains("//") {
            return Err(format!("`{s}` is not an image reference"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c)))
        {
            return Err(format!("`{s}` is not an image reference (character `{c}`)"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        let (repository, tag) = if has_tag(rest) {
            let (r, t) = rest.rsplit_once(':').expect("has_tag found a colon");
            (r.to_string(), Some(t.to_string()))
        } else {
            (rest.to_string(), None)
        };
        if repository.is_empty() || repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "`{s}`: the repository must be non-empty and lower case"
            ));
        }
        if tag
            .as_deref()
            .is_some_and(|t| t.is_empty() || t.len() > 128)
        {
            return Err(format!("`{s}`: bad tag"));
        }
        Ok(Self {
            repository,
            tag,
            digest,
        })
    }

    /// Registry host of the repository, when it names one.
    pub fn registry(&self) -> Option<&str> {
        let first = self.repository.split('/').next()?;
        (self.repository.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost"))
            .then_some(first)
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

pub struct DockerPolicy {
    pub stage: String,
    build: ImagePatterns,
    run: ImagePatterns,
    tag: ImagePatterns,
    push: ImagePatterns,
    containers: GlobSet,
    ports: Vec<PortRange>,
    /// The workspace on the host, canonical, and whether it is writable.
    pub workspace: Option<(PathBuf, bool)>,
    any: bool,
}

impl DockerPolicy {
    pub fn new(
        stage: &str,
        g: &DockerGrants,
        workspace: Option<(PathBuf, bool)>,
    ) -> Result<Self, String> {
        let bad =
            |what: &str, e: globset::Error| format!("bad `grants.docker.{what}` pattern: {e}");
        Ok(Self {
            stage: stage.to_string(),
            build: ImagePatterns::new(&g.build).map_err(|e| bad("build", e))?,
            run: ImagePatterns::new(&g.run).map_err(|e| bad("run", e))?,
            tag: ImagePatterns::new(&g.tag).map_err(|e| bad("tag", e))?,
            push: ImagePatterns::new(&g.push).map_err(|e| bad("push", e))?,
            containers: glob_set(g.containers.iter()).map_err(|e| bad("containers", e))?,
            ports: g.ports.clone(),
            workspace,
            any: *g != DockerGrants::default(),
        })
    }

    /// Whether the stage has any docker grant at all.
    pub fn granted(&self) -> bool {
        self.any
    }

    fn deny(&self, op: &str, target: impl Into<String>) -> CapError {
        denied(&self.stage, &format!("docker.{op}"), target)
    }

    fn image(&self, op: &str, set: &ImagePatterns, image: &str) -> Result<ImageRef, CapError> {
        let r = ImageRef::parse(image).map_err(CapError::Invalid)?;
        if !set.allows(&r) {
            return Err(self.deny(op, image));
        }
        Ok(r)
    }

    pub fn build_image(&self, image: &str) -> Result<ImageRef, CapError> {
        self.image("build", &self.build, image)
    }
    pub fn run_image(&self, image: &str) -> Result<ImageRef, CapError> {
        self.image("run", &self.run, image)
    }
    pub fn tag_target(&self, image: &str) -> Result<ImageRef, CapError> {
        self.image("tag", &self.tag, image)
    }
    pub fn push_image(&self, image: &str) -> Result<ImageRef, CapError> {
        self.image("push", &self.push, image)
    }

    /// A tag's source must be one of the stage's own images (one it may
    /// build, run, tag or push), so it cannot relabel someone else's image
    /// into a repository it may push.
    pub fn tag_source(&self, image: &str) -> Result<ImageRef, CapError> {
        let r = ImageRef::parse(image).map_err(CapError::Invalid)?;
        if [&self.build, &self.run, &self.tag, &self.push]
            .iter()
            .any(|s| s.allows(&r))
        {
            Ok(r)
        } else {
            Err(self.deny("tag", format!("{image} (source)")))
        }
    }

    pub fn container(&self, op: &str, name: &str) -> Result<(), CapError> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(CapError::Invalid(format!(
                "`{name}` is not a container name"
            )));
        }
        if !self.containers.is_match(name) {
            return Err(self.deny(op, name));
        }
        Ok(())
    }

    pub fn port(&self, op: &str, port: u16) -> Result<(), CapError> {
        if self.ports.iter().any(|r| r.contains(port)) {
            Ok(())
        } else {
            Err(self.deny(op, format!("host port {port}")))
        }
    }

    /// Plugins may not set the host's own labels.
    pub fn labels(&self, labels: &[(String, String)]) -> Result<(), CapError> {
        match labels.iter().find(|(k, _)| k.starts_with(LABEL_PREFIX)) {
            Some((k, _)) => Err(CapError::Invalid(format!(
                "label `{k}` is reserved for the host"
            ))),
            None => Ok(()),
        }
    }

    /// Refuse every engine privilege: the host never offers them.
    pub fn privileges(&self, op: &str, p: &Privileges) -> Result<(), CapError> {
        if p.privileged {
            return Err(self.deny(op, "privileged mode"));
        }
        if let Some(n) = p.network.as_deref() {
            if n != "none" {
                return Err(self.deny(op, format!("network `{n}`")));
            }
        }
        if let Some(c) = p.cap_add.first() {
            return Err(self.deny(op, format!("capability `{c}`")));
        }
        if let Some(d) = p.devices.first() {
            return Err(self.deny(op, format!("device `{d}`")));
        }
        if let Some(m) = p.mounts.first() {
            return Err(self.deny(op, format!("mount `{m}` (only the workspace is mounted)")));
        }
        Ok(())
    }

    /// The bind of the workspace for a container, within the stage's grant.
    pub fn workspace_mount(&self, op: &str, mode: MountMode) -> Result<Option<String>, CapError> {
        let want_rw = match mode {
            MountMode::None => return Ok(None),
            MountMode::ReadOnly => false,
            MountMode::ReadWrite => true,
        };
        match &self.workspace {
            Some((dir, writable)) if *writable || !want_rw => Ok(Some(format!(
                "{}:/workspace:{}",
                dir.display(),
                if want_rw { "rw" } else { "ro" }
            ))),
            Some(_) => Err(denied(
                &self.stage,
                "workspace",
                format!("read-write mount for docker.{op}"),
            )),
            None => Err(denied(
                &self.stage,
                "workspace",
                format!("mount for docker.{op}"),
            )),
        }
    }

    /// Resolve a build context (relative to the workspace) and its
    /// Dockerfile (relative to the context) without leaving the workspace.
    pub fn build_context(
        &self,
        context: &str,
        dockerfile: Option<&str>,
    ) -> Result<(PathBuf, String), CapError> {
        let Some((ws, _)) = &self.workspace else {
            return Err(denied(&self.stage, "workspace", "build context"));
        };
        let ctx = match inside(ws, context) {
            Ok(p) if p.is_dir() => p,
            Ok(_) | Err(Resolve::Missing) => {
                return Err(CapError::Invalid(format!(
                    "no directory `{context}` in the workspace"
                )))
            }
            Err(Resolve::Outside) => {
                return Err(self.deny(
                    "build",
                    format!("context `{context}` outside the workspace"),
                ))
            }
        };
        let dockerfile = dockerfile.unwrap_or("Dockerfile");
        let df = match inside(&ctx, dockerfile) {
            Ok(p) if p.is_file() => p,
            Ok(_) | Err(Resolve::Missing) => {
                return Err(CapError::Invalid(format!(
                    "no Dockerfile at `{dockerfile}` in context `{context}`"
                )))
            }
            Err(Resolve::Outside) => {
                return Err(self.deny(
                    "build",
                    format!("Dockerfile `{dockerfile}` outside the build context"),
                ))
            }
        };
        let rel = df
            .strip_prefix(&ctx)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| dockerfile.to_string());
        Ok((ctx, rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DockerPolicy {
        let g = DockerGrants {
            build: vec!["local/app".into()],
            run: vec!["local/app-test:*".into(), "local/app".into()],
            tag: vec!["127.0.0.1:5000/app".into()],
            push: vec!["127.0.0.1:5000/app".into()],
            containers: vec!["app-*".into()],
            ports: vec![PortRange {
                start: 18000,
                end: 18010,
            }],
        };
        DockerPolicy::new("s", &g, None).unwrap()
    }

    #[test]
    fn references_parse_and_reject_tricks() {
        let r = ImageRef::parse("127.0.0.1:5000/app:1.2").unwrap();
        assert_eq!(r.repository, "127.0.0.1:5000/app");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert_eq!(r.registry(), Some("127.0.0.1:5000"));
        assert_eq!(ImageRef::parse("app").unwrap().registry(), None);
        for bad in [
            "",
            "--privileged",
            "/etc/passwd",
            "a b",
            "App",
            "x:y:z/../q",
            "a;b",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_patterns_with_and_without_tags() {
        let p = policy();
        assert!(p.run_image("local/app-test:latest").is_ok());
        assert!(p.run_image("local/app:anything").is_ok());
        assert!(matches!(
            p.run_image("local/other:1"),
            Err(CapError::Denied(_))
        ));
        assert!(p.push_image("127.0.0.1:5000/app:1.0").is_ok());
        assert!(p.push_image("127.0.0.1:5000/other:1.0").is_err());
        assert!(p.tag_source("local/app:build-1").is_ok());
        assert!(p.tag_source("secret/private:1").is_err());
    }

    #[test]
    fn containers_ports_labels_privileges() {
        let p = policy();
        assert!(p.container("create", "app-blue").is_ok());
        assert!(matches!(
            p.container("create", "db"),
            Err(CapError::Denied(_))
        ));
        assert!(matches!(
            p.container("create", "../x"),
            Err(CapError::Invalid(_))
        ));
        assert!(p.port("create", 18005).is_ok());
        assert!(p.port("create", 80).is_err());
        assert!(p
            .labels(&[("pipeline-host.managed".into(), "true".into())])
            .is_err());
        let mut pr = Privileges {
            privileged: false,
            network: None,
            cap_add: vec![],
            devices: vec![],
            mounts: vec![],
        };
        assert!(p.privileges("run", &pr).is_ok());
        pr.mounts = vec!["/:/host".into()];
        assert!(matches!(p.privileges("run", &pr), Err(CapError::Denied(_))));
        pr.mounts.clear();
        pr.network = Some("host".into());
        assert!(p.privileges("run", &pr).is_err());
        pr.network = None;
        pr.privileged = true;
        assert!(p.privileges("run", &pr).is_err());
    }

    #[test]
    fn build_context_stays_in_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(ws.join("app")).unwrap();
        std::fs::write(ws.join("app/Dockerfile"), "FROM scratch").unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("escape")).unwrap();
        let g = DockerGrants {
            build: vec!["local/app".into()],
            ..Default::default()
        };
        let p = DockerPolicy::new("s", &g, Some((ws.clone(), false))).unwrap();
        let (ctx, df) = p.build_context("app", None).unwrap();
        assert_eq!(ctx, ws.join("app"));
        assert_eq!(df, "Dockerfile");
        assert!(p.build_context("..", None).is_err());
        assert!(p.build_context("/etc", None).is_err());
        assert!(p.build_context("escape", None).is_err());
        assert!(p.build_context("app", Some("../../etc/passwd")).is_err());
        assert!(matches!(
            p.build_context("app", Some("Missing")),
            Err(CapError::Invalid(_))
        ));
        let none = DockerPolicy::new("s", &g, None).unwrap();
        assert!(matches!(
            none.build_context("app", None),
            Err(CapError::Denied(_))
        ));
    }
}
