//! The durable run queue of `host serve`, in the state directory's SQLite
//! database beside the run records.
//!
//! A delivery is accepted in one transaction that records its id (so a
//! redelivery is recognised) and queues its runs; only then does the
//! webhook answer 2xx. A run is `queued`, then `running` (claimed by the
//! dispatcher), then `done`. A server that stops, or dies, leaves its runs
//! `running`; the next start puts them back in the queue, so an accepted
//! run is never lost (it runs again from the start).
use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::run::executor::now_rfc3339;
use crate::run::TriggerInfo;

/// How often a run may be interrupted by a server stop before it is given
/// up as failed (a run that kills its server must not loop forever).
pub const MAX_ATTEMPTS: u32 = 3;

/// What to build: everything the dispatcher needs to check out and run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// The `[[repository]]` entry's name (`owner/name`).
    pub repository: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub sha: String,
    /// `push` or `pull_request`.
    pub event: String,
    /// Set by the trigger; else the pipeline's `[environments]` decide.
    pub environment: Option<String>,
    /// A ref that holds the commit, fetched when the commit itself cannot
    /// be (`refs/heads/main`, `refs/pull/7/head`).
    pub fetch_ref: Option<String>,
    /// False for pull requests from forks: they run without the server's
    /// environment, so no secret reaches code nobody on the team reviewed.
    pub trusted: bool,
    /// Runs of one group run one at a time, in order.
    pub group: Option<String>,
    pub trigger: TriggerInfo,
    /// An uploaded source archive (`POST /upload/NAME`) to unpack instead
    /// of a git checkout; `repository` is then the upload's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueuedJob {
    pub run_id: String,
    pub repository: String,
    pub state: String,
    pub attempts: u32,
    pub enqueued_at: String,
    pub job: Job,
}

/// What accepting a delivery did.
#[derive(Debug, PartialEq)]
pub enum Accepted {
    /// This delivery id was seen before; nothing was queued. The runs it
    /// queued then.
    Duplicate { runs: Vec<String> },
    Queued {
        runs: Vec<String>,
        /// Running runs of the same group that a newer one supersedes
        /// (`cancel-in-progress`): the caller cancels them.
        cancel_running: Vec<String>,
        /// Queued runs it superseded; they will never run.
        dropped: Vec<QueuedJob>,
    },
}

pub struct Queue<'c> {
    conn: &'c Connection,
}

impl<'c> Queue<'c> {
    /// The queue in this database (its tables are made when missing).
    pub fn new(conn: &'c Connection) -> Self {
        Self { conn }
    }

    pub fn init(&self) -> Result<()> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS deliveries (
                     id TEXT PRIMARY KEY,
                     event TEXT NOT NULL,
                     received_at TEXT NOT NULL,
                     outcome TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS queue (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     run_id TEXT NOT NULL UNIQUE,
                     delivery TEXT,
                     repository TEXT NOT NULL,
                     grp TEXT,
                     state TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0,
                     enqueued_at TEXT NOT NULL,
                     job TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS queue_by_state ON queue(state, seq);",
            )
            .context("creating the queue tables")
    }

