//! Runs a pipeline: stages as a DAG, independent ones concurrently.
//!
//! Rules:
//! - a stage starts once every stage it `needs` has finished;
//! - it is skipped when its `when` does not match the trigger, or when a
//!   needed stage did not succeed, unless it says `when.always = true`;
//! - a failure (report `failed`, trap, timeout, limit) is retried up to
//!   `retries` times;
//! - cancelling (Ctrl-C) drops every running stage's future, which drops its
//!   store: the guest stops at its next epoch tick.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::caps::audit::Audit;
use crate::caps::docker::DockerEngine;
use crate::caps::log::{level_name, LogLine, LogSink, StageLog};
use crate::caps::scan::ScanConfig;
use crate::caps::secrets::{Masker, SecretStore, SecretsCap};
use crate::caps::{self, StageCaps, StageEnv};
use crate::pipeline::{Pipeline, Stage, Trigger, WorkspaceAccess};
use crate::run::approvals::ApprovalStore;
use crate::run::artifact_store::ArtifactStore;
use crate::run::artifacts;
use crate::run::observer::RunObserver;
use crate::run::options::RunOptions;
use crate::run::record::{
    now_rfc3339, AnnotationRecord, ApprovalRecord, Decision, RunRecord, StageRecord, Status,
};
use crate::runtime::bindings::{
    ReportStatus, RunContext, StageContext, StageReport, StageStatus, StageSummary, Upstream,
};
use crate::runtime::sandbox::{check_report, Sandbox, MAX_REPORT_TEXT};
use crate::runtime::{Plugin, Runtime};

pub struct Executor {
    runtime: Arc<Runtime>,
    caps: caps::Shared,
    approvals: Option<ApprovalStore>,
    artifact_store: Option<ArtifactStore>,
}

/// Everything one stage task needs, shared read-only across tasks.
struct RunShared {
    pipeline: Arc<Pipeline>,
    plugins: BTreeMap<String, Plugin>,
    opts: RunOptions,
    secrets: Arc<SecretStore>,
    observer: Arc<dyn RunObserver>,
    runtime: Arc<Runtime>,
    caps: caps::Shared,
    approvals: Option<ApprovalStore>,
    artifact_store: Option<ArtifactStore>,
}

