//! The dispatcher: takes queued runs (at most `concurrency` at once, one
//! per concurrency group), checks the commit out into a fresh workspace,
//! runs the repository's pipeline, and cancels runs a newer push
//! supersedes.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinSet;

use crate::caps::secrets::SecretFiles;
use crate::confined::Origin;
use crate::distribution::{load_resolved_from, LockMode};
use crate::pipeline::Pipeline;
use crate::run::launch::{Launch, LaunchError, RunControl};
use crate::run::{Quiet, RunOptions, RunRecord, RunStore, Status};
use crate::serve::queue::{Queue, QueuedJob};
use crate::serve::ServerState;
use crate::source::archive::{unpack, Limits};
use crate::source::git;

/// A safety net: look at the queue this often even when nothing woke us.
const IDLE_LOOK: Duration = Duration::from_secs(5);

/// At start: put back the runs a previous server left running; record the
/// ones given up. Returns a line for the start-up message.
pub async fn recover(s: &Arc<ServerState>) -> Result<String> {
    let (again, given_up) = s.with_db(|db| Queue::new(db.db()).recover()).await?;
    for id in again {
        mark_queued_again(
            s,
            &id,
            "the server stopped during the run; it runs again from the start",
        )
        .await;
    }
    for q in &given_up {
        let reason = format!(
            "interrupted by a server stop {} times; not run again",
            q.attempts
        );
        record_unstarted(s, q, &q.repository, Status::Failure, reason).await;
    }
    let (queued, _) = s.with_db(|db| Queue::new(db.db()).depth()).await?;
    Ok(format!("{queued} run(s) queued"))
}

/// Cancel running runs that a newer one superseded.
pub fn cancel_running(s: &ServerState, run_ids: &[String], by: &str) {
    let running = s.running.lock();
    for id in run_ids {
        if let Some(c) = running.get(id) {
            c.cancel(format!("superseded by run {by}"));
        }
    }
}

/// Loop until shutdown: start what may start, wait for a wake-up.
pub async fn run(s: Arc<ServerState>) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        while tasks.len() < s.config.concurrency && !s.shutdown.is_cancelled() {
            match s.with_db(|db| Queue::new(db.db()).claim()).await {
                Ok(Some(job)) => {
                    let s2 = s.clone();
                    tasks.spawn(async move { run_job(s2, job).await });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("reading the queue: {e:#}");
                    break;
                }
            }
        }
        tokio::select! {
            _ = s.wake.notified() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = s.shutdown.cancelled() => break,
            _ = tokio::time::sleep(IDLE_LOOK) => {}
        }
    }
    for c in s.running.lock().values() {
        c.cancel("the server stopped; the run is queued to run again at its next start");
    }
    while tasks.join_next().await.is_some() {}
}

async fn run_job(s: Arc<ServerState>, q: QueuedJob) {
    let control = RunControl::new();
    s.running.lock().insert(q.run_id.clone(), control.clone());
    let workspace = s.workspaces.join(&q.run_id);
    let record = execute(&s, &q, &control, &workspace).await;
    s.running.lock().remove(&q.run_id);
    let stopped_by_server = s.shutdown.is_cancelled() && control.is_cancelled();
    let id = q.run_id.clone();
    let done = s
        .with_db(move |db| {
            let queue = Queue::new(db.db());
            if stopped_by_server {
                queue.requeue(&id)
            } else {
                queue.finish(&id)
            }
        })
        .await;
    if let Err(e) = done {
        tracing::error!("run {}: updating the queue: {e:#}", q.run_id);
    }
    if !s.config.keep_workspaces {
        let _ = tokio::fs::remove_dir_all(&workspace).await;
    }
    if let (Some(archive), false) = (&q.job.archive, stopped_by_server) {
        // Ran (or was given up): the upload is no longer needed.
        let _ = tokio::fs::remove_file(archive).await;
    }
    if stopped_by_server {
        mark_queued_again(
            &s,
            &q.run_id,
            "the server stopped during the run; it runs again at its next start",
        )
        .await;
    } else if let Some(r) = record {
        tracing::info!(
            "run {} of {} #{}: {}",
            r.id,
            r.pipeline,
            r.build_number,
            r.status
        );
    }
    s.wake.notify_one();
}

