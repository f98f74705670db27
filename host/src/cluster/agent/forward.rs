//! An agent's observer: what happens in a run goes, batched, to the
//! server through the events stream. Batches are numbered so the server
//! writes each once and in order; a batch is retried until JetStream has
//! stored it (NATS may be restarting), never dropped.
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::caps::log::LogLine;
use crate::cluster::bus::{encode, Bus};
use crate::cluster::protocol::Batch;
use crate::run::live::{LiveRecord, RunEvent};
use crate::run::{RunObserver, RunRecord, StageRecord};

/// After the first event of a batch, wait this long for more.
const LINGER: Duration = Duration::from_millis(25);
/// How long one batch may wait for NATS to come back.
const PATIENCE: Duration = Duration::from_secs(3600);

pub struct Forwarder {
    tx: mpsc::UnboundedSender<RunEvent>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Which attempt the batches belong to.
#[derive(Clone)]
pub struct AttemptId {
    pub run: String,
    pub attempt: u32,
    pub fence: i64,
}

impl Forwarder {
    pub fn start(bus: Bus, id: AttemptId) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(send_loop(bus, id, rx));
        Arc::new(Self {
            tx,
            task: Mutex::new(Some(task)),
        })
    }

    /// Send the final record (after everything before it) and wait until
    /// it is stored.
    pub async fn finish(&self, record: &RunRecord) {
        let _ = self.tx.send(RunEvent::Finish {
            record: Box::new(record.without_logs()),
        });
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

async fn send_loop(bus: Bus, id: AttemptId, mut rx: mpsc::UnboundedReceiver<RunEvent>) {
    let mut live = LiveRecord::default();
    let mut seq = 0u64;
    let subject = format!("pipeline.events.{}", id.run);
    while let Some(first) = rx.recv().await {
        let last = matches!(first, RunEvent::Finish { .. });
        if !last {
            tokio::time::sleep(LINGER).await;
        }
        let mut events = vec![first];
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        let finished = events.iter().any(|e| matches!(e, RunEvent::Finish { .. }));
        let applied = live.apply(events);
        seq += 1;
        let batch = Batch {
            run: id.run.clone(),
            attempt: id.attempt,
            fence: id.fence,
            seq,
            restarted: applied.restarted,
            record: match (&applied.finished, applied.changed) {
                (Some(r), _) => Some(Box::new(r.clone())),
                (None, true) => live.current.clone().map(Box::new),
                (None, false) => None,
            },
            lines: applied.lines,
            finished,
        };
        let msg_id = format!("{}.{}.{}", id.run, id.attempt, seq);
        let sent = match encode(&batch) {
            Ok(body) => bus.publish_stored(&subject, &msg_id, body, PATIENCE).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::error!("run {}: reporting to the server: {e:#}", id.run);
        }
        if finished {
            return;
        }
    }
}

impl RunObserver for Forwarder {
    fn run_started(&self, record: &RunRecord) {
        let _ = self.tx.send(RunEvent::Started {
            record: Box::new(record.without_logs()),
        });
    }
    fn stage_started(&self, stage: &str, _attempt: u32) {
        let _ = self.tx.send(RunEvent::StageStarted {
            stage: stage.to_string(),
        });
    }
    fn stage_log(&self, stage: &str, line: &LogLine) {
        let _ = self.tx.send(RunEvent::Log {
            stage: stage.to_string(),
            line: line.clone(),
        });
    }
    fn stage_finished(&self, record: &StageRecord) {
        let _ = self.tx.send(RunEvent::StageFinished {
            record: Box::new(record.without_log()),
        });
    }
}
