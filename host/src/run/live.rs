//! Keeps a run's record and log in the store while the run goes, so that
//! `host runs`, `host logs --follow` and `host serve`'s pages see it live,
//! from any process.
//!
//! Observer callbacks come from stage tasks and must not block them: they
//! go through a channel to one writer thread that owns its own database
//! connection and writes in batches (one transaction per batch). While a
//! batch gathers the writer sleeps instead of waiting on the channel, so a
//! send is a queue push, not a wake-up of another thread.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

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

/// The one writer of a state directory's live records: a thread with its
/// own connection, kept for as long as the [`RunStores`] that opened it
/// (a server or an agent keeps it for every run; opening the store per run
/// cost its schema check, and closing it a WAL checkpoint with an fsync).
/// Runs send it their events; it writes them in batches.
///
/// [`RunStores`]: crate::run::stores::RunStores
pub struct RecordWriter {
    tx: mpsc::Sender<Message>,
    /// Messages sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    /// The writer's thread, to wake early (a full batch, a run's end).
    thread: std::thread::Thread,
}

/// One event of one run; a run's last carries where to say it is saved.
struct Message {
    run: Arc<str>,
    event: RunEvent,
    saved: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// How many messages one write may take (bounds a transaction).
const BATCH: usize = 4096;
/// After the first message of a batch, wait this long for more (unless
/// a run ends): stages that log a lot then cost a channel push per line,
/// not a wake-up and a transaction.
const LINGER: Duration = Duration::from_millis(25);

impl RecordWriter {
    /// Start the writer for the store in `state_dir` (opened here, so a
    /// store that cannot be opened fails the caller now). It stops when
    /// the writer and every recorder made from it are dropped.
    pub fn start(state_dir: &Path) -> Result<Self> {
        let store = RunStore::open(state_dir)?;
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let dir: PathBuf = state_dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("run-recorder".into())
            .spawn(move || write_loop(&store, &rx, &taken, &dir))
            .context("starting the run recorder")?
            .thread()
            .clone();
        Ok(Self { tx, queued, thread })
    }

    fn handle(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
            thread: self.thread.clone(),
        }
    }

    /// A recorder of the run `run_id` that passes events on to `inner`.
    pub fn recorder(&self, run_id: &str, inner: Arc<dyn RunObserver>) -> Arc<LiveRecorder> {
        Arc::new(LiveRecorder {
            inner,
            run: run_id.into(),
            writer: self.handle(),
        })
    }

    /// Queue a message; wake the writer when a batch is full (or `now`).
    fn send(&self, message: Message, now: bool) {
        // Counted before it is queued, so the writer never takes a message
        // it has not been told about (the count cannot go below zero).
        let queued = self.queued.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let _ = self.tx.send(message);
        if queued == BATCH || now {
            self.thread.unpark();
        }
    }
}

/// A [`RunObserver`] that records one run, then passes every event on to
/// `inner`.
pub struct LiveRecorder {
    inner: Arc<dyn RunObserver>,
    run: Arc<str>,
    writer: RecordWriter,
}

impl LiveRecorder {
    fn send(&self, event: RunEvent) {
        let run = self.run.clone();
        let message = Message {
            run,
            event,
            saved: None,
        };
        self.writer.send(message, false);
    }

    /// Save the final record (after everything sent before it).
    pub async fn finish(&self, record: &RunRecord) -> Result<()> {
        let (saved, done) = tokio::sync::oneshot::channel();
        let message = Message {
            run: self.run.clone(),
            event: RunEvent::Finish {
                record: Box::new(record.without_logs()),
            },
            saved: Some(saved),
        };
        self.writer.send(message, true);
        match done.await {
            Ok(result) => result.map_err(|e| anyhow!(e)),
            Err(_) => Err(anyhow!("the run recorder stopped")),
        }
        .context("saving the run record")
    }
}

impl RunObserver for LiveRecorder {
    fn run_started(&self, record: &RunRecord) {
        self.send(RunEvent::Started {
            record: Box::new(record.without_logs()),
        });
        self.inner.run_started(record);
    }

    fn stage_started(&self, stage: &str, attempt: u32) {
        self.send(RunEvent::StageStarted {
            stage: stage.to_string(),
        });
        self.inner.stage_started(stage, attempt);
    }

    fn approval_requested(&self, run_id: &str, stage: &str, environment: &str, timeout: Duration) {
        self.inner
            .approval_requested(run_id, stage, environment, timeout);
    }

