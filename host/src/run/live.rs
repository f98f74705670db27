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

/// What happens to a run's record as it goes: what the live recorder
/// writes, and what an agent sends its server (`crate::cluster`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum RunEvent {
    Started { record: Box<RunRecord> },
    StageStarted { stage: String },
    StageFinished { record: Box<StageRecord> },
    Log { stage: String, line: LogLine },
    Finish { record: Box<RunRecord> },
}

/// A run's record kept up to date from its events (no store): the live
/// recorder and an agent's forwarder both hold one.
#[derive(Debug, Default)]
pub struct LiveRecord {
    pub current: Option<RunRecord>,
}

/// What applying a batch of events did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The record changed (save it).
    pub changed: bool,
    /// A run that starts (again): forget the log it had.
    pub restarted: bool,
    /// Log lines to append, in order.
    pub lines: Vec<(String, LogLine)>,
    /// The final record, when the batch ends the run.
    pub finished: Option<RunRecord>,
}

impl LiveRecord {
    /// Apply `events` in order.
    pub fn apply(&mut self, events: impl IntoIterator<Item = RunEvent>) -> Applied {
        let mut out = Applied::default();
        for event in events {
            self.apply_one(event, &mut out);
        }
        out
    }

    fn apply_one(&mut self, event: RunEvent, out: &mut Applied) {
        match event {
            RunEvent::Started { record } => {
                // A run that is run again (after a server stop) starts
                // its live log afresh.
                self.current = Some(*record);
                out.restarted = true;
                out.lines.clear();
                out.changed = true;
            }
            RunEvent::StageStarted { stage } => {
                if let Some(s) = self
                    .current
                    .as_mut()
                    .and_then(|r| r.stages.iter_mut().find(|s| s.name == stage))
                {
                    if s.status != Status::Running {
                        s.status = Status::Running;
                        s.started_at = Some(now_rfc3339());
                    }
                    out.changed = true;
                }
            }
            RunEvent::StageFinished { record } => {
                if let Some(run) = self.current.as_mut() {
                    // Sent without its log: that is in the live log.
                    match run.stages.iter_mut().find(|s| s.name == record.name) {
                        Some(s) => *s = *record,
                        // Not a pipeline stage: a rollback.
                        None => run.stages.push(*record),
                    }
                    out.changed = true;
                }
            }
            RunEvent::Log { stage, line } => out.lines.push((stage, line)),
            RunEvent::Finish { record } => {
                self.current = Some((*record).clone());
                out.finished = Some(*record);
            }
        }
    }
}

/// A [`RunObserver`] that records, then passes every event on to `inner`.
pub struct LiveRecorder {
    inner: Arc<dyn RunObserver>,
    tx: mpsc::Sender<RunEvent>,
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
        let _ = self.tx.send(RunEvent::Finish {
            record: Box::new(record.without_logs()),
        });
        let handle = self.writer.lock().take();
        let Some(handle) = handle else {
            return Err(anyhow!("the run recorder was already finished"));
        };
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
        let _ = self.tx.send(RunEvent::Started {
            record: Box::new(record.without_logs()),
        });
        self.inner.run_started(record);
    }

    fn stage_started(&self, stage: &str, attempt: u32) {
        let _ = self.tx.send(RunEvent::StageStarted {
            stage: stage.to_string(),
        });
        self.inner.stage_started(stage, attempt);
    }

    fn approval_requested(&self, run_id: &str, stage: &str, environment: &str, timeout: Duration) {
        self.inner
            .approval_requested(run_id, stage, environment, timeout);
    }

    fn stage_log(&self, stage: &str, line: &LogLine) {
        let _ = self.tx.send(RunEvent::Log {
            stage: stage.to_string(),
            line: line.clone(),
        });
        self.inner.stage_log(stage, line);
    }

    fn stage_finished(&self, record: &StageRecord) {
        let _ = self.tx.send(RunEvent::StageFinished {
            record: Box::new(record.without_log()),
        });
        self.inner.stage_finished(record);
    }
}

fn write_loop(store: RunStore, rx: mpsc::Receiver<RunEvent>) -> Result<()> {
    let mut live = LiveRecord::default();
    while let Ok(first) = rx.recv() {
        let batch = gather(&rx, first);
        let applied = live.apply(batch);
        if save_batch(&store, live.current.as_ref(), applied)? {
            return Ok(());
        }
    }
    Ok(())
}

/// A batch starting with `first`: what else comes within [`LINGER`], up to
/// [`BATCH`] messages, ending early at the run's end (a full batch is
/// written at once, never held back).
fn gather(rx: &mpsc::Receiver<RunEvent>, first: RunEvent) -> Vec<RunEvent> {
    let deadline = std::time::Instant::now() + LINGER;
    let mut done = matches!(first, RunEvent::Finish { .. });
    let mut batch = vec![first];
    while !done && batch.len() < BATCH {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) => {
                done = matches!(m, RunEvent::Finish { .. });
                batch.push(m);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Write what one batch changed, in one transaction; true once the run's
/// final record is saved.
pub fn save_batch(store: &RunStore, current: Option<&RunRecord>, applied: Applied) -> Result<bool> {
    store.db().transaction(|_| {
        if let Some(run) = current {
            if applied.restarted {
                store.clear_logs(&run.id)?;
            }
            if let Err(e) = store.append_logs(&run.id, &applied.lines) {
                tracing::warn!("live log of run {}: {e:#}", run.id);
            }
            if applied.changed && applied.finished.is_none() {
                if let Err(e) = store.save(run) {
                    tracing::warn!("live record of run {}: {e:#}", run.id);
                }
            }
        }
        let finished = applied.finished.is_some();
        if let Some(run) = &applied.finished {
            store.save(run)?;
        }
        Ok(finished)
    })
}
