//! Raw structs → [`Pipeline`], collecting every semantic problem so one
//! `host check` shows all of them instead of one per run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_spanned::Spanned;

use super::parse::{RawFile, RawPipeline, RawSecret, RawStage, RawWhen, Source, Str, StrList};
use super::{
    dag, units, when, CacheSpec, Diagnostic, Environment, Grants, Location, Pipeline, PluginRef,
    PluginSource, SecretSource, Stage, Trust, When, DEFAULT_APPROVAL_TIMEOUT, DEFAULT_MEMORY,
    DEFAULT_TIMEOUT, MAX_RETRIES,
};
use crate::caps::capability::{toml_type as type_name, valid_id, GrantCx, ID_RULE};
use crate::caps::{self, Decls, RawGrants};
use crate::confined::Origin;

const STAGE_NAME_RULE: &str =
    "lower-case letters, digits, `-` and `_`, starting with a letter or digit";

pub(super) struct Ctx<'s, 'a> {
    src: &'s Source<'a>,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_, '_> {
    pub(super) fn err(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        let d = self.src.diag(span, message);
        self.diags.push(d);
    }
    pub(super) fn loc(&self, span: std::ops::Range<usize>) -> Location {
        self.src.span(span)
    }
    /// Runs `f` with a capability's view of the file; what it reports
    /// becomes diagnostics here.
    fn grant_cx<R>(&mut self, secrets: &[String], f: impl FnOnce(&mut GrantCx<'_>) -> R) -> R {
        let mut found = Vec::new();
        let r = {
            let mut report = |span, message| found.push((span, message));
            let mut g = GrantCx::new(self.src.document().ok(), secrets, &mut report);
            f(&mut g)
        };
        for (span, message) in found {
            self.err(span, message);
        }
        r
    }
}

pub(super) fn build(src: &Source<'_>, raw: RawFile) -> (Pipeline, Vec<Diagnostic>) {
    let mut cx = Ctx {
        src,
        diags: Vec::new(),
    };
    let dir = match src.file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_tables(&mut cx);
    let header = build_header(&mut cx, raw.pipeline);
    let plugins = build_plugins(&mut cx, raw.plugins, &dir);
    let trust = build_trust(&mut cx, raw.trust);
    let secrets = build_secrets(&mut cx, raw.secrets, &dir);
    let secret_names: Vec<String> = secrets.keys().cloned().collect();
    // Tables capabilities own (`[git.NAME]`, `[ssh.NAME]`).
    let decls = cx.grant_cx(&secret_names, caps::declare_all);
    let environments = build_environments(&mut cx, raw.environments);
    let scope = Scope::new(
        &raw.stage,
        &header,
        &plugins,
        &secrets,
        &decls,
        &environments,
    );
    let stages = build_stages(&mut cx, &raw.stage, &scope);
    let pipeline = Pipeline {
        file: src.file.clone(),
        dir,
        origin: Origin::Operator,
        name: header.name,
        default_branch: header.default_branch,
        labels: header.labels,
        plugins,
        trust,
        secrets,
        environments,
        declared: decls,
        stages,
    };
    check_rollbacks(&mut cx, &raw.stage, &pipeline);
    (pipeline, cx.diags)
}

/// The pipeline's own tables and those capabilities own; nothing else.
fn check_tables(cx: &mut Ctx<'_, '_>) {
    const OWN: &[&str] = &[
        "pipeline",
        "plugins",
        "trust",
        "secrets",
        "environments",
        "stage",
    ];
    let src = cx.src;
    let Ok(top) = src.document() else {
        return; // the decode reported it
    };
    let theirs = caps::tables();
    for (key, _) in top.get_ref().iter() {
        let k: &str = key.get_ref();
        if !OWN.contains(&k) && !theirs.contains(&k) {
            let known: Vec<String> = OWN
                .iter()
                .chain(theirs.iter())
                .map(|t| format!("`{t}`"))
                .collect();
            cx.err(
                key.span(),
                format!("unknown table `{k}`, expected one of {}", known.join(", ")),
            );
        }
    }
}

/// `[pipeline]`: the name and the defaults every stage starts from.
struct Header {
    name: String,
    default_branch: String,
    labels: Vec<String>,
    default_timeout: Duration,
    default_memory: u64,
}

fn build_header(cx: &mut Ctx<'_, '_>, raw: Option<Spanned<RawPipeline>>) -> Header {
    let mut name = String::new();
    let mut default_branch = "main".to_string();
    let mut default_timeout = DEFAULT_TIMEOUT;
    let mut default_memory = DEFAULT_MEMORY;
    let mut labels = Vec::new();
    match raw {
        None => cx.err(
            0..0,
            "missing [pipeline] table; expected `[pipeline]` with `name = \"...\"`",
        ),
        Some(p) => {
            let span = p.span();
            let p = p.into_inner();
            match p.name {
                None => cx.err(
                    span,
                    "missing `name` in [pipeline]; expected `name = \"...\"`",
                ),
                Some(n) if n.get_ref().trim().is_empty() => {
                    cx.err(n.span(), "[pipeline] `name` must not be empty")
                }
                Some(n) => name = n.into_inner(),
            }
            if let Some(b) = p.default_branch {
                if b.get_ref().trim().is_empty() {
                    cx.err(b.span(), "`default-branch` must not be empty");
                } else {
                    default_branch = b.into_inner();
                }
            }
            if let Some(t) = p.timeout {
                default_timeout = duration(cx, &t).unwrap_or(default_timeout);
            }
            labels = checked_labels(cx, p.labels.as_ref(), "[pipeline] labels");
            if let Some(m) = p.memory {
                default_memory = size(cx, &m).unwrap_or(default_memory);
            }
        }
    }

    Header {
        name,
        default_branch,
        labels,
        default_timeout,
        default_memory,
    }
}

fn build_plugins(
    cx: &mut Ctx<'_, '_>,
    raw: BTreeMap<Str, Spanned<toml::Value>>,
    dir: &Path,
) -> BTreeMap<String, PluginRef> {
    let mut plugins = BTreeMap::new();
    for (key, value) in raw {
        check_id(cx, &key, "plugin");
        let name = key.into_inner();
        if let Some(p) = plugin_entry(cx, &name, &value, dir) {
            plugins.insert(name, p);
        }
    }

    plugins
}

fn build_trust(cx: &mut Ctx<'_, '_>, raw: Option<Spanned<super::parse::RawTrust>>) -> Trust {
    let mut trust = Trust::default();
    if let Some(t) = raw {
        trust.location = Some(cx.loc(t.span()));
        for k in &t.get_ref().signed_by {
            match crate::plugin_source::PublicKey::parse(k.get_ref()) {
                Ok(_) => trust.signed_by.push(k.get_ref().clone()),
                Err(e) => cx.err(k.span(), format!("`trust.signed-by`: {e}")),
            }
        }
        if t.get_ref().signed_by.is_empty() {
            cx.err(
                t.span(),
                "`trust.signed-by` is empty; list the public keys (`ed25519:…`, from `host plugin keygen`) plugins must be signed by, or remove [trust]",
            );
        }
    }

    trust
}

fn build_secrets(
    cx: &mut Ctx<'_, '_>,
    raw: BTreeMap<Str, Spanned<RawSecret>>,
    dir: &Path,
) -> BTreeMap<String, SecretSource> {
    let mut secrets = BTreeMap::new();
    for (key, value) in raw {
        check_id(cx, &key, "secret");
        let span = value.span();
        let s = value.into_inner();
        let source = match (s.env, s.file) {
            (Some(env), None) => {
                check_env_name(cx, &env, "secret source");
                SecretSource::Env(env.into_inner())
            }
            (None, Some(file)) => {
                if file.get_ref().trim().is_empty() {
                    cx.err(file.span(), "secret `file` must not be empty");
                }
                SecretSource::File(dir.join(file.get_ref()))
            }
            (Some(_), Some(_)) | (None, None) => {
                cx.err(
                    span,
                    format!(
                        "secret `{}` needs exactly one source: `{{ env = \"VAR\" }}` or `{{ file = \"path\" }}`",
                        key.get_ref()
                    ),
                );
                continue;
            }
        };
        secrets.insert(key.into_inner(), source);
    }

    secrets
}

/// `[environments]`, in file order.
fn build_environments(
    cx: &mut Ctx<'_, '_>,
    raw: BTreeMap<Str, Spanned<super::parse::RawEnvironment>>,
) -> Vec<Environment> {
    let mut raw_envs: Vec<_> = raw.into_iter().collect();
    raw_envs.sort_by_key(|(k, _)| k.span().start);
    let mut environments = Vec::new();
    for (key, value) in raw_envs {
        check_id(cx, &key, "environment");
        let e = value.get_ref();
        let when = When {
            branch: patterns(cx, e.branch.as_ref(), "environments.branch"),
            tag: patterns(cx, e.tag.as_ref(), "environments.tag"),
            event: vec![],
            always: false,
        };
        let approval_timeout = match &e.approval_timeout {
            Some(v) => duration(cx, v).unwrap_or(DEFAULT_APPROVAL_TIMEOUT),
            None => DEFAULT_APPROVAL_TIMEOUT,
        };
        environments.push(Environment {
            name: key.get_ref().clone(),
            when,
            approval: e.approval.unwrap_or(false),
            approval_timeout,
            location: cx.loc(key.span()),
        });
    }

    environments
}

/// What a stage may name, gathered once for all stages.
struct Scope<'p> {
    defaults: (Duration, u64),
    plugins: &'p BTreeMap<String, PluginRef>,
    plugin_list: String,
    secrets: &'p BTreeMap<String, SecretSource>,
    secret_names: Vec<String>,
    decls: &'p Decls,
    env_names: Vec<&'p str>,
    all_names: HashSet<&'p str>,
    stage_list: String,
}

