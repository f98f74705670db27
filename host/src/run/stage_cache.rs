//! Stage caching: a stage that declares `cache = { inputs = [...] }` is
//! skipped when nothing it depends on changed since a successful run of
//! it, and that run's outputs, annotations, summary and artifacts are
//! replayed instead.
//!
//! The key is made of named parts (plugin digest, effective `with`,
//! grants, each input file, each upstream stage's outputs and artifacts),
//! each hashed; the entry keeps every part's digest so a miss can say
//! which part changed. Entries live in the run database (`stage_cache`
//! table); the artifacts themselves stay in the encrypted artifact store
//! under the run that produced them. Input files are hostile repository
//! content: they are listed and read beneath the workspace only, bounded.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use cap_std::fs::Dir;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::caps::log::LogLine;
use crate::confined::{FileError, Origin, Root};
use crate::pipeline::Stage;
use crate::run::artifacts::Digests;
use crate::run::record::{AnnotationRecord, CachedFrom, StageRecord, Status};
use crate::run::stage::RunShared;
use crate::store::{params, Db, StoreLocation};
use crate::wit::StageContext;

/// Most input files hashed for one stage.
pub const MAX_INPUT_FILES: usize = 10_000;
/// Most input bytes hashed for one stage.
pub const MAX_INPUT_BYTES: u64 = 1 << 30;
/// Entries kept per stage (the newest): branches and reverts hit, the
/// table does not grow without end.
pub const ENTRIES_PER_STAGE: usize = 32;
/// Deepest directory listed: a hostile tree nested deeper would exhaust
/// the listing thread's stack or the open files.
pub const MAX_DEPTH: usize = 64;
/// Most directory entries looked at while listing inputs.
const MAX_ENTRIES: usize = 200_000;

/// Why a stage's inputs could not be hashed: the stage runs uncached.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the workspace: {0}")]
    Workspace(std::io::Error),
    #[error("cache input `{path}`: {reason}")]
    File { path: String, reason: String },
    #[error("cache inputs match more than {max} files; narrow `cache.inputs`")]
    TooManyFiles { max: usize },
    #[error("cache inputs are more than {max} bytes; narrow `cache.inputs`")]
    TooManyBytes { max: u64 },
    #[error("the workspace has more than {max} entries to look through for cache inputs")]
    TooManyEntries { max: usize },
    #[error("`{path}` is nested more than {max} directories deep; cache inputs are not looked for there")]
    TooDeep { path: String, max: usize },
    #[error("cache input pattern `{0}` is not valid")]
    Pattern(String),
}

/// Bounds on what is hashed (tests lower them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub files: usize,
    pub bytes: u64,
    pub entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            files: MAX_INPUT_FILES,
            bytes: MAX_INPUT_BYTES,
            entries: MAX_ENTRIES,
        }
    }
}

/// A stage's cache key: part name (`plugin`, `with`, ``input `src/a.rs` ``)
/// → that part's sha256.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    parts: BTreeMap<String, String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::digest::sha256_hex(bytes)
}

impl CacheKey {
    /// Adds a part whose value is `value` (hashed here).
    pub fn part(&mut self, name: impl Into<String>, value: &[u8]) -> &mut Self {
        self.parts.insert(name.into(), sha256_hex(value));
        self
    }

    /// Adds a part already hashed (an input file's digest).
    pub fn digest_part(&mut self, name: impl Into<String>, digest: &str) -> &mut Self {
        self.parts.insert(name.into(), digest.to_string());
        self
    }

    /// The one digest of every part, names included.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (name, d) in &self.parts {
            // Lengths first: no two part lists hash the same bytes.
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((d.len() as u64).to_le_bytes());
            h.update(d.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// What differs from `earlier`, as a person reads it (`input
    /// `src/a.rs` changed`, `with changed`), in part order.
    pub fn changes_since(&self, earlier: &CacheKey) -> Vec<String> {
        let mut out = Vec::new();
        for (name, d) in &self.parts {
            match earlier.parts.get(name) {
                None => out.push(format!("{name} added")),
                Some(e) if e != d => out.push(format!("{name} changed")),
                Some(_) => {}
            }
        }
        out.extend(
            earlier
                .parts
                .keys()
                .filter(|n| !self.parts.contains_key(*n))
                .map(|n| format!("{n} removed")),
        );
        out
    }
}

/// JSON with object keys sorted at every level: one spelling per value.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(o) => {
                let m: BTreeMap<&String, serde_json::Value> =
                    o.iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::to_value(m).unwrap_or_default()
            }
            serde_json::Value::Array(a) => a.iter().map(sorted).collect(),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// Path → `sha256:…` of every regular file beneath `workspace` matching
