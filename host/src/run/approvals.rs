//! Manual approvals: a stage deploying to an environment with
//! `approval = true` waits until a person runs `host approve RUN STAGE` (or
//! `host reject`), or until the environment's `approval-timeout`.
//!
//! The waiting run and the `host approve` command are different processes
//! (maybe on different machines); they meet in the run database (the state
//! directory's SQLite file or PostgreSQL, `approvals` table).
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use parking_lot::Mutex;
use serde::Serialize;

use crate::run::record::now_rfc3339;
pub use crate::run::record::{ApprovalRecord, Decision};
use crate::store::{params, Db, Row, StoreLocation};

/// How often a waiting stage looks for a decision.
const POLL: Duration = Duration::from_millis(250);

/// A pending request, as `host approve` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub run_id: String,
    pub stage: String,
    pub environment: String,
    pub requested_at: String,
    pub expires_at_unix: i64,
}

/// The approvals table; clones share one connection.
#[derive(Clone)]
pub struct ApprovalStore {
    db: Arc<Mutex<Db>>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const SQLITE_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS approvals (
        run_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        environment TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        decision TEXT,
        decided_at TEXT,
        decided_by TEXT,
        comment TEXT,
        PRIMARY KEY (run_id, stage)
    );";

const POSTGRES_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS approvals (
        run_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        environment TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        decision TEXT,
        decided_at TEXT,
        decided_by TEXT,
        comment TEXT,
        PRIMARY KEY (run_id, stage)
    );";

impl ApprovalStore {
    /// The store in `state_dir` (the same database as the run records).
    pub fn open(state_dir: &Path) -> Result<Self> {
        Self::open_at(&StoreLocation::Dir(state_dir.to_path_buf()))
    }

    /// The store in a PostgreSQL database.
    pub fn postgres(url: &str) -> Result<Self> {
        Self::open_at(&StoreLocation::Postgres(url.to_string()))
    }

