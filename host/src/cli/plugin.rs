//! `host plugin …`: look at plugin components.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::runtime::WORLD;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Show a plugin's world, the imports it needs, its exports and describe().
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// The component file (.wasm).
    pub file: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn plugin(cmd: PluginCommand, state_dir: &Path) -> Result<u8> {
    match cmd {
        PluginCommand::Inspect(a) => inspect(a, state_dir).await,
    }
}

async fn inspect(args: InspectArgs, state_dir: &Path) -> Result<u8> {
    let runtime = super::runtime(state_dir)?;
    let plugin = runtime.load(&args.file)?;
    let (imports, exports) = runtime.interface(&plugin);
    let info = runtime
        .describe(&plugin)
        .await
        .with_context(|| format!("{}", args.file.display()))?;
    if args.json {
        let v = json!({
            "file": args.file.display().to_string(),
            "sha256": plugin.sha256,
            "world": WORLD,
            "imports": imports,
            "exports": exports,
            "describe": {
                "name": info.name,
                "version": info.version,
                "description": info.description,
                "capabilities": info.capabilities,
                "config": info.config.iter().map(|k| json!({
                    "name": k.name, "description": k.description,
                    "required": k.required, "default": k.default_value,
                })).collect::<Vec<_>>(),
            }
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{} ({} {})", args.file.display(), info.name, info.version);
    println!("  sha256:  {}", plugin.sha256);
    println!("  world:   {WORLD}");
    println!("  {}", info.description);
    println!("imports:");
    for i in &imports {
        println!("  {i}");
    }
    println!("exports:");
    for e in &exports {
        println!("  {e}");
    }
    println!("capabilities it needs: {}", info.capabilities.join(", "));
    println!("config (`with` keys):");
    for k in &info.config {
        println!(
            "  {:<18} {}{}{}",
            k.name,
            if k.required { "(required) " } else { "" },
            k.description,
            k.default_value
                .as_deref()
                .map(|d| format!(" [default: {d}]"))
                .unwrap_or_default()
        );
    }
    Ok(0)
}
