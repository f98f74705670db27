//! `test-runner` stage: runs the project's test command in a container with
//! the workspace mounted read-write, then reads the JUnit XML reports (and
//! optionally a Cobertura or lcov coverage report) the tests wrote into the
//! workspace, and reports counts, coverage and one annotation per failure.
//!
//! `with` keys: `image` (required), `command` (required list), `workdir`
//! ("/workspace"), `env` (table), `junit` (required glob or list of globs,
//! relative to the workspace), `coverage` (glob or list), `min-coverage`
//! (percent of lines), `require-reports` (true), `timeout` ("5m"),
//! `max-failures-listed` (50).
//!
//! Outputs: `tests`, `passed`, `failed`, `errors`, `skipped`, `exit-code`,
//! `reports` (JUnit files read, comma-separated), and when coverage is
//! configured `coverage` (percent, one decimal, when measured) and
//! `coverage-reports`.
//!
//! The stage fails on a failed or errored test, a non-zero exit code (even
//! when every test passed), a timeout, a missing or unreadable report (when
//! `require-reports`), and coverage below `min-coverage`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use stage_sdk::docker::{Docker, HostDocker, MountMode, Privileges, RunRequest, RunResult};
use stage_sdk::{
    Annotation, ConfigKey, Context, PluginInfo, Report, ReportStatus, Stage, StageError,
};

pub mod coverage;
pub mod junit;
pub mod reports;

use junit::{Counts, Outcome, TestCase};

/// Where the host mounts the workspace, in the stage and in the container.
pub const WORKSPACE: &str = "/workspace";
/// Largest report file read.
const MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;
/// Bound of an annotation's message.
const MAX_MESSAGE: usize = 1024;

/// One glob or a list of globs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Globs {
    One(String),
    Many(Vec<String>),
}

// By hand rather than `#[serde(untagged)]`: an untagged enum's error has no
// position, so the SDK could not name the key in it.
impl<'de> Deserialize<'de> for Globs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Globs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a glob (string) or a list of globs")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Globs, E> {
                Ok(Globs::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Globs, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(Globs::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Globs {
    pub fn list(&self) -> Vec<String> {
        match self {
            Globs::One(g) => vec![g.clone()],
            Globs::Many(v) => v.clone(),
        }
    }
}

/// The `with` table.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    pub image: String,
    pub command: Vec<String>,
    // Defaults of workdir, env, require-reports and max-failures-listed come
    // from describe() (the SDK fills them in), not from serde.
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    pub junit: Globs,
    #[serde(default)]
    pub coverage: Option<Globs>,
    #[serde(default)]
    pub min_coverage: Option<f64>,
    pub require_reports: bool,
    #[serde(default)]
    pub timeout: Option<String>,
    pub max_failures_listed: usize,
}

/// Parses `90s`, `5m`, `1h30m`, `500ms`, `2h` into milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let total = stage_sdk::duration::parse(text)?;
    if total.is_zero() {
        return Err(format!("{text:?}: the timeout must be more than zero"));
    }
    u64::try_from(total.as_millis()).map_err(|_| format!("{text:?}: duration too large"))
}

/// The checked configuration.
struct Plan {
    with: With,
    junit: reports::Patterns,
    coverage: Option<reports::Patterns>,
    timeout_ms: Option<u64>,
}

fn plan(ctx: &Context) -> Result<Plan, StageError> {
    let with: With = ctx.config_with_defaults()?;
    if with.image.trim().is_empty() {
        return Err(StageError::config("with.image: must not be empty"));
    }
    if with.command.is_empty() {
        return Err(StageError::config(
            "with.command: must name a program (a list like [\"pytest\", \"--junitxml=reports/junit.xml\"])",
        ));
    }
    let junit = reports::Patterns::new(&with.junit.list())
        .map_err(|e| StageError::config(format!("with.junit: {e}")))?;
    let coverage = match &with.coverage {
        Some(g) => Some(
            reports::Patterns::new(&g.list())
                .map_err(|e| StageError::config(format!("with.coverage: {e}")))?,
        ),
        None => None,
    };
    if let Some(min) = with.min_coverage {
        if !(0.0..=100.0).contains(&min) {
            return Err(StageError::config(format!(
                "with.min-coverage: {min} is not a percentage (0 to 100)"
            )));
        }
        if coverage.is_none() {
            return Err(StageError::config(
                "with.min-coverage: needs `coverage` (the coverage report to read)",
            ));
        }
    }
    let timeout_ms = match &with.timeout {
        Some(t) => {
            Some(parse_duration(t).map_err(|e| StageError::config(format!("with.timeout: {e}")))?)
        }
        None => None,
    };
    Ok(Plan {
        with,
        junit,
        coverage,
        timeout_ms,
    })
}