impl Executor {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            caps: caps::Shared::default(),
            approvals: None,
            artifact_store: None,
        }
    }

    /// Keep an encrypted copy of every declared artifact here.
    pub fn with_artifact_store(mut self, store: ArtifactStore) -> Self {
        self.artifact_store = Some(store);
        self
    }

    /// Where approvals are asked for and decided (`host approve`).
    pub fn with_approvals(mut self, approvals: ApprovalStore) -> Self {
        self.approvals = Some(approvals);
        self
    }

    /// Run Trivy this way (binary, cache and work directories).
    pub fn with_scanner(mut self, scan: ScanConfig) -> Self {
        self.caps.scan = scan;
        self
    }

    /// Use this engine connection (tests point it at a recording socket).
    pub fn with_docker(mut self, docker: DockerEngine) -> Self {
        self.caps.docker = docker;
        self
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Run the pipeline to the end (or until `cancel`), returning its record.
    pub async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        plugins: BTreeMap<String, Plugin>,
        opts: RunOptions,
        secrets: SecretStore,
        observer: Arc<dyn RunObserver>,
        cancel: CancellationToken,
    ) -> RunRecord {
        let started = Instant::now();
        let mut opts = opts;
        if opts.environment.is_none() {
            opts.environment = pipeline
                .environment_for(&opts.trigger())
                .map(|e| e.name.clone());
        }
        let mut record = RunRecord {
            file: pipeline.file.display().to_string(),
            stages: pipeline.stages.iter().map(pending).collect(),
            ..RunRecord::new(&pipeline.name, &opts)
        };
        observer.run_started(&record);
        let shared = Arc::new(RunShared {
            pipeline: pipeline.clone(),
            plugins,
            opts,
            secrets: Arc::new(secrets),
            observer,
            runtime: self.runtime.clone(),
            caps: self.caps.clone(),
            approvals: self.approvals.clone(),
            artifact_store: self.artifact_store.clone(),
        });

        let mut done: HashMap<String, StageRecord> = HashMap::new();
        let mut finished_order: Vec<String> = Vec::new();
        let mut started_set: std::collections::HashSet<String> = Default::default();
        let mut tasks: JoinSet<StageRecord> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
        let trigger = shared.opts.trigger();
        let mut cancelled = false;
        // Failed stages waiting for the rollback they asked for, by the
        // rollback's name.
        let mut held: HashMap<String, StageRecord> = HashMap::new();

        loop {
            // Start (or skip) everything whose needs are all done.
            if !cancelled {
                let mut progressed = true;
                while progressed {
                    progressed = false;
                    for stage in pipeline.topo_order() {
                        if started_set.contains(&stage.name)
                            || !stage.needs.iter().all(|n| done.contains_key(n))
                        {
                            continue;
                        }
                        started_set.insert(stage.name.clone());
                        if let Some(reason) = skip_reason(stage, &trigger, &shared.opts, &done) {
                            let mut rec = pending(stage);
                            rec.status = Status::Skipped;
                            rec.error = Some(reason);
                            shared.observer.stage_finished(&rec);
                            finished_order.push(rec.name.clone());
                            done.insert(stage.name.clone(), rec);
                            progressed = true;
                            continue;
                        }
                        let ctx = stage_context(&shared, stage, &done, &finished_order);
                        let upstream = upstream_artifacts(&pipeline, stage, &done);
                        let s = shared.clone();
                        let st = stage.clone();
                        let handle = tasks
                            .spawn(async move { run_stage(s, st, ctx, upstream, false).await });
                        running.insert(handle.id(), stage.name.clone());
                    }
                }
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                joined = tasks.join_next_with_id() => {
                    let Some(joined) = joined else { break };
                    let rec = match joined {
                        Ok((id, rec)) => { running.remove(&id); rec }
                        Err(e) => {
                            let name = running.remove(&e.id()).unwrap_or_default();
                            let mut rec = match pipeline.stage(&name) {
                                Some(s) => pending(s),
                                None => StageRecord::pending(&name, ""),
                            };
                            if e.is_cancelled() {
                                rec.status = Status::Cancelled;
                                rec.error = Some("run cancelled".into());
                            } else {
                                // A panic in the host's own stage task: fail the stage, go on.
                                rec.status = Status::Failure;
                                rec.error = Some(format!("host error while running the stage: {e}"));
                            }
                            rec
                        }
                    };
                    let finish = |rec: StageRecord, order: &mut Vec<String>, done: &mut HashMap<String, StageRecord>| {
                        shared.observer.stage_finished(&rec);
                        order.push(rec.name.clone());
                        done.insert(rec.name.clone(), rec);
                    };
                    if let Some(mut failed) = held.remove(&rec.name) {
                        // A rollback ended: it, then the stage that asked
                        // for it (whose dependents may now run).
                        let note = match rec.status {
                            Status::Success => format!(
                                "rolled back `{}` to {}",
                                rec.name.trim_end_matches(ROLLBACK_SUFFIX),
                                rec.outputs.get("image").map_or("the previous version", String::as_str)
                            ),
                            _ => format!(
                                "the rollback of `{}` failed too: {}",
                                rec.name.trim_end_matches(ROLLBACK_SUFFIX),
                                rec.error.as_deref().unwrap_or(&rec.summary)
                            ),
                        };
                        failed.error = Some(match failed.error.take() {
                            Some(e) => format!("{e}; {note}"),
                            None => note,
                        });
                        finish(rec, &mut finished_order, &mut done);
                        finish(failed, &mut finished_order, &mut done);
                    } else {
                        match rollback_plan(&pipeline, &rec, &done) {
                            RollbackPlan::None => finish(rec, &mut finished_order, &mut done),
                            RollbackPlan::Nothing(skipped) => {
                                finish(*skipped, &mut finished_order, &mut done);
                                finish(rec, &mut finished_order, &mut done);
                            }
                            RollbackPlan::Run { target, stage: st, image } => {
                                let mut ctx = stage_context(&shared, target, &done, &finished_order);
                                let base: serde_json::Value =
                                    serde_json::from_str(&ctx.config).unwrap_or_default();
                                ctx.config = merged(&base, &serde_json::json!({ "image": image })).to_string();
                                ctx.stage = st.name.clone();
                                let upstream = upstream_artifacts(&pipeline, target, &done);
                                let s = shared.clone();
                                let name = st.name.clone();
                                let handle = tasks.spawn(async move {
                                    run_stage(s, *st, ctx, upstream, true).await
                                });
                                running.insert(handle.id(), name.clone());
                                held.insert(name, rec);
                            }
                        }
                    }
                }
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    tasks.abort_all();
                }
            }
        }

        // A stage whose rollback was cancelled still failed.
        for (_, rec) in held.drain() {
            done.insert(rec.name.clone(), rec);
        }
        // Rollbacks are not pipeline stages: they go after the others, in
        // the order they ended.
        let rollbacks: Vec<StageRecord> = finished_order
            .iter()
            .filter(|n| n.ends_with(ROLLBACK_SUFFIX))
            .filter_map(|n| done.remove(n))
            .collect();
        // Whatever did not finish was cancelled.
        for rec in record.stages.iter_mut() {
            match done.remove(&rec.name) {
                Some(r) => *rec = r,
                None => {
                    rec.status = Status::Cancelled;
                    rec.error = Some("run cancelled".into());
                    shared.observer.stage_finished(rec);
                }
            }
        }
        record.stages.extend(rollbacks);
        record.status = if cancelled {
            Status::Cancelled
        } else if record.stages.iter().any(|s| s.status == Status::Failure) {
            Status::Failure
        } else {
            Status::Success
        };
        if cancelled {
            self.caps
                .docker
                .finish_cleanups(Duration::from_secs(20))
                .await;
        }
        record.duration_ms = started.elapsed().as_millis() as u64;
        record
    }
}

