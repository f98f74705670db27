//! Manual approvals: a stage deploying to an environment with
//! `approval = true` waits until a person runs `host approve RUN STAGE` (or
//! `host reject`), or until the environment's `approval-timeout`.
//!
//! The waiting run and the `host approve` command are different processes;
//! they meet in the state directory's SQLite database (`approvals` table).
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::run::record::now_rfc3339;
pub use crate::run::record::{ApprovalRecord, Decision};

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

#[derive(Clone)]
pub struct ApprovalStore {
    db: PathBuf,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ApprovalStore {
    /// The store in `state_dir` (the same database as the run records).
    pub fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        let s = Self {
            db: state_dir.join("runs.db"),
        };
        s.conn()?.execute_batch(
            "CREATE TABLE IF NOT EXISTS approvals (
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
             );",
        )?;
        Ok(s)
    }

    fn conn(&self) -> Result<Connection> {
        let c =
            Connection::open(&self.db).with_context(|| format!("opening {}", self.db.display()))?;
        c.busy_timeout(Duration::from_secs(10))?;
        Ok(c)
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
        let (run_id, stage, environment, store) = (
            run_id.to_string(),
            stage.to_string(),
            environment.to_string(),
            self.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<()> {
            store.conn()?.execute(
                "INSERT OR REPLACE INTO approvals (run_id, stage, environment, requested_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run_id, stage, environment, requested_at, expires],
            )?;
            Ok(())
        })
        .await??;
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

    async fn decision(&self, run_id: &str, stage: &str) -> Result<Option<ApprovalRecord>> {
        let (run_id, stage, store) = (run_id.to_string(), stage.to_string(), self.clone());
        tokio::task::spawn_blocking(move || -> Result<Option<ApprovalRecord>> {
            let row = store
                .conn()?
                .query_row(
                    "SELECT environment, requested_at, decision, decided_at, decided_by, comment
                     FROM approvals WHERE run_id = ?1 AND stage = ?2 AND decision IS NOT NULL",
                    params![run_id, stage],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, Option<String>>(5)?,
                        ))
                    },
                )
                .optional()?;
            Ok(
                row.and_then(|(environment, requested_at, d, at, by, comment)| {
                    Some(ApprovalRecord {
                        environment,
                        requested_at,
                        decision: Decision::parse(&d)?,
                        decided_at: at.unwrap_or_default(),
                        by,
                        comment,
                    })
                }),
            )
        })
        .await?
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
        let (run_id, stage, store) = (run_id.to_string(), stage.to_string(), self.clone());
        let (by, comment) = (by.map(str::to_string), comment.map(str::to_string));
        tokio::task::spawn_blocking(move || -> Result<()> {
            let changed = store.conn()?.execute(
                "UPDATE approvals SET decision = ?3, decided_at = ?4, decided_by = ?5, comment = ?6
                 WHERE run_id = ?1 AND stage = ?2 AND decision IS NULL AND expires_at >= ?7",
                params![
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
                let pending = store.pending_blocking()?;
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
        .await?
    }

    fn pending_blocking(&self) -> Result<Vec<Pending>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT run_id, stage, environment, requested_at, expires_at FROM approvals
             WHERE decision IS NULL AND expires_at >= ?1 ORDER BY requested_at",
        )?;
        let rows = stmt.query_map(params![unix_now()], |r| {
            Ok(Pending {
                run_id: r.get(0)?,
                stage: r.get(1)?,
                environment: r.get(2)?,
                requested_at: r.get(3)?,
                expires_at_unix: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Approvals waiting for a decision.
    pub async fn pending(&self) -> Result<Vec<Pending>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.pending_blocking()).await?
    }
}
