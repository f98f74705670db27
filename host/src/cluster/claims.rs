//! Who owns which attempt of which run, in the run store, fenced: every
//! claim takes a new fence number, and whatever an agent writes later is
//! applied only while its fence is still the run's. A stale agent (one
//! whose run was handed to another after it stopped answering) is refused.
//!
//! A run here is `publishing` (taken from the queue, not yet stored in
//! JetStream), `dispatched` (waiting for an agent), `running`, `cancelling`
//! or `done`.
use anyhow::Result;

use crate::params;
use crate::run::record::{now_rfc3339, AttemptRecord};
use crate::store::Db;

pub fn init(db: &Db) -> Result<()> {
    db.batch(
        "CREATE TABLE IF NOT EXISTS cluster_runs (
             run_id TEXT PRIMARY KEY,
             state TEXT NOT NULL,
             stream_seq BIGINT NOT NULL DEFAULT 0,
             attempt BIGINT NOT NULL DEFAULT 0,
             fence BIGINT NOT NULL DEFAULT 0,
             reason TEXT
         );
         CREATE TABLE IF NOT EXISTS cluster_claims (
             run_id TEXT NOT NULL,
             attempt BIGINT NOT NULL,
             agent TEXT NOT NULL,
             fence BIGINT NOT NULL,
             claimed_at TEXT NOT NULL,
             outcome TEXT,
             PRIMARY KEY (run_id, attempt)
         );
         CREATE TABLE IF NOT EXISTS cluster_batches (
             run_id TEXT NOT NULL,
             attempt BIGINT NOT NULL,
             seq BIGINT NOT NULL,
             PRIMARY KEY (run_id, attempt, seq)
         );",
    )
}

/// What a claim came to.
#[derive(Debug, PartialEq)]
pub enum Claim {
    Claimed {
        fence: i64,
        attempt: u32,
    },
    Refused(String),
    /// The run reached the attempt limit: give it up.
    GiveUp {
        attempts: u32,
    },
}

/// The run was taken from the queue; it is about to be published.
pub fn publishing(db: &Db, run: &str) -> Result<()> {
    db.execute(
        "INSERT INTO cluster_runs (run_id, state) VALUES (?1, 'publishing')
         ON CONFLICT (run_id) DO UPDATE SET state = 'publishing'",
        &params![run],
    )?;
    Ok(())
}

/// Stored in JetStream at `seq`: agents may claim that delivery.
pub fn dispatched(db: &Db, run: &str, seq: u64) -> Result<()> {
    db.execute(
        "UPDATE cluster_runs SET state = 'dispatched', stream_seq = ?2
         WHERE run_id = ?1 AND state = 'publishing'",
        &params![run, seq as i64],
    )?;
    Ok(())
}

/// Runs taken from the queue but maybe never published (a server that
/// stopped in between): published again (the message id deduplicates).
pub fn unpublished(db: &Db) -> Result<Vec<String>> {
    db.query(
        "SELECT run_id FROM cluster_runs WHERE state = 'publishing' ORDER BY run_id",
        &[],
    )?
    .iter()
    .map(|r| r.get_str(0))
    .collect()
}

/// The run was queued again for other agents (`seq`): the attempt that
/// found it needs labels it lacks does not count.
pub fn relabelled(db: &Db, run: &str, fence: i64, seq: u64) -> Result<()> {
    db.transaction(|tx| {
        tx.execute(
            "DELETE FROM cluster_claims WHERE run_id = ?1 AND fence = ?2",
            &params![run, fence],
        )?;
        tx.execute(
            "UPDATE cluster_runs SET state = 'dispatched', stream_seq = ?2, attempt = attempt - 1
             WHERE run_id = ?1 AND fence = ?3 AND state = 'running'",
            &params![run, seq as i64, fence],
        )?;
        Ok(())
    })
}

/// An agent asks for the run delivered to it (`stream_seq`, the
/// `delivered`th time). Any earlier attempt still open died: JetStream
/// delivers again only when its agent stopped sending heartbeats.
pub fn claim(db: &Db, run: &str, agent: &str, stream_seq: u64, max_attempts: u32) -> Result<Claim> {
    db.transaction(|db| {
        let Some(row) = db.query_opt(
            "SELECT state, stream_seq, attempt, reason FROM cluster_runs WHERE run_id = ?1",
            &params![run],
        )?
        else {
            return Ok(Claim::Refused("the server does not know this run".into()));
        };
        let (state, seq, attempt) = (row.get_str(0)?, row.get_i64(1)?, row.get_i64(2)? as u32);
        match state.as_str() {
            "done" => return Ok(Claim::Refused("the run has ended".into())),
            "cancelling" => {
                let why = row.opt_str(3)?.unwrap_or_else(|| "cancelled".into());
                return Ok(Claim::Refused(format!("the run was cancelled: {why}")));
            }
            _ if seq != stream_seq as i64 && seq != 0 => {
                return Ok(Claim::Refused("an outdated copy of the run".into()))
            }
            _ => {}
        }
        db.execute(
            "UPDATE cluster_claims SET outcome = 'died' WHERE run_id = ?1 AND outcome IS NULL",
            &params![run],
        )?;
        if attempt >= max_attempts {
            return Ok(Claim::GiveUp { attempts: attempt });
        }
        let fence = db
            .query_opt(
                "SELECT COALESCE(MAX(fence), 0) + 1 FROM cluster_claims",
                &[],
            )?
            .map(|r| r.get_i64(0))
            .transpose()?
            .unwrap_or(1);
        let attempt = attempt + 1;
        db.execute(
            "INSERT INTO cluster_claims (run_id, attempt, agent, fence, claimed_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            &params![run, attempt as i64, agent, fence, now_rfc3339()],
        )?;
        db.execute(
            "UPDATE cluster_runs SET state = 'running', attempt = ?2, fence = ?3 WHERE run_id = ?1",
            &params![run, attempt as i64, fence],
        )?;
        Ok(Claim::Claimed { fence, attempt })
    })
}