    fn has_tables(&self) -> Result<bool> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'queue'",
            [],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Record delivery `id` and queue its runs, atomically. With
    /// `cancel_in_progress`, each new run supersedes the older runs of its
    /// group.
    pub fn accept(
        &self,
        id: &str,
        event: &str,
        outcome: &str,
        jobs: &[(String, Job)],
        cancel_in_progress: bool,
    ) -> Result<Accepted> {
        let tx = rusqlite::Transaction::new_unchecked(self.conn, TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO deliveries (id, event, received_at, outcome)
             VALUES (?1, ?2, ?3, ?4)",
            params![id, event, now_rfc3339(), outcome],
        )?;
        if inserted == 0 {
            let runs = tx
                .prepare("SELECT run_id FROM queue WHERE delivery = ?1 ORDER BY seq")?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            return Ok(Accepted::Duplicate { runs });
        }
        let mut cancel_running = Vec::new();
        let mut dropped = Vec::new();
        for (run_id, job) in jobs {
            if let (true, Some(group)) = (cancel_in_progress, &job.group) {
                dropped.extend(select(
                    &tx,
                    "WHERE grp = ?1 AND state = 'queued' ORDER BY seq",
                    params![group],
                )?);
                tx.execute(
                    "UPDATE queue SET state = 'done' WHERE grp = ?1 AND state = 'queued'",
                    params![group],
                )?;
                cancel_running.extend(
                    tx.prepare("SELECT run_id FROM queue WHERE grp = ?1 AND state = 'running'")?
                        .query_map([group], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()?,
                );
            }
            tx.execute(
                "INSERT INTO queue (run_id, delivery, repository, grp, state, enqueued_at, job)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6)",
                params![
                    run_id,
                    id,
                    job.repository,
                    job.group,
                    now_rfc3339(),
                    serde_json::to_string(job)?
                ],
            )?;
        }
        tx.commit()?;
        Ok(Accepted::Queued {
            runs: jobs.iter().map(|(r, _)| r.clone()).collect(),
            cancel_running,
            dropped,
        })
    }

    /// Take the oldest queued run whose group has nothing running.
    pub fn claim(&self) -> Result<Option<QueuedJob>> {
        let tx = rusqlite::Transaction::new_unchecked(self.conn, TransactionBehavior::Immediate)?;
        let next = select(
            &tx,
            "WHERE state = 'queued' AND (grp IS NULL OR grp NOT IN
                 (SELECT grp FROM queue WHERE state = 'running' AND grp IS NOT NULL))
             ORDER BY seq LIMIT 1",
            [],
        )?
        .pop();
        if let Some(j) = &next {
            tx.execute(
                "UPDATE queue SET state = 'running', attempts = attempts + 1 WHERE run_id = ?1",
                params![j.run_id],
            )?;
        }
        tx.commit()?;
        Ok(next.map(|mut j| {
            j.state = "running".into();
            j.attempts += 1;
            j
        }))
    }