/// one of `patterns`, in path order. Directories are listed without
/// following links; a matching link is opened beneath the workspace, so
/// one leading out of it is refused.
pub fn hash_inputs(
    workspace: &Path,
    patterns: &[String],
    limits: Limits,
) -> Result<BTreeMap<String, String>, InputError> {
    let matchers = patterns
        .iter()
        .map(|p| crate::pipeline::when_compile(p).map_err(|_| InputError::Pattern(p.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = Dir::open_ambient_dir(workspace, cap_std::ambient_authority())
        .map_err(InputError::Workspace)?;
    let mut found = Vec::new();
    let mut seen = 0usize;
    list(&dir, "", 0, &mut |rel, is_dir| {
        seen += 1;
        if seen > limits.entries {
            return Err(InputError::TooManyEntries {
                max: limits.entries,
            });
        }
        if !is_dir && matchers.iter().any(|m| m.is_match(rel)) {
            found.push(rel.to_string());
            if found.len() > limits.files {
                return Err(InputError::TooManyFiles { max: limits.files });
            }
        }
        Ok(())
    })?;
    found.sort();
    let root = Root::open(workspace, "the workspace").map_err(InputError::Workspace)?;
    let mut budget = limits.bytes;
    found
        .into_iter()
        .map(|rel| {
            let d = hash_one(&root, &rel, &mut budget, limits.bytes)?;
            Ok((rel, d))
        })
        .collect()
}

/// Calls `visit` with the relative path of every entry and whether it is
/// a directory (links are not: they are never followed here).
fn list(
    dir: &Dir,
    prefix: &str,
    depth: usize,
    visit: &mut dyn FnMut(&str, bool) -> Result<(), InputError>,
) -> Result<(), InputError> {
    let entries = dir.entries().map_err(InputError::Workspace)?;
    for e in entries {
        let e = e.map_err(InputError::Workspace)?;
        // Names that are not UTF-8 cannot be matched by a pattern.
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let rel = format!("{prefix}{name}");
        let kind = e.file_type().map_err(InputError::Workspace)?;
        visit(&rel, kind.is_dir())?;
        if kind.is_dir() {
            if depth >= MAX_DEPTH {
                return Err(InputError::TooDeep {
                    path: rel,
                    max: MAX_DEPTH,
                });
            }
            let sub = e.open_dir().map_err(InputError::Workspace)?;
            list(&sub, &format!("{rel}/"), depth + 1, visit)?;
        }
    }
    Ok(())
}

/// A matched entry's digest, within what is left of the byte budget.
fn hash_one(root: &Root, rel: &str, budget: &mut u64, max: u64) -> Result<String, InputError> {
    let err = |reason: String| InputError::File {
        path: rel.to_string(),
        reason,
    };
    let file = match root.open_file(Path::new(rel)) {
        Ok(f) => f,
        // A fifo or a link to a directory has no content; that it is
        // there is still part of the key.
        Err(FileError::NotAFile { .. }) => return Ok("not a regular file".into()),
        Err(FileError::Outside { .. }) => {
            return Err(err("a link that leads out of the workspace".into()))
        }
        Err(e) => return Err(err(e.to_string())),
    };
    let mut limited = file.take(*budget + 1);
    let mut counted = Counted {
        inner: &mut limited,
        n: 0,
    };
    let digest = crate::digest::sha256_of(&mut counted).map_err(|e| err(e.to_string()))?;
    if counted.n > *budget {
        return Err(InputError::TooManyBytes { max });
    }
    *budget -= counted.n;
    Ok(digest)
}

/// A reader that counts what it read.
struct Counted<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// What a hit replays: a successful stage record's reported parts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Entry {
    pub run_id: String,
    pub build_number: u64,
    pub summary: String,
    pub warning: bool,
    pub outputs: BTreeMap<String, String>,
    pub annotations: Vec<AnnotationRecord>,
    pub artifacts: Digests,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Entry>),
    /// Why not, as a person reads it (`no earlier run`, `input `a` changed`).
    Miss(String),
}

const SQLITE_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS stage_cache (
        pipeline TEXT NOT NULL,
        stage TEXT NOT NULL,
        key TEXT NOT NULL,
        parts TEXT NOT NULL,
        entry TEXT NOT NULL,
        stored_at INTEGER NOT NULL,
        PRIMARY KEY (pipeline, stage, key)
    );";

const POSTGRES_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS stage_cache (
        pipeline TEXT NOT NULL,
        stage TEXT NOT NULL,
        key TEXT NOT NULL,
        parts TEXT NOT NULL,
        entry TEXT NOT NULL,
        stored_at BIGINT NOT NULL,
        PRIMARY KEY (pipeline, stage, key)
    );";

/// The cache table; clones share one connection.
#[derive(Clone)]
pub struct StageCache {
    db: Arc<Mutex<Db>>,
}

impl std::fmt::Debug for StageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageCache").finish_non_exhaustive()
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl StageCache {
    /// The cache in the state directory's run database.
    pub fn open(state_dir: &Path) -> Result<Self> {
        Self::open_at(&StoreLocation::Dir(state_dir.to_path_buf()))
    }

    pub fn open_at(loc: &StoreLocation) -> Result<Self> {
        Self::with_db(Db::open(loc)?)
    }

    /// The cache in `db` (the table made when missing).
    pub fn with_db(db: Db) -> Result<Self> {
        if db.is_postgres() {
            db.transaction(|db| db.batch(POSTGRES_TABLE))?;
        } else {
            db.batch(SQLITE_TABLE)?;
        }
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
        })
    }

    /// The entry stored under `key`, or why there is none.
    pub fn lookup(&self, pipeline: &str, stage: &str, key: &CacheKey) -> Result<Lookup> {
        let db = self.db.lock();
        let row = db.query_opt(
            "SELECT entry FROM stage_cache WHERE pipeline = ?1 AND stage = ?2 AND key = ?3",
            &params![pipeline, stage, key.digest()],
        )?;
        if let Some(row) = row {
            return Ok(Lookup::Hit(Box::new(serde_json::from_str(
                &row.get_str(0)?,
            )?)));
        }
        let last = db.query_opt(
            "SELECT parts FROM stage_cache WHERE pipeline = ?1 AND stage = ?2
             ORDER BY stored_at DESC LIMIT 1",
            &params![pipeline, stage],
        )?;
        let Some(last) = last else {
            return Ok(Lookup::Miss("no earlier run".into()));
        };
        let earlier: CacheKey = serde_json::from_str(&last.get_str(0)?)?;
        let changes = key.changes_since(&earlier);
        Ok(Lookup::Miss(if changes.is_empty() {
            "no earlier run with this key".into()
        } else {
            changes.join(", ")
        }))
    }

    /// Keeps `entry` (of a successful stage) under `key`, and only the
    /// newest [`ENTRIES_PER_STAGE`] of the stage.
    pub fn store(&self, pipeline: &str, stage: &str, key: &CacheKey, entry: &Entry) -> Result<()> {
        let db = self.db.lock();
        // After the stage's newest even within one millisecond: which
        // entries are the newest is never a tie.
        let newest = db
            .query_opt(
                "SELECT MAX(stored_at) FROM stage_cache WHERE pipeline = ?1 AND stage = ?2",
                &params![pipeline, stage],
            )?
            .map(|r| r.opt_i64(0))
            .transpose()?
            .flatten()
            .unwrap_or(0);
        db.execute(
            "INSERT INTO stage_cache (pipeline, stage, key, parts, entry, stored_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (pipeline, stage, key) DO UPDATE SET parts = excluded.parts,
                 entry = excluded.entry, stored_at = excluded.stored_at",
            &params![
                pipeline,
                stage,
                key.digest(),
                serde_json::to_string(key)?,
                serde_json::to_string(entry)?,
                unix_ms().max(newest + 1)
            ],
        )?;
        db.execute(
            "DELETE FROM stage_cache WHERE pipeline = ?1 AND stage = ?2 AND key NOT IN
                (SELECT key FROM stage_cache WHERE pipeline = ?1 AND stage = ?2
                 ORDER BY stored_at DESC LIMIT ?3)",
            &params![pipeline, stage, ENTRIES_PER_STAGE as i64],
        )?;
        Ok(())
    }
}