/// `Err(why)` unless `fence` is the run's current claim and it may still
/// act (not cancelled, not ended).
pub fn owns(db: &Db, run: &str, fence: i64) -> Result<Result<(), String>> {
    let row = db.query_opt(
        "SELECT state, fence, reason FROM cluster_runs WHERE run_id = ?1",
        &params![run],
    )?;
    let Some(row) = row else {
        return Ok(Err("the server does not know this run".into()));
    };
    Ok(match (row.get_str(0)?.as_str(), row.get_i64(1)?) {
        (_, f) if f != fence => Err("another agent has taken the run over".into()),
        ("running", _) => Ok(()),
        ("cancelling", _) => Err(format!(
            "the run was cancelled: {}",
            row.opt_str(2)?.unwrap_or_default()
        )),
        (state, _) => Err(format!("the run is {state}")),
    })
}

/// May a batch with `fence` be written (the current claim, running or
/// being cancelled)? And is `(run, attempt, seq)` new? `Ok(None)`: apply
/// it; `Ok(Some(why))`: drop it.
pub fn admit_batch(
    db: &Db,
    run: &str,
    attempt: u32,
    fence: i64,
    seq: u64,
) -> Result<Option<String>> {
    let current = db.query_opt(
        "SELECT fence FROM cluster_runs WHERE run_id = ?1 AND state IN ('running', 'cancelling')",
        &params![run],
    )?;
    if current.map(|r| r.get_i64(0)).transpose()? != Some(fence) {
        return Ok(Some(
            "stale: another agent owns the run, or it has ended".into(),
        ));
    }
    let fresh = db.execute(
        "INSERT INTO cluster_batches (run_id, attempt, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (run_id, attempt, seq) DO NOTHING",
        &params![run, attempt as i64, seq as i64],
    )?;
    Ok((fresh == 0).then(|| "duplicate".into()))
}

/// An agent that is stopping handed the attempt with `fence` back: it
/// ends `stopped` and the run waits for its next delivery.
pub fn release(db: &Db, run: &str, fence: i64) -> Result<()> {
    db.transaction(|tx| {
        tx.execute(
            "UPDATE cluster_claims SET outcome = 'stopped'
             WHERE run_id = ?1 AND fence = ?2 AND outcome IS NULL",
            &params![run, fence],
        )?;
        tx.execute(
            "UPDATE cluster_runs SET state = 'dispatched'
             WHERE run_id = ?1 AND fence = ?2 AND state = 'running'",
            &params![run, fence],
        )?;
        Ok(())
    })
}

/// The run ended: its current attempt's outcome is `status`.
pub fn finish(db: &Db, run: &str, outcome: &str) -> Result<()> {
    db.execute(
        "UPDATE cluster_claims SET outcome = ?2 WHERE run_id = ?1 AND outcome IS NULL",
        &params![run, outcome],
    )?;
    db.execute(
        "UPDATE cluster_runs SET state = 'done' WHERE run_id = ?1",
        &params![run],
    )?;
    Ok(())
}

/// Cancel: a run no agent holds yet ends here (returns true); a running
/// one is told to stop.
pub fn cancel(db: &Db, run: &str, reason: &str) -> Result<bool> {
    let state = db
        .query_opt(
            "SELECT state FROM cluster_runs WHERE run_id = ?1",
            &params![run],
        )?
        .map(|r| r.get_str(0))
        .transpose()?;
    let next = match state.as_deref() {
        Some("publishing" | "dispatched") => "done",
        Some("running") => "cancelling",
        _ => return Ok(false),
    };
    db.execute(
        "UPDATE cluster_runs SET state = ?2, reason = ?3 WHERE run_id = ?1",
        &params![run, next, reason],
    )?;
    Ok(next == "done")
}

/// Every attempt at `run`, in order.
pub fn attempts(db: &Db, run: &str) -> Result<Vec<AttemptRecord>> {
    db.query(
        "SELECT attempt, agent, claimed_at, outcome FROM cluster_claims
         WHERE run_id = ?1 ORDER BY attempt",
        &params![run],
    )?
    .iter()
    .map(|r| {
        Ok(AttemptRecord {
            attempt: r.get_i64(0)? as u32,
            agent: r.get_str(1)?,
            claimed_at: r.get_str(2)?,
            outcome: r.opt_str(3)?,
        })
    })
    .collect()
}
