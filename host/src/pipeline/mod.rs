//! `pipeline.toml`: the model of a pipeline and its validation.
//!
//! Loading goes text → `parse.rs` (serde structs that keep source spans) →
//! `validate.rs` (every semantic check, all problems collected) → `files.rs`
//! (plugin files on disk, only in [`load`]). Every problem becomes a
//! [`Diagnostic`] with `file:line:col` so `host check` can point at it.
//!
//! Glob patterns in `when` use `when.rs` rules: `*` does not cross `/`, `**`
//! does. Plugin entries are paths, `oci://` references or pinned URLs;
//! fetching and pinning remote ones is `crate::distribution`'s job.

mod dag;
mod files;
pub(crate) mod parse;
pub use crate::caps::secrets::SecretSource;
use crate::units;
mod validate;
mod when;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::caps::docker::grant::{DockerGrants, PortRange};
pub use crate::caps::git::GitRemote;
pub use crate::caps::ssh::SshHost;
pub use crate::caps::{Grants, WorkspaceAccess};
pub use crate::confined::Origin;
pub use files::MAX_PLUGIN_BYTES;
pub use units::{parse_duration, parse_size, MAX_DURATION, MAX_SIZE, MIN_SIZE};
pub use when::{compile as when_compile, Trigger, When};

/// Stage timeout when neither the stage nor `[pipeline]` sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Stage memory cap when neither the stage nor `[pipeline]` sets one.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Upper bound for `retries`.
pub const MAX_RETRIES: u32 = 10;

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The file as given to [`load`] / [`parse()`].
    pub file: PathBuf,
    /// Directory of the file; plugin and secret file paths are relative to it.
    pub dir: PathBuf,
    /// Whose file this is: how every file it names is opened.
    pub origin: Origin,
    pub name: String,
    pub default_branch: String,
    /// What a machine must offer to run the pipeline (`[pipeline] labels`).
    pub labels: Vec<String>,
    pub plugins: BTreeMap<String, PluginRef>,
    /// `[trust]`: keys every plugin must be signed by (empty: no signing
    /// required).
    pub trust: Trust,
    pub secrets: BTreeMap<String, SecretSource>,
    /// `[environments]`, in file order (the first that matches a run wins).
    pub environments: Vec<Environment>,
    /// What capabilities declare (`[git.NAME]`, `[ssh.NAME]`), by capability.
    pub declared: crate::caps::Decls,
    /// In file order.
    pub stages: Vec<Stage>,
}

/// A deployment environment: the runs that deploy to it (by branch or tag
/// pattern) and whether its stages wait for a person's approval.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    pub name: String,
    /// Only `branch` and `tag` are used.
    pub when: When,
    pub approval: bool,
    pub approval_timeout: Duration,
    pub location: Location,
}

/// How long an approval waits when the environment does not say.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// One `[plugins]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    pub name: String,
    pub source: PluginSource,
    /// Digest pinned in the pipeline file (`sha256 = "…"`, lowercase hex);
    /// required for URLs.
    pub sha256: Option<String>,
    /// Where the component's bytes are: the file for a path entry; for a
    /// remote entry, its blob in the local cache once resolved (empty
    /// before).
    pub path: PathBuf,
    /// Where the entry's value is, for errors about this plugin.
    pub location: Location,
}

/// Where a plugin's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A file, as written (relative to the pipeline's directory).
    Path(String),
    /// An OCI reference without the scheme: `registry/repo:tag` or
    /// `registry/repo@sha256:…`.
    Oci(String),
    /// An `https://` URL (or `http://` on loopback), always with a digest.
    Url(String),
}

impl PluginSource {
    pub fn is_remote(&self) -> bool {
        !matches!(self, PluginSource::Path(_))
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Path(p) => f.write_str(p),
            PluginSource::Oci(r) => write!(f, "oci://{r}"),
            PluginSource::Url(u) => f.write_str(u),
        }
    }
}