/// A stage's cache key as this run stands.
fn key_for(
    shared: &RunShared,
    stage: &Stage,
    ctx: &StageContext,
    upstream: &[(String, Digests)],
    plugin_sha256: &str,
    inputs: &BTreeMap<String, String>,
) -> CacheKey {
    let o = &shared.opts;
    let mut k = CacheKey::default();
    let config: serde_json::Value = serde_json::from_str(&ctx.config).unwrap_or_default();
    let env: Vec<(&String, Option<&String>)> =
        stage.grants.env.iter().map(|n| (n, o.env.get(n))).collect();
    k.part(
        "pipeline and stage",
        format!(
            "{}\0{}\0{}\0{:?}",
            pipeline_identity(
                &shared.pipeline.origin,
                &shared.pipeline.file,
                o.trigger.as_ref().map(|t| t.repository.as_str())
            ),
            shared.pipeline.name,
            stage.name,
            stage.environment
        )
        .as_bytes(),
    )
    .part(
        "trigger",
        format!("{}\0{:?}\0{:?}", o.event, o.branch, o.tag).as_bytes(),
    )
    .part("plugin", plugin_sha256.as_bytes())
    .part("with", canonical_json(&config).as_bytes())
    // The grants and what they refer to (`[git.NAME]`…); no HashMaps in
    // them, so their Debug form is one spelling.
    .part(
        "grants",
        format!("{:?}\n{:?}", stage.grants, shared.pipeline.declared).as_bytes(),
    )
    .part("env", format!("{env:?}").as_bytes());
    for (path, d) in inputs {
        k.digest_part(format!("input `{path}`"), d);
    }
    for u in &ctx.needs {
        let status = format!("{:?}", u.status);
        let outputs: BTreeMap<&String, &String> = u.outputs.iter().map(|(a, b)| (a, b)).collect();
        k.part(
            format!("outputs of `{}`", u.stage),
            format!("{status}\0{outputs:?}").as_bytes(),
        );
    }
    for (producer, digests) in upstream {
        k.part(
            format!("artifacts of `{producer}`"),
            format!("{digests:?}").as_bytes(),
        );
    }
    k
}

