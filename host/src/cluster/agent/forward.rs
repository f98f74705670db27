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
        let record = match (&applied.finished, applied.changed) {
            (Some(r), _) => Some(Box::new(r.clone())),
            (None, true) => live.current.clone().map(Box::new),
            (None, false) => None,
        };
        let chunks = line_chunks(applied.lines);
        let last = chunks.len() - 1;
        for (i, lines) in chunks.into_iter().enumerate() {
            seq += 1;
            let batch = Batch {
                run: id.run.clone(),
                attempt: id.attempt,
                fence: id.fence,
                seq,
                // The log is cleared before the first lines of an attempt.
                restarted: applied.restarted && i == 0,
                record: if i == last { record.clone() } else { None },
                lines,
                finished: finished && i == last,
            };
            send(&bus, &subject, &batch).await;
        }
        if finished {
            return;
        }
    }
}

/// Log lines per batch stay under about this many bytes: NATS refuses a
/// message over its max payload (1 MiB by default).
const MAX_LINE_BYTES: usize = 256 * 1024;

/// `lines` in batches of at most [`MAX_LINE_BYTES`] (always one, maybe
/// empty).
fn line_chunks(lines: Vec<(String, LogLine)>) -> Vec<Vec<(String, LogLine)>> {
    let mut out = Vec::new();
    let (mut cur, mut size) = (Vec::new(), 0);
    for l in lines {
        let n = l.0.len() + l.1.stream.len() + l.1.text.len() + 64;
        if !cur.is_empty() && size + n > MAX_LINE_BYTES {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += n;
        cur.push(l);
    }
    out.push(cur);
    out
}

/// Publish one batch until JetStream stores it (`(run, attempt, seq)` is
/// its message id: sent twice, stored once).
async fn send(bus: &Bus, subject: &str, batch: &Batch) {
    let msg_id = format!("{}.{}.{}", batch.run, batch.attempt, batch.seq);
    let sent = match encode(batch) {
        Ok(body) => bus.publish_stored(subject, &msg_id, body, PATIENCE).await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::error!("run {}: reporting to the server: {e:#}", batch.run);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_cut_into_batches_nats_takes() {
        let line = |n: usize| {
            (
                "build".to_string(),
                LogLine {
                    at_ms: 0,
                    stream: "stdout".into(),
                    text: "x".repeat(n),
                },
            )
        };
        assert_eq!(line_chunks(Vec::new()).len(), 1);
        let many: Vec<_> = (0..100).map(|_| line(10_000)).collect();
        let chunks = line_chunks(many);
        assert!(chunks.len() >= 4, "{}", chunks.len());
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 100);
        for c in &chunks {
            assert!(serde_json::to_vec(c).unwrap().len() < 512 * 1024);
        }
        // One line longer than the limit still goes, alone.
        assert_eq!(line_chunks(vec![line(300_000), line(1)]).len(), 2);
    }
}