impl<'p> Scope<'p> {
    fn new(
        raw: &'p [Spanned<RawStage>],
        header: &Header,
        plugins: &'p BTreeMap<String, PluginRef>,
        secrets: &'p BTreeMap<String, SecretSource>,
        decls: &'p Decls,
        environments: &'p [Environment],
    ) -> Self {
        let all_names: HashSet<&str> = raw
            .iter()
            .filter_map(|s| s.get_ref().name.as_ref().map(|n| n.get_ref().as_str()))
            .collect();
        Scope {
            defaults: (header.default_timeout, header.default_memory),
            plugins,
            plugin_list: sorted_list(plugins.keys().map(String::as_str)),
            secrets,
            secret_names: secrets.keys().cloned().collect(),
            decls,
            env_names: environments.iter().map(|e| e.name.as_str()).collect(),
            stage_list: sorted_list(all_names.iter().copied()),
            all_names,
        }
    }
}

/// `[[stage]]`, in file order; duplicate names and cycles are reported.
fn build_stages(cx: &mut Ctx<'_, '_>, raw: &[Spanned<RawStage>], scope: &Scope<'_>) -> Vec<Stage> {
    if raw.is_empty() {
        let end = cx.src.text.len();
        cx.err(
            end..end,
            "no stages; expected at least one `[[stage]]` table",
        );
    }
    let mut stages = Vec::new();
    // Spans of each stage's `needs` entries, parallel to `Stage::needs`.
    let mut needs_spans: Vec<Vec<std::ops::Range<usize>>> = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for raw_stage in raw {
        let (stage, spans) = build_stage(cx, raw_stage, scope);
        if !stage.name.is_empty() {
            if let Some(line) = first_seen.get(&stage.name) {
                let msg = format!(
                    "duplicate stage name `{}`; it is first defined at line {line}",
                    stage.name
                );
                cx.diags.push(Diagnostic {
                    location: stage.location.clone(),
                    message: msg,
                });
            } else {
                first_seen.insert(stage.name.clone(), stage.location.line);
            }
        }
        stages.push(stage);
        needs_spans.push(spans);
    }
    check_cycles(cx, &stages, &needs_spans);
    stages
}

