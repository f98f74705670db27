//! The outbox of statuses, in the run store. A row is one status to post:
//! `(run, context, state)` is unique, so enqueuing again (a redelivered
//! report, a restarted server) adds nothing. Rows of one `(run, context)`
//! are posted in the order they were made.
use anyhow::Result;
use serde::Serialize;

use super::ForgeSettings;
use crate::params;
use crate::run::display::format_duration;
use crate::run::{RunRecord, Status};
use crate::serve::queue::now_ms;
use crate::store::{Db, Row};

pub fn init(db: &Db) -> Result<()> {
    db.batch(
        "CREATE TABLE IF NOT EXISTS status_outbox (
             run_id TEXT NOT NULL,
             context TEXT NOT NULL,
             state TEXT NOT NULL,
             repository TEXT NOT NULL,
             sha TEXT NOT NULL,
             description TEXT NOT NULL,
             target_url TEXT,
             created_ms BIGINT NOT NULL,
             next_try_ms BIGINT NOT NULL,
             tries BIGINT NOT NULL DEFAULT 0,
             sending BIGINT NOT NULL DEFAULT 0,
             outcome TEXT NOT NULL DEFAULT 'waiting',
             detail TEXT,
             PRIMARY KEY (run_id, context, state)
         );
         CREATE INDEX IF NOT EXISTS status_outbox_due ON status_outbox(outcome, next_try_ms);",
    )
}

/// One status to post (and, once tried, how it went).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutboxRow {
    pub run_id: String,
    pub context: String,
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    pub repository: String,
    pub sha: String,
    pub description: String,
    pub target_url: Option<String>,
    pub tries: u32,
    /// `waiting`, `posted`, `refused` (the forge said no: 4xx) or
    /// `given-up` (it kept failing).
    pub outcome: String,
    /// The forge's answer when it was not a success.
    pub detail: Option<String>,
    #[serde(skip)]
    pub sending: bool,
}

pub use OutboxRow as OutboxStatus;

/// GitHub refuses a description over 140 characters.
const MAX_DESCRIPTION: usize = 140;

fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_DESCRIPTION {
        return text.to_string();
    }
    let mut s: String = text.chars().take(MAX_DESCRIPTION - 1).collect();
    s.push('…');
    s
}

/// What the forge is told about a run or stage's status.
fn state_of(status: Status) -> &'static str {
    match status {
        Status::Success | Status::Skipped => "success",
        Status::Failure => "failure",
        Status::Cancelled => "error",
        Status::Queued | Status::Pending | Status::Running => "pending",
    }
}

/// Which runs get statuses: those a GitHub delivery started.
fn forge_target(run: &RunRecord) -> Option<(String, String)> {
    let t = run.trigger.as_ref()?;
    let github = matches!(run.event.as_str(), "push" | "pull_request");
    (github && t.repository.contains('/') && !run.commit_sha.is_empty())
        .then(|| (t.repository.clone(), run.commit_sha.clone()))
}

fn target_url(public_url: Option<&str>, run: &str) -> Option<String> {
    public_url.map(|base| format!("{base}/runs/{run}"))
}

/// A run was queued: `pending` for its context.
pub fn queued(
    db: &Db,
    cfg: &ForgeSettings,
    public_url: Option<&str>,
    run: &str,
    repository: &str,
    sha: &str,
) -> Result<()> {
    let row = OutboxRow {
        run_id: run.into(),
        context: cfg.context.clone(),
        state: "pending".into(),
        repository: repository.into(),
        sha: sha.into(),
        description: "queued".into(),
        target_url: target_url(public_url, run),
        tries: 0,
        outcome: "waiting".into(),
        detail: None,
        sending: false,
    };
    add(db, &row)
}

