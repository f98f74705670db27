//! Runs a pipeline: stages as a DAG, independent ones concurrently (one
//! inside the driver's task, the others each in a task of its own). What may start, what is skipped and what a failure
//! rolls back is the [`Scheduler`]'s to say (see its rules); running one
//! stage (retrying a failure up to `retries` times) is
//! `run::stage`'s. Cancelling (Ctrl-C) drops every running
//! stage's future, which drops its store: the guest stops at its next
//! epoch tick.
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::task::JoinSet;
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
use crate::run::stage::{RunShared, StageRun, Told};
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

/// A stage's future, run inside the driver's own task.
type InlineStage = Pin<Box<dyn Future<Output = std::thread::Result<StageRecord>> + Send>>;

/// The running stages of one run. One of them at a time runs inside the
/// driver's own task: a chain of stages then runs on one thread with no
/// hand-off between threads per stage (each cost ~50 µs both ways on 2
/// cores). Stages ready alongside it get tasks of their own, so
/// independent stages still run in parallel.
#[derive(Default)]
struct Running {
    inline: Option<(String, InlineStage)>,
    set: JoinSet<StageRecord>,
    names: HashMap<tokio::task::Id, String>,
    /// Stages dropped by a cancel, still to be reported.
    aborted: Vec<String>,
}

/// How a running stage ended.
enum Ended {
    Record(Box<StageRecord>),
    /// Without a record: cancelled, or a panic in the host's own code.
    Lost {
        name: String,
        cancelled: bool,
        why: String,
    },
}

impl Running {
    fn start(&mut self, shared: &Arc<RunShared>, run: StageRun) {
        let name = run.name().to_string();
        let fut = run.run(shared.clone());
        if self.inline.is_none() {
            let fut = AssertUnwindSafe(fut).catch_unwind();
            self.inline = Some((name, Box::pin(fut)));
        } else {
            let handle = self.set.spawn(fut);
            self.names.insert(handle.id(), name);
        }
    }

    fn is_empty(&self) -> bool {
        self.inline.is_none() && self.set.is_empty() && self.aborted.is_empty()
    }

    /// Drop every running stage (its store with it: the guest stops).
    fn abort_all(&mut self) {
        self.set.abort_all();
        if let Some((name, _)) = self.inline.take() {
            self.aborted.push(name);
        }
    }

    /// The next stage to end (pending while none does).
    async fn next(&mut self) -> Ended {
        if let Some(name) = self.aborted.pop() {
            return Ended::Lost {
                name,
                cancelled: true,
                why: String::new(),
            };
        }
        let inline = async {
            match self.inline.as_mut() {
                Some((_, fut)) => fut.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = inline => {
                let (name, _) = self.inline.take().expect("polled above");
                match ended {
                    Ok(rec) => Ended::Record(Box::new(rec)),
                    Err(panic) => Ended::Lost { name, cancelled: false, why: panic_text(&panic) },
                }
            }
            Some(joined) = self.set.join_next_with_id() => match joined {
                Ok((id, rec)) => {
                    self.names.remove(&id);
                    Ended::Record(Box::new(rec))
                }
                Err(e) => Ended::Lost {
                    name: self.names.remove(&e.id()).unwrap_or_default(),
                    cancelled: e.is_cancelled(),
                    why: e.to_string(),
                },
            },
        }
    }
}

pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("panicked: {text}")
}

/// Start what the scheduler says may start, tell it what ended, until
/// nothing runs; cancelling drops every running stage (its store with it:
/// the guest stops at its next epoch tick).
async fn drive(shared: &Arc<RunShared>, sched: &mut Scheduler<'_>, cancel: CancellationToken) {
    let mut running = Running::default();
    let mut told = Told::default();
    loop {
        while let Some(ready) = sched.next_ready() {
            match ready {
                Ready::Skipped(name) => report(shared, sched, [name]),
                Ready::Start(stage) => {
                    running.start(shared, StageRun::new(shared, stage, sched, &mut told))
                }
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            ended = running.next() => {
                let rec = match ended {
                    Ended::Record(rec) => *rec,
                    Ended::Lost { name, cancelled, why } => lost(&shared.pipeline, &name, cancelled, &why),
                };
                match sched.finish(rec) {
                    Next::Final(names) => report(shared, sched, names.iter().map(String::as_str)),
                    Next::Rollback(rb) => running.start(shared, StageRun::rollback(shared, rb, sched, &mut told)),
                }
            }
            _ = cancel.cancelled(), if !sched.is_cancelled() => {
                sched.cancel();
                running.abort_all();
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
fn lost(pipeline: &Pipeline, name: &str, cancelled: bool, why: &str) -> StageRecord {
    let mut rec = match pipeline.stage(name) {
        Some(s) => pending(s),
        None => StageRecord::pending(name, ""),
    };
    if cancelled {
        rec.status = Status::Cancelled;
        rec.error = Some(SkipReason::Cancelled.to_string());
    } else {
        rec.status = Status::Failure;
        rec.error = Some(format!("host error while running the stage: {why}"));
    }
    rec
}
