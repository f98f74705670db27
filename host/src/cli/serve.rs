//! `host serve --config server.toml`: the CI server.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use crate::cli::exit;
use crate::serve::{config, ServerState};

#[derive(Args)]
pub struct ServeArgs {
    /// The server's configuration file (repositories, triggers, secret).
    #[arg(long, short, default_value = "server.toml")]
    pub config: PathBuf,
    /// Listen here instead of `[server] listen` (port 0: any free port; the
    /// address is printed).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

pub async fn serve(args: ServeArgs, state_dir: &Path) -> Result<u8> {
    let mut cfg = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::USAGE);
        }
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    let runtime = Arc::new(super::runtime(state_dir)?);
    // Opening the store may connect to PostgreSQL (a blocking client).
    let dir = state_dir.to_path_buf();
    let state = tokio::task::spawn_blocking(move || ServerState::new(cfg, &dir, runtime)).await??;
    let state = Arc::new(state);
    crate::serve::serve(state).await?;
    Ok(0)
}
