//! One claimed attempt on an agent: the source fetched (a checkout, or an
//! upload fetched from the server), the pipeline loaded, numbered by the
//! server, run with the server's hooks, and its final record reported.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;

use super::forward::{AttemptId, Forwarder};
use super::hooks::ServerHooks;
use super::Agent;
use crate::cluster::protocol::{Reply, Request, RunMessage};
use crate::run::hooks::RunHooks;
use crate::run::launch::{Launch, LaunchError, RunControl};
use crate::run::{RunRecord, Status};
use crate::serve::prepare::{prepare, relative, run_options, unstarted, JobSource, Site};

const PATIENCE: Duration = Duration::from_secs(60);

pub(super) async fn run_attempt(
    agent: &Arc<Agent>,
    rm: &RunMessage,
    id: &AttemptId,
    control: &RunControl,
) -> Result<()> {
    let cfg = &agent.cfg;
    let workspace = cfg.workspaces.join(format!("{}-{}", id.run, id.attempt));
    let forwarder = Forwarder::start(agent.bus.clone(), id.clone());
    let site = Site {
        state_dir: &cfg.state_dir,
        plugin_dirs: &cfg.plugin_dirs,
        secrets_dir: cfg.secrets_dir.as_deref(),
        public_url: rm.public_url.as_deref(),
        hidden_env: None,
    };
    let record = run_it(agent, rm, id, control, &site, &workspace, &forwarder).await;
    // An agent that is stopping hands the run back unfinished (it runs
    // again elsewhere), so it reports no end.
    let handed_back = agent.shutdown.is_cancelled() && control.is_cancelled();
    if let (Some(r), false) = (&record, handed_back) {
        forwarder.finish(r).await;
    }
    if !cfg.keep_workspaces {
        let _ = tokio::fs::remove_dir_all(&workspace).await;
    }
    let _ = tokio::fs::remove_file(archive_path(&workspace)).await;
    // No record: the run moved to other agents, or is not ours any more
    // (the caller's ownership check tells which).
    Ok(())
}

/// Every way this ends leaves a final record (`None`: the server refused
/// us before there was one).
async fn run_it(
    agent: &Arc<Agent>,
    rm: &RunMessage,
    id: &AttemptId,
    control: &RunControl,
    site: &Site<'_>,
    workspace: &Path,
    forwarder: &Arc<Forwarder>,
) -> Option<RunRecord> {
    let q = &rm.queued;
    let mut opts = run_options(site, q, workspace);
    let source = match local_source(agent, rm, id, workspace).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("fetching the uploaded source from the server: {e:#}");
            return numbered(
                agent,
                id,
                unstarted(&q.repository, &opts, Status::Failure, reason),
            )
            .await;
        }
    };
    let pipeline = match prepare(site, q, &source, control, workspace).await {
        Ok(p) => p,
        Err(u) => {
            return numbered(agent, id, unstarted(&u.pipeline, &opts, u.status, u.reason)).await
        }
    };
    let mut needs = pipeline.required_labels();
    needs.extend(rm.labels.iter().cloned());
    needs.sort();
    needs.dedup();
    if !needs.iter().all(|l| agent.cfg.labels.contains(l)) {
        relabel(agent, id, needs).await;
        return None;
    }
    opts.build_number = number(agent, id, &RunRecord::new(&pipeline.name, &opts)).await?;
    let hooks = Arc::new(ServerHooks {
        bus: agent.bus.clone(),
        id: id.clone(),
    });
    let launch = Launch {
        runtime: agent.runtime.clone(),
        stores: &agent.stores,
        observer: forwarder.clone(),
        control: control.clone(),
    };
    let run_hooks = RunHooks {
        approvals: Some(hooks.clone()),
        ownership: Some(hooks),
    };
    let reason = match launch
        .run_with(pipeline.clone(), opts.clone(), run_hooks)
        .await
    {
        Ok(r) => return Some(r),
        Err(e @ LaunchError::Plugins(_)) => relative(&e.to_string(), workspace),
        Err(LaunchError::Host(e)) => format!("host error: {e:#}"),
    };
    Some(unstarted(&pipeline.name, &opts, Status::Failure, reason))
}

/// The pipeline needs labels this agent lacks: the server queues it again
/// for agents that offer them.
async fn relabel(agent: &Arc<Agent>, id: &AttemptId, labels: Vec<String>) {
    tracing::info!(
        "run {}: needs labels {}; queued again for agents offering them",
        id.run,
        labels.join(", ")
    );
    let req = Request::Relabel {
        run: id.run.clone(),
        fence: id.fence,
        labels,
    };
    match agent.bus.ask(&req, PATIENCE).await {
        Ok(Reply::Ok) => {}
        Ok(other) => tracing::warn!("run {}: relabelling refused: {other:?}", id.run),
        Err(e) => tracing::warn!("run {}: relabelling: {e:#}", id.run),
    }
}

/// A record that ended before it started, numbered by the server.
async fn numbered(agent: &Arc<Agent>, id: &AttemptId, mut rec: RunRecord) -> Option<RunRecord> {
    rec.build_number = number(agent, id, &rec).await?;
    Some(rec)
}

/// The run's build number from the server (which saves `placeholder`);
/// `None` when the run is no longer ours.
async fn number(agent: &Arc<Agent>, id: &AttemptId, placeholder: &RunRecord) -> Option<u64> {
    let req = Request::Number {
        run: id.run.clone(),
        fence: id.fence,
        record: Box::new(placeholder.without_logs()),
    };
    match agent.bus.ask(&req, PATIENCE).await {
        Ok(Reply::Number { number }) => Some(number),
        Ok(other) => {
            tracing::warn!("run {}: numbering refused: {other:?}", id.run);
            None
        }
        Err(e) => {
            tracing::warn!("run {}: numbering: {e:#}", id.run);
            None
        }
    }
}

fn archive_path(workspace: &Path) -> PathBuf {
    workspace.with_extension("upload")
}

/// The job's source on this machine: a repository as it is; an upload
/// fetched from the server next to the workspace.
async fn local_source(
    agent: &Arc<Agent>,
    rm: &RunMessage,
    id: &AttemptId,
    workspace: &Path,
) -> Result<JobSource> {
    let JobSource::Archive {
        pipeline, max_size, ..
    } = &rm.source
    else {
        return Ok(rm.source.clone());
    };
    let path = archive_path(workspace);
    fetch_upload(agent, id, &path, *max_size).await?;
    Ok(JobSource::Archive {
        archive: path,
        pipeline: pipeline.clone(),
        max_size: *max_size,
    })
}

async fn fetch_upload(agent: &Arc<Agent>, id: &AttemptId, to: &Path, max: u64) -> Result<()> {
    let mut out = Vec::new();
    loop {
        let req = Request::Upload {
            run: id.run.clone(),
            fence: id.fence,
            offset: out.len() as u64,
        };
        let (data, eof) = match agent.bus.ask(&req, PATIENCE).await? {
            Reply::Chunk { data, eof } => (data, eof),
            Reply::Refused { why } => bail!("{why}"),
            other => bail!("unexpected answer {other:?}"),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("a chunk that is not base64")?;
        out.extend_from_slice(&bytes);
        if out.len() as u64 > max {
            bail!("the archive is larger than its source's max-size");
        }
        if eof {
            break;
        }
        if bytes.is_empty() {
            bail!("the server sent an empty chunk before the end");
        }
    }
    tokio::fs::write(to, out)
        .await
        .with_context(|| format!("writing {}", to.display()))
}