/// The request for the test container.
fn request(plan: &Plan) -> RunRequest {
    let w = &plan.with;
    RunRequest {
        image: w.image.clone(),
        command: w.command.clone(),
        env: w.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        workdir: Some(w.workdir.clone()),
        workspace: MountMode::ReadWrite,
        timeout_ms: plan.timeout_ms,
        privileges: Privileges {
            privileged: false,
            network: None,
            cap_add: Vec::new(),
            devices: Vec::new(),
            mounts: Vec::new(),
        },
    }
}

fn read_report(workspace: &Path, rel: &str) -> Result<String, String> {
    let path = workspace.join(rel);
    let meta = std::fs::metadata(&path).map_err(|e| format!("{rel}: {e}"))?;
    if meta.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "{rel}: {} bytes, more than the {} MiB a report may have",
            meta.len(),
            MAX_REPORT_BYTES / (1024 * 1024)
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{rel}: {e}"))?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A path as the report gives it, made relative to the workspace when it is inside.
fn workspace_path(file: &str) -> String {
    let f = file.strip_prefix("/workspace/").unwrap_or(file);
    f.strip_prefix("./").unwrap_or(f).to_string()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Everything `run` does, with the engine and the workspace directory given.
pub fn execute(
    ctx: &Context,
    engine: &mut dyn Docker,
    workspace: &Path,
) -> Result<Report, StageError> {
    let plan = plan(ctx)?;
    let result = match run_tests(&plan, engine) {
        Ok(r) => r,
        Err(report) => return Ok(report),
    };
    let w = &plan.with;
    let mut f = Findings::default();
    let junit = read_junit(&plan, workspace, &mut f);
    let cov = read_coverage(&plan, workspace, &mut f);

    // Verdict.
    let failing: Vec<&TestCase> = junit
        .cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failed | Outcome::Error))
        .collect();
    explain_exit(
        &result,
        w,
        !junit.cases.is_empty(),
        failing.is_empty(),
        &mut f,
    );
    let failed = !failing.is_empty() || result.exit_code != 0 || !f.reasons.is_empty();
    if !failed && !junit.files.is_empty() && junit.cases.is_empty() {
        f.warnings
            .push("the reports contain no test case".to_string());
    }
    annotate_failures(&failing, w.max_failures_listed, &mut f);
    for warning in &f.warnings {
        stage_sdk::log::warn!("{warning}");
    }
    Ok(build_report(&plan, &result, &junit, &cov, failed, f))
}

/// Why the stage fails, what it warns about, and its annotations, as the
/// reports are read.
#[derive(Default)]
struct Findings {
    reasons: Vec<String>,
    annotations: Vec<Annotation>,
    warnings: Vec<String>,
}

/// The JUnit reports: those found, those read, and their test cases.
struct JunitRead {
    files: Vec<String>,
    read: Vec<String>,
    cases: Vec<TestCase>,
}

/// The coverage reports read and their merged line coverage.
#[derive(Default)]
struct CoverageRead {
    percent: Option<f64>,
    files: Vec<String>,
}

/// Runs the test container; `Err` is the failed report when it could not run.
fn run_tests(plan: &Plan, engine: &mut dyn Docker) -> Result<RunResult, Report> {
    let w = &plan.with;
    stage_sdk::log::info!(
        "running {:?} in {} (workdir {})",
        w.command.join(" "),
        w.image,
        w.workdir
    );
    let result = engine.run(&request(plan)).map_err(|e| {
        let msg = e.message();
        stage_sdk::log::error!("docker.run {}: {msg}", w.image);
        Report::failed(format!("could not run the tests in {}: {msg}", w.image))
            .annotate(Annotation::error(format!("docker.run {}", w.image), msg))
    })?;
    if result.timed_out {
        stage_sdk::log::warn!(
            "the test command timed out after {} (exit code {})",
            w.timeout.as_deref().unwrap_or("the host's limit"),
            result.exit_code
        );
    } else {
        stage_sdk::log::info!("the test command exited with code {}", result.exit_code);
    }
    Ok(result)
}