/// A run ended: its status (and each stage's, with `per-stage`).
pub fn ended(
    db: &Db,
    cfg: &ForgeSettings,
    public_url: Option<&str>,
    run: &RunRecord,
) -> Result<()> {
    let Some((repository, sha)) = forge_target(run) else {
        return Ok(());
    };
    let base = OutboxRow {
        run_id: run.id.clone(),
        context: cfg.context.clone(),
        state: state_of(run.status).into(),
        repository,
        sha,
        description: cut(&run_description(run)),
        target_url: target_url(public_url, &run.id),
        tries: 0,
        outcome: "waiting".into(),
        detail: None,
        sending: false,
    };
    // The run's own first: shown (and sent) before its stages'.
    add(db, &base)?;
    if cfg.per_stage {
        for st in run.stages.iter().filter(|s| s.status.is_final()) {
            let mut row = base.clone();
            row.context = format!("{}/{}", cfg.context, st.name);
            row.state = state_of(st.status).into();
            row.description = cut(&format!(
                "{} in {}{}",
                st.status,
                format_duration(st.duration_ms),
                match st.detail() {
                    "" => String::new(),
                    d => format!(": {d}"),
                }
            ));
            add(db, &row)?;
        }
    }
    Ok(())
}

/// `success in 12.3s · #5`, or with the reason when no stage says.
fn run_description(run: &RunRecord) -> String {
    let mut d = format!(
        "{} in {} · #{}",
        run.status,
        format_duration(run.duration_ms),
        run.build_number
    );
    if let Some(r) = &run.reason {
        d.push_str(": ");
        d.push_str(r);
    }
    d
}

fn add(db: &Db, s: &OutboxRow) -> Result<()> {
    let now = now_ms();
    db.execute(
        "INSERT INTO status_outbox (run_id, context, state, repository, sha, description,
             target_url, created_ms, next_try_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (run_id, context, state) DO NOTHING",
        &params![
            s.run_id,
            s.context,
            s.state,
            s.repository,
            s.sha,
            s.description,
            s.target_url,
            now
        ],
    )?;
    Ok(())
}

const COLUMNS: &str = "run_id, context, state, repository, sha, description, target_url, tries,
     outcome, detail, sending";

fn row(r: &Row) -> Result<OutboxRow> {
    Ok(OutboxRow {
        run_id: r.get_str(0)?,
        context: r.get_str(1)?,
        state: r.get_str(2)?,
        repository: r.get_str(3)?,
        sha: r.get_str(4)?,
        description: r.get_str(5)?,
        target_url: r.opt_str(6)?,
        tries: r.get_i64(7)? as u32,
        outcome: r.get_str(8)?,
        detail: r.opt_str(9)?,
        sending: r.get_i64(10)? != 0,
    })
}

/// The statuses of one run, oldest first (the run page shows them).
pub fn of_run(db: &Db, run: &str) -> Result<Vec<OutboxRow>> {
    if !db.has_table("status_outbox")? {
        return Ok(Vec::new());
    }
    db.query(
        &format!(
            "SELECT {COLUMNS} FROM status_outbox WHERE run_id = ?1
             ORDER BY created_ms, LENGTH(context), context, state"
        ),
        &params![run],
    )?
    .iter()
    .map(row)
    .collect()
}

/// The statuses due now: the oldest waiting one of each `(run, context)`
/// whose time has come (a later one waits for it, so GitHub sees them in
/// order).
pub fn due(db: &Db, now: i64, limit: usize) -> Result<Vec<OutboxRow>> {
    let rows = db.query(
        &format!(
            "SELECT {COLUMNS}, next_try_ms FROM status_outbox WHERE outcome = 'waiting'
             ORDER BY created_ms, run_id, context LIMIT ?1"
        ),
        &params![(limit * 4) as i64],
    )?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in &rows {
        let s = row(r)?;
        let first_of_its_context = seen.insert((s.run_id.clone(), s.context.clone()));
        if first_of_its_context && r.get_i64(11)? <= now && out.len() < limit {
            out.push(s);
        }
    }
    Ok(out)
}

/// About to post: if the server dies before it records the answer, the
/// next one looks at the forge before posting again.
pub fn sending(db: &Db, s: &OutboxRow) -> Result<()> {
    set(db, s, "sending = 1, tries = tries + 1")
}

pub fn posted(db: &Db, s: &OutboxRow) -> Result<()> {
    set(db, s, "sending = 0, outcome = 'posted', detail = NULL")
}

/// Try again at `next_try_ms` (Unix ms), saying why.
pub fn retry_at(db: &Db, s: &OutboxRow, next_try_ms: i64, why: &str) -> Result<()> {
    db.execute(
        "UPDATE status_outbox SET sending = 0, next_try_ms = ?4, detail = ?5
         WHERE run_id = ?1 AND context = ?2 AND state = ?3",
        &params![s.run_id, s.context, s.state, next_try_ms, why],
    )?;
    Ok(())
}

