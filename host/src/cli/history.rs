//! Run history: `host runs`, `host runs show ID`, `host logs ID [STAGE]`.
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::run::approvals::ApprovalStore;
use crate::run::display::{
    first_line, format_duration, format_time, ref_name, short_sha, stage_line, status_word,
    terminal_safe,
};
use crate::run::record::StoredLine;
use crate::run::{RunFilter, RunRecord, RunStore, RunSummary, Status};
use crate::serve::queue::{Queue, QueuedJob};
use crate::store::StoreLocation;

#[derive(Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// One run: its trigger, stages, outputs, annotations and approvals.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// Only runs of this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Only runs of this branch.
    #[arg(long)]
    pub branch: Option<String>,
    /// Only runs with this status (queued, running, success, failure, cancelled).
    #[arg(long, value_parser = parse_status)]
    pub status: Option<Status>,
    /// How many runs to list.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// A run id (or a unique prefix of one).
    pub id: String,
    /// Print the whole run record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    /// A run id (or a unique prefix of one).
    pub id: String,
    /// Only this stage's log.
    pub stage: Option<String>,
    /// Keep printing new lines until the run ends.
    #[arg(long, short)]
    pub follow: bool,
}

fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(s).ok_or_else(|| {
        format!("unknown status `{s}` (queued, running, success, failure, skipped, cancelled)")
    })
}

pub async fn runs(args: RunsArgs, loc: &StoreLocation) -> Result<u8> {
    let loc = loc.clone();
    tokio::task::spawn_blocking(move || match args.command {
        Some(RunsCommand::Show(s)) => show(s, &loc),
        None => list(args.list, &loc),
    })
    .await?
}

fn list(args: ListArgs, loc: &StoreLocation) -> Result<u8> {
    let store = RunStore::open_at(loc)?;
    let filter = RunFilter {
        pipeline: args.pipeline,
        branch: args.branch,
        status: args.status,
    };
    // Runs the server accepted but has not started yet come first.
    let queued: Vec<QueuedJob> =
        if matches!(filter.status, None | Some(Status::Queued)) && filter.pipeline.is_none() {
            Queue::new(store.db())
                .waiting()?
                .into_iter()
                .filter(|j| filter.branch.is_none() || j.job.branch == filter.branch)
                .collect()
        } else {
            Vec::new()
        };
    let runs = if filter.status == Some(Status::Queued) {
        Vec::new()
    } else {
        store.summaries(&filter, args.limit)?
    };
    if args.json {
        let v = serde_json::json!({ "queued": queued, "runs": runs });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if queued.is_empty() && runs.is_empty() {
        eprintln!("no runs recorded in {}", loc.describe());
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<12}  {:>5}  {:<18}  {:<9}  {:<24}  {:<8}  {:>8}  STARTED",
        "ID", "#", "PIPELINE", "STATUS", "REF", "SHA", "DURATION"
    )?;
    for q in queued.iter().take(args.limit) {
        writeln!(
            out,
            "{:<12}  {:>5}  {:<18}  {:<9}  {:<24}  {:<8}  {:>8}  {}",
            q.run_id,
            "-",
            clip(&q.repository, 18),
            "queued",
            clip(&ref_name(q.job.branch.as_deref(), q.job.tag.as_deref()), 24),
            short_sha(&q.job.sha),
            "-",
            format_time(&q.enqueued_at)
        )?;
    }
    for r in &runs {
        writeln!(
            out,
            "{:<12}  {:>5}  {:<18}  {:<9}  {:<24}  {:<8}  {:>8}  {}",
            r.id,
            r.build_number,
            clip(&r.pipeline, 18),
            r.status.as_str(),
            clip(&ref_name(r.branch.as_deref(), r.tag.as_deref()), 24),
            short_sha(&r.commit_sha),
            duration(r),
            format_time(&r.started_at)
        )?;
    }
    Ok(0)
}

