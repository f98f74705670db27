//! The `host` command line.
mod agent;
mod approve;
mod artifacts;
mod audit;
mod cancel;
mod check;
pub mod history;
mod lock;
mod plugin;
mod plugin_new;
mod rollback;
mod run;
mod serve;
mod users;
mod vendor_sdk;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::store::StoreLocation;

#[derive(Parser)]
#[command(
    name = "host",
    version,
    about = "Run CI/CD pipelines whose stages are sandboxed WebAssembly components",
    propagate_version = true
)]
struct Cli {
    /// Where run records and the compiled-plugin cache live.
    /// Default: $XDG_STATE_HOME/pipeline-host (~/.local/state/pipeline-host).
    #[arg(long, global = true, env = "HOST_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Read and write run records and approvals in this PostgreSQL
    /// database (postgres://user@host:port/db) instead of
    /// <state-dir>/runs.db: `host runs`, `logs`, `audit`, `approve`,
    /// `reject` and `approvals`.
    #[arg(
        long,
        global = true,
        env = "HOST_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database: Option<String>,

    /// More host logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline.
    Run(run::RunArgs),
    /// Validate a pipeline file and its plugins without running any stage.
    Check(check::CheckArgs),
    /// Pin the pipeline's remote plugins in its lock file.
    Lock(lock::LockArgs),
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Approve a stage waiting to deploy to its environment.
    Approve(approve::DecideArgs),
    /// Reject a stage waiting to deploy to its environment (it fails).
    Reject(approve::DecideArgs),
    /// List the stages waiting for approval.
    Approvals(approve::PendingArgs),
    /// Cancel a run of `host serve` (queued or running, on any agent).
    Cancel(cancel::CancelArgs),
    /// Redeploy an image an earlier run deployed to an environment.
    Rollback(rollback::RollbackArgs),
    /// One machine of a cluster: run the runs a `host serve` with
    /// `[cluster]` queues on NATS JetStream.
    Agent(agent::AgentArgs),
    /// Run the CI server: GitHub webhooks, a durable queue, run history
    /// (JSON API, web pages) and Prometheus metrics.
    Serve(serve::ServeArgs),
    /// List recorded runs (`host runs show ID` for one).
    Runs(history::RunsArgs),
    /// Print a run's log (`--follow` to keep printing until it ends).
    Logs(history::LogsArgs),
    /// Every capability call a run's stages made, allowed or denied.
    Audit(audit::AuditArgs),
    /// A run's artifacts; `--out DIR` gets them from the encrypted store.
    Artifacts(artifacts::ArtifactsArgs),
    /// Hash a password read from stdin for a `[[user]]`'s `password`.
    HashPassword(users::HashPasswordArgs),
    /// Make an API token and the `tokens` line of its `[[user]]`.
    NewToken(users::NewTokenArgs),
}

/// Exit codes: 0 success, 1 pipeline failed, 2 bad input, 130 cancelled.
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CANCELLED: u8 = 130;
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let store = StoreLocation::new(&state_dir, cli.database.as_deref());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    // On a worker thread, not the thread that blocks on it: a run's
    // stages then share threads with the tasks their I/O wakes.
    let command = rt.spawn(async move {
        match cli.command {
            Command::Run(a) => run::run(a, &state_dir).await,
            Command::Check(a) => check::check(a, &state_dir).await,
            Command::Lock(a) => lock::lock(a, state_dir.as_path()).await,
            Command::Plugin(c) => plugin::plugin(c, &state_dir).await,
            Command::Approve(a) => {
                approve::decide(a, crate::run::approvals::Decision::Approved, &store).await
            }
            Command::Reject(a) => {
                approve::decide(a, crate::run::approvals::Decision::Rejected, &store).await
            }
            Command::Approvals(a) => approve::pending(a, &store).await,
            Command::Rollback(a) => rollback::rollback(a, &state_dir).await,
            Command::Serve(a) => serve::serve(a, &state_dir).await,
            Command::Agent(a) => agent::agent(a).await,
            Command::Cancel(a) => cancel::cancel(a, &store).await,
            Command::Runs(a) => history::runs(a, &store).await,
            Command::Logs(a) => history::logs(a, &store).await,
            Command::Audit(a) => audit::audit(a, &store).await,
            Command::Artifacts(a) => artifacts::artifacts(a, &state_dir).await,
            Command::HashPassword(a) => users::hash_password(a),
            Command::NewToken(a) => users::new_token(a),
        }
    });
    let result = rt
        .block_on(command)
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the command stopped: {e}")));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::USAGE)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "host=debug,info",
        _ => "host=trace,debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("pipeline-host");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/pipeline-host"),
        None => PathBuf::from(".pipeline-host"),
    }
}

/// The runtime with its compiled-component cache under the state dir.
fn runtime(state_dir: &std::path::Path) -> anyhow::Result<crate::runtime::Runtime> {
    crate::runtime::Runtime::new(state_dir.join("cache").join("components"))
}
