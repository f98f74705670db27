//! `gitops-deploy` stage: the GitOps deploy target (ArgoCD / Flux style).
//! Updates the image reference in Kubernetes manifests in a git repository
//! the pipeline declares (`[git.NAME]`) and grants the stage, keeping every
//! other byte of the files, commits with a message naming the run, and
//! pushes (again from a fresh clone when the remote moved on).
//! See `README.md` next to this crate for the keys, outputs and rules.

pub mod config;
pub mod edit;
pub mod gitops;
pub mod reference;

use stage_sdk::{ConfigKey, Context, PluginInfo, Report, Stage, StageError};

use config::{DEFAULT_MESSAGE, DEFAULT_RETRIES};
use stage_sdk::git::{Git, HostGit};

/// Everything but the export glue.
pub fn gitops_stage(ctx: &Context, git: &mut impl Git) -> Result<Report, StageError> {
    let cfg = config::load(ctx)?;
    stage_sdk::log::info!(
        "deploying {} to {} (references to {} in {})",
        cfg.image,
        cfg.repo_label(),
        cfg.repository,
        cfg.paths.join(", ")
    );
    gitops::deploy(&cfg, git)
}

struct GitopsDeploy;

/// The `with` keys `describe()` declares (tests build contexts with them).
#[cfg(test)]
pub(crate) fn keys() -> Vec<stage_sdk::ConfigKey> {
    GitopsDeploy::describe().config
}

impl Stage for GitopsDeploy {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "gitops-deploy",
            env!("CARGO_PKG_VERSION"),
            "GitOps deploy: updates the image reference in Kubernetes manifests (YAML, \
             Kustomize images) in a git repository, formatting and comments kept, commits \
             and pushes",
        )
        .key(ConfigKey::required(
            "repo",
            "The `[git.NAME]` repository granted to the stage (grants = { git = [NAME] })",
        ))
        .key(ConfigKey::optional_no_default(
            "branch",
            "Branch to clone and push; default: the repository's `branch` in the pipeline file",
        ))
        .key(ConfigKey::required(
            "paths",
            "Globs of the manifests to edit (e.g. [\"apps/demo/dev/*.yaml\"]); each must match a file",
        ))
        .key(ConfigKey::optional_no_default(
            "image",
            "Image reference to deploy; default: the `ref` (image@digest) or `image` output of a stage in `needs`",
        ))
        .key(ConfigKey::optional_no_default(
            "match",
            "Repository whose references are replaced; default: the repository of `image` (without :tag / @digest)",
        ))
        .key(ConfigKey::optional(
            "retries",
            "Times to clone again, re-apply and push when the remote moved on (NON_FAST_FORWARD)",
            DEFAULT_RETRIES.to_string(),
        ))
        .key(ConfigKey::optional(
            "message",
            "Commit message; placeholders {image} {environment} {pipeline} {build} {run} {stage}",
            serde_json::Value::String(DEFAULT_MESSAGE.into()).to_string(),
        ))
        .capability("git")
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        gitops_stage(&ctx, &mut HostGit)
    }
}

stage_sdk::export_stage!(GitopsDeploy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_lists_keys_and_git() {
        let info = GitopsDeploy::describe();
        assert_eq!(info.name, "gitops-deploy");
        assert_eq!(info.capabilities, vec!["git".to_string()]);
        let keys: Vec<&str> = info.config.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            keys,
            ["repo", "branch", "paths", "image", "match", "retries", "message"]
        );
        let required: Vec<&str> = info
            .config
            .iter()
            .filter(|k| k.required)
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(required, ["repo", "paths"]);
        for k in &info.config {
            if let Some(d) = &k.default_value {
                serde_json::from_str::<serde_json::Value>(d).expect("defaults are JSON");
            }
        }
    }
}
