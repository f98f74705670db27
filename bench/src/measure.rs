//! The measurements. Each repeats its timed part and keeps the median.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use host::caps::http::HttpCap;
use host::caps::log::{LogLine, LogSink, StageLog, DEFAULT_LOG_LIMIT};
use host::caps::secrets::Masker;
use host::run::launch::{Launch, RunControl};
use host::run::stores::RunStores;
use host::run::{Quiet, RunObserver, RunOptions, RunRecord, Status};
use host::runtime::Runtime;

use crate::Options;

#[derive(Serialize)]
pub struct Results {
    pub date: String,
    pub build: &'static str,
    pub cores: usize,
    pub smoke: bool,
    pub overhead: Vec<OverheadRow>,
    /// Marginal cost of one more no-op stage (slope between the smallest
    /// and largest N).
    pub per_stage_ms: f64,
    pub per_container_ms: Option<f64>,
    pub docker_note: Option<String>,
    /// Where the longest chain's time goes.
    pub phases: Vec<PhaseRow>,
    pub loads: Vec<LoadRow>,
    pub load_total: LoadRow,
    pub scaling: Vec<ScalingRow>,
    pub memory: Vec<MemoryRow>,
    pub calls: Vec<CallRow>,
    pub queued: crate::queued::Queued,
}

#[derive(Serialize)]
pub struct OverheadRow {
    pub stages: usize,
    pub wasm_ms: f64,
    pub docker_ms: Option<f64>,
    /// docker / wasm.
    pub ratio: Option<f64>,
}

/// One phase of a run (host::perf): how often it ran per run, and the
/// median over the runs of its time each time.
#[derive(Serialize)]
pub struct PhaseRow {
    pub phase: &'static str,
    pub count: u64,
    pub median_us: f64,
}

#[derive(Serialize, Clone, Default)]
pub struct LoadRow {
    pub plugin: String,
    pub size_bytes: u64,
    pub compile_ms: f64,
    pub cached_ms: f64,
    /// compile / cached.
    pub ratio: f64,
}

#[derive(Serialize)]
pub struct ScalingRow {
    pub stages: usize,
    pub total_ms: f64,
    pub ideal_ms: f64,
    /// total / ideal (1.0 is perfect).
    pub ratio: f64,
}

#[derive(Serialize)]
pub struct MemoryRow {
    pub stages: usize,
    /// After loading the engine and the plugin and one warm-up run.
    pub baseline_mib: f64,
    pub peak_mib: f64,
}

#[derive(Serialize)]
pub struct CallRow {
    pub call: &'static str,
    pub count: usize,
    /// Per call, from inside a stage (the stage's time minus a no-op stage's).
    pub stage_us: f64,
    /// Per call, the host doing the same natively.
    pub native_us: f64,
    /// stage / native.
    pub ratio: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A state directory, a workspace, the engine and the benchmark plugin.
struct Bench {
    _dir: tempfile::TempDir,
    state: PathBuf,
    workspace: PathBuf,
    plugin: PathBuf,
    runtime: Arc<Runtime>,
    stores: Arc<RunStores>,
    files: AtomicUsize,
}

impl Bench {
    fn new(state: Option<PathBuf>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let state = state.unwrap_or_else(|| dir.path().join("state"));
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(&workspace)?;
        let runtime = Arc::new(Runtime::new(state.join("cache").join("components"))?);
        Ok(Self {
            stores: RunStores::open(&state)?,
            workspace: workspace.canonicalize()?,
            _dir: dir,
            state,
            plugin: pipeline_tests::plugins::plugin("bench-stage"),
            runtime,
            files: AtomicUsize::new(0),
        })
    }