fn read_junit(plan: &Plan, workspace: &Path, f: &mut Findings) -> JunitRead {
    let files = match plan.junit.find(workspace) {
        Ok(found) => {
            if found.truncated {
                f.warnings.push(format!(
                    "the search for {} stopped after {} entries",
                    plan.junit.patterns.join(", "),
                    reports::MAX_ENTRIES
                ));
            }
            found.files
        }
        Err(e) => {
            f.reasons
                .push(format!("cannot search the workspace for reports: {e}"));
            Vec::new()
        }
    };
    if files.is_empty() && f.reasons.is_empty() {
        let msg = format!("no JUnit report matches {}", plan.junit.patterns.join(", "));
        if plan.with.require_reports {
            f.reasons.push(msg);
        } else {
            f.warnings.push(msg);
        }
    }
    let mut read = Vec::new();
    let mut cases = Vec::new();
    for rel in &files {
        let parsed = read_report(workspace, rel).and_then(|xml| {
            junit::parse(rel, &xml).map_err(|e| {
                f.annotations.push(
                    Annotation::error("invalid JUnit report", e.to_string())
                        .file(rel.as_str())
                        .line(e.line as u32),
                );
                e.to_string()
            })
        });
        match parsed {
            Ok(mut c) => {
                stage_sdk::log::info!("{rel}: {}", Counts::of(&c).line());
                cases.append(&mut c);
                read.push(rel.clone());
            }
            Err(e) => {
                stage_sdk::log::error!("{e}");
                f.reasons.push(e);
            }
        }
    }
    JunitRead { files, read, cases }
}

fn read_coverage(plan: &Plan, workspace: &Path, f: &mut Findings) -> CoverageRead {
    let Some(patterns) = &plan.coverage else {
        return CoverageRead::default();
    };
    let w = &plan.with;
    let files = match patterns.find(workspace) {
        Ok(found) => found.files,
        Err(e) => {
            f.reasons
                .push(format!("cannot search the workspace for coverage: {e}"));
            Vec::new()
        }
    };
    if files.is_empty() {
        let msg = format!(
            "no coverage report matches {}",
            patterns.patterns.join(", ")
        );
        if w.require_reports || w.min_coverage.is_some() {
            f.reasons.push(msg);
        } else {
            f.warnings.push(msg);
        }
    }
    let mut parsed = Vec::new();
    let mut read = Vec::new();
    for rel in &files {
        match read_report(workspace, rel).and_then(|t| coverage::parse(rel, &t)) {
            Ok(c) => {
                if let Some(p) = c.percent() {
                    stage_sdk::log::info!("{rel}: {} line coverage {p:.1}%", c.format.as_str());
                }
                parsed.push(c);
                read.push(rel.clone());
            }
            Err(e) => {
                stage_sdk::log::error!("{e}");
                f.annotations.push(
                    Annotation::error("invalid coverage report", e.clone()).file(rel.as_str()),
                );
                f.reasons.push(e);
            }
        }
    }
    let percent = coverage::merge(&parsed);
    if let Some(min) = w.min_coverage {
        match percent {
            Some(p) if p + 1e-9 < min => f.reasons.push(format!(
                "line coverage {p:.1}% is below min-coverage {min}%"
            )),
            None if !parsed.is_empty() => f
                .reasons
                .push("the coverage report counts no line".to_string()),
            _ => {}
        }
    }
    CoverageRead {
        percent,
        files: read,
    }
}

/// A timeout, or a non-zero exit no failing test explains, comes first
/// among the reasons.
fn explain_exit(
    result: &RunResult,
    w: &With,
    any_case: bool,
    none_failing: bool,
    f: &mut Findings,
) {
    if result.timed_out {
        let after = w
            .timeout
            .as_deref()
            .map(|t| format!(" after {t}"))
            .unwrap_or_default();
        f.reasons
            .insert(0, format!("the test command timed out{after}"));
    } else if result.exit_code != 0 && none_failing {
        let why = if any_case {
            " although no test failed"
        } else {
            ""
        };
        f.reasons.insert(
            0,
            format!(
                "the test command exited with code {}{why}",
                result.exit_code
            ),
        );
    }
}