fn check_rollbacks(cx: &mut Ctx<'_, '_>, raw: &[Spanned<RawStage>], pipeline: &Pipeline) {
    // `rollback` names a stage this one depends on.
    for (raw_stage, stage) in raw.iter().zip(&pipeline.stages) {
        let Some(target) = &raw_stage.get_ref().rollback else {
            continue;
        };
        if !pipeline
            .ancestors(&stage.name)
            .contains(&target.get_ref().as_str())
        {
            cx.err(
                target.span(),
                format!(
                    "`rollback = \"{}\"`: a stage rolls back a stage it depends on (through `needs`, directly or not), and `{}` does not depend on it",
                    target.get_ref(),
                    stage.name
                ),
            );
        }
    }
}

fn build_stage(
    cx: &mut Ctx<'_, '_>,
    raw: &Spanned<RawStage>,
    scope: &Scope<'_>,
) -> (Stage, Vec<std::ops::Range<usize>>) {
    let r = raw.get_ref();
    let (name, location) = stage_name(cx, raw);
    let plugin = stage_plugin(cx, raw, &name, scope);
    let (needs, needs_spans) = stage_needs(cx, r, &name, scope);
    let when = r
        .when
        .as_ref()
        .map(|w| build_when(cx, w))
        .unwrap_or_default();
    let with = stage_with(cx, r);
    let grants = r
        .grants
        .as_ref()
        .map(|g| build_grants(cx, g, scope))
        .unwrap_or_default();
    let (default_timeout, default_memory) = scope.defaults;
    let timeout = r
        .timeout
        .as_ref()
        .and_then(|t| duration(cx, t))
        .unwrap_or(default_timeout);
    let memory = r
        .memory
        .as_ref()
        .and_then(|m| size(cx, m))
        .unwrap_or(default_memory);
    let retries = stage_retries(cx, r);
    let environment = stage_environment(cx, r, scope);
    let artifacts = stage_artifacts(cx, r, &grants);
    let mut stage = Stage {
        name,
        plugin,
        needs,
        when,
        with,
        grants,
        timeout,
        memory,
        retries,
        environment,
        artifacts,
        // Checked against the whole pipeline in `check_rollbacks`.
        rollback: r.rollback.as_ref().map(|r| r.get_ref().clone()),
        labels: checked_labels(cx, r.labels.as_ref(), "labels"),
        cache: None,
        location,
    };
    stage.cache = r
        .cache
        .as_ref()
        .and_then(|c| stage_cache(cx, c, stage.acts_outside()));
    (stage, needs_spans)
}

