//! The durable run queue of `host serve`, in the run database beside the
//! run records (the state directory's SQLite file, or PostgreSQL).
//!
//! A delivery is accepted in one transaction that records its id (so a
//! redelivery is recognised) and queues its runs; only then does the
//! webhook answer 2xx. A run is `queued`, then `running` (claimed by the
//! dispatcher), then `done`. A server that stops, or dies, leaves its runs
//! `running`; the next start puts them back in the queue, so an accepted
//! run is never lost (it runs again from the start).
//!
//! A delivery id is not enough to recognise a replay: GitHub signs the body
//! but no timestamp, so a captured delivery re-sent under a new
//! `X-GitHub-Delivery` carries a valid signature. Each run therefore keeps
//! what it means ([`Job::meaning`]: repository, event, ref and commit; an
//! upload's source and archive digest), and a run meaning the same as one
//! queued, running, or accepted within the replay window is a duplicate,
//! checked in the transaction that would queue it.
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::run::record::{now_rfc3339, TriggerInfo};
use crate::store::{params, Db, Value};

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

impl Job {
    /// What this run means, as a key: the same key again is the same run
    /// asked for again. A push: (repository, `push`, the full ref, the
    /// commit); a pull request: (repository, `pull_request`,
    /// `refs/pull/N/head`, the head commit), whatever the action; an upload:
    /// (its source's name, `upload`, the archive's sha256). `None` when the
    /// job says too little to tell (nothing is deduplicated on it then).
    pub fn meaning(&self) -> Option<String> {
        // A re-run is asked for by a person, signed in: it means itself.
        if self.trigger.rerun_of.is_some() {
            return None;
        }
        let (reference, content) = match self.event.as_str() {
            "push" => {
                let r = self
                    .fetch_ref
                    .clone()
                    .or_else(|| self.tag.as_ref().map(|t| format!("refs/tags/{t}")))
                    .or_else(|| self.branch.as_ref().map(|b| format!("refs/heads/{b}")))?;
                (r, self.sha.as_str())
            }
            "pull_request" => {
                let r = match self.trigger.pull_request {
                    Some(n) => format!("refs/pull/{n}/head"),
                    None => self.fetch_ref.clone()?,
                };
                (r, self.sha.as_str())
            }
            "upload" => (
                String::new(),
                self.trigger.archive.as_ref()?.sha256.as_str(),
            ),
            _ => return None,
        };
        (!content.is_empty()).then(|| {
            meaning_key(
                &self.repository,
                &self.event,
                &reference,
                &content.to_ascii_lowercase(),
            )
        })
    }
}

/// The key of [`Job::meaning`] (a JSON array: no two different tuples
/// give the same text).
pub fn meaning_key(source: &str, event: &str, reference: &str, content: &str) -> String {
    serde_json::json!([source, event, reference, content]).to_string()
}

/// Now, in Unix milliseconds (what `accepted_ms` holds).
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// When a delivery is accepted (`now`) and the oldest acceptance time still
/// inside the replay window then (`since`), in Unix milliseconds.
#[derive(Debug, Clone, Copy)]
struct Clock {
    now: i64,
    since: i64,
}

/// The oldest acceptance time (Unix ms) still inside `window` at `now_ms`.
fn window_start(now_ms: i64, window: Duration) -> i64 {
    now_ms.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Nothing was queued: this delivery id was seen before (`runs`: those
    /// it queued then), or everything it asks for was ([`Seen::Meaning`]:
    /// `runs` are the runs it duplicates).
    Duplicate { runs: Vec<String>, seen: Seen },
    Queued {
        runs: Vec<String>,
        /// Running runs of the same group that a newer one supersedes
        /// (`cancel-in-progress`): the caller cancels them.
        cancel_running: Vec<String>,
        /// Queued runs it superseded; they will never run.
        dropped: Vec<QueuedJob>,
    },
}

/// Why a delivery is a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Its delivery id was recorded before (GitHub's redelivery).
    Delivery,
    /// A new delivery id, but the same meaning as a run queued, running, or
    /// accepted within the replay window (a replayed body).
    Meaning,
}

/// Columns added to `queue` since its first version, for [`Queue::init`]
/// to add to an existing SQLite database.
const ADDED_COLUMNS: &[(&str, &str)] = &[("meaning", "TEXT"), ("accepted_ms", "INTEGER")];

