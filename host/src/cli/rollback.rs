//! `host rollback ENVIRONMENT [--to VERSION]`: redeploy an image that an
//! earlier run deployed to that environment, from the run history.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::pipeline;
use crate::run::{RunRecord, RunStore, Status};

#[derive(Args)]
pub struct RollbackArgs {
    /// The environment to roll back (a key of `[environments]`).
    pub environment: String,
    /// Which deployment to go back to: part of the image reference (a tag,
    /// a digest prefix), a run id, or `#N` for a build number. Default: the
    /// last image deployed before the current one.
    #[arg(long)]
    pub to: Option<String>,
    /// The pipeline file whose deploy stage is re-run.
    #[arg(long, short, default_value = "pipeline.toml")]
    pub file: PathBuf,
    /// Directory mounted at /workspace (default: the current directory).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Set a variable stages may be granted by name (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = super::run::parse_kv)]
    pub env: Vec<(String, String)>,
    #[command(flatten)]
    pub output: super::run::RunFlags,
}

/// One deployment found in the history.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub run_id: String,
    pub build_number: u64,
    pub image: String,
}

/// Successful deployments of `stage`, newest first.
pub fn deployments(runs: &[RunRecord], stage: &str) -> Vec<Deployment> {
    runs.iter()
        .filter_map(|r| {
            let s = r.stage(stage)?;
            let image = s.outputs.get("image")?;
            (s.status == Status::Success).then(|| Deployment {
                run_id: r.id.clone(),
                build_number: r.build_number,
                image: image.clone(),
            })
        })
        .collect()
}

/// The deployment to go back to.
pub fn pick<'a>(history: &'a [Deployment], to: Option<&str>) -> Result<&'a Deployment> {
    let Some(current) = history.first() else {
        bail!("no successful deployment is recorded");
    };
    match to {
        None => history
            .iter()
            .find(|d| d.image != current.image)
            .with_context(|| {
                format!(
                    "nothing to roll back to: every recorded deployment is {}",
                    current.image
                )
            }),
        Some(v) => history
            .iter()
            .find(|d| {
                d.run_id == v
                    || v.strip_prefix('#').and_then(|n| n.parse().ok()) == Some(d.build_number)
                    || d.image.contains(v)
            })
            .with_context(|| {
                format!(
                    "no recorded deployment matches `{v}`; recorded: {}",
                    history
                        .iter()
                        .map(|d| format!("#{} {}", d.build_number, d.image))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
    }
}

pub async fn rollback(args: RollbackArgs, state_dir: &Path) -> Result<u8> {
    let pipeline = match super::run::load_resolved(
        &args.file,
        state_dir,
        super::run::lock_mode(args.output.locked),
    )
    .await
    {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("{e}");
            return Ok(super::exit::USAGE);
        }
    };
    if pipeline.environment(&args.environment).is_none() {
        bail!(
            "environment `{}` is not declared in [environments] of {}",
            args.environment,
            args.file.display()
        );
    }
    let stages: Vec<&pipeline::Stage> = pipeline
        .stages
        .iter()
        .filter(|s| s.environment.as_deref() == Some(args.environment.as_str()))
        .collect();
    let store = RunStore::open(state_dir)?;
    let runs: Vec<RunRecord> = store
        .list(10_000)?
        .into_iter()
        .filter(|r| r.pipeline == pipeline.name)
        .collect();
    // The environment's deploy stage: the one whose runs recorded an image.
    let Some((stage, history)) = stages.iter().find_map(|s| {
        let h = deployments(&runs, &s.name);
        (!h.is_empty()).then_some((*s, h))
    }) else {
        bail!(
            "no recorded deployment to `{}` for pipeline `{}` (stages deploying there: {})",
            args.environment,
            pipeline.name,
            stages
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let target = pick(&history, args.to.as_deref())?.clone();
    eprintln!(
        "rolling `{}` back from {} to {} (deployed by run {} #{})",
        args.environment, history[0].image, target.image, target.run_id, target.build_number
    );

    let workspace = super::run::resolve_workspace(args.workspace.as_deref())?;
    let mut opts = super::run::new_options(&pipeline, workspace, &store, None)?;
    opts.event = "rollback".into();
    opts.environment = Some(args.environment.clone());
    opts.only = Some(vec![stage.name.clone()]);
    opts.overrides
        .insert(stage.name.clone(), json!({ "image": target.image }));
    let by = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    opts.approved_by
        .insert(stage.name.clone(), format!("{by} (host rollback)"));
    opts.env.extend(args.env);
    drop(store);
    super::run::execute(
        pipeline,
        opts,
        state_dir,
        args.output.quiet,
        args.output.json,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(run: &str, n: u64, image: &str) -> Deployment {
        Deployment {
            run_id: run.into(),
            build_number: n,
            image: image.into(),
        }
    }

    #[test]
    fn picks_the_previous_distinct_image_or_the_named_one() {
        let h = vec![
            d("c", 3, "app:3"),
            d("c2", 3, "app:3"),
            d("b", 2, "app:2"),
            d("a", 1, "app:1"),
        ];
        assert_eq!(pick(&h, None).unwrap().image, "app:2");
        assert_eq!(pick(&h, Some("app:1")).unwrap().run_id, "a");
        assert_eq!(pick(&h, Some("#2")).unwrap().image, "app:2");
        assert_eq!(pick(&h, Some("b")).unwrap().image, "app:2");
        assert!(pick(&h, Some("app:9"))
            .unwrap_err()
            .to_string()
            .contains("recorded: #3 app:3"));
        assert!(pick(&[d("x", 1, "app:1")], None).is_err());
        assert!(pick(&[], None).is_err());
    }
}