fn stage_name(cx: &mut Ctx<'_, '_>, raw: &Spanned<RawStage>) -> (String, Location) {
    let stage_span = raw.span();
    let r = raw.get_ref();
    let (name, location) = match &r.name {
        None => {
            cx.err(
                stage_span.clone(),
                "stage is missing `name`; expected `name = \"...\"`",
            );
            (String::new(), cx.loc(stage_span.clone()))
        }
        Some(n) => {
            if !valid_stage_name(n.get_ref()) {
                cx.err(
                    n.span(),
                    format!(
                        "invalid stage name {:?}; expected {STAGE_NAME_RULE}",
                        n.get_ref()
                    ),
                );
            }
            (n.get_ref().clone(), cx.loc(n.span()))
        }
    };
    (name, location)
}

fn stage_plugin(
    cx: &mut Ctx<'_, '_>,
    raw: &Spanned<RawStage>,
    name: &str,
    scope: &Scope<'_>,
) -> String {
    let stage_span = raw.span();
    let r = raw.get_ref();
    let label = if name.is_empty() { "stage" } else { name };
    let (plugins, plugin_list) = (scope.plugins, &scope.plugin_list);
    match &r.plugin {
        None => {
            cx.err(
                stage_span.clone(),
                format!(
                    "stage `{label}` is missing `plugin`; expected the name of a [plugins] entry"
                ),
            );
            String::new()
        }
        Some(p) => {
            if !plugins.contains_key(p.get_ref()) {
                let known = if plugins.is_empty() {
                    "no plugins are declared in [plugins]".to_string()
                } else {
                    format!("declared plugins: {plugin_list}")
                };
                cx.err(
                    p.span(),
                    format!("unknown plugin `{}`; {known}", p.get_ref()),
                );
            }
            p.get_ref().clone()
        }
    }
}

