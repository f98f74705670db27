//! `host approve` / `host reject` / `host approvals`: decide on a stage that
//! waits for a person before deploying to its environment.
use anyhow::Result;
use clap::Args;

use crate::run::approvals::{ApprovalStore, Decision};
use crate::store::StoreLocation;

#[derive(Args)]
pub struct DecideArgs {
    /// The run id (printed when the run started, and by `host approvals`).
    pub run: String,
    /// The stage waiting for approval.
    pub stage: String,
    /// Who decides (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
    /// Why, recorded in the run record.
    #[arg(long, short)]
    pub comment: Option<String>,
}

pub async fn decide(args: DecideArgs, decision: Decision, loc: &StoreLocation) -> Result<u8> {
    let store = open(loc).await?;
    let by = args
        .by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    store
        .decide(
            &args.run,
            &args.stage,
            decision,
            &by,
            args.comment.as_deref(),
        )
        .await?;
    let word = match decision {
        Decision::Approved => "approved",
        _ => "rejected",
    };
    println!(
        "{word} stage `{}` of run {} (by {by})",
        args.stage, args.run
    );
    Ok(0)
}

#[derive(Args)]
pub struct PendingArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn pending(args: PendingArgs, loc: &StoreLocation) -> Result<u8> {
    let list = open(loc).await?.pending().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if list.is_empty() {
        println!("no approval is pending");
    } else {
        for p in list {
            println!(
                "{}  {}  → {}  (asked {})",
                p.run_id, p.stage, p.environment, p.requested_at
            );
        }
    }
    Ok(0)
}

/// The approvals at `loc`, opened off the async threads.
async fn open(loc: &StoreLocation) -> Result<ApprovalStore> {
    let loc = loc.clone();
    tokio::task::spawn_blocking(move || ApprovalStore::open_at(&loc)).await?
}
