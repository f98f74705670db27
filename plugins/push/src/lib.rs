//! `push` stage: pushes image references to their registries through the
//! host's `docker::push`, retrying transient failures.
//!
//! `with` keys:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `refs` | upstream | full references to push (a list, or one comma-separated string) |
//! | `auth` | none | name of the secret holding the registry credentials (the plugin never sees the value) |
//! | `retries` | `3` | retries after the first attempt, for transient failures only (0..=10) |
//! | `backoff-ms` | `500` | wait before the first retry, doubled for each further one (capped at 30 s) |
//!
//! Without `refs`, the first stage in `needs` with a `refs` output (e.g.
//! `tag`, comma-separated) is used; failing that, the first one whose
//! `image` output is a tagged reference (e.g. `build`).
//!
//! Retried: `remote` errors marked `transient` (5xx, 429, connection
//! errors) and `failed` (connection-level). Never retried: non-transient
//! `remote` errors (401, 403, 404, ...), `denied`, `invalid`, `limit`,
//! `unsupported`. Refs are pushed in order; the first ref that cannot be
//! pushed fails the stage with the registry's own code, e.g.
//! `push 127.0.0.1:5000/demo-app:1.2.3: registry UNAUTHORIZED (HTTP 401): authentication required`.
//!
//! Outputs: `digest` (of the first ref; every ref of one image shares it),
//! `pushed` (comma-separated refs pushed), `image` (repository of the first
//! ref, without tag) and `ref` (`image@digest`, the immutable reference).

use std::time::Duration;

use serde::Deserialize;
use stage_sdk::docker::{Docker, HostDocker};
use stage_sdk::{Annotation, CapError, ConfigKey, Context, PluginInfo, Report, Stage, StageError};

/// Upper bound of one backoff wait.
pub const MAX_BACKOFF_MS: u64 = 30_000;
/// Upper bound of `retries`.
pub const MAX_RETRIES: u32 = 10;

/// `refs` as a list or as one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Refs {
    List(Vec<String>),
    Text(String),
}

/// The `with` table. `retries` and `backoff-ms` get their defaults from
/// `describe()` (the SDK fills them in), so they are not written here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    #[serde(default)]
    pub refs: Option<Refs>,
    #[serde(default)]
    pub auth: Option<String>,
    pub retries: u32,
    pub backoff_ms: u64,
}

