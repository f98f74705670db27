//! `host agent --config agent.toml`: one machine of a cluster.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::cli::exit;
use crate::cluster::{agent, config};

/// Run the runs a `host serve` with `[cluster]` queues on NATS JetStream.
///
/// One machine: start NATS (`nats-server -js`) and PostgreSQL, give the
/// server a `[cluster]` table (`nats = "nats://127.0.0.1:4222"`,
/// `database = { env = "PIPELINE_DATABASE_URL" }`), run `host serve`, then
/// `host agent --config a1.toml` and `host agent --config a2.toml` (each
/// with its own `state-dir`). Several machines: the same, with the NATS URL
/// every machine can reach; agents never need the database.
///
/// agent.toml:
///
///   [agent]
///   nats = "nats://127.0.0.1:4222"
///   nats-credentials = { env = "NATS_TOKEN" }   # optional: token or user:password
///   name = "builder-1"                          # default: hostname-pid
///   labels = ["docker"]                         # what this machine offers
///   concurrency = 2                             # runs at once
///   secrets-dir = "secrets"                     # `{ file = … }` secrets of runs
///   state-dir = "state"                         # compiled plugins, local records
///   ack-wait = "30s"                            # a silent agent's runs move after this
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct AgentArgs {
    /// The agent's configuration file.
    #[arg(long, short, default_value = "agent.toml")]
    pub config: PathBuf,
}

pub async fn agent(args: AgentArgs) -> Result<u8> {
    let cfg = match config::load_agent(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::USAGE);
        }
    };
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let runtime = Arc::new(super::runtime(&cfg.state_dir)?);
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    agent::run(cfg, runtime, shutdown).await?;
    Ok(0)
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("host agent: stopping (runs in progress go back to the queue)");
    shutdown.cancel();
}
