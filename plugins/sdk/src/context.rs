//! [`Context`]: what `run` receives.

use serde::de::DeserializeOwned;

use crate::{ConfigKey, RunContext, StageContext, StageError, StageStatus, StageSummary, Upstream};

/// The stage's view of the run: run context, `with` table, upstream outputs.
///
/// Wraps the generated [`StageContext`]; [`Context::raw`] gives it back.
#[derive(Clone, Debug)]
pub struct Context {
    inner: StageContext,
    /// The keys `describe()` declares: their defaults fill missing keys.
    keys: Vec<ConfigKey>,
}

impl Context {
    /// Wraps a raw context (the export glue does this for you).
    pub fn new(inner: StageContext) -> Self {
        Context {
            inner,
            keys: Vec::new(),
        }
    }

    /// Declares the stage's config keys (normally `S::describe().config`,
    /// which the export glue passes): [`Context::config_with_defaults`]
    /// then fills each missing optional key with its declared default, so a
    /// default is written once, in `describe()`, and not again in serde.
    pub fn with_keys(mut self, keys: Vec<ConfigKey>) -> Self {
        self.keys = keys;
        self
    }

    /// A context with a placeholder run and the given `with` JSON, for unit tests.
    pub fn for_test(stage: &str, config_json: &str) -> Self {
        Context::new(StageContext {
            run: RunContext {
                run_id: "test-run".into(),
                pipeline: "test".into(),
                build_number: 1,
                commit_sha: "0123456789abcdef0123456789abcdef01234567".into(),
                branch: Some("main".into()),
                tag: None,
                event: "push".into(),
                environment: None,
                default_branch: "main".into(),
                url: String::new(),
            },
            stage: stage.into(),
            config: config_json.into(),
            needs: Vec::new(),
            finished: Vec::new(),
        })
    }

    /// A test context whose `needs` are successful upstream stages with
    /// these outputs: `[("tag", vec![("refs", "a:1,a:2")])]`.
    pub fn for_test_with_needs(
        stage: &str,
        config_json: &str,
        needs: Vec<(&str, Vec<(&str, &str)>)>,
    ) -> Self {
        let mut raw = Self::for_test(stage, config_json).into_raw();
        raw.needs = needs
            .into_iter()
            .map(|(stage, outputs)| crate::Upstream {
                stage: stage.into(),
                status: crate::StageStatus::Success,
                outputs: outputs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .collect();
        Context::new(raw)
    }

    /// The generated record.
    pub fn raw(&self) -> &StageContext {
        &self.inner
    }

    /// Gives the generated record back.
    pub fn into_raw(self) -> StageContext {
        self.inner
    }

    /// Run-wide facts: build number, commit, branch/tag, event, url...
    pub fn run(&self) -> &RunContext {
        &self.inner.run
    }

    /// This stage's name.
    pub fn stage(&self) -> &str {
        &self.inner.stage
    }

    /// The `with` table as JSON text.
    pub fn config_json(&self) -> &str {
        &self.inner.config
    }

    /// The `with` table parsed into `T`.
    ///
    /// Empty/`null` config counts as `{}`. A serde error becomes
    /// `StageError::Config("with.<key>: ...")` naming the key, e.g.
    /// `with.image: required key is missing` or
    /// `with.sha-length: invalid type: string "x", expected u32`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        crate::config::parse(&self.inner.config)
    }

    /// [`Context::config`] after filling every missing optional key with
    /// the default `describe()` declares for it (see [`Context::with_keys`]),
    /// so the serde struct needs no defaults of its own. Opt-in: a plugin
    /// that tells "not set" from "set to the default" (an `Option` whose key
    /// has a documented default) keeps [`Context::config`].
    pub fn config_with_defaults<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        crate::config::parse_with_defaults(&self.inner.config, &self.keys)
    }

    /// The `with` table as an untyped JSON value (`{}` when empty).
    pub fn config_value(&self) -> Result<serde_json::Value, StageError> {
        crate::config::parse_value(&self.inner.config)
    }

