//! The bookkeeping of a run, apart from running anything: which stages may
//! start now, which are skipped and why, what a failure rolls back, and how
//! the run ends. No Wasm, no tasks, no I/O: the executor asks what can
//! start, tells what finished (or that the run is cancelled), and runs what
//! it is given.
//!
//! Rules:
//! - a stage is ready once every stage it `needs` has finished; ready
//!   stages come in the pipeline's topological order;
//! - it is skipped when it is not selected (`only`), its `when` does not
//!   match the trigger, it deploys to another environment, or a needed
//!   stage did not succeed (unless `when.always`, or the run names the
//!   stages it runs);
//! - a failed stage with `rollback = "deploy"` holds its result back while
//!   `deploy` runs again (as `deploy:rollback`) with the `previous-image`
//!   it reported; then both count as finished;
//! - once cancelled, nothing new starts, and whatever never finished is
//!   cancelled when the run closes.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::pipeline::{Pipeline, Stage, Trigger};
use crate::run::options::RunOptions;
use crate::run::record::{StageRecord, Status};

/// The name of a rollback's record: `deploy:rollback` (no stage name can
/// hold a `:`).
pub const ROLLBACK_SUFFIX: &str = ":rollback";

/// What decides whether a stage runs at all, apart from its needs.
#[derive(Debug, Clone)]
pub struct Scope {
    pub trigger: Trigger,
    /// The environment the run deploys to.
    pub environment: Option<String>,
    /// Run only these stages (see [`RunOptions::only`]).
    pub only: Option<Vec<String>>,
}

impl Scope {
    pub fn of(opts: &RunOptions) -> Self {
        Self {
            trigger: opts.trigger(),
            environment: opts.environment.clone(),
            only: opts.only.clone(),
        }
    }
}

/// Why a stage did not run; shown as its record's `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The run names the stages it runs, and not this one.
    NotSelected,
    /// Its `when` does not match the trigger.
    WhenFalse,
    /// It deploys to `stage`; the run deploys to `run`.
    OtherEnvironment { stage: String, run: Option<String> },
    /// This needed stage did not succeed.
    UpstreamFailed(String),
    /// A rollback of `target`, which reported no `previous-image`.
    NothingToRollBack { target: String },
    /// The run was cancelled before the stage finished.
    Cancelled,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotSelected => f.write_str("not selected for this run"),
            SkipReason::WhenFalse => f.write_str("`when` does not match this run"),
            SkipReason::OtherEnvironment { stage, run } => match run {
                Some(run) => write!(f, "deploys to `{stage}`; this run deploys to `{run}`"),
                None => write!(
                    f,
                    "deploys to `{stage}`; this run deploys to no environment"
                ),
            },
            SkipReason::UpstreamFailed(n) => write!(f, "needed stage `{n}` did not succeed"),
            SkipReason::NothingToRollBack { target } => write!(
                f,
                "`{target}` reported no `previous-image` (a first deploy?): nothing to roll back to"
            ),
            SkipReason::Cancelled => f.write_str("run cancelled"),
        }
    }
}

/// What [`Scheduler::next_ready`] hands out.
#[derive(Debug)]
pub enum Ready<'p> {
    /// Run it; it counts as running until [`Scheduler::finish`] is told.
    Start(&'p Stage),
    /// Skipped without running: its record ([`Scheduler::record`]) is final.
    Skipped(&'p str),
}

/// A rollback to run: `stage` is a copy of `target`, renamed
/// `target:rollback` and not retried, to run with `with.image = image`.
#[derive(Debug)]
pub struct Rollback<'p> {
    pub target: &'p Stage,
    pub stage: Box<Stage>,
    pub image: String,
}

/// What follows a stage's end.
#[derive(Debug)]
pub enum Next<'p> {
    /// These records are now final, in this order (report them).
    Final(Vec<String>),
    /// Run this rollback; the failed stage that asked for it is final
    /// only once the rollback finishes.
    Rollback(Rollback<'p>),
}

