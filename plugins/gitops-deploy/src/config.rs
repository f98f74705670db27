//! The `with` table: parsing, defaults and checks, the image to deploy and
//! the commit message.

use serde::Deserialize;
use stage_sdk::{Context, StageError};

use crate::reference::{self, ImageRef};

/// Default commit message.
pub const DEFAULT_MESSAGE: &str =
    "deploy {image} to {environment} (pipeline {pipeline} #{build}, run {run})";
/// Default number of retries after a push the remote rejected as not fast-forward.
pub const DEFAULT_RETRIES: u32 = 3;
/// Most retries allowed.
pub const MAX_RETRIES: u32 = 20;
/// Placeholders of `message`.
pub const PLACEHOLDERS: [&str; 6] = ["image", "environment", "pipeline", "build", "run", "stage"];

/// The `with` table as written. `retries` and `message` get their
/// defaults from `describe()` (the SDK fills them in), not from serde.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    pub repo: String,
    #[serde(default)]
    pub branch: Option<String>,
    pub paths: Vec<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default, rename = "match")]
    pub match_repository: Option<String>,
    pub retries: u32,
    pub message: String,
}

/// Everything the deploy needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `[git.NAME]` of the repository.
    pub repo: String,
    /// Branch to clone and push; `None`: the repository's configured one.
    pub branch: Option<String>,
    /// Globs of the manifests, as given.
    pub paths: Vec<String>,
    /// The reference to deploy.
    pub image: String,
    pub image_ref: ImageRef,
    /// The repository whose references are replaced.
    pub repository: String,
    pub retries: u32,
    /// The commit message, placeholders filled in.
    pub message: String,
}

impl Config {
    /// `deploy-config` or `deploy-config@main`.
    pub fn repo_label(&self) -> String {
        match &self.branch {
            Some(b) => format!("{}@{b}", self.repo),
            None => self.repo.clone(),
        }
    }
}

fn cfg_err(key: &str, msg: impl std::fmt::Display) -> StageError {
    StageError::config(format!("with.{key}: {msg}"))
}

/// The image to deploy and where it came from: `with.image`, else the `ref`
/// output (image@digest) of a stage in `needs`, else an `image` output.
pub fn resolve_image(with: &With, ctx: &Context) -> Result<(String, String), StageError> {
    if let Some(i) = &with.image {
        let i = i.trim();
        if i.is_empty() {
            return Err(cfg_err("image", "empty"));
        }
        return Ok((i.to_string(), "with.image".into()));
    }
    for key in ["ref", "image"] {
        for up in ctx.needs() {
            if let Some((_, v)) = up.outputs.iter().find(|(k, _)| k == key) {
                if !v.trim().is_empty() {
                    return Ok((
                        v.trim().to_string(),
                        format!("output `{key}` of stage {:?}", up.stage),
                    ));
                }
            }
        }
    }
    Err(cfg_err(
        "image",
        "not given and no stage in `needs` has a `ref` or `image` output",
    ))
}

/// Fills `{image}`, `{environment}`... in `template`; `{{` and `}}` are
/// literal braces. Unknown placeholders and unclosed braces are errors.
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("a lone `}` (write `}}` for a literal brace)".into());
        }
        let Some(close) = tail.find('}') else {
            return Err("a `{` without its `}` (write `{{` for a literal brace)".into());
        };
        let name = &tail[1..close];
        match vars.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None => {
                return Err(format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ))
            }
        }
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses and checks the `with` table.
pub fn load(ctx: &Context) -> Result<Config, StageError> {
    let with: With = ctx.config_with_defaults()?;
    from_with(&with, ctx)
}

fn no_blanks(key: &str, v: &str) -> Result<String, StageError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(cfg_err(key, "empty"));
    }
    if v.contains(char::is_whitespace) {
        return Err(cfg_err(key, format!("{v:?} contains whitespace")));
    }
    Ok(v.to_string())
}