/// One annotation per failing test, up to `max`, then one "N more".
fn annotate_failures(failing: &[&TestCase], max: usize, f: &mut Findings) {
    for case in failing.iter().take(max) {
        let mut a = Annotation::error(case.title(), case.failure_text(MAX_MESSAGE));
        if let Some(file) = &case.file {
            a = a.file(workspace_path(file));
            if let Some(l) = case.line {
                a = a.line(l);
            }
        }
        f.annotations.push(a);
    }
    if failing.len() > max {
        let more = failing.len() - max;
        f.annotations.push(Annotation::warning(
            format!(
                "{} not listed",
                plural(more, "more failing test", "more failing tests")
            ),
            format!("only the first {max} are annotated (max-failures-listed)"),
        ));
    }
}

fn build_report(
    plan: &Plan,
    result: &RunResult,
    junit: &JunitRead,
    cov: &CoverageRead,
    failed: bool,
    f: Findings,
) -> Report {
    let counts = Counts::of(&junit.cases);
    let mut summary = if junit.read.is_empty() && junit.cases.is_empty() {
        "no test report".to_string()
    } else {
        counts.line()
    };
    if let Some(p) = cov.percent {
        summary.push_str(&format!("; coverage {p:.1}%"));
    }
    if !f.reasons.is_empty() {
        summary.push_str(" — ");
        summary.push_str(&f.reasons.join("; "));
    } else if !failed && !f.warnings.is_empty() {
        summary.push_str(" — ");
        summary.push_str(&f.warnings.join("; "));
    }
    let status = if failed {
        ReportStatus::Failed
    } else if f.warnings.is_empty() {
        ReportStatus::Passed
    } else {
        ReportStatus::Warning
    };
    let mut report = Report::new(status, summary)
        .output("tests", counts.tests.to_string())
        .output("passed", counts.passed.to_string())
        .output("failed", counts.failed.to_string())
        .output("errors", counts.errors.to_string())
        .output("skipped", counts.skipped.to_string())
        .output("exit-code", result.exit_code.to_string())
        .output("reports", junit.read.join(","));
    if plan.coverage.is_some() {
        if let Some(p) = cov.percent {
            report = report.output("coverage", format!("{p:.1}"));
        }
        report = report.output("coverage-reports", cov.files.join(","));
    }
    for a in f.annotations {
        report = report.annotate(a);
    }
    report
}

struct TestRunner;

impl Stage for TestRunner {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "test-runner",
            env!("CARGO_PKG_VERSION"),
            "Runs the test command in a container, then reads its JUnit and coverage reports",
        )
        .key(ConfigKey::required(
            "image",
            "Image to run the tests in (e.g. python:3.12)",
        ))
        .key(ConfigKey::required(
            "command",
            "Test command as a list of arguments (no shell), e.g. [\"pytest\", \"--junitxml=reports/junit.xml\"]",
        ))
        .key(ConfigKey::optional(
            "workdir",
            "Working directory in the container (the workspace is mounted read-write at /workspace)",
            "\"/workspace\"",
        ))
        .key(ConfigKey::optional(
            "env",
            "Environment variables for the container (table of strings)",
            "{}",
        ))
        .key(ConfigKey::required(
            "junit",
            "JUnit XML report(s) the tests write: a glob or list of globs relative to the workspace (e.g. \"reports/*.xml\", \"**/TEST-*.xml\")",
        ))
        .key(ConfigKey::optional_no_default(
            "coverage",
            "Coverage report (Cobertura XML or lcov, detected from the content): a glob or list of globs relative to the workspace",
        ))
        .key(ConfigKey::optional_no_default(
            "min-coverage",
            "Minimum line coverage in percent (0-100); needs `coverage`",
        ))
        .key(ConfigKey::optional(
            "require-reports",
            "Fail the stage when no report matches `junit` (or `coverage`)",
            "true",
        ))
        .key(ConfigKey::optional_no_default(
            "timeout",
            "Time limit of the test command, e.g. \"90s\", \"5m\", \"1h30m\" (the host caps it)",
        ))
        .key(ConfigKey::optional(
            "max-failures-listed",
            "Most failed tests annotated one by one",
            "50",
        ))
        .capability("docker.run")
        .capability("workspace")
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        execute(&ctx, &mut HostDocker, Path::new(WORKSPACE))
    }
}

