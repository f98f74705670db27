//! What a run is about (its trigger, what it builds) and where it runs:
//! the options every way of starting a run fills in.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::caps::log::DEFAULT_LOG_LIMIT;
use crate::caps::secrets::SecretFiles;
use crate::pipeline::Trigger;
use crate::source::archive::SourceArchive;

/// What a run is about (the trigger) and where it runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub id: String,
    pub build_number: u64,
    pub commit_sha: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub event: String,
    pub url: String,
    /// The environment this run deploys to; default: the first
    /// `[environments]` entry whose branch/tag patterns match.
    pub environment: Option<String>,
    /// Run only these stages (the others are skipped, and the selected ones
    /// do not wait for their `needs`): `host rollback` runs one deploy.
    pub only: Option<Vec<String>>,
    /// Keys merged into a stage's `with` (stage → JSON object).
    pub overrides: BTreeMap<String, serde_json::Value>,
    /// Approvals already given (stage → who): `host rollback` is itself a
    /// person's explicit decision.
    pub approved_by: BTreeMap<String, String>,
    /// Directory mounted at `/workspace` for stages granted it.
    pub workspace: PathBuf,
    /// Environment a stage's `env` grant picks names from.
    pub env: BTreeMap<String, String>,
    pub log_limit: usize,
    /// The webhook delivery that asked for the run, kept in its record.
    pub trigger: Option<TriggerInfo>,
    /// Where `{ file = "…" }` secrets may be read from.
    pub secret_files: SecretFiles,
    /// Do not replay cached stages (`host run --no-cache`); their results
    /// are still kept.
    pub no_cache: bool,
}

impl RunOptions {
    pub fn new(id: String, workspace: PathBuf) -> Self {
        Self {
            id,
            build_number: 1,
            commit_sha: String::new(),
            branch: None,
            tag: None,
            event: "push".into(),
            url: String::new(),
            environment: None,
            only: None,
            overrides: BTreeMap::new(),
            approved_by: BTreeMap::new(),
            workspace,
            env: std::env::vars().collect(),
            log_limit: DEFAULT_LOG_LIMIT,
            trigger: None,
            secret_files: SecretFiles::AsWritten,
            no_cache: false,
        }
    }

    pub fn trigger(&self) -> Trigger {
        Trigger {
            branch: self.branch.clone(),
            tag: self.tag.clone(),
            event: self.event.clone(),
        }
    }
}

/// What a webhook delivery said about the change a run builds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TriggerInfo {
    /// `owner/name`, as the delivery named it.
    pub repository: String,
    /// `X-GitHub-Delivery`.
    pub delivery: String,
    /// Who pushed or opened the pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The head commit's message (first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    /// When the head commit was made (RFC 3339, as the delivery said);
    /// none when the delivery did not say (a pull request, an upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<String>,
    /// The source archive the workspace was unpacked from (an upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<SourceArchive>,
    /// A re-run: the run it runs again, and who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_by: Option<String>,
    /// Asked for without the stage cache (a re-run that must run every
    /// stage, as `host run --no-cache` does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
}