/// Not posted for good: `refused` (4xx) or `given-up`, with the answer.
pub fn failed(db: &Db, s: &OutboxRow, outcome: &str, why: &str) -> Result<()> {
    db.execute(
        "UPDATE status_outbox SET sending = 0, outcome = ?4, detail = ?5
         WHERE run_id = ?1 AND context = ?2 AND state = ?3",
        &params![s.run_id, s.context, s.state, outcome, why],
    )?;
    Ok(())
}

fn set(db: &Db, s: &OutboxRow, what: &str) -> Result<()> {
    db.execute(
        &format!(
            "UPDATE status_outbox SET {what} WHERE run_id = ?1 AND context = ?2 AND state = ?3"
        ),
        &params![s.run_id, s.context, s.state],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{RunOptions, RunRecord};

    fn settings(per_stage: bool) -> ForgeSettings {
        ForgeSettings {
            api_url: "http://127.0.0.1:1".into(),
            token: crate::serve::config::SecretRef::Env("T".into()),
            context: "ci".into(),
            per_stage,
        }
    }

    fn record(event: &str, status: Status) -> RunRecord {
        let mut opts = RunOptions::new("r1".into(), "/tmp".into());
        opts.event = event.into();
        opts.commit_sha = "abc123".into();
        opts.trigger = Some(crate::run::record::TriggerInfo {
            repository: "acme/app".into(),
            ..Default::default()
        });
        let mut r = RunRecord::new("app", &opts);
        r.status = status;
        r.reason = Some("x".repeat(300));
        r
    }

    #[test]
    fn each_status_is_kept_once_and_posted_in_order() {
        let db = Db::sqlite_memory().unwrap();
        init(&db).unwrap();
        let cfg = settings(false);
        queued(&db, &cfg, None, "r1", "acme/app", "abc123").unwrap();
        queued(&db, &cfg, None, "r1", "acme/app", "abc123").unwrap();
        ended(
            &db,
            &cfg,
            Some("https://ci"),
            &record("push", Status::Success),
        )
        .unwrap();
        ended(
            &db,
            &cfg,
            Some("https://ci"),
            &record("push", Status::Success),
        )
        .unwrap();
        let all = of_run(&db, "r1").unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all[1].description.chars().count() <= MAX_DESCRIPTION);
        assert_eq!(all[1].target_url.as_deref(), Some("https://ci/runs/r1"));
        // Only the oldest of one context is due; the next once it is done.
        let due_now = due(&db, i64::MAX, 10).unwrap();
        assert_eq!(due_now.len(), 1);
        assert_eq!(due_now[0].state, "pending");
        posted(&db, &due_now[0]).unwrap();
        let next = due(&db, i64::MAX, 10).unwrap();
        assert_eq!(next[0].state, "success");
        // Not before its time.
        retry_at(&db, &next[0], i64::MAX, "HTTP 502").unwrap();
        assert!(due(&db, 0, 10).unwrap().is_empty());
        failed(&db, &next[0], "refused", "HTTP 422").unwrap();
        assert!(due(&db, i64::MAX, 10).unwrap().is_empty());
    }

    #[test]
    fn only_runs_a_delivery_started_get_statuses_and_stages_with_per_stage() {
        let db = Db::sqlite_memory().unwrap();
        init(&db).unwrap();
        ended(
            &db,
            &settings(true),
            None,
            &record("upload", Status::Failure),
        )
        .unwrap();
        assert!(of_run(&db, "r1").unwrap().is_empty());
        let mut r = record("pull_request", Status::Cancelled);
        let mut st = crate::run::StageRecord::pending("build", "b.wasm");
        st.status = Status::Skipped;
        r.stages.push(st);
        ended(&db, &settings(true), None, &r).unwrap();
        let rows: Vec<(String, String)> = of_run(&db, "r1")
            .unwrap()
            .into_iter()
            .map(|s| (s.context, s.state))
            .collect();
        assert_eq!(
            rows,
            [
                ("ci".to_string(), "error".to_string()),
                ("ci/build".to_string(), "success".to_string())
            ]
        );
    }
}
