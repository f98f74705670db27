//! `host serve`'s configuration file: where it listens, the webhook secret,
//! and for each repository where to fetch it from, which pipeline file in
//! the checkout to run, and which events start a run.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! concurrency = 2
//! webhook-secret = { env = "HOST_WEBHOOK_SECRET" }
//! replay-window = "7d"                 # a delivery meaning the same as one seen since is a duplicate
//!
//! [[repository]]
//! name = "acme/app"                    # repository.full_name in deliveries
//! url = "file:///srv/git/app.git"      # fetched from here, never from the payload
//! pipeline = "pipeline.toml"           # in the checkout
//! concurrency = { cancel-in-progress = true }
//!
//! [[repository.trigger]]
//! event = "push"
//! branch = ["main", "develop"]
//! ```
//!
//! Errors name `file:line:col` like the pipeline file's.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_spanned::Spanned;

use crate::pipeline::parse::{decode_toml, Source};
use crate::pipeline::{parse_duration, parse_size, Diagnostic, PipelineError, When};

type Str = Spanned<String>;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub file: PathBuf,
    pub listen: SocketAddr,
    /// Runs at once.
    pub concurrency: usize,
    /// Largest webhook body accepted (GitHub caps payloads at 25 MB).
    pub max_body: usize,
    pub webhook_secret: SecretRef,
    /// Where runs' checkouts go (default: `<state-dir>/workspaces`).
    pub workspaces: Option<PathBuf>,
    pub keep_workspaces: bool,
    /// Files that `{ file = "…" }` secrets of server runs are read from
    /// (relative to it, never outside). Without it such secrets are refused:
    /// a pipeline file comes from the repository, and anyone who can push
    /// must not read the server's files through it.
    pub secrets_dir: Option<PathBuf>,
    /// Directories of plugins the operator installed: a repository's
    /// pipeline may name a component beneath one of them by absolute path.
    /// Every other plugin path must stay inside the checkout.
    pub plugin_dirs: Vec<PathBuf>,
    /// Base of the links put into runs (`{public-url}/runs/ID`).
    pub public_url: Option<String>,
    /// How long a delivery's meaning (repository, event, ref and commit;
    /// an upload's source and archive digest) is remembered: one asking
    /// for the same again within it is a duplicate, whatever its delivery
    /// id (GitHub signs no timestamp, so a captured body can be re-sent).
    pub replay_window: Duration,
    pub repositories: Vec<Repository>,
    /// `[[upload]]`: sources that arrive as archives (`POST /upload/NAME`).
    pub uploads: Vec<Upload>,
    /// `[cluster]`: runs go to agents over NATS and run state is kept in
    /// PostgreSQL; without it the server runs everything itself (SQLite).
    pub cluster: Option<crate::cluster::config::ClusterSettings>,
    /// `[github]`: commit statuses for the runs deliveries start.
    pub github: Option<crate::serve::forge::ForgeSettings>,
    /// `[[user]]`: who may act on runs (see [`crate::serve::access`]).
    pub users: Vec<crate::serve::access::User>,
    /// `[server] read`: whether reading runs needs signing in.
    pub read: crate::serve::access::Read,
}

/// A source that arrives as an uploaded archive, the way a bucket-triggered
/// pipeline gets its source: `POST /upload/NAME`, signed like a webhook.
#[derive(Debug, Clone)]
pub struct Upload {
    pub name: String,
    /// The pipeline file, relative to the archive's root.
    pub pipeline: String,
    /// The environment its runs deploy to, if any.
    pub environment: Option<String>,
    /// Largest archive accepted.
    pub max_size: u64,
}

pub const DEFAULT_MAX_UPLOAD: u64 = 100 << 20;

/// Where the server reads a secret of its own.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    pub fn read(&self) -> anyhow::Result<String> {
        let v = match self {
            SecretRef::Env(var) => std::env::var(var)
                .map_err(|_| anyhow::anyhow!("environment variable `{var}` is not set"))?,
            SecretRef::File(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading the secret file {}", p.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        };
        if v.is_empty() {
            anyhow::bail!("the value is empty");
        }
        Ok(v)
    }
}

