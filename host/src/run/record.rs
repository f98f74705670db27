//! Run records: what happened in a run, kept in the embedded SQLite store
//! (`<state-dir>/runs.db`) or a PostgreSQL database ([`crate::store`]).
//! Everything in a record is already masked.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::caps::audit::AuditEntry;
use crate::caps::log::LogLine;
use crate::run::options::RunOptions;
use crate::store::{params, Db, Row, StoreLocation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Accepted by `host serve`, waiting for a free slot.
    Queued,
    Pending,
    Running,
    Success,
    Failure,
    Skipped,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
        }
    }
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Status::Queued,
            "pending" => Status::Pending,
            "running" => Status::Running,
            "success" => Status::Success,
            "failure" => Status::Failure,
            "skipped" => Status::Skipped,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    /// The run (or stage) has ended and will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Success | Status::Failure | Status::Skipped | Status::Cancelled
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnotationRecord {
    pub level: String,
    pub title: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// How a person decided on a stage waiting for approval (see
/// [`crate::run::approvals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Approved,
    Rejected,
    TimedOut,
}

impl Decision {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
            Decision::TimedOut => "timed-out",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "approved" => Some(Decision::Approved),
            "rejected" => Some(Decision::Rejected),
            "timed-out" => Some(Decision::TimedOut),
            _ => None,
        }
    }
    /// The decision a person asks for by its verb (`…/approve`, `…/reject`).
    pub fn from_action(verb: &str) -> Option<Self> {
        match verb {
            "approve" => Some(Decision::Approved),
            "reject" => Some(Decision::Rejected),
            _ => None,
        }
    }
}

/// What the run record keeps about an approval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRecord {
    pub environment: String,
    pub requested_at: String,
    pub decision: Decision,
    pub decided_at: String,
    /// Who decided (`host approve --by`, default `$USER`); none on timeout.
    pub by: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub plugin: String,
    pub plugin_sha256: String,
    /// The environment the stage deploys to (`environment = "…"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The stages this one `needs` (as the pipeline said when it ran).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    pub status: Status,
    /// The stage passed but reported a warning.
    pub warning: bool,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub duration_ms: u64,
    pub summary: String,
    pub outputs: BTreeMap<String, String>,
    pub annotations: Vec<AnnotationRecord>,
    /// Why the stage failed, was skipped or cancelled.
    pub error: Option<String>,
    /// The approval the stage waited for, if its environment needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRecord>,
    /// Every capability call the stage made, allowed or denied
    /// (`host audit RUN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<AuditEntry>,
    /// Digests of the artifacts the stage produced (`artifacts = [...]`),
    /// checked before every stage that depends on it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// The stage did not run: its result was replayed from this earlier
    /// run's (`cache = { … }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<CachedFrom>,
    pub log: Vec<LogLine>,
}

/// The run a cached stage's result comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFrom {
    pub run_id: String,
    pub build_number: u64,
}

impl std::fmt::Display for CachedFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cached from run {}", self.build_number)
    }
}

impl StageRecord {
    pub fn pending(name: &str, plugin: &str) -> Self {
        Self {
            name: name.to_string(),
            plugin: plugin.to_string(),
            plugin_sha256: String::new(),
            environment: None,
            needs: Vec::new(),
            status: Status::Pending,
            warning: false,
            attempts: 0,
            started_at: None,
            duration_ms: 0,
            summary: String::new(),
            outputs: BTreeMap::new(),
            annotations: Vec::new(),
            error: None,
            approval: None,
            audit: Vec::new(),
            artifacts: BTreeMap::new(),
            cached_from: None,
            log: Vec::new(),
        }
    }

    /// What a person reads about how the stage went: its summary, or
    /// its error when it has none.
    pub fn detail(&self) -> &str {
        if self.summary.is_empty() {
            self.error.as_deref().unwrap_or_default()
        } else {
            &self.summary
        }
    }

