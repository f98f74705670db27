//! `tag` stage: computes the image tags a build gets (see [`tags`] for the
//! rules) and applies them with the host's `docker::tag`.
//!
//! `with` keys: `image` (required repository, e.g. `127.0.0.1:5000/demo-app`),
//! `latest` (true), `sha-length` (7; 0 disables the sha tag), `branch-tag`
//! (true), `build-number-tag` (true), `semver` (true), `source` (the image
//! to tag; see below).
//!
//! Source: `with.source` when given; otherwise the `image` output of the
//! first stage in `needs` that succeeded and has one (e.g. `build`, whose
//! `image` is the reference it built). When there is a source, every
//! computed ref is created with `docker::tag(source, ref)`; the first
//! failure fails the stage. Without a source the tags are only computed
//! (as before) and a log line says nothing was applied.
//!
//! Outputs: `image` (the repository), `tags` (comma-separated), `refs`
//! (comma-separated `image:tag`), `ref` (the first, most specific ref),
//! `applied` (`"true"` when every ref was created, else `"false"`) and,
//! when known, `source`.

use serde::Deserialize;
use stage_sdk::{
    Annotation, ConfigKey, Context, PluginInfo, Report, Stage, StageError, StageStatus,
};

pub mod tags;

use stage_sdk::docker::{Docker, HostDocker};
use stage_sdk::ReportStatus;
use tags::{Options, RunInfo};

/// The `with` table. Optional keys get their defaults from `describe()`
/// (the SDK fills them in), so none are written here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    pub image: String,
    pub latest: bool,
    pub sha_length: usize,
    pub branch_tag: bool,
    pub build_number_tag: bool,
    pub semver: bool,
    #[serde(default)]
    pub source: Option<String>,
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

/// The image to tag and where it came from: `with.source`, else the
/// `image` output of the first successful stage in `needs` that has one.
pub fn find_source(with: &With, ctx: &Context) -> Option<(String, String)> {
    if let Some(s) = &with.source {
        return Some((s.trim().to_string(), "with.source".into()));
    }
    ctx.needs()
        .iter()
        .filter(|u| u.status == StageStatus::Success)
        .find_map(|u| {
            u.outputs
                .iter()
                .find(|(k, v)| k == "image" && !v.trim().is_empty())
                .map(|(_, v)| {
                    (
                        v.trim().to_string(),
                        format!("output `image` of stage {:?}", u.stage),
                    )
                })
        })
}

/// Computes the report for a context, computing the tags only (no source is
/// applied even when one is known). See [`tag_with`].
pub fn tag(ctx: &Context) -> Result<Report, StageError> {
    compute(ctx).map(|(r, _, _)| r)
}

/// All of `run` but the export glue: computes the tags and, when a source
/// is known, applies them through `tagger`.
pub fn tag_with(ctx: &Context, tagger: &mut impl Docker) -> Result<Report, StageError> {
    let (report, refs, with) = compute(ctx)?;
    if report.status == ReportStatus::Failed {
        return Ok(report.output("applied", "false"));
    }
    let Some((source, origin)) = find_source(&with, ctx) else {
        stage_sdk::log::info!(
            "no source image (no with.source, no upstream `image` output): \
             tags computed, nothing applied"
        );
        return Ok(report.output("applied", "false"));
    };
    stage_sdk::log::info!("tagging {source} (from {origin})");
    for (i, r) in refs.iter().enumerate() {
        if let Err(e) = tagger.tag(&source, r) {
            let msg = format!("tag {source} as {r}: {}", e.message());
            stage_sdk::log::error(&msg);
            let mut failed = report
                .with_status(ReportStatus::Failed)
                .output("applied", "false")
                .output("source", source.as_str())
                .annotate(Annotation::error("docker tag", msg.clone()));
            failed.summary = if i == 0 {
                msg
            } else {
                format!("{msg} ({i} of {} refs applied)", refs.len())
            };
            return Ok(failed);
        }
        stage_sdk::log::debug!("tagged {r}");
    }
    let mut done = report
        .output("applied", "true")
        .output("source", source.as_str());
    done.summary = format!("tagged {source}: {}", refs.join(", "));
    Ok(done)
}

fn compute(ctx: &Context) -> Result<(Report, Vec<String>, With), StageError> {
    let with: With = ctx.config_with_defaults()?;
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
    if let Some(src) = &with.source {
        if src.trim().is_empty() {
            return Err(StageError::config("with.source: must not be empty"));
        }
    }
    if tags.is_empty() {
        let report = Report::failed(format!(
            "{}: no tags apply to this run (every tag kind is off or has no input)",
            with.image
        ))
        .output("image", with.image.as_str());
        return Ok((report, Vec::new(), with));
    }
    let refs = tags::refs(&with.image, &tags);
    stage_sdk::log::info!(
        "{} tags for {}: {}",
        tags.len(),
        with.image,
        tags.join(", ")
    );
    let report = Report::passed(format!("{}: {}", with.image, tags.join(", ")))
        .output("image", with.image.as_str())
        .output("tags", tags.join(","))
        .output("refs", refs.join(","))
        .output("ref", refs[0].as_str());
    Ok((report, refs, with))
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
        .key(ConfigKey::optional_no_default(
            "source",
            "Image to tag; default: the `image` output of the first successful stage in \
             `needs`. Without one, tags are only computed",
        ))
        .capability("docker.tag?")
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        tag_with(&ctx, &mut HostDocker)
    }
}

