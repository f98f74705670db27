//! `/metrics`: pipeline figures in the Prometheus text format (0.0.4),
//! computed from the recorded runs at each scrape.
//!
//! Definitions (per pipeline; deployment figures per environment too):
//! - build success ratio: successful runs / (successful + failed) runs;
//!   cancelled and unfinished runs do not count;
//! - build duration: a histogram of finished (successful or failed) runs;
//! - a *deployment* is a run whose stages for its environment ran (see
//!   `RunRecord::deployment_status`); it *failed* when that stage or the run
//!   failed (a smoke test after the deploy, say). Rollbacks (`event =
//!   rollback`) are remediation, not changes: they count for recovery only;
//! - deployment frequency: successful deployments that finished in the last
//!   7 days, per day;
//! - change failure ratio: failed deployments / deployments;
//! - time to recovery: from the end of a failed deployment to the end of the
//!   next successful one (a rollback included) in the same environment;
//!   the mean over every recovery.
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::run::{RunSummary, Status};

/// Window of the deployment frequency.
pub const FREQUENCY_WINDOW_DAYS: i64 = 7;
/// Upper bounds of the duration histogram, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// What the server counts itself (since it started).
#[derive(Debug, Default, Clone)]
pub struct ServerCounts {
    pub queued: u64,
    pub running: u64,
    /// Webhook deliveries by outcome (`queued`, `ignored`, `duplicate`,
    /// `unauthorized`, `bad-request`, `too-large`).
    pub deliveries: BTreeMap<String, u64>,
}

/// The figures of one pipeline's environment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeployFigures {
    pub succeeded: u64,
    pub failed: u64,
    pub recent_successes: u64,
    pub recoveries: Vec<f64>,
}

impl DeployFigures {
    pub fn change_failure_ratio(&self) -> Option<f64> {
        let all = self.succeeded + self.failed;
        (all > 0).then(|| self.failed as f64 / all as f64)
    }
    pub fn per_day(&self) -> f64 {
        self.recent_successes as f64 / FREQUENCY_WINDOW_DAYS as f64
    }
    pub fn mean_time_to_recovery(&self) -> Option<f64> {
        (!self.recoveries.is_empty())
            .then(|| self.recoveries.iter().sum::<f64>() / self.recoveries.len() as f64)
    }
}

/// A finished run whose stages for its environment ran.
pub(crate) fn is_deployment(r: &RunSummary) -> bool {
    r.status.is_final() && r.deployment.is_some() && r.environment.is_some()
}

/// A deployment failed when its environment's stage or the run failed.
pub(crate) fn deployment_failed(r: &RunSummary) -> bool {
    r.deployment == Some(Status::Failure) || r.status == Status::Failure
}

/// A rollback is remediation, not a change.
pub(crate) fn is_rollback(r: &RunSummary) -> bool {
    r.event == "rollback"
}

/// Deployment figures by (pipeline, environment), from runs in any order.
pub fn deployments(
    runs: &[RunSummary],
    now_unix_ms: i64,
) -> BTreeMap<(String, String), DeployFigures> {
    let mut by_env: BTreeMap<(String, String), Vec<&RunSummary>> = BTreeMap::new();
    for r in runs.iter().filter(|r| is_deployment(r)) {
        if let Some(env) = &r.environment {
            by_env
                .entry((r.pipeline.clone(), env.clone()))
                .or_default()
                .push(r);
        }
    }
    let window_start = now_unix_ms - FREQUENCY_WINDOW_DAYS * 24 * 3600 * 1000;
    let mut out = BTreeMap::new();
    for (key, mut list) in by_env {
        list.sort_by_key(|r| (r.finished_unix_ms(), r.started_unix_ms));
        let mut f = DeployFigures::default();
        let mut incident_since: Option<i64> = None;
        for r in list {
            let failed = deployment_failed(r);
            let rollback = is_rollback(r);
            if !rollback {
                if failed {
                    f.failed += 1;
                } else {
                    f.succeeded += 1;
                    if r.finished_unix_ms() >= window_start {
                        f.recent_successes += 1;
                    }
                }
            }
            match (failed, incident_since) {
                (true, None) => incident_since = Some(r.finished_unix_ms()),
                (false, Some(since)) => {
                    f.recoveries
                        .push((r.finished_unix_ms() - since).max(0) as f64 / 1000.0);
                    incident_since = None;
                }
                _ => {}
            }
        }
        out.insert(key, f);
    }
    out
}

