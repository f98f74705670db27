//! The wasmtime side: one engine per host process, a linker holding every
//! capability, precompiled-component cache, and per-stage stores.
pub mod cache;
pub mod pool;
pub mod sandbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{
    types::{ComponentExtern, ComponentItem},
    Component, HasSelf, Linker,
};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::ResourceTable;

use crate::caps::{self, StageCaps};
use crate::wit::{PluginInfo, StageContext, StageError, StagePre, StageReport};
use cache::{CacheOutcome, ComponentCache};
use sandbox::{Limits, MemoryLimitExceeded, Sandbox, StageState};

/// The WIT package every plugin must target.
pub const WORLD: &str = "ci:stage/stage@0.1.0";

/// Epoch tick: the granularity of stage timeouts and of async yields.
const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct Runtime {
    engine: Engine,
    linker: Linker<StageState>,
    cache: ComponentCache,
    ticker_stop: Arc<AtomicBool>,
    /// Components already loaded by this process, by sha256, with their
    /// `describe()` answer: a long-lived host (`host serve`) loads each
    /// plugin once, not once per run.
    loaded: Mutex<HashMap<String, Loaded>>,
    /// The digest of each plugin file read, by path, with what its inode
    /// said then: a file whose inode, size, mtime and ctime are unchanged
    /// (ctime cannot be set back) is not read and hashed again.
    stamps: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
    /// The HTTP client the `http` capability sends with, built once.
    http: std::sync::OnceLock<reqwest::Client>,
    /// What is left of the instance pool.
    pool: pool::Pool,
}

/// What says a file is the one read before.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}

#[derive(Clone)]
struct Loaded {
    component: Component,
    needs: pool::Needs,
    pre: StagePre<StageState>,
    info: Option<PluginInfo>,
}

impl Loaded {
    /// This process's plugin of these bytes, as found at `path`.
    fn plugin(self, path: &Path, sha256: String, started: Instant) -> Plugin {
        Plugin {
            path: path.to_path_buf(),
            sha256,
            component: self.component,
            needs: self.needs,
            cache: CacheOutcome::Hit,
            load_time: started.elapsed(),
            pre: self.pre,
        }
    }
}

/// A loaded, linked plugin ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    pub path: PathBuf,
    pub sha256: String,
    pub component: Component,
    /// What one instance of it takes from the instance pool.
    pub needs: pool::Needs,
    pub cache: CacheOutcome,
    pub load_time: Duration,
    pre: StagePre<StageState>,
}

/// Why a plugin file cannot be used as a stage.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly component: {reason}")]
    NotComponent { path: PathBuf, reason: String },
    #[error("{path} does not implement the `{WORLD}` world: {reason}")]
    WrongWorld { path: PathBuf, reason: String },
}

/// How a stage ended when it did not return a report.
#[derive(Debug, thiserror::Error)]
pub enum StageFailure {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Memory(String),
    #[error("{0}")]
    LogLimit(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("{0}")]
    Plugin(String),
    #[error("cannot start: {0}")]
    Setup(String),
}

impl crate::wit::ci::stage::types::Host for StageState {}