/// Splits a comma-separated list, trimming and dropping empty items.
pub fn split_refs(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `(repository, tag)` of `host/path:tag`; `None` without a tag.
pub fn split_ref(reference: &str) -> Option<(&str, &str)> {
    let slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
    let colon = reference[slash..].rfind(':')? + slash;
    Some((&reference[..colon], &reference[colon + 1..]))
}

/// Checks a full reference: no digest, a non-empty valid tag, a non-empty repository.
pub fn validate_ref(reference: &str) -> Result<(), String> {
    if reference.contains('@') {
        return Err(format!("{reference:?}: push a tag, not a digest"));
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{reference:?} contains whitespace"));
    }
    let Some((repo, tag)) = split_ref(reference) else {
        return Err(format!(
            "{reference:?} needs a tag (e.g. {reference}:1.0.0)"
        ));
    };
    let tb = tag.as_bytes();
    let tag_ok = !tb.is_empty()
        && tb.len() <= 128
        && (tb[0].is_ascii_alphanumeric() || tb[0] == b'_')
        && tb
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if repo.is_empty() || repo.ends_with('/') || !tag_ok {
        return Err(format!("{reference:?} is not a valid image reference"));
    }
    Ok(())
}

/// The refs to push: `with.refs`, else an upstream output (see the crate docs).
pub fn resolve_refs(with: &With, ctx: &Context) -> Result<Vec<String>, StageError> {
    let (refs, origin) = match &with.refs {
        Some(Refs::List(list)) => (
            list.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>(),
            "with.refs".to_string(),
        ),
        Some(Refs::Text(text)) => (split_refs(text), "with.refs".to_string()),
        None => upstream_refs(ctx).ok_or_else(|| {
            StageError::config(
                "with.refs: not given and no stage in `needs` has a `refs` output \
                 (or an `image` output with a tag)",
            )
        })?,
    };
    if refs.is_empty() {
        return Err(StageError::config(format!(
            "{origin}: no references to push"
        )));
    }
    for r in &refs {
        validate_ref(r).map_err(|e| StageError::config(format!("{origin}: {e}")))?;
    }
    let mut unique: Vec<String> = Vec::new();
    for r in refs {
        if !unique.contains(&r) {
            unique.push(r);
        }
    }
    Ok(unique)
}

fn upstream_refs(ctx: &Context) -> Option<(Vec<String>, String)> {
    for up in ctx.needs() {
        if let Some((_, v)) = up.outputs.iter().find(|(k, _)| k == "refs") {
            let refs = split_refs(v);
            if !refs.is_empty() {
                return Some((refs, format!("output `refs` of stage {:?}", up.stage)));
            }
        }
    }
    for up in ctx.needs() {
        if let Some((_, v)) = up.outputs.iter().find(|(k, _)| k == "image") {
            if split_ref(v.trim()).is_some() {
                return Some((
                    vec![v.trim().to_string()],
                    format!("output `image` of stage {:?}", up.stage),
                ));
            }
        }
    }
    None
}

/// Whether a failed push is worth another attempt.
pub fn is_transient(err: &CapError) -> bool {
    match err {
        CapError::Remote(r) => r.transient,
        CapError::Failed(_) => true,
        CapError::Denied(_)
        | CapError::Invalid(_)
        | CapError::Limit(_)
        | CapError::Unsupported(_) => false,
    }
}

/// Wait before retry number `retry` (1-based): `base * 2^(retry-1)`, capped.
pub fn backoff(base_ms: u64, retry: u32) -> Duration {
    let factor = 1u64
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_millis(base_ms.saturating_mul(factor).min(MAX_BACKOFF_MS))
}

/// How a push ended after retries.
#[derive(Debug)]
pub struct Attempted<T> {
    pub result: Result<T, CapError>,
    pub attempts: u32,
}

/// Calls `op` until it succeeds, fails non-transiently, or `retries` retries
/// are used up, sleeping `backoff` between attempts.
pub fn with_retries<T>(
    retries: u32,
    backoff_ms: u64,
    mut op: impl FnMut() -> Result<T, CapError>,
    mut sleep: impl FnMut(Duration),
    mut on_retry: impl FnMut(u32, &CapError, Duration),
) -> Attempted<T> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match op() {
            Ok(v) => {
                return Attempted {
                    result: Ok(v),
                    attempts,
                }
            }
            Err(e) if is_transient(&e) && attempts <= retries => {
                let wait = backoff(backoff_ms, attempts);
                on_retry(attempts, &e, wait);
                sleep(wait);
            }
            Err(e) => {
                return Attempted {
                    result: Err(e),
                    attempts,
                }
            }
        }
    }
}

/// `registry UNAUTHORIZED (HTTP 401): authentication required`, or the
/// SDK's message for other errors.
pub fn describe_error(err: &CapError) -> String {
    match err {
        CapError::Remote(r) => {
            let status = r.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
            format!("{} {}{status}: {}", r.service, r.code, r.message)
        }
        other => other.message(),
    }
}

/// The limits on `retries` and `backoff-ms`; `auth`, when given, names a secret.
fn check_with(with: &With) -> Result<(), StageError> {
    if with.retries > MAX_RETRIES {
        return Err(StageError::config(format!(
            "with.retries: {} is more than {MAX_RETRIES}",
            with.retries
        )));
    }
    if with.backoff_ms > MAX_BACKOFF_MS {
        return Err(StageError::config(format!(
            "with.backoff-ms: {} is more than {MAX_BACKOFF_MS}",
            with.backoff_ms
        )));
    }
    if with.auth.as_deref().is_some_and(|a| a.trim().is_empty()) {
        return Err(StageError::config(
            "with.auth: must name a secret (leave it out for no credentials)",
        ));
    }
    Ok(())
}

