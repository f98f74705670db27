//! `host artifacts RUN [STAGE] [--out DIR]`: the artifacts a run's stages
//! recorded, and (with `--out`) their copies from the encrypted store,
//! decrypted and checked against the recorded digests.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::history::find_run;
use crate::run::artifact_store::{output_path, ArtifactStore};
use crate::run::RunStore;

#[derive(Args)]
pub struct ArtifactsArgs {
    /// A run id (or a unique prefix of one).
    pub id: String,
    /// Only this stage's artifacts.
    pub stage: Option<String>,
    /// Write them to DIR/STAGE/PATH, decrypted and digest-checked.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    stage: String,
    path: String,
    digest: String,
    stored: bool,
}

pub async fn artifacts(args: ArtifactsArgs, state_dir: &Path) -> Result<u8> {
    let state_dir = state_dir.to_path_buf();
    tokio::task::spawn_blocking(move || show(args, &state_dir)).await?
}

fn show(args: ArtifactsArgs, state_dir: &Path) -> Result<u8> {
    let runs = RunStore::open(state_dir)?;
    let run = find_run(&runs, &args.id)?;
    if let Some(s) = &args.stage {
        if run.stage(s).is_none() {
            bail!("run {} has no stage `{s}`", run.id);
        }
    }
    let store = ArtifactStore::open(state_dir)?;
    let rows: Vec<Row> = run
        .stages
        .iter()
        .filter(|s| args.stage.as_ref().is_none_or(|n| *n == s.name))
        .flat_map(|s| {
            s.artifacts.iter().map(|(path, digest)| Row {
                stage: s.name.clone(),
                path: path.clone(),
                digest: digest.clone(),
                stored: store.holds(&run.id, &s.name, path),
            })
        })
        .collect();
    if let Some(out) = &args.out {
        for r in &rows {
            let plain = store.fetch(&run.id, &r.stage, &r.path, &r.digest)?;
            let to = output_path(out, &r.stage, &r.path)?;
            std::fs::create_dir_all(to.parent().expect("has a parent"))?;
            std::fs::write(&to, plain)?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let mut o = std::io::stdout().lock();
    writeln!(o, "run {}: {} artifacts", run.id, rows.len())?;
    for r in &rows {
        let kept = if r.stored {
            "stored encrypted"
        } else {
            "not stored"
        };
        writeln!(o, "{:<16}  {:<40}  {}  {kept}", r.stage, r.path, r.digest)?;
    }
    if let Some(out) = &args.out {
        writeln!(
            o,
            "written under {} (checked against the digests)",
            out.display()
        )?;
    }
    Ok(0)
}