fn duration(r: &RunSummary) -> String {
    if r.status.is_final() {
        format_duration(r.duration_ms)
    } else {
        "-".into()
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The record of run `id` (or of the one run whose id starts with it).
pub fn find_run(store: &RunStore, id: &str) -> Result<RunRecord> {
    if let Some(r) = store.get(id)? {
        return Ok(r);
    }
    let matches: Vec<String> = store
        .db()
        .query(
            "SELECT id FROM runs
             WHERE substr(id, 1, length(CAST(?1 AS TEXT))) = ?1 ORDER BY id LIMIT 5",
            &crate::store::params![id],
        )?
        .iter()
        .map(|r| r.get_str(0))
        .collect::<Result<_>>()?;
    match matches.as_slice() {
        [one] => Ok(store.get(one)?.expect("listed run exists")),
        [] => {
            if Queue::new(store.db()).find(id)?.is_some() {
                bail!("run `{id}` is queued and has not started yet");
            }
            bail!("no run `{id}` is recorded (`host runs` lists them)")
        }
        many => bail!("`{id}` matches several runs: {}", many.join(", ")),
    }
}

fn show(args: ShowArgs, loc: &StoreLocation) -> Result<u8> {
    let store = RunStore::open_at(loc)?;
    let run = find_run(&store, &args.id)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
        return Ok(0);
    }
    let pending = if run.status.is_final() {
        Vec::new()
    } else {
        let approvals = ApprovalStore::open_at(loc)?;
        let rt = tokio::runtime::Handle::current();
        rt.block_on(approvals.pending())?
            .into_iter()
            .filter(|p| p.run_id == run.id)
            .collect()
    };
    let mut out = std::io::stdout().lock();
    write_run(&mut out, &run)?;
    write_stage_table(&mut out, &run)?;
    write_stage_details(&mut out, &run)?;
    for p in pending {
        writeln!(
            out,
            "\n{} waits for approval to deploy to `{}`: host approve {} {}",
            p.stage, p.environment, p.run_id, p.stage
        )?;
    }
    Ok(0)
}

/// The run's status, trigger, source and timing, a field a line.
fn write_run(out: &mut impl Write, run: &RunRecord) -> std::io::Result<()> {
    writeln!(
        out,
        "run {}  {} #{}",
        run.id, run.pipeline, run.build_number
    )?;
    writeln!(out, "status       {}", run.status)?;
    if let Some(reason) = &run.reason {
        writeln!(out, "reason       {}", terminal_safe(reason))?;
    }
    if !run.attempts.is_empty() {
        let list: Vec<String> = run.attempts.iter().map(|a| a.to_string()).collect();
        writeln!(out, "attempts     {}", terminal_safe(&list.join(", ")))?;
    }
    writeln!(
        out,
        "trigger      {} of {} @ {}",
        run.event,
        ref_name(run.branch.as_deref(), run.tag.as_deref()),
        if run.commit_sha.is_empty() {
            "no commit"
        } else {
            &run.commit_sha
        }
    )?;
    if let Some(t) = &run.trigger {
        if let Some(a) = &t.archive {
            writeln!(
                out,
                "source       {} (sha256 {}, {} files, {} bytes)",
                a.name, a.sha256, a.files, a.bytes
            )?;
        } else {
            writeln!(
                out,
                "repository   {} (delivery {})",
                t.repository, t.delivery
            )?;
        }
        if let Some(s) = &t.sender {
            writeln!(out, "by           {}", terminal_safe(s))?;
        }
        if let Some(m) = &t.message {
            writeln!(out, "commit       {}", terminal_safe(m))?;
        }
        if let Some(n) = t.pull_request {
            writeln!(out, "pull request #{n}")?;
        }
    }
    if let Some(env) = &run.environment {
        writeln!(out, "environment  {env}")?;
    }
    writeln!(out, "started      {}", format_time(&run.started_at))?;
    if run.status.is_final() {
        writeln!(out, "duration     {}", format_duration(run.duration_ms))?;
    }
    Ok(())
}

/// One row a stage: status, duration, attempts and the first line of what
/// it said.
fn write_stage_table(out: &mut impl Write, run: &RunRecord) -> std::io::Result<()> {
    let w = run
        .stages
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "\n{:<w$}  {:<9}  {:>8}  {:>8}  SUMMARY",
        "STAGE", "STATUS", "DURATION", "ATTEMPTS"
    )?;
    for s in &run.stages {
        writeln!(
            out,
            "{:<w$}  {:<9}  {:>8}  {:>8}  {}",
            s.name,
            status_word(s.status, s.warning),
            if s.status.is_final() && s.started_at.is_some() {
                format_duration(s.duration_ms)
            } else {
                "-".into()
            },
            s.attempts,
            stage_line(s)
        )?;
    }
    Ok(())
}