/// Everything but the export glue.
/// `sleep` waits between retries (`std::thread::sleep` in the plugin).
pub fn push(
    ctx: &Context,
    docker: &mut impl Docker,
    sleep: &dyn Fn(Duration),
) -> Result<Report, StageError> {
    let with: With = ctx.config_with_defaults()?;
    check_with(&with)?;
    let refs = resolve_refs(&with, ctx)?;
    let auth = with.auth.as_deref();

    let mut pushed: Vec<String> = Vec::new();
    let mut digest: Option<String> = None;
    let mut report_annotations = Vec::new();
    for reference in &refs {
        stage_sdk::log::info!(
            "pushing {reference}{}",
            auth.map(|a| format!(" (credentials: secret {a:?})"))
                .unwrap_or_default()
        );
        let done = with_retries(
            with.retries,
            with.backoff_ms,
            || docker.push(reference, auth),
            sleep,
            |n, e, w| {
                stage_sdk::log::warn!(
                    "push {reference}: attempt {n} failed ({}); retrying in {} ms",
                    describe_error(e),
                    w.as_millis()
                )
            },
        );
        match done.result {
            Ok(res) => {
                stage_sdk::log::info!("pushed {reference}: {}", res.digest);
                match &digest {
                    None => digest = Some(res.digest.clone()),
                    Some(d) if *d != res.digest => {
                        stage_sdk::log::warn!(
                            "{reference} has digest {} (first ref: {d})",
                            res.digest
                        );
                        report_annotations.push(Annotation::warning(
                            "digests differ",
                            format!("{reference} is {}, the first ref is {d}", res.digest),
                        ));
                    }
                    Some(_) => {}
                }
                pushed.push(reference.clone());
            }
            Err(err) => {
                let tries = if done.attempts > 1 {
                    format!(" (gave up after {} attempts)", done.attempts)
                } else {
                    String::new()
                };
                let summary = format!("push {reference}: {}{tries}", describe_error(&err));
                stage_sdk::log::error(&summary);
                let mut report = Report::failed(summary.clone())
                    .annotate(Annotation::error(format!("push {reference}"), summary))
                    .output("pushed", pushed.join(","));
                if let Some(d) = &digest {
                    report = report.output("digest", d.as_str());
                }
                report.annotations.extend(report_annotations);
                return Ok(report);
            }
        }
    }
    let digest = digest.unwrap_or_default();
    let image = split_ref(&refs[0]).map(|(r, _)| r).unwrap_or(&refs[0]);
    let summary = if refs.len() == 1 {
        format!("pushed {} ({digest})", refs[0])
    } else {
        format!("pushed {} refs of {image} ({digest})", refs.len())
    };
    let mut report = Report::passed(summary)
        .output("digest", digest.as_str())
        .output("pushed", pushed.join(","))
        .output("image", image)
        .output("ref", format!("{image}@{digest}"));
    report.annotations.extend(report_annotations);
    Ok(report)
}

struct Push;

impl Stage for Push {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "push",
            env!("CARGO_PKG_VERSION"),
            "Pushes image references to their registries, retrying transient failures",
        )
        .key(ConfigKey::optional_no_default(
            "refs",
            "References to push (list or comma-separated); default: the `refs` output of a \
             stage in `needs`",
        ))
        .key(ConfigKey::optional_no_default(
            "auth",
            "Name of the secret holding the registry credentials",
        ))
        .key(ConfigKey::optional(
            "retries",
            "Retries of a transient failure (5xx, 429, connection errors)",
            "3",
        ))
        .key(ConfigKey::optional(
            "backoff-ms",
            "Wait before the first retry, doubled each time",
            "500",
        ))
        .capability("docker.push")
        .capability("secrets")
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        push(&ctx, &mut HostDocker, &std::thread::sleep)
    }
}