/// The tables as the first SQLite version made them (`migrate` adds the
/// rest to an older database).
const SQLITE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS deliveries (
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
        job TEXT NOT NULL,
        meaning TEXT,
        accepted_ms INTEGER
    );
    CREATE INDEX IF NOT EXISTS queue_by_state ON queue(state, seq);";

/// A PostgreSQL database starts with the current tables.
const POSTGRES_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY,
        event TEXT NOT NULL,
        received_at TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS queue (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        delivery TEXT,
        repository TEXT NOT NULL,
        grp TEXT,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        enqueued_at TEXT NOT NULL,
        job TEXT NOT NULL,
        meaning TEXT,
        accepted_ms BIGINT
    );
    CREATE INDEX IF NOT EXISTS queue_by_state ON queue(state, seq);";

pub struct Queue<'c> {
    db: &'c Db,
}

impl<'c> Queue<'c> {
    /// The queue in this database (its tables are made by [`Self::init`]).
    pub fn new(db: &'c Db) -> Self {
        Self { db }
    }

    pub fn init(&self) -> Result<()> {
        if self.db.is_postgres() {
            // The writers' lock keeps two servers from making them at once.
            self.db
                .transaction(|db| db.batch(POSTGRES_TABLES))
                .context("creating the queue tables")?;
        } else {
            self.db
                .batch(SQLITE_TABLES)
                .context("creating the queue tables")?;
            self.migrate()
                .context("adding the replay columns to the queue")?;
        }
        self.db
            .batch("CREATE INDEX IF NOT EXISTS queue_by_meaning ON queue(meaning, seq);")
            .context("creating the queue tables")
    }