fn stage_needs(
    cx: &mut Ctx<'_, '_>,
    r: &RawStage,
    name: &str,
    scope: &Scope<'_>,
) -> (Vec<String>, Vec<std::ops::Range<usize>>) {
    let (all_names, stage_list) = (&scope.all_names, &scope.stage_list);
    let mut needs = Vec::new();
    let mut needs_spans = Vec::new();
    for n in r.needs.iter().flatten() {
        let target = n.get_ref();
        if !name.is_empty() && *target == *name {
            cx.err(n.span(), format!("stage `{name}` needs itself"));
        } else if !all_names.contains(target.as_str()) {
            cx.err(
                n.span(),
                format!("`needs` names unknown stage `{target}`; stages: {stage_list}"),
            );
        } else if needs.contains(target) {
            cx.err(n.span(), format!("`needs` lists `{target}` twice"));
        } else {
            needs.push(target.clone());
            needs_spans.push(n.span());
        }
    }

    (needs, needs_spans)
}

fn stage_with(cx: &mut Ctx<'_, '_>, r: &RawStage) -> serde_json::Value {
    match &r.with {
        None => serde_json::Value::Object(Default::default()),
        Some(w) => match w.get_ref() {
            toml::Value::Table(_) => {
                let mut problems = Vec::new();
                let json = to_json(w.get_ref(), "with", &mut problems);
                for p in problems {
                    cx.err(w.span(), p);
                }
                json
            }
            other => {
                cx.err(
                    w.span(),
                    format!(
                        "`with` must be a table like `{{ key = \"value\" }}`, found {}",
                        type_name(other)
                    ),
                );
                serde_json::Value::Object(Default::default())
            }
        },
    }
}

fn stage_retries(cx: &mut Ctx<'_, '_>, r: &RawStage) -> u32 {
    match &r.retries {
        None => 0,
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(v) if v <= MAX_RETRIES => v,
            _ => {
                cx.err(
                    n.span(),
                    format!(
                        "`retries` must be between 0 and {MAX_RETRIES}, found {}",
                        n.get_ref()
                    ),
                );
                0
            }
        },
    }
}

fn stage_environment(cx: &mut Ctx<'_, '_>, r: &RawStage, scope: &Scope<'_>) -> Option<String> {
    let env_names = &scope.env_names;
    match &r.environment {
        Some(e) if e.get_ref().trim().is_empty() => {
            cx.err(e.span(), "`environment` must not be empty");
            None
        }
        Some(e) if !env_names.contains(&e.get_ref().as_str()) => {
            let known = if env_names.is_empty() {
                "no environments are declared in [environments]".to_string()
            } else {
                format!("declared environments: {}", env_names.join(", "))
            };
            cx.err(
                e.span(),
                format!("unknown environment `{}` ({known})", e.get_ref()),
            );
            None
        }
        Some(e) => Some(e.get_ref().clone()),
        None => None,
    }
}

fn stage_artifacts(cx: &mut Ctx<'_, '_>, r: &RawStage, grants: &Grants) -> Vec<String> {
    let mut artifacts = Vec::new();
    for a in r.artifacts.iter().flatten() {
        match super::check_artifact_path(a.get_ref()) {
            Ok(()) if artifacts.contains(a.get_ref()) => cx.err(
                a.span(),
                format!("artifact `{}` is listed twice", a.get_ref()),
            ),
            Ok(()) => artifacts.push(a.get_ref().clone()),
            Err(e) => cx.err(a.span(), e.to_string()),
        }
    }
    if !artifacts.is_empty() && grants.workspace.is_none() && grants.docker == Default::default() {
        if let Some(a) = &r.artifacts {
            if let Some(first) = a.first() {
                cx.err(
                    first.span(),
                    "`artifacts` are files in the workspace, and this stage has no workspace access (`grants.workspace`) or docker grants to write them",
                );
            }
        }
    }

    artifacts
}

/// Most input patterns a stage may declare.
const MAX_CACHE_INPUTS: usize = 100;

