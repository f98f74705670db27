//! The server's web pages: the run list and a run's page (stages, statuses,
//! durations, outputs, annotations, approvals, logs). Rendered on the
//! server with maud, which escapes every value: log lines and commit
//! messages are whatever a stage or a pusher wrote. A page of a run in
//! progress reloads itself every two seconds.
use std::collections::BTreeSet;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::run::display::{format_duration, format_time, ref_name, short_sha, status_word};
use crate::run::{RunRecord, RunSummary, StageRecord, Status};
use crate::serve::queue::QueuedJob;

// Beside this file rather than declared in `serve/mod.rs`: only these pages
// use it.
#[path = "pictures/mod.rs"]
pub mod pictures;

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 10px 24px; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
main { padding: 16px 24px; max-width: 1200px; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #d0d7de; vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 12px/1.4 ui-monospace, monospace; }
pre.log { background: #0d1117; color: #e6edf3; padding: 8px; overflow-x: auto; white-space: pre-wrap; }
.log .stderr, .log .warn, .log .error { color: #ffa198; }
.log .host { color: #79c0ff; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; }
.status-success { background: #1a7f37; } .status-failure { background: #cf222e; }
.status-running { background: #0969da; } .status-queued, .status-pending, .status-skipped { background: #6e7781; }
.status-cancelled, .status-warning { background: #9a6700; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; background: #fff; padding: 10px; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
section.stage { background: #fff; margin: 12px 0; padding: 8px 12px; border: 1px solid #d0d7de; }
.reason { background: #fff8c5; padding: 8px 12px; border: 1px solid #d4a72c; }
figure.picture { background: #fff; border: 1px solid #d0d7de; margin: 12px 0; padding: 8px; overflow-x: auto; }
figure.picture figcaption { color: #57606a; font-size: 12px; }
"#;

fn page(title: &str, refresh: bool, body: Markup) -> String {
    page_with(title, refresh, None, body)
}

/// A run in progress, followed live (see [`LIVE`]).
struct Live<'a> {
    run: &'a str,
    after: i64,
    key: String,
}

fn page_with(title: &str, refresh: bool, live: Option<Live<'_>>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh && live.is_none() { meta http-equiv="refresh" content="2"; }
                @if live.is_some() { noscript { meta http-equiv="refresh" content="2"; } }
                title { (title) " · pipeline host" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header { a href="/" { "pipeline host" } " · " a href="/metrics" { "metrics" } }
                @if let Some(l) = &live {
                    main data-run=(l.run) data-after=(l.after) data-key=(l.key) { (body) }
                    script { (PreEscaped(LIVE)) }
                } @else {
                    main { (body) }
                }
            }
        }
    }
    .into_string()
}

fn badge(status: Status, warning: bool) -> Markup {
    let word = status_word(status, warning);
    html! { span class={ "status status-" (word) } data-status=(word) { (word) } }
}

fn duration(status: Status, ms: u64) -> String {
    if status.is_final() {
        format_duration(ms)
    } else {
        "…".into()
    }
}

/// `/`: queued runs, then recorded runs, newest first.
pub fn run_list(runs: &[RunSummary], queued: &[QueuedJob]) -> String {
    let body = html! {
        h1 { "Runs" }
        @if !queued.is_empty() {
            h2 { "Queued" }
            table id="queued" {
                thead { tr { th { "run" } th { "repository" } th { "ref" } th { "commit" } th { "event" } th { "queued at" } } }
                tbody {
                    @for q in queued {
                        tr data-run=(q.run_id) {
                            td { code { (q.run_id) } }
                            td { (q.repository) }
                            td { (ref_name(q.job.branch.as_deref(), q.job.tag.as_deref())) }
                            td { code { (short_sha(&q.job.sha)) } }
                            td { (q.job.event) }
                            td { (format_time(&q.enqueued_at)) }
                        }
                    }
                }
            }
        }
        @if runs.is_empty() {
            p { "No runs recorded yet." }
        } @else {
            table id="runs" {
                thead { tr {
                    th { "status" } th { "run" } th { "pipeline" } th { "ref" } th { "commit" }
                    th { "event" } th { "environment" } th { "started" } th { "duration" }
                } }
                tbody {
                    @for r in runs {
                        tr data-run=(r.id) {
                            td { (badge(r.status, false)) }
                            td { a href={ "/runs/" (r.id) } { "#" (r.build_number) } " " code { (r.id) } }
                            td { a href=(pipeline_href(&r.pipeline)) { (r.pipeline) } }
                            td { (ref_name(r.branch.as_deref(), r.tag.as_deref())) }
                            td { code { (short_sha(&r.commit_sha)) } }
                            td { (r.event) }
                            td { (r.environment.as_deref().unwrap_or("")) }
                            td { (format_time(&r.started_at)) }
                            td class="num" { (duration(r.status, r.duration_ms)) }
                        }
                    }
                }
            }
        }
    };
    let refresh = !queued.is_empty() || runs.iter().any(|r| !r.status.is_final());
    page("Runs", refresh, body)
}

fn stage_section(s: &StageRecord) -> Markup {
    let open = s.status == Status::Failure;
    html! {
        section class="stage" id={ "stage-" (s.name) } data-stage=(s.name) {
            h3 { (s.name) " " (badge(s.status, s.warning)) }
            @if let Some(e) = &s.error { p class="error" { (e) } }
            @if !s.outputs.is_empty() {
                table class="outputs" {
                    thead { tr { th { "output" } th { "value" } } }
                    tbody { @for (k, v) in &s.outputs { tr { td { code { (k) } } td { code { (v) } } } } }
                }
            }
            @if !s.annotations.is_empty() {
                ul class="annotations" {
                    @for a in &s.annotations {
                        li { strong { (a.level) " " (a.title) } ": " (a.message)
                            @if let Some(f) = &a.file { " (" (f) @if let Some(l) = a.line { ":" (l) } ")" } }
                    }
                }
            }
            @if let Some(a) = &s.approval {
                p class="approval" {
                    "Approval for " code { (a.environment) } ": " (format!("{:?}", a.decision).to_lowercase())
                    @if let Some(by) = &a.by { " by " (by) } " at " (a.decided_at)
                    @if let Some(c) = &a.comment { " — " (c) }
                }
            }
            details open[open] {
                summary { "log (" (s.log.len()) " lines)" }
                pre class="log" {
                    @for l in &s.log {
                        span class=(l.stream) { (l.text) } "\n"
                    }
                }
            }
        }
    }
}

/// The path of a pipeline's page: its name as one URL path segment.
pub fn pipeline_href(name: &str) -> String {
    let mut out = String::from("/pipelines/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A picture in the page: `svg` is one of [`pictures`]' own, whose every
/// text from a record is escaped.
fn picture(id: &str, svg: String, caption: &str) -> Markup {
    html! {
        figure class="picture" id=(id) {
            (PreEscaped(svg))
            figcaption { (caption) }
        }
    }
}

fn now_unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `/runs/{id}`; `waiting`: its stages waiting for an approval.
/// What the run page shows besides the record: stages waiting for an
/// approval, the commit statuses sent for the run, who did what to it.
#[derive(Default)]
pub struct RunExtras {
    pub waiting: BTreeSet<String>,
    pub statuses: Vec<crate::serve::forge::outbox::OutboxRow>,
    pub actions: Vec<crate::serve::access::actions::Action>,
    /// The log position the page shows up to (its live stream goes on
    /// from there).
    pub log_after: i64,
}

/// A page of a run in progress follows it: new log lines are appended as
/// text (never markup), a status change redraws the page. Without
/// scripts, it reloads every two seconds.
const LIVE: &str = r#"
(function () {
  var main = document.querySelector('main[data-run]');
  if (!main || !window.EventSource) return;
  var es = new EventSource('/api/runs/' + encodeURIComponent(main.dataset.run) +
                           '/events?after=' + main.dataset.after);
  es.addEventListener('log', function (e) {
    var l = JSON.parse(e.data);
    var stage = document.querySelector('section.stage[data-stage="' + CSS.escape(l.stage) + '"] pre.log');
    if (!stage) return;
    var span = document.createElement('span');
    span.className = l.stream;
    span.textContent = l.text + '
';
    stage.appendChild(span);
  });
  es.addEventListener('status', function (e) {
    if (JSON.parse(e.data).key !== main.dataset.key) { es.close(); location.reload(); }
  });
  es.addEventListener('gone', function () { es.close(); });
})();
"#;

/// Commit statuses and actions, when there are any.
fn extras_section(extras: &RunExtras) -> Markup {
    html! {
        @if !extras.statuses.is_empty() {
            h2 { "Commit statuses" }
            table class="statuses" {
                tr { th { "context" } th { "state" } th { "sent" } th { "answer" } }
                @for s in &extras.statuses {
                    tr { td { code { (s.context) } } td { (s.state) } td { (s.outcome) } td { (s.detail.as_deref().unwrap_or("")) } }
                }
            }
        }
        @if !extras.actions.is_empty() {
            h2 { "Actions" }
            ul class="actions" {
                @for a in &extras.actions {
                    li { (format_time(&a.at)) " · " b { (a.who) } " " (a.action) @if let Some(d) = &a.detail { " · " (d) } }
                }
            }
        }
    }
}

pub fn run_page(run: &RunRecord, extras: &RunExtras) -> String {
    let waiting = &extras.waiting;
    let title = format!("{} #{}", run.pipeline, run.build_number);
    let body = html! {
        h1 { (title) " " (badge(run.status, false)) }
        p { a href=(pipeline_href(&run.pipeline)) { "History of " (run.pipeline) } }
        @if let Some(r) = &run.reason { p class="reason" { (r) } }
        @if !run.attempts.is_empty() {
            p class="attempts" { "Attempts: " (run.attempts.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")) }
        }
        dl class="meta" {
            dt { "run" } dd { code { (run.id) } }
            dt { "trigger" } dd { (run.event) " of " (ref_name(run.branch.as_deref(), run.tag.as_deref())) }
            dt { "commit" } dd { code { (run.commit_sha) } }
            @if let Some(t) = &run.trigger {
                dt { "repository" } dd { (t.repository) }
                @if let Some(s) = &t.sender { dt { "by" } dd { (s) } }
                @if let Some(m) = &t.message { dt { "message" } dd { (m) } }
                @if let Some(n) = t.pull_request { dt { "pull request" } dd { "#" (n) } }
                dt { "delivery" } dd { code { (t.delivery) } }
            }
            @if let Some(e) = &run.environment { dt { "environment" } dd { (e) } }
            dt { "started" } dd { (format_time(&run.started_at)) }
            dt { "duration" } dd id="run-duration" { (duration(run.status, run.duration_ms)) }
            @if let Some(t) = &run.trigger {
                @if let Some(of) = &t.rerun_of {
                    dt { "re-run of" } dd { a href={ "/runs/" (of) } { code { (of) } } " by " (t.rerun_by.as_deref().unwrap_or("?")) }
                }
            }
        }
        (extras_section(extras))
        h2 { "Stages" }
        @if !run.stages.is_empty() {
            (picture("stage-graph", pictures::graph::stage_graph(&run.stages, waiting),
                "Stages as their needs order them, coloured by status; a dashed border: waiting for an approval."))
            (picture("stage-timeline", pictures::timeline::timeline(&run.stages, now_unix_ms()),
                "When each stage ran, from the run's first stage start; the longest bar is outlined."))
        }
        @if run.stages.is_empty() {
            p { "No stage ran." }
        } @else {
            table id="stages" {
                thead { tr { th { "stage" } th { "status" } th { "duration" } th { "attempts" } th { "summary" } } }
                tbody {
                    @for s in &run.stages {
                        tr data-stage=(s.name) {
                            td { a href={ "#stage-" (s.name) } { (s.name) } }
                            td { (badge(s.status, s.warning)) }
                            td class="num" {
                                @if s.started_at.is_some() { (duration(s.status, s.duration_ms)) } @else { "" }
                            }
                            td class="num" { (s.attempts) }
                            td { (s.detail()) }
                        }
                    }
                }
            }
            @for s in &run.stages { (stage_section(s)) }
        }
    };
    let live = (!run.status.is_final()).then(|| Live {
        run: &run.id,
        after: extras.log_after,
        key: crate::serve::events::status_key(run),
    });
    page_with(&title, false, live, body)
}

/// How many weeks the DORA picture of a pipeline's page shows.
pub const DORA_WEEKS: usize = 8;

/// `/pipelines/{name}`: `runs` newest first; `weeks` its DORA figures.
pub fn pipeline_page(name: &str, runs: &[RunSummary], weeks: &[pictures::dora::Week]) -> String {
    let body = html! {
        h1 { "Pipeline " (name) }
        h2 { "Last runs" }
        (picture("run-history", pictures::history::history(name, runs),
            "Each bar is a run (click for it), as tall as it took, coloured by status."))
        h2 { "Delivery figures by week" }
        (picture("dora", pictures::dora::dora(name, weeks),
            "Deployments, lead time for changes, change failure rate and time to restore, as /metrics counts them."))
    };
    let refresh = runs.iter().any(|r| !r.status.is_final());
    page(&format!("Pipeline {name}"), refresh, body)
}

pub fn not_found() -> String {
    no_such("run")
}

/// The page of a 404: no such `what`.
pub fn no_such(what: &str) -> String {
    page(
        "Not found",
        false,
        html! { h1 { "No such " (what) } p { a href="/" { "All runs" } } },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::log::LogLine;
    use crate::run::RunOptions;

    #[test]
    fn everything_a_stage_or_pusher_wrote_is_escaped() {
        let mut s = StageRecord::pending("build", "p");
        s.status = Status::Failure;
        s.log.push(LogLine {
            at_ms: 1,
            stream: "stdout".into(),
            text: "<script>alert(1)</script>".into(),
        });
        s.summary = "a & b".into();
        let mut opts = RunOptions::new("r1".into(), "/ws".into());
        opts.build_number = 3;
        opts.commit_sha = "abc".into();
        opts.branch = Some("main".into());
        let run = RunRecord {
            status: Status::Failure,
            started_at: "now".into(),
            duration_ms: 1500,
            stages: vec![s],
            attempts: Vec::new(),
            ..RunRecord::new("<b>p</b>", &opts)
        };
        let html = run_page(&run, &RunExtras::default());
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;p&lt;/b&gt; #3"));
        assert!(html.contains("a &amp; b"));
        assert!(html.contains("1.5s"));
        assert!(!html.contains("http-equiv=\"refresh\""));
    }
}