stage_sdk::export_stage!(Tag);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::testing::{DockerCall, FakeDocker};
    use stage_sdk::{CapError, Denial, Upstream};

    #[test]
    fn report_outputs() {
        let ctx = keyed(Context::for_test(
            "tag",
            r#"{"image":"127.0.0.1:5000/demo-app"}"#,
        ));
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
        match tag(&keyed(Context::for_test("tag", json))) {
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
        let ctx = keyed(Context::for_test(
            "tag",
            r#"{"image":"a","latest":false,"sha-length":0,"branch-tag":false,"build-number-tag":false}"#,
        ));
        assert_eq!(tag(&ctx).unwrap().status, ReportStatus::Failed);
    }

    /// `ctx` with the keys `describe()` declares, as the export glue does.
    fn keyed(ctx: Context) -> Context {
        ctx.with_keys(Tag::describe().config)
    }

    /// The (source, target) of each `docker.tag` call.
    fn tagged(fake: &FakeDocker) -> Vec<(String, String)> {
        fake.calls
            .iter()
            .map(|c| match c {
                DockerCall::Tag { source, target } => (source.clone(), target.clone()),
                other => panic!("not a tag call: {other:?}"),
            })
            .collect()
    }

    fn ctx_with_needs(json: &str, needs: Vec<(&str, StageStatus, &str)>) -> Context {
        let mut raw = Context::for_test("tag", json).into_raw();
        raw.needs = needs
            .into_iter()
            .map(|(stage, status, image)| Upstream {
                stage: stage.into(),
                status,
                outputs: if image.is_empty() {
                    vec![("other".into(), "x".into())]
                } else {
                    vec![("image".into(), image.into())]
                },
            })
            .collect();
        keyed(Context::new(raw))
    }

    const IMAGE: &str = r#"{"image":"127.0.0.1:5000/demo-app","branch-tag":false,"latest":false}"#;

    #[test]
    fn applies_tags_from_upstream_image() {
        let ctx = ctx_with_needs(
            IMAGE,
            vec![
                ("lint", StageStatus::Success, ""),
                ("old", StageStatus::Skipped, "local/old:1"),
                ("build", StageStatus::Success, "local/demo-app:build-1"),
            ],
        );
        let mut fake = FakeDocker::default();
        let r = tag_with(&ctx, &mut fake).unwrap();
        assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
        assert_eq!(
            tagged(&fake),
            vec![
                (
                    "local/demo-app:build-1".to_string(),
                    "127.0.0.1:5000/demo-app:0123456".to_string()
                ),
                (
                    "local/demo-app:build-1".into(),
                    "127.0.0.1:5000/demo-app:build-1".into()
                ),
            ]
        );
        assert_eq!(r.get_output("applied"), Some("true"));
        assert_eq!(r.get_output("source"), Some("local/demo-app:build-1"));
        assert_eq!(r.get_output("tags"), Some("0123456,build-1"));
        assert_eq!(
            r.summary,
            "tagged local/demo-app:build-1: 127.0.0.1:5000/demo-app:0123456, \
             127.0.0.1:5000/demo-app:build-1"
        );
    }

    #[test]
    fn explicit_source_wins_over_upstream() {
        let json = r#"{"image":"r/a","source":"local/x:7","branch-tag":false,"latest":false,"sha-length":0}"#;
        let ctx = ctx_with_needs(json, vec![("build", StageStatus::Success, "local/y:1")]);
        let mut fake = FakeDocker::default();
        let r = tag_with(&ctx, &mut fake).unwrap();
        assert_eq!(
            tagged(&fake),
            vec![("local/x:7".to_string(), "r/a:build-1".to_string())]
        );
        assert_eq!(r.get_output("applied"), Some("true"));
    }

    #[test]
    fn without_source_only_computes() {
        let ctx = ctx_with_needs(IMAGE, vec![("lint", StageStatus::Success, "")]);
        let mut fake = FakeDocker::default();
        let r = tag_with(&ctx, &mut fake).unwrap();
        assert!(tagged(&fake).is_empty());
        assert_eq!(r.status, ReportStatus::Passed);
        assert_eq!(r.get_output("applied"), Some("false"));
        assert_eq!(r.get_output("source"), None);
        assert_eq!(r.summary, "127.0.0.1:5000/demo-app: 0123456, build-1");
        // `tag` (compute only) keeps its old report exactly.
        assert_eq!(tag(&ctx).unwrap().get_output("applied"), None);
    }

    #[test]
    fn tag_failure_fails_the_stage() {
        let ctx = ctx_with_needs(IMAGE, vec![("build", StageStatus::Success, "local/a:1")]);
        let mut fake = FakeDocker::default();
        // The second ref, 127.0.0.1:5000/demo-app:build-1, is refused.
        fake.tag.reply(Ok(())).reply(Err(CapError::Denied(Denial {
            stage: "tag".into(),
            capability: "docker.tag".into(),
            target: "127.0.0.1:5000/demo-app:build-1".into(),
        })));
        let r = tag_with(&ctx, &mut fake).unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(r.get_output("applied"), Some("false"));
        assert!(
            r.summary.starts_with(
                "tag local/a:1 as 127.0.0.1:5000/demo-app:build-1: denied: stage \"tag\""
            ),
            "{}",
            r.summary
        );
        assert!(
            r.summary.ends_with("(1 of 2 refs applied)"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn nothing_to_tag_applies_nothing() {
        let ctx = ctx_with_needs(
            r#"{"image":"a","latest":false,"sha-length":0,"branch-tag":false,"build-number-tag":false}"#,
            vec![("build", StageStatus::Success, "local/a:1")],
        );
        let mut fake = FakeDocker::default();
        let r = tag_with(&ctx, &mut fake).unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(r.get_output("applied"), Some("false"));
        assert!(tagged(&fake).is_empty());
    }

    #[test]
    fn empty_source_is_a_config_error() {
        assert!(config_err(r#"{"image":"a","source":" "}"#).starts_with("with.source:"));
    }
}