/// `cache`: valid globs, and a stage that acts outside the run (deploys,
/// pushes, notifies) only when it says so: skipping it skips its effect.
fn stage_cache(
    cx: &mut Ctx<'_, '_>,
    raw: &Spanned<super::parse::RawCache>,
    acts_outside: bool,
) -> Option<CacheSpec> {
    let r = raw.get_ref();
    let outside = r.outside.as_ref().is_some_and(|o| *o.get_ref());
    if acts_outside && !outside {
        cx.err(
            raw.span(),
            "`cache`: this stage deploys, pushes or notifies (its environment or grants reach outside the run), and a cached run would skip that; add `outside = true` to cache it anyway",
        );
        return None;
    }
    if r.inputs.len() > MAX_CACHE_INPUTS {
        cx.err(
            raw.span(),
            format!(
                "`cache.inputs`: {} patterns; at most {MAX_CACHE_INPUTS}",
                r.inputs.len()
            ),
        );
        return None;
    }
    let mut inputs = Vec::new();
    for i in &r.inputs {
        match when::compile(i.get_ref()) {
            Ok(_) if i.get_ref().starts_with('/') || i.get_ref().split('/').any(|p| p == "..") => {
                cx.err(
                    i.span(),
                    format!(
                        "`cache.inputs`: `{}` must be relative to the workspace, without `..`",
                        i.get_ref()
                    ),
                )
            }
            Ok(_) => inputs.push(i.get_ref().clone()),
            Err(e) => cx.err(i.span(), format!("`cache.inputs`: {e}")),
        }
    }
    Some(CacheSpec { inputs, outside })
}

fn build_when(cx: &mut Ctx<'_, '_>, w: &Spanned<RawWhen>) -> When {
    let r = w.get_ref();
    let branch = patterns(cx, r.branch.as_ref(), "when.branch");
    let tag = patterns(cx, r.tag.as_ref(), "when.tag");
    let event = patterns(cx, r.event.as_ref(), "when.event");
    if !branch.is_empty() && !tag.is_empty() {
        cx.err(
            w.span(),
            "`when` has both `branch` and `tag`, which can never match together: a build is either a branch build or a tag build; use two stages",
        );
    }
    When {
        branch,
        tag,
        event,
        always: r.always.unwrap_or(false),
    }
}

/// Non-empty glob patterns (see `when.rs` for the rules).
fn patterns(cx: &mut Ctx<'_, '_>, list: Option<&StrList>, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in list.into_iter().flatten() {
        if p.get_ref().is_empty() {
            cx.err(p.span(), format!("`{key}` pattern must not be empty"));
        } else if let Err(e) = when::compile(p.get_ref()) {
            cx.err(
                p.span(),
                format!("invalid glob pattern in `{key}`: {}", e.kind()),
            );
        } else {
            out.push(p.get_ref().clone());
        }
    }
    out
}

/// A stage's grants: the sandbox's own here, each capability's by the
/// capability (see `caps::capabilities!`).
fn build_grants(cx: &mut Ctx<'_, '_>, g: &RawGrants, scope: &Scope<'_>) -> Grants {
    let secrets = scope.secrets;
    let mut env = Vec::new();
    for e in g.env.iter().flatten() {
        check_env_name(cx, e, "grants.env");
        env.push(e.get_ref().clone());
    }
    let declared = sorted_list(secrets.keys().map(String::as_str));
    let mut secret_names = |list: Option<&StrList>, key: &str| -> Vec<String> {
        let mut out = Vec::new();
        for s in list.into_iter().flatten() {
            if !secrets.contains_key(s.get_ref()) {
                let known = if secrets.is_empty() {
                    "no secrets are declared in [secrets]".to_string()
                } else {
                    format!("declared secrets: {declared}")
                };
                cx.err(
                    s.span(),
                    format!("`{key}` names undeclared secret `{}`; {known}", s.get_ref()),
                );
            } else if !out.contains(s.get_ref()) {
                out.push(s.get_ref().clone());
            }
        }
        out
    };
    let secret_use = secret_names(g.secrets.as_ref(), "grants.secrets");
    let secrets_read = secret_names(g.secrets_read.as_ref(), "grants.secrets-read");

    let mut grants = Grants {
        workspace: g.workspace,
        env,
        secrets: secret_use,
        secrets_read,
        ..Grants::default()
    };
    cx.grant_cx(&scope.secret_names, |gc| {
        caps::compile_grants(g, scope.decls, gc, &mut grants)
    });
    grants
}

