//! Run pipelines in-process with the host library, in a throwaway state
//! directory, and look at the records.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use host::caps::docker::DockerEngine;
use host::caps::secrets::SecretStore;
use host::run::approvals::ApprovalStore;
use host::run::{Executor, Quiet, RunOptions, RunRecord};
use host::runtime::Runtime;
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub workspace: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Engine connection for docker stages (default: the local engine).
    pub docker: Option<DockerEngine>,
    runtime: Arc<Runtime>,
}

impl Harness {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(&workspace)?;
        // Canonical, as `host run` makes it (the engine needs real paths).
        let workspace = workspace.canonicalize()?;
        let runtime = Arc::new(Runtime::new(dir.path().join("state/cache"))?);
        Ok(Self {
            dir,
            workspace,
            env: BTreeMap::new(),
            docker: None,
            runtime,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The state directory (run records, approvals).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn approvals(&self) -> ApprovalStore {
        ApprovalStore::open(&self.state_dir()).expect("approval store")
    }

    /// Write `pipeline.toml` (plugin paths may use `{plugin:NAME}`, replaced
    /// by the built component's absolute path) and return its path.
    pub fn write_pipeline(&self, text: &str) -> PathBuf {
        let mut text = text.to_string();
        while let Some(start) = text.find("{plugin:") {
            let end = start + text[start..].find('}').expect("closing brace");
            let name = &text[start + "{plugin:".len()..end];
            let path = crate::plugins::plugin(name);
            text.replace_range(start..=end, &path.display().to_string());
        }
        let p = self.dir.path().join("pipeline.toml");
        std::fs::write(&p, text).expect("writing pipeline");
        p
    }

    /// Load and run a pipeline text; panics on an invalid pipeline.
    pub async fn run(&self, text: &str) -> RunRecord {
        self.run_with(text, |_| {}).await
    }

    pub async fn run_with(&self, text: &str, tweak: impl FnOnce(&mut RunOptions)) -> RunRecord {
        self.run_full(text, tweak, CancellationToken::new()).await
    }

    /// Run with a cancellation token the test controls (Ctrl-C).
    pub async fn run_full(
        &self,
        text: &str,
        tweak: impl FnOnce(&mut RunOptions),
        cancel: CancellationToken,
    ) -> RunRecord {
        let path = self.write_pipeline(text);
        let pipeline = match host::pipeline::load(&path) {
            Ok(p) => Arc::new(p),
            Err(e) => panic!("invalid test pipeline:\n{e}"),
        };
        let plugins = match host::run::preflight::load_plugins(&pipeline, &self.runtime).await {
            Ok(p) => p,
            Err(diags) => panic!("test pipeline fails its checks: {diags:?}"),
        };
        let mut executor = Executor::new(self.runtime.clone()).with_approvals(self.approvals());
        if let Some(d) = &self.docker {
            executor = executor.with_docker(d.clone());
        }
        let mut opts = RunOptions::new("test-run".into(), self.workspace.clone());
        opts.env = self.env.clone();
        opts.branch = Some("main".into());
        opts.commit_sha = "0123456789abcdef0123456789abcdef01234567".into();
        tweak(&mut opts);
        let env = opts.env.clone();
        let secrets = SecretStore::resolve(
            &pipeline.secrets,
            &pipeline.dir,
            &|k| env.get(k).cloned(),
            &opts.secret_files,
        );
        executor
            .run(pipeline, plugins, opts, secrets, Arc::new(Quiet), cancel)
            .await
    }
}
