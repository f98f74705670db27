//! The dispatcher: takes queued runs (at most `concurrency` at once, one
//! per concurrency group), checks the commit out into a fresh workspace,
//! runs the repository's pipeline, and cancels runs a newer push
//! supersedes.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinSet;

use crate::run::launch::{Launch, LaunchError, RunControl};
use crate::run::{Quiet, RunOptions, RunRecord, RunStore, Status};
use crate::serve::forge::Statuses;
use crate::serve::prepare::{
    job_options, prepare, relative, run_options, unstarted, JobSource, Unstarted,
};
use crate::serve::queue::{Queue, QueuedJob};
use crate::serve::ServerState;

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

/// Cancel running runs that a newer one superseded (on a cluster: tell
/// their agents).
pub fn cancel_running(s: &Arc<ServerState>, run_ids: &[String], by: &str) {
    if let Some(c) = s.cluster.get() {
        for id in run_ids {
            let (s, c, id) = (s.clone(), c.clone(), id.clone());
            let reason = format!("superseded by run {by}");
            tokio::spawn(async move { c.cancel(&s, &id, &reason).await });
        }
        return;
    }
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
    let (statuses, ended) = (Statuses::of(&s.config), record.clone());
    let done = s
        .with_db(move |db| {
            db.db().transaction(|tx| {
                let queue = Queue::new(tx);
                if stopped_by_server {
                    return queue.requeue(&id);
                }
                queue.finish(&id)?;
                match (statuses, ended) {
                    (Some(st), Some(r)) => st.ended(tx, &r),
                    _ => Ok(()),
                }
            })
        })
        .await;
    s.statuses.notify_one();
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
    let source = match job_source(s, q) {
        Ok(src) => src,
        Err(u) => return record_unstarted(s, q, &u.pipeline, u.status, u.reason).await,
    };
    let site = s.site();
    let pipeline = match prepare(&site, q, &source, control, workspace).await {
        Ok(p) => p,
        Err(u) => return record_unstarted(s, q, &u.pipeline, u.status, u.reason).await,
    };
    let mut opts = run_options(&site, q, workspace);
    opts.build_number = match number(s, &pipeline.name, &q.run_id, &opts).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("run {}: {e:#}", q.run_id);
            return None;
        }
    };

    let launch = Launch {
        runtime: s.runtime.clone(),
        stores: &s.run_stores,
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

/// Where a queued job's source comes from, by this server's configuration
/// (a repository or upload source removed since it was queued fails it).
pub fn job_source(s: &ServerState, q: &QueuedJob) -> Result<JobSource, Unstarted> {
    let job = &q.job;
    let name = &job.repository;
    if let Some(archive) = &job.archive {
        let Some(upload) = s.config.uploads.iter().find(|u| &u.name == name) else {
            let reason = format!("upload source `{name}` is no longer configured on this server");
            return Err(Unstarted::failure(name, reason));
        };
        return Ok(JobSource::Archive {
            archive: archive.clone(),
            pipeline: upload.pipeline.clone(),
            max_size: upload.max_size,
        });
    }
    let Some(repo) = s.config.repositories.iter().find(|r| &r.name == name) else {
        let reason = format!("repository `{name}` is no longer configured on this server");
        return Err(Unstarted::failure(name, reason));
    };
    Ok(JobSource::Git {
        url: repo.url.clone(),
        pipeline: repo.pipeline.clone(),
    })
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
    let statuses = Statuses::of(&s.config);
    let clustered = s.cluster.get().is_some();
    let saved = s
        .with_db(move |db| {
            db.db().transaction(|tx| {
                rec.build_number = match db.get(&rec.id)? {
                    Some(old) if old.pipeline == rec.pipeline => old.build_number,
                    _ => db.next_build_number(&rec.pipeline)?,
                };
                if clustered {
                    // Which agents' attempts the run had, if any.
                    rec.attempts = crate::cluster::claims::attempts(tx, &rec.id)?;
                }
                db.save(&rec)?;
                if let Some(st) = &statuses {
                    st.ended(tx, &rec)?;
                }
                Ok(rec)
            })
        })
        .await;
    s.statuses.notify_one();
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