    /// A (SQLite) queue made before runs kept their meaning: add the
    /// columns and fill them from each run's job and enqueue time, so a
    /// delivery queued before the upgrade is recognised when it is replayed
    /// after it.
    fn migrate(&self) -> Result<()> {
        let have: Vec<String> = self
            .db
            .query("SELECT name FROM pragma_table_info('queue')", &[])?
            .iter()
            .map(|r| r.get_str(0))
            .collect::<Result<_>>()?;
        let missing: Vec<_> = ADDED_COLUMNS
            .iter()
            .filter(|(c, _)| !have.iter().any(|h| h == c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.db.transaction(|tx| {
            for (col, ty) in missing {
                tx.batch(&format!("ALTER TABLE queue ADD COLUMN {col} {ty}"))?;
            }
            for row in tx.query("SELECT seq, enqueued_at, job FROM queue", &[])? {
                let (seq, enqueued_at, job) = (row.get_i64(0)?, row.get_str(1)?, row.get_str(2)?);
                let meaning = serde_json::from_str::<Job>(&job)
                    .ok()
                    .and_then(|j| j.meaning());
                let accepted_ms = time::OffsetDateTime::parse(
                    &enqueued_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64);
                tx.execute(
                    "UPDATE queue SET meaning = ?1, accepted_ms = ?2 WHERE seq = ?3",
                    &params![meaning, accepted_ms, seq],
                )?;
            }
            Ok(())
        })
    }

    fn has_tables(&self) -> Result<bool> {
        self.db.has_table("queue")
    }

    /// Record delivery `id` and queue its runs, atomically. With
    /// `cancel_in_progress`, each new run supersedes the older runs of its
    /// group. A run whose [`Job::meaning`] is that of a run still queued or
    /// running, or accepted at most `replay_window` ago (whatever became of
    /// it), is not queued; when that leaves nothing to queue, the delivery
    /// is a duplicate of those runs (and supersedes nothing).
    pub fn accept(
        &self,
        id: &str,
        event: &str,
        outcome: &str,
        jobs: &[(String, Job)],
        cancel_in_progress: bool,
        replay_window: Duration,
    ) -> Result<Accepted> {
        let now = now_ms();
        let at = Clock {
            now,
            since: window_start(now, replay_window),
        };
        self.accept_at(id, event, outcome, jobs, cancel_in_progress, at)
    }

    /// [`Self::accept`] at a given time.
    fn accept_at(
        &self,
        id: &str,
        event: &str,
        outcome: &str,
        jobs: &[(String, Job)],
        cancel_in_progress: bool,
        at: Clock,
    ) -> Result<Accepted> {
        self.db.transaction(|tx| {
            let inserted = tx.execute(
                "INSERT INTO deliveries (id, event, received_at, outcome)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
                &params![id, event, now_rfc3339(), outcome],
            )?;
            if inserted == 0 {
                return redelivered(tx, id, jobs, at.since);
            }
            queue_jobs(tx, id, jobs, cancel_in_progress, at)
        })
    }

    /// The newest run meaning `meaning` (a [`meaning_key`]) that is still
    /// queued or running, or was accepted at most `replay_window` ago: a
    /// look before costly work (unpacking an upload), not instead of the
    /// check [`Self::accept`] makes.
    pub fn seen(&self, meaning: &str, replay_window: Duration) -> Result<Option<String>> {
        if !self.has_tables()? {
            return Ok(None);
        }
        seen_since(self.db, meaning, window_start(now_ms(), replay_window))
    }

    /// Take the oldest queued run whose group has nothing running.
    pub fn claim(&self) -> Result<Option<QueuedJob>> {
        let next = self.db.transaction(|tx| {
            let next = select(
                tx,
                "WHERE state = 'queued' AND (grp IS NULL OR grp NOT IN
                     (SELECT grp FROM queue WHERE state = 'running' AND grp IS NOT NULL))
                 ORDER BY seq LIMIT 1",
                &[],
            )?
            .pop();
            if let Some(j) = &next {
                tx.execute(
                    "UPDATE queue SET state = 'running', attempts = attempts + 1
                     WHERE run_id = ?1",
                    &params![j.run_id],
                )?;
            }
            Ok(next)
        })?;
        Ok(next.map(|mut j| {
            j.state = "running".into();
            j.attempts += 1;
            j
        }))
    }

    /// The run ended (whatever its status): it leaves the queue.
    pub fn finish(&self, run_id: &str) -> Result<()> {
        self.db.execute(
            "UPDATE queue SET state = 'done' WHERE run_id = ?1",
            &params![run_id],
        )?;
        Ok(())
    }

    /// Take a run that waits in the queue out of it (cancelled); `None`
    /// when it does not wait there.
    pub fn cancel_queued(&self, run_id: &str) -> Result<Option<QueuedJob>> {
        let changed = self.db.execute(
            "UPDATE queue SET state = 'done' WHERE run_id = ?1 AND state = 'queued'",
            &params![run_id],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        self.find(run_id)
    }

    /// Put a running run back (the server is stopping; it runs again at the
    /// next start).
    pub fn requeue(&self, run_id: &str) -> Result<()> {
        self.db.execute(
            "UPDATE queue SET state = 'queued' WHERE run_id = ?1 AND state = 'running'",
            &params![run_id],
        )?;
        Ok(())
    }

    /// At start: runs a previous server left `running` go back to the
    /// queue. Returns those (by id) and, done, those interrupted
    /// [`MAX_ATTEMPTS`] times.
    pub fn recover(&self) -> Result<(Vec<String>, Vec<QueuedJob>)> {
        self.db.transaction(|tx| {
            let given_up = select(
                tx,
                "WHERE state = 'running' AND attempts >= ?1 ORDER BY seq",
                &params![MAX_ATTEMPTS],
            )?;
            let again = select(
                tx,
                "WHERE state = 'running' AND attempts < ?1 ORDER BY seq",
                &params![MAX_ATTEMPTS],
            )?
            .into_iter()
            .map(|j| j.run_id)
            .collect();
            tx.execute(
                "UPDATE queue SET state = 'done' WHERE state = 'running' AND attempts >= ?1",
                &params![MAX_ATTEMPTS],
            )?;
            tx.execute(
                "UPDATE queue SET state = 'queued' WHERE state = 'running'",
                &[],
            )?;
            Ok((again, given_up))
        })
    }

    /// Runs not started that have no run record yet, oldest first:
    /// waiting in the queue, or taken from it and not yet numbered (being
    /// checked out; on a cluster, waiting for an agent). One that ran
    /// before and waits to run again has its record, with status `queued`.
    pub fn waiting(&self) -> Result<Vec<QueuedJob>> {
        if !self.has_tables()? {
            return Ok(Vec::new());
        }
        select(
            self.db,
            "WHERE state != 'done' AND run_id NOT IN (SELECT id FROM runs) ORDER BY seq",
            &[],
        )
    }

    pub fn find(&self, run_id: &str) -> Result<Option<QueuedJob>> {
        if !self.has_tables()? {
            return Ok(None);
        }
        Ok(select(self.db, "WHERE run_id = ?1", &params![run_id])?.pop())
    }

    /// (queued, running) counts.
    pub fn depth(&self) -> Result<(u64, u64)> {
        if !self.has_tables()? {
            return Ok((0, 0));
        }
        let row = self.db.query_opt(
            "SELECT COUNT(CASE WHEN state = 'queued' THEN 1 END),
                    COUNT(CASE WHEN state = 'running' THEN 1 END)
             FROM queue",
            &[],
        )?;
        match row {
            Some(r) => Ok((r.get_i64(0)? as u64, r.get_i64(1)? as u64)),
            None => Ok((0, 0)),
        }
    }

    /// The outcome recorded for a delivery.
    pub fn delivery(&self, id: &str) -> Result<Option<String>> {
        if !self.has_tables()? {
            return Ok(None);
        }
        self.db
            .query_opt("SELECT outcome FROM deliveries WHERE id = ?1", &params![id])?
            .map(|r| r.get_str(0))
            .transpose()
    }
}

/// A delivery id seen before: the runs it queued then (or, recorded as a
/// replay, the runs it duplicated).
fn redelivered(tx: &Db, id: &str, jobs: &[(String, Job)], since: i64) -> Result<Accepted> {
    let mut runs: Vec<String> = tx
        .query(
            "SELECT run_id FROM queue WHERE delivery = ?1 ORDER BY seq",
            &params![id],
        )?
        .iter()
        .map(|r| r.get_str(0))
        .collect::<Result<_>>()?;
    if runs.is_empty() {
        // Recorded as a replay of other runs: name those.
        for (_, job) in jobs {
            runs.extend(same_meaning(tx, job, since)?);
        }
    }
    Ok(Accepted::Duplicate {
        runs,
        seen: Seen::Delivery,
    })
}

/// Queue the runs of new delivery `id` (in [`Queue::accept_at`]'s
/// transaction).
fn queue_jobs(
    tx: &Db,
    id: &str,
    jobs: &[(String, Job)],
    cancel_in_progress: bool,
    Clock { now, since }: Clock,
) -> Result<Accepted> {
    let mut queued = Vec::new();
    let mut same = Vec::new();
    let mut cancel_running = Vec::new();
    let mut dropped = Vec::new();
    for (run_id, job) in jobs {
        // First: a replay must not supersede its group's runs either.
        if let Some(run) = same_meaning(tx, job, since)? {
            same.push(run);
            continue;
        }
        if let (true, Some(group)) = (cancel_in_progress, &job.group) {
            let (d, c) = supersede(tx, group)?;
            dropped.extend(d);
            cancel_running.extend(c);
        }
        tx.execute(
            "INSERT INTO queue (run_id, delivery, repository, grp, state, enqueued_at, job,
                                meaning, accepted_ms)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8)",
            &params![
                run_id,
                id,
                job.repository,
                job.group,
                now_rfc3339(),
                serde_json::to_string(job)?,
                job.meaning(),
                now,
            ],
        )?;
        queued.push(run_id.clone());
    }
    if queued.is_empty() && !same.is_empty() {
        tx.execute(
            "UPDATE deliveries SET outcome = ?2 WHERE id = ?1",
            &params![id, format!("duplicate of {}", same.join(", "))],
        )?;
        return Ok(Accepted::Duplicate {
            runs: same,
            seen: Seen::Meaning,
        });
    }
    Ok(Accepted::Queued {
        runs: queued,
        cancel_running,
        dropped,
    })
}

