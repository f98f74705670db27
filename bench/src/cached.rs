//! Section 7, stage caching: a demo-like pipeline (build → test, lint →
//! package, each stage declaring `cache.inputs` over a generated source
//! tree) run once on a fresh state directory, then again with nothing
//! changed, when every stage is replayed. Runs go through `Launch`, as
//! `host run` does; each stage sleeps to stand for real work.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use host::run::launch::{Launch, RunControl};
use host::run::stores::RunStores;
use host::run::{Quiet, RunOptions, RunRecord, Status};
use host::runtime::Runtime;

#[derive(Serialize)]
pub struct Cached {
    pub stages: usize,
    /// Input files each stage hashes, and their total size.
    pub input_files: usize,
    pub input_bytes: u64,
    /// What the stages sleep in total (the work a hit saves).
    pub work_ms: u64,
    /// Median of first runs, each on a fresh state directory.
    pub first_ms: f64,
    /// Median of re-runs with nothing changed (every stage replayed).
    pub cached_ms: f64,
    /// first / cached.
    pub ratio: f64,
}

/// `(name, needs, sleep ms)` of the demo-like stages.
const STAGES: &[(&str, &[&str], u64)] = &[
    ("build", &[], 300),
    ("test", &["build"], 200),
    ("lint", &[], 100),
    ("package", &["test", "lint"], 100),
];

fn pipeline_text(plugin: &Path) -> String {
    let mut t = format!(
        "[pipeline]\nname = \"cached-bench\"\n\n[plugins]\nbench = \"{}\"\n\n",
        plugin.display()
    );
    for (name, needs, ms) in STAGES {
        let needs: Vec<String> = needs.iter().map(|n| format!("\"{n}\"")).collect();
        let _ = writeln!(
            t,
            "[[stage]]\nname = \"{name}\"\nplugin = \"bench\"\nneeds = [{}]\nwith = {{ mode = \"sleep\", ms = {ms} }}\ncache = {{ inputs = [\"src/**\", \"Cargo.lock\"] }}\n",
            needs.join(", ")
        );
    }
    t
}

/// A source tree like a small crate's: `files` files of ~4 KiB.
fn source_tree(ws: &Path, files: usize) -> Result<u64> {
    let mut bytes = 0;
    for i in 0..files {
        let dir = ws.join("src").join(format!("m{}", i % 16));
        std::fs::create_dir_all(&dir)?;
        let body = format!("// file {i}\n{}", "fn f() {}\n".repeat(400));
        bytes += body.len() as u64;
        std::fs::write(dir.join(format!("f{i}.rs")), body)?;
    }
    std::fs::write(ws.join("Cargo.lock"), "# lock\n")?;
    Ok(bytes + 7)
}

async fn run_once(
    runtime: &Arc<Runtime>,
    stores: &RunStores,
    ws: &Path,
    file: &Path,
) -> Result<(Duration, RunRecord)> {
    let started = Instant::now();
    let pipeline = Arc::new(host::pipeline::load(file).map_err(|e| anyhow::anyhow!("{e}"))?);
    let launch = Launch {
        runtime: runtime.clone(),
        stores,
        observer: Arc::new(Quiet),
        control: RunControl::new(),
    };
    let opts = RunOptions::new(host::run::record::new_run_id(), ws.to_path_buf());
    let rec = launch
        .run(pipeline, opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if rec.status != Status::Success {
        bail!("cached bench run failed: {:?}", rec.status);
    }
    Ok((started.elapsed(), rec))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub async fn measure(smoke: bool) -> Result<Cached> {
    let dir = tempfile::tempdir()?;
    let ws = dir.path().join("workspace");
    std::fs::create_dir_all(&ws)?;
    let files = if smoke { 20 } else { 500 };
    let input_bytes = source_tree(&ws, files)?;
    let file: PathBuf = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        pipeline_text(&pipeline_tests::plugins::plugin("bench-stage")),
    )?;
    // One engine and compiled-component cache for all: only the stage
    // cache starts empty on each first run.
    let runtime = Arc::new(Runtime::new(dir.path().join("components"))?);
    let reps = if smoke { 2 } else { 5 };
    let (mut first, mut cached) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let stores = RunStores::open(&dir.path().join(format!("state-{rep}")))?;
        let (took, rec) = run_once(&runtime, &stores, &ws, &file).await?;
        if rec.stages.iter().any(|s| s.cached_from.is_some()) {
            bail!("a first run replayed a stage");
        }
        first.push(took.as_secs_f64() * 1000.0);
        let (took, rec) = run_once(&runtime, &stores, &ws, &file).await?;
        if let Some(s) = rec.stages.iter().find(|s| s.cached_from.is_none()) {
            bail!("stage `{}` was not replayed on a re-run", s.name);
        }
        cached.push(took.as_secs_f64() * 1000.0);
    }
    let (first_ms, cached_ms) = (median(first), median(cached));
    Ok(Cached {
        stages: STAGES.len(),
        input_files: files + 1,
        input_bytes,
        work_ms: STAGES.iter().map(|s| s.2).sum(),
        first_ms,
        cached_ms,
        ratio: first_ms / cached_ms,
    })
}

/// Section 7 of the printed table.
pub fn table(c: &Cached) -> String {
    format!(
        "\n7. Stage caching: a {}-stage demo-like pipeline ({} ms of stage work), each stage hashing {} input files ({:.1} MiB)\n   first run {:.0} ms, re-run with nothing changed (all stages replayed) {:.0} ms: {:.1}× faster\n",
        c.stages,
        c.work_ms,
        c.input_files,
        c.input_bytes as f64 / (1 << 20) as f64,
        c.first_ms,
        c.cached_ms,
        c.ratio
    )
}
