//! What a stage may ask of the Docker engine: its `grants.docker`, checked
//! on every call before anything reaches the engine. No engine here; the
//! patterns are the ones compiled when the pipeline was validated
//! ([`crate::grants::image`]), matched as they are.
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::caps::denied;
use crate::caps::docker::grant::DockerGrants;
use crate::confined::{FileError, Root};
use crate::wit::ci::stage::docker::{MountMode, Privileges};
use crate::wit::CapError;

pub use crate::grants::image::ImageRef;

use super::dockerfile::ImageUse;

/// Labels the host puts on every container it creates; plugins cannot set them.
pub const LABEL_PREFIX: &str = "pipeline-host.";
pub const MANAGED_LABEL: &str = "pipeline-host.managed";

/// The user containers run as when the workspace belongs to root or the
/// stage has none: `nobody:nogroup`, owning nothing on the host.
pub const UNPRIVILEGED_ID: u32 = 65534;
/// Container memory when neither the grant nor the stage says (the
/// stage's `memory` defaults to 256MiB too).
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// One CPU.
pub const DEFAULT_NANO_CPUS: u64 = 1_000_000_000;
/// Processes and threads in one container.
pub const DEFAULT_PIDS: u32 = 512;
/// Largest build context the host sends to the engine.
pub const DEFAULT_CONTEXT_LIMIT: u64 = 1 << 30;
/// Largest Dockerfile the host reads.
const MAX_DOCKERFILE: u64 = 1 << 20;

/// What every container of the stage runs as and with. Always applied;
/// shown in the audit trail and the stage log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerLimits {
    pub uid: u32,
    pub gid: u32,
    /// Bytes of memory, swap included (no swap beyond it).
    pub memory: u64,
    pub nano_cpus: u64,
    pub pids: u32,
}

/// `268435456` → `256MiB`.
pub fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}GiB", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{bytes}B")
    }
}

fn cpus_text(nano: u64) -> String {
    let s = format!("{:.2}", nano as f64 / 1e9);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl ContainerLimits {
    /// One line for the audit trail and the log.
    pub fn summary(&self) -> String {
        format!(
            "user {}:{}, memory {}, cpus {}, pids {}",
            self.uid,
            self.gid,
            size_text(self.memory),
            cpus_text(self.nano_cpus),
            self.pids
        )
    }

    /// Limits of a build's RUN steps (the engine offers memory and CPU).
    pub fn build_summary(&self) -> String {
        format!(
            "memory {}, cpus {}",
            size_text(self.memory),
            cpus_text(self.nano_cpus)
        )
    }
}

impl fmt::Display for ContainerLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, no capabilities, no-new-privileges", self.summary())
    }
}

/// A build's context, opened beneath the workspace, and its Dockerfile as
/// the host read and checked it (the engine gets exactly these bytes).
pub struct BuildContext {
    /// The context directory; the tar is made from this handle only.
    pub dir: cap_std::fs::Dir,
    /// The Dockerfile's path in the context (what the engine is told).
    pub dockerfile: String,
    pub text: String,
}

/// Refuse control characters in a request's text: a raw newline would let
/// a request read as two in the audit trail and the log. `multiline` texts
/// (environment and build-arg values) may hold `\n` and `\t`.
pub fn plain_text(what: &str, text: &str, multiline: bool) -> Result<(), CapError> {
    let bad = text.chars().find(|&c| {
        let allowed = c == '\t' || (multiline && c == '\n');
        (c.is_control() && !allowed) || c == '\u{2028}' || c == '\u{2029}'
    });
    match bad {
        None => Ok(()),
        Some(c) => Err(CapError::Invalid(format!(
            "{what} contains the control character {c:?}: refused ({})",
            if multiline {
                "only tabs and newlines may appear in a value"
            } else {
                "a raw newline or control character would hide part of the request in the audit trail"
            }
        ))),
    }
}

/// Where a relative path the plugin named would lead.
enum Rel {
    Ok(PathBuf),
    Outside,
}