/// Each stage's outputs, annotations and approval, under its name (stages
/// with none are left out).
fn write_stage_details(out: &mut impl Write, run: &RunRecord) -> std::io::Result<()> {
    for s in &run.stages {
        if s.outputs.is_empty() && s.annotations.is_empty() && s.approval.is_none() {
            continue;
        }
        writeln!(out, "\n{}:", s.name)?;
        for (k, v) in &s.outputs {
            writeln!(out, "  output {} = {}", terminal_safe(k), first_line(v))?;
        }
        for a in &s.annotations {
            let at = match (&a.file, a.line) {
                (Some(f), Some(l)) => format!(" ({f}:{l})"),
                (Some(f), None) => format!(" ({f})"),
                _ => String::new(),
            };
            writeln!(
                out,
                "  {} {}: {}{}",
                a.level,
                terminal_safe(&a.title),
                terminal_safe(&a.message),
                terminal_safe(&at)
            )?;
        }
        if let Some(a) = &s.approval {
            writeln!(
                out,
                "  approval for `{}`: {:?} by {} at {}{}",
                a.environment,
                a.decision,
                a.by.as_deref().unwrap_or("nobody"),
                a.decided_at,
                a.comment
                    .as_deref()
                    .map(|c| format!(" — {c}"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

/// How often `--follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub async fn logs(args: LogsArgs, loc: &StoreLocation) -> Result<u8> {
    let loc = loc.clone();
    tokio::task::spawn_blocking(move || logs_blocking(args, &loc)).await?
}

fn logs_blocking(args: LogsArgs, loc: &StoreLocation) -> Result<u8> {
    let store = RunStore::open_at(loc)?;
    let run = find_run(&store, &args.id)?;
    let stage = args.stage.as_deref();
    if let Some(st) = stage {
        if run.stage(st).is_none() {
            bail!(
                "run {} has no stage `{st}`; its stages: {}",
                run.id,
                run.stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let width = run.stages.iter().map(|s| s.name.len()).max().unwrap_or(5);
    let mut out = std::io::stdout().lock();
    let mut after = 0i64;
    let mut printed_any = false;
    let mut last_look = Instant::now();
    let mut status = run.status;
    loop {
        let lines = store.logs(&run.id, stage, after, 1000)?;
        for l in &lines {
            print_line(&mut out, width, stage.is_none(), l)?;
            after = l.seq;
        }
        printed_any |= !lines.is_empty();
        out.flush()?;
        if lines.len() == 1000 {
            continue;
        }
        if status.is_final() || !args.follow {
            break;
        }
        std::thread::sleep(FOLLOW_POLL.saturating_sub(last_look.elapsed()));
        last_look = Instant::now();
        // Read the status before the next batch of lines, so the lines
        // written before the run ended are all printed.
        status = store.status(&run.id)?.unwrap_or(status);
    }
    // Runs recorded before live logs existed keep their log in the record.
    if !printed_any {
        for s in run
            .stages
            .iter()
            .filter(|s| stage.is_none_or(|n| n == s.name))
        {
            for line in &s.log {
                let l = StoredLine {
                    seq: 0,
                    stage: s.name.clone(),
                    line: line.clone(),
                };
                print_line(&mut out, width, stage.is_none(), &l)?;
            }
        }
    }
    Ok(0)
}

fn print_line(
    out: &mut impl Write,
    width: usize,
    with_stage: bool,
    l: &StoredLine,
) -> std::io::Result<()> {
    let stream = match l.line.stream.as_str() {
        "stdout" | "info" => String::new(),
        s => format!("[{s}] "),
    };
    if with_stage {
        writeln!(
            out,
            "{:>width$} │ {stream}{}",
            l.stage,
            terminal_safe(&l.line.text)
        )
    } else {
        writeln!(out, "{stream}{}", terminal_safe(&l.line.text))
    }
}
