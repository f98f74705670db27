//! Section 6, queued runs: N no-op runs queued at once through `host serve` (the
//! real binary, target/debug/host, as the tests' helpers start it), on one
//! machine (SQLite, in-process executor, `[server] concurrency = K`) and as
//! a cluster on this machine (a nats-server of its own, a PostgreSQL schema
//! of its own, K `host agent`s of concurrency 1).
//!
//! Times come from the run database: the queue row's `enqueued_at`
//! (written when the delivery is accepted) and the run record's
//! `started_at` (written when the executor starts the run, after the
//! checkout) and `duration_ms`; read at millisecond resolution.
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use host::run::record::parse_unix_ms;
use host::store::Db;
use pipeline_tests::cluster::{cluster_table, Agent, Nats};
use pipeline_tests::plugins::plugin;
use pipeline_tests::serve::{config, push_payload, sign, GitRepo, Server, SECRET};

/// Client threads posting the deliveries.
pub const DELIVERY_THREADS: usize = 4;
/// Each agent's `concurrency`.
pub const AGENT_CONCURRENCY: usize = 1;
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:55432/pipeline";

#[derive(Serialize, Default)]
pub struct Queued {
    pub runs: usize,
    pub delivery_threads: usize,
    pub agent_concurrency: usize,
    pub host: String,
    pub rows: Vec<QueuedRow>,
    /// Why the cluster rows are missing, when they are.
    pub cluster_note: Option<String>,
}

#[derive(Serialize)]
pub struct QueuedRow {
    /// `sqlite` (one machine) or `cluster` (NATS + PostgreSQL + agents).
    pub path: &'static str,
    /// Server concurrency (sqlite) or number of agents (cluster).
    pub k: usize,
    pub runs: usize,
    /// First delivery accepted to last run finished.
    pub seconds: f64,
    pub runs_per_s: f64,
    /// Queue-to-start latency (accepted → run started).
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Median time a run took once started (its record's `duration_ms`):
    /// what is left of 1/runs_per_s at K = 1 is spent outside the run
    /// (queue, claim, checkout, preparing).
    pub run_p50_ms: f64,
    /// Cluster runs/s ÷ SQLite runs/s at the same K.
    pub vs_sqlite: Option<f64>,
}

/// The repository every configuration fetches from: `warm` commits (a
/// stage sleeping 1 s, one per agent, to load the plugin everywhere) and
/// `runs` distinct no-op commits on `main`.
struct Repo {
    _dir: tempfile::TempDir,
    git: GitRepo,
    warm: Vec<String>,
    runs: Vec<String>,
}

fn pipeline_file(with: &str) -> String {
    format!(
        "[pipeline]\nname = \"queued\"\n\n[plugins]\nhostile = \"{}\"\n\n\
         [[stage]]\nname = \"noop\"\nplugin = \"hostile\"\nwith = {with}\n",
        plugin("hostile").display()
    )
}

impl Repo {
    fn new(runs: usize, warm: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let git = GitRepo::new(dir.path());
        let sleeper = pipeline_file("{ attack = \"sleep\", ms = 1000 }");
        let warm = (0..warm)
            .map(|i| {
                git.push(
                    "warm",
                    &[("pipeline.toml", &sleeper), ("N", &i.to_string())],
                )
            })
            .collect();
        let base = git.push(
            "main",
            &[("pipeline.toml", &pipeline_file("{ attack = \"ok\" }"))],
        );
        let runs = empty_commits(&git.bare, &base, runs)?;
        // The server fetches each sha with --depth=1; most are not a tip.
        let ok = Command::new("git")
            .arg("-C")
            .arg(&git.bare)
            .args(["config", "uploadpack.allowAnySHA1InWant", "true"])
            .status()?;
        if !ok.success() {
            bail!("git config failed");
        }
        Ok(Self {
            _dir: dir,
            git,
            warm,
            runs,
        })
    }
}

/// `n` empty commits on `main` after `base`, in one `git fast-import`; their shas.
fn empty_commits(bare: &Path, base: &str, n: usize) -> Result<Vec<String>> {
    let marks = bare.join("bench-marks");
    let mut child = Command::new("git")
        .arg("-C")
        .arg(bare)
        .args(["fast-import", "--quiet"])
        .arg(format!("--export-marks={}", marks.display()))
        .stdin(Stdio::piped())
        .spawn()?;
    let mut stream = String::new();
    for i in 1..=n {
        let msg = format!("run {i}");
        stream.push_str(&format!(
            "commit refs/heads/main\nmark :{i}\ncommitter Bench <bench@example.com> {} +0000\ndata {}\n{msg}\n",
            1_700_000_000 + i,
            msg.len()
        ));
        if i == 1 {
            stream.push_str(&format!("from {base}\n"));
        }
        stream.push('\n');
    }
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stream.as_bytes())?;
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    let text = std::fs::read_to_string(&marks)?;
    let mut shas: Vec<(usize, String)> = text
        .lines()
        .filter_map(|l| {
            let (mark, sha) = l.split_once(' ')?;
            Some((mark.trim_start_matches(':').parse().ok()?, sha.to_string()))
        })
        .collect();
    shas.sort();
    Ok(shas.into_iter().map(|(_, s)| s).collect())
}