/// `[trust]`: who may have built the plugins this pipeline runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Public keys as written (`ed25519:BASE64`); when not empty, every
    /// plugin must carry a signature by one of them.
    pub signed_by: Vec<String>,
    pub location: Option<Location>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    /// Key into [`Pipeline::plugins`].
    pub plugin: String,
    /// Names of stages that must succeed first, as written (no duplicates).
    pub needs: Vec<String>,
    pub when: When,
    /// The `with` table as JSON; always an object. TOML datetimes become
    /// strings in their TOML spelling.
    pub with: serde_json::Value,
    pub grants: Grants,
    pub timeout: Duration,
    /// Linear memory cap in bytes.
    pub memory: u64,
    pub retries: u32,
    /// Deployment environment name (e.g. `production`), passed to the plugin.
    pub environment: Option<String>,
    /// Workspace files this stage produces; their digests are recorded and
    /// checked before every stage that depends on this one.
    pub artifacts: Vec<String>,
    /// What a machine must offer to run this stage (`host agent`'s
    /// `labels`); the run goes to an agent offering every label of the
    /// pipeline and its stages.
    pub labels: Vec<String>,
    /// A deploy stage this one checks (smoke tests): when this stage
    /// fails, the host runs that stage again with `with.image` set to the
    /// `previous-image` it reported, before anything after this one runs.
    pub rollback: Option<String>,
    /// `cache = { … }`: a run may replay this stage's last successful
    /// result when nothing it depends on changed (`run::stage_cache`).
    pub cache: Option<CacheSpec>,
    /// Location of the stage's `name` value.
    pub location: Location,
}

impl Pipeline {
    /// Every label the pipeline and its stages require, sorted.
    pub fn required_labels(&self) -> Vec<String> {
        let mut l: Vec<String> = self
            .labels
            .iter()
            .chain(self.stages.iter().flat_map(|s| &s.labels))
            .cloned()
            .collect();
        l.sort();
        l.dedup();
        l
    }
}

impl Stage {
    /// The stage deploys (has an environment) or its grants let it push,
    /// send or run containers: what it does cannot be taken back, so an
    /// agent makes sure it still owns the run first.
    pub fn acts_outside(&self) -> bool {
        self.environment.is_some() || self.grants.reach_outside()
    }
}

/// A stage's `cache` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// Glob patterns over the workspace (`*` does not cross `/`, `**` does).
    pub inputs: Vec<String>,
    /// Cached even though the stage acts outside the run (`outside = true`).
    pub outside: bool,
}

/// A position in a pipeline file; line and column are 1-based, the column
/// counts characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PipelineError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl PipelineError {
    pub fn new(mut diagnostics: Vec<Diagnostic>) -> Self {
        // Stable: problems at the same spot keep the order they were found.
        diagnostics.sort_by(|a, b| {
            (a.location.line, a.location.col).cmp(&(b.location.line, b.location.col))
        });
        PipelineError { diagnostics }
    }
}

/// The largest pipeline file the host reads.
pub const MAX_PIPELINE_BYTES: u64 = 1 << 20;

/// Reads, parses and validates the operator's file `path`, including the
/// plugin files on disk.
pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
    load_from(&Origin::Operator, path)
}

/// [`load`] for a file of `origin`: every file it names (itself, plugin
/// files) is opened the way its origin allows.
pub fn load_from(origin: &Origin, path: &Path) -> Result<Pipeline, PipelineError> {
    let text = match origin.read_text(path, MAX_PIPELINE_BYTES) {
        Ok(t) => t,
        Err(e) => {
            return Err(PipelineError::new(vec![Diagnostic {
                location: Location {
                    file: path.to_path_buf(),
                    line: 1,
                    col: 1,
                },
                message: format!("cannot read pipeline file: {e}"),
            }]))
        }
    };
    let (mut pipeline, mut diags) = check(path, &text);
    if let Some(p) = &mut pipeline {
        p.origin = origin.clone();
        diags.extend(files::check_plugin_files(origin, p.plugins.values()));
    }
    match pipeline {
        Some(p) if diags.is_empty() => Ok(p),
        _ => Err(PipelineError::new(diags)),
    }
}

/// Parses and validates `text` as if read from `path`, without touching the
/// disk (plugin files are not checked; see [`load`]).
pub fn parse(path: &Path, text: &str) -> Result<Pipeline, PipelineError> {
    match check(path, text) {
        (Some(p), diags) if diags.is_empty() => Ok(p),
        (_, diags) => Err(PipelineError::new(diags)),
    }
}