fn check_cycles(
    cx: &mut Ctx<'_, '_>,
    stages: &[Stage],
    needs_spans: &[Vec<std::ops::Range<usize>>],
) {
    let edges = super::needs_indices(stages);
    for cycle in dag::cycles(&edges) {
        let mut names: Vec<&str> = cycle.iter().map(|&i| stages[i].name.as_str()).collect();
        names.push(names[0]);
        // Point at the first stage's `needs` entry that starts the cycle.
        let (a, b) = (cycle[0], cycle[1 % cycle.len()]);
        let span = stages[a]
            .needs
            .iter()
            .position(|n| *n == stages[b].name)
            .and_then(|k| needs_spans[a].get(k).cloned());
        let message = format!("cycle in `needs`: {}", names.join(" -> "));
        match span {
            Some(span) => cx.err(span, message),
            None => cx.diags.push(Diagnostic {
                location: stages[a].location.clone(),
                message,
            }),
        }
    }
}

fn duration(cx: &mut Ctx<'_, '_>, v: &Spanned<toml::Value>) -> Option<Duration> {
    let result = match v.get_ref() {
        toml::Value::String(s) => units::parse_duration(s).map_err(|e| e.to_string()),
        other => Err(format!(
            "expected a duration string like \"30s\" or \"5m\", found {}",
            type_name(other)
        )),
    };
    result
        .map_err(|m| cx.err(v.span(), format!("`timeout`: {m}")))
        .ok()
}

fn size(cx: &mut Ctx<'_, '_>, v: &Spanned<toml::Value>) -> Option<u64> {
    let result = match v.get_ref() {
        toml::Value::String(s) => units::parse_size(s).map_err(|e| e.to_string()),
        other => Err(format!(
            "expected a size string like \"256MiB\" or \"1GiB\", found {}",
            type_name(other)
        )),
    };
    result
        .map_err(|m| cx.err(v.span(), format!("`memory`: {m}")))
        .ok()
}

/// One `[plugins]` entry: `"path.wasm"`, `"oci://registry/repo:tag"`, or a
/// table `{ path | oci | url = "…", sha256 = "…" }` (a URL needs `sha256`:
/// nothing else says what its bytes should be).
fn plugin_entry(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    value: &Spanned<toml::Value>,
    dir: &Path,
) -> Option<PluginRef> {
    const FORMS: &str = "expected \"plugins/x.wasm\", \"oci://registry/repo:tag\" or { url = \"https://…/x.wasm\", sha256 = \"…\" }";
    let span = value.span();
    let location = cx.loc(span.clone());
    let (written, sha256) = match value.get_ref() {
        toml::Value::String(s) => (s.clone(), None),
        toml::Value::Table(t) => {
            let mut written = None;
            let mut sha256 = None;
            for (k, v) in t {
                let Some(text) = v.as_str() else {
                    cx.err(
                        span.clone(),
                        format!(
                            "plugin `{name}`: `{k}` must be a string, found {}",
                            type_name(v)
                        ),
                    );
                    return None;
                };
                match k.as_str() {
                    "path" | "oci" | "url" if written.is_some() => {
                        cx.err(
                            span.clone(),
                            format!("plugin `{name}`: give only one of `path`, `oci`, `url`"),
                        );
                        return None;
                    }
                    "path" => written = Some(text.to_string()),
                    "oci" if text.starts_with("oci://") => written = Some(text.to_string()),
                    "oci" => written = Some(format!("oci://{text}")),
                    "url" => written = Some(text.to_string()),
                    "sha256" => sha256 = Some(text.to_string()),
                    other => {
                        cx.err(
                            span.clone(),
                            format!("plugin `{name}`: unknown key `{other}`; {FORMS}"),
                        );
                        return None;
                    }
                }
            }
            let Some(w) = written else {
                cx.err(
                    span.clone(),
                    format!("plugin `{name}` needs one of `path`, `oci`, `url`; {FORMS}"),
                );
                return None;
            };
            (w, sha256)
        }
        other => {
            cx.err(
                span,
                format!("plugin `{name}`: found {}; {FORMS}", type_name(other)),
            );
            return None;
        }
    };
    let sha256 = match sha256.map(|d| crate::plugin_source::parse_sha256(&d)) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            cx.err(span, format!("plugin `{name}`: `sha256`: {e}"));
            return None;
        }
    };
    match plugin_source(&written, sha256.is_some()) {
        Ok(source) => Some(PluginRef {
            name: name.to_string(),
            path: match &source {
                PluginSource::Path(p) => dir.join(p),
                _ => PathBuf::new(),
            },
            source,
            sha256,
            location,
        }),
        Err(msg) => {
            cx.err(span, format!("plugin `{name}`: {msg}"));
            None
        }
    }
}

