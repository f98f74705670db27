//! `execute` over the real Trivy reports in shared/data/trivy.

use super::*;
use stage_sdk::testing::FakeScan;
use stage_sdk::{CapError, Level, ReportStatus};
use std::path::PathBuf;

/// shared/data, used as the workspace: reports are `trivy/<file>`.
fn data_dir() -> PathBuf {
    PathBuf::from(format!(
        "{}/../../../shared/data",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn day(s: &str) -> Date {
    Date::parse(s).unwrap()
}

const TODAY: &str = "2026-06-01";

/// A scanner whose next scan answers `answer`.
fn answering(answer: Result<String, CapError>) -> FakeScan {
    let mut fake = FakeScan::default();
    fake.image.reply(answer);
    fake
}

/// A context with the keys `describe()` declares, as the export glue does.
fn test_ctx(stage: &str, config: &str) -> Context {
    Context::for_test(stage, config).with_keys(<crate::TrivyGate as Stage>::describe().config)
}

fn run_in(ws: &Path, config: &str, today: &str) -> Result<Report, StageError> {
    let ctx = test_ctx("gate", config);
    let mut scanner = FakeScan::default();
    let r = execute(&ctx, &mut scanner, ws, day(today));
    assert!(
        scanner.calls.is_empty(),
        "the scanner must not be called for a `report`"
    );
    r
}

fn run(config: &str) -> Report {
    run_at(config, TODAY)
}

fn run_at(config: &str, today: &str) -> Report {
    run_in(&data_dir(), config, today).unwrap_or_else(|e| panic!("{}", e.message()))
}

fn config_err(config: &str) -> String {
    match run_in(&data_dir(), config, TODAY) {
        Ok(r) => panic!("expected a config error, got {r:?}"),
        Err(StageError::Config(m)) => m,
        Err(e) => panic!("not a config error: {e:?}"),
    }
}

fn out<'a>(r: &'a Report, key: &str) -> &'a str {
    r.get_output(key)
        .unwrap_or_else(|| panic!("no output {key}: {:?}", r.outputs))
}

fn errors(r: &Report) -> Vec<&Annotation> {
    r.annotations
        .iter()
        .filter(|a| a.level == Level::Error)
        .collect()
}

fn warnings(r: &Report) -> Vec<&Annotation> {
    r.annotations
        .iter()
        .filter(|a| a.level == Level::Warn)
        .collect()
}

fn titles(list: &[&Annotation]) -> Vec<String> {
    list.iter().map(|a| a.title.clone()).collect()
}

const ALPINE: &str = r#""report":"trivy/alpine-39.json.golden""#;
const ALPINE_TARGET: &str = "testdata/fixtures/images/alpine-39.tar.gz (alpine 3.9.4)";

/// A temporary workspace, removed on drop.
struct TempWs(PathBuf);

impl TempWs {
    fn new(name: &str) -> TempWs {
        let p = std::env::temp_dir().join(format!("trivy-gate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempWs(p)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

impl Drop for TempWs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(data_dir().join("trivy").join(name)).unwrap()
}

// ---- the reports -------------------------------------------------------

#[test]
fn alpine_39_blocks_on_two_critical() {
    let r = run(&format!("{{{ALPINE}}}"));
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(r.summary, "blocked: 2 CRITICAL (4 MEDIUM below HIGH)");
    let errs = errors(&r);
    assert_eq!(titles(&errs), ["CVE-2019-14697", "CVE-2019-14697"]);
    assert_eq!(
        errs[0].message,
        format!("musl 1.1.20-r4 → 1.1.20-r5 (CRITICAL) in {ALPINE_TARGET}")
    );
    assert_eq!(
        errs[1].message,
        format!("musl-utils 1.1.20-r4 → 1.1.20-r5 (CRITICAL) in {ALPINE_TARGET}")
    );
    // An OS package target is not a workspace file.
    assert_eq!(errs[0].file, None);
    let warns = warnings(&r);
    assert_eq!(
        titles(&warns),
        [
            "CVE-2019-1549",
            "CVE-2019-1551",
            "CVE-2019-1549",
            "CVE-2019-1551"
        ]
    );
    assert_eq!(
        warns[0].message,
        format!("libcrypto1.1 1.1.1b-r1 → 1.1.1d-r0 (MEDIUM) in {ALPINE_TARGET}")
    );
    for (k, v) in [
        ("blocking", "2"),
        ("critical", "2"),
        ("high", "0"),
        ("medium", "4"),
        ("low", "0"),
        ("unknown", "0"),
        ("ignored", "0"),
        ("secrets", "0"),
        ("vulnerabilities", "6"),
        ("threshold", "HIGH"),
    ] {
        assert_eq!(out(&r, k), v, "{k}");
    }
}

#[test]
fn alpine_39_thresholds() {
    let r = run(&format!(r#"{{{ALPINE},"severity":"CRITICAL"}}"#));
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(r.summary, "blocked: 2 CRITICAL (4 MEDIUM below CRITICAL)");

    let r = run(&format!(r#"{{{ALPINE},"severity":"medium"}}"#));
    assert_eq!(r.summary, "blocked: 2 CRITICAL, 4 MEDIUM");
    assert_eq!(out(&r, "blocking"), "6");
    assert!(warnings(&r).is_empty());
    assert_eq!(
        titles(&errors(&r)),
        [
            "CVE-2019-14697",
            "CVE-2019-14697",
            "CVE-2019-1549",
            "CVE-2019-1551",
            "CVE-2019-1549",
            "CVE-2019-1551"
        ]
    );
}

#[test]
fn alpine_39_high_critical() {
    let r = run(r#"{"report":"trivy/alpine-39-high-critical.json.golden"}"#);
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(r.summary, "blocked: 2 CRITICAL");
    assert_eq!(titles(&errors(&r)), ["CVE-2019-14697", "CVE-2019-14697"]);
    assert_eq!(r.annotations.len(), 2);
}

#[test]
fn alpine_39_skip_has_no_results_and_passes() {
    let r = run(r#"{"report":"./trivy/alpine-39-skip.json.golden"}"#);
    assert_eq!(r.status, ReportStatus::Passed);
    assert_eq!(r.summary, "passed: 0 blocking");
    assert_eq!(out(&r, "blocking"), "0");
    assert_eq!(out(&r, "vulnerabilities"), "0");
    assert!(r.annotations.is_empty());
}

#[test]
fn npm_with_dev_one_medium() {
    let cfg = r#"{"report":"trivy/npm-with-dev.json.golden"}"#;
    let r = run(cfg);
    assert_eq!(r.status, ReportStatus::Warning);
    assert_eq!(r.summary, "passed: 0 blocking (1 MEDIUM below HIGH)");
    assert_eq!(out(&r, "medium"), "1");
    let w = warnings(&r);
    assert_eq!(titles(&w), ["CVE-2019-11358"]);
    assert_eq!(
        w[0].message,
        "jquery 3.3.9 → 3.4.0 (MEDIUM) in package-lock.json"
    );
    // A lock file from a workspace report is a workspace file.
    assert_eq!(w[0].file.as_deref(), Some("package-lock.json"));

    let r = run(r#"{"report":"trivy/npm-with-dev.json.golden","severity":"MEDIUM"}"#);
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(r.summary, "blocked: 1 MEDIUM");
}

#[test]
fn dockerfile_misconfig_blocks() {
    let cfg = r#""report":"trivy/dockerfile.json.golden""#;
    let r = run(&format!("{{{cfg}}}"));
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(r.summary, "blocked: 1 HIGH");
    let e = errors(&r);
    assert_eq!(titles(&e), ["DS-0002"]);
    assert_eq!(
        e[0].message,
        "DS-0002: Image user should not be 'root' (HIGH) in Dockerfile"
    );
    assert_eq!(e[0].file.as_deref(), Some("Dockerfile"));
    assert_eq!(out(&r, "misconfigurations"), "1");

    // Not gated: only a warning.
    let r = run(&format!(r#"{{{cfg},"gate-misconfig":false}}"#));
    assert_eq!(r.status, ReportStatus::Warning);
    assert_eq!(
        r.summary,
        "passed: 0 blocking (1 misconfiguration not gated)"
    );

    // Ignored by its AVD ID, as in a .trivyignore.
    let r = run(&format!(
        r#"{{{cfg},"ignore":[{{"id":"AVD-DS-0002","reason":"the image needs root"}}]}}"#
    ));
    assert_eq!(r.status, ReportStatus::Passed);
    assert_eq!(r.summary, "passed: 0 blocking (1 ignored)");
    assert_eq!(out(&r, "ignored"), "1");
}

#[test]
fn secrets_block_without_leaking_the_secret() {
    let raw = golden("secrets.json.golden");
    let r = run(r#"{"report":"trivy/secrets.json.golden"}"#);
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(r.summary, "blocked: 1 CRITICAL, 1 HIGH");
    let e = errors(&r);
    assert_eq!(titles(&e), ["aws-access-key-id", "mysecret"]);
    assert_eq!(
        e[0].message,
        "aws-access-key-id: AWS Access Key ID (CRITICAL) in deploy.sh:3"
    );
    assert_eq!(e[0].file.as_deref(), Some("deploy.sh"));
    assert_eq!(e[0].line, Some(3));
    assert_eq!(e[1].message, "mysecret: My Secret (HIGH) in deploy.sh:7");
    assert_eq!(out(&r, "secrets"), "2");

    // Nothing of the file's Match or Code reaches the report.
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut leaks = Vec::new();
    for s in v["Results"][0]["Secrets"].as_array().unwrap() {
        leaks.push(s["Match"].as_str().unwrap().to_string());
        for l in s["Code"]["Lines"].as_array().unwrap() {
            let c = l["Content"].as_str().unwrap();
            if c.len() > 3 {
                leaks.push(c.to_string());
            }
        }
    }
    assert!(leaks.iter().any(|l| l.contains("ghp_0123456789")));
    let everything = format!("{r:?}");
    for leak in &leaks {
        assert!(!everything.contains(leak.as_str()), "{leak:?} leaked");
    }
    for word in ["AWS_ACCESS_KEY_ID", "****", "ghp_", "GITHUB_PAT"] {
        assert!(!everything.contains(word), "{word} leaked: {everything}");
    }

    // Not gated: warnings only.
    let r = run(r#"{"report":"trivy/secrets.json.golden","gate-secrets":false}"#);
    assert_eq!(r.status, ReportStatus::Warning);
    assert_eq!(r.summary, "passed: 0 blocking (2 secrets not gated)");
}

// ---- ignores -----------------------------------------------------------

const IGNORE_MUSL: &str =
    r#""ignore":[{"id":"CVE-2019-14697","reason":"not reachable","expires":"2026-12-31"}]"#;

#[test]
fn ignore_with_future_expiry_unblocks() {
    let r = run_at(&format!("{{{ALPINE},{IGNORE_MUSL}}}"), "2026-12-30");
    assert_eq!(r.status, ReportStatus::Warning);
    assert_eq!(
        r.summary,
        "passed: 0 blocking (4 MEDIUM below HIGH; 2 ignored)"
    );
    assert_eq!(out(&r, "ignored"), "2");
    assert_eq!(out(&r, "critical"), "0");
    assert!(errors(&r).is_empty());
}

#[test]
fn ignore_with_past_expiry_blocks_again() {
    for today in ["2026-12-31", "2027-03-01"] {
        let r = run_at(&format!("{{{ALPINE},{IGNORE_MUSL}}}"), today);
        assert_eq!(r.status, ReportStatus::Failed, "{today}");
        assert_eq!(
            r.summary,
            "blocked: 2 CRITICAL (4 MEDIUM below HIGH; 1 expired ignore entry)"
        );
        assert_eq!(out(&r, "ignored"), "0");
        let expired: Vec<_> = r
            .annotations
            .iter()
            .filter(|a| a.message.contains("expired on"))
            .collect();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].level, Level::Warn);
        assert!(
            expired[0]
                .message
                .starts_with("ignore entry for CVE-2019-14697 expired on 2026-12-31"),
            "{}",
            expired[0].message
        );
    }
}

#[test]
fn ignore_without_expiry_and_toml_datetime() {
    let r = run(&format!(
        r#"{{{ALPINE},"ignore":[{{"id":"cve-2019-14697","reason":"accepted"}}]}}"#
    ));
    assert_eq!(r.status, ReportStatus::Warning);
    // The host turns a TOML date into its text.
    let r = run(&format!(
        r#"{{{ALPINE},"ignore":[{{"id":"CVE-2019-14697","reason":"r","expires":"2030-01-01T00:00:00Z"}}]}}"#
    ));
    assert_eq!(r.status, ReportStatus::Warning);
}

#[test]
fn ignore_unfixed() {
    // alpine-39 with the musl fix removed: absent FixedVersion, and an
    // empty one with Status "affected".
    let mut v: serde_json::Value = serde_json::from_str(&golden("alpine-39.json.golden")).unwrap();
    let vulns = v["Results"][0]["Vulnerabilities"].as_array_mut().unwrap();
    for x in vulns.iter_mut() {
        if x["PkgName"] == "musl" {
            x.as_object_mut().unwrap().remove("FixedVersion");
            x.as_object_mut().unwrap().remove("Status");
        }
        if x["PkgName"] == "musl-utils" {
            x["FixedVersion"] = "".into();
            x["Status"] = "affected".into();
        }
    }
    let ws = TempWs::new("unfixed");
    ws.write("reports/trivy.json", &v.to_string());

    let r = run_in(&ws.0, r#"{"report":"reports/trivy.json"}"#, TODAY).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    let e = errors(&r);
    assert_eq!(
        e[0].message,
        format!("musl 1.1.20-r4 → no fix (CRITICAL) in {ALPINE_TARGET}")
    );
    assert_eq!(
        e[1].message,
        format!("musl-utils 1.1.20-r4 → no fix (affected) (CRITICAL) in {ALPINE_TARGET}")
    );

    let r = run_in(
        &ws.0,
        r#"{"report":"reports/trivy.json","ignore-unfixed":true}"#,
        TODAY,
    )
    .unwrap();
    assert_eq!(r.status, ReportStatus::Warning);
    assert_eq!(
        r.summary,
        "passed: 0 blocking (4 MEDIUM below HIGH; 2 ignored, 2 unfixed)"
    );
    assert_eq!(out(&r, "ignored"), "2");
    assert_eq!(out(&r, "ignored-unfixed"), "2");

    // The untouched report has every vulnerability fixed: nothing to ignore.
    let r = run(&format!(r#"{{{ALPINE},"ignore-unfixed":true}}"#));
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(out(&r, "ignored-unfixed"), "0");
}

#[test]
fn trivyignore_files() {
    // Docs example: CVE-2019-14697 exp:2023-01-01.
    let cfg = format!(r#"{{{ALPINE},"ignore-file":"trivy/trivyignore-docs.txt"}}"#);
    let r = run_at(&cfg, "2022-12-31");
    assert_eq!(r.status, ReportStatus::Warning);
    assert_eq!(out(&r, "ignored"), "2");
    let r = run_at(&cfg, TODAY);
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(r.annotations.iter().any(|a| a
        .message
        .starts_with("ignore entry for CVE-2019-14697 expired on 2023-01-01")));

    // AVD-DS-0002 in the file ignores the Dockerfile check.
    let r = run(
        r#"{"report":"trivy/dockerfile.json.golden","ignore-file":"trivy/trivyignore-docs.txt"}"#,
    );
    assert_eq!(r.status, ReportStatus::Warning, "{}", r.summary);
    assert_eq!(out(&r, "ignored"), "1");
    // ... and aws-account-id is not aws-access-key-id.
    let r =
        run(r#"{"report":"trivy/secrets.json.golden","ignore-file":"trivy/trivyignore-docs.txt"}"#);
    assert_eq!(r.status, ReportStatus::Failed);

    // Trivy's own test file parses; it ignores nothing of alpine-39 and has
    // one expired entry (CVE-2019-0004, exp:2020-01-01).
    let r = run(&format!(
        r#"{{{ALPINE},"ignore-file":"trivy/trivyignore.txt"}}"#
    ));
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(
        r.summary,
        "blocked: 2 CRITICAL (4 MEDIUM below HIGH; 1 expired ignore entry)"
    );

    // Both `ignore` and `ignore-file`.
    let r = run_at(
        &format!(r#"{{{ALPINE},{IGNORE_MUSL},"ignore-file":"trivy/trivyignore.txt"}}"#),
        TODAY,
    );
    assert_eq!(r.status, ReportStatus::Warning);
}

#[test]
fn yaml_ignore_files_are_refused() {
    for f in ["trivy/trivyignore.yaml", "trivy/trivyignore-docs.yaml"] {
        let m = config_err(&format!(r#"{{{ALPINE},"ignore-file":"{f}"}}"#));
        assert!(m.contains("YAML ignore files are not supported"), "{m}");
    }
}

#[test]
fn ignore_config_errors() {
    let m = config_err(&format!(r#"{{{ALPINE},"ignore":[{{"id":"CVE-1"}}]}}"#));
    assert!(m.contains("reason: required key is missing"), "{m}");
    let m = config_err(&format!(
        r#"{{{ALPINE},"ignore":[{{"id":"CVE-1","reason":"  "}}]}}"#
    ));
    assert_eq!(m, "with.ignore[0].reason: say why CVE-1 is ignored");
    let m = config_err(&format!(
        r#"{{{ALPINE},"ignore":[{{"id":"CVE-1","reason":"r","expires":"31/12/2026"}}]}}"#
    ));
    assert!(m.starts_with("with.ignore[0].expires: "), "{m}");
    let m = config_err(&format!(
        r#"{{{ALPINE},"ignore":[{{"id":"CVE-1","reason":"r","until":"2026-01-01"}}]}}"#
    ));
    assert!(m.contains("unknown field `until`"), "{m}");
    let m = config_err(&format!(
        r#"{{{ALPINE},"ignore-file":"nope/.trivyignore"}}"#
    ));
    assert!(
        m.starts_with("with.ignore-file: nope/.trivyignore: "),
        "{m}"
    );
    let ws = TempWs::new("badexp");
    ws.write("r.json", &golden("alpine-39.json.golden"));
    ws.write(".trivyignore", "CVE-2019-14697 exp:2023-02-30\n");
    match run_in(
        &ws.0,
        r#"{"report":"r.json","ignore-file":".trivyignore"}"#,
        TODAY,
    ) {
        Err(StageError::Config(m)) => {
            assert!(
                m.starts_with("with.ignore-file: .trivyignore:1: exp:"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
}

// ---- sources and errors ------------------------------------------------

#[test]
fn source_config_errors() {
    assert!(config_err("{}").contains("give `report`"));
    assert!(config_err(r#"{"report":"a.json","image":"alpine:3.9"}"#).contains("not both"));
    let m = config_err(r#"{"report":"/etc/passwd"}"#);
    assert!(
        m.starts_with("with.report:") && m.contains("relative"),
        "{m}"
    );
    let m = config_err(r#"{"report":"/workspace/trivy.json"}"#);
    assert!(m.contains("relative"), "{m}");
    let m = config_err(r#"{"report":"reports/../../x.json"}"#);
    assert!(m.contains("`..`"), "{m}");
    let m = config_err(r#"{"report":"a.json","ignore-file":"../.trivyignore"}"#);
    assert!(m.starts_with("with.ignore-file:"), "{m}");
    let m = config_err(r#"{"report":"a.json","severity":"SEVERE"}"#);
    assert!(m.starts_with("with.severity:"), "{m}");
    let m = config_err(r#"{"report":"a.json","scanners":["vuln"]}"#);
    assert!(m.starts_with("with.scanners:"), "{m}");
    let m = config_err(r#"{"image":"alpine:3.9","scanners":["sbom"]}"#);
    assert!(m.contains("unknown scanner \"sbom\""), "{m}");
    let m = config_err(r#"{"image":"alpine:3.9","scanners":[]}"#);
    assert!(m.starts_with("with.scanners:"), "{m}");
    let m = config_err(r#"{"image":"  "}"#);
    assert!(m.starts_with("with.image:"), "{m}");
    let m = config_err(r#"{"report":"a.json","block":["HIGH"]}"#);
    assert!(m.contains("unknown field `block`"), "{m}");
}

#[test]
fn bad_reports_fail_naming_the_source() {
    let ws = TempWs::new("bad");
    let full = golden("alpine-39.json.golden");
    ws.write("reports/truncated.json", &full[..full.len() / 2]);
    ws.write("reports/html.json", "<html>502 Bad Gateway</html>");
    ws.write("reports/v1.json", r#"{"SchemaVersion":1,"Results":[]}"#);
    ws.write("reports/array.json", "[]");
    ws.write("reports/empty.json", "");
    std::fs::write(ws.0.join("reports/binary.json"), [0xff, 0xfe, 0x00]).unwrap();
    for (file, expect) in [
        ("truncated.json", "truncated"),
        ("html.json", "not valid JSON"),
        ("v1.json", "SchemaVersion 1 is not supported"),
        ("array.json", "not a Trivy JSON report"),
        ("empty.json", "truncated or empty"),
        ("binary.json", "not UTF-8"),
        (
            "missing.json",
            "cannot read the Trivy report reports/missing.json",
        ),
    ] {
        let cfg = format!(r#"{{"report":"reports/{file}"}}"#);
        let r = run_in(&ws.0, &cfg, TODAY).unwrap();
        assert_eq!(r.status, ReportStatus::Failed, "{file}");
        assert!(
            r.summary.contains(&format!("reports/{file}")),
            "{}",
            r.summary
        );
        assert!(r.summary.contains(expect), "{file}: {}", r.summary);
        assert_eq!(r.annotations.len(), 1);
        assert_eq!(r.annotations[0].level, Level::Error);
    }
    let r = run_in(&ws.0, r#"{"report":"reports"}"#, TODAY).unwrap();
    assert!(r.summary.contains("is a directory"), "{}", r.summary);
}

#[test]
fn image_is_scanned_by_the_host() {
    let mut fake = answering(Ok(golden("alpine-39.json.golden")));
    let ctx = test_ctx("gate", r#"{"image":"alpine:3.9"}"#);
    let r = execute(&ctx, &mut fake, Path::new("/nonexistent"), day(TODAY)).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(fake.calls.len(), 1);
    assert_eq!(fake.calls[0].image, "alpine:3.9");
    assert_eq!(fake.calls[0].scanners, ["vuln", "secret"]);

    let ctx = test_ctx(
        "gate",
        r#"{"image":"alpine:3.9","scanners":["vuln","misconfig"],"severity":"CRITICAL"}"#,
    );
    fake.image.reply(Ok(golden("alpine-39.json.golden")));
    execute(&ctx, &mut fake, Path::new("/nonexistent"), day(TODAY)).unwrap();
    assert_eq!(fake.calls[1].scanners, ["vuln", "misconfig"]);

    // Image targets are never workspace files.
    let mut fake = answering(Ok(golden("secrets.json.golden")));
    let ctx = test_ctx("gate", r#"{"image":"app:1"}"#);
    let r = execute(&ctx, &mut fake, Path::new("/nonexistent"), day(TODAY)).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(r.annotations.iter().all(|a| a.file.is_none()));
}

#[test]
fn scan_errors_fail_naming_the_image() {
    let mut fake = answering(Err(CapError::Failed("trivy: no such image".into())));
    let ctx = test_ctx("gate", r#"{"image":"app:1"}"#);
    let r = execute(&ctx, &mut fake, Path::new("/nonexistent"), day(TODAY)).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(
        r.summary,
        "could not scan app:1: failed: trivy: no such image"
    );

    let mut fake = answering(Ok("{\"SchemaVersion\":2,\"Res".into()));
    let r = execute(&ctx, &mut fake, Path::new("/nonexistent"), day(TODAY)).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(
        r.summary
            .starts_with("invalid Trivy report from image app:1: "),
        "{}",
        r.summary
    );
}

#[test]
fn annotations_are_capped() {
    let r = run(&format!(
        r#"{{{ALPINE},"severity":"MEDIUM","max-annotations":2}}"#
    ));
    let e = errors(&r);
    assert_eq!(e.len(), 3);
    assert_eq!(e[2].title, "4 more blocking findings");
    let r = run(&format!(r#"{{{ALPINE},"max-annotations":1}}"#));
    assert_eq!(
        titles(&r.annotations.iter().collect::<Vec<_>>()),
        [
            "CVE-2019-14697",
            "1 more blocking findings",
            "CVE-2019-1549",
            "3 more findings below the threshold"
        ]
    );
}

#[test]
fn describe_lists_every_key() {
    let info = <TrivyGate as Stage>::describe();
    assert_eq!(info.name, "trivy-gate");
    assert_eq!(info.capabilities, ["scan?", "workspace?"]);
    let keys: Vec<&str> = info.config.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        keys,
        [
            "report",
            "image",
            "scanners",
            "severity",
            "ignore-unfixed",
            "ignore",
            "ignore-file",
            "gate-secrets",
            "gate-misconfig",
            "max-annotations"
        ]
    );
    for k in &info.config {
        if let Some(d) = &k.default_value {
            serde_json::from_str::<serde_json::Value>(d)
                .unwrap_or_else(|e| panic!("{}: default {d:?}: {e}", k.name));
        }
    }
    // Every key describe() lists is accepted by the `with` table.
    let all = r#"{"report":"trivy/alpine-39.json.golden","severity":"HIGH","ignore-unfixed":false,
        "ignore":[],"ignore-file":"trivy/trivyignore.txt","gate-secrets":true,"gate-misconfig":true,
        "max-annotations":100}"#;
    run(all);
}

#[test]
fn every_file_in_the_data_dir_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(data_dir().join("trivy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let covered = [
        "alpine-39-high-critical.json.golden",
        "alpine-39-skip.json.golden",
        "alpine-39.json.golden",
        "dockerfile.json.golden",
        "npm-with-dev.json.golden",
        "secrets.json.golden",
        "trivyignore-docs.txt",
        "trivyignore-docs.yaml",
        "trivyignore.txt",
        "trivyignore.yaml",
    ];
    assert_eq!(names, covered);
    // Every JSON report parses without a panic.
    for n in names.iter().filter(|n| n.ends_with(".json.golden")) {
        trivy::parse(&golden(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    }
}
