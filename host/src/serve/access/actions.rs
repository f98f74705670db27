//! The record of who did what on the server (cancel, re-run, approve,
//! reject), in the run store, shown with the run.
use anyhow::Result;
use serde::Serialize;

use crate::params;
use crate::run::record::now_rfc3339;
use crate::store::Db;

pub fn init(db: &Db) -> Result<()> {
    db.batch(
        "CREATE TABLE IF NOT EXISTS actions (
             run_id TEXT NOT NULL,
             at TEXT NOT NULL,
             who TEXT NOT NULL,
             action TEXT NOT NULL,
             detail TEXT
         );
         CREATE INDEX IF NOT EXISTS actions_by_run ON actions(run_id, at);",
    )
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Action {
    pub at: String,
    pub who: String,
    pub action: String,
    pub detail: Option<String>,
}

pub fn record(db: &Db, run: &str, who: &str, action: &str, detail: Option<&str>) -> Result<()> {
    db.execute(
        "INSERT INTO actions (run_id, at, who, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        &params![run, now_rfc3339(), who, action, detail],
    )?;
    Ok(())
}

pub fn of_run(db: &Db, run: &str) -> Result<Vec<Action>> {
    if !db.has_table("actions")? {
        return Ok(Vec::new());
    }
    db.query(
        "SELECT at, who, action, detail FROM actions WHERE run_id = ?1 ORDER BY at",
        &params![run],
    )?
    .iter()
    .map(|r| {
        Ok(Action {
            at: r.get_str(0)?,
            who: r.get_str(1)?,
            action: r.get_str(2)?,
            detail: r.opt_str(3)?,
        })
    })
    .collect()
}