    /// A copy without the log lines (which the live log already holds):
    /// copying a chatty stage's log is most of what recording costs.
    pub fn without_log(&self) -> Self {
        // Destructured so that a new field cannot be forgotten here.
        let Self {
            name,
            plugin,
            plugin_sha256,
            environment,
            needs,
            status,
            warning,
            attempts,
            started_at,
            duration_ms,
            summary,
            outputs,
            annotations,
            error,
            approval,
            audit,
            artifacts,
            cached_from,
            log: _,
        } = self;
        Self {
            name: name.clone(),
            plugin: plugin.clone(),
            plugin_sha256: plugin_sha256.clone(),
            environment: environment.clone(),
            needs: needs.clone(),
            status: *status,
            warning: *warning,
            attempts: *attempts,
            started_at: started_at.clone(),
            duration_ms: *duration_ms,
            summary: summary.clone(),
            outputs: outputs.clone(),
            annotations: annotations.clone(),
            error: error.clone(),
            approval: approval.clone(),
            audit: audit.clone(),
            artifacts: artifacts.clone(),
            cached_from: cached_from.clone(),
            log: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub file: String,
    pub build_number: u64,
    pub commit_sha: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub event: String,
    /// The environment this run deploys to (`[environments]`), if any.
    #[serde(default)]
    pub environment: Option<String>,
    pub status: Status,
    pub started_at: String,
    pub duration_ms: u64,
    /// Why the run ended as it did when no stage says (a checkout that
    /// failed, a newer push that superseded it, a server stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the run came from when a webhook started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerInfo>,
    pub stages: Vec<StageRecord>,
    /// On a cluster: each agent's attempt at the run (`1 died, 2 success`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
}

/// One agent's attempt at a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub agent: String,
    pub claimed_at: String,
    /// `died` (its agent stopped answering), `stopped` (its agent was
    /// stopped and handed the run back), or the run's status; none while
    /// it runs.
    pub outcome: Option<String>,
}

impl std::fmt::Display for AttemptRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = self.outcome.as_deref().unwrap_or("running");
        write!(f, "{} {outcome} ({})", self.attempt, self.agent)
    }
}

// Part of what a run is about (its options); here too for the paths
// callers already use.
pub use crate::run::options::TriggerInfo;
pub use crate::source::archive::SourceArchive;

impl RunRecord {
    /// The record of run `opts.id` of `pipeline` as it starts (running,
    /// no stages yet): the one place a run record is made, so `host run`
    /// and `host serve` describe a run the same way.
    pub fn new(pipeline: &str, opts: &RunOptions) -> Self {
        Self {
            id: opts.id.clone(),
            pipeline: pipeline.to_string(),
            file: String::new(),
            build_number: opts.build_number,
            commit_sha: opts.commit_sha.clone(),
            branch: opts.branch.clone(),
            tag: opts.tag.clone(),
            event: opts.event.clone(),
            environment: opts.environment.clone(),
            status: Status::Running,
            started_at: now_rfc3339(),
            duration_ms: 0,
            reason: None,
            trigger: opts.trigger.clone(),
            stages: Vec::new(),
            attempts: Vec::new(),
        }
    }

    /// A copy whose stages carry no log lines (see `StageRecord::without_log`).
    pub fn without_logs(&self) -> Self {
        let Self {
            id,
            pipeline,
            file,
            build_number,
            commit_sha,
            branch,
            tag,
            event,
            environment,
            status,
            started_at,
            duration_ms,
            reason,
            trigger,
            stages,
            attempts,
        } = self;
        Self {
            id: id.clone(),
            pipeline: pipeline.clone(),
            file: file.clone(),
            build_number: *build_number,
            commit_sha: commit_sha.clone(),
            branch: branch.clone(),
            tag: tag.clone(),
            event: event.clone(),
            environment: environment.clone(),
            status: *status,
            started_at: started_at.clone(),
            duration_ms: *duration_ms,
            reason: reason.clone(),
            trigger: trigger.clone(),
            stages: stages.iter().map(StageRecord::without_log).collect(),
            attempts: attempts.clone(),
        }
    }

    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// How the run's deployment went: the stages deploying to the run's
    /// environment that ran (failure wins over success); `None` when none
    /// ran (not a deployment).
    pub fn deployment_status(&self) -> Option<Status> {
        let env = self.environment.as_deref()?;
        let ran = self
            .stages
            .iter()
            .filter(|s| s.environment.as_deref() == Some(env))
            .map(|s| s.status)
            .filter(|s| matches!(s, Status::Success | Status::Failure));
        ran.fold(None, |acc, s| match (acc, s) {
            (Some(Status::Failure), _) | (_, Status::Failure) => Some(Status::Failure),
            _ => Some(Status::Success),
        })
    }

