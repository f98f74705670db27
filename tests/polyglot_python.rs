//! A stage written in Python (componentize-py), run by the host:
//! `plugins/coverage-gate` on real coverage reports (coverage.py's from
//! ../shared/data and plugins/coverage-gate/tests, a jest/Istanbul lcov
//! file), and the `host/templates/python` template built and run as a
//! plugin.
//!
//! A Python component is ~19 MB and takes seconds to compile, so the gate's
//! cases share one pipeline (one load) where they can.
use std::path::PathBuf;
use std::process::Command;

use host::run::{RunRecord, Status};
use pipeline_tests::harness::Harness;
use pipeline_tests::plugins::{plugin, root};

/// A real report in `../shared/data/coverage` (shared/ sits beside the
/// checkout, in CI as in development).
fn shared_coverage(name: &str) -> PathBuf {
    let p = root().join("../shared/data/coverage").join(name);
    assert!(
        p.exists(),
        "{} is missing: the tests expect shared/ beside the checkout",
        p.display()
    );
    p
}

/// Reports written by coverage.py 7.17.4 (`coverage run --branch`, then
/// `coverage xml` and `coverage lcov`) for a small project.
fn fixture(name: &str) -> PathBuf {
    root().join("plugins/coverage-gate/tests").join(name)
}

fn gate_pipeline(stages: &[(&str, &str, &str)]) -> String {
    let mut p = String::from(
        "[pipeline]\nname = \"coverage\"\n[plugins]\ncoverage-gate = \"{plugin:coverage-gate}\"\n",
    );
    for (name, with, grants) in stages {
        p.push_str(&format!(
            "[[stage]]\nname = \"{name}\"\nplugin = \"coverage-gate\"\nwith = {{ {with} }}\ngrants = {{ {grants} }}\n"
        ));
    }
    p
}

const RO: &str = r#"workspace = "ro""#;

/// Summary and error of a stage, for messages and `contains` checks.
fn said(run: &RunRecord, stage: &str) -> String {
    let s = run.stage(stage).unwrap();
    format!("{} | {}", s.summary, s.error.as_deref().unwrap_or(""))
}