    /// A pipeline file of these `[[stage]]` entries (plugin `bench`).
    fn pipeline(&self, stages: &str) -> Result<PathBuf> {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let path = self._dir.path().join(format!("pipeline-{n}.toml"));
        let text = format!(
            "[pipeline]\nname = \"bench\"\n\n[plugins]\nbench = \"{}\"\n\n{stages}",
            self.plugin.display()
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Run a pipeline file as `host run` does, on a worker thread:
    /// parsing, plugin checks, executor, live record. Fails unless every
    /// stage passed.
    async fn run(&self, file: &Path) -> Result<Duration> {
        let (runtime, stores, workspace) = (
            self.runtime.clone(),
            self.stores.clone(),
            self.workspace.clone(),
        );
        let file = file.to_path_buf();
        tokio::spawn(async move { run_on(runtime, &stores, workspace, &file).await }).await?
    }
}

/// [`Bench::run`]'s task.
async fn run_on(
    runtime: Arc<Runtime>,
    stores: &RunStores,
    workspace: PathBuf,
    file: &Path,
) -> Result<Duration> {
    let started = Instant::now();
    let timer = host::perf::start(host::perf::Phase::Load);
    let pipeline = Arc::new(host::pipeline::load(file).map_err(|e| anyhow::anyhow!("{e}"))?);
    drop(timer);
    let opts = RunOptions::new(host::run::record::new_run_id(), workspace);
    let launch = Launch {
        runtime,
        stores,
        observer: Arc::new(Quiet),
        control: RunControl::new(),
    };
    let record = launch
        .run(pipeline, opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let took = started.elapsed();
    if record.status != Status::Success {
        let why: Vec<String> = record
            .stages
            .iter()
            .filter(|s| s.status != Status::Success)
            .map(|s| format!("{}: {}", s.name, s.error.clone().unwrap_or_default()))
            .collect();
        bail!("benchmark run failed: {}", why.join("; "));
    }
    Ok(took)
}

impl Bench {
    /// Median of `reps` runs after one warm-up, in ms.
    async fn time(&self, file: &Path, reps: usize) -> Result<f64> {
        self.run(file).await?;
        let mut v = Vec::new();
        for _ in 0..reps {
            v.push(ms(self.run(file).await?));
        }
        Ok(median(v))
    }
}

fn chain(n: usize, with: &str) -> String {
    (1..=n)
        .map(|i| {
            let needs = if i > 1 {
                format!("needs = [\"s{}\"]\n", i - 1)
            } else {
                String::new()
            };
            format!("[[stage]]\nname = \"s{i}\"\nplugin = \"bench\"\n{needs}with = {with}\n\n")
        })
        .collect()
}

/// `--chain N`: a chain of N no-op stages run for about five seconds
/// (something for a profiler to look at), printing the mean run time.
pub async fn profile_chain(n: usize) -> Result<()> {
    let bench = Bench::new(None)?;
    let file = bench.pipeline(&chain(n, "{ mode = \"noop\" }"))?;
    bench.run(&file).await?;
    let (started, mut runs) = (Instant::now(), Vec::new());
    while started.elapsed() < Duration::from_secs(5) {
        runs.push(ms(bench.run(&file).await?));
    }
    let count = runs.len();
    let mean = ms(started.elapsed()) / count as f64;
    runs.sort_by(f64::total_cmp);
    // The fastest tenth shows the cost with the least interference from
    // the rest of the machine (what A/B comparisons of a change need).
    println!(
        "{n} stages: {mean:.3} ms per run, median {:.3}, p10 {:.3} ({count} runs)",
        runs[count / 2],
        runs[count / 10]
    );
    for row in phase_rows(&bench, &file, 200).await? {
        print!("{} {:.1} µs ×{} · ", row.phase, row.median_us, row.count);
    }
    println!();
    Ok(())
}

fn independent(n: usize, with: &str, grants: &str) -> String {
    (1..=n)
        .map(|i| {
            format!("[[stage]]\nname = \"s{i}\"\nplugin = \"bench\"\nwith = {with}\n{grants}\n")
        })
        .collect()
}

pub async fn all(opts: &Options) -> Result<Results> {
    let bench = Bench::new(None)?;
    let reps = if opts.smoke { 2 } else { 7 };
    if opts.stages_only {
        // Sections 1, 3 and 5 only: what a stage costs, without
        // containers, plugin compiles, memory children or servers.
        let mut r = stage_overhead(&bench, opts, reps, Some("--stages-only".into())).await?;
        r.scaling = scaling(&bench, opts, reps).await?;
        r.calls = calls(&bench, opts, reps).await?;
        return Ok(r);
    }
    eprintln!("bench: building the plugins and a container image…");
    let docker = if opts.docker {
        docker_image().err()
    } else {
        Some("--no-docker".to_string())
    };
    let mut r = stage_overhead(&bench, opts, reps, docker).await?;
    eprintln!("bench: plugin loads (compiling every built-in plugin)");
    let smoke = opts.smoke;
    r.loads = tokio::task::spawn_blocking(move || plugin_loads(smoke)).await??;
    let loads = &r.loads;
    r.load_total = LoadRow {
        plugin: format!("all {} built-in", loads.len()),
        size_bytes: loads.iter().map(|l| l.size_bytes).sum(),
        compile_ms: loads.iter().map(|l| l.compile_ms).sum(),
        cached_ms: loads.iter().map(|l| l.cached_ms).sum(),
        ratio: loads.iter().map(|l| l.compile_ms).sum::<f64>()
            / loads.iter().map(|l| l.cached_ms).sum::<f64>(),
    };
    r.scaling = scaling(&bench, opts, reps).await?;
    for k in if opts.smoke { [1, 4] } else { [1, 64] } {
        eprintln!("bench: peak memory with {k} concurrent stages");
        r.memory.push(rss_of_child(k, &bench.state)?);
    }
    r.calls = calls(&bench, opts, reps).await?;
    r.queued = tokio::task::spawn_blocking(move || crate::queued::run(smoke)).await??;
    Ok(r)
}

/// Section 1 and the results' header; the other sections empty, for the
/// caller to fill. `docker_note`: why containers are not measured (none:
/// they are).
async fn stage_overhead(
    bench: &Bench,
    opts: &Options,
    reps: usize,
    docker_note: Option<String>,
) -> Result<Results> {
    let (overhead, phases) = overhead(bench, opts, reps, docker_note.is_none()).await?;
    let (first, last) = (&overhead[0], &overhead[overhead.len() - 1]);
    let span = (last.stages - first.stages) as f64;
    let per_stage_ms = (last.wasm_ms - first.wasm_ms) / span;
    let per_container_ms = match (first.docker_ms, last.docker_ms) {
        (Some(a), Some(b)) => Some((b - a) / span),
        _ => None,
    };
    Ok(Results {
        date: host::run::record::now_rfc3339(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        smoke: opts.smoke,
        overhead,
        per_stage_ms,
        per_container_ms,
        docker_note,
        phases,
        loads: Vec::new(),
        load_total: LoadRow::default(),
        scaling: Vec::new(),
        memory: Vec::new(),
        calls: Vec::new(),
        queued: crate::queued::Queued::default(),
    })
}

/// Section 1: N chained no-op stages vs N `docker run --rm`, and where
/// the time of the longest chain goes, phase by phase.
async fn overhead(
    bench: &Bench,
    opts: &Options,
    reps: usize,
    docker: bool,
) -> Result<(Vec<OverheadRow>, Vec<PhaseRow>)> {
    let sizes: &[usize] = if opts.smoke { &[1, 2] } else { &[1, 10, 50] };
    let mut rows = Vec::new();
    let mut phases = Vec::new();
    for &n in sizes {
        eprintln!("bench: {n} no-op stages");
        let file = bench.pipeline(&chain(n, "{ mode = \"noop\" }"))?;
        let wasm_ms = bench.time(&file, reps).await?;
        if n == *sizes.last().unwrap() {
            phases = phase_rows(bench, &file, reps).await?;
        }
        let docker_ms = if docker {
            let docker_reps = if n == 1 { 3 } else { 1 };
            Some(tokio::task::spawn_blocking(move || docker_steps(n, docker_reps)).await??)
        } else {
            None
        };
        rows.push(OverheadRow {
            stages: n,
            wasm_ms,
            docker_ms,
            ratio: docker_ms.map(|d| d / wasm_ms),
        });
    }
    Ok((rows, phases))
}

/// The host's phase timers over `reps` runs of `file`: each phase's median
/// over the runs of its time per time it ran (per stage, or per run).
async fn phase_rows(bench: &Bench, file: &Path, reps: usize) -> Result<Vec<PhaseRow>> {
    // Each run is timed alone and each phase's figure is its median over
    // the runs: one run the machine disturbed (a page-cache flush, another
    // process) moves a mean far more than the cost of a phase.
    let mut runs: Vec<(f64, Vec<host::perf::PhaseTotal>)> = Vec::new();
    for _ in 0..reps {
        host::perf::enable(true);
        let took = ms(bench.run(file).await?) * 1000.0;
        runs.push((took, host::perf::totals()));
    }
    host::perf::enable(false);
    let phases = runs.first().map_or(0, |(_, t)| t.len());
    let mut rows = Vec::new();
    for i in 0..phases {
        let t = &runs[0].1[i];
        let count = runs.iter().map(|(_, t)| t[i].count).max().unwrap_or(0);
        if count == 0 {
            continue;
        }
        let per_time = |t: &host::perf::PhaseTotal| t.nanos as f64 / 1000.0 / count as f64;
        rows.push(PhaseRow {
            phase: t.name,
            count,
            median_us: median(runs.iter().map(|(_, t)| per_time(&t[i])).collect()),
        });
    }
    // Phases inside a stage are part of the stage's own time.
    let untimed = runs.iter().map(|(took, totals)| {
        let timed: f64 = totals
            .iter()
            .filter(|t| !t.in_stage)
            .map(|t| t.nanos as f64 / 1000.0)
            .sum();
        took - timed
    });
    rows.push(PhaseRow {
        phase: "untimed",
        count: 1,
        median_us: median(untimed.collect()),
    });
    Ok(rows)
}

/// Section 3: K independent stages that each wait 100 ms.
async fn scaling(bench: &Bench, opts: &Options, reps: usize) -> Result<Vec<ScalingRow>> {
    let widths: &[usize] = if opts.smoke {
        &[1, 4]
    } else {
        &[1, 8, 64, 256]
    };
    let mut rows = Vec::new();
    for &k in widths {
        eprintln!("bench: {k} parallel stages of 100 ms");
        let file = bench.pipeline(&independent(k, "{ mode = \"sleep\", ms = 100 }", ""))?;
        let total_ms = bench.time(&file, reps.min(3)).await?;
        rows.push(ScalingRow {
            stages: k,
            total_ms,
            ideal_ms: 100.0,
            ratio: total_ms / 100.0,
        });
    }
    Ok(rows)
}

/// Section 5: `log` and `http` calls from a stage vs the same natively.
async fn calls(bench: &Bench, opts: &Options, reps: usize) -> Result<Vec<CallRow>> {
    let noop = bench.pipeline(&chain(1, "{ mode = \"noop\" }"))?;
    let t0 = bench.time(&noop, reps).await?;
    let mut calls = Vec::new();
    let logs = if opts.smoke { 100 } else { 10_000 };
    eprintln!("bench: {logs} log calls");
    let file = bench.pipeline(&chain(1, &format!("{{ mode = \"log\", count = {logs} }}")))?;
    let stage_us = (bench.time(&file, reps).await? - t0) * 1000.0 / logs as f64;
    if std::env::var_os("BENCH_LOG_PHASES").is_some() {
        for r in phase_rows(bench, &file, reps).await? {
            eprintln!("log run: {} {:.1} µs ×{}", r.phase, r.median_us, r.count);
        }
    }
    let native_us = native_logs(bench, logs, reps).await?;
    calls.push(CallRow {
        call: "log",
        count: logs,
        stage_us,
        native_us,
        ratio: stage_us / native_us,
    });
    let gets = if opts.smoke { 10 } else { 1000 };
    eprintln!("bench: {gets} http calls");
    let server = pipeline_tests::http::TestServer::start(None).await?;
    let url = server.url("/ok");
    let file = bench.pipeline(&independent(
        1,
        &format!("{{ mode = \"http\", count = {gets}, url = \"{url}\" }}"),
        "grants = { http = [\"http://127.0.0.1:*/*\"] }",
    ))?;
    let stage_us = (bench.time(&file, reps).await? - t0) * 1000.0 / gets as f64;
    let native_us = native_gets(&url, gets).await?;
    calls.push(CallRow {
        call: "http",
        count: gets,
        stage_us,
        native_us,
        ratio: stage_us / native_us,
    });
    Ok(calls)
}

const IMAGE: &str = "pipeline-bench/noop:latest";

/// A minimal image (static busybox, `true`): nothing can be pulled here.
fn docker_image() -> Result<(), String> {
    let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
    if !ok(Command::new("docker").arg("version")) {
        return Err("no Docker engine (run `just services`)".into());
    }
    if ok(Command::new("docker").args(["image", "inspect", IMAGE])) {
        return Ok(());
    }
    let ctx = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", ctx.path().join("busybox"))
        .map_err(|e| format!("/bin/busybox: {e} (`just services` installs busybox-static)"))?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\", \"true\"]\n",
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(ctx.path())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "docker build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// `n` steps as `docker run --rm` one after the other; median total of `reps`.
fn docker_steps(n: usize, reps: usize) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..reps {
        let started = Instant::now();
        for _ in 0..n {
            let st = Command::new("docker")
                .args(["run", "--rm", "--network", "none", IMAGE])
                .stdout(std::process::Stdio::null())
                .status()?;
            if !st.success() {
                bail!("docker run {IMAGE} failed: {st}");
            }
        }
        v.push(ms(started.elapsed()));
    }
    Ok(median(v))
}

/// Compile each built-in plugin into an empty cache, then load it from
/// the cache in a fresh engine.
fn plugin_loads(smoke: bool) -> Result<Vec<LoadRow>> {
    pipeline_tests::plugins::plugin("tag");
    let dir = pipeline_tests::plugins::target_dir().join("plugins");
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".wasm"))
                .map(str::to_string)
        })
        .filter(|n| !matches!(n.as_str(), "hostile" | "bench-stage"))
        .collect();
    names.sort();
    if smoke {
        names.retain(|n| n == "tag");
    }
    let mut rows = Vec::new();
    for name in names {
        let path = dir.join(format!("{name}.wasm"));
        let cache = tempfile::tempdir()?;
        let compile = {
            let rt = Runtime::new(cache.path().to_path_buf())?;
            let started = Instant::now();
            rt.load(&path).with_context(|| format!("loading {name}"))?;
            ms(started.elapsed())
        };
        let mut cached = Vec::new();
        for _ in 0..3 {
            let rt = Runtime::new(cache.path().to_path_buf())?;
            let started = Instant::now();
            rt.load(&path)?;
            cached.push(ms(started.elapsed()));
        }
        let cached_ms = median(cached);
        rows.push(LoadRow {
            size_bytes: std::fs::metadata(&path)?.len(),
            plugin: name,
            compile_ms: compile,
            cached_ms,
            ratio: compile / cached_ms,
        });
    }
    Ok(rows)
}

fn rss_of_child(k: usize, state: &Path) -> Result<MemoryRow> {
    let out = Command::new(std::env::current_exe()?)
        .args(["--rss-child", &k.to_string()])
        .env("BENCH_STATE", state)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "memory child failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |key: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .context("memory child output")?
            .trim()
            .parse::<f64>()
            .map(|kb| kb / 1024.0)
            .map_err(Into::into)
    };
    Ok(MemoryRow {
        stages: k,
        baseline_mib: field("baseline_kb")?,
        peak_mib: field("peak_kb")?,
    })
}

