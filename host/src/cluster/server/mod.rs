//! The server's side of the cluster: queued runs are published to
//! JetStream (the queue still decides what may start: groups, superseded
//! runs), agents' questions are answered from the run store, and what
//! they report is written there, fenced. The server is the only writer of
//! the run store; agents hold NATS credentials only.
mod answer;
mod events;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::bus::{encode, Bus};
use super::claims;
use super::config::ClusterSettings;
use super::protocol::{label_key, run_subject, Cancel, RunMessage, CANCEL_PREFIX};
use crate::run::approvals::ApprovalStore;
use crate::run::Status;
use crate::serve::dispatch::{job_source, record_unstarted};
use crate::serve::queue::{Queue, QueuedJob};
use crate::serve::ServerState;
use crate::store::StoreLocation;

/// Look at the queue this often even when nothing woke us.
const IDLE_LOOK: Duration = Duration::from_secs(2);
/// How long a publish may wait for NATS before the run goes back to the
/// queue (it is published again on the next look).
const PUBLISH_PATIENCE: Duration = Duration::from_secs(10);

pub struct Cluster {
    pub bus: Bus,
    /// The approvals in the run store, answered for agents.
    approvals: ApprovalStore,
}

impl Cluster {
    pub async fn connect(settings: &ClusterSettings, database_url: &str) -> Result<Arc<Self>> {
        let bus = Bus::connect(&settings.nats, "host serve").await?;
        let loc = StoreLocation::Postgres(database_url.to_string());
        let approvals = tokio::task::spawn_blocking(move || ApprovalStore::open_at(&loc)).await??;
        Ok(Arc::new(Self { bus, approvals }))
    }

    /// Stop `run` wherever it is: a run no agent holds yet ends here
    /// (recorded as cancelled); a running one is told to stop.
    pub async fn cancel(&self, s: &Arc<ServerState>, run: &str, reason: &str) {
        let (r, why) = (run.to_string(), reason.to_string());
        let ended = s.with_db(move |db| claims::cancel(db.db(), &r, &why)).await;
        match ended {
            Ok(true) => {
                let r = run.to_string();
                let q = s.with_db(move |db| Queue::new(db.db()).find(&r)).await;
                if let Ok(Some(q)) = q {
                    end_unstarted(s, &q, Status::Cancelled, reason.to_string()).await;
                }
            }
            Ok(false) => {
                let c = Cancel {
                    run: run.to_string(),
                    attempt: None,
                    reason: reason.to_string(),
                };
                self.tell(&c).await;
            }
            Err(e) => tracing::error!("cancelling run {run}: {e:#}"),
        }
    }

    /// Publish a cancel for agents (plain NATS: an agent that misses it
    /// learns at its next ownership check).
    async fn tell(&self, c: &Cancel) {
        let subject = format!("{CANCEL_PREFIX}.{}", c.run);
        if let Ok(body) = encode(c) {
            if let Err(e) = self.bus.client.publish(subject, body.into()).await {
                tracing::warn!("telling agents to cancel run {}: {e}", c.run);
            }
        }
    }
}

/// At start: runs the queue holds are either queued or already handed to
/// JetStream; nothing to put back. Returns a line for the start-up message.
pub async fn recover(s: &Arc<ServerState>) -> Result<String> {
    let (queued, dispatched) = s.with_db(|db| Queue::new(db.db()).depth()).await?;
    Ok(format!(
        "{queued} run(s) queued, {dispatched} with agents; runs go to agents over NATS"
    ))
}

/// Loop until shutdown: publish what may start, answer agents, write what
/// they report.
pub async fn run(s: Arc<ServerState>, c: Arc<Cluster>) {
    let answering = tokio::spawn(answer::serve(s.clone(), c.clone()));
    let writing = tokio::spawn(events::serve(s.clone(), c.clone()));
    loop {
        publish_startable(&s, &c).await;
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = s.shutdown.cancelled() => break,
            _ = tokio::time::sleep(IDLE_LOOK) => {}
        }
    }
    answering.abort();
    writing.abort();
}