/// A newer run of `group` supersedes its older ones: the queued ones are
/// dropped (returned), the running ones are to be cancelled (their ids).
fn supersede(tx: &Db, group: &str) -> Result<(Vec<QueuedJob>, Vec<String>)> {
    let dropped = select(
        tx,
        "WHERE grp = ?1 AND state = 'queued' ORDER BY seq",
        &params![group],
    )?;
    tx.execute(
        "UPDATE queue SET state = 'done' WHERE grp = ?1 AND state = 'queued'",
        &params![group],
    )?;
    let running = tx
        .query(
            "SELECT run_id FROM queue WHERE grp = ?1 AND state = 'running' ORDER BY seq",
            &params![group],
        )?
        .iter()
        .map(|r| r.get_str(0))
        .collect::<Result<_>>()?;
    Ok((dropped, running))
}

/// The newest run with `job`'s meaning that is not done, or was accepted
/// at `since` (Unix ms) or later.
fn same_meaning(db: &Db, job: &Job, since: i64) -> Result<Option<String>> {
    match job.meaning() {
        Some(m) => seen_since(db, &m, since),
        None => Ok(None),
    }
}

fn seen_since(db: &Db, meaning: &str, since: i64) -> Result<Option<String>> {
    db.query_opt(
        "SELECT run_id FROM queue
         WHERE meaning = ?1 AND (state != 'done' OR accepted_ms >= ?2)
         ORDER BY seq DESC LIMIT 1",
        &params![meaning, since],
    )?
    .map(|r| r.get_str(0))
    .transpose()
}

