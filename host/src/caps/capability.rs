//! The one shape every capability has (learned from Spin's factors, written
//! for this host):
//!
//! - [`Capability::declare`] reads pipeline-wide declarations the capability
//!   owns (`[git.NAME]`), once per pipeline file;
//! - [`Capability::compile`] turns `grants.NAME` of a stage into a typed,
//!   compiled grant, once, at validation — `host check`, the run and the
//!   audit all use that value;
//! - [`Capability::link`] adds the WIT interface to the linker, once per
//!   engine, through the one generic marker [`Cap`];
//! - [`Capability::for_stage`] builds the capability for one attempt of
//!   one stage from a [`StageEnv`].
//!
//! Capabilities are registered in one list, in `caps/mod.rs`.
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::DeTable;
use wasmtime::component::{HasData, Linker};

use super::audit::Audit;
use super::docker::DockerEngine;
use super::http::HttpLimits;
use super::log::StageLog;
use super::scan::ScanConfig;
use super::secrets::{SecretStore, SecretsCap};
use super::{Decls, Grants};

/// The one linker marker: the linker hands a capability's interface only
/// that capability's own field of the store, so capabilities cannot reach
/// into each other.
pub struct Cap<C>(PhantomData<C>);

impl<C: 'static> HasData for Cap<C> {
    type Data<'a> = &'a mut C;
}

/// Where a grant or declaration problem is reported: a byte span of the
/// pipeline file and a message. The pipeline turns it into `file:line:col`.
pub struct GrantCx<'a> {
    report: &'a mut dyn FnMut(Range<usize>, String),
    /// Names declared in `[secrets]` (a declaration may name one).
    pub secrets: &'a [String],
    /// The pipeline file's parsed document (for capabilities that read
    /// their own top-level tables); `None` when it does not parse (already
    /// reported).
    doc: Option<&'a Spanned<DeTable<'a>>>,
}

impl<'a> GrantCx<'a> {
    pub fn new(
        doc: Option<&'a Spanned<DeTable<'a>>>,
        secrets: &'a [String],
        report: &'a mut dyn FnMut(Range<usize>, String),
    ) -> Self {
        Self {
            report,
            secrets,
            doc,
        }
    }

    pub fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        (self.report)(span, message.into());
    }

    /// Each `[TABLE.NAME]` declaration checked by `check` and kept under
    /// its name; a name breaking [`ID_RULE`] is reported (`what` names the
    /// kind: "git repository") and its entry still checked.
    pub fn declarations<R, D>(
        &mut self,
        tables: std::collections::BTreeMap<Str, serde_spanned::Spanned<R>>,
        what: &str,
        mut check: impl FnMut(&mut Self, String, Range<usize>, R) -> Option<D>,
    ) -> std::collections::BTreeMap<String, D> {
        let mut out = std::collections::BTreeMap::new();
        for (key, value) in tables {
            let name = key.get_ref().clone();
            if !valid_id(&name) {
                self.err(
                    key.span(),
                    format!("invalid {what} name {name:?}; expected {ID_RULE}"),
                );
            }
            let span = value.span();
            if let Some(d) = check(self, name.clone(), span, value.into_inner()) {
                out.insert(name, d);
            }
        }
        out
    }

    /// Decode the capability's own view of the file: its top-level
    /// `tables` (the pipeline checks separately that no unknown table is
    /// there). Only those tables are copied out of the document, not the
    /// whole file with its stages. `None` when the file does not decode
    /// (already reported).
    pub fn decode<T: DeserializeOwned>(&mut self, tables: &[&str]) -> Option<T> {
        let doc = self.doc?;
        let mut view = DeTable::new();
        for (key, value) in doc.get_ref() {
            if tables.contains(&key.get_ref().as_ref()) {
                view.insert(key.clone(), value.clone());
            }
        }
        let view = Spanned::new(doc.span(), view);
        match T::deserialize(toml::Deserializer::from(view)) {
            Ok(t) => Some(t),
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                self.err(span, crate::text::tidy_message(e.message()));
                None
            }
        }
    }
}

/// Everything one attempt of one stage is built from.
pub struct StageEnv<'a> {
    pub stage: &'a str,
    pub pipeline: &'a str,
    pub run_id: &'a str,
    pub grants: &'a Grants,
    pub decls: &'a Decls,
    /// The workspace on the host, canonical, and whether it is writable
    /// (`None`: not granted).
    pub workspace: Option<(PathBuf, bool)>,
    /// The stage's memory limit in bytes (containers default to it).
    pub memory: u64,
    pub secrets: Arc<SecretStore>,
    /// The stage's use of secrets (`grants.secrets` / `secrets-read`).
    pub secrets_cap: Arc<SecretsCap>,
    pub log: StageLog,
    pub audit: Audit,
    pub shared: &'a Shared,
}

