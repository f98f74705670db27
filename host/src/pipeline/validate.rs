//! Raw structs → [`Pipeline`], collecting every semantic problem so one
//! `host check` shows all of them instead of one per run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_spanned::Spanned;

use super::parse::{RawDocker, RawFile, RawGrants, RawStage, RawWhen, Source, Str, StrList};
use super::{
    dag, remotes, units, when, Diagnostic, DockerGrants, Environment, GitRemote, Grants, Location,
    Pipeline, PluginRef, PluginSource, PortRange, SecretSource, SshHost, Stage, Trust, When,
    DEFAULT_APPROVAL_TIMEOUT, DEFAULT_MEMORY, DEFAULT_TIMEOUT, MAX_RETRIES,
};
use crate::confined::Origin;
use crate::grants::image::{ImagePattern, ImagePatterns, NamePattern, NamePatterns};
use crate::grants::url::{UrlAllowlist, UrlPattern};

const STAGE_NAME_RULE: &str =
    "lower-case letters, digits, `-` and `_`, starting with a letter or digit";
const ID_RULE: &str = "letters, digits, `-`, `_` and `.`, starting with a letter or digit";

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
    pub(super) fn check_id(&mut self, key: &Str, what: &str) {
        check_id(self, key, what)
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

    // [pipeline]
    let mut name = String::new();
    let mut default_branch = "main".to_string();
    let mut default_timeout = DEFAULT_TIMEOUT;
    let mut default_memory = DEFAULT_MEMORY;
    match raw.pipeline {
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
                default_timeout = duration(&mut cx, &t).unwrap_or(default_timeout);
            }
            if let Some(m) = p.memory {
                default_memory = size(&mut cx, &m).unwrap_or(default_memory);
            }
        }
    }

    // [plugins]
    let mut plugins = BTreeMap::new();
    for (key, value) in raw.plugins {
        check_id(&mut cx, &key, "plugin");
        let name = key.into_inner();
        if let Some(p) = plugin_entry(&mut cx, &name, &value, &dir) {
            plugins.insert(name, p);
        }
    }

    // [trust]
    let mut trust = Trust::default();
    if let Some(t) = raw.trust {
        trust.location = Some(cx.loc(t.span()));
        for k in &t.get_ref().signed_by {
            match crate::distribution::signing::PublicKey::parse(k.get_ref()) {
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

    // [secrets]
    let mut secrets = BTreeMap::new();
    for (key, value) in raw.secrets {
        check_id(&mut cx, &key, "secret");
        let span = value.span();
        let s = value.into_inner();
        let source = match (s.env, s.file) {
            (Some(env), None) => {
                check_env_name(&mut cx, &env, "secret source");
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

    // [git.NAME] and [ssh.NAME]
    let git = remotes::build_git(&mut cx, raw.git);
    let ssh = remotes::build_ssh(&mut cx, raw.ssh, &secrets);
    let declared = Declared {
        secrets: &secrets,
        git: &git,
        ssh: &ssh,
    };

    // [environments], in file order.
    let mut raw_envs: Vec<_> = raw.environments.into_iter().collect();
    raw_envs.sort_by_key(|(k, _)| k.span().start);
    let mut environments = Vec::new();
    for (key, value) in raw_envs {
        check_id(&mut cx, &key, "environment");
        let e = value.get_ref();
        let when = When {
            branch: patterns(&mut cx, e.branch.as_ref(), "environments.branch"),
            tag: patterns(&mut cx, e.tag.as_ref(), "environments.tag"),
            event: vec![],
            always: false,
        };
        let approval_timeout = match &e.approval_timeout {
            Some(v) => duration(&mut cx, v).unwrap_or(DEFAULT_APPROVAL_TIMEOUT),
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
    let env_names: Vec<&str> = environments.iter().map(|e| e.name.as_str()).collect();

    // [[stage]]
    if raw.stage.is_empty() {
        cx.err(
            src.text.len()..src.text.len(),
            "no stages; expected at least one `[[stage]]` table",
        );
    }
    let mut stages = Vec::new();
    // Spans of each stage's `needs` entries, parallel to `Stage::needs`.
    let mut needs_spans: Vec<Vec<std::ops::Range<usize>>> = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let all_names: HashSet<&str> = raw
        .stage
        .iter()
        .filter_map(|s| s.get_ref().name.as_ref().map(|n| n.get_ref().as_str()))
        .collect();
    let stage_list = sorted_list(all_names.iter().copied());
    let plugin_list = sorted_list(plugins.keys().map(String::as_str));
    let defaults = (default_timeout, default_memory);
    for raw_stage in &raw.stage {
        let (stage, spans) = build_stage(
            &mut cx,
            raw_stage,
            defaults,
            &plugins,
            &plugin_list,
            &declared,
            &env_names,
            &all_names,
            &stage_list,
        );
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

    check_cycles(&mut cx, &stages, &needs_spans);

    let pipeline = Pipeline {
        file: src.file.clone(),
        dir,
        origin: Origin::Operator,
        name,
        default_branch,
        plugins,
        trust,
        secrets,
        environments,
        git,
        ssh,
        stages,
    };
    // `rollback` names a stage this one depends on.
    for (raw_stage, stage) in raw.stage.iter().zip(&pipeline.stages) {
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
    (pipeline, cx.diags)
}

#[allow(clippy::too_many_arguments)]
fn build_stage(
    cx: &mut Ctx<'_, '_>,
    raw: &Spanned<RawStage>,
    (default_timeout, default_memory): (Duration, u64),
    plugins: &BTreeMap<String, PluginRef>,
    plugin_list: &str,
    declared: &Declared<'_>,
    env_names: &[&str],
    all_names: &HashSet<&str>,
    stage_list: &str,
) -> (Stage, Vec<std::ops::Range<usize>>) {
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
    let label = if name.is_empty() { "stage" } else { &name };

    let plugin = match &r.plugin {
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
    };

    let mut needs = Vec::new();
    let mut needs_spans = Vec::new();
    for n in r.needs.iter().flatten() {
        let target = n.get_ref();
        if !name.is_empty() && *target == name {
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

    let when = r
        .when
        .as_ref()
        .map(|w| build_when(cx, w))
        .unwrap_or_default();

    let with = match &r.with {
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
    };

    let grants = r
        .grants
        .as_ref()
        .map(|g| build_grants(cx, g, declared))
        .unwrap_or_default();

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

    let retries = match &r.retries {
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
    };

    let environment = match &r.environment {
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
    };

    let mut artifacts = Vec::new();
    for a in r.artifacts.iter().flatten() {
        match crate::run::artifacts::check_path(a.get_ref()) {
            Ok(()) if artifacts.contains(a.get_ref()) => cx.err(
                a.span(),
                format!("artifact `{}` is listed twice", a.get_ref()),
            ),
            Ok(()) => artifacts.push(a.get_ref().clone()),
            Err(e) => cx.err(a.span(), e),
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

    let stage = Stage {
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
        // Checked against the whole pipeline below.
        rollback: r.rollback.as_ref().map(|r| r.get_ref().clone()),
        location,
    };
    (stage, needs_spans)
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

/// What grants may name: declared secrets, repositories and hosts.
struct Declared<'a> {
    secrets: &'a BTreeMap<String, SecretSource>,
    git: &'a BTreeMap<String, GitRemote>,
    ssh: &'a BTreeMap<String, SshHost>,
}

fn build_grants(cx: &mut Ctx<'_, '_>, g: &RawGrants, known: &Declared<'_>) -> Grants {
    let secrets = known.secrets;
    let mut env = Vec::new();
    for e in g.env.iter().flatten() {
        check_env_name(cx, e, "grants.env");
        env.push(e.get_ref().clone());
    }

    let mut http = Vec::new();
    for h in g.http.iter().flatten() {
        let p = h.get_ref();
        // Parsed and compiled here, once: `host check` and the http
        // capability both use these values.
        match UrlPattern::parse(p) {
            Ok(pattern) => http.push(pattern),
            Err(e) => cx.err(h.span(), format!("`grants.http` pattern {p:?}: {e}")),
        }
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

    let docker = g
        .docker
        .as_ref()
        .map(|d| build_docker(cx, d))
        .unwrap_or_default();

    Grants {
        workspace: g.workspace,
        env,
        http: UrlAllowlist::new(http),
        secrets: secret_use,
        secrets_read,
        docker,
        scan: g.scan.unwrap_or(false),
        git: remotes::granted_names(cx, g.git.as_ref(), known.git, "grants.git", "git"),
        ssh: remotes::granted_names(cx, g.ssh.as_ref(), known.ssh, "grants.ssh", "ssh"),
    }
}

fn build_docker(cx: &mut Ctx<'_, '_>, d: &RawDocker) -> DockerGrants {
    let mut ports = Vec::new();
    for p in d.ports.iter().flatten() {
        match port_range(p.get_ref()) {
            Ok(r) => ports.push(r),
            Err(msg) => cx.err(p.span(), msg),
        }
    }
    let mut images = |list: Option<&StrList>, key: &str| -> ImagePatterns {
        let mut out = Vec::new();
        for p in list.into_iter().flatten() {
            match ImagePattern::parse(p.get_ref()) {
                Ok(c) => out.push(c),
                Err(e) => cx.err(p.span(), format!("`grants.docker.{key}`: {e}")),
            }
        }
        ImagePatterns::new(out)
    };
    let build = images(d.build.as_ref(), "build");
    let run = images(d.run.as_ref(), "run");
    let tag = images(d.tag.as_ref(), "tag");
    let push = images(d.push.as_ref(), "push");
    let base = images(d.base.as_ref(), "base");
    let scan = images(d.scan.as_ref(), "scan");
    let mut containers = Vec::new();
    for p in d.containers.iter().flatten() {
        match NamePattern::parse(p.get_ref()) {
            Ok(c) => containers.push(c),
            Err(e) => cx.err(p.span(), format!("`grants.docker.containers`: {e}")),
        }
    }
    let mut size = |v: Option<&Spanned<toml::Value>>, key: &str| -> Option<u64> {
        let v = v?;
        let r = match v.get_ref() {
            toml::Value::String(s) => units::parse_size(s),
            other => Err(format!(
                "expected a size string like \"512MiB\" or \"2GiB\", found {}",
                type_name(other)
            )),
        };
        r.map_err(|m| cx.err(v.span(), format!("`grants.docker.{key}`: {m}")))
            .ok()
    };
    let memory = size(d.memory.as_ref(), "memory");
    let context_limit = size(d.context_limit.as_ref(), "context-limit");
    let nano_cpus = d.cpus.as_ref().and_then(|v| {
        const HINT: &str = "expected a number of CPUs from 0.01 to 64, like 1 or 0.5";
        let n = match v.get_ref() {
            toml::Value::Integer(i) => Some(*i as f64),
            toml::Value::Float(f) => Some(*f),
            _ => None,
        };
        match n {
            Some(n) if (0.01..=64.0).contains(&n) => Some((n * 1e9).round() as u64),
            _ => {
                cx.err(v.span(), format!("`grants.docker.cpus`: {HINT}"));
                None
            }
        }
    });
    let pids = d.pids.as_ref().and_then(|v| match v.get_ref() {
        toml::Value::Integer(i) if (16..=65_536).contains(i) => Some(*i as u32),
        _ => {
            cx.err(
                v.span(),
                "`grants.docker.pids`: expected a number of processes from 16 to 65536",
            );
            None
        }
    });
    DockerGrants {
        build,
        run,
        tag,
        push,
        base,
        scan,
        containers: NamePatterns::new(containers),
        ports,
        root: d.root.unwrap_or(false),
        memory,
        nano_cpus,
        pids,
        context_limit,
    }
}

fn port_range(v: &toml::Value) -> Result<PortRange, String> {
    const HINT: &str = "expected a port (1-65535) or a range string like \"8000-8100\"";
    let port = |n: i64| -> Result<u16, String> {
        u16::try_from(n)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("port {n} is out of range; {HINT}"))
    };
    let parse = |s: &str| -> Result<u16, String> {
        let n: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{HINT}, found {s:?}"))?;
        port(n)
    };
    match v {
        toml::Value::Integer(n) => port(*n).map(|p| PortRange { start: p, end: p }),
        toml::Value::String(s) => {
            let (start, end) = match s.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => {
                    let p = parse(s)?;
                    (p, p)
                }
            };
            if start > end {
                return Err(format!("port range {s:?} is reversed; {HINT}"));
            }
            Ok(PortRange { start, end })
        }
        other => Err(format!("{HINT}, found {}", type_name(other))),
    }
}

fn check_cycles(
    cx: &mut Ctx<'_, '_>,
    stages: &[Stage],
    needs_spans: &[Vec<std::ops::Range<usize>>],
) {
    // First stage with each name wins; duplicates are reported already.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in stages.iter().enumerate() {
        index.entry(s.name.as_str()).or_insert(i);
    }
    let edges: Vec<Vec<usize>> = stages
        .iter()
        .map(|s| {
            s.needs
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect()
        })
        .collect();
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
        toml::Value::String(s) => units::parse_duration(s),
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
        toml::Value::String(s) => units::parse_size(s),
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
    let sha256 = match sha256.map(|d| crate::distribution::parse_sha256(&d)) {
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
        "oci" => crate::distribution::oci::parse_reference(rest)
            .map(|_| PluginSource::Oci(rest.to_string()))
            .map_err(|e| format!("`{written}`: {e}")),
        "https" | "http" => {
            let url = url::Url::parse(written).map_err(|e| format!("`{written}`: {e}"))?;
            if scheme == "http" && !crate::distribution::is_loopback(url.host_str().unwrap_or("")) {
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
    let mut chars = s.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
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

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
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
