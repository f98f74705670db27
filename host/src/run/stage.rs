//! Running one stage: its approval, its attempts (capabilities built from
//! its grants, the component run in its sandbox, the report recorded), the
//! workspace scrub and its artifacts. The scheduler decides when; this
//! decides nothing about other stages.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::caps::audit::Audit;
use crate::caps::log::{level_name, LogLine, LogSink, StageLog};
use crate::caps::secrets::{Masker, SecretStore, SecretsCap};
use crate::caps::{self, StageCaps, StageEnv};
use crate::pipeline::{Pipeline, Stage, WorkspaceAccess};
use crate::run::artifact_store::ArtifactStore;
use crate::run::artifacts;
use crate::run::hooks::RunHooks;
use crate::run::observer::RunObserver;
use crate::run::options::RunOptions;
use crate::run::record::{
    now_rfc3339, AnnotationRecord, ApprovalRecord, Decision, StageRecord, Status,
};
use crate::run::scheduler::{pending, Rollback, Scheduler};
use crate::run::stage_cache::{Probe, StageCache};
use crate::runtime::sandbox::{check_report, Sandbox, MAX_REPORT_TEXT};
use crate::runtime::{Plugin, Runtime};
use crate::wit::{
    ReportStatus, RunContext, StageContext, StageReport, StageStatus, StageSummary, Upstream,
};

/// Everything one stage task needs, shared read-only across tasks.
pub(super) struct RunShared {
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) plugins: BTreeMap<String, Plugin>,
    pub(super) opts: RunOptions,
    pub(super) secrets: Arc<SecretStore>,
    pub(super) observer: Arc<dyn RunObserver>,
    pub(super) runtime: Arc<Runtime>,
    pub(super) caps: caps::Shared,
    pub(super) hooks: RunHooks,
    pub(super) artifact_store: Option<ArtifactStore>,
    pub(super) stage_cache: Option<StageCache>,
}

fn stage_status(s: Status) -> StageStatus {
    match s {
        Status::Success => StageStatus::Success,
        Status::Skipped => StageStatus::Skipped,
        Status::Cancelled => StageStatus::Cancelled,
        _ => StageStatus::Failure,
    }
}

fn stage_context(
    shared: &RunShared,
    stage: &Stage,
    sched: &Scheduler<'_>,
    told: &Told,
) -> StageContext {
    let o = &shared.opts;
    StageContext {
        run: RunContext {
            run_id: o.id.clone(),
            pipeline: shared.pipeline.name.clone(),
            build_number: o.build_number,
            commit_sha: o.commit_sha.clone(),
            branch: o.branch.clone(),
            tag: o.tag.clone(),
            event: o.event.clone(),
            environment: stage.environment.clone(),
            default_branch: shared.pipeline.default_branch.clone(),
            url: o.url.clone(),
        },
        stage: stage.name.clone(),
        config: match shared.opts.overrides.get(&stage.name) {
            Some(extra) => merged(&stage.with, extra).to_string(),
            None => stage.with.to_string(),
        },
        needs: stage
            .needs
            .iter()
            .filter_map(|n| sched.record(n))
            .map(|r| Upstream {
                stage: r.name.clone(),
                status: stage_status(r.status),
                outputs: r.outputs.clone().into_iter().collect(),
            })
            .collect(),
        finished: told.summaries.clone(),
    }
}

/// What stages are told of the stages finished before them, kept up to
/// date as the run goes (a record is final once finished, so this only
/// grows) instead of rebuilt for every stage.
#[derive(Default)]
pub(super) struct Told {
    summaries: Vec<StageSummary>,
    /// Some stage finished so far made artifacts.
    artifacts: bool,
}

impl Told {
    /// Add what finished since the last update.
    fn update(&mut self, sched: &Scheduler<'_>) -> &Self {
        for r in sched.finished_since(self.summaries.len()) {
            self.artifacts |= !r.artifacts.is_empty();
            self.summaries.push(StageSummary {
                stage: r.name.clone(),
                status: stage_status(r.status),
                duration_ms: r.duration_ms,
                summary: if r.summary.is_empty() {
                    r.error.clone().unwrap_or_default()
                } else {
                    r.summary.clone()
                },
            });
        }
        self
    }
}