/// How the run ended, from [`Scheduler::close`].
#[derive(Debug)]
pub struct Ending {
    /// Every stage in pipeline order, then the rollbacks in the order they
    /// ended.
    pub stages: Vec<StageRecord>,
    /// Indices into `stages` of those that never finished, now cancelled
    /// (not reported yet).
    pub cancelled: Vec<usize>,
    pub status: Status,
}

pub struct Scheduler<'p> {
    pipeline: &'p Pipeline,
    order: Vec<&'p Stage>,
    scope: Scope,
    /// For each stage, by its place in `order`: how many of the stages it
    /// needs are not final yet.
    waiting: Vec<usize>,
    /// The places in `order` of the stages that need a stage, by its name.
    dependents: HashMap<&'p str, Vec<usize>>,
    /// The places in `order` of the stages whose needs are all final and
    /// that `next_ready` has not handed out yet: finding the next stage
    /// does not scan the stages still waiting (a long chain would cost a
    /// scan per stage).
    ready: BTreeSet<usize>,
    running: HashSet<String>,
    done: HashMap<String, StageRecord>,
    /// Names in the order their records became final.
    finished: Vec<String>,
    /// Failed stages waiting for the rollback they asked for, by the
    /// rollback's name: two checks of one deploy share its one rollback.
    held: HashMap<String, Vec<StageRecord>>,
    skipped: HashMap<String, SkipReason>,
    cancelled: bool,
}

impl<'p> Scheduler<'p> {
    pub fn new(pipeline: &'p Pipeline, scope: Scope) -> Self {
        let order = pipeline.topo_order();
        let mut waiting = vec![0; order.len()];
        let mut dependents: HashMap<&str, Vec<usize>> = HashMap::new();
        for (at, stage) in order.iter().enumerate() {
            let needs: BTreeSet<&str> = stage.needs.iter().map(String::as_str).collect();
            waiting[at] = needs.len();
            for need in needs {
                dependents.entry(need).or_default().push(at);
            }
        }
        let ready = (0..order.len()).filter(|&at| waiting[at] == 0).collect();
        Self {
            pipeline,
            order,
            scope,
            waiting,
            dependents,
            ready,
            running: HashSet::new(),
            done: HashMap::new(),
            finished: Vec::new(),
            held: HashMap::new(),
            skipped: HashMap::new(),
            cancelled: false,
        }
    }