/// The name of a rollback's record: `deploy:rollback` (no stage name can
/// hold a `:`).
const ROLLBACK_SUFFIX: &str = ":rollback";

enum RollbackPlan<'p> {
    /// Nothing asked for one.
    None,
    /// Asked for, but there is nothing to go back to (a skipped record).
    Nothing(Box<StageRecord>),
    /// Run `stage` (a copy of `target`, renamed) with `with.image = image`.
    Run {
        target: &'p Stage,
        stage: Box<Stage>,
        image: String,
    },
}

/// Whether the stage that just ended asks for a rollback, and of what.
fn rollback_plan<'p>(
    pipeline: &'p Pipeline,
    rec: &StageRecord,
    done: &HashMap<String, StageRecord>,
) -> RollbackPlan<'p> {
    if rec.status != Status::Failure {
        return RollbackPlan::None;
    }
    let Some(target) = pipeline
        .stage(&rec.name)
        .and_then(|s| s.rollback.as_deref())
    else {
        return RollbackPlan::None;
    };
    let (Some(stage), Some(deployed)) = (pipeline.stage(target), done.get(target)) else {
        return RollbackPlan::None;
    };
    if deployed.status != Status::Success {
        return RollbackPlan::None;
    }
    let name = format!("{target}{ROLLBACK_SUFFIX}");
    match deployed.outputs.get("previous-image") {
        Some(image) if !image.is_empty() => {
            let mut st = stage.clone();
            st.name = name;
            // Once: a rollback that fails is reported, not retried.
            st.retries = 0;
            RollbackPlan::Run {
                target: stage,
                stage: Box::new(st),
                image: image.clone(),
            }
        }
        _ => {
            let mut skipped = pending(stage);
            skipped.name = name;
            skipped.status = Status::Skipped;
            skipped.error = Some(format!(
                "`{target}` reported no `previous-image` (a first deploy?): nothing to roll back to"
            ));
            RollbackPlan::Nothing(Box::new(skipped))
        }
    }
}

/// A stage's record before it runs.
fn pending(stage: &Stage) -> StageRecord {
    let mut rec = StageRecord::pending(&stage.name, &stage.plugin);
    rec.environment = stage.environment.clone();
    rec
}

