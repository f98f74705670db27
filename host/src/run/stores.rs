//! What runs keep in a state directory (approvals, the encrypted artifact
//! store, the stage cache, the live record's writer), opened once and
//! shared by every run the process starts: a server or an agent runs many,
//! and each open of the SQLite store cost its schema check and each last
//! close a WAL checkpoint with an fsync, about 2 ms of every run.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use parking_lot::Mutex;

use crate::run::approvals::ApprovalStore;
use crate::run::artifact_store::ArtifactStore;
use crate::run::live::{LiveRecorder, RecordWriter};
use crate::run::observer::RunObserver;
use crate::run::stage_cache::StageCache;

pub struct RunStores {
    dir: PathBuf,
    pub(crate) approvals: ApprovalStore,
    pub(crate) artifacts: ArtifactStore,
    /// Opened by the first run that caches a stage.
    stage_cache: Mutex<Option<StageCache>>,
    writer: RecordWriter,
}

impl RunStores {
    /// The stores of `state_dir` (made when missing).
    pub fn open(state_dir: &Path) -> Result<Arc<Self>> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            anyhow::anyhow!("creating state directory {}: {e}", state_dir.display())
        })?;
        Ok(Arc::new(Self {
            dir: state_dir.to_path_buf(),
            approvals: ApprovalStore::open(state_dir)?,
            artifacts: ArtifactStore::open(state_dir).map_err(anyhow::Error::from)?,
            stage_cache: Mutex::new(None),
            writer: RecordWriter::start(state_dir)?,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stage cache, opened on first use.
    pub fn stage_cache(&self) -> Result<StageCache> {
        let mut cache = self.stage_cache.lock();
        if let Some(c) = cache.as_ref() {
            return Ok(c.clone());
        }
        let opened = StageCache::open(&self.dir)?;
        *cache = Some(opened.clone());
        Ok(opened)
    }

    /// A live recorder for the run `run_id`, passing events on to `inner`.
    pub fn recorder(&self, run_id: &str, inner: Arc<dyn RunObserver>) -> Arc<LiveRecorder> {
        self.writer.recorder(run_id, inner)
    }
}
