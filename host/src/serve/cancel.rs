//! Cancelling a run of `host serve` from any machine: `host cancel RUN`
//! writes a request into the run store; the server picks requests up
//! within a quarter second and stops the run where it is. A queued run
//! leaves the queue (recorded as cancelled); a running one is cancelled on
//! the server or, on a cluster, on its agent.
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::params;
use crate::run::record::now_rfc3339;
use crate::run::{RunStore, Status};
use crate::serve::dispatch::record_unstarted;
use crate::serve::queue::Queue;
use crate::serve::ServerState;
use crate::store::Db;

/// How often the server looks for requests.
const LOOK: Duration = Duration::from_millis(250);

pub fn init(db: &Db) -> Result<()> {
    db.batch(
        "CREATE TABLE IF NOT EXISTS cancel_requests (
             run_id TEXT PRIMARY KEY,
             reason TEXT NOT NULL,
             requested_at TEXT NOT NULL,
             handled BIGINT NOT NULL DEFAULT 0
         );",
    )
}

/// Why a run cannot be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum NotCancellable {
    #[error("no run {0} in this run store")]
    Unknown(String),
    #[error("run {0} has already ended ({1})")]
    Ended(String, Status),
}

/// Whether `run` may be cancelled (`host cancel` and the API ask the same).
pub fn cancellable(store: &RunStore, run: &str) -> Result<Result<(), NotCancellable>> {
    let queued = Queue::new(store.db()).find(run)?;
    Ok(match (store.status(run)?, queued) {
        (Some(s), _) if s.is_final() => Err(NotCancellable::Ended(run.into(), s)),
        (None, None) => Err(NotCancellable::Unknown(run.into())),
        _ => Ok(()),
    })
}

/// Ask for `run` to be cancelled. Refused for a run nobody knows or one
/// that has ended.
pub fn request(store: &RunStore, run: &str, reason: &str) -> Result<()> {
    init(store.db())?;
    cancellable(store, run)??;
    store.db().execute(
        "INSERT INTO cancel_requests (run_id, reason, requested_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (run_id) DO NOTHING",
        &params![run, reason, now_rfc3339()],
    )?;
    Ok(())
}

/// Requests not yet acted on, marked taken.
fn take(db: &Db) -> Result<Vec<(String, String)>> {
    db.transaction(|tx| {
        let rows = tx.query(
            "SELECT run_id, reason FROM cancel_requests WHERE handled = 0 ORDER BY requested_at",
            &[],
        )?;
        let out: Vec<(String, String)> = rows
            .iter()
            .map(|r| Ok((r.get_str(0)?, r.get_str(1)?)))
            .collect::<Result<_>>()?;
        for (run, _) in &out {
            tx.execute(
                "UPDATE cancel_requests SET handled = 1 WHERE run_id = ?1",
                &params![run],
            )?;
        }
        Ok(out)
    })
}

/// Until shutdown: act on cancel requests.
pub async fn watch(s: Arc<ServerState>) {
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(LOOK) => {}
        }
        match s.with_db(|db| take(db.db())).await {
            Ok(requests) => {
                for (run, reason) in requests {
                    cancel(&s, &run, &reason).await;
                }
            }
            Err(e) => tracing::debug!("reading cancel requests: {e:#}"),
        }
    }
}

/// Stop `run`: out of the queue if it waits there, else where it runs.
pub async fn cancel(s: &Arc<ServerState>, run: &str, reason: &str) {
    let r = run.to_string();
    let waiting = s
        .with_db(move |db| Queue::new(db.db()).cancel_queued(&r))
        .await;
    match waiting {
        Ok(Some(q)) => {
            let pipeline = q.repository.clone();
            record_unstarted(s, &q, &pipeline, Status::Cancelled, reason.to_string()).await;
            s.wake.notify_one();
        }
        Ok(None) => match s.cluster.get() {
            Some(c) => c.cancel(s, run, reason).await,
            None => {
                if let Some(c) = s.running.lock().get(run) {
                    c.cancel(reason.to_string());
                }
            }
        },
        Err(e) => tracing::error!("cancelling run {run}: {e:#}"),
    }
}