fn select(db: &Db, clause: &str, params: &[Value]) -> Result<Vec<QueuedJob>> {
    let rows = db.query(
        &format!(
            "SELECT run_id, repository, state, attempts, enqueued_at, job FROM queue {clause}"
        ),
        params,
    )?;
    let mut out = Vec::new();
    for r in rows {
        let run_id = r.get_str(0)?;
        let job: Job = serde_json::from_str(&r.get_str(5)?)
            .with_context(|| format!("queued run {run_id}: corrupt job"))?;
        out.push(QueuedJob {
            run_id,
            repository: r.get_str(1)?,
            state: r.get_str(2)?,
            attempts: r.get_i64(3)? as u32,
            enqueued_at: r.get_str(4)?,
            job,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A push of commit `sha` to branch `group`.
    fn job(group: &str, sha: &str) -> Job {
        Job {
            repository: "acme/app".into(),
            branch: Some(group.into()),
            tag: None,
            sha: sha.into(),
            event: "push".into(),
            environment: None,
            fetch_ref: Some(format!("refs/heads/{group}")),
            trusted: true,
            group: Some(group.into()),
            trigger: TriggerInfo::default(),
            archive: None,
        }
    }

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    /// The queue's tables (and the run table it looks at) in `db`.
    fn init(db: &Db) {
        db.batch("CREATE TABLE runs (id TEXT PRIMARY KEY)").unwrap();
        Queue::new(db).init().unwrap();
        // Twice: an existing queue is left as it is.
        Queue::new(db).init().unwrap();
    }

    fn a_delivery_is_accepted_once(c: &Db) {
        init(c);
        let q = Queue::new(c);
        let a = q
            .accept(
                "d1",
                "push",
                "queued",
                &[("r1".into(), job("main", "a1"))],
                false,
                WEEK,
            )
            .unwrap();
        assert!(matches!(a, Accepted::Queued { .. }));
        let again = q
            .accept(
                "d1",
                "push",
                "queued",
                &[("r2".into(), job("main", "a2"))],
                false,
                WEEK,
            )
            .unwrap();
        assert_eq!(
            again,
            Accepted::Duplicate {
                runs: vec!["r1".into()],
                seen: Seen::Delivery,
            }
        );
        assert_eq!(q.waiting().unwrap().len(), 1);
    }

    fn a_group_runs_one_at_a_time_and_newer_runs_supersede_older_ones(c: &Db) {
        init(c);
        let q = Queue::new(c);
        q.accept(
            "d1",
            "push",
            "",
            &[("r1".into(), job("main", "a1"))],
            false,
            WEEK,
        )
        .unwrap();
        q.accept(
            "d2",
            "push",
            "",
            &[("r2".into(), job("main", "a2"))],
            false,
            WEEK,
        )
        .unwrap();
        q.accept(
            "d3",
            "push",
            "",
            &[("r3".into(), job("dev", "a3"))],
            false,
            WEEK,
        )
        .unwrap();
        assert_eq!(q.claim().unwrap().unwrap().run_id, "r1");
        // r2 waits for r1 (same group); r3 may run.
        assert_eq!(q.claim().unwrap().unwrap().run_id, "r3");
        assert!(q.claim().unwrap().is_none());
        let a = q
            .accept(
                "d4",
                "push",
                "",
                &[("r4".into(), job("main", "a4"))],
                true,
                WEEK,
            )
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

    fn interrupted_runs_go_back_to_the_queue_until_they_are_given_up(c: &Db) {
        init(c);
        let q = Queue::new(c);
        q.accept(
            "d1",
            "push",
            "",
            &[("r1".into(), job("main", "a1"))],
            false,
            WEEK,
        )
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

    fn upload(source: &str, sha256: &str) -> Job {
        Job {
            repository: source.into(),
            branch: None,
            tag: None,
            sha: String::new(),
            event: "upload".into(),
            environment: None,
            fetch_ref: None,
            trusted: true,
            group: Some(format!("upload/{source}")),
            trigger: TriggerInfo {
                archive: Some(crate::run::record::SourceArchive {
                    name: "release.tar.gz".into(),
                    sha256: sha256.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            archive: None,
        }
    }

    fn at(now: i64, window: Duration) -> Clock {
        Clock {
            now,
            since: window_start(now, window),
        }
    }

    #[test]
    fn the_meaning_is_source_event_ref_and_content() {
        let push = job("main", "a1");
        assert_eq!(
            push.meaning().unwrap(),
            r#"["acme/app","push","refs/heads/main","a1"]"#
        );
        // The same commit as a tag, or on another branch, means another run.
        let mut tag = push.clone();
        (tag.branch, tag.tag) = (None, Some("v1".into()));
        tag.fetch_ref = Some("refs/tags/v1".into());
        assert_ne!(tag.meaning(), push.meaning());
        assert_ne!(job("dev", "a1").meaning(), push.meaning());
        assert_ne!(job("main", "a2").meaning(), push.meaning());
        // Without fetch_ref (not made so today) the branch or tag says it.
        let mut bare = push.clone();
        bare.fetch_ref = None;
        assert_eq!(bare.meaning(), push.meaning());
        // What the delivery says besides does not change what it asks for.
        let mut other = job("main", "A1");
        other.trigger.delivery = "another".into();
        other.trigger.sender = Some("mallory".into());
        other.environment = Some("production".into());
        assert_eq!(other.meaning(), push.meaning());
        // A pull request: its head ref and commit.
        let mut pr = job("feature/x", "a1");
        pr.event = "pull_request".into();
        pr.trigger.pull_request = Some(7);
        assert_eq!(
            pr.meaning().unwrap(),
            r#"["acme/app","pull_request","refs/pull/7/head","a1"]"#
        );
        // Parts cannot run into each other.
        let mut odd = job("main", "a1");
        odd.repository = "acme/app\",\"push".into();
        assert_ne!(odd.meaning(), push.meaning());
        // An upload: its source and the archive's digest.
        let u = upload("bundle", "AB12");
        assert_eq!(
            u.meaning().unwrap(),
            meaning_key("bundle", "upload", "", "ab12")
        );
        assert_ne!(upload("other", "ab12").meaning(), u.meaning());
        let mut unknown = upload("bundle", "ab12");
        unknown.trigger.archive = None;
        assert_eq!(unknown.meaning(), None);
        let mut unknown = job("main", "a1");
        unknown.event = "deploy".into();
        assert_eq!(unknown.meaning(), None);
        assert_eq!(job("main", "").meaning(), None);
    }

    fn the_same_meaning_under_a_new_delivery_id_is_a_duplicate_in_any_state(c: &Db) {
        init(c);
        let q = Queue::new(c);
        let push = |d: &str, r: &str, sha: &str| {
            q.accept(
                d,
                "push",
                "queued",
                &[(r.into(), job("main", sha))],
                false,
                WEEK,
            )
            .unwrap()
        };
        assert!(matches!(push("d1", "r1", "a1"), Accepted::Queued { .. }));
        let replayed = Accepted::Duplicate {
            runs: vec!["r1".into()],
            seen: Seen::Meaning,
        };
        // Queued, running, done: a duplicate of r1 each time.
        assert_eq!(push("d2", "r2", "a1"), replayed);
        assert_eq!(q.claim().unwrap().unwrap().run_id, "r1");
        assert_eq!(push("d3", "r3", "a1"), replayed);
        q.finish("r1").unwrap();
        assert_eq!(push("d4", "r4", "a1"), replayed);
        assert_eq!(q.depth().unwrap(), (0, 0));
        for r in ["r2", "r3", "r4"] {
            assert_eq!(q.find(r).unwrap(), None, "{r} was queued");
        }
        // Recorded, and its own redelivery still names r1.
        assert_eq!(
            q.delivery("d2").unwrap().as_deref(),
            Some("duplicate of r1")
        );
        assert_eq!(
            push("d2", "r5", "a1"),
            Accepted::Duplicate {
                runs: vec!["r1".into()],
                seen: Seen::Delivery,
            }
        );
        // Another commit on the same branch is another run.
        assert!(matches!(push("d6", "r6", "a2"), Accepted::Queued { .. }));
        // The look before unpacking an upload sees the same.
        q.accept(
            "u1",
            "upload",
            "queued",
            &[("u1".into(), upload("bundle", "ab12"))],
            false,
            WEEK,
        )
        .unwrap();
        let key = meaning_key("bundle", "upload", "", "ab12");
        assert_eq!(q.seen(&key, WEEK).unwrap().as_deref(), Some("u1"));
        let other = meaning_key("bundle", "upload", "", "cd34");
        assert_eq!(q.seen(&other, WEEK).unwrap(), None);
        let again = q
            .accept(
                "u2",
                "upload",
                "queued",
                &[("u2".into(), upload("bundle", "AB12"))],
                false,
                WEEK,
            )
            .unwrap();
        assert_eq!(
            again,
            Accepted::Duplicate {
                runs: vec!["u1".into()],
                seen: Seen::Meaning,
            }
        );
    }

    fn a_replay_supersedes_nothing(c: &Db) {
        init(c);
        let q = Queue::new(c);
        let push = |d: &str, r: &str, sha: &str| {
            q.accept(d, "push", "", &[(r.into(), job("main", sha))], true, WEEK)
                .unwrap()
        };
        push("d1", "r1", "a1");
        assert_eq!(q.claim().unwrap().unwrap().run_id, "r1");
        let Accepted::Queued { cancel_running, .. } = push("d2", "r2", "a2") else {
            panic!()
        };
        assert_eq!(cancel_running, ["r1"]);
        // r1's delivery, replayed, neither cancels r2 nor runs again; nor
        // does replaying r2's after it.
        assert!(matches!(
            push("d3", "r3", "a1"),
            Accepted::Duplicate {
                seen: Seen::Meaning,
                ..
            }
        ));
        assert!(matches!(
            push("d4", "r4", "a2"),
            Accepted::Duplicate {
                seen: Seen::Meaning,
                ..
            }
        ));
        // r2 waits; r1 was taken but has no record yet (it is starting, or
        // on a cluster waiting for an agent): both are listed.
        let waiting: Vec<_> = q.waiting().unwrap().into_iter().map(|j| j.run_id).collect();
        assert_eq!(waiting, ["r1", "r2"]);
        assert_eq!(q.find("r2").unwrap().unwrap().state, "queued");
    }

    fn the_window_ends_after_its_length_but_not_for_runs_still_waiting(c: &Db) {
        init(c);
        let q = Queue::new(c);
        let hour = Duration::from_secs(3600);
        let t0: i64 = 1_700_000_000_000;
        let push = |d: &str, r: &str, sha: &str, now: i64| {
            q.accept_at(
                d,
                "push",
                "",
                &[(r.into(), job("main", sha))],
                false,
                at(now, hour),
            )
            .unwrap()
        };
        assert!(matches!(
            push("d1", "r1", "a1", t0),
            Accepted::Queued { .. }
        ));
        q.claim().unwrap();
        q.finish("r1").unwrap();
        // Exactly the window later: still inside it.
        let on_the_edge = push("d2", "r2", "a1", t0 + 3_600_000);
        assert!(
            matches!(
                on_the_edge,
                Accepted::Duplicate {
                    seen: Seen::Meaning,
                    ..
                }
            ),
            "{on_the_edge:?}"
        );
        // A millisecond more: a run again (a deliberate re-push, long after).
        let Accepted::Queued { runs, .. } = push("d3", "r3", "a1", t0 + 3_600_001) else {
            panic!()
        };
        assert_eq!(runs, ["r3"]);
        // r3 is still queued: a day later its meaning is still taken.
        let day_later = t0 + 3_600_001 + 24 * 3_600_000;
        assert!(matches!(
            push("d4", "r4", "a1", day_later),
            Accepted::Duplicate {
                seen: Seen::Meaning,
                ..
            }
        ));
        // Once done, the window counts from when it was accepted.
        q.claim().unwrap();
        q.finish("r3").unwrap();
        assert!(matches!(
            push("d5", "r5", "a1", day_later + 1),
            Accepted::Queued { .. }
        ));
    }

    #[test]
    fn a_queue_from_before_meanings_is_migrated_and_its_runs_recognised() {
        let c = Db::sqlite_memory().unwrap();
        // The tables as the first version of the queue made them.
        c.batch(
            "CREATE TABLE runs (id TEXT PRIMARY KEY);
             CREATE TABLE deliveries (
                 id TEXT PRIMARY KEY,
                 event TEXT NOT NULL,
                 received_at TEXT NOT NULL,
                 outcome TEXT NOT NULL
             );
             CREATE TABLE queue (
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
             CREATE INDEX queue_by_state ON queue(state, seq);",
        )
        .unwrap();
        let old = |run: &str, state: &str, enqueued_at: &str, job: &str| {
            c.execute(
                "INSERT INTO queue (run_id, delivery, repository, grp, state, enqueued_at, job)
                 VALUES (?1, ?1, 'acme/app', 'main', ?2, ?3, ?4)",
                &params![run, state, enqueued_at, job],
            )
            .unwrap();
        };
        let json = |j: Job| serde_json::to_string(&j).unwrap();
        old("recent", "done", &now_rfc3339(), &json(job("main", "a1")));
        old(
            "waiting",
            "queued",
            "2020-01-01T00:00:00Z",
            &json(job("dev", "a2")),
        );
        old(
            "long-ago",
            "done",
            "2020-01-01T00:00:00.5Z",
            &json(job("main", "a3")),
        );
        old("corrupt", "done", "yesterday", "{not json");
        let q = Queue::new(&c);
        q.init().unwrap();
        q.init().unwrap();
        let cols: Vec<String> = c
            .query("SELECT name FROM pragma_table_info('queue')", &[])
            .unwrap()
            .iter()
            .map(|r| r.get_str(0).unwrap())
            .collect();
        assert!(
            cols.ends_with(&["meaning".into(), "accepted_ms".into()]),
            "{cols:?}"
        );
        let row = c
            .query_opt(
                "SELECT meaning, accepted_ms FROM queue WHERE run_id = 'long-ago'",
                &[],
            )
            .unwrap()
            .unwrap();
        let long_ago = (row.opt_str(0).unwrap(), row.opt_i64(1).unwrap());
        assert_eq!(
            long_ago,
            (job("main", "a3").meaning(), Some(1_577_836_800_500))
        );
        let push = |d: &str, r: &str, group: &str, sha: &str| {
            q.accept(d, "push", "", &[(r.into(), job(group, sha))], false, WEEK)
                .unwrap()
        };
        let dup = |run: &str| Accepted::Duplicate {
            runs: vec![run.into()],
            seen: Seen::Meaning,
        };
        assert_eq!(push("n1", "r1", "main", "a1"), dup("recent"));
        assert_eq!(push("n2", "r2", "dev", "a2"), dup("waiting"));
        assert!(matches!(
            push("n3", "r3", "main", "a3"),
            Accepted::Queued { .. }
        ));
        // The corrupt row stays as it was: nothing to recognise in it.
        let corrupt = c
            .query_opt("SELECT meaning FROM queue WHERE run_id = 'corrupt'", &[])
            .unwrap()
            .unwrap()
            .opt_str(0)
            .unwrap();
        assert_eq!(corrupt, None);
    }

    crate::both_engines!(
        a_delivery_is_accepted_once,
        a_group_runs_one_at_a_time_and_newer_runs_supersede_older_ones,
        interrupted_runs_go_back_to_the_queue_until_they_are_given_up,
        the_same_meaning_under_a_new_delivery_id_is_a_duplicate_in_any_state,
        a_replay_supersedes_nothing,
        the_window_ends_after_its_length_but_not_for_runs_still_waiting,
    );
}