/// The model (when the TOML decoded at all) plus every problem found.
fn check(path: &Path, text: &str) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let src = parse::Source::new(path, text);
    match parse::decode(&src) {
        Ok(raw) => {
            let (p, diags) = validate::build(&src, raw);
            (Some(p), diags)
        }
        Err(d) => (None, vec![d]),
    }
}

impl Pipeline {
    /// The environment a run deploys to: the first whose branch/tag
    /// patterns match its trigger.
    pub fn environment_for(&self, trigger: &Trigger) -> Option<&Environment> {
        self.environments.iter().find(|e| {
            let w = &e.when;
            (!w.branch.is_empty() || !w.tag.is_empty()) && w.matches(trigger)
        })
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn plugin(&self, name: &str) -> Option<&PluginRef> {
        self.plugins.get(name)
    }

    /// Where plugin `name` is declared, to report runtime problems with it
    /// (e.g. a component of the wrong world) against the file.
    pub fn location_of_plugin(&self, name: &str) -> Option<&Location> {
        self.plugins.get(name).map(|p| &p.location)
    }

    /// The plugin entry a stage runs.
    pub fn plugin_of(&self, stage: &Stage) -> Option<&PluginRef> {
        self.plugins.get(&stage.plugin)
    }

    /// Stages so that each comes after everything it `needs`; among stages
    /// that are ready at the same time, file order wins. Meant for validated
    /// pipelines (acyclic); any stages left in a cycle come last in file order.
    pub fn topo_order(&self) -> Vec<&Stage> {
        let needs = self.needs_indices();
        dag::topo_order(&needs)
            .into_iter()
            .map(|i| &self.stages[i])
            .collect()
    }

    /// Names of the stages that directly `need` `name`, in file order.
    pub fn dependents(&self, name: &str) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|s| s.needs.iter().any(|n| n == name))
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Names of every stage `name` depends on, directly or through others.
    pub fn ancestors(&self, name: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut todo: Vec<&str> = self
            .stage(name)
            .map(|s| s.needs.iter().map(String::as_str).collect())
            .unwrap_or_default();
        while let Some(n) = todo.pop() {
            if out.contains(&n) {
                continue;
            }
            out.push(n);
            if let Some(s) = self.stage(n) {
                todo.extend(s.needs.iter().map(String::as_str));
            }
        }
        out
    }

    /// Names of every stage that depends on `name` directly or through
    /// others, in file order (what a failure of `name` skips).
    pub fn transitive_dependents(&self, name: &str) -> Vec<&str> {
        let Some(start) = self.stages.iter().position(|s| s.name == name) else {
            return Vec::new();
        };
        let needs = self.needs_indices();
        let hit = dag::reverse_reachable(&needs, start);
        self.stages
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != start && hit[*i])
            .map(|(_, s)| s.name.as_str())
            .collect()
    }

    /// For each stage, the indices of the stages it needs (unknown names
    /// dropped).
    fn needs_indices(&self) -> Vec<Vec<usize>> {
        needs_indices(&self.stages)
    }
}

/// For each stage, the indices of the stages it needs: unknown names are
/// dropped, and of stages with the same name the first wins (the checks
/// report duplicates).
pub(crate) fn needs_indices(stages: &[Stage]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&str, usize> = stages
        .iter()
        .enumerate()
        .rev() // first occurrence wins
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    stages
        .iter()
        .map(|s| {
            s.needs
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect()
        })
        .collect()
}

/// Why a declared path cannot be an artifact.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactPathError {
    #[error("an artifact path must not be empty")]
    Empty,
    #[error("artifact `{0}` must be relative to the workspace")]
    Absolute(String),
    #[error("artifact `{0}` must not contain `..` or `.` parts")]
    NotNormal(String),
}

/// Checks a declared artifact path (by `host check`, and before a recorded
/// path is written anywhere).
pub fn check_artifact_path(path: &str) -> Result<(), ArtifactPathError> {
    let p = Path::new(path);
    if path.trim().is_empty() {
        return Err(ArtifactPathError::Empty);
    }
    if p.is_absolute() {
        return Err(ArtifactPathError::Absolute(path.to_string()));
    }
    if p.components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ArtifactPathError::NotNormal(path.to_string()));
    }
    Ok(())
}