/// `base` with the keys of `extra` set (both JSON objects).
fn merged(base: &serde_json::Value, extra: &serde_json::Value) -> serde_json::Value {
    let mut out = base.clone();
    if let (Some(o), Some(e)) = (out.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Build one attempt's capabilities and sandbox from the stage's grants.
fn build_caps(
    shared: &RunShared,
    stage: &Stage,
    audit: &Audit,
) -> Result<(StageCaps, Sandbox), String> {
    let g = &stage.grants;
    let masker: Masker = shared.secrets.masker().clone();
    let observer = shared.observer.clone();
    let sink: LogSink =
        Arc::new(move |stage: &str, line: &LogLine| observer.stage_log(stage, line));
    let secrets_cap = Arc::new(
        SecretsCap::new(
            &stage.name,
            g.secrets.clone(),
            g.secrets_read.clone(),
            shared.secrets.clone(),
        )
        .with_audit(audit.clone()),
    );
    secrets_cap.check_available().map_err(|e| e.to_string())?;
    let workspace = g.workspace.map(|a| {
        (
            shared.opts.workspace.clone(),
            a == WorkspaceAccess::ReadWrite,
        )
    });
    let env = StageEnv {
        stage: &stage.name,
        pipeline: &shared.pipeline.name,
        run_id: &shared.opts.id,
        grants: g,
        decls: &shared.pipeline.declared,
        workspace: workspace.clone(),
        memory: stage.memory,
        secrets: shared.secrets.clone(),
        secrets_cap,
        log: StageLog::new(&stage.name, shared.opts.log_limit, masker, Some(sink)),
        audit: audit.clone(),
        shared: &shared.caps,
    };
    let caps = StageCaps::for_stage(&env).map_err(|e| format!("{e:#}"))?;
    let env = g
        .env
        .iter()
        .filter_map(|k| shared.opts.env.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    Ok((
        caps,
        Sandbox {
            workspace,
            env,
            memory_bytes: stage.memory,
            timeout: stage.timeout,
        },
    ))
}

/// The artifacts recorded by the stages `stage` depends on.
fn upstream_artifacts(
    pipeline: &Pipeline,
    stage: &Stage,
    sched: &Scheduler<'_>,
    told: &Told,
) -> Vec<(String, artifacts::Digests)> {
    // Most stages before this one made no artifacts: then there is no
    // need to walk its ancestry.
    if !told.artifacts {
        return Vec::new();
    }
    pipeline
        .ancestors(&stage.name)
        .into_iter()
        .filter_map(|n| sched.record(n))
        .filter(|r| !r.artifacts.is_empty())
        .map(|r| (r.name.clone(), r.artifacts.clone()))
        .collect()
}

/// Off the async threads: hashing can take a while for big files.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("artifact check: {e}")))
}

/// One stage to run, with what it is told: its context and the
/// artifacts it must find as recorded.
pub(super) struct StageRun {
    stage: Which,
    ctx: StageContext,
    upstream: Vec<(String, artifacts::Digests)>,
    /// A rollback restores what was approved before; it does not wait.
    rollback: bool,
}

/// The stage a [`StageRun`] runs: a pipeline stage by its place (the
/// pipeline is shared: no copy per stage), or a rollback's own.
enum Which {
    At(usize),
    Own(Box<Stage>),
}

impl StageRun {
    /// `stage`, as the scheduler's records stand now.
    pub(super) fn new(
        shared: &RunShared,
        stage: &Stage,
        sched: &Scheduler<'_>,
        told: &mut Told,
    ) -> Self {
        let at = shared
            .pipeline
            .stages
            .iter()
            .position(|s| std::ptr::eq(s, stage));
        let told = told.update(sched);
        Self {
            stage: match at {
                Some(at) => Which::At(at),
                None => Which::Own(Box::new(stage.clone())),
            },
            ctx: stage_context(shared, stage, sched, told),
            upstream: upstream_artifacts(&shared.pipeline, stage, sched, told),
            rollback: false,
        }
    }

    /// The rollback of `rb.target`: told what the target was told, with
    /// `with.image` set to the image to go back to.
    pub(super) fn rollback(
        shared: &RunShared,
        rb: Rollback<'_>,
        sched: &Scheduler<'_>,
        told: &mut Told,
    ) -> Self {
        let told = told.update(sched);
        let mut ctx = stage_context(shared, rb.target, sched, told);
        let base: serde_json::Value = serde_json::from_str(&ctx.config).unwrap_or_default();
        ctx.config = merged(&base, &serde_json::json!({ "image": rb.image })).to_string();
        ctx.stage = rb.stage.name.clone();
        Self {
            upstream: upstream_artifacts(&shared.pipeline, rb.target, sched, told),
            stage: Which::Own(rb.stage),
            ctx,
            rollback: true,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.ctx.stage
    }

    fn stage<'a>(&'a self, pipeline: &'a Pipeline) -> &'a Stage {
        match &self.stage {
            Which::At(at) => &pipeline.stages[*at],
            Which::Own(stage) => stage,
        }
    }

    /// Run it to its record.
    pub(super) async fn run(self, shared: Arc<RunShared>) -> StageRecord {
        let _timer = crate::perf::start(crate::perf::Phase::Stage);
        let stage = self.stage(&shared.pipeline);
        let mut rec = pending(stage);
        rec.started_at = Some(now_rfc3339());
        rec.status = Status::Running;
        let started = Instant::now();
        let Some(plugin) = shared.plugins.get(&stage.plugin) else {
            rec.status = Status::Failure;
            rec.error = Some(format!("plugin `{}` was not loaded", stage.plugin));
            return rec;
        };
        rec.plugin_sha256 = plugin.sha256.clone();
        let gate = if self.rollback {
            Ok(())
        } else {
            approval_gate(&shared, stage, &mut rec).await
        };
        let gate = match gate {
            Ok(()) => still_owned(&shared, stage).await,
            Err(e) => Err(e),
        };
        if let Err(reason) = gate {
            rec.status = Status::Failure;
            rec.error = Some(reason);
            rec.duration_ms = started.elapsed().as_millis() as u64;
            return rec;
        }
        // A rollback restores what was approved before: never replayed.
        let (probe, replayed) = if self.rollback {
            (Probe::none(), false)
        } else {
            Probe::start(&shared, stage, &self.ctx, &self.upstream, &mut rec).await
        };
        if !replayed {
            self.attempts(&shared, plugin, &mut rec).await;
            if stage.grants.workspace == Some(WorkspaceAccess::ReadWrite)
                && !stage.grants.docker.run.is_empty()
            {
                scrub_workspace(&shared, &mut rec).await;
            }
        }
        // A replayed stage's artifacts are kept again under this run, so
        // `host artifacts` finds them here too.
        if rec.status == Status::Success && !stage.artifacts.is_empty() {
            keep_artifacts(&shared, stage, &mut rec).await;
        }
        probe.store(&shared, stage, &rec).await;
        rec.duration_ms = started.elapsed().as_millis() as u64;
        rec
    }

    /// Up to `retries + 1` attempts, until one succeeds.
    async fn attempts(&self, shared: &RunShared, plugin: &Plugin, rec: &mut StageRecord) {
        let (stage, masker) = (self.stage(&shared.pipeline), shared.secrets.masker());
        let attempts = stage.retries + 1;
        for attempt in 1..=attempts {
            rec.attempts = attempt;
            shared.observer.stage_started(&stage.name, attempt);
            // Checked before every attempt: an approval wait or a retry delay
            // is time for someone to swap a file.
            if let Err(e) = self.check_upstream(shared).await {
                rec.status = Status::Failure;
                rec.error = Some(masker.mask(&e));
                break;
            }
            let audit = Audit::new(masker.clone(), attempt);
            let timer = crate::perf::start(crate::perf::Phase::Caps);
            let built = build_caps(shared, stage, &audit);
            drop(timer);
            let (caps, sandbox) = match built {
                Ok(x) => x,
                Err(e) => {
                    rec.status = Status::Failure;
                    rec.error = Some(masker.mask(&e));
                    break;
                }
            };
            if attempt > 1 {
                let line = LogLine {
                    at_ms: 0,
                    stream: "host".into(),
                    text: format!("attempt {attempt} of {attempts}"),
                };
                shared.observer.stage_log(&stage.name, &line);
                rec.log.push(line);
            }
            let log = caps.log.clone();
            let outcome = shared
                .runtime
                .run_stage(plugin, &sandbox, caps, &self.ctx)
                .await;
            let _timer = crate::perf::start(crate::perf::Phase::Report);
            rec.log.extend(log.take());
            rec.audit.extend(audit.entries());
            match outcome {
                Ok(report) => {
                    apply_report(rec, report, masker);
                    if rec.status == Status::Success {
                        break;
                    }
                }
                Err(failure) => {
                    rec.status = Status::Failure;
                    rec.summary.clear();
                    rec.error = Some(stage_text(masker, &failure.to_string()));
                }
            }
        }
    }

    /// The artifacts of the stages this one depends on are as recorded.
    async fn check_upstream(&self, shared: &RunShared) -> Result<(), String> {
        if self.upstream.is_empty() {
            return Ok(());
        }
        let ws = shared.opts.workspace.clone();
        let up = self.upstream.clone();
        blocking(move || {
            up.iter()
                .try_for_each(|(producer, d)| artifacts::verify(&ws, producer, d))
                .map_err(|e| e.to_string())
        })
        .await
    }
}

/// Record the digests of a successful stage's artifacts (and keep a copy
/// when the host has an artifact store); the stage fails when it cannot.
async fn keep_artifacts(shared: &RunShared, stage: &Stage, rec: &mut StageRecord) {
    let ws = shared.opts.workspace.clone();
    let paths = stage.artifacts.clone();
    let store = shared.artifact_store.clone();
    let (run, name) = (shared.opts.id.clone(), stage.name.clone());
    let kept = blocking(move || {
        match store {
            Some(store) => artifacts::record_with(&ws, &paths, store.keeper(&run, &name)),
            None => artifacts::record(&ws, &paths),
        }
        .map_err(|e| e.to_string())
    });
    match kept.await {
        Ok(d) => rec.artifacts = d,
        Err(e) => {
            rec.status = Status::Failure;
            rec.error = Some(shared.secrets.masker().mask(&e));
        }
    }
}

/// After a stage whose containers could write the workspace: nothing a
/// container made is left to gain privileges or block the host (set-id
/// bits cleared, device nodes, fifos and sockets removed), and the stage
/// fails, naming them, so its output is not handed on.
async fn scrub_workspace(shared: &RunShared, rec: &mut StageRecord) {
    let ws = shared.opts.workspace.clone();
    let scrubbed = blocking(move || {
        crate::confined::scrub::scrub(&ws).map_err(|e| format!("checking the workspace: {e}"))
    })
    .await;
    let problem = match scrubbed {
        Ok(found) if found.is_empty() => return,
        Ok(found) => {
            let shown: Vec<String> = found.iter().take(10).map(|f| f.to_string()).collect();
            format!(
                "a container left files in the workspace that could gain privileges or block the host; neutralized: {}{}",
                shown.join(", "),
                if found.len() > 10 { format!(" and {} more", found.len() - 10) } else { String::new() }
            )
        }
        Err(e) => e,
    };
    // File names a container chose: stage-controlled text.
    let problem = shared.secrets.masker().mask(&problem);
    rec.status = Status::Failure;
    rec.error = Some(match rec.error.take() {
        Some(e) => format!("{e}; {problem}"),
        None => problem,
    });
}

/// Before a stage that acts outside the run: is the run still ours to act
/// for? (Always, on one machine.)
async fn still_owned(shared: &RunShared, stage: &Stage) -> Result<(), String> {
    match &shared.hooks.ownership {
        Some(o) if stage.acts_outside() => o.still_owned().await,
        _ => Ok(()),
    }
}

/// Wait for a person's approval when the stage's environment asks for one.
async fn approval_gate(
    shared: &RunShared,
    stage: &Stage,
    rec: &mut StageRecord,
) -> Result<(), String> {
    let Some(env) = stage
        .environment
        .as_deref()
        .and_then(|e| shared.pipeline.environment(e))
        .filter(|e| e.approval)
    else {
        return Ok(());
    };
    if let Some(by) = shared.opts.approved_by.get(&stage.name) {
        let now = now_rfc3339();
        rec.approval = Some(ApprovalRecord {
            environment: env.name.clone(),
            requested_at: now.clone(),
            decision: Decision::Approved,
            decided_at: now,
            by: Some(by.clone()),
            comment: Some("given with the command that started the run".into()),
        });
        return Ok(());
    }
    let Some(store) = &shared.hooks.approvals else {
        return Err(format!(
            "deploying to `{}` needs an approval, and this host has no approval store",
            env.name
        ));
    };
    // Recorded before it is announced: the printed `host approve`
    // command must find it.
    let deadline = store
        .ask(
            &shared.opts.id,
            &stage.name,
            &env.name,
            env.approval_timeout,
        )
        .await
        .map_err(|e| format!("approval: {e:#}"))?;
    shared.observer.approval_requested(
        &shared.opts.id,
        &stage.name,
        &env.name,
        env.approval_timeout,
    );
    let approval = store
        .wait(&shared.opts.id, &stage.name, deadline)
        .await
        .map_err(|e| format!("approval: {e:#}"))?;
    let outcome = match approval.decision {
        Decision::Approved => Ok(()),
        Decision::Rejected => Err(format!(
            "deployment to `{}` rejected by {}{}",
            env.name,
            approval.by.as_deref().unwrap_or("someone"),
            approval
                .comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        )),
        Decision::TimedOut => Err(format!(
            "no approval for `{}` within {}",
            env.name,
            crate::run::display::format_duration(env.approval_timeout.as_millis() as u64)
        )),
    };
    rec.approval = Some(approval);
    outcome
}

/// Text a stage controls, as its record keeps it: masked, then cut at
/// [`MAX_REPORT_TEXT`] (a secret across the cut is masked whole).
fn stage_text(masker: &Masker, text: &str) -> String {
    masker.mask_cut(text, MAX_REPORT_TEXT, " …[cut]")
}

/// A stage's report becomes its record: every string in it masked (output
/// keys and values, summary, every annotation field), bounded by the report
/// limits (over one, the stage fails naming it and keeps no outputs or
/// annotations).
fn apply_report(rec: &mut StageRecord, report: StageReport, masker: &Masker) {
    if let Err(limit) = check_report(&report) {
        rec.status = Status::Failure;
        rec.warning = false;
        rec.summary.clear();
        rec.outputs.clear();
        rec.annotations.clear();
        rec.error = Some(stage_text(masker, &limit.to_string()));
        return;
    }
    rec.summary = stage_text(masker, &report.summary);
    rec.outputs = report
        .outputs
        .into_iter()
        .map(|(k, v)| (masker.mask(&k), masker.mask(&v)))
        .collect();
    rec.annotations = report
        .annotations
        .into_iter()
        .map(|a| AnnotationRecord {
            level: level_name(a.level).into(),
            title: stage_text(masker, &a.title),
            message: stage_text(masker, &a.message),
            file: a.file.as_deref().map(|f| stage_text(masker, f)),
            line: a.line,
        })
        .collect();
    match report.status {
        ReportStatus::Passed | ReportStatus::Warning => {
            rec.status = Status::Success;
            rec.warning = report.status == ReportStatus::Warning;
            rec.error = None;
        }
        ReportStatus::Failed => {
            rec.status = Status::Failure;
            rec.error = Some(rec.summary.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::{Annotation, Level};

    fn report(status: ReportStatus, text: &str) -> StageReport {
        StageReport {
            status,
            summary: format!("summary {text}"),
            outputs: vec![(format!("key-{text}"), format!("value {text}"))],
            annotations: vec![Annotation {
                level: Level::Warn,
                title: format!("title {text}"),
                message: format!("message {text}"),
                file: Some(format!("src/{text}.rs")),
                line: Some(3),
            }],
        }
    }

    #[test]
    fn stages_are_told_everything_finished_before_them_in_order() {
        let text = "[pipeline]\nname = \"t\"\n\n[plugins]\np = \"p.wasm\"\n\n\
            [[stage]]\nname = \"a\"\nplugin = \"p\"\n\n\
            [[stage]]\nname = \"b\"\nplugin = \"p\"\nneeds = [\"a\"]\n\n\
            [[stage]]\nname = \"c\"\nplugin = \"p\"\nneeds = [\"a\"]\n";
        let p = crate::pipeline::parse(std::path::Path::new("pipeline.toml"), text).unwrap();
        let mut sched = Scheduler::new(
            &p,
            crate::run::scheduler::Scope::of(&RunOptions::new("r".into(), "/tmp".into())),
        );
        let ended = |name: &str, status: Status| {
            let mut rec = StageRecord::pending(name, "p");
            rec.status = status;
            rec
        };
        let mut told = Told::default();
        let names = |t: &Told| {
            t.summaries
                .iter()
                .map(|s| s.stage.clone())
                .collect::<Vec<_>>()
        };
        assert!(told.update(&sched).summaries.is_empty());
        assert!(sched.next_ready().is_some());
        sched.finish(ended("a", Status::Success));
        assert_eq!(names(told.update(&sched)), ["a"]);
        assert!(!told.artifacts);
        while sched.next_ready().is_some() {}
        // c ends before b, failing with no summary: told its error, and
        // that a stage so far made artifacts.
        let mut c = ended("c", Status::Failure);
        c.error = Some("c broke".into());
        c.artifacts.insert("out.txt".into(), "sha256:00".into());
        sched.finish(c);
        sched.finish(ended("b", Status::Success));
        told.update(&sched);
        assert_eq!(names(&told), ["a", "c", "b"]);
        assert!(matches!(told.summaries[1].status, StageStatus::Failure));
        assert_eq!(told.summaries[1].summary, "c broke");
        assert!(told.artifacts);
        // Updated with nothing new, it adds nothing: it is what one update
        // from the start makes.
        assert_eq!(
            names(told.update(&sched)),
            names(Told::default().update(&sched))
        );
    }

    #[test]
    fn every_string_of_a_report_is_masked() {
        let masker = Masker::new(["hunter2-xyz".to_string()]);
        let mut rec = StageRecord::pending("s", "p");
        apply_report(
            &mut rec,
            report(ReportStatus::Passed, "hunter2-xyz"),
            &masker,
        );
        assert_eq!(rec.status, Status::Success);
        assert_eq!(rec.summary, "summary ***");
        assert_eq!(rec.outputs["key-***"], "value ***");
        let a = &rec.annotations[0];
        assert_eq!(
            (a.title.as_str(), a.message.as_str(), a.file.as_deref()),
            ("title ***", "message ***", Some("src/***.rs"))
        );
        // Hex of the value, in a failed report: the error too.
        let hex = hex::encode("hunter2-xyz");
        apply_report(&mut rec, report(ReportStatus::Failed, &hex), &masker);
        assert_eq!(rec.error.as_deref(), Some("summary ***"));
        // Long text is cut after masking.
        let long = "x".repeat(MAX_REPORT_TEXT + 10);
        let mut r = report(ReportStatus::Passed, &long);
        r.outputs.clear();
        apply_report(&mut rec, r, &masker);
        assert_eq!(rec.status, Status::Success, "{:?}", rec.error);
        assert!(rec.summary.len() < MAX_REPORT_TEXT + 20 && rec.summary.ends_with("[cut]"));
    }

    #[test]
    fn a_report_over_a_limit_fails_and_keeps_nothing() {
        let mut r = report(ReportStatus::Passed, "x");
        r.annotations = (0..2000).map(|_| r.annotations[0].clone()).collect();
        let mut rec = StageRecord::pending("s", "p");
        apply_report(&mut rec, r, &Masker::default());
        assert_eq!(rec.status, Status::Failure);
        let err = rec.error.unwrap();
        assert!(
            err.contains("2000 annotations") && err.contains("limit is 1000"),
            "{err}"
        );
        assert!(rec.annotations.is_empty() && rec.outputs.is_empty() && rec.summary.is_empty());
    }
}