/// `rel` with plain components only (`.` for the root itself).
fn relative(rel: &str) -> Rel {
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Rel::Outside
            }
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Rel::Ok(out)
}

pub struct DockerPolicy {
    pub stage: String,
    grants: DockerGrants,
    /// The workspace on the host, canonical, and whether it is writable.
    pub workspace: Option<(PathBuf, bool)>,
    limits: ContainerLimits,
    /// The workspace belongs to root (so containers cannot write it
    /// without the `root` grant).
    root_owned: bool,
    any: bool,
}

/// The workspace owner's uid and gid, unless either is root's; then
/// [`UNPRIVILEGED_ID`]. No workspace: the unprivileged id too.
fn workspace_owner(workspace: Option<&Path>) -> (u32, u32) {
    let unprivileged = |id: u32| if id == 0 { UNPRIVILEGED_ID } else { id };
    match workspace.and_then(|w| std::fs::metadata(w).ok()) {
        Some(m) => (unprivileged(m.uid()), unprivileged(m.gid())),
        None => (UNPRIVILEGED_ID, UNPRIVILEGED_ID),
    }
}

impl DockerPolicy {
    pub fn new(stage: &str, g: &DockerGrants, workspace: Option<(PathBuf, bool)>) -> Self {
        let ws = workspace.as_ref().map(|(p, _)| p.as_path());
        let (uid, gid) = if g.root { (0, 0) } else { workspace_owner(ws) };
        let root_owned = ws
            .and_then(|w| std::fs::metadata(w).ok())
            .is_some_and(|m| m.uid() == 0);
        Self {
            stage: stage.to_string(),
            grants: g.clone(),
            workspace,
            limits: ContainerLimits {
                uid,
                gid,
                memory: g.memory.unwrap_or(DEFAULT_MEMORY),
                nano_cpus: g.nano_cpus.unwrap_or(DEFAULT_NANO_CPUS),
                pids: g.pids.unwrap_or(DEFAULT_PIDS),
            },
            root_owned,
            any: *g != DockerGrants::default(),
        }
    }

    /// Containers get the stage's `memory` unless `grants.docker.memory`
    /// says otherwise.
    pub fn with_stage_memory(mut self, memory: u64) -> Self {
        self.limits.memory = self.grants.memory.unwrap_or(memory);
        self
    }

    /// Whether the stage has any docker grant at all.
    pub fn granted(&self) -> bool {
        self.any
    }

    pub fn limits(&self) -> ContainerLimits {
        self.limits
    }

    /// The workspace belongs to root, and containers do not run as root.
    pub fn workspace_root_owned(&self) -> bool {
        self.root_owned && self.limits.uid != 0
    }

    pub fn context_limit(&self) -> u64 {
        self.grants.context_limit.unwrap_or(DEFAULT_CONTEXT_LIMIT)
    }

    fn deny(&self, op: &str, target: impl Into<String>) -> CapError {
        denied(&self.stage, &format!("docker.{op}"), target)
    }

    fn image(
        &self,
        op: &str,
        set: &crate::grants::image::ImagePatterns,
        image: &str,
    ) -> Result<ImageRef, CapError> {
        let r = ImageRef::parse(image).map_err(|e| CapError::Invalid(e.to_string()))?;
        if !set.allows(&r) {
            return Err(self.deny(op, image));
        }
        Ok(r)
    }

    pub fn build_image(&self, image: &str) -> Result<ImageRef, CapError> {
        self.image("build", &self.grants.build, image)
    }
    pub fn run_image(&self, image: &str) -> Result<ImageRef, CapError> {
        self.image("run", &self.grants.run, image)
    }
    pub fn tag_target(&self, image: &str) -> Result<ImageRef, CapError> {
        self.image("tag", &self.grants.tag, image)
    }
    pub fn push_image(&self, image: &str) -> Result<ImageRef, CapError> {
        self.image("push", &self.grants.push, image)
    }