fn outputs(run: &RunRecord, stage: &str) -> Vec<(String, String)> {
    let s = run.stage(stage).unwrap();
    s.outputs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_gate_on_real_reports() {
    let h = Harness::new().unwrap();
    let ws = &h.workspace;
    std::fs::copy(fixture("coverage.xml"), ws.join("coverage.xml")).unwrap();
    std::fs::copy(fixture("lcov.info"), ws.join("lcov.info")).unwrap();
    std::fs::create_dir_all(ws.join("reports")).unwrap();
    std::fs::copy(
        shared_coverage("cobertura_coveragepy_x_xml.xml"),
        ws.join("reports/x.xml"),
    )
    .unwrap();
    std::fs::copy(
        shared_coverage("lcov_jest-istanbul_windows-paths.info"),
        ws.join("reports/jest.info"),
    )
    .unwrap();
    // Cut short, as a report is when the test run is killed mid-write.
    let full = std::fs::read_to_string(fixture("coverage.xml")).unwrap();
    std::fs::write(ws.join("truncated.xml"), &full[..full.len() / 2]).unwrap();
    // An entity-expansion bomb must be refused before anything expands.
    std::fs::write(
        ws.join("bomb.xml"),
        r#"<?xml version="1.0"?>
<!DOCTYPE coverage [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
]>
<coverage line-rate="1" lines-valid="1" lines-covered="1"><sources><source>&c;</source></sources></coverage>
"#,
    )
    .unwrap();
    std::fs::write(
        ws.join("empty.xml"),
        r#"<?xml version="1.0" ?>
<coverage version="7.17.4" timestamp="1" lines-valid="0" lines-covered="0" line-rate="1" branches-covered="0" branches-valid="0" branch-rate="0" complexity="0">
	<sources><source>/src</source></sources>
	<packages/>
</coverage>
"#,
    )
    .unwrap();
    // Cobertura's own shape (cobertura-maven-plugin, jacoco-to-cobertura):
    // a SYSTEM DOCTYPE (accepted: no entities, never fetched) and no totals
    // on the root, so the gate counts the class <line> elements (method
    // <line>s repeat them and are not counted).
    std::fs::write(
        ws.join("cobertura-java.xml"),
        r#"<?xml version="1.0"?>
<!DOCTYPE coverage SYSTEM "http://cobertura.sourceforge.net/xml/coverage-04.dtd">
<coverage line-rate="0.75" branch-rate="0.5" version="1.9.4.1" timestamp="1700000000000">
  <sources><source>src/main/java</source></sources>
  <packages>
    <package name="com.example" line-rate="0.75" branch-rate="0.5" complexity="1.5">
      <classes>
        <class name="com.example.Cart" filename="com/example/Cart.java" line-rate="0.75" branch-rate="0.5" complexity="1.5">
          <methods>
            <method name="total" signature="()D" line-rate="0.75" branch-rate="0.5">
              <lines>
                <line number="10" hits="3" branch="false"/>
                <line number="11" hits="3" branch="true" condition-coverage="50% (1/2)"/>
              </lines>
            </method>
          </methods>
          <lines>
            <line number="10" hits="3" branch="false"/>
            <line number="11" hits="3" branch="true" condition-coverage="50% (1/2)"/>
            <line number="12" hits="0" branch="false"/>
            <line number="14" hits="3" branch="false"/>
          </lines>
        </class>
      </classes>
    </package>
  </packages>
</coverage>
"#,
    )
    .unwrap();

    let run = h
        .run(&gate_pipeline(&[
            // 27/32 lines, 13/18 branches, default threshold (80%).
            ("above", "", RO),
            ("branch-gate", r#"min-branch = 75"#, RO),
            ("below", r#"min-line = 90.0"#, RO),
            (
                "shared-cobertura",
                r#"report = "reports/x.xml", min-line = 60"#,
                RO,
            ),
            ("shared-cobertura-below", r#"report = "reports/x.xml""#, RO),
            ("lcov", r#"report = "lcov.info", format = "lcov""#, RO),
            (
                "jest-lcov",
                r#"report = "reports/jest.info", min-line = 75"#,
                RO,
            ),
            (
                "java",
                r#"report = "cobertura-java.xml", min-line = 70, min-branch = 50"#,
                RO,
            ),
            ("truncated", r#"report = "truncated.xml""#, RO),
            ("bomb", r#"report = "bomb.xml""#, RO),
            ("empty", r#"report = "empty.xml""#, RO),
            ("missing", r#"report = "nope/coverage.xml""#, RO),
            (
                "wrong-format",
                r#"report = "coverage.xml", format = "lcov""#,
                RO,
            ),
            ("bad-threshold", r#"min-line = 150"#, RO),
            ("bad-type", r#"min-branch = "high""#, RO),
            ("escape", r#"report = "../secret.xml""#, RO),
        ]))
        .await;
    let status = |s: &str| run.stage(s).unwrap().status;

    assert_eq!(status("above"), Status::Success, "{}", said(&run, "above"));
    assert_eq!(
        outputs(&run, "above"),
        pairs(&[
            ("line-rate", "84.4"),
            ("branch-rate", "72.2"),
            ("lines-covered", "27"),
            ("lines-valid", "32"),
        ])
    );
    let above = said(&run, "above");
    assert!(
        above.contains("line coverage 84.4% (27/32 lines) meets the 80% threshold"),
        "{above}"
    );
    // The stage logs the figures it read.
    let log = &run.stage("above").unwrap().log;
    assert!(
        log.iter()
            .any(|l| l.text.contains("coverage.xml: cobertura")),
        "{log:?}"
    );

    assert_eq!(status("branch-gate"), Status::Failure);
    let s = said(&run, "branch-gate");
    assert!(
        s.contains("branch coverage 72.2% is below the 75% threshold"),
        "{s}"
    );

    assert_eq!(status("below"), Status::Failure);
    let s = said(&run, "below");
    assert!(
        s.contains("line coverage 84.4% is below the 90% threshold"),
        "{s}"
    );
    let below = run.stage("below").unwrap();
    assert_eq!(below.outputs["line-rate"], "84.4");
    assert_eq!(below.annotations.len(), 1);
    assert_eq!(below.annotations[0].level, "error");
    assert_eq!(below.annotations[0].file.as_deref(), Some("coverage.xml"));

    // coverage.py's own test report: 2 of 3 lines, no branch data.
    assert_eq!(status("shared-cobertura"), Status::Success);
    assert_eq!(
        outputs(&run, "shared-cobertura"),
        pairs(&[
            ("line-rate", "66.7"),
            ("lines-covered", "2"),
            ("lines-valid", "3"),
        ])
    );
    assert_eq!(status("shared-cobertura-below"), Status::Failure);
    let s = said(&run, "shared-cobertura-below");
    assert!(
        s.contains("line coverage 66.7% is below the 80% threshold"),
        "{s}"
    );

    // The same run as lcov gives the same figures.
    assert_eq!(status("lcov"), Status::Success, "{}", said(&run, "lcov"));
    assert_eq!(outputs(&run, "lcov"), outputs(&run, "above"));
    // jest/Istanbul: LF 10+9+9, LH 10+9+3; BRF 2, BRH 0.
    assert_eq!(
        status("jest-lcov"),
        Status::Success,
        "{}",
        said(&run, "jest-lcov")
    );
    assert_eq!(
        outputs(&run, "jest-lcov"),
        pairs(&[
            ("line-rate", "78.6"),
            ("branch-rate", "0.0"),
            ("lines-covered", "22"),
            ("lines-valid", "28"),
        ])
    );

    assert_eq!(status("java"), Status::Success, "{}", said(&run, "java"));
    assert_eq!(
        outputs(&run, "java"),
        pairs(&[
            ("line-rate", "75.0"),
            ("branch-rate", "50.0"),
            ("lines-covered", "3"),
            ("lines-valid", "4"),
        ])
    );

    // Bad reports fail the stage, naming the file and what is wrong.
    for (stage, expected) in [
        ("truncated", "truncated.xml: line "),
        ("truncated", "not valid XML"),
        (
            "bomb",
            "bomb.xml: refused: the DOCTYPE has an internal subset",
        ),
        ("empty", "empty.xml: the report counts no line"),
        (
            "missing",
            "nope/coverage.xml: no such file in the workspace",
        ),
        ("wrong-format", "coverage.xml: not an lcov tracefile"),
    ] {
        assert_eq!(status(stage), Status::Failure, "{stage}");
        let s = said(&run, stage);
        assert!(s.contains(expected), "{stage}: {s}");
        assert!(run.stage(stage).unwrap().outputs.is_empty(), "{stage}");
    }
    let bomb = run.stage("bomb").unwrap();
    assert_eq!(bomb.annotations[0].title, "invalid coverage report");
    assert_eq!(bomb.annotations[0].file.as_deref(), Some("bomb.xml"));

    // Configuration errors name the `with` key.
    for (stage, expected) in [
        (
            "bad-threshold",
            "with.min-line: 150 is not a percentage (0 to 100)",
        ),
        (
            "bad-type",
            "with.min-branch: expected a number, got a string",
        ),
        (
            "escape",
            r#"with.report: "../secret.xml": `..` leaves the workspace"#,
        ),
    ] {
        assert_eq!(status(stage), Status::Failure, "{stage}");
        let s = said(&run, stage);
        assert!(s.contains(expected), "{stage}: {s}");
    }

    check_describe(&h).await;
}

/// `describe()` declares the with-keys like the Rust plugins do, so the
/// host's checks refuse an unknown key before anything runs. Loads the
/// component from the harness's compiled cache (no second compile).
async fn check_describe(h: &Harness) {
    let runtime = host::runtime::Runtime::new(h.state_dir().join("cache")).unwrap();
    let gate = runtime.load(&plugin("coverage-gate")).unwrap();
    let info = runtime.describe(&gate).await.unwrap();
    assert_eq!(info.name, "coverage-gate");
    assert_eq!(info.capabilities, ["workspace"]);
    let keys: Vec<(&str, bool, Option<&str>)> = info
        .config
        .iter()
        .map(|k| (k.name.as_str(), k.required, k.default_value.as_deref()))
        .collect();
    assert_eq!(
        keys,
        [
            ("report", false, Some(r#""coverage.xml""#)),
            ("format", false, Some(r#""auto""#)),
            ("min-line", false, Some("80.0")),
            ("min-branch", false, Some("0")),
        ]
    );
    for k in &info.config {
        let v: serde_json::Value = serde_json::from_str(k.default_value.as_deref().unwrap())
            .unwrap_or_else(|e| panic!("default of {} is not JSON: {e}", k.name));
        assert!(!v.is_null(), "{}", k.name);
    }

    // An unknown key is an error of the pipeline file, before any stage runs.
    let path = h.write_pipeline(&gate_pipeline(&[(
        "gate",
        r#"report = "coverage.xml", min_line = 80"#,
        RO,
    )]));
    let pipeline = host::pipeline::load(&path).unwrap();
    let diags = match host::run::preflight::load_plugins(&pipeline, &runtime).await {
        Ok(_) => panic!("an unknown with-key passed the checks"),
        Err(d) => d,
    };
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter().any(|d| d.contains(
            "`with.min_line` is not a setting of plugin `coverage-gate` (expected one of: report, format, min-line, min-branch)"
        )),
        "{text:?}"
    );
}

/// Substitutes the template placeholders in every file of `dir`.
/// What `host plugin new --lang python NAME` creates: built with its own
/// build.sh and run by the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_template_builds_and_runs() {
    let h = Harness::new().unwrap();
    let dir = h.path().join("hello-py");
    pipeline_tests::cli::plugin_new("python", "hello-py", &dir);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["README.md", "app.py", "build.sh", "wit"]);
    let out = Command::new("bash")
        .arg(dir.join("build.sh"))
        .output()
        .expect("running the template's build.sh");
    assert!(
        out.status.success(),
        "build.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = dir.join("hello-py.wasm");
    assert!(wasm.exists(), "build.sh did not write {}", wasm.display());
    // Built in a scratch copy: nothing but the component is added.
    assert!(!dir.join("__pycache__").exists());

    let run = h
        .run(&format!(
            r#"
[pipeline]
name = "hello"
[plugins]
hello-py = "{}"
[[stage]]
name = "hello"
plugin = "hello-py"
with = {{ who = "pipeline" }}
"#,
            wasm.display()
        ))
        .await;
    let stage = run.stage("hello").unwrap();
    assert_eq!(
        stage.status,
        Status::Success,
        "{} {:?}",
        stage.summary,
        stage.error
    );
    assert_eq!(stage.summary, "hello, pipeline");
    assert_eq!(stage.outputs["greeting"], "pipeline");
    assert!(
        stage
            .log
            .iter()
            .any(|l| l.text.contains("greeting pipeline")),
        "{:?}",
        stage.log
    );
}
