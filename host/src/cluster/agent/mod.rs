//! `host agent`: pulls runs from JetStream (one per free slot, from the
//! subjects of every subset of its labels), claims each from the server,
//! runs it like the server would, and reports back. While a run is in
//! progress it sends JetStream in-progress acks from its own task, so a
//! run whose agent dies is delivered to another after the ack wait.
mod forward;
mod hooks;
mod source;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::bus::Bus;
use super::config::AgentConfig;
use super::protocol::{label_key, Cancel, Reply, Request, RunMessage, CANCEL_PREFIX, RUNS_STREAM};
use crate::run::launch::RunControl;
use crate::runtime::Runtime;
use forward::AttemptId;

/// How long a claim waits for the server to answer.
const CLAIM_PATIENCE: Duration = Duration::from_secs(600);

/// Deliveries are not limited: attempts are counted by the server's claims
/// (a delivery whose agent died before it claimed spends none), and the
/// claim after the last attempt gives the run up. A limit here would leave
/// a run JetStream stopped delivering that nobody gave up.
pub const MAX_DELIVER: i64 = -1;

pub struct Agent {
    pub cfg: AgentConfig,
    bus: Bus,
    runtime: Arc<Runtime>,
    /// The state directory's stores, shared by every run here.
    stores: Arc<crate::run::stores::RunStores>,
    /// Runs in progress here: attempt and control, to cancel them.
    running: Mutex<HashMap<String, (u32, RunControl)>>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// Run the agent until `shutdown`; runs in progress are given back to
/// the queue (another agent runs them from the start).
pub async fn run(
    cfg: AgentConfig,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
) -> Result<()> {
    std::fs::create_dir_all(&cfg.workspaces)
        .with_context(|| format!("creating {}", cfg.workspaces.display()))?;
    let bus = Bus::connect(&cfg.nats, &format!("agent {}", cfg.name)).await?;
    let agent = Arc::new(Agent {
        stores: crate::run::stores::RunStores::open(&cfg.state_dir)?,
        slots: Arc::new(Semaphore::new(cfg.concurrency)),
        cfg,
        bus,
        runtime,
        running: Mutex::new(HashMap::new()),
        shutdown,
    });
    let cancels = agent
        .bus
        .client
        .subscribe(format!("{CANCEL_PREFIX}.*"))
        .await
        .context("subscribing to cancels")?;
    tokio::spawn(listen_for_cancels(agent.clone(), cancels));
    let mut pullers = tokio::task::JoinSet::new();
    let subsets = subsets(&agent.cfg.labels);
    for labels in &subsets {
        let key = label_key(labels);
        let consumer = agent
            .bus
            .consumer(
                RUNS_STREAM,
                &durable_name(&key),
                &format!("pipeline.runs.{key}"),
                agent.cfg.ack_wait,
                MAX_DELIVER,
            )
            .await?;
        pullers.spawn(pull_loop(agent.clone(), consumer, subsets.len() > 1));
    }
    // Tests and scripts wait for this line.
    eprintln!(
        "host agent {}: ready ({} slot(s), labels: {})",
        agent.cfg.name,
        agent.cfg.concurrency,
        label_key(&agent.cfg.labels)
    );
    agent.shutdown.cancelled().await;
    for (_, c) in agent.running.lock().values() {
        c.cancel("the agent stopped; the run goes back to the queue");
    }
    while pullers.join_next().await.is_some() {}
    // Wait for runs to hand their deliveries back.
    let _ = agent.slots.acquire_many(agent.cfg.concurrency as u32).await;
    Ok(())
}

/// Every subset of `labels` (an agent with `docker` also runs runs that
/// need nothing).
fn subsets(labels: &[String]) -> Vec<Vec<String>> {
    let mut l = labels.to_vec();
    l.sort();
    l.dedup();
    l.truncate(8);
    (0..1u32 << l.len())
        .map(|mask| {
            l.iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| s.clone())
                .collect()
        })
        .collect()
}

/// One durable consumer per label set, shared by every agent serving it.
fn durable_name(key: &str) -> String {
    format!("runs-{}", &crate::digest::sha256_hex(key.as_bytes())[..16])
}

