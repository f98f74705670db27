//! `host lock`: resolve a pipeline's remote plugins and write its lock file.
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::cli::exit;
use crate::distribution::{self, LockMode};
use crate::pipeline;

#[derive(Args)]
pub struct LockArgs {
    /// The pipeline file; the lock file is written beside it (`x.toml` → `x.lock`).
    pub file: PathBuf,
    /// Re-resolve every tag and URL, even those already pinned.
    #[arg(long)]
    pub update: bool,
}

pub async fn lock(args: LockArgs, state_dir: &Path) -> Result<u8> {
    let mut p = match pipeline::load(&args.file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::USAGE);
        }
    };
    let mode = if args.update {
        LockMode::Update
    } else {
        LockMode::Normal
    };
    match distribution::resolve(&mut p, state_dir, mode).await {
        Err(diags) => {
            eprintln!("{}", pipeline::PipelineError::new(diags));
            Ok(exit::USAGE)
        }
        Ok(resolved) => {
            for r in resolved {
                println!(
                    "{:<16} sha256:{}  {}{}{}",
                    r.name,
                    r.sha256,
                    r.source,
                    if r.fetched { " (fetched)" } else { "" },
                    r.signed_by
                        .map(|k| format!(" signed by {k}"))
                        .unwrap_or_default()
                );
            }
            println!("{}", distribution::lock::path_for(&p.file).display());
            Ok(0)
        }
    }
}