impl Runtime {
    /// `cache_dir` holds precompiled components (trusted, host-only).
    pub fn new(cache_dir: PathBuf) -> Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool::config()));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<StageState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        use crate::wit::ci::stage as wit;
        wit::types::add_to_linker::<_, HasSelf<StageState>>(&mut linker, |s| s)?;
        caps::link_all(&mut linker)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?;
        }
        let cache = ComponentCache::new(&engine, cache_dir);
        Ok(Self {
            engine,
            linker,
            cache,
            ticker_stop,
            loaded: Mutex::new(HashMap::new()),
            stamps: Mutex::new(HashMap::new()),
            http: std::sync::OnceLock::new(),
            pool: pool::Pool::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// This process's client for the `http` capability (connections are
    /// reused across stages and runs; each request is still checked
    /// against its stage's grants).
    pub fn http_client(&self) -> reqwest::Client {
        self.http.get_or_init(caps::http::HttpCap::client).clone()
    }

    pub fn cache_dir(&self) -> &Path {
        self.cache.dir()
    }

    /// Read, verify, compile (or load from cache) and link a plugin.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let stamp = FileStamp::of(&std::fs::metadata(path).map_err(io)?);
        if let Some(plugin) = self.unchanged(path, stamp, started) {
            return Ok(plugin);
        }
        let file = std::fs::File::open(path).map_err(io)?;
        // The stamp of the file actually read (not of the path a moment
        // before).
        let stamp = FileStamp::of(&file.metadata().map_err(io)?);
        let mut bytes = Vec::with_capacity(stamp.len as usize);
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let plugin = self.load_bytes(path, &bytes, sha256.clone(), started)?;
        if FileStamp::of(&file.metadata().map_err(io)?) == stamp {
            self.stamps
                .lock()
                .insert(path.to_path_buf(), (stamp, sha256));
        }
        Ok(plugin)
    }

    /// The plugin at `path` as loaded before, when the file is unchanged.
    fn unchanged(&self, path: &Path, stamp: FileStamp, started: Instant) -> Option<Plugin> {
        let sha256 = match self.stamps.lock().get(path) {
            Some((s, sha)) if *s == stamp => sha.clone(),
            _ => return None,
        };
        let l = self.loaded.lock().get(&sha256).cloned()?;
        Some(l.plugin(path, sha256, started))
    }

    fn load_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        sha256: String,
        started: Instant,
    ) -> Result<Plugin, LoadError> {
        check_component_header(path, bytes)?;
        if let Some(l) = self.loaded.lock().get(&sha256).cloned() {
            return Ok(l.plugin(path, sha256, started));
        }
        let (component, cache) =
            self.cache
                .load(&self.engine, &sha256, bytes)
                .map_err(|e| LoadError::NotComponent {
                    path: path.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = StagePre::new(instance_pre).map_err(wrong_world)?;
        let needs = pool::Needs::of(&component);
        self.loaded.lock().insert(
            sha256.clone(),
            Loaded {
                component: component.clone(),
                needs,
                pre: pre.clone(),
                info: None,
            },
        );
        Ok(Plugin {
            path: path.to_path_buf(),
            sha256,
            component,
            needs,
            cache,
            load_time: started.elapsed(),
            pre,
        })
    }

    /// Imports and exports of a component, by name (for `plugin inspect`).
    pub fn interface(&self, plugin: &Plugin) -> (Vec<String>, Vec<String>) {
        let ty = plugin.component.component_type();
        let name = |(n, item): (&str, ComponentExtern<'_>)| match item.ty {
            ComponentItem::ComponentFunc(_) => format!("func {n}"),
            ComponentItem::ComponentInstance(_) => format!("interface {n}"),
            _ => n.to_string(),
        };
        let imports = ty.imports(&self.engine).map(name).collect();
        let exports = ty.exports(&self.engine).map(name).collect();
        (imports, exports)
    }

    /// Call `describe` in a sandbox with no grants at all (once per
    /// component and process).
    pub async fn describe(&self, plugin: &Plugin) -> Result<PluginInfo> {
        let known = self
            .loaded
            .lock()
            .get(&plugin.sha256)
            .and_then(|l| l.info.clone());
        if let Some(info) = known {
            return Ok(info);
        }
        let info = self.call_describe(plugin).await?;
        if let Some(l) = self.loaded.lock().get_mut(&plugin.sha256) {
            l.info = Some(info.clone());
        }
        Ok(info)
    }

    async fn call_describe(&self, plugin: &Plugin) -> Result<PluginInfo> {
        let caps = StageCaps::ungranted("describe");
        let sandbox = Sandbox {
            workspace: None,
            env: vec![],
            memory_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(10),
        };
        let _admitted = self.pool.admit(plugin.needs).await;
        let mut store = self.store(&sandbox, caps)?;
        let fut = async {
            let stage = plugin.pre.instantiate_checked(&mut store).await?;
            stage.call_describe(&mut store).await
        };
        tokio::time::timeout(sandbox.timeout, fut)
            .await
            .context("describe() timed out")?
            .map_err(anyhow::Error::from)
            .context("describe() failed")
    }

    fn store(&self, sandbox: &Sandbox, caps: StageCaps) -> Result<Store<StageState>> {
        let wasi = sandbox.wasi_ctx(&caps)?;
        let mut store = Store::new(
            &self.engine,
            StageState {
                wasi,
                table: ResourceTable::new(),
                limits: Limits::new(usize::try_from(sandbox.memory_bytes).unwrap_or(usize::MAX)),
                caps,
            },
        );
        store.limiter(|s| &mut s.limits);
        // Yield to tokio every tick: the stage can then be cancelled by
        // dropping its future (timeout, Ctrl-C) even in a busy loop.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }

    /// Run one stage to its report, within its sandbox and limits.
    pub async fn run_stage(
        &self,
        plugin: &Plugin,
        sandbox: &Sandbox,
        caps: StageCaps,
        ctx: &StageContext,
    ) -> Result<StageReport, StageFailure> {
        let log = caps.log.clone();
        // Before the store: given back after it is dropped.
        let _admitted = self.pool.admit(plugin.needs).await;
        let timer = crate::perf::start(crate::perf::Phase::Store);
        let mut store = self
            .store(sandbox, caps)
            .map_err(|e| StageFailure::Setup(format!("{e:#}")))?;
        drop(timer);
        let fut = async {
            let timer = crate::perf::start(crate::perf::Phase::Instantiate);
            let stage = plugin.pre.instantiate_checked(&mut store).await?;
            drop(timer);
            let _timer = crate::perf::start(crate::perf::Phase::Call);
            stage.call_run(&mut store, ctx).await
        };
        let outcome = tokio::time::timeout(sandbox.timeout, fut).await;
        let result = match outcome {
            Err(_) => Err(StageFailure::Timeout(sandbox.timeout)),
            Ok(Ok(Ok(report))) => Ok(report),
            Ok(Ok(Err(e))) => Err(StageFailure::Plugin(describe_stage_error(&e))),
            Ok(Err(trap)) => Err(classify_trap(trap, &log, store.data().limits.memory_hit)),
        };
        let _timer = crate::perf::start(crate::perf::Phase::Teardown);
        drop(store);
        result
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn describe_stage_error(e: &StageError) -> String {
    match e {
        StageError::Config(m) => format!("configuration error: {m}"),
        StageError::Capability(c) => format!("capability error: {}", caps::describe(c)),
        StageError::Internal(m) => m.clone(),
    }
}

fn classify_trap(
    err: wasmtime::Error,
    log: &caps::log::StageLog,
    memory_hit: bool,
) -> StageFailure {
    if let Some(e) = err
        .chain()
        .find_map(|c| c.downcast_ref::<caps::log::LogLimitExceeded>())
    {
        return StageFailure::LogLimit(e.to_string());
    }
    if log.limit_exceeded() {
        return StageFailure::LogLimit(format!(
            "stage exceeded its log limit ({})",
            err.root_cause()
        ));
    }
    if let Some(e) = err
        .chain()
        .find_map(|c| c.downcast_ref::<MemoryLimitExceeded>())
    {
        return StageFailure::Memory(e.to_string());
    }
    if memory_hit {
        return StageFailure::Memory(format!(
            "stage exceeded its memory limit ({})",
            err.root_cause()
        ));
    }
    if let Some(e) = err
        .chain()
        .find_map(|c| c.downcast_ref::<sandbox::TableLimitExceeded>())
    {
        return StageFailure::Memory(e.to_string());
    }
    // wasmtime's own count check ("resource limit exceeded: memory count
    // too high at 33"): say which limits a stage has.
    let cause = err.root_cause().to_string();
    if cause.starts_with("resource limit exceeded") {
        return StageFailure::Memory(format!(
            "stage exceeded its limits of {} instances, {} memories and {} tables in all ({cause})",
            sandbox::MAX_INSTANCES,
            sandbox::MAX_MEMORIES,
            sandbox::MAX_TABLES
        ));
    }
    // The root cause is the useful part (e.g. "wasm trap: unreachable");
    // add the guest's panic message if it printed one: Rust's default hook
    // writes "panicked at" to stderr, the SDK's hook logs "panic: …" at error.
    let mut msg = err.root_cause().to_string();
    if let Some(panic) = log.finish().iter().rev().find(|l| {
        (l.stream == "stderr" && l.text.contains("panicked at"))
            || (l.stream == "error" && l.text.starts_with("panic: "))
    }) {
        msg = format!("{msg} ({})", panic.text);
    }
    StageFailure::Trap(msg)
}

/// Cheap checks before handing bytes to the compiler, for clear messages.
pub fn check_component_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let not = |reason: &str| LoadError::NotComponent {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(not("it does not start with the Wasm magic `\\0asm`"));
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(not(
            "it is a core Wasm module; build it as a component (e.g. `--target wasm32-wasip2`)",
        ));
    }
    Ok(())
}