    /// Unix milliseconds of the start (0 when the timestamp does not parse).
    pub fn started_unix_ms(&self) -> i64 {
        parse_unix_ms(&self.started_at).unwrap_or(0)
    }
}

/// Now, as records write times (RFC 3339, UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A fresh run id: 12 hex digits.
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Unix milliseconds of an RFC 3339 timestamp.
pub fn parse_unix_ms(rfc3339: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// One row of the run list: what `host runs`, the API and the metrics need,
/// read from columns without decoding whole records (which carry logs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    pub id: String,
    pub pipeline: String,
    pub build_number: u64,
    pub status: Status,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub commit_sha: String,
    pub event: String,
    pub environment: Option<String>,
    /// See [`RunRecord::deployment_status`].
    pub deployment: Option<Status>,
    pub started_at: String,
    pub started_unix_ms: i64,
    pub duration_ms: u64,
    pub reason: Option<String>,
    pub repository: Option<String>,
}

impl RunSummary {
    pub fn finished_unix_ms(&self) -> i64 {
        self.started_unix_ms + self.duration_ms as i64
    }
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    pub branch: Option<String>,
    pub status: Option<Status>,
}

/// A stored log line with its position in the run's log (for `--follow`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredLine {
    pub seq: i64,
    pub stage: String,
    #[serde(flatten)]
    pub line: LogLine,
}

/// Log lines per stored batch, and the positions a batch spans (a line's
/// position is `batch seq × LINE_SLOTS + index + 1`).
const BATCH_LINES: usize = 4096;
const LINE_SLOTS: i64 = 8192;

/// The store of runs: `<state-dir>/runs.db`, or a PostgreSQL database.
pub struct RunStore {
    db: Db,
}