stage_sdk::export_stage!(TestRunner);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::docker::RunResult;
    use stage_sdk::testing::{DockerCall, FakeDocker};
    use stage_sdk::{CapError, Denial, Level};
    use std::fs;
    use std::path::PathBuf;

    fn data(rel: &str) -> PathBuf {
        PathBuf::from(format!(
            "{}/../../../shared/data/{rel}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    /// The SDK's fake engine plus the report files the tests in the
    /// container would write into the workspace (written before the run:
    /// the stage reads them only after it).
    struct Fake {
        workspace: PathBuf,
        /// (source under shared/data, destination in the workspace)
        writes: Vec<(String, String)>,
        result: Result<RunResult, CapError>,
        docker: FakeDocker,
    }

    impl Fake {
        fn new(name: &str, exit_code: i64, writes: &[(&str, &str)]) -> Fake {
            let workspace =
                std::env::temp_dir().join(format!("test-runner-lib-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&workspace);
            fs::create_dir_all(&workspace).unwrap();
            Fake {
                workspace,
                writes: writes
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                result: Ok(RunResult {
                    exit_code,
                    output: String::new(),
                    timed_out: false,
                }),
                docker: FakeDocker::default(),
            }
        }

        fn stage(&mut self, config: &str) -> Result<Report, StageError> {
            // With the keys `describe()` declares, as the export glue does.
            let ctx = Context::for_test("test", config).with_keys(TestRunner::describe().config);
            for (src, dst) in &self.writes {
                let to = self.workspace.join(dst);
                fs::create_dir_all(to.parent().unwrap()).unwrap();
                fs::copy(data(src), &to).unwrap();
            }
            self.docker.run.reply(self.result.clone());
            execute(&ctx, &mut self.docker, &self.workspace)
        }

        /// The requests the stage ran.
        fn seen(&self) -> Vec<&RunRequest> {
            self.docker
                .calls
                .iter()
                .map(|c| match c {
                    DockerCall::Run(req) => req,
                    other => panic!("not a run: {other:?}"),
                })
                .collect()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.workspace);
        }
    }

    fn out<'a>(r: &'a Report, key: &str) -> &'a str {
        r.get_output(key)
            .unwrap_or_else(|| panic!("no output {key}: {:?}", r.outputs))
    }

    const GRADLE: &str = "junit/gradle_TEST-CalculatorTest.xml";
    const COBERTURA: &str = "coverage/cobertura_coveragepy_x_xml.xml";
    const LCOV: &str = "coverage/lcov_jest-istanbul_windows-paths.info";

    #[test]
    fn passing_run_with_coverage() {
        let mut fake = Fake::new(
            "pass",
            0,
            &[
                (GRADLE, "build/test-results/TEST-Calc.xml"),
                (COBERTURA, "coverage.xml"),
            ],
        );
        let r = fake
            .stage(
                r#"{"image":"gradle:8","command":["gradle","test"],"env":{"CI":"true","A":"1"},
                    "junit":"build/test-results/*.xml","coverage":"coverage.xml",
                    "min-coverage":60,"timeout":"5m"}"#,
            )
            .unwrap();
        assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
        assert_eq!(
            r.summary,
            "24 tests: 24 passed, 0 failed, 0 errors, 0 skipped; coverage 66.7%"
        );
        assert_eq!(out(&r, "tests"), "24");
        assert_eq!(out(&r, "passed"), "24");
        assert_eq!(out(&r, "failed"), "0");
        assert_eq!(out(&r, "errors"), "0");
        assert_eq!(out(&r, "skipped"), "0");
        assert_eq!(out(&r, "coverage"), "66.7");
        assert_eq!(out(&r, "exit-code"), "0");
        assert_eq!(out(&r, "reports"), "build/test-results/TEST-Calc.xml");
        assert_eq!(out(&r, "coverage-reports"), "coverage.xml");
        assert!(r.annotations.is_empty());

        let seen = fake.seen();
        let req = seen[0];
        assert_eq!(req.image, "gradle:8");
        assert_eq!(req.command, vec!["gradle", "test"]);
        assert_eq!(
            req.env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("CI".into(), "true".into())
            ]
        );
        assert_eq!(req.workdir.as_deref(), Some("/workspace"));
        assert!(matches!(req.workspace, MountMode::ReadWrite));
        assert_eq!(req.timeout_ms, Some(300_000));
        let p = &req.privileges;
        assert!(!p.privileged && p.network.is_none());
        assert!(p.cap_add.is_empty() && p.devices.is_empty() && p.mounts.is_empty());
    }

    #[test]
    fn failing_tests_are_annotated() {
        let mut fake = Fake::new(
            "fail",
            1,
            &[
                ("junit/pytest_fail.xml", "reports/a-pytest.xml"),
                ("junit/jest-junit_failures.xml", "reports/b-jest.xml"),
                (
                    "junit/go-junit-report_014_panic-errors.xml",
                    "reports/c-go.xml",
                ),
                (LCOV, "coverage/lcov.info"),
            ],
        );
        let r = fake
            .stage(r#"{"image":"node:22","command":["npm","test"],"junit":["reports/*.xml"],"coverage":"coverage/*.info"}"#)
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        // pytest 5 (1 failed, 1 skipped) + jest 6 (4 failed, 1 skipped) + go 2 errors.
        assert_eq!(
            r.summary,
            "13 tests: 4 passed, 5 failed, 2 errors, 2 skipped; coverage 78.6%"
        );
        assert_eq!(out(&r, "exit-code"), "1");
        assert_eq!(
            out(&r, "reports"),
            "reports/a-pytest.xml,reports/b-jest.xml,reports/c-go.xml"
        );
        assert_eq!(r.annotations.len(), 7);
        let a = &r.annotations[0];
        assert_eq!(a.level, Level::Error);
        assert_eq!(a.title, "test.test_spark.SparkTests::test_rsh_events");
        assert!(
            a.message.ends_with("E   AssertionError: 143 != 0"),
            "{}",
            a.message
        );
        assert_eq!(a.file.as_deref(), Some("test/test_spark.py"));
        assert_eq!(a.line, Some(819));
        assert_eq!(r.annotations[1].title, "Test 1 › Test 1.1::Failing test");
        assert!(r.annotations[1]
            .message
            .starts_with("Error: expect(received).toBeTruthy()"));
        assert_eq!(r.annotations[1].file, None);
        assert!(r.annotations.iter().all(|a| a.message.len() <= MAX_MESSAGE));
        assert_eq!(r.annotations[6].title, "package/panic2::Failure");
        assert_eq!(
            r.annotations[6].message,
            "Runtime error\n\npanic: init\nstacktrace"
        );
    }

    #[test]
    fn failure_list_is_bounded() {
        let mut fake = Fake::new(
            "bounded",
            1,
            &[("junit/jest-junit_failures.xml", "junit.xml")],
        );
        let r = fake
            .stage(r#"{"image":"node","command":["jest"],"junit":"junit.xml","max-failures-listed":1}"#)
            .unwrap();
        assert_eq!(r.annotations.len(), 2);
        assert_eq!(r.annotations[1].level, Level::Warn);
        assert_eq!(r.annotations[1].title, "3 more failing tests not listed");
    }

    #[test]
    fn nonzero_exit_fails_even_when_all_tests_pass() {
        let mut fake = Fake::new("exit", 2, &[(GRADLE, "r/junit.xml")]);
        let r = fake
            .stage(r#"{"image":"x","command":["t"],"junit":"r/*.xml"}"#)
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(
            r.summary,
            "24 tests: 24 passed, 0 failed, 0 errors, 0 skipped — \
             the test command exited with code 2 although no test failed"
        );
        assert_eq!(out(&r, "exit-code"), "2");
    }

    #[test]
    fn timeout_fails() {
        let mut fake = Fake::new("timeout", 137, &[(GRADLE, "r/junit.xml")]);
        fake.result = Ok(RunResult {
            exit_code: 137,
            output: String::new(),
            timed_out: true,
        });
        let r = fake
            .stage(r#"{"image":"x","command":["t"],"junit":"r/*.xml","timeout":"90s"}"#)
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert!(
            r.summary
                .ends_with(" — the test command timed out after 90s"),
            "{}",
            r.summary
        );
        assert_eq!(fake.seen()[0].timeout_ms, Some(90_000));
    }

    #[test]
    fn missing_reports() {
        let mut fake = Fake::new("missing", 0, &[]);
        let r = fake
            .stage(r#"{"image":"x","command":["t"],"junit":"reports/*.xml"}"#)
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(
            r.summary,
            "no test report — no JUnit report matches reports/*.xml"
        );
        assert_eq!(out(&r, "tests"), "0");

        let r = fake
            .stage(
                r#"{"image":"x","command":["t"],"junit":"reports/*.xml","require-reports":false}"#,
            )
            .unwrap();
        assert_eq!(r.status, ReportStatus::Warning);
        assert_eq!(
            r.summary,
            "no test report — no JUnit report matches reports/*.xml"
        );
    }

    #[test]
    fn corrupt_report_fails_with_file_and_position() {
        let mut fake = Fake::new(
            "corrupt",
            0,
            &[
                ("junit/pytest_corrupt-truncated.xml", "reports/bad.xml"),
                (
                    "junit/nested_testsuite-in-testsuite.xml",
                    "reports/good.xml",
                ),
            ],
        );
        let r = fake
            .stage(r#"{"image":"x","command":["t"],"junit":"reports/*.xml"}"#)
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(
            r.summary,
            "5 tests: 5 passed, 0 failed, 0 errors, 0 skipped — reports/bad.xml: line 11, \
             column 22: the file ends early (truncated?): <skipped> opened at line 9 is not closed"
        );
        assert_eq!(out(&r, "reports"), "reports/good.xml");
        assert_eq!(r.annotations.len(), 1);
        assert_eq!(r.annotations[0].file.as_deref(), Some("reports/bad.xml"));
        assert_eq!(r.annotations[0].line, Some(11));
    }

    /// The issue's case: coverage.py's report cut inside `<classes>`. Its
    /// root's attributes are complete (66.7%, above min-coverage), the
    /// document is not: the stage fails, naming the file and position.
    #[test]
    fn truncated_coverage_report_fails_the_stage() {
        let corpus = |rel: &str| {
            let p = format!(
                "{}/../../tests/fuzz/corpus/{rel}",
                env!("CARGO_MANIFEST_DIR")
            );
            fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
        };
        let cobertura = corpus("cobertura/cobertura_coveragepy_x_xml.xml");
        let lcov = corpus("lcov/lcov_jest-istanbul_windows-paths.info");
        for (file, cut, error) in [
            (
                "coverage.xml",
                &cobertura[..cobertura.find("<lines>").unwrap() + 10],
                "coverage.xml: line 14, column 3: the file ends early (truncated?): \
                 <lines> opened at line 13 is not closed",
            ),
            (
                "lcov.info",
                &lcov[..lcov.rfind("LF:").unwrap()],
                "lcov.info: line 78: the file ends early (truncated?): \
                 the record opened at line 63 has no end_of_record",
            ),
        ] {
            let mut fake = Fake::new("cutcov", 0, &[(GRADLE, "r/junit.xml")]);
            fs::write(fake.workspace.join(file), cut).unwrap();
            let config = format!(
                r#"{{"image":"x","command":["t"],"junit":"r/*.xml","coverage":"{file}","min-coverage":60}}"#
            );
            let r = fake.stage(&config).unwrap();
            assert_eq!(r.status, ReportStatus::Failed, "{file}");
            assert_eq!(
                r.summary,
                format!("24 tests: 24 passed, 0 failed, 0 errors, 0 skipped — {error}")
            );
            assert_eq!(r.annotations.len(), 1);
            assert_eq!(r.annotations[0].title, "invalid coverage report");
            assert_eq!(r.annotations[0].file.as_deref(), Some(file));
        }
    }

    #[test]
    fn coverage_below_minimum_fails() {
        let mut fake = Fake::new("lowcov", 0, &[(GRADLE, "r/junit.xml"), (LCOV, "lcov.info")]);
        let r = fake
            .stage(r#"{"image":"x","command":["t"],"junit":"r/*.xml","coverage":"lcov.info","min-coverage":80}"#)
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(
            r.summary,
            "24 tests: 24 passed, 0 failed, 0 errors, 0 skipped; coverage 78.6% — \
             line coverage 78.6% is below min-coverage 80%"
        );
        assert_eq!(out(&r, "coverage"), "78.6");

        let r = fake
            .stage(r#"{"image":"x","command":["t"],"junit":"r/*.xml","coverage":"nope.info","min-coverage":80}"#)
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert!(
            r.summary.ends_with("no coverage report matches nope.info"),
            "{}",
            r.summary
        );
        assert_eq!(r.get_output("coverage"), None);
    }

    #[test]
    fn capability_error_fails_the_stage() {
        let mut fake = Fake::new("denied", 0, &[]);
        fake.result = Err(CapError::Denied(Denial {
            stage: "test".into(),
            capability: "docker.run".into(),
            target: "x".into(),
        }));
        let r = fake
            .stage(r#"{"image":"x","command":["t"],"junit":"r/*.xml"}"#)
            .unwrap();
        assert_eq!(r.status, ReportStatus::Failed);
        assert_eq!(
            r.summary,
            "could not run the tests in x: denied: stage \"test\" has no \"docker.run\" grant for \"x\""
        );
        fake.result = Err(CapError::Failed("engine unreachable".into()));
        let r = fake
            .stage(r#"{"image":"x","command":["t"],"junit":"r/*.xml"}"#)
            .unwrap();
        assert_eq!(
            r.summary,
            "could not run the tests in x: failed: engine unreachable"
        );
    }

    fn config_err(json: &str) -> String {
        let mut fake = Fake::new("config", 0, &[]);
        match fake.stage(json) {
            Err(StageError::Config(m)) => {
                assert!(fake.seen().is_empty(), "ran despite a config error");
                m
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(config_err("{}"), "with.image: required key is missing");
        assert_eq!(
            config_err(r#"{"image":"x","command":["t"]}"#),
            "with.junit: required key is missing"
        );
        assert!(
            config_err(r#"{"image":"x","command":[],"junit":"a"}"#).starts_with("with.command:")
        );
        assert!(
            config_err(r#"{"image":"x","command":"make test","junit":"a"}"#)
                .starts_with("with.command: invalid type")
        );
        let m = config_err(r#"{"image":"x","command":["t"],"junit":3}"#);
        assert!(
            m.starts_with("with.junit: ") && m.contains("a glob (string) or a list of globs"),
            "{m}"
        );
        assert!(
            config_err(r#"{"image":"x","command":["t"],"junit":"../x.xml"}"#)
                .starts_with("with.junit: ")
        );
        assert!(
            config_err(r#"{"image":"x","command":["t"],"junit":"a","coverage":["[x"]}"#)
                .starts_with("with.coverage: ")
        );
        assert!(config_err(
            r#"{"image":"x","command":["t"],"junit":"a","coverage":"c","min-coverage":150}"#
        )
        .starts_with("with.min-coverage: 150"));
        assert!(
            config_err(r#"{"image":"x","command":["t"],"junit":"a","min-coverage":50}"#)
                .starts_with("with.min-coverage: needs")
        );
        assert!(
            config_err(r#"{"image":"x","command":["t"],"junit":"a","timeout":"5 minutes"}"#)
                .starts_with("with.timeout: ")
        );
        assert!(
            config_err(r#"{"image":"x","command":["t"],"junit":"a","env":{"N":1}}"#)
                .starts_with("with.env.N: invalid type")
        );
        assert!(
            config_err(r#"{"image":"x","command":["t"],"junit":"a","junit-dir":"b"}"#)
                .starts_with("with.junit-dir: unknown field")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration(" 2h "), Ok(7_200_000));
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "0s",
            "-1s",
            "1.5h",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn describe_lists_every_key() {
        let info = TestRunner::describe();
        assert_eq!(info.name, "test-runner");
        let keys: Vec<(&str, bool)> = info
            .config
            .iter()
            .map(|k| (k.name.as_str(), k.required))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("image", true),
                ("command", true),
                ("workdir", false),
                ("env", false),
                ("junit", true),
                ("coverage", false),
                ("min-coverage", false),
                ("require-reports", false),
                ("timeout", false),
                ("max-failures-listed", false),
            ]
        );
        assert_eq!(info.capabilities, vec!["docker.run", "workspace"]);
        // Every default is valid JSON.
        for k in &info.config {
            if let Some(d) = &k.default_value {
                serde_json::from_str::<serde_json::Value>(d).unwrap();
            }
        }
    }
}