    /// The next stage to start or skip, first in topological order; `None`
    /// when nothing more can start until something finishes (or ever,
    /// once cancelled).
    pub fn next_ready(&mut self) -> Option<Ready<'p>> {
        if self.cancelled {
            return None;
        }
        let stage = self.order[self.ready.pop_first()?];
        match self.skip_reason_for(stage) {
            Some(reason) => {
                let mut rec = pending(stage);
                rec.status = Status::Skipped;
                rec.error = Some(reason.to_string());
                self.skipped.insert(stage.name.clone(), reason);
                self.record_final(rec);
                Some(Ready::Skipped(&stage.name))
            }
            None => {
                self.running.insert(stage.name.clone());
                Some(Ready::Start(stage))
            }
        }
    }

    /// Stage (or rollback) `rec.name` ended with `rec`.
    pub fn finish(&mut self, rec: StageRecord) -> Next<'p> {
        self.running.remove(&rec.name);
        if let Some(failed) = self.held.remove(&rec.name) {
            return Next::Final(self.rollback_ended(rec, failed));
        }
        match self.rollback_of(&rec) {
            None => Next::Final(vec![self.record_final(rec)]),
            Some(Planned::Nothing(target)) => {
                let name = format!("{}{ROLLBACK_SUFFIX}", target.name);
                let mut names = Vec::new();
                // Another check of the same deploy already found nothing.
                if !self.done.contains_key(&name) {
                    let mut skipped = pending(target);
                    skipped.name = name;
                    skipped.status = Status::Skipped;
                    let reason = SkipReason::NothingToRollBack {
                        target: target.name.clone(),
                    };
                    skipped.error = Some(reason.to_string());
                    self.skipped.insert(skipped.name.clone(), reason);
                    names.push(self.record_final(skipped));
                }
                names.push(self.record_final(rec));
                Next::Final(names)
            }
            Some(Planned::Run(rollback)) => {
                let name = rollback.stage.name.clone();
                if let Some(waiting) = self.held.get_mut(&name) {
                    // That rollback is running: wait for it with the others.
                    waiting.push(rec);
                    return Next::Final(Vec::new());
                }
                if let Some(done) = self.done.get(&name) {
                    // It already ran for another check: it is this one's too.
                    let mut rec = rec;
                    note_rollback(&mut rec, done);
                    return Next::Final(vec![self.record_final(rec)]);
                }
                self.running.insert(name.clone());
                self.held.insert(name, vec![rec]);
                Next::Rollback(rollback)
            }
        }
    }

    /// Nothing new starts from now on.
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// The final record of a stage or rollback.
    pub fn record(&self, name: &str) -> Option<&StageRecord> {
        self.done.get(name)
    }

    /// Final records in the order they became final.
    pub fn finished(&self) -> impl Iterator<Item = &StageRecord> {
        self.finished_since(0)
    }

    /// Final records from the `n`th to become final on, in that order.
    pub fn finished_since(&self, n: usize) -> impl Iterator<Item = &StageRecord> {
        let names = self.finished.get(n..).unwrap_or_default();
        names.iter().filter_map(|n| self.done.get(n))
    }

    /// Stages and rollbacks started and not finished, by name.
    pub fn running(&self) -> impl Iterator<Item = &str> {
        self.running.iter().map(String::as_str)
    }

    /// Why a stage (or rollback) was skipped, if it was.
    pub fn skip_reason(&self, name: &str) -> Option<&SkipReason> {
        self.skipped.get(name)
    }

    /// The stages' records, whatever did not finish cancelled.
    pub fn close(mut self) -> Ending {
        // A stage whose rollback was cancelled still failed.
        for rec in self.held.drain().flat_map(|(_, recs)| recs) {
            self.done.insert(rec.name.clone(), rec);
        }
        // Rollbacks are not pipeline stages: they go after the others, in
        // the order they ended.
        let rollbacks: Vec<StageRecord> = self
            .finished
            .iter()
            .filter(|n| n.ends_with(ROLLBACK_SUFFIX))
            .filter_map(|n| self.done.remove(n))
            .collect();
        let mut cancelled = Vec::new();
        let mut stages: Vec<StageRecord> = Vec::with_capacity(self.pipeline.stages.len());
        for (i, stage) in self.pipeline.stages.iter().enumerate() {
            stages.push(match self.done.remove(&stage.name) {
                Some(r) => r,
                None => {
                    cancelled.push(i);
                    let mut rec = pending(stage);
                    rec.status = Status::Cancelled;
                    rec.error = Some(SkipReason::Cancelled.to_string());
                    rec
                }
            });
        }
        stages.extend(rollbacks);
        let status = if self.cancelled {
            Status::Cancelled
        } else if stages.iter().any(|s| s.status == Status::Failure) {
            Status::Failure
        } else {
            Status::Success
        };
        Ending {
            stages,
            cancelled,
            status,
        }
    }

    /// Makes `rec` final; returns its name.
    fn record_final(&mut self, rec: StageRecord) -> String {
        let name = rec.name.clone();
        self.finished.push(name.clone());
        if self.done.insert(name.clone(), rec).is_none() {
            // The stages that need it are one need closer to ready.
            for &at in self.dependents.get(name.as_str()).into_iter().flatten() {
                self.waiting[at] -= 1;
                if self.waiting[at] == 0 {
                    self.ready.insert(at);
                }
            }
        }
        name
    }

    /// Why a ready stage does not run, if it does not.
    fn skip_reason_for(&self, stage: &Stage) -> Option<SkipReason> {
        let scope = &self.scope;
        if let Some(only) = &scope.only {
            if !only.contains(&stage.name) {
                return Some(SkipReason::NotSelected);
            }
        }
        if !stage.when.matches(&scope.trigger) {
            return Some(SkipReason::WhenFalse);
        }
        if let Some(env) = &stage.environment {
            if scope.environment.as_deref() != Some(env.as_str()) {
                return Some(SkipReason::OtherEnvironment {
                    stage: env.clone(),
                    run: scope.environment.clone(),
                });
            }
        }
        if stage.when.always || scope.only.is_some() {
            return None;
        }
        stage
            .needs
            .iter()
            .find(|n| {
                self.done
                    .get(*n)
                    .is_some_and(|r| r.status != Status::Success)
            })
            .map(|n| SkipReason::UpstreamFailed(n.clone()))
    }

    /// Whether the stage that just ended asks for a rollback, and of what.
    fn rollback_of(&self, rec: &StageRecord) -> Option<Planned<'p>> {
        if rec.status != Status::Failure {
            return None;
        }
        let pipeline = self.pipeline;
        let target = pipeline.stage(&rec.name)?.rollback.as_deref()?;
        let (stage, deployed) = (pipeline.stage(target)?, self.done.get(target)?);
        if deployed.status != Status::Success {
            return None;
        }
        match deployed.outputs.get("previous-image") {
            Some(image) if !image.is_empty() => {
                let mut copy = stage.clone();
                copy.name = format!("{target}{ROLLBACK_SUFFIX}");
                // Once: a rollback that fails is reported, not retried.
                copy.retries = 0;
                Some(Planned::Run(Rollback {
                    target: stage,
                    stage: Box::new(copy),
                    image: image.clone(),
                }))
            }
            _ => Some(Planned::Nothing(stage)),
        }
    }

    /// A rollback ended: it, then the stages that asked for it (whose
    /// dependents may now start) are final.
    fn rollback_ended(&mut self, rec: StageRecord, mut failed: Vec<StageRecord>) -> Vec<String> {
        for f in &mut failed {
            note_rollback(f, &rec);
        }
        let mut names = vec![self.record_final(rec)];
        names.extend(failed.into_iter().map(|f| self.record_final(f)));
        names
    }
}