/// The Prometheus text exposition of `runs` and the server's own counts.
pub fn render(runs: &[RunSummary], counts: &ServerCounts, now_unix_ms: i64) -> String {
    let mut m = Exposition::default();
    let finished = FinishedRuns::of(runs);
    finished.outcomes(&mut m);
    finished.duration_histogram(&mut m);
    deployment_metrics(&mut m, runs, now_unix_ms);
    server_metrics(&mut m, counts);
    m.text
}

/// Finished runs counted by pipeline and status, and the durations of the
/// successful and failed ones (cancelled runs say nothing of build time).
struct FinishedRuns {
    by_status: BTreeMap<(String, Status), u64>,
    durations: BTreeMap<String, Vec<f64>>,
}

impl FinishedRuns {
    fn of(runs: &[RunSummary]) -> Self {
        let mut by_status: BTreeMap<(String, Status), u64> = BTreeMap::new();
        let mut durations: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in runs.iter().filter(|r| r.status.is_final()) {
            *by_status.entry((r.pipeline.clone(), r.status)).or_default() += 1;
            if matches!(r.status, Status::Success | Status::Failure) {
                durations
                    .entry(r.pipeline.clone())
                    .or_default()
                    .push(r.duration_ms as f64 / 1000.0);
            }
        }
        FinishedRuns {
            by_status,
            durations,
        }
    }

    /// Runs by status, and the success ratio per pipeline.
    fn outcomes(&self, m: &mut Exposition) {
        let FinishedRuns {
            by_status,
            durations,
        } = self;
        m.family("pipeline_runs_total", "counter", "Finished runs by status.");
        for ((p, s), n) in by_status {
            m.sample(
                "pipeline_runs_total",
                &[("pipeline", p), ("status", s.as_str())],
                *n as f64,
            );
        }

        m.family(
            "pipeline_build_success_ratio",
            "gauge",
            "Successful runs / (successful + failed) runs.",
        );
        for p in durations.keys() {
            let ok = by_status
                .get(&(p.clone(), Status::Success))
                .copied()
                .unwrap_or(0);
            let bad = by_status
                .get(&(p.clone(), Status::Failure))
                .copied()
                .unwrap_or(0);
            m.sample(
                "pipeline_build_success_ratio",
                &[("pipeline", p)],
                ok as f64 / (ok + bad) as f64,
            );
        }
    }

    /// The duration histogram per pipeline.
    fn duration_histogram(&self, m: &mut Exposition) {
        let durations = &self.durations;
        m.family(
            "pipeline_run_duration_seconds",
            "histogram",
            "Duration of finished (successful or failed) runs.",
        );
        for (p, ds) in durations {
            for le in DURATION_BUCKETS {
                let n = ds.iter().filter(|d| *d <= le).count();
                m.sample(
                    "pipeline_run_duration_seconds_bucket",
                    &[("pipeline", p), ("le", &format_value(*le))],
                    n as f64,
                );
            }
            m.sample(
                "pipeline_run_duration_seconds_bucket",
                &[("pipeline", p), ("le", "+Inf")],
                ds.len() as f64,
            );
            m.sample(
                "pipeline_run_duration_seconds_sum",
                &[("pipeline", p)],
                ds.iter().sum(),
            );
            m.sample(
                "pipeline_run_duration_seconds_count",
                &[("pipeline", p)],
                ds.len() as f64,
            );
        }
    }
}

/// DORA figures per pipeline and environment.
fn deployment_metrics(m: &mut Exposition, runs: &[RunSummary], now_unix_ms: i64) {
    let deploys = deployments(runs, now_unix_ms);
    m.family(
        "pipeline_deployments_total",
        "counter",
        "Deployments (rollbacks excluded) by outcome.",
    );
    for ((p, e), f) in &deploys {
        for (status, n) in [("success", f.succeeded), ("failure", f.failed)] {
            m.sample(
                "pipeline_deployments_total",
                &[("pipeline", p), ("environment", e), ("status", status)],
                n as f64,
            );
        }
    }
    m.family(
        "pipeline_deployment_frequency_per_day",
        "gauge",
        "Successful deployments per day over the last 7 days.",
    );
    for ((p, e), f) in &deploys {
        m.sample(
            "pipeline_deployment_frequency_per_day",
            &[("pipeline", p), ("environment", e)],
            f.per_day(),
        );
    }
    m.family(
        "pipeline_change_failure_ratio",
        "gauge",
        "Failed deployments / deployments.",
    );
    for ((p, e), f) in &deploys {
        if let Some(v) = f.change_failure_ratio() {
            m.sample(
                "pipeline_change_failure_ratio",
                &[("pipeline", p), ("environment", e)],
                v,
            );
        }
    }
    m.family(
        "pipeline_mean_time_to_recovery_seconds",
        "gauge",
        "Mean time from a failed deployment to the next successful one.",
    );
    for ((p, e), f) in &deploys {
        if let Some(v) = f.mean_time_to_recovery() {
            m.sample(
                "pipeline_mean_time_to_recovery_seconds",
                &[("pipeline", p), ("environment", e)],
                v,
            );
        }
    }
    m.family(
        "pipeline_recoveries_total",
        "counter",
        "Recoveries from failed deployments.",
    );
    for ((p, e), f) in &deploys {
        m.sample(
            "pipeline_recoveries_total",
            &[("pipeline", p), ("environment", e)],
            f.recoveries.len() as f64,
        );
    }
}