async fn pull_loop(
    agent: Arc<Agent>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    several: bool,
) {
    // With several subjects to watch, hold a free slot on one only briefly.
    let expires = if several {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    loop {
        let permit = tokio::select! {
            p = agent.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = agent.shutdown.cancelled() => return,
        };
        let fetched = tokio::select! {
            b = next_message(&consumer, expires) => b,
            _ = agent.shutdown.cancelled() => return,
        };
        match fetched {
            Ok(Some(msg)) => {
                tokio::spawn(deliver(agent.clone(), msg, permit));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("pulling runs: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn next_message(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    expires: Duration,
) -> Result<Option<jetstream::Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(expires)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match batch.next().await {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
        None => Ok(None),
    }
}

/// Heartbeats: in-progress acks every third of the ack wait, until
/// dropped.
fn heartbeat(msg: Arc<jetstream::Message>, ack_wait: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = ack_wait / 3;
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                tracing::debug!("heartbeat: {e}");
            }
        }
    })
}

/// How one delivery ended, for its ack.
enum Outcome {
    /// Reported to the server: done with the message.
    Done,
    /// Not ours any more (taken over, or refused): leave the message to
    /// its owner.
    Stale,
    /// Hand it back at once (the agent is stopping, the server away).
    GiveBack,
}

async fn deliver(agent: Arc<Agent>, msg: jetstream::Message, _slot: OwnedSemaphorePermit) {
    let msg = Arc::new(msg);
    let beat = heartbeat(msg.clone(), agent.cfg.ack_wait);
    let outcome = match attempt(&agent, &msg).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("a delivered run: {e:#}");
            Outcome::GiveBack
        }
    };
    beat.abort();
    let acked = match outcome {
        Outcome::Done => msg.double_ack().await,
        Outcome::Stale => Ok(()),
        Outcome::GiveBack => msg.ack_with(AckKind::Nak(None)).await,
    };
    if let Err(e) = acked {
        tracing::warn!("acknowledging a run: {e}");
    }
}

/// Claim the delivered run, run it, report it.
async fn attempt(agent: &Arc<Agent>, msg: &jetstream::Message) -> Result<Outcome> {
    let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (stream_seq, delivered) = (info.stream_sequence, info.delivered.max(1) as u32);
    let Ok(rm) = serde_json::from_slice::<RunMessage>(&msg.payload) else {
        tracing::error!("a run message that is not understood (stream seq {stream_seq}): dropped");
        msg.ack_with(AckKind::Term).await.ok();
        return Ok(Outcome::Stale);
    };
    let run = rm.queued.run_id.clone();
    if agent.running.lock().contains_key(&run) {
        // Our own run again (a heartbeat came late): keep running it.
        return Ok(Outcome::Stale);
    }
    let req = Request::Claim {
        run: run.clone(),
        agent: agent.cfg.name.clone(),
        stream_seq,
        delivered,
    };
    // While the server cannot answer (its store restarting) the delivery
    // is kept, heartbeat and all: handing it back would spend one of its
    // few deliveries on nothing.
    let (fence, attempt) = match agent.bus.ask(&req, CLAIM_PATIENCE).await? {
        Reply::Claimed { fence, attempt } => (fence, attempt),
        Reply::Refused { why } => {
            tracing::info!("run {run}: not run here: {why}");
            return Ok(Outcome::Done);
        }
        other => anyhow::bail!("run {run}: unexpected answer to a claim: {other:?}"),
    };
    let id = AttemptId {
        run: run.clone(),
        attempt,
        fence,
    };
    let control = RunControl::new();
    agent
        .running
        .lock()
        .insert(run.clone(), (attempt, control.clone()));
    let ran = source::run_attempt(agent, &rm, &id, &control).await;
    agent.running.lock().remove(&run);
    if agent.shutdown.is_cancelled() && control.is_cancelled() {
        // Said so, so the record shows `stopped`, not `died`.
        let release = Request::Release { run, fence };
        if let Err(e) = agent.bus.ask(&release, Duration::from_secs(5)).await {
            tracing::warn!("handing a run back: {e:#}");
        }
        return Ok(Outcome::GiveBack);
    }
    ran?;
    // Acked only while still the owner: a stale agent's ack would take
    // the delivery from the agent that runs it now.
    let owns = Request::Owns { run, fence };
    Ok(match agent.bus.ask(&owns, agent.cfg.ack_wait).await? {
        Reply::Refused { why } if why.contains("another agent") => Outcome::Stale,
        _ => Outcome::Done,
    })
}

async fn listen_for_cancels(agent: Arc<Agent>, mut sub: async_nats::Subscriber) {
    while let Some(m) = sub.next().await {
        let Ok(c) = serde_json::from_slice::<Cancel>(&m.payload) else {
            continue;
        };
        if let Some((attempt, control)) = agent.running.lock().get(&c.run) {
            if c.attempt.is_none_or(|a| a == *attempt) {
                control.cancel(c.reason.clone());
            }
        }
    }
}