/// Publish runs taken from the queue but not yet stored in JetStream,
/// then every run the queue lets start.
async fn publish_startable(s: &Arc<ServerState>, c: &Arc<Cluster>) {
    let pending = s
        .with_db(|db| {
            let queue = Queue::new(db.db());
            let mut out = Vec::new();
            for run in claims::unpublished(db.db())? {
                out.extend(queue.find(&run)?);
            }
            Ok(out)
        })
        .await;
    for q in pending.unwrap_or_default() {
        if !publish(s, c, q).await {
            return;
        }
    }
    loop {
        let taken = s
            .with_db(|db| {
                db.db().transaction(|tx| {
                    let q = Queue::new(tx).claim()?;
                    if let Some(q) = &q {
                        claims::publishing(tx, &q.run_id)?;
                    }
                    Ok(q)
                })
            })
            .await;
        match taken {
            Ok(Some(q)) => {
                if !publish(s, c, q).await {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::error!("reading the queue: {e:#}");
                return;
            }
        }
    }
}

/// Store one run in JetStream for agents offering the labels its source
/// requires. False when NATS is away (try again later).
async fn publish(s: &Arc<ServerState>, c: &Arc<Cluster>, q: QueuedJob) -> bool {
    let labels = source_labels(s, &q);
    let run = q.run_id.clone();
    let Some(seq) = publish_with(s, c, q, labels).await else {
        return false;
    };
    if let Err(e) = s
        .with_db({
            let run = run.clone();
            move |db| claims::dispatched(db.db(), &run, seq)
        })
        .await
    {
        tracing::error!("run {run}: {e:#}");
    }
    true
}

/// The labels a run of this source requires (`[[repository]] labels`).
fn source_labels(s: &ServerState, q: &QueuedJob) -> Vec<String> {
    let name = &q.job.repository;
    let repo = s.config.repositories.iter().find(|r| &r.name == name);
    repo.map(|r| r.labels.clone()).unwrap_or_default()
}

/// Publish `q` on the subject of `labels` (message id: the run id and the
/// labels, so publishing it again is stored once); its stream sequence,
/// `None` when NATS is away. A run whose source is gone ends here.
pub(super) async fn publish_with(
    s: &Arc<ServerState>,
    c: &Arc<Cluster>,
    q: QueuedJob,
    labels: Vec<String>,
) -> Option<u64> {
    let source = match job_source(s, &q) {
        Ok(src) => src,
        Err(u) => {
            end_unstarted(s, &q, u.status, u.reason).await;
            return Some(0);
        }
    };
    let subject = run_subject(&labels);
    let id = format!("{}@{}", q.run_id, label_key(&labels));
    let msg = RunMessage {
        queued: q,
        source,
        labels,
        public_url: s.config.public_url.clone(),
    };
    let run = msg.queued.run_id.clone();
    let published = match encode(&msg) {
        Ok(body) => {
            c.bus
                .publish_stored(&subject, &id, body, PUBLISH_PATIENCE)
                .await
        }
        Err(e) => Err(e),
    };
    match published {
        Ok(seq) => Some(seq),
        Err(e) => {
            tracing::warn!("run {run}: {e:#}; publishing it again later");
            None
        }
    }
}

/// A run that ends without any agent running it: recorded, out of the
/// queue and the claims.
pub(super) async fn end_unstarted(
    s: &Arc<ServerState>,
    q: &QueuedJob,
    status: Status,
    reason: String,
) {
    let pipeline = match s
        .with_db({
            let r = q.run_id.clone();
            move |db| db.get(&r)
        })
        .await
    {
        Ok(Some(rec)) => rec.pipeline,
        _ => q.repository.clone(),
    };
    // The claims end first: the record, saved once and final, then says
    // which attempts the run had (a reader never sees it without them).
    let r = q.run_id.clone();
    let done = s
        .with_db(move |db| {
            db.db().transaction(|tx| {
                claims::finish(tx, &r, status.as_str())?;
                Queue::new(tx).finish(&r)
            })
        })
        .await;
    if let Err(e) = done {
        tracing::error!("run {}: {e:#}", q.run_id);
    }
    record_unstarted(s, q, &pipeline, status, reason).await;
    s.wake.notify_one();
}