fn vm_hwm_kb() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/self/status")
}

/// In a fresh process: warm up, then `k` stages at once, each holding its
/// instance for 300 ms; print the peak resident set before and after.
pub fn rss_child(k: usize) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let bench = Bench::new(std::env::var_os("BENCH_STATE").map(PathBuf::from))?;
        let warm = bench.pipeline(&chain(1, "{ mode = \"noop\" }"))?;
        bench.run(&warm).await?;
        println!("baseline_kb {}", vm_hwm_kb()?);
        let file = bench.pipeline(&independent(k, "{ mode = \"sleep\", ms = 300 }", ""))?;
        bench.run(&file).await?;
        println!("peak_kb {}", vm_hwm_kb()?);
        Ok(())
    })
}

/// The same lines pushed by the host itself, like with like: through a
/// stage's log (budget, masking) into the live record of a run of their
/// own, from a task on the runtime's workers, until the record is saved;
/// less the same run without lines (as the stage's side is less a no-op
/// stage's run).
async fn native_logs(bench: &Bench, n: usize, reps: usize) -> Result<f64> {
    let mut per_line = Vec::new();
    for _ in 0..reps.max(1) {
        let with = native_log_run(bench, n).await?;
        let without = native_log_run(bench, 0).await?;
        per_line.push((ms(with) - ms(without)) * 1000.0 / n as f64);
    }
    Ok(median(per_line))
}

