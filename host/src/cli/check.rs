//! `host check`: validate a pipeline and its plugins; run nothing.
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::cli::exit;
use crate::run::preflight;

#[derive(Args)]
pub struct CheckArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Fail when a remote plugin is not pinned in the lock file yet.
    #[arg(long)]
    pub locked: bool,
}

#[derive(Serialize)]
struct CheckReport {
    file: String,
    ok: bool,
    pipeline: Option<String>,
    stages: Vec<String>,
    errors: Vec<JsonDiagnostic>,
}

#[derive(Serialize)]
struct JsonDiagnostic {
    file: String,
    line: usize,
    column: usize,
    message: String,
}

pub async fn check(args: CheckArgs, state_dir: &Path) -> Result<u8> {
    let loaded =
        super::run::load_resolved(&args.file, state_dir, super::run::lock_mode(args.locked)).await;
    let (pipeline, diags) = match loaded {
        Err(e) => (None, e.diagnostics),
        Ok(p) => {
            let runtime = super::runtime(state_dir)?;
            let diags = preflight::load_plugins(&p, &runtime)
                .await
                .err()
                .unwrap_or_default();
            (Some(p), diags)
        }
    };
    let ok = diags.is_empty();
    if args.json {
        let report = CheckReport {
            file: args.file.display().to_string(),
            ok,
            pipeline: pipeline.as_ref().map(|p| p.name.clone()),
            stages: pipeline
                .as_ref()
                .map(|p| p.topo_order().iter().map(|s| s.name.clone()).collect())
                .unwrap_or_default(),
            errors: diags
                .iter()
                .map(|d| JsonDiagnostic {
                    file: d.location.file.display().to_string(),
                    line: d.location.line,
                    column: d.location.col,
                    message: d.message.clone(),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if ok {
        let p = pipeline.expect("ok implies parsed");
        println!(
            "{}: ok — pipeline `{}`, {} stage(s): {}",
            args.file.display(),
            p.name,
            p.stages.len(),
            p.topo_order()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        );
    } else {
        for d in &diags {
            eprintln!("{d}");
        }
        eprintln!("{}: {} error(s)", args.file.display(), diags.len());
    }
    Ok(if ok { 0 } else { exit::USAGE })
}
