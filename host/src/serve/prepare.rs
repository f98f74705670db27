//! Getting a queued job ready to run, wherever it runs (the server's own
//! dispatcher, or an agent): its source checked out or unpacked into a
//! fresh workspace, its pipeline loaded beneath it, its run options.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::caps::secrets::SecretFiles;
use crate::confined::Origin;
use crate::distribution::{load_resolved_from, LockMode};
use crate::pipeline::Pipeline;
use crate::run::launch::RunControl;
use crate::run::{RunOptions, RunRecord, Status};
use crate::serve::queue::QueuedJob;
use crate::source::archive::{unpack, Limits};
use crate::source::git;

/// Where a job's source comes from, as the server resolved it from its
/// configuration when the run was queued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum JobSource {
    /// A repository: fetch the job's commit from `url`.
    Git { url: String, pipeline: String },
    /// An uploaded archive at `archive` (on the machine that runs it).
    Archive {
        archive: PathBuf,
        pipeline: String,
        max_size: u64,
    },
}

/// What the machine that runs a job decides for it.
pub struct Site<'a> {
    pub state_dir: &'a Path,
    /// Directories of operator-installed plugins (absolute paths allowed).
    pub plugin_dirs: &'a [PathBuf],
    /// Where `{ file = … }` secrets are read from; none: refused.
    pub secrets_dir: Option<&'a Path>,
    pub public_url: Option<&'a str>,
    /// An environment variable no run may see (the server's own secret).
    pub hidden_env: Option<&'a str>,
}

/// Why a run ended before any stage started, for its record.
pub struct Unstarted {
    /// The pipeline's name once known, else the repository's.
    pub pipeline: String,
    pub status: Status,
    pub reason: String,
}

impl Unstarted {
    pub fn failure(pipeline: &str, reason: String) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            status: Status::Failure,
            reason,
        }
    }
}

/// The source in `workspace` (unpacked or checked out) and its pipeline
/// loaded from it.
pub async fn prepare(
    site: &Site<'_>,
    q: &QueuedJob,
    source: &JobSource,
    control: &RunControl,
    workspace: &Path,
) -> Result<Arc<Pipeline>, Unstarted> {
    let job = &q.job;
    if workspace.exists() {
        // Left by an interrupted attempt.
        let _ = tokio::fs::remove_dir_all(workspace).await;
    }
    let pipeline_path = match source {
        JobSource::Archive {
            archive,
            pipeline,
            max_size,
        } => {
            unpack_upload(q, archive, *max_size, workspace).await?;
            pipeline.clone()
        }
        JobSource::Git { url, pipeline } => {
            checkout(q, url, control, workspace).await?;
            pipeline.clone()
        }
    };
    // Everything the pipeline file names is opened beneath the checkout
    // (or the operator's plugin directories), and nothing is written there.
    let origin = Origin::Untrusted {
        root: workspace.to_path_buf(),
        plugin_dirs: site.plugin_dirs.to_vec(),
    };
    let file = workspace.join(&pipeline_path);
    let pipeline = match load_resolved_from(&origin, &file, site.state_dir, LockMode::Normal).await
    {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let reason = relative(&e.to_string(), workspace);
            return Err(Unstarted::failure(&job.repository, reason));
        }
    };
    if let Some(env) = &job.environment {
        if pipeline.environment(env).is_none() {
            let reason = format!(
                "the trigger deploys to `{env}`, which {} does not declare in [environments]",
                pipeline_path
            );
            return Err(Unstarted::failure(&pipeline.name, reason));
        }
    }
    Ok(pipeline)
}

/// An upload's archive unpacked into `workspace`.
async fn unpack_upload(
    q: &QueuedJob,
    archive: &Path,
    max_size: u64,
    workspace: &Path,
) -> Result<(), Unstarted> {
    let repository = &q.job.repository;
    let limits = Limits {
        max_archive_bytes: max_size,
        ..Limits::default()
    };
    let (a, w) = (archive.to_path_buf(), workspace.to_path_buf());
    let unpacked = tokio::task::spawn_blocking(move || unpack(&a, &w, &limits)).await;
    match unpacked {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Unstarted::failure(
            repository,
            format!("the source archive was refused: {e}"),
        )),
        Err(e) => Err(Unstarted::failure(
            repository,
            format!("unpacking the source archive: {e}"),
        )),
    }
}

/// The job's commit checked out into `workspace` (unless the run is
/// cancelled first).
async fn checkout(
    q: &QueuedJob,
    url: &str,
    control: &RunControl,
    workspace: &Path,
) -> Result<(), Unstarted> {
    let job = &q.job;
    let cancelled = control.token();
    let fetched = tokio::select! {
        r = git::checkout(url, &job.sha, job.fetch_ref.as_deref(), workspace) => r,
        _ = cancelled.cancelled() => {
            return Err(Unstarted {
                pipeline: job.repository.clone(),
                status: Status::Cancelled,
                reason: control.reason().unwrap_or_default(),
            });
        }
    };
    if let Err(e) = fetched {
        let reason = format!("checkout of {} failed: {e}", short(&job.sha));
        return Err(Unstarted::failure(&job.repository, reason));
    }
    Ok(())
}

/// The run's options: the job's, with what the running machine decides
/// (its URL, which secrets and environment a run of this source gets).
pub fn run_options(site: &Site<'_>, q: &QueuedJob, workspace: &Path) -> RunOptions {
    let job = &q.job;
    let mut opts = job_options(q, workspace);
    if let Some(base) = site.public_url {
        opts.url = format!("{base}/runs/{}", q.run_id);
    }
    opts.secret_files = match (site.secrets_dir, job.trusted) {
        (_, false) => SecretFiles::Denied("runs of pull requests from forks get no secrets".into()),
        (Some(dir), true) => SecretFiles::Within(dir.to_path_buf()),
        (None, true) => SecretFiles::Denied(
            "this machine has no `secrets-dir`, so file secrets are refused".into(),
        ),
    };
    if !job.trusted {
        // Code from a fork: nothing of the machine's environment.
        opts.env.clear();
    }
    if let Some(var) = site.hidden_env {
        opts.env.remove(var);
    }
    opts
}

/// A record for a run that ended before any stage started.
pub fn unstarted(pipeline: &str, opts: &RunOptions, status: Status, reason: String) -> RunRecord {
    RunRecord {
        status,
        reason: Some(reason),
        ..RunRecord::new(pipeline, opts)
    }
}

/// What a queued job is about, as a run's options (before the running
/// machine's own choices: secrets, environment, URL).
pub fn job_options(q: &QueuedJob, workspace: &Path) -> RunOptions {
    let job = &q.job;
    let mut opts = RunOptions::new(q.run_id.clone(), workspace.to_path_buf());
    opts.build_number = 0;
    opts.commit_sha = job.sha.clone();
    opts.branch = job.branch.clone();
    opts.tag = job.tag.clone();
    opts.event = job.event.clone();
    opts.environment = job.environment.clone();
    opts.no_cache = job.trigger.no_cache;
    opts.trigger = Some(job.trigger.clone());
    opts
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Paths in messages relative to the checkout (its location is the
/// running machine's business).
pub fn relative(message: &str, workspace: &Path) -> String {
    message.replace(&format!("{}/", workspace.display()), "")
}