    pub fn open_at(loc: &StoreLocation) -> Result<Self> {
        let db = Db::open(loc)?;
        if db.is_postgres() {
            // The writers' lock keeps two processes from making it at once.
            db.transaction(|db| db.batch(POSTGRES_TABLE))?;
        } else {
            db.batch(SQLITE_TABLE)?;
        }
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
        })
    }

    /// Run `f` with the database on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db.lock())).await?
    }

    /// Ask for an approval: once this returns, `host approve` finds it.
    /// Then [`ApprovalStore::wait`] for the decision.
    pub async fn ask(
        &self,
        run_id: &str,
        stage: &str,
        environment: &str,
        timeout: Duration,
    ) -> Result<tokio::time::Instant> {
        let requested_at = now_rfc3339();
        let expires = unix_now() + timeout.as_secs().max(1) as i64;
        let (run_id, stage, environment) = (
            run_id.to_string(),
            stage.to_string(),
            environment.to_string(),
        );
        self.blocking(move |db| {
            // Asked again (a run that runs again): a fresh request.
            db.execute(
                "INSERT INTO approvals (run_id, stage, environment, requested_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run_id, stage) DO UPDATE SET environment = excluded.environment,
                     requested_at = excluded.requested_at, expires_at = excluded.expires_at,
                     decision = NULL, decided_at = NULL, decided_by = NULL, comment = NULL",
                &params![run_id, stage, environment, requested_at, expires],
            )?;
            Ok(())
        })
        .await?;
        Ok(tokio::time::Instant::now() + timeout)
    }

    /// Wait for the decision on an approval [`ApprovalStore::ask`]ed for,
    /// or time out at `deadline`.
    pub async fn wait(
        &self,
        run_id: &str,
        stage: &str,
        deadline: tokio::time::Instant,
    ) -> Result<ApprovalRecord> {
        loop {
            if let Some(rec) = self.decision(run_id, stage).await? {
                return Ok(rec);
            }
            if tokio::time::Instant::now() >= deadline {
                // Only if nobody decided in the meantime.
                self.decide_inner(run_id, stage, Decision::TimedOut, None, None)
                    .await
                    .ok();
                if let Some(rec) = self.decision(run_id, stage).await? {
                    return Ok(rec);
                }
                bail!("approval of `{stage}` could not be recorded");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The decision if there is one; once the request has expired, the
    /// timeout (one clock decides for a waiter on another machine: the
    /// store's caller, the server).
    pub async fn poll(&self, run_id: &str, stage: &str) -> Result<Option<ApprovalRecord>> {
        if let Some(rec) = self.decision(run_id, stage).await? {
            return Ok(Some(rec));
        }
        let (r, st) = (run_id.to_string(), stage.to_string());
        let expired = self
            .blocking(move |db| {
                let row = db.query_opt(
                    "SELECT expires_at FROM approvals
                     WHERE run_id = ?1 AND stage = ?2 AND decision IS NULL",
                    &params![r, st],
                )?;
                Ok(row
                    .map(|r| r.get_i64(0))
                    .transpose()?
                    .is_some_and(|e| e < unix_now()))
            })
            .await?;
        if !expired {
            return Ok(None);
        }
        self.decide_inner(run_id, stage, Decision::TimedOut, None, None)
            .await
            .ok();
        self.decision(run_id, stage).await
    }

    async fn decision(&self, run_id: &str, stage: &str) -> Result<Option<ApprovalRecord>> {
        let (run_id, stage) = (run_id.to_string(), stage.to_string());
        self.blocking(move |db| {
            let row = db.query_opt(
                "SELECT environment, requested_at, decision, decided_at, decided_by, comment
                 FROM approvals WHERE run_id = ?1 AND stage = ?2 AND decision IS NOT NULL",
                &params![run_id, stage],
            )?;
            row.map(|r| decided(&r)).transpose().map(Option::flatten)
        })
        .await
    }

    /// Record a person's decision on a pending approval.
    pub async fn decide(
        &self,
        run_id: &str,
        stage: &str,
        decision: Decision,
        by: &str,
        comment: Option<&str>,
    ) -> Result<()> {
        self.decide_inner(run_id, stage, decision, Some(by), comment)
            .await
    }

    async fn decide_inner(
        &self,
        run_id: &str,
        stage: &str,
        decision: Decision,
        by: Option<&str>,
        comment: Option<&str>,
    ) -> Result<()> {
        let (run_id, stage) = (run_id.to_string(), stage.to_string());
        let (by, comment) = (by.map(str::to_string), comment.map(str::to_string));
        self.blocking(move |db| {
            let changed = db.execute(
                "UPDATE approvals SET decision = ?3, decided_at = ?4, decided_by = ?5, comment = ?6
                 WHERE run_id = ?1 AND stage = ?2 AND decision IS NULL AND expires_at >= ?7",
                &params![
                    run_id,
                    stage,
                    decision.as_str(),
                    now_rfc3339(),
                    by,
                    comment,
                    if decision == Decision::TimedOut {
                        i64::MIN
                    } else {
                        unix_now()
                    }
                ],
            )?;
            if changed == 0 {
                let pending = pending_in(db)?;
                let list = if pending.is_empty() {
                    "no approval is pending".to_string()
                } else {
                    format!(
                        "pending: {}",
                        pending
                            .iter()
                            .map(|p| format!("{} {} ({})", p.run_id, p.stage, p.environment))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                bail!("stage `{stage}` of run `{run_id}` is not waiting for approval; {list}");
            }
            Ok(())
        })
        .await
    }

    /// Approvals waiting for a decision.
    pub async fn pending(&self) -> Result<Vec<Pending>> {
        self.blocking(pending_in).await
    }
}

pub(crate) fn pending_in(db: &Db) -> Result<Vec<Pending>> {
    db.query(
        "SELECT run_id, stage, environment, requested_at, expires_at FROM approvals
         WHERE decision IS NULL AND expires_at >= ?1 ORDER BY requested_at",
        &params![unix_now()],
    )?
    .iter()
    .map(|r| {
        Ok(Pending {
            run_id: r.get_str(0)?,
            stage: r.get_str(1)?,
            environment: r.get_str(2)?,
            requested_at: r.get_str(3)?,
            expires_at_unix: r.get_i64(4)?,
        })
    })
    .collect()
}

/// The decision in a row `decision` selects (none if it does not parse).
fn decided(r: &Row) -> Result<Option<ApprovalRecord>> {
    let Some(decision) = Decision::parse(&r.get_str(2)?) else {
        return Ok(None);
    };
    Ok(Some(ApprovalRecord {
        environment: r.get_str(0)?,
        requested_at: r.get_str(1)?,
        decision,
        decided_at: r.opt_str(3)?.unwrap_or_default(),
        by: r.opt_str(4)?,
        comment: r.opt_str(5)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::PgSchema;

    /// Ask, list, decide once (a second decision is refused), time out.
    async fn asked_decided_and_timed_out(store: ApprovalStore) {
        let minute = Duration::from_secs(60);
        store
            .ask("r1", "deploy", "production", minute)
            .await
            .unwrap();
        let pending = store.pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].environment, "production");
        store
            .decide("r1", "deploy", Decision::Approved, "ann", Some("ok"))
            .await
            .unwrap();
        let e = store
            .decide("r1", "deploy", Decision::Rejected, "bob", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no approval is pending"), "{e}");
        let rec = store
            .wait("r1", "deploy", tokio::time::Instant::now())
            .await
            .unwrap();
        assert_eq!(rec.decision, Decision::Approved);
        assert_eq!(rec.by.as_deref(), Some("ann"));
        assert_eq!(rec.comment.as_deref(), Some("ok"));
        // Asked again (the run runs again): waiting afresh.
        store
            .ask("r1", "deploy", "production", minute)
            .await
            .unwrap();
        assert_eq!(store.pending().await.unwrap().len(), 1);
        let rec = store
            .wait("r1", "deploy", tokio::time::Instant::now())
            .await
            .unwrap();
        assert_eq!(rec.decision, Decision::TimedOut);
        assert_eq!(rec.by, None);
        assert!(store.pending().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn approvals_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        asked_decided_and_timed_out(ApprovalStore::open(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn approvals_on_postgres() {
        let Some(schema) = PgSchema::new("approvals_on_postgres") else {
            return;
        };
        asked_decided_and_timed_out(ApprovalStore::postgres(&schema.url).unwrap()).await;
    }
}
