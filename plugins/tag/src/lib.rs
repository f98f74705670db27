//! `tag` stage: computes the image tags a build gets (see [`tags`] for the rules).
//!
//! `with` keys: `image` (required repository, e.g. `127.0.0.1:5000/demo-app`),
//! `latest` (true), `sha-length` (7; 0 disables the sha tag), `branch-tag`
//! (true), `build-number-tag` (true), `semver` (true).
//!
//! Outputs: `image` (the repository), `tags` (comma-separated), `refs`
//! (comma-separated `image:tag`) and `ref` (the first, most specific ref).
//! It calls no host capability yet.

use serde::Deserialize;
use stage_sdk::{ConfigKey, Context, PluginInfo, Report, Stage, StageError};

pub mod tags;

use tags::{Options, RunInfo};

/// The `with` table.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    pub image: String,
    #[serde(default = "yes")]
    pub latest: bool,
    #[serde(default = "seven")]
    pub sha_length: usize,
    #[serde(default = "yes")]
    pub branch_tag: bool,
    #[serde(default = "yes")]
    pub build_number_tag: bool,
    #[serde(default = "yes")]
    pub semver: bool,
}

fn yes() -> bool {
    true
}

fn seven() -> usize {
    7
}

impl With {
    fn options(&self) -> Options {
        Options {
            latest: self.latest,
            sha_length: self.sha_length,
            branch_tag: self.branch_tag,
            build_number_tag: self.build_number_tag,
            semver: self.semver,
        }
    }
}

/// Computes the report for a context (all of `run` but the export glue).
pub fn tag(ctx: &Context) -> Result<Report, StageError> {
    let with: With = ctx.config()?;
    tags::validate_image(&with.image)
        .map_err(|e| StageError::config(format!("with.image: {e}")))?;
    if with.sha_length > 40 {
        return Err(StageError::config(format!(
            "with.sha-length: {} is longer than a sha (0..=40)",
            with.sha_length
        )));
    }
    let run = ctx.run();
    let info = RunInfo {
        build_number: run.build_number,
        commit_sha: run.commit_sha.clone(),
        branch: run.branch.clone(),
        tag: run.tag.clone(),
        default_branch: run.default_branch.clone(),
    };
    let tags = tags::compute_tags(&with.options(), &info);
    if tags.is_empty() {
        return Ok(Report::failed(format!(
            "{}: no tags apply to this run (every tag kind is off or has no input)",
            with.image
        ))
        .output("image", with.image.as_str()));
    }
    let refs = tags::refs(&with.image, &tags);
    stage_sdk::log::info!(
        "{} tags for {}: {}",
        tags.len(),
        with.image,
        tags.join(", ")
    );
    Ok(
        Report::passed(format!("{}: {}", with.image, tags.join(", ")))
            .output("image", with.image.as_str())
            .output("tags", tags.join(","))
            .output("refs", refs.join(","))
            .output("ref", refs[0].as_str()),
    )
}

struct Tag;

impl Stage for Tag {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "tag",
            env!("CARGO_PKG_VERSION"),
            "Computes the image tags of a build: semver, short sha, build number, branch, latest",
        )
        .key(ConfigKey::required(
            "image",
            "Repository to tag, without a tag (e.g. 127.0.0.1:5000/demo-app)",
        ))
        .key(ConfigKey::optional(
            "latest",
            "Add `latest` on the default branch (never for prereleases)",
            "true",
        ))
        .key(ConfigKey::optional(
            "sha-length",
            "Length of the short-sha tag; 0 disables it",
            "7",
        ))
        .key(ConfigKey::optional(
            "branch-tag",
            "Add the sanitised branch name (or a non-semver git tag)",
            "true",
        ))
        .key(ConfigKey::optional(
            "build-number-tag",
            "Add `build-<number>`",
            "true",
        ))
        .key(ConfigKey::optional(
            "semver",
            "For a git tag vX.Y.Z add X.Y.Z, X.Y and X (prereleases: only the full version)",
            "true",
        ))
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        tag(&ctx)
    }
}

stage_sdk::export_stage!(Tag);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::ReportStatus;

    #[test]
    fn report_outputs() {
        let ctx = Context::for_test("tag", r#"{"image":"127.0.0.1:5000/demo-app"}"#);
        let r = tag(&ctx).unwrap();
        assert_eq!(r.status, ReportStatus::Passed);
        assert_eq!(r.get_output("image"), Some("127.0.0.1:5000/demo-app"));
        assert_eq!(r.get_output("tags"), Some("0123456,build-1,main,latest"));
        assert_eq!(
            r.get_output("refs"),
            Some(
                "127.0.0.1:5000/demo-app:0123456,127.0.0.1:5000/demo-app:build-1,\
                 127.0.0.1:5000/demo-app:main,127.0.0.1:5000/demo-app:latest"
            )
        );
        assert_eq!(r.get_output("ref"), Some("127.0.0.1:5000/demo-app:0123456"));
    }

    fn config_err(json: &str) -> String {
        match tag(&Context::for_test("tag", json)) {
            Err(StageError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(config_err("{}"), "with.image: required key is missing");
        assert!(config_err(r#"{"image":"a","latest":"yes"}"#).starts_with("with.latest:"));
        assert!(config_err(r#"{"image":"a","sha-length":41}"#).starts_with("with.sha-length:"));
        assert!(config_err(r#"{"image":"a:1"}"#).starts_with("with.image:"));
        assert!(config_err(r#"{"image":"a","lastest":true}"#).starts_with("with.lastest:"));
    }

    #[test]
    fn nothing_to_tag_fails_the_stage() {
        let ctx = Context::for_test(
            "tag",
            r#"{"image":"a","latest":false,"sha-length":0,"branch-tag":false,"build-number-tag":false}"#,
        );
        assert_eq!(tag(&ctx).unwrap().status, ReportStatus::Failed);
    }
}
