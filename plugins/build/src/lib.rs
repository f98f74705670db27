//! `build` stage: builds an image through the host's `docker::build`.
//!
//! `with` keys:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `image` | required | full reference the result is tagged with, e.g. `local/demo-app:build-7` |
//! | `context` | `"."` | build context, relative to the workspace (no `..`, not absolute) |
//! | `dockerfile` | `"Dockerfile"` | Dockerfile path relative to the context |
//! | `build-args` | `{}` | `--build-arg` values (strings, numbers or booleans) |
//! | `labels` | `{}` | image labels (strings, numbers or booleans) |
//!
//! Standard label added automatically (a `labels` entry with the same key
//! wins): `org.opencontainers.image.revision` = the commit sha, when known,
//! and `org.opencontainers.image.version` = the tag, on a tag run (so two
//! releases of one commit are two images, and a rollback has one to go to).
//! `org.opencontainers.image.created` is left out on purpose (it would make
//! every build of the same commit a different image).
//!
//! Outputs: `image` (the reference, as given) and `image-id` (`sha256:...`).
//! A build the engine refuses or fails is a failed report whose summary is
//! the error's first line; the full error (with the build log tail) is an
//! annotation.

use std::collections::BTreeMap;

use serde::Deserialize;
use stage_sdk::docker::{BuildRequest, Docker, HostDocker};
use stage_sdk::{Annotation, CapError, ConfigKey, Context, PluginInfo, Report, Stage, StageError};

/// Label carrying the commit sha.
pub const REVISION_LABEL: &str = "org.opencontainers.image.revision";
pub const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// The `with` table. Optional keys get their defaults from `describe()`
/// (the SDK fills them in), so none are written here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    pub image: String,
    pub context: String,
    pub dockerfile: String,
    pub build_args: BTreeMap<String, Scalar>,
    pub labels: BTreeMap<String, Scalar>,
}

/// A TOML/JSON scalar used as a build-arg or label value.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

pub use stage_sdk::docker::validate_reference;

/// Checks a workspace-relative path (`context`, `dockerfile`).
pub fn validate_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(format!("{path:?} must be relative to the workspace"));
    }
    if path.split(['/', '\\']).any(|c| c == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

/// The request for `with`, the commit sha ("" when unknown) and the tag
/// of a tag run.
pub fn build_request(with: &With, commit_sha: &str, tag: Option<&str>) -> BuildRequest {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    if !commit_sha.is_empty() {
        labels.insert(REVISION_LABEL.into(), commit_sha.into());
    }
    if let Some(tag) = tag.filter(|t| !t.is_empty()) {
        labels.insert(VERSION_LABEL.into(), tag.into());
    }
    for (k, v) in &with.labels {
        labels.insert(k.clone(), v.text());
    }
    BuildRequest {
        context: with.context.clone(),
        dockerfile: Some(with.dockerfile.clone()),
        image: with.image.clone(),
        build_args: with
            .build_args
            .iter()
            .map(|(k, v)| (k.clone(), v.text()))
            .collect(),
        labels: labels.into_iter().collect(),
    }
}

/// `sha256:0123456789ab…` (the full id when it is short).
pub fn short_id(id: &str) -> String {
    let (algo, hex) = id.split_once(':').unwrap_or(("", id));
    if hex.chars().count() <= 12 {
        return id.to_string();
    }
    let cut: String = hex.chars().take(12).collect();
    if algo.is_empty() {
        format!("{cut}…")
    } else {
        format!("{algo}:{cut}…")
    }
}

/// The summary line of a failed build: `build local/x:1 failed: <first line>`.
pub fn failure_summary(image: &str, err: &CapError) -> String {
    let msg = err.message();
    let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let first: String = first.chars().take(300).collect();
    format!("build {image} failed: {}", first.trim())
}

/// Everything but the export glue.
pub fn build(ctx: &Context, engine: &mut impl Docker) -> Result<Report, StageError> {
    let with: With = ctx.config_with_defaults()?;
    validate_reference(&with.image).map_err(|e| StageError::config(format!("with.image: {e}")))?;
    validate_relative(&with.context)
        .map_err(|e| StageError::config(format!("with.context: {e}")))?;
    validate_relative(&with.dockerfile)
        .map_err(|e| StageError::config(format!("with.dockerfile: {e}")))?;
    for key in with.build_args.keys().chain(with.labels.keys()) {
        if key.is_empty() || key.contains('=') {
            return Err(StageError::config(format!(
                "with: key {key:?} must be non-empty and must not contain '='"
            )));
        }
    }
    let req = build_request(&with, &ctx.run().commit_sha, ctx.run().tag.as_deref());
    stage_sdk::log::info!(
        "building {} from {} (dockerfile {}, {} build-args, {} labels)",
        req.image,
        req.context,
        with.dockerfile,
        req.build_args.len(),
        req.labels.len()
    );
    match engine.build(&req) {
        Ok(res) => {
            for line in res.log_tail.lines() {
                stage_sdk::log::debug(line);
            }
            Ok(Report::passed(format!(
                "built {} ({})",
                with.image,
                short_id(&res.image_id)
            ))
            .output("image", with.image.as_str())
            .output("image-id", res.image_id))
        }
        Err(err) => {
            stage_sdk::log::error!("build of {} failed: {}", with.image, err.message());
            Ok(Report::failed(failure_summary(&with.image, &err))
                .annotate(Annotation::error(
                    format!("docker build {}", with.image),
                    err.message(),
                ))
                .output("image", with.image.as_str()))
        }
    }
}

struct Build;

impl Stage for Build {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "build",
            env!("CARGO_PKG_VERSION"),
            "Builds a container image from a Dockerfile in the workspace",
        )
        .key(ConfigKey::required(
            "image",
            "Full reference to tag the build with, e.g. local/demo-app:build-7",
        ))
        .key(ConfigKey::optional(
            "context",
            "Build context, relative to the workspace",
            "\".\"",
        ))
        .key(ConfigKey::optional(
            "dockerfile",
            "Dockerfile path relative to the context",
            "\"Dockerfile\"",
        ))
        .key(ConfigKey::optional(
            "build-args",
            "Build arguments (table of scalars)",
            "{}",
        ))
        .key(ConfigKey::optional(
            "labels",
            "Image labels (table of scalars); org.opencontainers.image.revision (and .version on a tag run) is added",
            "{}",
        ))
        .capability("workspace")
        .capability("docker.build")
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        build(&ctx, &mut HostDocker)
    }
}

