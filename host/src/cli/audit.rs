//! `host audit RUN [STAGE]`: the capability calls of a run's stages,
//! allowed and denied, from its record.
use std::io::Write;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::history::find_run;
use crate::caps::audit::AuditEntry;
use crate::run::display::terminal_safe;
use crate::run::RunStore;
use crate::store::StoreLocation;

#[derive(Args)]
pub struct AuditArgs {
    /// A run id (or a unique prefix of one).
    pub id: String,
    /// Only this stage's calls.
    pub stage: Option<String>,
    /// Only the calls the grants refused.
    #[arg(long)]
    pub denied: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row<'a> {
    stage: &'a str,
    #[serde(flatten)]
    entry: &'a AuditEntry,
}

pub async fn audit(args: AuditArgs, loc: &StoreLocation) -> Result<u8> {
    let loc = loc.clone();
    tokio::task::spawn_blocking(move || show(args, &loc)).await?
}

fn show(args: AuditArgs, loc: &StoreLocation) -> Result<u8> {
    let store = RunStore::open_at(loc)?;
    let run = find_run(&store, &args.id)?;
    if let Some(s) = &args.stage {
        if run.stage(s).is_none() {
            let names: Vec<&str> = run.stages.iter().map(|s| s.name.as_str()).collect();
            anyhow::bail!(
                "run {} has no stage `{s}` (stages: {})",
                run.id,
                names.join(", ")
            );
        }
    }
    let rows: Vec<Row> = run
        .stages
        .iter()
        .filter(|s| args.stage.as_ref().is_none_or(|n| *n == s.name))
        .flat_map(|s| {
            s.audit.iter().map(|entry| Row {
                stage: &s.name,
                entry,
            })
        })
        .filter(|r| !args.denied || !r.entry.allowed)
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let denied = rows.iter().filter(|r| !r.entry.allowed).count();
    writeln!(
        out,
        "run {}  {} #{}: {} capability calls, {denied} denied",
        run.id,
        run.pipeline,
        run.build_number,
        rows.len()
    )?;
    if rows.is_empty() {
        return Ok(0);
    }
    let w = rows.iter().map(|r| r.stage.len()).max().unwrap_or(5).max(5);
    let c = rows
        .iter()
        .map(|r| r.entry.capability.len())
        .max()
        .unwrap_or(10)
        .max(10);
    writeln!(
        out,
        "{:<w$}  {:>7}  {:>8}  {:<c$}  {:<7}  {:<40}  outcome",
        "stage", "attempt", "at", "capability", "result", "target"
    )?;
    for r in &rows {
        let e = r.entry;
        writeln!(
            out,
            "{:<w$}  {:>7}  {:>6}ms  {:<c$}  {:<7}  {:<40}  {}",
            r.stage,
            e.attempt,
            e.at_ms,
            e.capability,
            if e.allowed { "allowed" } else { "DENIED" },
            terminal_safe(&e.target),
            terminal_safe(&e.outcome)
        )?;
    }
    Ok(0)
}