    /// The run ended (whatever its status): it leaves the queue.
    pub fn finish(&self, run_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE queue SET state = 'done' WHERE run_id = ?1",
            params![run_id],
        )?;
        Ok(())
    }

    /// Put a running run back (the server is stopping; it runs again at the
    /// next start).
    pub fn requeue(&self, run_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE queue SET state = 'queued' WHERE run_id = ?1 AND state = 'running'",
            params![run_id],
        )?;
        Ok(())
    }

    /// At start: runs a previous server left `running` go back to the
    /// queue. Returns those (by id) and, done, those interrupted
    /// [`MAX_ATTEMPTS`] times.
    pub fn recover(&self) -> Result<(Vec<String>, Vec<QueuedJob>)> {
        let tx = rusqlite::Transaction::new_unchecked(self.conn, TransactionBehavior::Immediate)?;
        let given_up = select(
            &tx,
            "WHERE state = 'running' AND attempts >= ?1 ORDER BY seq",
            params![MAX_ATTEMPTS],
        )?;
        let again = select(
            &tx,
            "WHERE state = 'running' AND attempts < ?1 ORDER BY seq",
            params![MAX_ATTEMPTS],
        )?
        .into_iter()
        .map(|j| j.run_id)
        .collect();
        tx.execute(
            "UPDATE queue SET state = 'done' WHERE state = 'running' AND attempts >= ?1",
            params![MAX_ATTEMPTS],
        )?;
        tx.execute(
            "UPDATE queue SET state = 'queued' WHERE state = 'running'",
            [],
        )?;
        tx.commit()?;
        Ok((again, given_up))
    }

    /// Runs waiting to start that have no run record yet, oldest first
    /// (one that ran before and waits to run again has its record, with
    /// status `queued`).
    pub fn waiting(&self) -> Result<Vec<QueuedJob>> {
        if !self.has_tables()? {
            return Ok(Vec::new());
        }
        select(
            self.conn,
            "WHERE state = 'queued' AND run_id NOT IN (SELECT id FROM runs) ORDER BY seq",
            [],
        )
    }

    pub fn find(&self, run_id: &str) -> Result<Option<QueuedJob>> {
        if !self.has_tables()? {
            return Ok(None);
        }
        Ok(select(self.conn, "WHERE run_id = ?1", params![run_id])?.pop())
    }

    /// (queued, running) counts.
    pub fn depth(&self) -> Result<(u64, u64)> {
        if !self.has_tables()? {
            return Ok((0, 0));
        }
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(state = 'queued'), 0), COALESCE(SUM(state = 'running'), 0)
             FROM queue",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// The outcome recorded for a delivery.
    pub fn delivery(&self, id: &str) -> Result<Option<String>> {
        if !self.has_tables()? {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row("SELECT outcome FROM deliveries WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }
}

fn select(
    conn: &Connection,
    clause: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<QueuedJob>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT run_id, repository, state, attempts, enqueued_at, job FROM queue {clause}"
    ))?;
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (run_id, repository, state, attempts, enqueued_at, job) = row?;
        let job: Job = serde_json::from_str(&job)
            .with_context(|| format!("queued run {run_id}: corrupt job"))?;
        out.push(QueuedJob {
            run_id,
            repository,
            state,
            attempts: attempts as u32,
            enqueued_at,
            job,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(group: &str) -> Job {
        Job {
            repository: "acme/app".into(),
            branch: Some(group.into()),
            tag: None,
            sha: "abc".into(),
            event: "push".into(),
            environment: None,
            fetch_ref: None,
            trusted: true,
            group: Some(group.into()),
            trigger: TriggerInfo::default(),
            archive: None,
        }
    }

    fn queue() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE runs (id TEXT PRIMARY KEY)")
            .unwrap();
        Queue::new(&c).init().unwrap();
        c
    }

    #[test]
    fn a_delivery_is_accepted_once() {
        let c = queue();
        let q = Queue::new(&c);
        let a = q
            .accept("d1", "push", "queued", &[("r1".into(), job("main"))], false)
            .unwrap();
        assert!(matches!(a, Accepted::Queued { .. }));
        let again = q
            .accept("d1", "push", "queued", &[("r2".into(), job("main"))], false)
            .unwrap();
        assert_eq!(
            again,
            Accepted::Duplicate {
                runs: vec!["r1".into()]
            }
        );
        assert_eq!(q.waiting().unwrap().len(), 1);
    }

    #[test]
    fn a_group_runs_one_at_a_time_and_newer_runs_supersede_older_ones() {
        let c = queue();
        let q = Queue::new(&c);
        q.accept("d1", "push", "", &[("r1".into(), job("main"))], false)
            .unwrap();
        q.accept("d2", "push", "", &[("r2".into(), job("main"))], false)
            .unwrap();
        q.accept("d3", "push", "", &[("r3".into(), job("dev"))], false)
            .unwrap();
        assert_eq!(q.claim().unwrap().unwrap().run_id, "r1");
        // r2 waits for r1 (same group); r3 may run.
        assert_eq!(q.claim().unwrap().unwrap().run_id, "r3");
        assert!(q.claim().unwrap().is_none());
        let a = q
            .accept("d4", "push", "", &[("r4".into(), job("main"))], true)
            .unwrap();
        let Accepted::Queued {
            cancel_running,
            dropped,
            ..
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!(cancel_running, vec!["r1".to_string()]);
        assert_eq!(
            dropped.iter().map(|j| &j.run_id).collect::<Vec<_>>(),
            ["r2"]
        );
        q.finish("r1").unwrap();
        assert_eq!(q.claim().unwrap().unwrap().run_id, "r4");
    }

    #[test]
    fn interrupted_runs_go_back_to_the_queue_until_they_are_given_up() {
        let c = queue();
        let q = Queue::new(&c);
        q.accept("d1", "push", "", &[("r1".into(), job("main"))], false)
            .unwrap();
        for attempt in 1..=MAX_ATTEMPTS {
            let j = q.claim().unwrap().unwrap();
            assert_eq!(j.attempts, attempt);
            let (_, given_up) = q.recover().unwrap();
            if attempt < MAX_ATTEMPTS {
                assert!(given_up.is_empty());
                assert_eq!(q.depth().unwrap(), (1, 0));
            } else {
                assert_eq!(given_up.len(), 1);
                assert_eq!(q.depth().unwrap(), (0, 0));
            }
        }
    }
}
