//! The benchmark behind `just bench`: what a Wasm stage costs the host,
//! measured on this machine in one run, against the container-per-step
//! model (a `docker run --rm` per step, as Woodpecker, Drone and GitHub's
//! container actions do).
//!
//! 1. stage overhead: N chained no-op stages vs N `docker run --rm`;
//! 2. plugin load: compile (first run) vs the precompiled cache, per plugin;
//! 3. parallel scaling: K independent stages that each wait 100 ms;
//! 4. host memory: peak RSS with 1 and 64 concurrent stages (child processes);
//! 5. capability calls: `log` and `http` from a stage vs the same natively;
//! 6. queued runs: N no-op runs through `host serve` on one machine (SQLite)
//!    and as a cluster on this machine (NATS, PostgreSQL, K agents);
//! 7. stage caching: a demo-like pipeline's first run vs a cached re-run.
//!
//! Runs go through the same path as `host run` (plugin checks, executor,
//! live record in SQLite). Prints a table and writes JSON (`--out`).
//! `--smoke` runs everything with tiny sizes (CI checks it still works).
mod cached;
mod measure;
mod queued;
mod report;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub struct Options {
    pub smoke: bool,
    pub out: Option<PathBuf>,
    pub docker: bool,
    /// Only what one stage costs (sections 1, 3 and 5).
    pub stages_only: bool,
}

pub fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opts = Options {
        smoke: false,
        out: None,
        docker: true,
        stages_only: false,
    };
    // Only section 7 (quick, no Docker).
    let mut cached_only = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => opts.smoke = true,
            "--no-docker" => opts.docker = false,
            "--out" => opts.out = Some(args.next().context("--out needs a file")?.into()),
            // Internal: one memory measurement in a fresh process.
            "--rss-child" => {
                let k: usize = args.next().context("--rss-child needs a count")?.parse()?;
                return measure::rss_child(k);
            }
            // `cargo bench` passes this.
            "--bench" => {}
            "--cached-only" => cached_only = true,
            // For a profiler (`perf record`): N chained no-op stages, run
            // again and again for a few seconds.
            "--chain" => {
                let n: usize = args.next().context("--chain needs a count")?.parse()?;
                let rt = tokio::runtime::Runtime::new()?;
                return rt.block_on(measure::profile_chain(n));
            }
            "--stages-only" => opts.stages_only = true,
            "--help" | "-h" => {
                println!("usage: pipeline-bench [--smoke] [--no-docker] [--cached-only] [--stages-only] [--chain N] [--out FILE.json]");
                return Ok(());
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    if cached_only {
        print!(
            "{}",
            cached::table(&rt.block_on(cached::measure(opts.smoke))?)
        );
        return Ok(());
    }
    let results = rt.block_on(measure::all(&opts))?;
    if opts.stages_only {
        print!("{}", report::table(&results));
        return Ok(());
    }
    let cached = rt.block_on(cached::measure(opts.smoke))?;
    print!("{}{}", report::table(&results), cached::table(&cached));
    let mut json = serde_json::to_value(&results)?;
    json["cached"] = serde_json::to_value(&cached)?;
    let json = serde_json::to_string_pretty(&json)?;
    if let Some(out) = &opts.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
        println!("\nJSON written to {}", out.display());
    }
    Ok(())
}
