//! `host cancel RUN`: stop a run of `host serve`, from any machine that
//! reaches its run store (`--database` on a cluster).
use anyhow::Result;
use clap::Args;

use crate::run::RunStore;
use crate::serve::cancel;
use crate::store::StoreLocation;

#[derive(Args)]
pub struct CancelArgs {
    /// The run id.
    pub run: String,
    /// Who cancels (default: $USER), recorded as the reason.
    #[arg(long)]
    pub by: Option<String>,
}

pub async fn cancel(args: CancelArgs, loc: &StoreLocation) -> Result<u8> {
    let by = args
        .by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let (loc, run) = (loc.clone(), args.run.clone());
    tokio::task::spawn_blocking(move || {
        let store = RunStore::open_at(&loc)?;
        cancel::request(&store, &run, &format!("cancelled by {by}"))
    })
    .await??;
    println!(
        "cancel requested: the server stops run {} within a second",
        args.run
    );
    Ok(0)
}