stage_sdk::export_stage!(Push);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::bindings::ci::stage::types::RemoteError;
    use stage_sdk::docker::PushResult;
    use stage_sdk::testing::{DockerCall, FakeDocker};
    use stage_sdk::{Denial, ReportStatus};
    use std::cell::RefCell;

    fn remote(status: u16, code: &str, message: &str, transient: bool) -> CapError {
        CapError::Remote(RemoteError {
            service: "registry".into(),
            status: Some(status),
            code: code.into(),
            message: message.into(),
            transient,
        })
    }

    /// The SDK's fake engine answering pushes from a script (then
    /// succeeding), and the waits between retries.
    struct Fake {
        docker: RefCell<FakeDocker>,
        slept: RefCell<Vec<Duration>>,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake::with(Vec::new())
        }
    }

    impl Fake {
        fn with(script: Vec<Result<&str, CapError>>) -> Self {
            let mut docker = FakeDocker::default();
            let then = std::iter::repeat_n(Ok("sha256:feed"), 8);
            for r in script.into_iter().chain(then) {
                docker
                    .push
                    .reply(r.map(|d| PushResult { digest: d.into() }));
            }
            Fake {
                docker: RefCell::new(docker),
                slept: RefCell::default(),
            }
        }

        fn push(&self, ctx: &Context) -> Result<Report, StageError> {
            let mut docker = self.docker.borrow_mut();
            push(ctx, &mut *docker, &|d| self.slept.borrow_mut().push(d))
        }

        /// (reference, auth secret) of each push.
        fn calls(&self) -> Vec<(String, Option<String>)> {
            let docker = self.docker.borrow();
            docker
                .calls
                .iter()
                .map(|c| match c {
                    DockerCall::Push { image, auth_secret } => (image.clone(), auth_secret.clone()),
                    other => panic!("not a push: {other:?}"),
                })
                .collect()
        }
    }

    fn ctx_with_needs(json: &str, needs: Vec<(&str, Vec<(&str, &str)>)>) -> Context {
        // With the keys `describe()` declares, as the export glue does.
        Context::for_test_with_needs("push", json, needs).with_keys(Push::describe().config)
    }

    const REFS: &str = r#"{"refs":["127.0.0.1:5000/demo-app:1.2.3","127.0.0.1:5000/demo-app:latest"],"auth":"registry"}"#;

    #[test]
    fn pushes_every_ref_with_auth() {
        let fake = Fake::default();
        let r = fake.push(&ctx_with_needs(REFS, vec![])).unwrap();
        assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
        assert_eq!(
            fake.calls(),
            vec![
                (
                    "127.0.0.1:5000/demo-app:1.2.3".to_string(),
                    Some("registry".to_string())
                ),
                (
                    "127.0.0.1:5000/demo-app:latest".into(),
                    Some("registry".into())
                ),
            ]
        );
        assert_eq!(r.get_output("digest"), Some("sha256:feed"));
        assert_eq!(
            r.get_output("pushed"),
            Some("127.0.0.1:5000/demo-app:1.2.3,127.0.0.1:5000/demo-app:latest")
        );
        assert_eq!(r.get_output("image"), Some("127.0.0.1:5000/demo-app"));
        assert_eq!(
            r.get_output("ref"),
            Some("127.0.0.1:5000/demo-app@sha256:feed")
        );
        assert!(fake.slept.borrow().is_empty());
    }

    #[test]
    fn retries_transient_then_succeeds() {
        let fake = Fake::with(vec![
            Err(remote(503, "UNAVAILABLE", "try later", true)),
            Err(CapError::Failed("connection reset".into())),
            Ok("sha256:abc"),
        ]);
        let r = fake
            .push(&ctx_with_needs(
                r#"{"refs":"r:5000/a:1","backoff-ms":100}"#,
                vec![],
            ))
            .unwrap();
        assert_eq!(r.status, ReportStatus::Passed);
        assert_eq!(fake.calls().len(), 3);
        assert_eq!(fake.calls()[0].1, None);
        assert_eq!(
            *fake.slept.borrow(),
            vec![Duration::from_millis(100), Duration::from_millis(200)]
        );
        assert_eq!(r.get_output("digest"), Some("sha256:abc"));
    }

    #[test]
    fn gives_up_after_retries() {
        let err = || Err(remote(429, "TOOMANYREQUESTS", "slow down", true));
        let fake = Fake::with(vec![err(), err(), err()]);
        let r = fake
            .push(&ctx_with_needs(
                r#"{"refs":["r:5000/a:1"],"retries":2}"#,
                vec![],
            ))
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(fake.calls().len(), 3);
        assert_eq!(
            *fake.slept.borrow(),
            vec![Duration::from_millis(500), Duration::from_millis(1000)]
        );
        assert_eq!(
            r.summary,
            "push r:5000/a:1: registry TOOMANYREQUESTS (HTTP 429): slow down (gave up after 3 attempts)"
        );
    }

    #[test]
    fn non_transient_fails_at_once_with_registry_code() {
        let fake = Fake::with(vec![Err(remote(
            401,
            "UNAUTHORIZED",
            "authentication required",
            false,
        ))]);
        let r = fake.push(&ctx_with_needs(REFS, vec![])).unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(
            fake.calls().len(),
            1,
            "no retry, and later refs are not tried"
        );
        assert!(fake.slept.borrow().is_empty());
        assert_eq!(
            r.summary,
            "push 127.0.0.1:5000/demo-app:1.2.3: registry UNAUTHORIZED (HTTP 401): authentication required"
        );
        assert_eq!(r.get_output("pushed"), Some(""));
    }

    #[test]
    fn partial_push_reports_what_was_pushed() {
        let fake = Fake::with(vec![
            Ok("sha256:one"),
            Err(remote(
                403,
                "DENIED",
                "requested access to the resource is denied",
                false,
            )),
        ]);
        let r = fake.push(&ctx_with_needs(REFS, vec![])).unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(
            r.get_output("pushed"),
            Some("127.0.0.1:5000/demo-app:1.2.3")
        );
        assert_eq!(r.get_output("digest"), Some("sha256:one"));
        assert!(r.summary.contains("DENIED (HTTP 403)"), "{}", r.summary);
    }

    #[test]
    fn classification() {
        assert!(is_transient(&remote(500, "UNKNOWN", "x", true)));
        assert!(is_transient(&CapError::Failed("dial tcp: refused".into())));
        for e in [
            remote(401, "UNAUTHORIZED", "x", false),
            remote(404, "NAME_UNKNOWN", "x", false),
            CapError::Invalid("bad ref".into()),
            CapError::Limit("too big".into()),
            CapError::Unsupported("no docker".into()),
            CapError::Denied(Denial {
                stage: "push".into(),
                capability: "docker.push".into(),
                target: "r/a:1".into(),
            }),
        ] {
            assert!(!is_transient(&e), "{e:?}");
        }
    }

    #[test]
    fn denied_is_not_retried() {
        let fake = Fake::with(vec![Err(CapError::Denied(Denial {
            stage: "push".into(),
            capability: "docker.push".into(),
            target: "r:5000/a:1".into(),
        }))]);
        let r = fake
            .push(&ctx_with_needs(r#"{"refs":"r:5000/a:1"}"#, vec![]))
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(fake.calls().len(), 1);
        assert!(
            r.summary.starts_with("push r:5000/a:1: denied:"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(500, 1), Duration::from_millis(500));
        assert_eq!(backoff(500, 2), Duration::from_millis(1000));
        assert_eq!(backoff(500, 3), Duration::from_millis(2000));
        assert_eq!(backoff(500, 10), Duration::from_millis(MAX_BACKOFF_MS));
        assert_eq!(backoff(500, 200), Duration::from_millis(MAX_BACKOFF_MS));
        assert_eq!(backoff(0, 3), Duration::ZERO);
    }

    #[test]
    fn retry_loop_counts_attempts() {
        let mut n = 0;
        let a = with_retries(
            0,
            10,
            || {
                n += 1;
                Err::<(), _>(CapError::Failed("x".into()))
            },
            |_| {},
            |_, _, _| {},
        );
        assert_eq!(a.attempts, 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn refs_from_upstream() {
        let ctx = ctx_with_needs(
            "{}",
            vec![
                ("build", vec![("image", "local/demo-app:build-1")]),
                ("tag", vec![("refs", "r:5000/a:1, r:5000/a:latest,")]),
            ],
        );
        let fake = Fake::default();
        let r = fake.push(&ctx).unwrap();
        assert_eq!(r.get_output("pushed"), Some("r:5000/a:1,r:5000/a:latest"));
        assert_eq!(r.get_output("image"), Some("r:5000/a"));

        // No `refs` anywhere: a tagged `image` output will do.
        let ctx = ctx_with_needs(
            "{}",
            vec![
                ("tag", vec![("image", "r:5000/a")]),
                ("build", vec![("image", "r:5000/a:build-1")]),
            ],
        );
        let fake = Fake::default();
        let r = fake.push(&ctx).unwrap();
        assert_eq!(r.get_output("pushed"), Some("r:5000/a:build-1"));
    }

    fn config_err(json: &str, needs: Vec<(&str, Vec<(&str, &str)>)>) -> String {
        match Fake::default().push(&ctx_with_needs(json, needs)) {
            Err(StageError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn config_errors() {
        assert!(config_err("{}", vec![]).starts_with("with.refs: not given"));
        assert!(config_err("{}", vec![("tag", vec![("image", "r:5000/a")])])
            .starts_with("with.refs: not given"));
        assert!(config_err(r#"{"refs":[]}"#, vec![]).contains("no references"));
        assert!(config_err(r#"{"refs":"r:5000/a"}"#, vec![]).contains("needs a tag"));
        assert!(config_err(r#"{"refs":["r/a@sha256:00"]}"#, vec![]).contains("digest"));
        assert!(config_err(r#"{"refs":"a:1","retries":11}"#, vec![]).starts_with("with.retries"));
        assert!(config_err(r#"{"refs":"a:1","retries":-1}"#, vec![]).starts_with("with.retries"));
        assert!(config_err(r#"{"refs":"a:1","auth":" "}"#, vec![]).starts_with("with.auth"));
        assert!(config_err(r#"{"refs":"a:1","backoff-ms":60001}"#, vec![])
            .starts_with("with.backoff-ms"));
        assert!(config_err(r#"{"refs":"a:1","retry":1}"#, vec![]).starts_with("with.retry:"));
    }

    #[test]
    fn ref_parsing() {
        assert_eq!(split_ref("r:5000/a:1"), Some(("r:5000/a", "1")));
        assert_eq!(split_ref("r:5000/a"), None);
        assert_eq!(split_ref("a:latest"), Some(("a", "latest")));
        assert_eq!(split_refs(" a:1 ,, b:2 "), vec!["a:1", "b:2"]);
        assert!(validate_ref("a:1").is_ok());
        assert!(validate_ref(":1").is_err());
        assert!(validate_ref("a: 1").is_err());
        assert!(validate_ref("a:-1").is_err());
    }
}