stage_sdk::export_stage!(Build);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::bindings::ci::stage::types::RemoteError;
    use stage_sdk::docker::BuildResult;
    use stage_sdk::testing::{DockerCall, FakeDocker};
    use stage_sdk::ReportStatus;

    /// `ctx` with the keys `describe()` declares, as the export glue does.
    fn test_ctx(ctx: Context) -> Context {
        ctx.with_keys(Build::describe().config)
    }

    /// An engine whose next build answers `answer`.
    fn engine(answer: Result<BuildResult, CapError>) -> FakeDocker {
        let mut fake = FakeDocker::default();
        fake.build.reply(answer);
        fake
    }

    /// An engine whose next build succeeds.
    fn fake() -> FakeDocker {
        engine(Ok(BuildResult {
            image_id: "sha256:abcdef0123456789abcdef".into(),
            log_tail: "Step 1/2\nSuccessfully built".into(),
        }))
    }

    /// The request of the `n`th call, which must be a build.
    fn seen(fake: &FakeDocker, n: usize) -> &BuildRequest {
        match &fake.calls[n] {
            DockerCall::Build(req) => req,
            other => panic!("not a build: {other:?}"),
        }
    }

    fn run(json: &str, fake: &mut FakeDocker) -> Result<Report, StageError> {
        build(&test_ctx(Context::for_test("build", json)), fake)
    }

    fn config_err(json: &str) -> String {
        match run(json, &mut fake()) {
            Err(StageError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn builds_with_defaults_and_revision_label() {
        let mut fake = fake();
        let r = run(r#"{"image":"local/demo-app:build-7"}"#, &mut fake).unwrap();
        assert_eq!(r.status, ReportStatus::Passed);
        assert_eq!(
            r.summary,
            "built local/demo-app:build-7 (sha256:abcdef012345…)"
        );
        assert_eq!(r.get_output("image"), Some("local/demo-app:build-7"));
        assert_eq!(
            r.get_output("image-id"),
            Some("sha256:abcdef0123456789abcdef")
        );
        let req = seen(&fake, 0);
        assert_eq!(req.context, ".");
        assert_eq!(req.dockerfile.as_deref(), Some("Dockerfile"));
        assert_eq!(req.image, "local/demo-app:build-7");
        assert!(req.build_args.is_empty());
        assert_eq!(
            req.labels,
            vec![(
                REVISION_LABEL.to_string(),
                "0123456789abcdef0123456789abcdef01234567".to_string()
            )]
        );
    }

    #[test]
    fn a_tag_run_labels_the_version() {
        let with: With = test_ctx(Context::for_test("build", r#"{"image":"local/a:1"}"#))
            .config_with_defaults()
            .unwrap();
        let req = build_request(&with, "", Some("v1.2.0"));
        assert_eq!(
            req.labels,
            vec![(VERSION_LABEL.to_string(), "v1.2.0".to_string())]
        );
        assert!(build_request(&with, "", None).labels.is_empty());
    }

    #[test]
    fn passes_context_dockerfile_args_and_labels() {
        let mut fake = fake();
        let json = r#"{"image":"127.0.0.1:5000/demo-app:1","context":"pipelines/demo-app",
            "dockerfile":"Dockerfile.test","build-args":{"VERSION":"1.2.3","N":3,"X":true},
            "labels":{"team":"ci","org.opencontainers.image.revision":"override"}}"#;
        run(json, &mut fake).unwrap();
        let req = seen(&fake, 0);
        assert_eq!(req.context, "pipelines/demo-app");
        assert_eq!(req.dockerfile.as_deref(), Some("Dockerfile.test"));
        assert_eq!(
            req.build_args,
            vec![
                ("N".to_string(), "3".to_string()),
                ("VERSION".into(), "1.2.3".into()),
                ("X".into(), "true".into())
            ]
        );
        assert_eq!(
            req.labels,
            vec![
                (REVISION_LABEL.to_string(), "override".to_string()),
                ("team".into(), "ci".into())
            ]
        );
    }

    #[test]
    fn no_revision_label_outside_git() {
        let mut raw = Context::for_test("build", r#"{"image":"a:1"}"#).into_raw();
        raw.run.commit_sha.clear();
        let mut fake = fake();
        build(&test_ctx(Context::new(raw)), &mut fake).unwrap();
        assert!(seen(&fake, 0).labels.is_empty());
    }

    #[test]
    fn engine_failure_is_a_failed_report() {
        let mut fake = engine(Err(CapError::Failed(
            "build failed: COPY failed: file not found\nStep 2/4 : COPY dist/demo-app /demo-app"
                .into(),
        )));
        let r = run(r#"{"image":"local/demo-app:build-7"}"#, &mut fake).unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(
            r.summary,
            "build local/demo-app:build-7 failed: failed: build failed: COPY failed: file not found"
        );
        assert!(r.annotations[0].message.contains("Step 2/4"));

        let mut fake = engine(Err(CapError::Remote(RemoteError {
            service: "docker".into(),
            status: Some(500),
            code: "BUILD_FAILED".into(),
            message: "boom".into(),
            transient: false,
        })));
        let r = run(r#"{"image":"local/demo-app:build-7"}"#, &mut fake).unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert!(r.summary.contains("BUILD_FAILED"), "{}", r.summary);
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(config_err("{}"), "with.image: required key is missing");
        assert!(config_err(r#"{"image":"local/demo"}"#).starts_with("with.image:"));
        assert!(config_err(r#"{"image":"Local/Demo:1"}"#).starts_with("with.image:"));
        assert!(config_err(r#"{"image":"a:1","context":"/etc"}"#).starts_with("with.context:"));
        assert!(config_err(r#"{"image":"a:1","context":"../x"}"#).starts_with("with.context:"));
        assert!(config_err(r#"{"image":"a:1","dockerfile":"a/../../D"}"#)
            .starts_with("with.dockerfile:"));
        assert!(
            config_err(r#"{"image":"a:1","build-args":{"A":[1]}}"#).starts_with("with.build-args")
        );
        assert!(config_err(r#"{"image":"a:1","tags":[]}"#).starts_with("with.tags:"));
    }

    #[test]
    fn reference_validation() {
        for ok in [
            "demo:1",
            "local/demo-app:build-7",
            "127.0.0.1:5000/demo-app:1.2.3",
            "localhost/a_b:latest",
            "ghcr.io/org/app:_x",
        ] {
            assert_eq!(validate_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "demo",
            "127.0.0.1:5000/demo-app",
            "demo:",
            "demo:-x",
            "Demo:1",
            "a//b:1",
            "a@sha256:abc",
            "a:1:2",
        ] {
            assert!(validate_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_ids() {
        assert_eq!(short_id("sha256:0123456789abcdef"), "sha256:0123456789ab…");
        assert_eq!(short_id("sha256:0123"), "sha256:0123");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab…");
    }
}
