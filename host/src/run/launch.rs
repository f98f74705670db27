//! Starting a run of a loaded pipeline: what `host run`, `host rollback`
//! and `host serve` share (plugin checks, the executor with its scanner and
//! approvals, secrets, the live record, the final save).
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use futures::FutureExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::caps::scan::ScanConfig;
use crate::caps::secrets::SecretStore;
use crate::pipeline::{Diagnostic, Pipeline};
use crate::run::executor::panic_text;
use crate::run::hooks::RunHooks;
use crate::run::stores::RunStores;
use crate::run::{preflight, Executor, RunObserver, RunOptions, RunRecord, Status};
use crate::runtime::Runtime;

/// Stops a run from outside (Ctrl-C, a newer push, a server stop) and says
/// why, for the record.
#[derive(Clone, Default)]
pub struct RunControl {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl RunControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel the run; the first reason given is the one recorded.
    pub fn cancel(&self, reason: impl Into<String>) {
        self.reason.lock().get_or_insert(reason.into());
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A plugin failed its checks (missing, wrong world, unknown `with`
    /// key, bad signature): each problem names the file and line.
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Plugins(Vec<Diagnostic>),
    #[error(transparent)]
    Host(#[from] anyhow::Error),
}

/// Everything a run needs besides the pipeline and its options.
pub struct Launch<'a> {
    pub runtime: Arc<Runtime>,
    /// The state directory's stores (kept open across runs).
    pub stores: &'a RunStores,
    /// Hears about the run besides the store (the console).
    pub observer: Arc<dyn RunObserver>,
    pub control: RunControl,
}

impl Launch<'_> {
    /// Check and load the plugins, run, record (live, then final).
    pub async fn run(
        self,
        pipeline: Arc<Pipeline>,
        opts: RunOptions,
    ) -> Result<RunRecord, LaunchError> {
        self.run_with(pipeline, opts, RunHooks::default()).await
    }

    /// [`Launch::run`] with an agent's approvals and ownership check. A
    /// host bug that panics mid-run fails the run (its caller records it)
    /// instead of losing it with the task.
    pub async fn run_with(
        self,
        pipeline: Arc<Pipeline>,
        opts: RunOptions,
        hooks: RunHooks,
    ) -> Result<RunRecord, LaunchError> {
        AssertUnwindSafe(self.launch(pipeline, opts, hooks))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let why = panic_text(&*panic);
                Err(anyhow!("the host stopped this run on a bug ({why})").into())
            })
    }

    async fn launch(
        self,
        pipeline: Arc<Pipeline>,
        opts: RunOptions,
        hooks: RunHooks,
    ) -> Result<RunRecord, LaunchError> {
        let state_dir = self.stores.dir();
        guard_state_dir(&pipeline, &opts.workspace, state_dir)?;
        let timer = crate::perf::start(crate::perf::Phase::Preflight);
        let plugins = preflight::load_plugins(&pipeline, &self.runtime)
            .await
            .map_err(LaunchError::Plugins)?;
        drop(timer);
        let timer = crate::perf::start(crate::perf::Phase::Stores);
        let mut executor = Executor::new(self.runtime.clone())
            .with_scanner(ScanConfig::from_env(state_dir))
            .with_approvals(self.stores.approvals.clone())
            .with_artifact_store(self.stores.artifacts.clone())
            .with_hooks(hooks);
        if pipeline.stages.iter().any(|s| s.cache.is_some()) {
            executor = executor.with_stage_cache(self.stores.stage_cache()?);
        }
        let env = opts.env.clone();
        let secrets = SecretStore::resolve(
            &pipeline.secrets,
            &pipeline.dir,
            &|k| env.get(k).cloned(),
            &opts.secret_files,
        );
        let recorder = self.stores.recorder(&opts.id, self.observer);
        drop(timer);
        let mut record = executor
            .run(
                pipeline,
                plugins,
                opts,
                secrets,
                recorder.clone(),
                self.control.token(),
            )
            .await;
        if record.status == Status::Cancelled {
            record.reason = self.control.reason();
        }
        let _timer = crate::perf::start(crate::perf::Phase::Finish);
        recorder.finish(&record).await?;
        Ok(record)
    }
}

/// The state directory holds the run records, the artifact key and
/// compiled plugins (native code the host loads): no stage may reach it,
/// so it must not lie inside a workspace any stage is given, read-only or
/// not (a read-only workspace still shows a stage the artifact key).
fn guard_state_dir(p: &Pipeline, workspace: &Path, state_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    if p.stages.iter().all(|s| s.grants.workspace.is_none()) {
        return Ok(());
    }
    let state = state_dir.canonicalize()?;
    let workspace = workspace
        .canonicalize()
        .unwrap_or_else(|_| workspace.to_path_buf());
    if state.starts_with(&workspace) {
        bail!(
            "the state directory {} is inside the workspace {}, which stages may be given: \
             use --state-dir (or HOST_STATE_DIR) outside it",
            state.display(),
            workspace.display()
        );
    }
    Ok(())
}