const PUSHES: &str = "[[repository.trigger]]\nevent = \"push\"\nbranch = [\"**\"]\n";
/// No concurrency group: runs of one branch may run side by side.
const NO_GROUP: &str = "concurrency = { group = \"\" }";

/// Post a signed push of each sha to `git_ref` from [`DELIVERY_THREADS`]
/// client threads at once; the queued run ids.
fn deliver(url: &str, git_ref: &str, shas: &[String]) -> Result<Vec<String>> {
    let threads = DELIVERY_THREADS.min(shas.len()).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> Result<Vec<String>> {
                    let http = reqwest::blocking::Client::new();
                    let mut ids = Vec::new();
                    for (i, sha) in shas.iter().enumerate().skip(t).step_by(threads) {
                        let body = push_payload(git_ref, sha);
                        let resp = http
                            .post(format!("{url}/github-webhook/"))
                            .header("X-GitHub-Event", "push")
                            .header(
                                "X-GitHub-Delivery",
                                format!("bench-{}-{i}", git_ref.rsplit('/').next().unwrap_or("x")),
                            )
                            .header("Content-Type", "application/json")
                            .header("X-Hub-Signature-256", sign(SECRET, &body))
                            .body(body)
                            .send()?;
                        let status = resp.status().as_u16();
                        let v: serde_json::Value = resp.json()?;
                        let Some(id) = v["queued"][0].as_str().filter(|_| status == 202) else {
                            bail!("push delivery answered {status}: {v}");
                        };
                        ids.push(id.to_string());
                    }
                    Ok(ids)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("delivery thread")?);
        }
        Ok(all)
    })
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// What [`wait_and_measure`] found: seconds from the first accepted to the
/// last finished; queue-to-start p50 and p99 and run p50, in ms.
struct Measured {
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    run_p50_ms: f64,
}