    /// A tag's source must be one of the stage's own images (one it may
    /// build, run, tag, push, build from or scan), so it cannot relabel
    /// someone else's image into a repository it may push.
    pub fn tag_source(&self, image: &str) -> Result<ImageRef, CapError> {
        let r = ImageRef::parse(image).map_err(|e| CapError::Invalid(e.to_string()))?;
        if self.grants.may_use(&r) {
            Ok(r)
        } else {
            Err(self.deny("tag", format!("{image} (source)")))
        }
    }

    /// An image a Dockerfile reads (`FROM`, `COPY --from`): `scratch` or
    /// one `grants.docker.base` names.
    pub fn base_image(&self, u: &ImageUse) -> Result<(), CapError> {
        if u.image.is_scratch() || self.grants.base.allows(&u.image) {
            Ok(())
        } else {
            Err(self.deny(
                "base",
                format!(
                    "{} ({}, Dockerfile line {})",
                    u.image, u.instruction, u.line
                ),
            ))
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
                "`{}` is not a container name",
                name.escape_debug()
            )));
        }
        if !self.grants.containers.allows(name) {
            return Err(self.deny(op, name));
        }
        Ok(())
    }

    pub fn port(&self, op: &str, port: u16) -> Result<(), CapError> {
        if self.grants.ports.iter().any(|r| r.contains(port)) {
            Ok(())
        } else {
            Err(self.deny(op, format!("host port {port}")))
        }
    }

    /// Plugins may not set the host's own labels, nor put control
    /// characters in any.
    pub fn labels(&self, labels: &[(String, String)]) -> Result<(), CapError> {
        for (k, v) in labels {
            plain_text("a label name", k, false)?;
            plain_text(&format!("label `{k}`"), v, false)?;
            if k.starts_with(LABEL_PREFIX) {
                return Err(CapError::Invalid(format!(
                    "label `{k}` is reserved for the host"
                )));
            }
        }
        Ok(())
    }

    /// Refuse every engine privilege: the host never offers them.
    pub fn privileges(&self, op: &str, p: &Privileges) -> Result<(), CapError> {
        if p.privileged {
            return Err(self.deny(op, "privileged mode"));
        }
        if let Some(n) = p.network.as_deref() {
            if n != "none" {
                return Err(self.deny(op, format!("network `{}`", n.escape_debug())));
            }
        }
        if let Some(c) = p.cap_add.first() {
            return Err(self.deny(op, format!("capability `{}`", c.escape_debug())));
        }
        if let Some(d) = p.devices.first() {
            return Err(self.deny(op, format!("device `{}`", d.escape_debug())));
        }
        if let Some(m) = p.mounts.first() {
            return Err(self.deny(
                op,
                format!(
                    "mount `{}` (only the workspace is mounted)",
                    m.escape_debug()
                ),
            ));
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

    /// Open a build context (relative to the workspace) beneath the
    /// workspace and read its Dockerfile (relative to the context).
    pub fn build_context(
        &self,
        context: &str,
        dockerfile: Option<&str>,
    ) -> Result<BuildContext, CapError> {
        let Some((ws, _)) = &self.workspace else {
            return Err(denied(&self.stage, "workspace", "build context"));
        };
        plain_text("the build context path", context, false)?;
        let dockerfile = dockerfile.unwrap_or("Dockerfile");
        plain_text("the Dockerfile path", dockerfile, false)?;
        let outside = || {
            self.deny(
                "build",
                format!("context `{context}` outside the workspace"),
            )
        };
        let Rel::Ok(ctx_rel) = relative(context) else {
            return Err(outside());
        };
        let missing = || CapError::Invalid(format!("no directory `{context}` in the workspace"));
        let ws_dir = cap_std::fs::Dir::open_ambient_dir(ws, cap_std::ambient_authority())
            .map_err(|e| CapError::Failed(format!("opening the workspace: {e}")))?;
        let dir = ws_dir.open_dir(&ctx_rel).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => missing(),
            io::ErrorKind::PermissionDenied => outside(),
            _ if e.raw_os_error() == Some(40) => outside(),
            _ if e.raw_os_error() == Some(20) => missing(),
            _ => CapError::Failed(format!("opening the build context `{context}`: {e}")),
        })?;
        let df_rel = match relative(dockerfile) {
            Rel::Ok(p) if p != Path::new(".") => p,
            _ => {
                return Err(self.deny(
                    "build",
                    format!("Dockerfile `{dockerfile}` outside the build context"),
                ))
            }
        };
        let root = Root::open(ws, "the workspace")
            .map_err(|e| CapError::Failed(format!("opening the workspace: {e}")))?;
        let text = root
            .read_text(&ctx_rel.join(&df_rel), MAX_DOCKERFILE)
            .map_err(|e| match e {
                FileError::Outside { .. } => self.deny(
                    "build",
                    format!("Dockerfile `{dockerfile}` outside the workspace"),
                ),
                FileError::NotFound { .. } | FileError::NotAFile { .. } => CapError::Invalid(
                    format!("no Dockerfile at `{dockerfile}` in context `{context}`"),
                ),
                FileError::TooLarge { max, .. } => CapError::Limit(format!(
                    "the Dockerfile `{dockerfile}` is larger than {}",
                    size_text(max)
                )),
                FileError::NotText { .. } => {
                    CapError::Invalid(format!("the Dockerfile `{dockerfile}` is not UTF-8 text"))
                }
                FileError::Io { .. } => CapError::Failed(format!("reading the Dockerfile: {e}")),
            })?;
        Ok(BuildContext {
            dir,
            dockerfile: df_rel.to_string_lossy().into_owned(),
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::docker::grant::PortRange;
    use crate::grants::image::{ImagePatterns, NamePatterns};

    fn grants() -> DockerGrants {
        DockerGrants {
            build: ImagePatterns::parse(&["local/app"]).unwrap(),
            run: ImagePatterns::parse(&["local/app-test:*", "local/app"]).unwrap(),
            tag: ImagePatterns::parse(&["127.0.0.1:5000/app"]).unwrap(),
            push: ImagePatterns::parse(&["127.0.0.1:5000/app"]).unwrap(),
            base: ImagePatterns::parse(&["local/base:*"]).unwrap(),
            containers: NamePatterns::parse(&["app-*"]).unwrap(),
            ports: vec![PortRange {
                start: 18000,
                end: 18010,
            }],
            ..Default::default()
        }
    }

    fn policy() -> DockerPolicy {
        DockerPolicy::new("s", &grants(), None)
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
        assert!(matches!(
            p.run_image("local/app\nlocal/other"),
            Err(CapError::Invalid(_))
        ));
        assert!(p.push_image("127.0.0.1:5000/app:1.0").is_ok());
        assert!(p.push_image("127.0.0.1:5000/other:1.0").is_err());
        assert!(p.tag_source("local/app:build-1").is_ok());
        assert!(p.tag_source("local/base:1").is_ok());
        assert!(p.tag_source("secret/private:1").is_err());
    }

    #[test]
    fn base_images_need_a_grant_but_scratch() {
        let p = policy();
        let u = |image: &str| ImageUse {
            line: 1,
            instruction: "FROM",
            image: ImageRef::parse(image).unwrap(),
        };
        assert!(p.base_image(&u("scratch")).is_ok());
        assert!(p.base_image(&u("local/base:1")).is_ok());
        match p.base_image(&u("local/app:1")) {
            Err(CapError::Denied(d)) => {
                assert_eq!(d.capability, "docker.base");
                assert!(d.target.contains("local/app:1 (FROM, Dockerfile line 1)"));
            }
            other => panic!("{other:?}"),
        }
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
        assert!(p.labels(&[("a".into(), "b\nc".into())]).is_err());
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
    fn control_characters_are_refused() {
        assert!(plain_text("x", "echo hi", false).is_ok());
        assert!(plain_text("x", "a\tb", false).is_ok());
        for bad in [
            "a\nb",
            "a\rb",
            "a\u{1b}[2Jb",
            "a\u{0}b",
            "a\u{85}b",
            "a\u{2028}b",
        ] {
            assert!(
                matches!(plain_text("x", bad, false), Err(CapError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(plain_text("x", "line1\nline2", true).is_ok());
        assert!(plain_text("x", "a\rb", true).is_err());
    }

    #[test]
    fn limits_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        std::os::unix::fs::chown(&ws, Some(1234), Some(2345)).unwrap();
        let g = DockerGrants::default();
        let p = DockerPolicy::new("s", &g, Some((ws.clone(), true))).with_stage_memory(128 << 20);
        let l = p.limits();
        assert_eq!((l.uid, l.gid), (1234, 2345));
        assert_eq!(l.memory, 128 << 20);
        assert_eq!((l.nano_cpus, l.pids), (DEFAULT_NANO_CPUS, DEFAULT_PIDS));
        assert_eq!(
            l.to_string(),
            "user 1234:2345, memory 128MiB, cpus 1, pids 512, no capabilities, no-new-privileges"
        );
        // Never root's ids by default.
        std::os::unix::fs::chown(&ws, Some(0), Some(0)).unwrap();
        let p = DockerPolicy::new("s", &g, Some((ws.clone(), true)));
        assert_eq!((p.limits().uid, p.limits().gid), (65534, 65534));
        let p = DockerPolicy::new("s", &g, None);
        assert_eq!((p.limits().uid, p.limits().gid), (65534, 65534));
        // Root only with the grant, and the grant's limits win.
        let g = DockerGrants {
            root: true,
            memory: Some(1 << 30),
            nano_cpus: Some(1_500_000_000),
            pids: Some(64),
            ..Default::default()
        };
        let p = DockerPolicy::new("s", &g, Some((ws, true))).with_stage_memory(128 << 20);
        assert_eq!(
            p.limits().summary(),
            "user 0:0, memory 1GiB, cpus 1.5, pids 64"
        );
    }

    #[test]
    fn build_context_stays_in_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(ws.join("app/docker")).unwrap();
        std::fs::write(ws.join("app/Dockerfile"), "FROM scratch").unwrap();
        std::fs::write(ws.join("app/docker/Dockerfile.prod"), "FROM local/base:1").unwrap();
        std::fs::write(ws.join("secret"), "FROM x").unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("escape")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ws.join("app/Dockerfile.out")).unwrap();
        let g = DockerGrants {
            build: ImagePatterns::parse(&["local/app"]).unwrap(),
            ..Default::default()
        };
        let p = DockerPolicy::new("s", &g, Some((ws.clone(), false)));
        let c = p.build_context("app", None).unwrap();
        assert_eq!(
            (c.dockerfile.as_str(), c.text.as_str()),
            ("Dockerfile", "FROM scratch")
        );
        let c = p
            .build_context("./app/", Some("./docker/Dockerfile.prod"))
            .unwrap();
        assert_eq!(c.dockerfile, "docker/Dockerfile.prod");
        assert_eq!(c.text, "FROM local/base:1");
        assert!(p.build_context(".", Some("app/Dockerfile")).is_ok());
        for (ctx, df) in [
            ("..", None),
            ("/etc", None),
            ("escape", None),
            ("app", Some("../../etc/passwd")),
            ("app", Some("../secret")),
            ("app", Some("/etc/passwd")),
            ("app", Some("Dockerfile.out")),
        ] {
            assert!(
                matches!(p.build_context(ctx, df), Err(CapError::Denied(_))),
                "{ctx} {df:?}"
            );
        }
        for (ctx, df) in [("app", Some("Missing")), ("nope", None), ("app\n", None)] {
            assert!(
                matches!(p.build_context(ctx, df), Err(CapError::Invalid(_))),
                "{ctx} {df:?}"
            );
        }
        let none = DockerPolicy::new("s", &g, None);
        assert!(matches!(
            none.build_context("app", None),
            Err(CapError::Denied(_))
        ));
    }
}