/// The server's own queue and delivery counts.
fn server_metrics(m: &mut Exposition, counts: &ServerCounts) {
    m.family(
        "pipeline_queue_runs",
        "gauge",
        "Runs in the server's queue by state.",
    );
    m.sample(
        "pipeline_queue_runs",
        &[("state", "queued")],
        counts.queued as f64,
    );
    m.sample(
        "pipeline_queue_runs",
        &[("state", "running")],
        counts.running as f64,
    );
    m.family(
        "pipeline_webhook_deliveries_total",
        "counter",
        "Webhook deliveries since the server started, by outcome.",
    );
    for (outcome, n) in &counts.deliveries {
        m.sample(
            "pipeline_webhook_deliveries_total",
            &[("outcome", outcome)],
            *n as f64,
        );
    }
}

/// The text format: `# HELP`/`# TYPE` once per family, then samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        id: &str,
        status: Status,
        deployment: Option<Status>,
        start_s: i64,
        dur_s: u64,
    ) -> RunSummary {
        RunSummary {
            id: id.into(),
            pipeline: "app".into(),
            build_number: 1,
            status,
            branch: Some("main".into()),
            tag: None,
            commit_sha: String::new(),
            event: "push".into(),
            environment: Some("prod".into()),
            deployment,
            started_at: String::new(),
            started_unix_ms: start_s * 1000,
            duration_ms: dur_s * 1000,
            reason: None,
            repository: None,
        }
    }

    #[test]
    fn figures_follow_the_definitions() {
        let day = 86_400;
        let now = 30 * day;
        let mut rollback = run("e", Status::Success, Some(Status::Success), now - 50, 10);
        rollback.event = "rollback".into();
        let runs = vec![
            run(
                "a",
                Status::Success,
                Some(Status::Success),
                now - 20 * day,
                10,
            ),
            // The deploy worked, the smoke test after it did not.
            run("b", Status::Failure, Some(Status::Success), now - 200, 20),
            run("c", Status::Success, Some(Status::Success), now - 100, 30),
            run("d", Status::Failure, Some(Status::Failure), now - 60, 5),
            rollback,
            run("f", Status::Cancelled, None, now - 10, 1),
        ];
        let f = &deployments(&runs, now * 1000)[&("app".to_string(), "prod".to_string())];
        assert_eq!((f.succeeded, f.failed), (2, 2));
        assert_eq!(f.recent_successes, 1);
        assert_eq!(f.change_failure_ratio(), Some(0.5));
        // b ended at now-180, c at now-70: 110 s; d ended at now-55, the
        // rollback at now-40: 15 s.
        assert_eq!(f.recoveries, vec![110.0, 15.0]);
        assert_eq!(f.mean_time_to_recovery(), Some(62.5));

        let text = render(&runs, &ServerCounts::default(), now * 1000);
        assert!(
            text.contains("pipeline_runs_total{pipeline=\"app\",status=\"success\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("pipeline_build_success_ratio{pipeline=\"app\"} 0.6\n"),
            "{text}"
        );
        assert!(text.contains("pipeline_run_duration_seconds_count{pipeline=\"app\"} 5\n"));
        assert!(
            text.contains("pipeline_run_duration_seconds_bucket{pipeline=\"app\",le=\"10\"} 3\n")
        );
        assert!(text.contains(
            "pipeline_mean_time_to_recovery_seconds{pipeline=\"app\",environment=\"prod\"} 62.5\n"
        ));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = Exposition::default();
        m.sample("x", &[("pipeline", "a\"b\\c\nd")], 1.0);
        assert_eq!(m.text, "x{pipeline=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
