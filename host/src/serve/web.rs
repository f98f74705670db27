//! The server's web pages: the run list and a run's page (stages, statuses,
//! durations, outputs, annotations, approvals, logs). Rendered on the
//! server with maud, which escapes every value: log lines and commit
//! messages are whatever a stage or a pusher wrote. A page of a run in
//! progress reloads itself every two seconds.
use std::collections::BTreeSet;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::run::display::{format_duration, format_time, ref_name, short_sha, status_word};
use crate::run::record::TriggerInfo;
use crate::run::{RunRecord, RunSummary, StageRecord, Status};
pub use crate::serve::access::forms::{viewer, Viewer};
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
header .who { float: right; } header form { display: inline; }
header button { background: none; border: 0; color: #fff; cursor: pointer; text-decoration: underline; font: inherit; }
.act { background: #fff; border: 1px solid #d0d7de; padding: 8px 12px; margin: 12px 0; }
.act form { display: inline-block; margin: 4px 12px 4px 0; vertical-align: top; }
.act textarea { display: block; width: 28em; height: 3em; margin: 4px 0; }
button.primary { background: #1f883d; color: #fff; border: 1px solid #1a7f37; border-radius: 6px; padding: 4px 12px; }
button.danger { background: #f6f8fa; color: #cf222e; border: 1px solid #d0d7de; border-radius: 6px; padding: 4px 12px; }
button.plain { background: #f6f8fa; color: #1f2328; border: 1px solid #d0d7de; border-radius: 6px; padding: 4px 12px; }
form.sign-in { background: #fff; border: 1px solid #d0d7de; padding: 16px; max-width: 22em; }
form.sign-in label { display: block; margin: 8px 0; } form.sign-in input { display: block; width: 100%; }
.error-box { background: #ffebe9; border: 1px solid #ff8182; padding: 8px 12px; }
table.failed-tests pre { margin: 0; white-space: pre-wrap; }
"#;

fn page(title: &str, refresh: bool, viewer: &Viewer, body: Markup) -> String {
    page_with(title, refresh, None, viewer, body)
}

/// The header's right side: who is signed in (and the way out), or the
/// way in.
fn who(viewer: &Viewer) -> Markup {
    html! {
        span class="who" {
            @if let (Some(p), Some(csrf)) = (&viewer.principal, &viewer.csrf) {
                span id="signed-in-as" { (p.user) } " · "
                form method="post" action="/sign-out" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="sign-out" { "sign out" }
                }
            } @else if viewer.can_sign_in {
                a href="/sign-in" id="sign-in" { "sign in" }
            }
        }
    }
}

/// A run in progress, followed live (see [`LIVE`]).
struct Live<'a> {
    run: &'a str,
    after: i64,
    key: String,
}

fn page_with(
    title: &str,
    refresh: bool,
    live: Option<Live<'_>>,
    viewer: &Viewer,
    body: Markup,
) -> String {
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
                header { a href="/" { "pipeline host" } " · " a href="/metrics" { "metrics" } (who(viewer)) }
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
pub fn run_list(runs: &[RunSummary], queued: &[QueuedJob], viewer: &Viewer) -> String {
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
    page("Runs", refresh, viewer, body)
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
pub(crate) const LIVE: &str = r#"
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
    span.textContent = l.text + '\n';
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

/// "re-run of RUN by WHO" for a re-run (queued or started), else nothing.
fn rerun_of(t: &TriggerInfo) -> Markup {
    html! {
        @if let Some(of) = &t.rerun_of {
            dt { "re-run of" }
            dd {
                a href={ "/runs/" (of) } { code { (of) } }
                " by " (t.rerun_by.as_deref().unwrap_or("?"))
                @if t.no_cache { ", without the stage cache" }
            }
        }
    }
}

pub fn run_page(run: &RunRecord, extras: &RunExtras, viewer: &Viewer) -> String {
    let waiting = &extras.waiting;
    let title = format!("{} #{}", run.pipeline, run.build_number);
    let body = html! {
        h1 { (title) " " (badge(run.status, false)) }
        p { a href=(pipeline_href(&run.pipeline)) { "History of " (run.pipeline) } }
        @if let Some(r) = &run.reason { p class="reason" { (r) } }
        (actions_panel(run, extras, viewer))
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
                (rerun_of(t))
            }
        }
        (test_results(&run.stages))
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
                            td {
                                @if let Some(from) = &s.cached_from {
                                    span class="cached" title=(from.run_id) { (from) } " "
                                }
                                (s.detail())
                            }
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
    page_with(&title, false, live, viewer, body)
}

/// `/runs/{id}` of a run still in the queue: what it will run, and the
/// way to cancel it; reloads until it starts.
pub fn queued_page(q: &QueuedJob, viewer: &Viewer) -> String {
    let title = format!("Queued run {}", q.run_id);
    let body = html! {
        h1 { "Queued run " code { (q.run_id) } " " span class="status status-queued" data-status="queued" { "queued" } }
        dl class="meta" {
            dt { "repository" } dd { (q.repository) }
            dt { "trigger" } dd { (q.job.event) " of " (ref_name(q.job.branch.as_deref(), q.job.tag.as_deref())) }
            dt { "commit" } dd { code { (q.job.sha) } }
            (rerun_of(&q.job.trigger))
            dt { "queued at" } dd { (format_time(&q.enqueued_at)) }
        }
        @if let (Some(p), Some(csrf)) = (&viewer.principal, &viewer.csrf) {
            @if p.operator {
                div class="act" id="act" {
                    form method="post" action={ "/runs/" (q.run_id) "/cancel" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button class="danger" type="submit" id="cancel-run" { "Cancel run" }
                    }
                }
            }
        }
    };
    page(&title, true, viewer, body)
}

/// How many weeks the DORA picture of a pipeline's page shows.
pub const DORA_WEEKS: usize = 8;

/// `/pipelines/{name}`: `runs` newest first; `weeks` its DORA figures.
pub fn pipeline_page(
    name: &str,
    runs: &[RunSummary],
    weeks: &[pictures::dora::Week],
    viewer: &Viewer,
) -> String {
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
    page(&format!("Pipeline {name}"), refresh, viewer, body)
}

pub fn not_found() -> String {
    no_such("run")
}

/// The page of a 404: no such `what`.
pub fn no_such(what: &str) -> String {
    page(
        "Not found",
        false,
        &Viewer::default(),
        html! { h1 { "No such " (what) } p { a href="/" { "All runs" } } },
    )
}

/// The sign-in page; `form_token` ties the form to this browser.
pub fn sign_in_page(form_token: &str, next: &str, error: Option<&str>) -> String {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(e) = error { p class="error-box" id="sign-in-error" { (e) } }
        form class="sign-in" method="post" action="/sign-in" {
            input type="hidden" name="csrf" value=(form_token);
            input type="hidden" name="next" value=(next);
            label { "Name" input type="text" name="user" id="user" autocomplete="username" required; }
            label { "Password" input type="password" name="password" id="password" autocomplete="current-password" required; }
            button class="primary" type="submit" id="sign-in-submit" { "Sign in" }
        }
    };
    page("Sign in", false, &Viewer::default(), body)
}

/// Why a form or a sign-in was not taken.
pub fn refusal(status: axum::http::StatusCode, why: &str, viewer: &Viewer) -> String {
    let body = html! {
        h1 { (status.canonical_reason().unwrap_or("Refused")) }
        p class="error-box" id="refusal" { (why) }
        p { a href="/" { "All runs" } " · " a href="/sign-in" { "Sign in" } }
    };
    page("Refused", false, viewer, body)
}

/// What the viewer may do to the run: cancel or re-run it (operators),
/// approve or reject a waiting stage (its environment's approvers).
fn actions_panel(run: &RunRecord, extras: &RunExtras, viewer: &Viewer) -> Markup {
    let (Some(p), Some(csrf)) = (&viewer.principal, &viewer.csrf) else {
        return html! {
            @if viewer.can_sign_in && (!run.status.is_final() || !extras.waiting.is_empty()) {
                p class="act" { a href={ "/sign-in?next=/runs/" (run.id) } { "Sign in" } " to act on this run." }
            }
        };
    };
    let deciding: Vec<&StageRecord> = run
        .stages
        .iter()
        .filter(|s| extras.waiting.contains(&s.name))
        .filter(|s| s.environment.as_deref().is_some_and(|e| p.may_approve(e)))
        .collect();
    let cancel = p.operator && !run.status.is_final();
    let rerun = p.operator && run.status.is_final();
    html! {
        @if cancel || rerun || !deciding.is_empty() {
            div class="act" id="act" {
                @for s in &deciding {
                    form method="post" class="decide" data-stage=(s.name) action={ "/runs/" (run.id) "/stages/" (s.name) "/approve" } {
                        input type="hidden" name="csrf" value=(csrf);
                        strong { (s.name) } " waits for approval to deploy to " code { (s.environment.as_deref().unwrap_or("")) }
                        textarea name="comment" placeholder="comment (optional)" maxlength="1000" {}
                        button class="primary" type="submit" name="approve" { "Approve" } " "
                        button class="danger" type="submit" name="reject"
                            formaction={ "/runs/" (run.id) "/stages/" (s.name) "/reject" } { "Reject" }
                    }
                }
                @if cancel {
                    form method="post" action={ "/runs/" (run.id) "/cancel" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button class="danger" type="submit" id="cancel-run" { "Cancel run" }
                    }
                }
                @if rerun {
                    form method="post" action={ "/runs/" (run.id) "/rerun" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button class="plain" type="submit" id="rerun" { "Re-run" }
                        button class="plain" type="submit" name="no_cache" value="1"
                            id="rerun-no-cache" title="every stage runs: none is replayed from the stage cache"
                            { "Re-run without cache" }
                    }
                }
            }
        }
    }
}

/// The stages that ran tests (the `tests` output of the test runner):
/// their counts and each failed test with its message, as the stage read
/// them from the JUnit reports.
fn test_results(stages: &[StageRecord]) -> Markup {
    let tested: Vec<&StageRecord> = stages
        .iter()
        .filter(|s| s.outputs.contains_key("tests"))
        .collect();
    let count = |s: &StageRecord, k: &str| s.outputs.get(k).cloned().unwrap_or_default();
    html! {
        @if !tested.is_empty() {
            h2 { "Tests" }
            @for s in tested {
                section class="tests" data-stage=(s.name) {
                    h3 { (s.name) " " (badge(s.status, s.warning)) }
                    p class="counts" {
                        (count(s, "tests")) " tests: " (count(s, "passed")) " passed, "
                        (count(s, "failed")) " failed, " (count(s, "errors")) " errors, "
                        (count(s, "skipped")) " skipped"
                    }
                    @let failures: Vec<_> = s.annotations.iter().filter(|a| a.level == "error").collect();
                    @if !failures.is_empty() {
                        table class="failed-tests" {
                            thead { tr { th { "failed" } th { "where" } th { "message" } } }
                            tbody {
                                @for a in failures {
                                    tr {
                                        td { code { (a.title) } }
                                        td { @if let Some(f) = &a.file { code { (f) @if let Some(l) = a.line { ":" (l) } } } }
                                        td { pre { (a.message) } }
                                    }
                                }
                            }
                        }
                    }
                    @for a in s.annotations.iter().filter(|a| a.level == "warn") {
                        p class="note" { (a.title) ": " (a.message) }
                    }
                }
            }
        }
    }
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
        let html = run_page(&run, &RunExtras::default(), &Viewer::default());
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;p&lt;/b&gt; #3"));
        assert!(html.contains("a &amp; b"));
        assert!(html.contains("1.5s"));
        assert!(!html.contains("http-equiv=\"refresh\""));
    }

    #[test]
    fn a_cached_stage_says_which_run_it_comes_from() {
        let mut s = StageRecord::pending("build", "p");
        s.status = Status::Success;
        s.cached_from = Some(crate::run::record::CachedFrom {
            run_id: "<i>r1</i>".into(),
            build_number: 2,
        });
        let run = RunRecord {
            stages: vec![s, StageRecord::pending("test", "p")],
            ..RunRecord::new("p", &RunOptions::new("r3".into(), "/ws".into()))
        };
        let html = run_page(&run, &RunExtras::default(), &Viewer::default());
        assert_eq!(html.matches("cached from run 2").count(), 1, "{html}");
        assert!(html.contains("title=\"&lt;i&gt;r1&lt;/i&gt;\""), "{html}");
    }

    #[test]
    fn the_test_results_list_failed_tests_as_text() {
        use crate::run::record::AnnotationRecord;
        let note = |level: &str, title: &str, message: &str| AnnotationRecord {
            level: level.into(),
            title: title.into(),
            message: message.into(),
            file: Some("tests/t.py".into()),
            line: Some(7),
        };
        let mut t = StageRecord::pending("unit", "test-runner");
        t.status = Status::Failure;
        for (k, v) in [
            ("tests", "5"),
            ("passed", "3"),
            ("failed", "1"),
            ("errors", "1"),
            ("skipped", "0"),
        ] {
            t.outputs.insert(k.into(), v.into());
        }
        t.annotations = vec![
            note("error", "suite::<b>case</b>", "expected <1> got 2"),
            note("warn", "1 more failing test not listed", "only the first 1"),
        ];
        let other = StageRecord::pending("lint", "x");
        let html = test_results(&[other, t]).into_string();
        assert!(!html.contains("data-stage=\"lint\""), "{html}");
        assert!(
            html.contains("5 tests: 3 passed, 1 failed, 1 errors, 0 skipped"),
            "{html}"
        );
        assert!(html.contains("suite::&lt;b&gt;case&lt;/b&gt;"), "{html}");
        assert!(
            html.contains("<pre>expected &lt;1&gt; got 2</pre>"),
            "{html}"
        );
        assert!(html.contains("tests/t.py:7"));
        assert!(html.contains("1 more failing test not listed: only the first 1"));
        assert_eq!(
            html.matches("<tr>").count(),
            1 + 1,
            "a header and one failure"
        );
    }
}