    fn stage_log(&self, stage: &str, line: &LogLine) {
        self.send(RunEvent::Log {
            stage: stage.to_string(),
            line: line.clone(),
        });
        self.inner.stage_log(stage, line);
    }

    fn stage_finished(&self, record: &StageRecord) {
        self.send(RunEvent::StageFinished {
            record: Box::new(record.without_log()),
        });
        self.inner.stage_finished(record);
    }
}

/// The runs being recorded: each one's record, and the first write that
/// failed (reported when the run finishes).
#[derive(Default)]
struct Recording {
    record: LiveRecord,
    failed: Option<String>,
}

fn write_loop(store: &RunStore, rx: &mpsc::Receiver<Message>, queued: &AtomicUsize, dir: &Path) {
    let mut runs: HashMap<Arc<str>, Recording> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let batch = gather(rx, first);
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        for (run, events, saved) in by_run(batch) {
            let rec = runs.entry(run.clone()).or_default();
            let applied = rec.record.apply(events);
            let finished = applied.finished.is_some();
            match save_batch(store, rec.record.current.as_ref(), applied) {
                Ok(_) => {}
                Err(e) => {
                    let e = format!("recording runs in {}: {e:#}", dir.display());
                    tracing::warn!("run {run}: {e}");
                    rec.failed.get_or_insert(e);
                }
            }
            if finished {
                let rec = runs.remove(&run).unwrap_or_default();
                for s in saved {
                    let _ = s.send(rec.failed.clone().map_or(Ok(()), Err));
                }
            }
        }
    }
}

/// A batch's messages by run (in the order each run first appears), each
/// run's events in order, with who waits for its save.
#[allow(clippy::type_complexity)]
fn by_run(
    batch: Vec<Message>,
) -> Vec<(
    Arc<str>,
    Vec<RunEvent>,
    Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
)> {
    let mut out: Vec<(Arc<str>, Vec<RunEvent>, Vec<_>)> = Vec::new();
    for m in batch {
        let at = match out.iter().position(|(run, _, _)| *run == m.run) {
            Some(at) => at,
            None => {
                out.push((m.run.clone(), Vec::new(), Vec::new()));
                out.len() - 1
            }
        };
        out[at].1.push(m.event);
        out[at].2.extend(m.saved);
    }
    out
}

/// A batch starting with `first`: what else comes within [`LINGER`], up to
/// [`BATCH`] messages, ending early at a run's end (a full batch is
/// written at once, never held back). Sleeps between looks: senders wake
/// it only for a full batch or a run's end.
fn gather(rx: &mpsc::Receiver<Message>, first: Message) -> Vec<Message> {
    let deadline = std::time::Instant::now() + LINGER;
    let mut done = first.saved.is_some();
    let mut batch = vec![first];
    loop {
        while !done && batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    done = m.saved.is_some();
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done || batch.len() >= BATCH || left.is_zero() {
            return batch;
        }
        std::thread::park_timeout(left);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Quiet, RunOptions};

    /// Many runs recording at once from several threads: every one is saved,
    /// and the writer's count of queued messages ends at zero.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn runs_recorded_together_are_each_saved_whole() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Arc::new(RecordWriter::start(dir.path()).unwrap());
        let mut runs = tokio::task::JoinSet::new();
        for n in 0..32 {
            let writer = writer.clone();
            runs.spawn(async move {
                let id = format!("run-{n}");
                let opts = RunOptions::new(id.clone(), "/tmp".into());
                let mut record = RunRecord::new("p", &opts);
                let recorder = writer.recorder(&id, Arc::new(Quiet));
                recorder.run_started(&record);
                for i in 0..300 {
                    let text = format!("line {i}");
                    let line = LogLine {
                        at_ms: i,
                        stream: "info".into(),
                        text,
                    };
                    recorder.stage_log("s", &line);
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                record.status = Status::Success;
                recorder.finish(&record).await.unwrap();
                id
            });
        }
        let store = RunStore::open(dir.path()).unwrap();
        while let Some(id) = runs.join_next().await {
            let id = id.expect("a recording run panicked");
            let saved = store.get(&id).unwrap().expect("saved");
            assert_eq!(saved.status, Status::Success, "{id}");
        }
        assert_eq!(writer.queued.load(Ordering::Acquire), 0);
    }
}