/// Which pipeline this is beyond its name, which another repository could
/// copy: the operator's file (`host run FILE`), or the repository the run
/// came from and the file's path in its checkout (`host serve`).
fn pipeline_identity(origin: &Origin, file: &Path, repository: Option<&str>) -> String {
    match origin {
        Origin::Operator => {
            // Lexical (no disk access here): the same file named from
            // elsewhere is at worst a miss.
            let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
            format!("operator\0{}\0{repository:?}", file.display())
        }
        Origin::Untrusted { root, .. } => {
            let rel = file.strip_prefix(root).unwrap_or(file);
            format!("repository\0{}\0{repository:?}", rel.display())
        }
    }
}

/// One stage's use of the cache: its key (none when the stage is not
/// cached or its inputs could not be hashed).
pub(super) struct Probe {
    key: Option<CacheKey>,
}

/// Why this run does not look stages up: who asked for it so.
fn no_cache_reason(opts: &crate::run::options::RunOptions) -> String {
    match opts.trigger.as_ref() {
        Some(t) if t.no_cache => match (&t.rerun_of, &t.rerun_by) {
            (Some(of), Some(by)) => format!("{by} re-ran {of} without the cache"),
            _ => "the run was asked for without the cache".into(),
        },
        _ => "--no-cache".into(),
    }
}

/// A host line in the stage's log (and the live log).
fn host_line(shared: &RunShared, stage: &str, rec: &mut StageRecord, text: String) {
    let line = LogLine {
        at_ms: 0,
        stream: "host".into(),
        text,
    };
    shared.observer.stage_log(stage, &line);
    rec.log.push(line);
}

impl Probe {
    pub(super) fn none() -> Probe {
        Probe { key: None }
    }