#[derive(Debug, Clone)]
pub struct Repository {
    /// `owner/name`, as deliveries name it (`repository.full_name`).
    pub name: String,
    /// Where the server fetches commits from.
    pub url: String,
    /// The pipeline file, relative to the checkout's root.
    pub pipeline: String,
    /// Template of the concurrency group: `{repository}`, `{ref}` and
    /// `{event}` are replaced; empty means no group.
    pub group: String,
    pub cancel_in_progress: bool,
    pub triggers: Vec<TriggerRule>,
    /// On a cluster: what an agent must offer to run this repository's
    /// runs (the pipeline file may require more).
    pub labels: Vec<String>,
}

/// One `[[repository.trigger]]`: which deliveries start a run.
#[derive(Debug, Clone)]
pub struct TriggerRule {
    /// `push` or `pull_request`.
    pub event: String,
    /// Pushes: branch patterns; pull requests: base-branch patterns.
    /// Tag patterns (pushes of tags). Same glob rules as `when`.
    pub when: When,
    /// Pull request actions (default: opened, synchronize, reopened).
    pub actions: Vec<String>,
    /// The environment runs deploy to (default: the pipeline's
    /// `[environments]` by branch or tag).
    pub environment: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY: usize = 5 << 20;
pub const DEFAULT_GROUP: &str = "{repository}/{ref}";
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Longest `replay-window` accepted.
pub const MAX_REPLAY_WINDOW: Duration = Duration::from_secs(365 * 24 * 60 * 60);
const DEFAULT_ACTIONS: &[&str] = &["opened", "synchronize", "reopened"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    server: Option<Spanned<RawServer>>,
    #[serde(default)]
    repository: Vec<Spanned<RawRepository>>,
    #[serde(default)]
    upload: Vec<Spanned<RawUpload>>,
    cluster: Option<Spanned<crate::cluster::config::RawCluster>>,
    github: Option<Spanned<RawGithub>>,
    #[serde(default)]
    user: Vec<Spanned<crate::serve::access::users::RawUser>>,
    approvers: Option<Spanned<std::collections::BTreeMap<String, Vec<Str>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGithub {
    api_url: Option<Str>,
    token: Option<Spanned<toml::Value>>,
    context: Option<Str>,
    per_stage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUpload {
    name: Option<Str>,
    pipeline: Option<Str>,
    environment: Option<Str>,
    max_size: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawServer {
    listen: Option<Str>,
    concurrency: Option<Spanned<i64>>,
    max_body: Option<Spanned<toml::Value>>,
    /// Secrets are decoded by hand (`secret_ref`): serde's error would
    /// quote a value written inline.
    webhook_secret: Option<Spanned<toml::Value>>,
    workspaces: Option<Str>,
    keep_workspaces: Option<bool>,
    secrets_dir: Option<Str>,
    #[serde(default)]
    plugin_dirs: Vec<Str>,
    public_url: Option<Str>,
    replay_window: Option<Spanned<toml::Value>>,
    read: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRepository {
    name: Option<Str>,
    url: Option<Str>,
    pipeline: Option<Str>,
    concurrency: Option<Spanned<RawConcurrency>>,
    #[serde(default)]
    trigger: Vec<Spanned<RawTrigger>>,
    #[serde(default)]
    labels: Vec<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConcurrency {
    group: Option<Str>,
    cancel_in_progress: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    event: Option<Str>,
    branch: Option<Vec<Str>>,
    tag: Option<Vec<Str>>,
    actions: Option<Vec<Str>>,
    environment: Option<Str>,
}

/// Read and check a server configuration file.
pub fn load(path: &Path) -> Result<ServerConfig, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PipelineError::new(vec![Diagnostic {
            location: Source::new(path, "").location(0),
            message: format!("cannot read server configuration: {e}"),
        }])
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<ServerConfig, PipelineError> {
    let src = Source::new(path, text);
    let raw: RawFile = decode_toml(&src).map_err(|d| PipelineError::new(vec![d]))?;
    let mut diags = Vec::new();
    let cfg = build(&src, raw, &mut diags);
    if diags.is_empty() {
        Ok(cfg)
    } else {
        Err(PipelineError::new(diags))
    }
}

fn build(src: &Source<'_>, raw: RawFile, diags: &mut Vec<Diagnostic>) -> ServerConfig {
    let mut cfg = ServerConfig {
        file: src.file.clone(),
        listen: DEFAULT_LISTEN.parse().expect("default address"),
        concurrency: 2,
        max_body: DEFAULT_MAX_BODY,
        webhook_secret: SecretRef::Env(String::new()),
        workspaces: None,
        keep_workspaces: false,
        secrets_dir: None,
        plugin_dirs: Vec::new(),
        public_url: None,
        replay_window: DEFAULT_REPLAY_WINDOW,
        repositories: Vec::new(),
        uploads: Vec::new(),
        cluster: None,
        github: None,
        users: Vec::new(),
        read: crate::serve::access::Read::Public,
    };
    let Some(server) = raw.server else {
        diags.push(src.diag(
            0..0,
            "missing [server] table (with at least `webhook-secret = { env = \"VAR\" }`)",
        ));
        return cfg;
    };
    let server_span = server.span();
    server_settings(src, server, &mut cfg, diags);
    let dir = src.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    if let Some(c) = raw.cluster {
        cfg.cluster = crate::cluster::config::cluster(src, c, &dir, diags);
    }
    if let Some(g) = raw.github {
        cfg.github = github(src, g, &dir, diags);
    }
    cfg.users = crate::serve::access::users::users(src, raw.user, diags);
    if let Some(a) = raw.approvers {
        crate::serve::access::users::approvers(src, a, &mut cfg.users, diags);
    }
    if cfg.read == crate::serve::access::Read::SignedIn
        && !cfg
            .users
            .iter()
            .any(|u| u.password.is_some() || !u.token_sha256.is_empty())
    {
        diags.push(src.diag(
            server_span.clone(),
            "server.read = \"signed-in\", but no [[user]] has a password or a token: nobody could read",
        ));
    }
    if raw.repository.is_empty() && raw.upload.is_empty() {
        diags.push(src.diag(
            server_span,
            "no [[repository]]: add one with `name`, `url` and at least one [[repository.trigger]] (or an [[upload]] source)",
        ));
    }
    for u in raw.upload {
        let span = u.span();
        let Some(upload) = upload(src, u.into_inner(), span.clone(), diags) else {
            continue;
        };
        if cfg.uploads.iter().any(|o| o.name == upload.name) {
            diags.push(src.diag(
                span,
                format!("upload `{}` is configured twice", upload.name),
            ));
            continue;
        }
        cfg.uploads.push(upload);
    }
    for r in raw.repository {
        let span = r.span();
        if let Some(repo) = repository(src, span.clone(), r.into_inner(), diags) {
            if cfg.repositories.iter().any(|o| o.name == repo.name) {
                diags.push(src.diag(
                    span,
                    format!("repository `{}` is configured twice", repo.name),
                ));
            } else {
                cfg.repositories.push(repo);
            }
        }
    }
    cfg
}

/// The `[server]` table, onto `cfg`'s defaults.
fn server_settings(
    src: &Source<'_>,
    server: Spanned<RawServer>,
    cfg: &mut ServerConfig,
    diags: &mut Vec<Diagnostic>,
) {
    // Paths in the file are relative to the file.
    let dir = src.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let rel = |p: &str| dir.join(p);
    let server_span = server.span();
    let server = server.into_inner();
    if let Some(l) = server.listen {
        match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => cfg.listen = a,
            Err(_) => diags.push(src.diag(
                l.span(),
                format!(
                    "server.listen: `{}` is not an address like `127.0.0.1:8080`",
                    l.get_ref()
                ),
            )),
        }
    }
    if let Some(c) = server.concurrency {
        match *c.get_ref() {
            n @ 1..=64 => cfg.concurrency = n as usize,
            n => diags.push(src.diag(
                c.span(),
                format!("server.concurrency: {n} is out of range (1–64 runs at once)"),
            )),
        }
    }
    if let Some(m) = server.max_body {
        let expected = "expected a size string like \"5MiB\"";
        if let Some(n) = text_value(src, &m, "server.max-body", expected, parse_size, diags) {
            cfg.max_body = n as usize;
        }
    }
    if let Some(s) = webhook_secret(src, server_span, server.webhook_secret, &dir, diags) {
        cfg.webhook_secret = s;
    }
    cfg.workspaces = server.workspaces.map(|w| rel(w.get_ref()));
    cfg.keep_workspaces = server.keep_workspaces.unwrap_or(false);
    cfg.secrets_dir = server.secrets_dir.map(|w| rel(w.get_ref()));
    cfg.plugin_dirs = server
        .plugin_dirs
        .iter()
        .map(|d| rel(d.get_ref()))
        .collect();
    if let Some(u) = server.public_url {
        match url::Url::parse(u.get_ref()) {
            Ok(p) if matches!(p.scheme(), "http" | "https") => {
                cfg.public_url = Some(u.get_ref().trim_end_matches('/').to_string())
            }
            _ => diags.push(src.diag(
                u.span(),
                format!("server.public-url: `{}` is not an http(s) URL", u.get_ref()),
            )),
        }
    }
    if let Some(r) = server.read {
        use crate::serve::access::Read;
        match r.get_ref().as_str() {
            "public" => cfg.read = Read::Public,
            "signed-in" => cfg.read = Read::SignedIn,
            other => diags.push(src.diag(
                r.span(),
                format!("server.read: `{other}` is neither \"public\" nor \"signed-in\""),
            )),
        }
    }
    if let Some(w) = server.replay_window {
        let expected = "expected a duration string like \"7d\" or \"1d12h\"";
        let key = "server.replay-window";
        if let Some(d) = text_value(src, &w, key, expected, parse_window, diags) {
            cfg.replay_window = d;
        }
    }
}

// One line, so that the message's braces never sit outside a string literal.
const WEBHOOK_SECRET_REQUIRED: &str = concat!(
    "server.webhook-secret is required: every delivery's X-Hub-Signature-256 is ",
    "checked against it (e.g. `webhook-secret = { env = \"HOST_WEBHOOK_SECRET\" }`)",
);

/// `webhook-secret`, required; `None` after a diagnostic.
fn webhook_secret(
    src: &Source<'_>,
    server_span: std::ops::Range<usize>,
    secret: Option<Spanned<toml::Value>>,
    dir: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Option<SecretRef> {
    let Some(s) = secret else {
        diags.push(src.diag(server_span, WEBHOOK_SECRET_REQUIRED));
        return None;
    };
    secret_ref(src, "server.webhook-secret", s, dir, diags)
}

/// `KEY = { env = "VAR" }` or `{ file = "path" }` (relative to the
/// configuration file's folder `dir`); `None` after a diagnostic. Anything
/// else is refused without being repeated: it may be the secret itself.
pub(crate) fn secret_ref(
    src: &Source<'_>,
    key: &str,
    v: Spanned<toml::Value>,
    dir: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Option<SecretRef> {
    let span = v.span();
    let refuse = |diags: &mut Vec<Diagnostic>, why: &str| {
        diags.push(src.diag(span.clone(), format!("{key}: {why}")));
        None
    };
    let toml::Value::Table(t) = v.into_inner() else {
        return refuse(
            diags,
            "not written in this file: say where to read it, `{ env = \"VAR\" }` or `{ file = \"path\" }`",
        );
    };
    let text = |k: &str| t.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
    let only_known = t.keys().all(|k| k == "env" || k == "file");
    match (text("env"), text("file"), only_known) {
        (Some(v), None, true) => Some(SecretRef::Env(v.to_string())),
        (None, Some(f), true) => Some(SecretRef::File(dir.join(f))),
        _ => refuse(
            diags,
            "give exactly one of `env = \"VAR\"` or `file = \"path\"`",
        ),
    }
}

/// `[github]`: where statuses go, with which token and context.
fn github(
    src: &Source<'_>,
    raw: Spanned<RawGithub>,
    dir: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Option<crate::serve::forge::ForgeSettings> {
    use crate::serve::forge::{ForgeSettings, DEFAULT_API_URL, DEFAULT_CONTEXT};
    let span = raw.span();
    let g = raw.into_inner();
    let api_url = match g.api_url {
        None => DEFAULT_API_URL.to_string(),
        Some(u) => match url::Url::parse(u.get_ref()) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && p.password().is_none() => {
                u.get_ref().trim_end_matches('/').to_string()
            }
            _ => {
                diags.push(src.diag(
                    u.span(),
                    format!("github.api-url: `{}` is not an http(s) URL", u.get_ref()),
                ));
                return None;
            }
        },
    };
    let Some(token) = g.token else {
        diags.push(src.diag(
            span,
            "github.token is required: a token that may write commit statuses \
             (e.g. `token = { env = \"GITHUB_TOKEN\" }`)",
        ));
        return None;
    };
    let token = secret_ref(src, "github.token", token, dir, diags)?;
    let context = match g.context {
        Some(c) if c.get_ref().trim().is_empty() || c.get_ref().len() > 100 => {
            diags.push(src.diag(c.span(), "github.context: 1 to 100 characters"));
            return None;
        }
        Some(c) => c.into_inner(),
        None => DEFAULT_CONTEXT.to_string(),
    };
    Some(ForgeSettings {
        api_url,
        token,
        context,
        per_stage: g.per_stage.unwrap_or(false),
    })
}

/// A value written as a string and parsed by `parse` (sizes, durations);
/// `None` after a diagnostic naming `key`.
fn text_value<T, E: std::fmt::Display>(
    src: &Source<'_>,
    v: &Spanned<toml::Value>,
    key: &str,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    match v.get_ref().as_str().map(parse) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            diags.push(src.diag(v.span(), format!("{key}: {e}")));
            None
        }
        None => {
            diags.push(src.diag(v.span(), format!("{key}: {expected}")));
            None
        }
    }
}

/// One `[[upload]]` source; `None` after a diagnostic on its name.
fn upload(
    src: &Source<'_>,
    u: RawUpload,
    span: std::ops::Range<usize>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Upload> {
    let name = required(src, span, u.name, "upload.name", diags)?;
    let name_ok = name
        .get_ref()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        diags.push(src.diag(
            name.span(),
            format!(
                "upload.name `{}`: letters, digits, `-`, `_` and `.` only (it is a URL path part)",
                name.get_ref()
            ),
        ));
        return None;
    }
    let expected = "expected a size string like \"50MiB\"";
    let max_size = u
        .max_size
        .and_then(|m| text_value(src, &m, "upload.max-size", expected, parse_size, diags))
        .unwrap_or(DEFAULT_MAX_UPLOAD);
    Some(Upload {
        name: name.into_inner(),
        pipeline: u
            .pipeline
            .map(|p| p.into_inner())
            .unwrap_or_else(|| "pipeline.toml".into()),
        environment: u.environment.map(|e| e.into_inner()),
        max_size,
    })
}

/// `"7d"`, `"1d12h"`, `"12h"`, `"90m"`: whole days first, if any, then the
/// rest as the pipeline's durations are written ([`parse_duration`]: `h`,
/// `m`, `s`, `ms`); more than zero, at most [`MAX_REPLAY_WINDOW`].
pub fn parse_window(s: &str) -> anyhow::Result<Duration> {
    let text = s.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (days, rest) = match text[digits..].strip_prefix('d') {
        Some(rest) if digits > 0 => {
            let n: u64 = text[..digits]
                .parse()
                .map_err(|_| anyhow::anyhow!("duration {s:?} is too long; the maximum is 365d"))?;
            (n, rest)
        }
        _ => (0, text),
    };
    let rest = if rest.is_empty() {
        Duration::ZERO
    } else {
        parse_duration(rest).map_err(|e| {
            anyhow::anyhow!("{e} (a replay window may start with whole days: \"7d\", \"1d12h\")")
        })?
    };
    let total = Duration::from_secs(days.saturating_mul(24 * 60 * 60)).saturating_add(rest);
    if total.is_zero() {
        anyhow::bail!("duration {s:?} must be greater than zero");
    }
    if total > MAX_REPLAY_WINDOW {
        anyhow::bail!("duration {s:?} is too long; the maximum is 365d");
    }
    Ok(total)
}

pub(crate) fn required(
    src: &Source<'_>,
    span: std::ops::Range<usize>,
    v: Option<Str>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Str> {
    match v {
        Some(v) if !v.get_ref().trim().is_empty() => Some(v),
        Some(v) => {
            diags.push(src.diag(v.span(), format!("{what} must not be empty")));
            None
        }
        None => {
            diags.push(src.diag(span, format!("{what} is required")));
            None
        }
    }
}

fn repository(
    src: &Source<'_>,
    span: std::ops::Range<usize>,
    r: RawRepository,
    diags: &mut Vec<Diagnostic>,
) -> Option<Repository> {
    let name = required(src, span.clone(), r.name, "repository.name", diags);
    let url = required(src, span.clone(), r.url, "repository.url", diags);
    let label = name.as_ref().map_or("repository".to_string(), |n| {
        format!("repository `{}`", n.get_ref())
    });
    if let Some(n) = &name {
        check_repository_name(src, n, diags);
    }
    if let Some(u) = &url {
        check_repository_url(src, &label, u, diags);
    }
    let pipeline = r
        .pipeline
        .map(|p| checkout_pipeline(src, &label, p, diags))
        .unwrap_or_else(|| "pipeline.toml".into());
    let (group, cancel_in_progress) = match r.concurrency {
        Some(c) => concurrency(src, &label, c.into_inner(), diags),
        None => (DEFAULT_GROUP.to_string(), false),
    };
    if r.trigger.is_empty() {
        diags.push(src.diag(
            span.clone(),
            format!(
                "{label} has no [[repository.trigger]]: nothing would start a run \
                 (e.g. `event = \"push\"` with `branch = [\"main\"]`)"
            ),
        ));
    }
    let triggers = r
        .trigger
        .into_iter()
        .filter_map(|t| trigger(src, &label, t, diags))
        .collect();
    let mut labels = Vec::new();
    for l in r.labels {
        if crate::cluster::protocol::valid_label(l.get_ref()) {
            labels.push(l.into_inner());
        } else {
            diags.push(src.diag(
                l.span(),
                format!(
                    "repository.labels: `{}` is not a label (a-z, 0-9, `-`, `_`)",
                    l.get_ref()
                ),
            ));
        }
    }
    Some(Repository {
        name: name?.into_inner(),
        url: url?.into_inner(),
        pipeline,
        group,
        cancel_in_progress,
        triggers,
        labels,
    })
}

fn check_repository_name(src: &Source<'_>, n: &Str, diags: &mut Vec<Diagnostic>) {
    if !n.get_ref().contains('/') {
        diags.push(src.diag(
            n.span(),
            format!(
                "repository.name `{}` must be `owner/name`, as GitHub's deliveries name it",
                n.get_ref()
            ),
        ));
    }
}

fn check_repository_url(src: &Source<'_>, label: &str, u: &Str, diags: &mut Vec<Diagnostic>) {
    let ok = match url::Url::parse(u.get_ref()) {
        Ok(p) => matches!(p.scheme(), "file" | "http" | "https" | "ssh" | "git"),
        // A plain local path is a local repository.
        Err(_) => Path::new(u.get_ref()).is_absolute(),
    };
    if !ok {
        diags.push(src.diag(
            u.span(),
            format!(
                "{label}: url `{}` is not a git URL (file://, https://, ssh://) or an absolute path",
                u.get_ref()
            ),
        ));
    }
}

/// The pipeline file's path, which must stay inside the checkout (the
/// diagnostic is given, and the path kept, when it does not).
fn checkout_pipeline(src: &Source<'_>, label: &str, p: Str, diags: &mut Vec<Diagnostic>) -> String {
    let v = p.get_ref();
    if v.is_empty()
        || Path::new(v).is_absolute()
        || Path::new(v)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        diags.push(src.diag(
            p.span(),
            format!("{label}: pipeline `{v}` must be a relative path inside the checkout"),
        ));
    }
    v.clone()
}

/// `concurrency = { group = "…", cancel-in-progress = … }`: the group
/// template (only known placeholders) and whether a new run cancels the old.
fn concurrency(
    src: &Source<'_>,
    label: &str,
    c: RawConcurrency,
    diags: &mut Vec<Diagnostic>,
) -> (String, bool) {
    let mut group = DEFAULT_GROUP.to_string();
    if let Some(g) = c.group {
        let bad: Vec<&str> = placeholders(g.get_ref())
            .filter(|p| !matches!(*p, "repository" | "ref" | "event"))
            .collect();
        if !bad.is_empty() {
            diags.push(src.diag(
                g.span(),
                format!(
                    "{label}: concurrency.group uses unknown placeholder(s) {}; \
                     known: {{repository}}, {{ref}}, {{event}}",
                    bad.iter()
                        .map(|b| format!("{{{b}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        group = g.into_inner();
    }
    (group, c.cancel_in_progress.unwrap_or(false))
}

fn placeholders(s: &str) -> impl Iterator<Item = &str> {
    s.split('{')
        .skip(1)
        .filter_map(|part| part.split_once('}').map(|(p, _)| p))
}

fn globs(
    src: &Source<'_>,
    label: &str,
    key: &str,
    v: Option<Vec<Str>>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<String> {
    v.unwrap_or_default()
        .into_iter()
        .filter_map(|p| match crate::pipeline::when_compile(p.get_ref()) {
            Ok(_) => Some(p.into_inner()),
            Err(e) => {
                diags.push(src.diag(
                    p.span(),
                    format!("{label}: trigger.{key}: bad pattern `{}`: {e}", p.get_ref()),
                ));
                None
            }
        })
        .collect()
}

fn trigger(
    src: &Source<'_>,
    label: &str,
    t: Spanned<RawTrigger>,
    diags: &mut Vec<Diagnostic>,
) -> Option<TriggerRule> {
    let span = t.span();
    let t = t.into_inner();
    let event = required(src, span.clone(), t.event, "trigger.event", diags)?;
    let branch = globs(src, label, "branch", t.branch, diags);
    let tag = globs(src, label, "tag", t.tag, diags);
    let mut actions: Vec<String> = Vec::new();
    match event.get_ref().as_str() {
        "push" => {
            if let Some(a) = t.actions.as_ref().and_then(|a| a.first()) {
                diags.push(src.diag(
                    a.span(),
                    format!("{label}: trigger.actions is for `pull_request` triggers"),
                ));
            }
            if branch.is_empty() && tag.is_empty() {
                diags.push(src.diag(
                    span,
                    format!(
                        "{label}: a push trigger needs `branch` or `tag` patterns \
                         (`branch = [\"**\"]` for every branch)"
                    ),
                ));
            }
        }
        "pull_request" => {
            if !tag.is_empty() {
                diags.push(src.diag(
                    span.clone(),
                    format!("{label}: pull requests have no tag; use `branch` (the base branch)"),
                ));
            }
            actions = match t.actions {
                Some(a) => a.into_iter().map(|a| a.into_inner()).collect(),
                None => DEFAULT_ACTIONS.iter().map(|a| a.to_string()).collect(),
            };
        }
        other => {
            diags.push(src.diag(
                event.span(),
                format!(
                    "{label}: trigger.event `{other}` is not handled; use `push` or `pull_request`"
                ),
            ));
            return None;
        }
    }
    Some(TriggerRule {
        event: event.into_inner(),
        when: When {
            branch,
            tag,
            event: Vec::new(),
            always: false,
        },
        actions,
        environment: t.environment.map(|e| e.into_inner()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        parse(Path::new("server.toml"), text)
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
webhook-secret = { env = "SECRET" }
max-body = "1MiB"

[[repository]]
name = "acme/app"
url = "file:///srv/app.git"
concurrency = { cancel-in-progress = true }

[[repository.trigger]]
event = "push"
branch = ["main"]
tag = []

[[repository.trigger]]
event = "pull_request"
branch = ["main"]
"#;

    #[test]
    fn a_good_file_parses() {
        let c = parse(Path::new("server.toml"), GOOD).unwrap();
        assert_eq!(c.max_body, 1 << 20);
        assert_eq!(c.webhook_secret, SecretRef::Env("SECRET".into()));
        let r = &c.repositories[0];
        assert!(r.cancel_in_progress);
        assert_eq!(r.group, DEFAULT_GROUP);
        assert_eq!(r.pipeline, "pipeline.toml");
        assert_eq!(r.triggers[1].actions, DEFAULT_ACTIONS);
    }

    #[test]
    fn the_example_in_pipelines_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/server.toml");
        let c = load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.repositories[0].triggers.len(), 3);
        assert_eq!(
            c.repositories[0].triggers[1].environment.as_deref(),
            Some("production")
        );
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = errors(&GOOD.replace("webhook-secret = { env = \"SECRET\" }\n", ""));
        assert!(
            e.contains("server.toml:2:1: server.webhook-secret is required"),
            "{e}"
        );
        let e = errors(&GOOD.replace("event = \"push\"", "event = \"deploy\""));
        assert!(
            e.contains("server.toml:13:9: repository `acme/app`: trigger.event `deploy`"),
            "{e}"
        );
        let e = errors(&GOOD.replace("listen = \"127.0.0.1:0\"", "listen = \"everywhere\""));
        assert!(e.contains(":3:10: server.listen"), "{e}");
        let e = errors(&GOOD.replace("max-body", "max-bodie"));
        assert!(e.contains("unknown field `max-bodie`"), "{e}");
        let e = errors(&GOOD.replace("name = \"acme/app\"", "name = \"app\""));
        assert!(e.contains("must be `owner/name`"), "{e}");
        let e = errors(&GOOD.replace(
            "concurrency = { cancel-in-progress = true }",
            "concurrency = { group = \"{branch}\" }\npipeline = \"../x.toml\"",
        ));
        assert!(e.contains("unknown placeholder(s) {branch}"), "{e}");
        assert!(
            e.contains("must be a relative path inside the checkout"),
            "{e}"
        );
        let e = errors(&GOOD.replace("branch = [\"main\"]\ntag = []", "tag = []"));
        assert!(e.contains("a push trigger needs `branch` or `tag`"), "{e}");
    }

    #[test]
    fn the_replay_window_is_a_duration_with_days_and_defaults_to_a_week() {
        let c = parse(Path::new("server.toml"), GOOD).unwrap();
        assert_eq!(c.replay_window, DEFAULT_REPLAY_WINDOW);
        assert_eq!(DEFAULT_REPLAY_WINDOW, Duration::from_secs(7 * 86_400));
        let with = |w: &str| GOOD.replace("max-body", &format!("replay-window = {w}\nmax-body"));
        let c = parse(Path::new("server.toml"), &with("\"1d12h\"")).unwrap();
        assert_eq!(c.replay_window, Duration::from_secs(36 * 3600));
        for (text, secs) in [
            ("7d", 7 * 86_400),
            ("1d12h", 36 * 3600),
            ("90m", 5400),
            ("2h30m", 9000),
            ("24h", 86_400),
            ("365d", 365 * 86_400),
            (" 1d ", 86_400),
        ] {
            assert_eq!(
                parse_window(text).unwrap(),
                Duration::from_secs(secs),
                "{text}"
            );
        }
        for bad in [
            "",
            "0d",
            "7",
            "d",
            "7days",
            "-1d",
            "1d0h",
            "366d",
            "1h1d",
            "7 d",
            "36h",
            "99999999999999999999999d",
        ] {
            assert!(parse_window(bad).is_err(), "{bad:?} should be refused");
        }
        let e = errors(&with("\"7 days\""));
        assert!(e.contains(":5:17: server.replay-window: "), "{e}");
        let e = errors(&with("\"36h\""));
        assert!(
            e.contains("may start with whole days: \"7d\", \"1d12h\""),
            "{e}"
        );
        let e = errors(&with("7"));
        assert!(e.contains("expected a duration string like \"7d\""), "{e}");
    }
}