/// One recorded run in which the host logs `n` lines.
async fn native_log_run(bench: &Bench, n: usize) -> Result<Duration> {
    let opts = RunOptions::new(host::run::record::new_run_id(), bench.workspace.clone());
    let recorder = bench.stores.recorder(&opts.id, Arc::new(Quiet));
    tokio::spawn(async move {
        let record = RunRecord::new("native-log", &opts);
        let started = Instant::now();
        recorder.run_started(&record);
        let observer = recorder.clone();
        let sink: LogSink =
            Arc::new(move |stage: &str, line: &LogLine| observer.stage_log(stage, line));
        let log = StageLog::new("native", DEFAULT_LOG_LIMIT, Masker::default(), Some(sink));
        for _ in 0..n {
            log.push("info", "a log line of about forty bytes, give or take")
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        drop(log);
        recorder.finish(&record).await?;
        Ok(started.elapsed())
    })
    .await?
}

/// The same GETs with the host's HTTP client, natively, measured like a
/// stage's: from a task on the runtime's workers (a stage runs in one;
/// the bench's own `block_on` thread would add a cross-thread hop to every
/// request), over one kept-alive connection, after a warm-up.
async fn native_gets(url: &str, n: usize) -> Result<f64> {
    let url = url.to_string();
    tokio::spawn(async move {
        let client = HttpCap::client();
        let get = |client: &reqwest::Client| {
            let req = client.get(&url);
            async move {
                let r = req.send().await?;
                if !r.status().is_success() {
                    bail!("GET: {}", r.status());
                }
                r.bytes().await?;
                Ok(())
            }
        };
        for _ in 0..10 {
            get(&client).await?;
        }
        let started = Instant::now();
        for _ in 0..n {
            get(&client).await?;
        }
        Ok(ms(started.elapsed()) * 1000.0 / n as f64)
    })
    .await?
}
