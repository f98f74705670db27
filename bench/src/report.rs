//! The printed table.
use std::fmt::Write;

use crate::measure::Results;
use crate::queued::Queued;

fn fmt_ms(v: f64) -> String {
    if v < 1.0 {
        // Below a millisecond (a stage's overhead): in µs, to the µs.
        format!("{:.0} µs", v * 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// A time read from the run store, which keeps whole milliseconds.
fn fmt_whole_ms(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0} ms")
    } else {
        fmt_ms(v)
    }
}

fn ratio(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}×")
    } else {
        format!("{v:.1}×")
    }
}

pub fn table(r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "pipeline-host benchmark — {} — {} build, {} cores{}\n",
        &r.date[..r.date.len().min(19)],
        r.build,
        r.cores,
        if r.smoke {
            " — SMOKE (tiny sizes)"
        } else {
            ""
        }
    );

    let _ = writeln!(
        t,
        "1. Stage overhead: N chained no-op stages (plugins cached) vs N × `docker run --rm`"
    );
    let _ = writeln!(
        t,
        "   {:>4}  {:>12}  {:>16}  {:>8}",
        "N", "wasm", "docker run --rm", "ratio"
    );
    for o in &r.overhead {
        let _ = writeln!(
            t,
            "   {:>4}  {:>12}  {:>16}  {:>8}",
            o.stages,
            fmt_ms(o.wasm_ms),
            o.docker_ms.map_or("-".into(), fmt_ms),
            o.ratio.map_or("-".into(), ratio)
        );
    }
    let _ = writeln!(
        t,
        "   one more stage: wasm {}{}",
        fmt_ms(r.per_stage_ms),
        match r.per_container_ms {
            Some(c) => format!(
                ", container {} ({} cheaper)",
                fmt_ms(c),
                ratio(c / r.per_stage_ms)
            ),
            None => format!(
                " (containers not measured: {})",
                r.docker_note.as_deref().unwrap_or("?")
            ),
        }
    );

    phases(&mut t, r);
    if !r.loads.is_empty() {
        loads(&mut t, r);
    }
    scaling(&mut t, r);
    if !r.memory.is_empty() {
        memory(&mut t, r);
    }
    calls(&mut t, r);
    if !r.queued.rows.is_empty() || r.queued.cluster_note.is_some() {
        queued(&mut t, &r.queued);
    }
    t
}

fn loads(t: &mut String, r: &Results) {
    let _ = writeln!(
        t,
        "\n2. Plugin load: first run (compile) vs later runs (precompiled cache)"
    );
    let _ = writeln!(
        t,
        "   {:<22}  {:>9}  {:>10}  {:>9}  {:>7}",
        "plugin", "size", "compile", "cached", "ratio"
    );
    for l in r.loads.iter().chain(std::iter::once(&r.load_total)) {
        let _ = writeln!(
            t,
            "   {:<22}  {:>6.1} MB  {:>10}  {:>9}  {:>7}",
            l.plugin,
            l.size_bytes as f64 / 1e6,
            fmt_ms(l.compile_ms),
            fmt_ms(l.cached_ms),
            ratio(l.ratio)
        );
    }
}

fn scaling(t: &mut String, r: &Results) {
    let _ = writeln!(
        t,
        "\n3. Parallel scaling: K independent stages that each wait 100 ms"
    );
    let _ = writeln!(
        t,
        "   {:>4}  {:>9}  {:>7}  {:>8}",
        "K", "total", "ideal", "/ideal"
    );
    for s in &r.scaling {
        let _ = writeln!(
            t,
            "   {:>4}  {:>9}  {:>7}  {:>8}",
            s.stages,
            fmt_ms(s.total_ms),
            fmt_ms(s.ideal_ms),
            format!("{:.2}", s.ratio)
        );
    }
}

fn memory(t: &mut String, r: &Results) {
    let _ = writeln!(
        t,
        "\n4. Host memory: peak RSS with K concurrent stages (fresh process each)"
    );
    let _ = writeln!(t, "   {:>4}  {:>12}  {:>9}", "K", "after warm-up", "peak");
    for m in &r.memory {
        let _ = writeln!(
            t,
            "   {:>4}  {:>9.1} MiB  {:>5.1} MiB",
            m.stages, m.baseline_mib, m.peak_mib
        );
    }
    if let [a, b] = r.memory.as_slice() {
        let _ = writeln!(
            t,
            "   per extra concurrent stage: {:.2} MiB",
            (b.peak_mib - a.peak_mib) / (b.stages - a.stages) as f64
        );
    }
}

fn calls(t: &mut String, r: &Results) {
    let _ = writeln!(
        t,
        "\n5. Capability calls: from a stage vs the host doing the same natively"
    );
    let _ = writeln!(
        t,
        "   {:<5}  {:>6}  {:>12}  {:>12}  {:>7}",
        "call", "count", "from wasm", "native", "ratio"
    );
    for c in &r.calls {
        let _ = writeln!(
            t,
            "   {:<5}  {:>6}  {:>9.2} µs  {:>9.2} µs  {:>7}",
            c.call,
            c.count,
            c.stage_us,
            c.native_us,
            ratio(c.ratio)
        );
    }
}

/// Where the longest chain's time went (host::perf timers).
fn phases(t: &mut String, r: &Results) {
    let n = r.overhead.last().map_or(0, |o| o.stages);
    let _ = writeln!(
        t,
        "   where a run of {n} stages goes (median over the runs per time a phase ran; ×: times per run):"
    );
    let parts: Vec<String> = r
        .phases
        .iter()
        .map(|p| format!("{} {:.1} µs ×{}", p.phase, p.median_us, p.count))
        .collect();
    for chunk in parts.chunks(4) {
        let _ = writeln!(t, "     {}", chunk.join(" · "));
    }
}

/// Section 6: queued runs, one machine vs a cluster on this machine.
pub fn queued(t: &mut String, q: &Queued) {
    let _ = writeln!(
        t,
        "\n6. Queued runs: {} no-op runs pushed at once ({} client threads) through `host serve`",
        q.runs, q.delivery_threads
    );
    let _ = writeln!(
        t,
        "   sqlite: one machine, [server] concurrency = K; cluster: NATS + PostgreSQL, K agents of concurrency {}",
        q.agent_concurrency
    );
    let _ = writeln!(
        t,
        "   p50/p99: queue-to-start, accepted → run started (ms resolution); run p50: started → finished; host: {}",
        q.host
    );
    let _ = writeln!(
        t,
        "   {:<8}  {:>2}  {:>5}  {:>8}  {:>7}  {:>9}  {:>9}  {:>9}  {:>10}",
        "path", "K", "runs", "total", "runs/s", "p50", "p99", "run p50", "vs sqlite"
    );
    for r in &q.rows {
        let _ = writeln!(
            t,
            "   {:<8}  {:>2}  {:>5}  {:>8}  {:>7.1}  {:>9}  {:>9}  {:>9}  {:>10}",
            r.path,
            r.k,
            r.runs,
            fmt_ms(r.seconds * 1000.0),
            r.runs_per_s,
            fmt_whole_ms(r.p50_ms),
            fmt_whole_ms(r.p99_ms),
            fmt_whole_ms(r.run_p50_ms),
            r.vs_sqlite.map_or("-".into(), |v| format!("{v:.2}×"))
        );
    }
    if let Some(note) = &q.cluster_note {
        let _ = writeln!(t, "   cluster not measured: {note}");
    }
}