    /// Stages listed in `needs`, with their outputs.
    pub fn needs(&self) -> &[Upstream] {
        &self.inner.needs
    }

    /// One upstream stage by name.
    pub fn upstream(&self, stage: &str) -> Option<&Upstream> {
        self.inner.needs.iter().find(|u| u.stage == stage)
    }

    /// Output `key` of upstream stage `stage` (which must be in `needs`).
    pub fn output(&self, stage: &str, key: &str) -> Option<&str> {
        self.upstream(stage)?
            .outputs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Like [`Context::output`], but a missing value is a config error.
    pub fn require_output(&self, stage: &str, key: &str) -> Result<&str, StageError> {
        match self.upstream(stage) {
            None => Err(StageError::Config(format!(
                "stage {stage:?} is not in this stage's needs"
            ))),
            Some(_) => self.output(stage, key).ok_or_else(|| {
                StageError::Config(format!("stage {stage:?} has no output {key:?}"))
            }),
        }
    }

    /// Every stage finished before this one, in order.
    pub fn finished(&self) -> &[StageSummary] {
        &self.inner.finished
    }

    /// `failure` if any finished stage failed, else `cancelled` if any was
    /// cancelled, else `success`.
    pub fn overall_status(&self) -> StageStatus {
        overall_status(&self.inner.finished)
    }

    /// First `len` characters of the commit sha ("" outside git).
    pub fn short_sha(&self, len: usize) -> &str {
        let sha = &self.inner.run.commit_sha;
        match sha.char_indices().nth(len) {
            Some((i, _)) => &sha[..i],
            None => sha,
        }
    }
}

/// See [`Context::overall_status`].
pub fn overall_status(finished: &[StageSummary]) -> StageStatus {
    if finished.iter().any(|s| s.status == StageStatus::Failure) {
        StageStatus::Failure
    } else if finished.iter().any(|s| s.status == StageStatus::Cancelled) {
        StageStatus::Cancelled
    } else {
        StageStatus::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_config_with_defaults_fills_declared_defaults() {
        let keys = vec![crate::ConfigKey::optional("who", "w", "\"world\"")];
        let ctx = Context::for_test("s", "{}").with_keys(keys);
        let plain: serde_json::Value = ctx.config().unwrap();
        assert_eq!(plain, serde_json::json!({}));
        let filled: serde_json::Value = ctx.config_with_defaults().unwrap();
        assert_eq!(filled, serde_json::json!({"who": "world"}));
    }

    fn ctx() -> Context {
        let mut raw = Context::for_test("deploy", "{}").into_raw();
        raw.needs.push(Upstream {
            stage: "build".into(),
            status: StageStatus::Success,
            outputs: vec![("image".into(), "demo:1".into())],
        });
        raw.finished = vec![
            StageSummary {
                stage: "a".into(),
                status: StageStatus::Success,
                duration_ms: 1,
                summary: String::new(),
            },
            StageSummary {
                stage: "b".into(),
                status: StageStatus::Cancelled,
                duration_ms: 1,
                summary: String::new(),
            },
        ];
        Context::new(raw)
    }

    #[test]
    fn outputs_of_upstream_stages() {
        let c = ctx();
        assert_eq!(c.output("build", "image"), Some("demo:1"));
        assert_eq!(c.output("build", "digest"), None);
        assert_eq!(c.output("nope", "image"), None);
        assert!(c.require_output("nope", "image").is_err());
        assert_eq!(c.require_output("build", "image").unwrap(), "demo:1");
    }

    #[test]
    fn overall_status_prefers_failure_then_cancelled() {
        let mut c = ctx().into_raw();
        assert_eq!(overall_status(&c.finished), StageStatus::Cancelled);
        c.finished[0].status = StageStatus::Failure;
        assert_eq!(overall_status(&c.finished), StageStatus::Failure);
        assert_eq!(overall_status(&[]), StageStatus::Success);
    }

    #[test]
    fn short_sha() {
        let c = ctx();
        assert_eq!(c.short_sha(7), "0123456");
        assert_eq!(c.short_sha(100).len(), 40);
    }
}
