//! Writing what agents report: batches from the events stream, applied in
//! order, each once (`(run, attempt, seq)`), and only while the sender's
//! fence is the run's. A batch the store cannot take now is kept (not
//! acknowledged) and tried again, so a PostgreSQL restart loses nothing.
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;

use super::Cluster;
use crate::cluster::claims;
use crate::cluster::protocol::{Batch, Cancel, EVENTS_STREAM};
use crate::run::RunStore;
use crate::serve::queue::Queue;
use crate::serve::ServerState;

/// The server's consumer of the events stream.
const DURABLE: &str = "server";

/// What became of one batch.
enum Written {
    Applied {
        finished: bool,
    },
    /// Refused (stale fence) or already applied.
    Dropped {
        stale: bool,
        why: String,
    },
}

pub(super) async fn serve(s: Arc<ServerState>, c: Arc<Cluster>) {
    let consumer = loop {
        match c
            .bus
            .consumer(
                EVENTS_STREAM,
                DURABLE,
                "pipeline.events.>",
                Duration::from_secs(30),
                -1,
            )
            .await
        {
            Ok(x) => break x,
            Err(e) => {
                tracing::warn!("opening the events stream: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        let batch = consumer
            .batch()
            .max_messages(256)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut msgs = match batch {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("reading agents' reports: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(Ok(msg)) = msgs.next().await {
            write_until_stored(&s, &c, &msg).await;
            if let Err(e) = msg.ack().await {
                tracing::warn!("acknowledging a report: {e}");
            }
        }
    }
}

async fn write_until_stored(s: &Arc<ServerState>, c: &Arc<Cluster>, msg: &jetstream::Message) {
    let b: Batch = match serde_json::from_slice(&msg.payload) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("a report that is not understood: {e}; dropped");
            return;
        }
    };
    let mut refused_by_a_working_store = 0;
    loop {
        let batch = b.clone();
        let statuses = crate::serve::forge::Statuses::of(&s.config);
        match s.with_db(move |db| write(db, batch, statuses)).await {
            Ok(Written::Applied { finished }) => {
                if finished {
                    s.statuses.notify_one();
                    finished_run(s, &b.run).await;
                }
                return;
            }
            Ok(Written::Dropped { stale, why }) => {
                tracing::info!(
                    "run {} attempt {}: a report dropped: {why}",
                    b.run,
                    b.attempt
                );
                if stale {
                    // The agent still runs it: tell that attempt to stop.
                    let cancel = Cancel {
                        run: b.run.clone(),
                        attempt: Some(b.attempt),
                        reason: format!("this attempt no longer owns the run: {why}"),
                    };
                    c.tell(&cancel).await;
                }
                return;
            }
            Err(e) => {
                // A store that is away comes back: wait for it. A batch a
                // working store keeps refusing would block every report
                // after it: give it up, loudly.
                if store_answers(s).await {
                    refused_by_a_working_store += 1;
                    if refused_by_a_working_store >= POISON_TRIES {
                        tracing::error!(
                            "run {}: a report the store refuses: {e:#}; dropped",
                            b.run
                        );
                        return;
                    }
                }
                tracing::warn!("run {}: writing a report: {e:#}; trying again", b.run);
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// How often a working store may refuse one batch before it is dropped.
const POISON_TRIES: u32 = 5;

async fn store_answers(s: &Arc<ServerState>) -> bool {
    s.with_db(|db| db.db().query("SELECT 1", &[]).map(|_| ()))
        .await
        .is_ok()
}

fn write(
    db: &RunStore,
    b: Batch,
    statuses: Option<crate::serve::forge::Statuses>,
) -> Result<Written> {
    db.db().transaction(|tx| {
        if let Some(why) = claims::admit_batch(tx, &b.run, b.attempt, b.fence, b.seq)? {
            let stale = why != "duplicate";
            return Ok(Written::Dropped { stale, why });
        }
        if b.restarted {
            db.clear_logs(&b.run)?;
        }
        db.append_logs(&b.run, &b.lines)?;
        if let Some(mut rec) = b.record.map(|r| *r) {
            // An agent reports on its own run only.
            rec.id = b.run.clone();
            if b.finished {
                claims::finish(tx, &b.run, rec.status.as_str())?;
                Queue::new(tx).finish(&b.run)?;
            }
            rec.attempts = claims::attempts(tx, &b.run)?;
            db.save(&rec)?;
            if let (true, Some(st)) = (b.finished, &statuses) {
                st.ended(tx, &rec)?;
            }
        }
        Ok(Written::Applied {
            finished: b.finished,
        })
    })
}

/// A run ended: its uploaded source is no longer needed; the queue may
/// start what waited for it.
async fn finished_run(s: &Arc<ServerState>, run: &str) {
    let r = run.to_string();
    if let Ok(Some(q)) = s.with_db(move |db| Queue::new(db.db()).find(&r)).await {
        if let Some(archive) = q.job.archive {
            let _ = tokio::fs::remove_file(archive).await;
        }
    }
    s.wake.notify_one();
}