/// Columns added after the first release; `open` adds them to older
/// SQLite databases and fills them from the stored records. `ord` counts
/// insertions: the order among runs that started in the same millisecond
/// (SQLite's `rowid`, which PostgreSQL has not).
const SUMMARY_COLUMNS: &[(&str, &str)] = &[
    ("branch", "TEXT"),
    ("tag", "TEXT"),
    ("commit_sha", "TEXT NOT NULL DEFAULT ''"),
    ("event", "TEXT NOT NULL DEFAULT ''"),
    ("environment", "TEXT"),
    ("deployment", "TEXT"),
    ("started_unix_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("reason", "TEXT"),
    ("repository", "TEXT"),
    ("ord", "INTEGER NOT NULL DEFAULT 0"),
];

/// The tables as the first SQLite release made them (`migrate` adds the
/// rest).
const SQLITE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        build_number INTEGER NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs(pipeline, build_number);
    CREATE TABLE IF NOT EXISTS run_log_batches (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        lines TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS run_log_batches_by_run ON run_log_batches(run_id, seq);";

/// A PostgreSQL database starts with the current tables.
const POSTGRES_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        build_number BIGINT NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT NOT NULL,
        duration_ms BIGINT NOT NULL,
        record TEXT NOT NULL,
        branch TEXT,
        tag TEXT,
        commit_sha TEXT NOT NULL DEFAULT '',
        event TEXT NOT NULL DEFAULT '',
        environment TEXT,
        deployment TEXT,
        started_unix_ms BIGINT NOT NULL DEFAULT 0,
        reason TEXT,
        repository TEXT,
        ord BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs(pipeline, build_number);
    CREATE TABLE IF NOT EXISTS run_log_batches (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        run_id TEXT NOT NULL,
        lines TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS run_log_batches_by_run ON run_log_batches(run_id, seq);";

/// Indexes on columns `migrate` may have just added.
const INDEXES: &str = "
    CREATE INDEX IF NOT EXISTS runs_by_start ON runs(started_unix_ms, ord);
    CREATE INDEX IF NOT EXISTS runs_by_ord ON runs(ord);";

/// Log batches read at a time (a batch holds up to `BATCH_LINES` lines).
const BATCHES_PER_READ: i64 = 16;

impl RunStore {
    /// The SQLite store in `<state_dir>/runs.db`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        Self::open_at(&StoreLocation::Dir(state_dir.to_path_buf()))
    }

    /// The store in a PostgreSQL database (tables made when missing).
    pub fn postgres(url: &str) -> Result<Self> {
        Self::open_at(&StoreLocation::Postgres(url.to_string()))
    }

    pub fn open_at(loc: &StoreLocation) -> Result<Self> {
        Self::with_db(Db::open(loc)?)
    }

    /// The store in `db`, its tables made (or brought up to date).
    pub fn with_db(db: Db) -> Result<Self> {
        if db.is_postgres() {
            // In a transaction: the writers' lock keeps two processes
            // from making the same tables at once.
            db.transaction(|db| db.batch(POSTGRES_TABLES))
                .context("creating the run tables")?;
        } else {
            db.batch(SQLITE_TABLES)?;
        }
        let store = Self { db };
        store.migrate()?;
        store.db.batch(INDEXES)?;
        Ok(store)
    }

    /// An SQLite database from before a column was added: add it, fill
    /// the new columns from the records (`ord` from the row order).
    fn migrate(&self) -> Result<()> {
        if self.db.is_postgres() {
            return Ok(());
        }
        let have: Vec<String> = self
            .db
            .query("SELECT name FROM pragma_table_info('runs')", &[])?
            .iter()
            .map(|r| r.get_str(0))
            .collect::<Result<_>>()?;
        let missing: Vec<_> = SUMMARY_COLUMNS
            .iter()
            .filter(|(c, _)| !have.iter().any(|h| h == c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.db.transaction(|tx| {
            for (col, ty) in &missing {
                tx.batch(&format!("ALTER TABLE runs ADD COLUMN {col} {ty}"))?;
            }
            if missing.iter().any(|(c, _)| *c == "ord") {
                tx.execute("UPDATE runs SET ord = rowid", &[])?;
            }
            for row in tx.query("SELECT record FROM runs", &[])? {
                if let Ok(run) = serde_json::from_str::<RunRecord>(&row.get_str(0)?) {
                    Self::write(tx, &run)?;
                }
            }
            Ok(())
        })
    }

    pub fn next_build_number(&self, pipeline: &str) -> Result<u64> {
        let n = self
            .db
            .query_opt(
                "SELECT MAX(build_number) FROM runs WHERE pipeline = ?1",
                &params![pipeline],
            )?
            .map(|r| r.opt_i64(0))
            .transpose()?
            .flatten();
        Ok(n.map_or(1, |n| n as u64 + 1))
    }

    /// Insert or update a run. Stage logs are not kept in the record: they
    /// are in the live log (`append_logs`), and `get` puts them back.
    pub fn save(&self, run: &RunRecord) -> Result<()> {
        Self::write(&self.db, run)
    }

    fn write(db: &Db, run: &RunRecord) -> Result<()> {
        let without_logs;
        let run = if run.stages.iter().any(|s| !s.log.is_empty()) {
            without_logs = run.without_logs();
            &without_logs
        } else {
            run
        };
        db.execute(
            "INSERT INTO runs (id, pipeline, build_number, status, started_at, duration_ms, record,
                 branch, tag, commit_sha, event, environment, deployment, started_unix_ms,
                 reason, repository, ord)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 (SELECT COALESCE(MAX(ord), 0) + 1 FROM runs))
             ON CONFLICT(id) DO UPDATE SET pipeline = excluded.pipeline,
                 build_number = excluded.build_number, status = excluded.status,
                 started_at = excluded.started_at, duration_ms = excluded.duration_ms,
                 record = excluded.record, branch = excluded.branch, tag = excluded.tag,
                 commit_sha = excluded.commit_sha, event = excluded.event,
                 environment = excluded.environment, deployment = excluded.deployment,
                 started_unix_ms = excluded.started_unix_ms, reason = excluded.reason,
                 repository = excluded.repository",
            &params![
                run.id,
                run.pipeline,
                run.build_number,
                run.status.as_str(),
                run.started_at,
                run.duration_ms,
                serde_json::to_string(run)?,
                run.branch,
                run.tag,
                run.commit_sha,
                run.event,
                run.environment,
                run.deployment_status().map(Status::as_str),
                run.started_unix_ms(),
                run.reason,
                run.trigger.as_ref().map(|t| t.repository.clone()),
            ],
        )?;
        Ok(())
    }

    /// A run with its stages' logs.
    pub fn get(&self, id: &str) -> Result<Option<RunRecord>> {
        let Some(row) = self
            .db
            .query_opt("SELECT record FROM runs WHERE id = ?1", &params![id])?
        else {
            return Ok(None);
        };
        let mut run: RunRecord =
            serde_json::from_str(&row.get_str(0)?).context("corrupt run record")?;
        // Records written before live logs carry their logs themselves.
        if run.stages.iter().all(|s| s.log.is_empty()) {
            for l in self.logs(id, None, 0, usize::MAX)? {
                if let Some(s) = run.stages.iter_mut().find(|s| s.name == l.stage) {
                    s.log.push(l.line);
                }
            }
        }
        Ok(Some(run))
    }

    /// Just the status of a run (cheap, for polling).
    pub fn status(&self, id: &str) -> Result<Option<Status>> {
        let row = self
            .db
            .query_opt("SELECT status FROM runs WHERE id = ?1", &params![id])?;
        Ok(match row {
            Some(r) => Status::parse(&r.get_str(0)?),
            None => None,
        })
    }

    /// Whole records (without logs), most recent first.
    pub fn list(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.db
            .query(
                "SELECT record FROM runs ORDER BY started_unix_ms DESC, ord DESC LIMIT ?1",
                &params![limit],
            )?
            .iter()
            .map(|r| Ok(serde_json::from_str(&r.get_str(0)?)?))
            .collect()
    }

    /// When the commits of `pipeline`'s successful deployments that started
    /// at or after `since_unix_ms` were made (Unix ms, by run id), where
    /// their deliveries said (`TriggerInfo::commit_time`).
    pub fn commit_times(
        &self,
        pipeline: &str,
        since_unix_ms: i64,
    ) -> Result<BTreeMap<String, i64>> {
        #[derive(Deserialize)]
        struct Only {
            id: String,
            #[serde(default)]
            trigger: Option<TriggerInfo>,
        }
        let rows = self.db.query(
            "SELECT record FROM runs
             WHERE pipeline = ?1 AND deployment = 'success' AND started_unix_ms >= ?2",
            &params![pipeline, since_unix_ms],
        )?;
        let mut out = BTreeMap::new();
        for row in rows {
            let r: Only = serde_json::from_str(&row.get_str(0)?).context("corrupt run record")?;
            let t = r.trigger.and_then(|t| t.commit_time);
            if let Some(ms) = t.as_deref().and_then(parse_unix_ms) {
                out.insert(r.id, ms);
            }
        }
        Ok(out)
    }

    /// Summaries of the runs matching `filter`, most recent first.
    pub fn summaries(&self, filter: &RunFilter, limit: usize) -> Result<Vec<RunSummary>> {
        let rows = self.db.query(
            "SELECT id, pipeline, build_number, status, branch, tag, commit_sha, event,
                    environment, deployment, started_at, started_unix_ms, duration_ms, reason,
                    repository
             FROM runs
             WHERE (CAST(?1 AS TEXT) IS NULL OR pipeline = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR branch = ?2)
               AND (CAST(?3 AS TEXT) IS NULL OR status = ?3)
             ORDER BY started_unix_ms DESC, ord DESC LIMIT ?4",
            &params![
                filter.pipeline,
                filter.branch,
                filter.status.map(Status::as_str),
                limit
            ],
        )?;
        rows.iter().map(summary).collect()
    }

    /// Append live log lines, as one batch.
    pub fn append_logs(&self, run_id: &str, lines: &[(String, LogLine)]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&str, u64, &str, &str)> = lines
            .iter()
            .map(|(stage, l)| (stage.as_str(), l.at_ms, l.stream.as_str(), l.text.as_str()))
            .collect();
        for chunk in rows.chunks(BATCH_LINES) {
            self.db.execute(
                "INSERT INTO run_log_batches (run_id, lines) VALUES (?1, ?2)",
                &params![run_id, serde_json::to_string(chunk)?],
            )?;
        }
        Ok(())
    }

    /// Forget the live log of a run (before it runs again).
    pub fn clear_logs(&self, run_id: &str) -> Result<()> {
        self.db.execute(
            "DELETE FROM run_log_batches WHERE run_id = ?1",
            &params![run_id],
        )?;
        Ok(())
    }

    /// Live log lines of a run after position `after` (0: from the start),
    /// of one stage or all, at most `limit`.
    pub fn logs(
        &self,
        run_id: &str,
        stage: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredLine>> {
        let after = after.max(0);
        let mut out = Vec::new();
        let mut from = after / LINE_SLOTS;
        loop {
            let batches = self.db.query(
                "SELECT seq, lines FROM run_log_batches WHERE run_id = ?1 AND seq >= ?2
                 ORDER BY seq LIMIT ?3",
                &params![run_id, from, BATCHES_PER_READ],
            )?;
            for row in &batches {
                let seq = row.get_i64(0)?;
                let lines: Vec<(String, u64, String, String)> =
                    serde_json::from_str(&row.get_str(1)?).context("corrupt log batch")?;
                for (i, (st, at_ms, stream, text)) in lines.into_iter().enumerate() {
                    let pos = seq * LINE_SLOTS + i as i64 + 1;
                    if pos <= after || stage.is_some_and(|s| s != st) {
                        continue;
                    }
                    let line = LogLine {
                        at_ms,
                        stream,
                        text,
                    };
                    out.push(StoredLine {
                        seq: pos,
                        stage: st,
                        line,
                    });
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
                from = seq + 1;
            }
            if (batches.len() as i64) < BATCHES_PER_READ {
                return Ok(out);
            }
        }
    }

    /// The underlying database, for stores that share it (the server's
    /// queue, approvals).
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// A [`RunSummary`] from the columns `summaries` selects.
fn summary(r: &Row) -> Result<RunSummary> {
    Ok(RunSummary {
        id: r.get_str(0)?,
        pipeline: r.get_str(1)?,
        build_number: r.get_i64(2)? as u64,
        status: Status::parse(&r.get_str(3)?).unwrap_or(Status::Failure),
        branch: r.opt_str(4)?,
        tag: r.opt_str(5)?,
        commit_sha: r.get_str(6)?,
        event: r.get_str(7)?,
        environment: r.opt_str(8)?,
        deployment: r.opt_str(9)?.and_then(|s| Status::parse(&s)),
        started_at: r.get_str(10)?,
        started_unix_ms: r.get_i64(11)?,
        duration_ms: r.get_i64(12)? as u64,
        reason: r.opt_str(13)?,
        repository: r.opt_str(14)?,
    })
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