/// A run that goes back to the queue keeps its record (and number), with
/// status `queued` and why.
async fn mark_queued_again(s: &Arc<ServerState>, run_id: &str, reason: &str) {
    let (id, reason) = (run_id.to_string(), reason.to_string());
    let r = s
        .with_db(move |db| {
            if let Some(mut rec) = db.get(&id)? {
                rec.status = Status::Queued;
                rec.reason = Some(reason);
                db.save(&rec)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::error!("run {run_id}: {e:#}");
    }
}

/// Check out, load, run. Every way this can end leaves a run record.
async fn execute(
    s: &Arc<ServerState>,
    q: &QueuedJob,
    control: &RunControl,
    workspace: &Path,
) -> Option<RunRecord> {
    if workspace.exists() {
        // Left by an interrupted attempt.
        let _ = tokio::fs::remove_dir_all(workspace).await;
    }
    let pipeline = match prepare(s, q, control, workspace).await {
        Ok(p) => p,
        Err(u) => return record_unstarted(s, q, &u.pipeline, u.status, u.reason).await,
    };
    let mut opts = server_options(s, q, workspace);
    opts.build_number = match number(s, &pipeline.name, &q.run_id, &opts).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("run {}: {e:#}", q.run_id);
            return None;
        }
    };

    let launch = Launch {
        runtime: s.runtime.clone(),
        state_dir: &s.state_dir,
        observer: Arc::new(Quiet),
        control: control.clone(),
    };
    let reason = match launch.run(pipeline.clone(), opts.clone()).await {
        Ok(r) => return Some(r),
        Err(e @ LaunchError::Plugins(_)) => relative(&e.to_string(), workspace),
        Err(LaunchError::Host(e)) => format!("host error: {e:#}"),
    };
    let rec = unstarted(&pipeline.name, &opts, Status::Failure, reason);
    Some(save_unstarted(s, rec).await)
}

/// Why a run ended before any stage started, for its record.
struct Unstarted {
    /// The pipeline's name once known, else the repository's.
    pipeline: String,
    status: Status,
    reason: String,
}

impl Unstarted {
    fn failure(pipeline: &str, reason: String) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            status: Status::Failure,
            reason,
        }
    }
}