/// Wait until every run of `ids` has finished and measure them.
fn wait_and_measure(db: &Db, ids: &HashSet<String>, within: Duration) -> Result<Measured> {
    let deadline = Instant::now() + within;
    loop {
        let rows = db.query(
            "SELECT q.run_id, q.enqueued_at, r.started_at, r.duration_ms, r.status
             FROM queue q JOIN runs r ON r.id = q.run_id",
            &[],
        )?;
        let mut done = Vec::new();
        for r in rows {
            let status = r.get_str(4)?;
            if ids.contains(&r.get_str(0)?) && !matches!(status.as_str(), "running" | "queued") {
                if status != "success" {
                    bail!("run {} ended {status}", r.get_str(0)?);
                }
                let ms = |s: String| parse_unix_ms(&s).context("a timestamp");
                done.push((ms(r.get_str(1)?)?, ms(r.get_str(2)?)?, r.get_i64(3)?));
            }
        }
        if done.len() == ids.len() {
            let first = done.iter().map(|d| d.0).min().unwrap_or(0);
            let last = done.iter().map(|d| d.1 + d.2).max().unwrap_or(0);
            let mut waits: Vec<f64> = done.iter().map(|d| (d.1 - d.0) as f64).collect();
            let mut runs: Vec<f64> = done.iter().map(|d| d.2 as f64).collect();
            waits.sort_by(|a, b| a.partial_cmp(b).unwrap());
            runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
            return Ok(Measured {
                seconds: (last - first) as f64 / 1000.0,
                p50_ms: percentile(&waits, 0.5),
                p99_ms: percentile(&waits, 0.99),
                run_p50_ms: percentile(&runs, 0.5),
            });
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} runs finished within {within:?}",
                done.len(),
                ids.len()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One run per `repo.warm` commit (up to `k`), each waited for: the
/// plugin is compiled and loaded wherever runs will run.
fn warm_up(server: &Server, repo: &Repo, k: usize) -> Result<()> {
    for id in deliver(&server.url, "refs/heads/warm", &repo.warm[..k])? {
        server.wait_run(&id, Duration::from_secs(300));
    }
    Ok(())
}

/// Queue every `repo.runs` commit at once and measure until all finished.
fn timed(server: &Server, repo: &Repo, db: &Db, path: &'static str, k: usize) -> Result<QueuedRow> {
    eprintln!("bench: {} queued runs, {path}, K = {k}", repo.runs.len());
    let ids: HashSet<String> = deliver(&server.url, "refs/heads/main", &repo.runs)?
        .into_iter()
        .collect();
    let within = Duration::from_secs(120 + repo.runs.len() as u64);
    let m = wait_and_measure(db, &ids, within)?;
    Ok(QueuedRow {
        path,
        k,
        runs: ids.len(),
        seconds: m.seconds,
        runs_per_s: ids.len() as f64 / m.seconds,
        p50_ms: m.p50_ms,
        p99_ms: m.p99_ms,
        run_p50_ms: m.run_p50_ms,
        vs_sqlite: None,
    })
}

/// One machine: SQLite, the in-process executor, `[server] concurrency = k`.
fn sqlite(repo: &Repo, k: usize) -> Result<QueuedRow> {
    let dir = tempfile::tempdir()?;
    let text = config(
        &repo.git.url(),
        &format!("concurrency = {k}"),
        NO_GROUP,
        PUSHES,
    );
    let server = Server::start(dir.path(), &text);
    warm_up(&server, repo, k)?;
    let db = Db::sqlite(&server.state.join("runs.db"))?;
    timed(&server, repo, &db, "sqlite", k)
}

/// A PostgreSQL schema of the benchmark's own, dropped afterwards.
struct Schema {
    admin: Db,
    name: String,
    url: String,
}

impl Schema {
    fn new(base: &str) -> Result<Self> {
        let admin = Db::postgres(base)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let name = format!("bench_{}_{nanos}", std::process::id());
        admin.batch(&format!("CREATE SCHEMA {name}"))?;
        let url = host::store::testing::with_schema(base, &name);
        Ok(Self { admin, name, url })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = self
            .admin
            .batch(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// A cluster on this machine: `host serve` with `[cluster]`, a nats-server
/// of its own, `k` agents of [`AGENT_CONCURRENCY`].
fn cluster(repo: &Repo, k: usize, postgres: &str) -> Result<QueuedRow> {
    // Declared first, dropped last: after everything using it stopped.
    let schema = Schema::new(postgres)?;
    let dir = tempfile::tempdir()?;
    let nats = Nats::start(dir.path());
    let mut text = config(&repo.git.url(), "", NO_GROUP, PUSHES);
    text.push_str(&cluster_table(dir.path(), &nats, &schema.url));
    let server = Server::start(dir.path(), &text);
    let extra = format!("concurrency = {AGENT_CONCURRENCY}");
    let agents: Vec<Agent> = (1..=k)
        .map(|i| Agent::start(dir.path(), &format!("a{i}"), &nats, &extra))
        .collect();
    warm_up(&server, repo, k)?;
    let db = Db::postgres(&schema.url)?;
    let row = timed(&server, repo, &db, "cluster", k);
    drop((agents, server, nats));
    row
}

/// Why the cluster cannot run here, if it cannot; else the PostgreSQL URL.
fn cluster_prerequisites() -> Result<String, String> {
    let nats = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !nats.is_ok_and(|s| s.success()) {
        return Err("no nats-server (run `just services`)".into());
    }
    let url = std::env::var("PIPELINE_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES.to_string());
    match Db::postgres(&url) {
        Ok(_) => Ok(url),
        Err(e) => Err(format!("no PostgreSQL ({e:#}; run `just services`)")),
    }
}

/// The whole section (blocking: run it off the async runtime).
pub fn run(smoke: bool) -> Result<Queued> {
    let n = if smoke { 10 } else { 1000 };
    let ks: &[usize] = if smoke { &[1, 2] } else { &[1, 2, 4] };
    let repo = Repo::new(n, *ks.iter().max().unwrap())?;
    let mut rows = Vec::new();
    for &k in ks {
        rows.push(sqlite(&repo, k)?);
    }
    let cluster_note = match cluster_prerequisites() {
        Ok(postgres) => ks.iter().find_map(|&k| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cluster(&repo, k, &postgres)
            }));
            match result {
                Ok(Ok(mut row)) => {
                    let base = rows.iter().find(|r| r.path == "sqlite" && r.k == k);
                    row.vs_sqlite = base.map(|b| row.runs_per_s / b.runs_per_s);
                    rows.push(row);
                    None
                }
                Ok(Err(e)) => Some(format!("cluster K = {k} failed: {e:#}")),
                Err(_) => Some(format!("cluster K = {k} failed (see the panic above)")),
            }
        }),
        Err(why) => Some(why),
    };
    if let Some(note) = &cluster_note {
        eprintln!("bench: cluster part not measured: {note}");
    }
    Ok(Queued {
        runs: n,
        delivery_threads: DELIVERY_THREADS,
        agent_concurrency: AGENT_CONCURRENCY,
        host: pipeline_tests::plugins::host_bin().display().to_string(),
        rows,
        cluster_note,
    })
}