    /// Looks `stage` up; on a hit its result is replayed into `rec` and
    /// `replayed` is true. A miss says why in the stage's log.
    pub(super) async fn start(
        shared: &Arc<RunShared>,
        stage: &Stage,
        ctx: &StageContext,
        upstream: &[(String, Digests)],
        rec: &mut StageRecord,
    ) -> (Probe, bool) {
        let none = Probe::none();
        let (Some(spec), Some(cache)) = (&stage.cache, &shared.stage_cache) else {
            return (none, false);
        };
        let (ws, patterns) = (shared.opts.workspace.clone(), spec.inputs.clone());
        let hashed =
            tokio::task::spawn_blocking(move || hash_inputs(&ws, &patterns, Limits::default()))
                .await;
        let inputs = match hashed {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                let text = shared
                    .secrets
                    .masker()
                    .mask(&format!("cache: not used: {e}"));
                host_line(shared, &stage.name, rec, text);
                return (none, false);
            }
            Err(e) => {
                tracing::warn!("cache inputs of `{}`: {e}", stage.name);
                return (none, false);
            }
        };
        let key = key_for(shared, stage, ctx, upstream, &rec.plugin_sha256, &inputs);
        let probe = Probe { key: Some(key) };
        if shared.opts.no_cache {
            host_line(
                shared,
                &stage.name,
                rec,
                format!("cache: not looked up ({})", no_cache_reason(&shared.opts)),
            );
            return (probe, false);
        }
        let found = {
            let (cache, key) = (cache.clone(), probe.key.clone().unwrap_or_default());
            let (p, s) = (shared.pipeline.name.clone(), stage.name.clone());
            tokio::task::spawn_blocking(move || cache.lookup(&p, &s, &key)).await
        };
        let miss = match found {
            Ok(Ok(Lookup::Hit(entry))) => match restore(shared, stage, &entry).await {
                Ok(()) => {
                    replay(shared, stage, *entry, rec);
                    return (probe, true);
                }
                Err(why) => why,
            },
            Ok(Ok(Lookup::Miss(why))) => why,
            Ok(Err(e)) => format!("the cache could not be read: {e:#}"),
            Err(e) => format!("the cache could not be read: {e}"),
        };
        let text = shared.secrets.masker().mask(&format!("cache miss: {miss}"));
        host_line(shared, &stage.name, rec, text);
        (probe, false)
    }

    /// Keeps a successful stage's result under its key.
    pub(super) async fn store(self, shared: &RunShared, stage: &Stage, rec: &StageRecord) {
        let (Some(key), Some(cache)) = (self.key, shared.stage_cache.clone()) else {
            return;
        };
        if rec.status != Status::Success || rec.cached_from.is_some() {
            return;
        }
        let entry = Entry {
            run_id: shared.opts.id.clone(),
            build_number: shared.opts.build_number,
            summary: rec.summary.clone(),
            warning: rec.warning,
            outputs: rec.outputs.clone(),
            annotations: rec.annotations.clone(),
            artifacts: rec.artifacts.clone(),
        };
        let (p, s) = (shared.pipeline.name.clone(), stage.name.clone());
        let stored = tokio::task::spawn_blocking(move || cache.store(&p, &s, &key, &entry)).await;
        if let Ok(Err(e)) = stored {
            tracing::warn!("keeping `{}` in the stage cache: {e:#}", stage.name);
        }
    }
}

/// The entry's artifacts, back in the workspace from the encrypted store
/// and checked against their digests; any problem is a miss.
async fn restore(shared: &RunShared, stage: &Stage, entry: &Entry) -> Result<(), String> {
    if entry.artifacts.is_empty() {
        return Ok(());
    }
    let Some(store) = shared.artifact_store.clone() else {
        return Err("this host has no artifact store to restore the artifacts from".into());
    };
    let ws = shared.opts.workspace.clone();
    let (name, run, digests) = (
        stage.name.clone(),
        entry.run_id.clone(),
        entry.artifacts.clone(),
    );
    let restored = tokio::task::spawn_blocking(move || {
        let root = Root::open(&ws, "the workspace").map_err(|e| e.to_string())?;
        for (path, digest) in &digests {
            crate::pipeline::check_artifact_path(path).map_err(|e| e.to_string())?;
            let bytes = store
                .fetch(&run, &name, path, digest)
                .map_err(|e| e.to_string())?;
            root.write_replace(Path::new(path), &bytes)
                .map_err(|e| format!("artifact `{path}`: {e}"))?;
        }
        crate::run::artifacts::verify(&ws, &name, &digests).map_err(|e| e.to_string())
    })
    .await;
    restored.unwrap_or_else(|e| Err(e.to_string()))
}

/// A hit: the stage's record is the entry's, masked with this run's
/// secrets too.
fn replay(shared: &RunShared, stage: &Stage, entry: Entry, rec: &mut StageRecord) {
    let m = shared.secrets.masker();
    rec.status = Status::Success;
    rec.warning = entry.warning;
    rec.summary = m.mask(&entry.summary);
    rec.outputs = entry
        .outputs
        .iter()
        .map(|(k, v)| (m.mask(k), m.mask(v)))
        .collect();
    rec.annotations = entry
        .annotations
        .into_iter()
        .map(|a| AnnotationRecord {
            title: m.mask(&a.title),
            message: m.mask(&a.message),
            file: a.file.as_deref().map(|f| m.mask(f)),
            ..a
        })
        .collect();
    rec.artifacts = entry.artifacts;
    let from = CachedFrom {
        run_id: entry.run_id,
        build_number: entry.build_number,
    };
    host_line(shared, &stage.name, rec, from.to_string());
    rec.cached_from = Some(from);
}

#[cfg(test)]
#[path = "stage_cache_tests.rs"]
mod tests;
