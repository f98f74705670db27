//! Run records: what happened in a run, kept in an embedded SQLite store
//! (`<state-dir>/runs.db`). Everything in a record is already masked.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::caps::log::LogLine;
use crate::run::approvals::ApprovalRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
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
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
        }
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub plugin: String,
    pub plugin_sha256: String,
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
    pub log: Vec<LogLine>,
}

impl StageRecord {
    pub fn pending(name: &str, plugin: &str) -> Self {
        Self {
            name: name.to_string(),
            plugin: plugin.to_string(),
            plugin_sha256: String::new(),
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
    pub stages: Vec<StageRecord>,
}

impl RunRecord {
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// The embedded store of runs.
pub struct RunStore {
    conn: Connection,
}

impl RunStore {
    pub fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let path = state_dir.join("runs.db");
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS runs (
                 id TEXT PRIMARY KEY,
                 pipeline TEXT NOT NULL,
                 build_number INTEGER NOT NULL,
                 status TEXT NOT NULL,
                 started_at TEXT NOT NULL,
                 duration_ms INTEGER NOT NULL,
                 record TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs(pipeline, build_number);",
        )?;
        Ok(Self { conn })
    }

    pub fn next_build_number(&self, pipeline: &str) -> Result<u64> {
        let n: Option<i64> = self.conn.query_row(
            "SELECT MAX(build_number) FROM runs WHERE pipeline = ?1",
            params![pipeline],
            |r| r.get(0),
        )?;
        Ok(n.map_or(1, |n| n as u64 + 1))
    }

    pub fn save(&self, run: &RunRecord) -> Result<()> {
        self.conn.execute(
            "INSERT INTO runs (id, pipeline, build_number, status, started_at, duration_ms, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status,
                 duration_ms = excluded.duration_ms, record = excluded.record",
            params![
                run.id,
                run.pipeline,
                run.build_number as i64,
                run.status.as_str(),
                run.started_at,
                run.duration_ms as i64,
                serde_json::to_string(run)?,
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<RunRecord>> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT record FROM runs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        text.map(|t| serde_json::from_str(&t).context("corrupt run record"))
            .transpose()
    }

    /// Most recent first.
    pub fn list(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT record FROM runs ORDER BY started_at DESC, build_number DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|r| Ok(serde_json::from_str(&r?)?)).collect()
    }
}