/// What the host shares across stages and runs (connections, settings).
#[derive(Clone)]
pub struct Shared {
    pub http: reqwest::Client,
    pub http_limits: HttpLimits,
    pub docker: DockerEngine,
    pub scan: ScanConfig,
}

impl Default for Shared {
    fn default() -> Self {
        Self::with_http(super::http::HttpCap::client())
    }
}

impl Shared {
    /// With this HTTP client (a process keeps one: building a client
    /// loads the TLS roots, which costs more than running a stage).
    pub fn with_http(http: reqwest::Client) -> Self {
        Self {
            http,
            http_limits: HttpLimits::default(),
            docker: DockerEngine::default(),
            scan: ScanConfig::from_env(&std::env::temp_dir().join("pipeline-host")),
        }
    }
}

/// A capability (see the module docs).
pub trait Capability: Sized + Send + 'static {
    /// The WIT interface, the `grants` key, and the name plugins declare in
    /// `describe().capabilities` (`NAME` or `NAME.part`).
    const NAME: &'static str;
    /// A top-level table of the pipeline file this capability declares
    /// things in (`[git.NAME]`), if any.
    const TABLE: Option<&'static str> = None;
    /// `grants.NAME` as written, decoded with spans.
    type Raw: DeserializeOwned + Debug;
    /// What a stage is granted, compiled (`Default`: nothing).
    type Grant: Clone + Debug + Default + PartialEq + Send + Sync + 'static;
    /// What the pipeline declares for this capability (`Default`: nothing).
    type Decls: Clone + Debug + Default + PartialEq + Send + Sync + 'static;

    /// Reads the capability's declarations (only when `TABLE` is set).
    fn declare(_cx: &mut GrantCx<'_>) -> Self::Decls {
        Self::Decls::default()
    }

    /// Checks and compiles `grants.NAME` of one stage.
    fn compile(raw: &Self::Raw, decls: &Self::Decls, cx: &mut GrantCx<'_>) -> Self::Grant;

    /// Whether `grant` covers what a plugin declared it needs: `NAME` (any
    /// grant at all) or `NAME.part` (that part of it).
    fn covers(grant: &Self::Grant, part: Option<&str>) -> bool;

    /// Whether `grant` lets a stage change something beyond the run
    /// (push, deploy, send): an agent re-checks that it still owns its run
    /// before such a stage. Any grant at all, unless the capability says
    /// otherwise.
    fn reaches_outside(grant: &Self::Grant) -> bool {
        Self::covers(grant, None)
    }

    /// How to grant what `covers` found missing, for messages.
    fn hint(_part: Option<&str>) -> String {
        format!("grants.{} = [...]", Self::NAME)
    }

    /// Adds the interface's functions to `linker`, reaching this
    /// capability through `get`.
    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()>;

    /// This capability for one attempt of one stage.
    fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self>;
}

/// The `Raw` of a capability that has no `grants` key.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoGrant {}

/// A string with its place in the pipeline file.
pub type Str = serde_spanned::Spanned<String>;
pub type StrList = Vec<Str>;

/// How a TOML value's type is named in messages.
pub fn toml_type(v: &toml::Value) -> &'static str {
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

/// Names a grant lists that must be declared in `[TABLE.NAME]`: each must
/// exist, duplicates are dropped.
pub fn declared_names<T>(
    cx: &mut GrantCx<'_>,
    list: &StrList,
    declared: &std::collections::BTreeMap<String, T>,
    table: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in list {
        if !declared.contains_key(n.get_ref()) {
            let known = if declared.is_empty() {
                format!("no [{table}.NAME] tables are declared")
            } else {
                let names: Vec<String> = declared.keys().map(|k| format!("`{k}`")).collect();
                format!("declared: {}", names.join(", "))
            };
            cx.err(
                n.span(),
                format!(
                    "`grants.{table}` names undeclared `{}`; {known}",
                    n.get_ref()
                ),
            );
        } else if !out.contains(n.get_ref()) {
            out.push(n.get_ref().clone());
        }
    }
    out
}

/// What a declared name (`[git.NAME]`, `[environments.NAME]`) may hold.
pub const ID_RULE: &str = "letters, digits, `-`, `_` and `.`, starting with a letter or digit";

/// Whether `s` follows [`ID_RULE`].
pub fn valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
