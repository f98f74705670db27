//! Keeps a run's record and log in the store while the run goes, so that
//! `host runs`, `host logs --follow` and `host serve`'s pages see it live,
//! from any process.
//!
//! Observer callbacks come from stage tasks and must not block them: they
//! go through a channel to one writer thread that owns its own database
//! connection and writes in batches (one transaction per batch).
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use parking_lot::Mutex;

use crate::caps::log::LogLine;
use crate::run::observer::RunObserver;
use crate::run::record::{now_rfc3339, RunRecord, RunStore, StageRecord, Status};

enum Msg {
    Started(Box<RunRecord>),
    StageStarted(String),
    StageFinished(Box<StageRecord>),
    Log(String, LogLine),
    Finish(Box<RunRecord>),
}

/// A [`RunObserver`] that records, then passes every event on to `inner`.
pub struct LiveRecorder {
    inner: Arc<dyn RunObserver>,
    tx: mpsc::Sender<Msg>,
    writer: Mutex<Option<JoinHandle<Result<()>>>>,
}

/// How many messages one write may take (bounds a transaction).
const BATCH: usize = 4096;
/// After the first message of a batch, wait this long for more (unless
/// the run ends): stages that log a lot then cost a channel push per line,
/// not a wake-up and a transaction.
const LINGER: Duration = Duration::from_millis(25);

impl LiveRecorder {
    /// Start the writer for the store in `state_dir`.
    pub fn start(state_dir: &Path, inner: Arc<dyn RunObserver>) -> Result<Arc<Self>> {
        // Open here, so a store that cannot be opened fails the caller now.
        let store = RunStore::open(state_dir)?;
        let (tx, rx) = mpsc::channel();
        let dir: PathBuf = state_dir.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("run-recorder".into())
            .spawn(move || {
                write_loop(store, rx)
                    .with_context(|| format!("recording runs in {}", dir.display()))
            })
            .context("starting the run recorder")?;
        Ok(Arc::new(Self {
            inner,
            tx,
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// Save the final record (after everything sent before it) and stop.
    pub async fn finish(&self, record: &RunRecord) -> Result<()> {
        let _ = self.tx.send(Msg::Finish(Box::new(record.without_logs())));
        let handle = self.writer.lock().take();
        let Some(handle) = handle else {
            return Err(anyhow!("the run recorder was already finished"));
        };
        // It may be lingering for more messages: the last one is here.
        handle.thread().unpark();
        tokio::task::spawn_blocking(move || {
            handle
                .join()
                .map_err(|_| anyhow!("the run recorder panicked"))?
        })
        .await?
        .context("saving the run record")
    }
}

impl RunObserver for LiveRecorder {
    fn run_started(&self, record: &RunRecord) {
        let _ = self.tx.send(Msg::Started(Box::new(record.without_logs())));
        self.inner.run_started(record);
    }

    fn stage_started(&self, stage: &str, attempt: u32) {
        let _ = self.tx.send(Msg::StageStarted(stage.to_string()));
        self.inner.stage_started(stage, attempt);
    }

    fn approval_requested(&self, run_id: &str, stage: &str, environment: &str, timeout: Duration) {
        self.inner
            .approval_requested(run_id, stage, environment, timeout);
    }

    fn stage_log(&self, stage: &str, line: &LogLine) {
        let _ = self.tx.send(Msg::Log(stage.to_string(), line.clone()));
        self.inner.stage_log(stage, line);
    }

    fn stage_finished(&self, record: &StageRecord) {
        let _ = self
            .tx
            .send(Msg::StageFinished(Box::new(record.without_log())));
        self.inner.stage_finished(record);
    }
}

fn write_loop(store: RunStore, rx: mpsc::Receiver<Msg>) -> Result<()> {
    let mut current: Option<RunRecord> = None;
    while let Ok(first) = rx.recv() {
        if !matches!(first, Msg::Finish(_)) {
            std::thread::park_timeout(LINGER);
        }
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut lines = Vec::new();
        let mut changed = false;
        let mut finished = None;
        for msg in batch {
            match msg {
                Msg::Started(r) => {
                    // A run that is run again (after a server stop) starts
                    // its live log afresh.
                    store.clear_logs(&r.id)?;
                    current = Some(*r);
                    changed = true;
                }
                Msg::StageStarted(name) => {
                    if let Some(s) = current
                        .as_mut()
                        .and_then(|r| r.stages.iter_mut().find(|s| s.name == name))
                    {
                        if s.status != Status::Running {
                            s.status = Status::Running;
                            s.started_at = Some(now_rfc3339());
                        }
                        changed = true;
                    }
                }
                Msg::StageFinished(rec) => {
                    if let Some(run) = current.as_mut() {
                        // Sent without its log: that is in the live log.
                        match run.stages.iter_mut().find(|s| s.name == rec.name) {
                            Some(s) => *s = *rec,
                            // Not a pipeline stage: a rollback.
                            None => run.stages.push(*rec),
                        }
                        changed = true;
                    }
                }
                Msg::Log(stage, line) => lines.push((stage, line)),
                Msg::Finish(r) => finished = Some(*r),
            }
        }
        // One transaction per batch.
        let tx = store.connection().unchecked_transaction()?;
        if let Some(run) = current.as_ref() {
            if let Err(e) = store.append_logs(&run.id, &lines) {
                tracing::warn!("live log of run {}: {e:#}", run.id);
            }
            if changed && finished.is_none() {
                if let Err(e) = store.save(run) {
                    tracing::warn!("live record of run {}: {e:#}", run.id);
                }
            }
        }
        if let Some(run) = finished {
            store.save(&run)?;
            tx.commit()?;
            return Ok(());
        }
        tx.commit()?;
    }
    Ok(())
}