/// Adds to a failed check's error how the rollback it asked for ended.
fn note_rollback(failed: &mut StageRecord, rollback: &StageRecord) {
    let target = rollback.name.trim_end_matches(ROLLBACK_SUFFIX);
    let note = match rollback.status {
        Status::Success => format!(
            "rolled back `{target}` to {}",
            rollback
                .outputs
                .get("image")
                .map_or("the previous version", String::as_str)
        ),
        _ => format!(
            "the rollback of `{target}` failed too: {}",
            rollback.error.as_deref().unwrap_or(&rollback.summary)
        ),
    };
    failed.error = Some(match failed.error.take() {
        Some(e) => format!("{e}; {note}"),
        None => note,
    });
}

enum Planned<'p> {
    /// Asked for, but there is nothing to go back to.
    Nothing(&'p Stage),
    Run(Rollback<'p>),
}

/// A stage's record before it runs.
pub fn pending(stage: &Stage) -> StageRecord {
    let mut rec = StageRecord::pending(&stage.name, &stage.plugin);
    rec.environment = stage.environment.clone();
    rec.needs = stage.needs.clone();
    rec
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const HEAD: &str = "[pipeline]\nname = \"t\"\n\n[plugins]\np = \"p.wasm\"\n\n";

    /// A pipeline of `[[stage]]` tables, given as `name: extra TOML lines`.
    fn pipeline(stages: &[(&str, &str)]) -> Pipeline {
        pipeline_with("", stages)
    }

    fn pipeline_with(head: &str, stages: &[(&str, &str)]) -> Pipeline {
        let mut text = format!("{HEAD}{head}\n");
        for (name, extra) in stages {
            text.push_str(&format!(
                "[[stage]]\nname = \"{name}\"\nplugin = \"p\"\n{extra}\n\n"
            ));
        }
        crate::pipeline::parse(Path::new("pipeline.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_stage_record_keeps_what_the_stage_needs() {
        let p = pipeline(&[("a", ""), ("b", "needs = [\"a\"]")]);
        assert_eq!(pending(p.stage("b").unwrap()).needs, vec!["a".to_string()]);
        assert!(pending(p.stage("a").unwrap()).needs.is_empty());
        // Records written before `needs` was kept still load.
        let mut old = serde_json::to_value(pending(p.stage("a").unwrap())).unwrap();
        assert!(old.get("needs").is_none());
        old.as_object_mut().unwrap().remove("needs");
        let back: StageRecord = serde_json::from_value(old).unwrap();
        assert!(back.needs.is_empty());
    }

    fn scope() -> Scope {
        Scope {
            trigger: Trigger {
                branch: Some("main".into()),
                tag: None,
                event: "push".into(),
            },
            environment: None,
            only: None,
        }
    }

    fn ended(name: &str, status: Status) -> StageRecord {
        let mut rec = StageRecord::pending(name, "p");
        rec.status = status;
        if status == Status::Failure {
            rec.error = Some(format!("{name} broke"));
        }
        rec
    }

    /// Everything `next_ready` hands out now, as `+name` (start) or
    /// `-name` (skipped).
    fn drain(s: &mut Scheduler<'_>) -> Vec<String> {
        std::iter::from_fn(|| s.next_ready())
            .map(|r| match r {
                Ready::Start(st) => format!("+{}", st.name),
                Ready::Skipped(n) => format!("-{n}"),
            })
            .collect()
    }

    fn finals(next: Next<'_>) -> Vec<String> {
        match next {
            Next::Final(names) => names,
            Next::Rollback(r) => panic!("unexpected rollback {}", r.stage.name),
        }
    }

    fn diamond() -> Pipeline {
        pipeline(&[
            ("a", ""),
            ("b", "needs = [\"a\"]"),
            ("c", "needs = [\"a\"]"),
            ("d", "needs = [\"b\", \"c\"]"),
        ])
    }

    #[test]
    fn a_diamond_starts_each_stage_once_its_needs_finished() {
        let p = diamond();
        let mut s = Scheduler::new(&p, scope());
        assert_eq!(drain(&mut s), ["+a"]);
        assert_eq!(s.running().collect::<Vec<_>>(), ["a"]);
        assert_eq!(finals(s.finish(ended("a", Status::Success))), ["a"]);
        assert_eq!(drain(&mut s), ["+b", "+c"]);
        s.finish(ended("c", Status::Success));
        assert!(drain(&mut s).is_empty(), "d waits for b");
        s.finish(ended("b", Status::Success));
        assert_eq!(drain(&mut s), ["+d"]);
        s.finish(ended("d", Status::Success));
        assert!(drain(&mut s).is_empty());
        let order: Vec<&str> = s.finished().map(|r| r.name.as_str()).collect();
        assert_eq!(order, ["a", "c", "b", "d"]);
        let end = s.close();
        assert_eq!(end.status, Status::Success);
        assert!(end.cancelled.is_empty());
        let names: Vec<&str> = end.stages.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"], "pipeline order");
    }

    #[test]
    fn stages_ready_together_come_in_pipeline_order_not_the_order_they_became_ready() {
        let p = pipeline(&[
            ("p", ""),
            ("q", ""),
            ("r", "needs = [\"q\"]"),
            ("s", "needs = [\"p\"]"),
        ]);
        let mut s = Scheduler::new(&p, scope());
        assert_eq!(drain(&mut s), ["+p", "+q"]);
        // s becomes ready before r, but r comes first in the pipeline.
        s.finish(ended("p", Status::Success));
        s.finish(ended("q", Status::Success));
        assert_eq!(drain(&mut s), ["+r", "+s"]);
        s.finish(ended("s", Status::Success));
        s.finish(ended("r", Status::Success));
        assert!(drain(&mut s).is_empty(), "each stage is handed out once");
        assert_eq!(s.close().status, Status::Success);
    }

    #[test]
    fn a_failure_skips_its_dependents_naming_the_failed_stage() {
        let p = diamond();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(ended("a", Status::Success));
        drain(&mut s);
        s.finish(ended("b", Status::Failure));
        s.finish(ended("c", Status::Success));
        assert_eq!(drain(&mut s), ["-d"]);
        assert_eq!(
            s.skip_reason("d"),
            Some(&SkipReason::UpstreamFailed("b".into()))
        );
        let d = s.record("d").unwrap();
        assert_eq!(d.status, Status::Skipped);
        assert_eq!(d.error.as_deref(), Some("needed stage `b` did not succeed"));
        assert_eq!(s.close().status, Status::Failure);
    }

    #[test]
    fn skips_cascade_in_one_go_and_always_stages_still_run() {
        let p = pipeline(&[
            ("a", ""),
            ("b", "needs = [\"a\"]"),
            ("c", "needs = [\"b\"]"),
            ("notify", "needs = [\"c\"]\nwhen = { always = true }"),
        ]);
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(ended("a", Status::Failure));
        assert_eq!(drain(&mut s), ["-b", "-c", "+notify"]);
        assert_eq!(
            s.skip_reason("c"),
            Some(&SkipReason::UpstreamFailed("b".into())),
            "a skipped stage did not succeed either"
        );
        assert_eq!(s.skip_reason("notify"), None);
    }

    #[test]
    fn when_environment_and_selection_skip_with_their_reason() {
        let p = pipeline_with(
            "[environments.prod]\nbranch = [\"main\"]\n",
            &[
                ("tags", "when = { tag = [\"v*\"] }"),
                ("main", "when = { branch = [\"main\"] }"),
                ("deploy", "environment = \"prod\""),
            ],
        );
        let mut s = Scheduler::new(&p, scope());
        assert_eq!(drain(&mut s), ["-tags", "+main", "-deploy"]);
        assert_eq!(s.skip_reason("tags"), Some(&SkipReason::WhenFalse));
        assert_eq!(
            s.record("deploy").unwrap().error.as_deref(),
            Some("deploys to `prod`; this run deploys to no environment")
        );

        let mut sc = scope();
        sc.environment = Some("prod".into());
        sc.only = Some(vec!["deploy".into()]);
        let mut s = Scheduler::new(&p, sc);
        assert_eq!(drain(&mut s), ["-tags", "-main", "+deploy"]);
        assert_eq!(s.skip_reason("main"), Some(&SkipReason::NotSelected));
        assert_eq!(
            SkipReason::OtherEnvironment {
                stage: "prod".into(),
                run: Some("dev".into())
            }
            .to_string(),
            "deploys to `prod`; this run deploys to `dev`"
        );
    }

    #[test]
    fn selected_stages_run_even_when_their_needs_did_not_succeed() {
        let p = pipeline(&[("build", ""), ("deploy", "needs = [\"build\"]")]);
        let mut sc = scope();
        sc.only = Some(vec!["deploy".into()]);
        let mut s = Scheduler::new(&p, sc);
        assert_eq!(drain(&mut s), ["-build", "+deploy"]);
    }

    #[test]
    fn cancelling_stops_new_starts_and_cancels_the_rest() {
        let p = diamond();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(ended("a", Status::Success));
        assert_eq!(drain(&mut s), ["+b", "+c"]);
        s.cancel();
        assert!(s.is_cancelled());
        // b ended before the abort reached it; c was aborted.
        s.finish(ended("b", Status::Success));
        s.finish(ended("c", Status::Cancelled));
        assert!(drain(&mut s).is_empty(), "d does not start once cancelled");
        let end = s.close();
        assert_eq!(end.status, Status::Cancelled);
        assert_eq!(end.cancelled, [3]);
        let d = &end.stages[3];
        assert_eq!((d.name.as_str(), d.status), ("d", Status::Cancelled));
        assert_eq!(d.error.as_deref(), Some("run cancelled"));
    }

    fn deploy_and_smoke() -> Pipeline {
        pipeline(&[
            ("deploy", ""),
            (
                "smoke",
                "needs = [\"deploy\"]\nrollback = \"deploy\"\nretries = 2",
            ),
            ("after", "needs = [\"smoke\"]"),
        ])
    }

    fn deployed(previous: Option<&str>) -> StageRecord {
        let mut rec = ended("deploy", Status::Success);
        if let Some(image) = previous {
            rec.outputs.insert("previous-image".into(), image.into());
        }
        rec
    }

    #[test]
    fn a_failed_check_rolls_back_before_anything_after_it_runs() {
        let p = deploy_and_smoke();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(deployed(Some("app:1")));
        assert_eq!(drain(&mut s), ["+smoke"]);
        let Next::Rollback(rb) = s.finish(ended("smoke", Status::Failure)) else {
            panic!("expected a rollback");
        };
        assert_eq!(rb.target.name, "deploy");
        assert_eq!(rb.stage.name, "deploy:rollback");
        assert_eq!(rb.stage.retries, 0);
        assert_eq!(rb.image, "app:1");
        assert!(s.record("smoke").is_none(), "held until the rollback ends");
        assert!(drain(&mut s).is_empty(), "`after` waits for the rollback");
        assert_eq!(s.running().collect::<Vec<_>>(), ["deploy:rollback"]);

        let mut back = ended("deploy:rollback", Status::Success);
        back.outputs.insert("image".into(), "app:1".into());
        assert_eq!(finals(s.finish(back)), ["deploy:rollback", "smoke"]);
        assert_eq!(
            s.record("smoke").unwrap().error.as_deref(),
            Some("smoke broke; rolled back `deploy` to app:1")
        );
        assert_eq!(drain(&mut s), ["-after"]);
        assert_eq!(
            s.skip_reason("after"),
            Some(&SkipReason::UpstreamFailed("smoke".into()))
        );
        let end = s.close();
        let names: Vec<&str> = end.stages.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["deploy", "smoke", "after", "deploy:rollback"]);
        assert_eq!(end.status, Status::Failure);
    }

    #[test]
    fn a_failed_rollback_is_noted_on_the_stage_that_asked_for_it() {
        let p = deploy_and_smoke();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(deployed(Some("app:1")));
        drain(&mut s);
        s.finish(ended("smoke", Status::Failure));
        s.finish(ended("deploy:rollback", Status::Failure));
        assert_eq!(
            s.record("smoke").unwrap().error.as_deref(),
            Some("smoke broke; the rollback of `deploy` failed too: deploy:rollback broke")
        );
        // A failed rollback asks for no rollback of its own.
        assert!(drain(&mut s) == ["-after"]);
    }

    fn deploy_and_two_checks() -> Pipeline {
        pipeline(&[
            ("deploy", ""),
            ("smoke", "needs = [\"deploy\"]\nrollback = \"deploy\""),
            ("e2e", "needs = [\"deploy\"]\nrollback = \"deploy\""),
        ])
    }

    #[test]
    fn two_failed_checks_of_one_deploy_share_its_one_rollback() {
        let p = deploy_and_two_checks();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(deployed(Some("app:1")));
        assert_eq!(drain(&mut s), ["+smoke", "+e2e"]);
        assert!(matches!(
            s.finish(ended("smoke", Status::Failure)),
            Next::Rollback(_)
        ));
        // The second failure joins the rollback in flight.
        assert!(finals(s.finish(ended("e2e", Status::Failure))).is_empty());
        assert_eq!(s.running().collect::<Vec<_>>(), ["deploy:rollback"]);
        let mut back = ended("deploy:rollback", Status::Success);
        back.outputs.insert("image".into(), "app:1".into());
        assert_eq!(finals(s.finish(back)), ["deploy:rollback", "smoke", "e2e"]);
        for check in ["smoke", "e2e"] {
            let rec = s.record(check).unwrap();
            assert_eq!(rec.status, Status::Failure);
            assert!(rec
                .error
                .as_deref()
                .unwrap()
                .ends_with("rolled back `deploy` to app:1"));
        }
        let end = s.close();
        assert_eq!(end.status, Status::Failure, "failed, not cancelled");
        assert!(end.cancelled.is_empty());
        let names: Vec<&str> = end.stages.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["deploy", "smoke", "e2e", "deploy:rollback"]);
    }

    #[test]
    fn a_check_failing_after_the_rollback_ended_is_noted_without_another() {
        let p = deploy_and_two_checks();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(deployed(Some("app:1")));
        drain(&mut s);
        s.finish(ended("smoke", Status::Failure));
        s.finish(ended("deploy:rollback", Status::Success));
        assert_eq!(finals(s.finish(ended("e2e", Status::Failure))), ["e2e"]);
        assert!(s
            .record("e2e")
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("rolled back `deploy`"));
        assert_eq!(s.close().stages.len(), 4, "one rollback record");
    }

    #[test]
    fn nothing_to_roll_back_to_is_a_skipped_rollback() {
        let p = deploy_and_smoke();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(deployed(None));
        drain(&mut s);
        let names = finals(s.finish(ended("smoke", Status::Failure)));
        assert_eq!(names, ["deploy:rollback", "smoke"]);
        let rb = s.record("deploy:rollback").unwrap();
        assert_eq!(rb.status, Status::Skipped);
        assert_eq!(
            s.skip_reason("deploy:rollback"),
            Some(&SkipReason::NothingToRollBack {
                target: "deploy".into()
            })
        );
        assert!(rb
            .error
            .as_deref()
            .unwrap()
            .contains("nothing to roll back to"));
    }

    #[test]
    fn no_rollback_for_a_success_a_deploy_that_failed_or_a_stage_without_one() {
        let p = deploy_and_smoke();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(ended("deploy", Status::Failure));
        assert_eq!(drain(&mut s), ["-smoke", "-after"]);

        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(deployed(Some("app:1")));
        drain(&mut s);
        assert_eq!(finals(s.finish(ended("smoke", Status::Success))), ["smoke"]);
        assert_eq!(drain(&mut s), ["+after"]);
        assert_eq!(finals(s.finish(ended("after", Status::Failure))), ["after"]);
    }

    #[test]
    fn rollbacks_close_after_the_stages_in_the_order_they_ended() {
        let p = pipeline(&[
            ("web", ""),
            ("api", ""),
            ("check-web", "needs = [\"web\"]\nrollback = \"web\""),
            ("check-api", "needs = [\"api\"]\nrollback = \"api\""),
        ]);
        let mut s = Scheduler::new(&p, scope());
        assert_eq!(drain(&mut s), ["+web", "+api"]);
        for name in ["web", "api"] {
            let mut rec = ended(name, Status::Success);
            rec.outputs
                .insert("previous-image".into(), format!("{name}:0"));
            s.finish(rec);
        }
        assert_eq!(drain(&mut s), ["+check-web", "+check-api"]);
        let Next::Rollback(web) = s.finish(ended("check-web", Status::Failure)) else {
            panic!()
        };
        let Next::Rollback(api) = s.finish(ended("check-api", Status::Failure)) else {
            panic!()
        };
        assert_eq!((web.image.as_str(), api.image.as_str()), ("web:0", "api:0"));
        s.finish(ended("api:rollback", Status::Success));
        s.finish(ended("web:rollback", Status::Success));
        let end = s.close();
        let names: Vec<&str> = end.stages.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "web",
                "api",
                "check-web",
                "check-api",
                "api:rollback",
                "web:rollback"
            ]
        );
    }

    #[test]
    fn a_stage_whose_rollback_never_ended_still_failed() {
        let p = deploy_and_smoke();
        let mut s = Scheduler::new(&p, scope());
        drain(&mut s);
        s.finish(deployed(Some("app:1")));
        drain(&mut s);
        s.finish(ended("smoke", Status::Failure));
        s.cancel();
        let end = s.close();
        assert_eq!(end.stages[1].status, Status::Failure);
        assert_eq!(end.cancelled, [2], "only `after` never finished");
        assert_eq!(end.status, Status::Cancelled);
    }
}