/// Why a ready stage does not run, if it does not.
fn skip_reason(
    stage: &Stage,
    trigger: &Trigger,
    opts: &RunOptions,
    done: &HashMap<String, StageRecord>,
) -> Option<String> {
    let run_environment = opts.environment.as_deref();
    if let Some(only) = &opts.only {
        if !only.contains(&stage.name) {
            return Some("not selected for this run".into());
        }
    }
    if !stage.when.matches(trigger) {
        return Some("`when` does not match this run".into());
    }
    if let Some(env) = &stage.environment {
        if run_environment != Some(env.as_str()) {
            return Some(format!(
                "deploys to `{env}`; this run deploys to {}",
                run_environment.map_or("no environment".to_string(), |e| format!("`{e}`"))
            ));
        }
    }
    if stage.when.always || opts.only.is_some() {
        return None;
    }
    stage
        .needs
        .iter()
        .find(|n| done.get(*n).is_some_and(|r| r.status != Status::Success))
        .map(|n| format!("needed stage `{n}` did not succeed"))
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
    done: &HashMap<String, StageRecord>,
    finished_order: &[String],
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
            .filter_map(|n| done.get(n))
            .map(|r| Upstream {
                stage: r.name.clone(),
                status: stage_status(r.status),
                outputs: r.outputs.clone().into_iter().collect(),
            })
            .collect(),
        finished: finished_order
            .iter()
            .filter_map(|n| done.get(n))
            .map(|r| StageSummary {
                stage: r.name.clone(),
                status: stage_status(r.status),
                duration_ms: r.duration_ms,
                summary: if r.summary.is_empty() {
                    r.error.clone().unwrap_or_default()
                } else {
                    r.summary.clone()
                },
            })
            .collect(),
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
    secrets_cap.check_available()?;
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
    let caps = StageCaps::for_stage(&env)?;
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
    done: &HashMap<String, StageRecord>,
) -> Vec<(String, artifacts::Digests)> {
    pipeline
        .ancestors(&stage.name)
        .into_iter()
        .filter_map(|n| done.get(n))
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

async fn run_stage(
    shared: Arc<RunShared>,
    stage: Stage,
    ctx: StageContext,
    upstream: Vec<(String, artifacts::Digests)>,
    rollback: bool,
) -> StageRecord {
    let masker = shared.secrets.masker().clone();
    let mut rec = pending(&stage);
    rec.started_at = Some(now_rfc3339());
    rec.status = Status::Running;
    let started = Instant::now();
    let Some(plugin) = shared.plugins.get(&stage.plugin) else {
        rec.status = Status::Failure;
        rec.error = Some(format!("plugin `{}` was not loaded", stage.plugin));
        return rec;
    };
    rec.plugin_sha256 = plugin.sha256.clone();

    // A rollback restores what was approved before; it does not wait.
    let gate = if rollback {
        Ok(())
    } else {
        approval_gate(&shared, &stage, &mut rec).await
    };
    if let Err(reason) = gate {
        rec.status = Status::Failure;
        rec.error = Some(reason);
        rec.duration_ms = started.elapsed().as_millis() as u64;
        return rec;
    }

    let attempts = stage.retries + 1;
    for attempt in 1..=attempts {
        rec.attempts = attempt;
        shared.observer.stage_started(&stage.name, attempt);
        // Checked before every attempt: an approval wait or a retry delay
        // is time for someone to swap a file.
        if !upstream.is_empty() {
            let ws = shared.opts.workspace.clone();
            let up = upstream.clone();
            let checked = blocking(move || {
                up.iter()
                    .try_for_each(|(producer, d)| artifacts::verify(&ws, producer, d))
            })
            .await;
            if let Err(e) = checked {
                rec.status = Status::Failure;
                rec.error = Some(masker.mask(&e));
                break;
            }
        }
        let audit = Audit::new(masker.clone(), attempt);
        let (caps, sandbox) = match build_caps(&shared, &stage, &audit) {
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
        let outcome = shared.runtime.run_stage(plugin, &sandbox, caps, &ctx).await;
        rec.log.extend(log.take());
        rec.audit.extend(audit.entries());
        match outcome {
            Ok(report) => {
                apply_report(&mut rec, report, &masker);
                if rec.status == Status::Success {
                    break;
                }
            }
            Err(failure) => {
                rec.status = Status::Failure;
                rec.summary.clear();
                rec.error = Some(stage_text(&masker, &failure.to_string()));
            }
        }
    }
    if stage.grants.workspace == Some(WorkspaceAccess::ReadWrite)
        && !stage.grants.docker.run.is_empty()
    {
        scrub_workspace(&shared, &mut rec).await;
    }
    if rec.status == Status::Success && !stage.artifacts.is_empty() {
        let ws = shared.opts.workspace.clone();
        let paths = stage.artifacts.clone();
        let store = shared.artifact_store.clone();
        let (run, name) = (shared.opts.id.clone(), stage.name.clone());
        let kept = blocking(move || match store {
            Some(store) => artifacts::record_with(&ws, &paths, |path, file| {
                store
                    .keep(&run, &name, path, file)
                    .map_err(|e| e.to_string())
            }),
            None => artifacts::record(&ws, &paths),
        });
        match kept.await {
            Ok(d) => rec.artifacts = d,
            Err(e) => {
                rec.status = Status::Failure;
                rec.error = Some(masker.mask(&e));
            }
        }
    }
    rec.duration_ms = started.elapsed().as_millis() as u64;
    rec
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
    let Some(store) = &shared.approvals else {
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
        rec.error = Some(stage_text(masker, &limit));
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
    use crate::runtime::bindings::{Annotation, Level};

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