/// The source in `workspace` (unpacked or checked out) and its pipeline
/// loaded from it.
async fn prepare(
    s: &Arc<ServerState>,
    q: &QueuedJob,
    control: &RunControl,
    workspace: &Path,
) -> Result<Arc<Pipeline>, Unstarted> {
    let job = &q.job;
    let pipeline_path = match &job.archive {
        Some(archive) => unpack_upload(s, q, archive, workspace).await?,
        None => checkout(s, q, control, workspace).await?,
    };
    // Everything the pipeline file names is opened beneath the checkout
    // (or the operator's plugin directories), and nothing is written there.
    let origin = Origin::Untrusted {
        root: workspace.to_path_buf(),
        plugin_dirs: s.config.plugin_dirs.clone(),
    };
    let file = workspace.join(&pipeline_path);
    let pipeline = match load_resolved_from(&origin, &file, &s.state_dir, LockMode::Normal).await {
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

/// An upload's archive unpacked into `workspace`; returns the pipeline
/// file's path in it.
async fn unpack_upload(
    s: &Arc<ServerState>,
    q: &QueuedJob,
    archive: &Path,
    workspace: &Path,
) -> Result<String, Unstarted> {
    let repository = &q.job.repository;
    let Some(upload) = s.config.uploads.iter().find(|u| &u.name == repository) else {
        let reason = format!("upload source `{repository}` is no longer configured on this server");
        return Err(Unstarted::failure(repository, reason));
    };
    let limits = Limits {
        max_archive_bytes: upload.max_size,
        ..Limits::default()
    };
    let (a, w) = (archive.to_path_buf(), workspace.to_path_buf());
    let unpacked = tokio::task::spawn_blocking(move || unpack(&a, &w, &limits)).await;
    match unpacked {
        Ok(Ok(_)) => Ok(upload.pipeline.clone()),
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
/// cancelled first); returns the pipeline file's path in it.
async fn checkout(
    s: &Arc<ServerState>,
    q: &QueuedJob,
    control: &RunControl,
    workspace: &Path,
) -> Result<String, Unstarted> {
    let job = &q.job;
    let Some(repo) = s
        .config
        .repositories
        .iter()
        .find(|r| r.name == job.repository)
    else {
        let reason = format!(
            "repository `{}` is no longer configured on this server",
            job.repository
        );
        return Err(Unstarted::failure(&job.repository, reason));
    };
    let cancelled = control.token();
    let fetched = tokio::select! {
        r = git::checkout(&repo.url, &job.sha, job.fetch_ref.as_deref(), workspace) => r,
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
    Ok(repo.pipeline.clone())
}

/// The run's options: the job's, with what the server decides (its URL,
/// which secrets and environment a run of this source gets).
fn server_options(s: &ServerState, q: &QueuedJob, workspace: &Path) -> RunOptions {
    let job = &q.job;
    let mut opts = job_options(q, workspace);
    if let Some(base) = &s.config.public_url {
        opts.url = format!("{base}/runs/{}", q.run_id);
    }
    opts.secret_files = match (&s.config.secrets_dir, job.trusted) {
        (_, false) => SecretFiles::Denied("runs of pull requests from forks get no secrets".into()),
        (Some(dir), true) => SecretFiles::Within(dir.clone()),
        (None, true) => SecretFiles::Denied(
            "this server has no `secrets-dir`, so file secrets are refused".into(),
        ),
    };
    if !job.trusted {
        // Code from a fork: nothing of the server's environment.
        opts.env.clear();
    }
    // The server's own webhook secret is never a pipeline's to read.
    if let crate::serve::config::SecretRef::Env(var) = &s.config.webhook_secret {
        opts.env.remove(var);
    }
    opts
}

/// The next build number of `pipeline`, taken by saving a placeholder
/// record at once (so two runs starting together cannot share one).
async fn number(
    s: &Arc<ServerState>,
    pipeline: &str,
    run_id: &str,
    opts: &RunOptions,
) -> Result<u64> {
    let _one_at_a_time = s.numbering.lock().await;
    let (pipeline, run_id) = (pipeline.to_string(), run_id.to_string());
    let mut placeholder = RunRecord::new(&pipeline, opts);
    s.with_db(move |db| {
        let n = match db.get(&run_id)? {
            // A run that runs again keeps its number.
            Some(old) if old.pipeline == pipeline => old.build_number,
            _ => db.next_build_number(&pipeline)?,
        };
        placeholder.build_number = n;
        db.save(&placeholder)?;
        Ok(n)
    })
    .await
}

/// A record for a run that ended before any stage started.
fn unstarted(pipeline: &str, opts: &RunOptions, status: Status, reason: String) -> RunRecord {
    RunRecord {
        status,
        reason: Some(reason),
        ..RunRecord::new(pipeline, opts)
    }
}

/// What a queued job is about, as a run's options (before the server's
/// own choices: secrets, environment, URL).
fn job_options(q: &QueuedJob, workspace: &Path) -> RunOptions {
    let job = &q.job;
    let mut opts = RunOptions::new(q.run_id.clone(), workspace.to_path_buf());
    opts.build_number = 0;
    opts.commit_sha = job.sha.clone();
    opts.branch = job.branch.clone();
    opts.tag = job.tag.clone();
    opts.event = job.event.clone();
    opts.environment = job.environment.clone();
    opts.trigger = Some(job.trigger.clone());
    opts
}

/// Number and save a record for a run that ended before it started.
pub async fn record_unstarted(
    s: &Arc<ServerState>,
    q: &QueuedJob,
    pipeline: &str,
    status: Status,
    reason: String,
) -> Option<RunRecord> {
    let _one_at_a_time = s.numbering.lock().await;
    let opts = job_options(q, &s.workspaces.join(&q.run_id));
    let mut rec = unstarted(pipeline, &opts, status, reason);
    let saved = s
        .with_db(move |db| {
            rec.build_number = match db.get(&rec.id)? {
                Some(old) if old.pipeline == rec.pipeline => old.build_number,
                _ => db.next_build_number(&rec.pipeline)?,
            };
            db.save(&rec)?;
            Ok(rec)
        })
        .await;
    match saved {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!("run {}: saving its record: {e:#}", q.run_id);
            None
        }
    }
}

async fn save_unstarted(s: &Arc<ServerState>, rec: RunRecord) -> RunRecord {
    let r = rec.clone();
    if let Err(e) = s.with_db(move |db: &RunStore| db.save(&r)).await {
        tracing::error!("run {}: saving its record: {e:#}", rec.id);
    }
    rec
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Paths in messages relative to the checkout (its location is the
/// server's business).
fn relative(message: &str, workspace: &Path) -> String {
    message.replace(&format!("{}/", workspace.display()), "")
}