/// Checks a parsed `with` table.
pub fn from_with(with: &With, ctx: &Context) -> Result<Config, StageError> {
    let repo = no_blanks("repo", &with.repo)?;
    let branch = match &with.branch {
        Some(b) => Some(no_blanks("branch", b)?),
        None => None,
    };
    if with.paths.is_empty() {
        return Err(cfg_err("paths", "empty: give at least one glob"));
    }
    let mut paths = Vec::new();
    for (i, p) in with.paths.iter().enumerate() {
        let p = p.trim();
        if p.is_empty() {
            return Err(cfg_err(&format!("paths[{i}]"), "empty"));
        }
        if !paths.iter().any(|q| q == p) {
            paths.push(p.to_string());
        }
    }
    let (image, origin) = resolve_image(with, ctx)?;
    let image_ref = reference::parse(&image).ok_or_else(|| {
        cfg_err(
            "image",
            format!("{image:?} ({origin}) is not an image reference (repository[:tag][@digest])"),
        )
    })?;
    let repository = match &with.match_repository {
        None => image_ref.repository.clone(),
        Some(m) => {
            let m = m.trim();
            match reference::parse(m) {
                Some(r) if r.tag.is_none() && r.digest.is_none() => m.to_string(),
                Some(_) => {
                    return Err(cfg_err(
                        "match",
                        format!("{m:?} must be a repository, without :tag or @digest"),
                    ))
                }
                None => return Err(cfg_err("match", format!("{m:?} is not a repository"))),
            }
        }
    };
    if with.retries > MAX_RETRIES {
        return Err(cfg_err(
            "retries",
            format!("{} is more than {MAX_RETRIES}", with.retries),
        ));
    }
    let template = with.message.as_str();
    if template.trim().is_empty() {
        return Err(cfg_err("message", "empty"));
    }
    let run = ctx.run();
    let environment = run
        .environment
        .clone()
        .or_else(|| branch.clone())
        .unwrap_or_else(|| "default".into());
    let vars = [
        ("image", image.clone()),
        ("environment", environment),
        ("pipeline", run.pipeline.clone()),
        ("build", run.build_number.to_string()),
        ("run", run.run_id.clone()),
        ("stage", ctx.stage().to_string()),
    ];
    let message = render(template, &vars).map_err(|e| cfg_err("message", e))?;
    Ok(Config {
        repo,
        branch,
        paths,
        image,
        image_ref,
        repository,
        retries: with.retries,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ctx(json: &str, needs: Vec<(&str, Vec<(&str, &str)>)>) -> Context {
        // With the keys `describe()` declares, as the export glue does.
        Context::for_test_with_needs("deploy-dev", json, needs).with_keys(crate::keys())
    }

    fn err(json: &str) -> String {
        match load(&ctx(json, vec![])) {
            Err(StageError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = load(&ctx(
            r#"{"repo":"deploy-config","paths":["apps/*.yaml"],"image":"127.0.0.1:5000/app:1"}"#,
            vec![],
        ))
        .unwrap();
        assert_eq!(c.repo, "deploy-config");
        assert_eq!(c.branch, None);
        assert_eq!(c.repo_label(), "deploy-config");
        assert_eq!(c.paths, vec!["apps/*.yaml".to_string()]);
        assert_eq!(c.image, "127.0.0.1:5000/app:1");
        assert_eq!(c.repository, "127.0.0.1:5000/app");
        assert_eq!(c.retries, 3);
        assert_eq!(
            c.message,
            "deploy 127.0.0.1:5000/app:1 to default (pipeline test #1, run test-run)"
        );
    }

    #[test]
    fn every_key() {
        let c = load(&ctx(
            r#"{"repo":"cfg","branch":"env/dev","paths":["a/*.yaml","b/**/*.yml","a/*.yaml"],
               "image":"r.io/team/app:2","match":"r.io/team/app","retries":0,
               "message":"{stage}: {image} → {environment} ({pipeline} {build} {run}) {{x}}"}"#,
            vec![],
        ))
        .unwrap();
        assert_eq!(c.branch.as_deref(), Some("env/dev"));
        assert_eq!(c.repo_label(), "cfg@env/dev");
        assert_eq!(c.paths, vec!["a/*.yaml".to_string(), "b/**/*.yml".into()]);
        assert_eq!(c.retries, 0);
        assert_eq!(
            c.message,
            "deploy-dev: r.io/team/app:2 → env/dev (test 1 test-run) {x}"
        );
    }

    #[test]
    fn environment_of_the_run_wins() {
        let mut raw = ctx(
            r#"{"repo":"cfg","branch":"main","paths":["a"],"image":"a:1"}"#,
            vec![],
        )
        .into_raw();
        raw.run.environment = Some("dev".into());
        let c = load(&Context::new(raw).with_keys(crate::keys())).unwrap();
        assert!(c.message.starts_with("deploy a:1 to dev "), "{}", c.message);
    }

    #[test]
    fn image_from_needs_prefers_ref() {
        let json = r#"{"repo":"cfg","paths":["a"]}"#;
        let r = format!("127.0.0.1:5000/app@{D}");
        let c = load(&ctx(
            json,
            vec![
                ("build", vec![("image", "local/app:build-1")]),
                ("push", vec![("image", "127.0.0.1:5000/app"), ("ref", &r)]),
            ],
        ))
        .unwrap();
        assert_eq!(c.image, r);
        assert_eq!(c.repository, "127.0.0.1:5000/app");
        assert_eq!(c.image_ref.digest.as_deref(), Some(D));
        let c = load(&ctx(json, vec![("build", vec![("image", "local/app:7")])])).unwrap();
        assert_eq!(c.image, "local/app:7");
        assert_eq!(c.repository, "local/app");
        // An explicit image (a rollback) wins over needs.
        let c = load(&ctx(
            r#"{"repo":"cfg","paths":["a"],"image":"127.0.0.1:5000/app:old"}"#,
            vec![("push", vec![("ref", &r)])],
        ))
        .unwrap();
        assert_eq!(c.image, "127.0.0.1:5000/app:old");
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            err(r#"{"paths":["a"],"image":"a:1"}"#),
            "with.repo: required key is missing"
        );
        assert_eq!(
            err(r#"{"repo":"c","image":"a:1"}"#),
            "with.paths: required key is missing"
        );
        assert!(err(r#"{"repo":"c","paths":"a","image":"a:1"}"#)
            .starts_with("with.paths: invalid type"));
        assert!(err(r#"{"repo":"c","paths":[],"image":"a:1"}"#).starts_with("with.paths: empty"));
        assert_eq!(
            err(r#"{"repo":"c","paths":["a"," "],"image":"a:1"}"#),
            "with.paths[1]: empty"
        );
        assert_eq!(
            err(r#"{"repo":" ","paths":["a"],"image":"a:1"}"#),
            "with.repo: empty"
        );
        assert!(
            err(r#"{"repo":"c","branch":"a b","paths":["a"],"image":"a:1"}"#)
                .starts_with("with.branch:")
        );
        assert!(err(r#"{"repo":"c","paths":["a"]}"#).starts_with("with.image: not given"));
        assert_eq!(
            err(r#"{"repo":"c","paths":["a"],"image":""}"#),
            "with.image: empty"
        );
        let m = err(r#"{"repo":"c","paths":["a"],"image":"a b:1"}"#);
        assert!(
            m.starts_with("with.image: \"a b:1\" (with.image) is not an image reference"),
            "{m}"
        );
        let m = load(&ctx(
            r#"{"repo":"c","paths":["a"]}"#,
            vec![("push", vec![("ref", "not valid!")])],
        ))
        .unwrap_err();
        assert!(
            matches!(&m, StageError::Config(s) if s.contains("output `ref` of stage \"push\"")),
            "{m:?}"
        );
        assert!(
            err(r#"{"repo":"c","paths":["a"],"image":"a:1","match":"a:1"}"#)
                .starts_with("with.match: \"a:1\" must be a repository")
        );
        assert!(
            err(r#"{"repo":"c","paths":["a"],"image":"a:1","match":"{x}"}"#)
                .starts_with("with.match:")
        );
        assert!(
            err(r#"{"repo":"c","paths":["a"],"image":"a:1","retries":21}"#)
                .starts_with("with.retries: 21 is more than 20")
        );
        assert!(
            err(r#"{"repo":"c","paths":["a"],"image":"a:1","retries":-1}"#)
                .starts_with("with.retries: invalid value")
        );
        assert!(
            err(r#"{"repo":"c","paths":["a"],"image":"a:1","message":"x {nope}"}"#)
                .starts_with("with.message: unknown placeholder {nope}")
        );
        assert!(
            err(r#"{"repo":"c","paths":["a"],"image":"a:1","message":"x {image"}"#)
                .starts_with("with.message: a `{` without")
        );
        assert_eq!(
            err(r#"{"repo":"c","paths":["a"],"image":"a:1","message":"  "}"#),
            "with.message: empty"
        );
        assert!(
            err(r#"{"repo":"c","paths":["a"],"image":"a:1","colour":1}"#)
                .starts_with("with.colour: unknown field")
        );
    }

    #[test]
    fn render_placeholders() {
        let vars = [("a", "1".to_string()), ("b", "2".to_string())];
        assert_eq!(render("{a}-{b}-{a}", &vars).unwrap(), "1-2-1");
        assert_eq!(render("{{a}} }} {{", &vars).unwrap(), "{a} } {");
        assert!(render("}", &vars).is_err());
        assert!(render("{c}", &vars).is_err());
        assert_eq!(render("plain", &vars).unwrap(), "plain");
    }
}
