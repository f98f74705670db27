//! Runs a pipeline: stages as a DAG, independent ones concurrently, each
//! in its own task. What may start, what is skipped and what a failure
//! rolls back is the [`Scheduler`]'s to say (see its rules); running one
//! stage (retrying a failure up to `retries` times) is
//! `run::stage`'s. Cancelling (Ctrl-C) drops every running
//! stage's future, which drops its store: the guest stops at its next
//! epoch tick.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::caps;
use crate::caps::docker::DockerEngine;
use crate::caps::scan::ScanConfig;
use crate::caps::secrets::SecretStore;
use crate::pipeline::Pipeline;
use crate::run::artifact_store::ArtifactStore;
use crate::run::hooks::{Approvals, RunHooks};
use crate::run::observer::RunObserver;
use crate::run::options::RunOptions;
use crate::run::record::{RunRecord, StageRecord, Status};
use crate::run::scheduler::{pending, Next, Ready, Scheduler, Scope, SkipReason};
use crate::run::stage::{RunShared, StageRun};
use crate::run::stage_cache::StageCache;
use crate::runtime::{Plugin, Runtime};

pub struct Executor {
    runtime: Arc<Runtime>,
    caps: caps::Shared,
    hooks: RunHooks,
    artifact_store: Option<ArtifactStore>,
    stage_cache: Option<StageCache>,
}

impl Executor {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            caps: caps::Shared::with_http(runtime.http_client()),
            runtime,
            hooks: RunHooks::default(),
            artifact_store: None,
            stage_cache: None,
        }
    }

    /// Keep an encrypted copy of every declared artifact here.
    pub fn with_artifact_store(mut self, store: ArtifactStore) -> Self {
        self.artifact_store = Some(store);
        self
    }

    /// Replay stages that declare `cache` from this cache, and keep them in it.
    pub fn with_stage_cache(mut self, cache: StageCache) -> Self {
        self.stage_cache = Some(cache);
        self
    }

    /// Where approvals are asked for and decided (`host approve`).
    pub fn with_approvals(mut self, approvals: impl Approvals + 'static) -> Self {
        self.hooks.approvals = Some(Arc::new(approvals));
        self
    }

    /// An agent's approvals and ownership check (those given replace the
    /// executor's own).
    pub fn with_hooks(mut self, hooks: RunHooks) -> Self {
        if hooks.approvals.is_some() {
            self.hooks.approvals = hooks.approvals;
        }
        self.hooks.ownership = hooks.ownership;
        self
    }

    /// Run Trivy this way (binary, cache and work directories).
    pub fn with_scanner(mut self, scan: ScanConfig) -> Self {
        self.caps.scan = scan;
        self
    }

    /// Use this engine connection (tests point it at a recording socket).
    pub fn with_docker(mut self, docker: DockerEngine) -> Self {
        self.caps.docker = docker;
        self
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Run the pipeline to the end (or until `cancel`), returning its record.
    pub async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        plugins: BTreeMap<String, Plugin>,
        opts: RunOptions,
        secrets: SecretStore,
        observer: Arc<dyn RunObserver>,
        cancel: CancellationToken,
    ) -> RunRecord {
        let started = Instant::now();
        let mut opts = opts;
        if opts.environment.is_none() {
            opts.environment = pipeline
                .environment_for(&opts.trigger())
                .map(|e| e.name.clone());
        }
        let mut record = RunRecord {
            file: pipeline.file.display().to_string(),
            stages: pipeline.stages.iter().map(pending).collect(),
            ..RunRecord::new(&pipeline.name, &opts)
        };
        observer.run_started(&record);
        let shared = Arc::new(RunShared {
            pipeline: pipeline.clone(),
            plugins,
            opts,
            secrets: Arc::new(secrets),
            observer,
            runtime: self.runtime.clone(),
            caps: self.caps.clone(),
            hooks: self.hooks.clone(),
            artifact_store: self.artifact_store.clone(),
            stage_cache: self.stage_cache.clone(),
        });
        let mut sched = Scheduler::new(&pipeline, Scope::of(&shared.opts));
        drive(&shared, &mut sched, cancel).await;
        let cancelled = sched.is_cancelled();
        let ending = sched.close();
        record.stages = ending.stages;
        for &i in &ending.cancelled {
            shared.observer.stage_finished(&record.stages[i]);
        }
        record.status = ending.status;
        if cancelled {
            self.caps
                .docker
                .finish_cleanups(Duration::from_secs(20))
                .await;
        }
        record.duration_ms = started.elapsed().as_millis() as u64;
        record
    }
}

/// The stage tasks of one run, by task id, for the stage each runs.
#[derive(Default)]
struct Tasks {
    set: JoinSet<StageRecord>,
    names: HashMap<tokio::task::Id, String>,
}

impl Tasks {
    fn spawn(&mut self, shared: &Arc<RunShared>, run: StageRun) {
        let name = run.name().to_string();
        let shared = shared.clone();
        let handle = self.set.spawn(run.run(shared));
        self.names.insert(handle.id(), name);
    }
}

/// Start what the scheduler says may start, tell it what ended, until
/// nothing runs; cancelling aborts every running stage (dropping its store:
/// the guest stops at its next epoch tick).
async fn drive(shared: &Arc<RunShared>, sched: &mut Scheduler<'_>, cancel: CancellationToken) {
    let mut tasks = Tasks::default();
    loop {
        while let Some(ready) = sched.next_ready() {
            match ready {
                Ready::Skipped(name) => report(shared, sched, [name]),
                Ready::Start(stage) => tasks.spawn(shared, StageRun::new(shared, stage, sched)),
            }
        }
        if tasks.set.is_empty() {
            break;
        }
        tokio::select! {
            joined = tasks.set.join_next_with_id() => {
                let Some(joined) = joined else { break };
                let rec = match joined {
                    Ok((id, rec)) => {
                        tasks.names.remove(&id);
                        rec
                    }
                    Err(e) => {
                        let name = tasks.names.remove(&e.id()).unwrap_or_default();
                        lost(&shared.pipeline, &name, &e)
                    }
                };
                match sched.finish(rec) {
                    Next::Final(names) => report(shared, sched, names.iter().map(String::as_str)),
                    Next::Rollback(rb) => tasks.spawn(shared, StageRun::rollback(shared, rb, sched)),
                }
            }
            _ = cancel.cancelled(), if !sched.is_cancelled() => {
                sched.cancel();
                tasks.set.abort_all();
            }
        }
    }
}

/// Tell the observer these records are final.
fn report<'a>(shared: &RunShared, sched: &Scheduler<'_>, names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        if let Some(rec) = sched.record(name) {
            shared.observer.stage_finished(rec);
        }
    }
}

/// The record of a stage whose task did not return one: aborted by a
/// cancel, or a panic in the host's own code (the stage fails, the run
/// goes on).
fn lost(pipeline: &Pipeline, name: &str, e: &JoinError) -> StageRecord {
    let mut rec = match pipeline.stage(name) {
        Some(s) => pending(s),
        None => StageRecord::pending(name, ""),
    };
    if e.is_cancelled() {
        rec.status = Status::Cancelled;
        rec.error = Some(SkipReason::Cancelled.to_string());
    } else {
        rec.status = Status::Failure;
        rec.error = Some(format!("host error while running the stage: {e}"));
    }
    rec
}