fn plugin_source(written: &str, pinned: bool) -> Result<PluginSource, String> {
    if written.trim().is_empty() {
        return Err("path must not be empty; expected a path like \"plugins/tag.wasm\"".into());
    }
    let Some((scheme, rest)) = written.split_once("://") else {
        return Ok(PluginSource::Path(written.to_string()));
    };
    match scheme {
        "oci" => crate::plugin_source::parse_oci_reference(rest)
            .map(|_| PluginSource::Oci(rest.to_string()))
            .map_err(|e| format!("`{written}`: {e}")),
        "https" | "http" => {
            let url = url::Url::parse(written).map_err(|e| format!("`{written}`: {e}"))?;
            if scheme == "http" && !crate::plugin_source::is_loopback(url.host_str().unwrap_or(""))
            {
                return Err(format!(
                    "`{written}`: plain http is only allowed on loopback; use https"
                ));
            }
            if !pinned {
                return Err(format!(
                    "a URL needs its digest: {{ url = \"{written}\", sha256 = \"…\" }} (`sha256sum x.wasm` prints it)"
                ));
            }
            Ok(PluginSource::Url(written.to_string()))
        }
        _ => Err(format!(
            "unknown plugin reference scheme `{scheme}://`; expected a path, `oci://` or `https://`"
        )),
    }
}

fn valid_stage_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Plugin and secret names: they appear in `${secret:NAME}` and CLI output,
/// so keep them to a plain, unambiguous alphabet.
fn check_id(cx: &mut Ctx<'_, '_>, key: &Str, what: &str) {
    let s = key.get_ref();
    if !valid_id(s) {
        cx.err(
            key.span(),
            format!("invalid {what} name {s:?}; expected {ID_RULE}"),
        );
    }
}

fn check_env_name(cx: &mut Ctx<'_, '_>, name: &Str, key: &str) {
    let s = name.get_ref();
    let mut chars = s.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        cx.err(
            name.span(),
            format!("invalid environment variable name {s:?} in `{key}`; expected letters, digits and `_`, not starting with a digit"),
        );
    }
}

fn sorted_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = names.filter(|n| !n.is_empty()).collect();
    v.sort_unstable();
    v.dedup();
    v.iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// TOML → JSON for `with`. Datetimes become their TOML text; NaN and
/// infinities have no JSON form and are reported.
fn to_json(v: &toml::Value, path: &str, problems: &mut Vec<String>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(n) => J::from(*n),
        toml::Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => J::Number(n),
            None => {
                problems.push(format!(
                    "`{path}` is {f}, which cannot be passed to a plugin (JSON has no NaN or infinity)"
                ));
                J::Null
            }
        },
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| to_json(x, &format!("{path}[{i}]"), problems))
                .collect(),
        ),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, x)| (k.clone(), to_json(x, &format!("{path}.{k}"), problems)))
                .collect(),
        ),
    }
}

/// `labels = [...]`: what a machine must offer (see `host agent`).
fn checked_labels(cx: &mut Ctx<'_, '_>, raw: Option<&StrList>, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in raw.into_iter().flatten() {
        if crate::cluster::protocol::valid_label(l.get_ref()) {
            out.push(l.get_ref().clone());
        } else {
            cx.err(
                l.span(),
                format!(
                    "{key}: `{}` is not a label (a-z, 0-9, `-`, `_`, at most 32 characters; not `any`)",
                    l.get_ref()
                ),
            );
        }
    }
    out
}
