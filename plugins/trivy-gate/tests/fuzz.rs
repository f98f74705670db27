//! Property tests of what trivy-gate reads from the workspace: the Trivy
//! JSON report, `.trivyignore` files and the dates in them.
//!
//! - Any bytes, and mutations of real Trivy reports
//!   (`tests/fuzz/corpus/trivy`), never panic, hang or use memory out of
//!   proportion; the gate's report over whatever parsed never panics either.
//! - Every truncation of a real report is an error that says so.
//! - Generated reports parse to their findings, and a secret's `Match` and
//!   `Code` never reach the stage report.
//!
//! `FUZZ_CASES` sets the cases per property (`just fuzz` runs many).

#[path = "../../../tests/fuzz/harness.rs"]
mod harness;

use harness::{guarded, Budget, Dict};
use proptest::prelude::*;
use serde_json::{json, Value};
use trivy_gate::date::Date;
use trivy_gate::gate::{self, Policy};
use trivy_gate::ignore::{self, Ignores};
use trivy_gate::trivy::{self, Kind, Severity};

#[global_allocator]
static ALLOC: harness::Counting = harness::Counting;

const REGRESSIONS: &str = "tests/fuzz.proptest-regressions";

const JSON: Dict = Dict {
    tokens: &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        "\\u0000",
        "\\ud800",
        "null",
        "true",
        "[]",
        "{}",
        "\"SchemaVersion\":2",
        "\"SchemaVersion\":",
        "\"Results\":",
        "\"Results\":null",
        "\"Vulnerabilities\":",
        "\"Secrets\":",
        "\"Misconfigurations\":",
        "\"Severity\":",
        "\"StartLine\":",
        "\"CauseMetadata\":",
        "\"VendorIDs\":",
        "\"Status\":\"FAIL\"",
    ],
    nest: &[
        ("[", "]"),
        ("{\"a\":", "}"),
        ("{\"Results\":[{\"Vulnerabilities\":", "}]}"),
    ],
};

const IGNORE: Dict = Dict {
    tokens: &[
        "\n",
        "#",
        " #",
        "exp:",
        "exp:2023-01-01",
        "exp:9999-12-31",
        "exp:2024-02-30",
        "exp:2024-13-01",
        "exp:+100-01-01",
        "exp:2023-01-01T00:00:00Z",
        "CVE-2019-1549",
        "statement:",
        " ",
        "\t",
        "é",
    ],
    nest: &[],
};

fn seeds() -> Vec<Vec<u8>> {
    harness::corpus("trivy")
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

/// `trivy::parse` under the guard, and the gate over what it parsed.
fn parse_checked(text: String) -> Result<trivy::Parsed, String> {
    let len = text.len();
    guarded("trivy::parse", Budget::for_input(len), move || {
        let r = trivy::parse(&text);
        if let Ok(p) = &r {
            for f in &p.findings {
                assert!(!f.id.is_empty());
                assert!(!f.target.is_empty());
                assert!(f.line.is_none_or(|l| l > 0));
                let _ = (f.message(), f.location(), f.is_unfixed());
            }
            for policy in policies() {
                let outcome = gate::evaluate(p.findings.clone(), &policy, &Ignores::default());
                assert_eq!(outcome.findings.len(), p.findings.len());
                let report = gate::report(&outcome, &policy);
                // Each group of annotations is capped (plus one "N more" line).
                assert!(report.annotations.len() <= 3 * (policy.max_annotations + 1));
                let _ = gate::summary(&outcome, &outcome.counts());
            }
        }
        r
    })
}

fn policies() -> Vec<Policy> {
    vec![
        Policy {
            threshold: Severity::High,
            ignore_unfixed: false,
            gate_secrets: true,
            gate_misconfig: true,
            max_annotations: 3,
            targets_are_files: true,
        },
        Policy {
            threshold: Severity::Unknown,
            ignore_unfixed: true,
            gate_secrets: false,
            gate_misconfig: false,
            max_annotations: 0,
            targets_are_files: false,
        },
    ]
}

proptest! {
    #![proptest_config(harness::config(1, REGRESSIONS))]

    #[test]
    fn trivy_any_bytes(bytes in harness::bytes()) {
        let _ = parse_checked(harness::lossy(&bytes));
    }

    #[test]
    fn trivy_mutated_reports(bytes in harness::mutant(seeds(), JSON)) {
        let _ = parse_checked(harness::lossy(&bytes));
    }

    #[test]
    fn trivyignore_any_text(bytes in harness::mutant(
        harness::corpus("trivyignore").into_iter().map(|(_, b)| b).collect(), IGNORE)
    ) {
        let text = harness::lossy(&bytes);
        let len = text.len();
        let r = guarded("parse_trivyignore", Budget::for_input(len), move || {
            ignore::parse_trivyignore(".trivyignore", &text)
        });
        match r {
            Ok(rules) => {
                for rule in &rules {
                    prop_assert!(!rule.id.is_empty() && !rule.id.contains(char::is_whitespace));
                    prop_assert!(rule.origin.starts_with(".trivyignore:"));
                }
                let ignores = Ignores::new(rules, Date::new(2024, 6, 1).unwrap());
                let _ = ignores.stale();
            }
            Err(e) => prop_assert!(e.starts_with(".trivyignore:"), "{}", e),
        }
    }

    #[test]
    fn dates_parse_or_fail(text in prop_oneof![
        "[0-9+ -]{0,12}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}(T.{0,6})?",
        ".{0,14}",
    ]) {
        if let Ok(d) = Date::parse(&text) {
            prop_assert_eq!(Date::new(d.year, d.month, d.day), Some(d));
            prop_assert_eq!(Date::parse(&d.to_string()), Ok(d));
        }
    }

    #[test]
    fn civil_dates_from_days(days in -100_000_000i64..100_000_000) {
        let d = Date::from_unix_days(days);
        prop_assert_eq!(Date::new(d.year, d.month, d.day), Some(d));
        prop_assert!(Date::from_unix_days(days + 1) > d);
    }

    /// A generated report parses to its findings; a secret's text never
    /// reaches the stage report; every cut of it is an error.
    #[test]
    fn generated_reports_parse_to_their_findings(
        (results, secret, cut) in (prop::collection::vec(result(), 0..4), "[A-Za-z0-9]{24}", any::<prop::sample::Index>())
    ) {
        let marker = format!("SECRETVALUE{secret}");
        let report = json!({
            "SchemaVersion": 2,
            "ArtifactName": "app:1",
            "ArtifactType": "container_image",
            "Results": results.iter().map(|r| r.json(&marker)).collect::<Vec<Value>>(),
        });
        let text = serde_json::to_string_pretty(&report).unwrap();
        let parsed = parse_checked(text.clone()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        prop_assert_eq!(parsed.results, results.len());
        let want = |k: Kind| results.iter().map(|r| r.count(k)).sum::<usize>();
        let got = |k: Kind| parsed.findings.iter().filter(|f| f.kind == k).count();
        prop_assert_eq!(got(Kind::Vulnerability), want(Kind::Vulnerability));
        prop_assert_eq!(got(Kind::Secret), want(Kind::Secret));
        prop_assert_eq!(got(Kind::Misconfiguration), want(Kind::Misconfiguration));
        prop_assert_eq!(
            parsed.misconfig_passed,
            results.iter().map(|r| r.misconfigs.iter().filter(|m| !m.1).count()).sum::<usize>()
        );
        for policy in policies() {
            let outcome = gate::evaluate(parsed.findings.clone(), &policy, &Ignores::default());
            let shown = format!("{:?}", gate::report(&outcome, &policy));
            prop_assert!(!shown.contains(&marker), "the secret leaked: {}", shown);
        }
        let mut at = cut.index(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let e = parse_checked(text[..at].to_string()).unwrap_err();
        prop_assert!(e.contains("truncated"), "cut at {}: {}", at, e);
    }
}

#[derive(Clone, Debug)]
struct GenResult {
    target: String,
    /// (id, severity, fixed version)
    vulns: Vec<(String, String, Option<String>)>,
    secrets: Vec<(String, String, i64)>,
    /// (id, failed)
    misconfigs: Vec<(String, bool)>,
}

impl GenResult {
    fn json(&self, marker: &str) -> Value {
        json!({
            "Target": self.target,
            "Class": "os-pkgs",
            "Vulnerabilities": self.vulns.iter().map(|(id, sev, fixed)| json!({
                "VulnerabilityID": id, "PkgName": "p", "InstalledVersion": "1",
                "FixedVersion": fixed, "Severity": sev,
            })).collect::<Vec<_>>(),
            "Secrets": self.secrets.iter().map(|(id, sev, line)| json!({
                "RuleID": id, "Category": "AWS", "Severity": sev, "Title": "a key",
                "StartLine": line, "EndLine": line,
                "Match": format!("key = {marker}"),
                "Code": {"Lines": [{"Number": line, "Content": marker, "IsCause": true}]},
            })).collect::<Vec<_>>(),
            "Misconfigurations": self.misconfigs.iter().map(|(id, failed)| json!({
                "ID": id, "Title": "t", "Severity": "HIGH",
                "Status": if *failed { "FAIL" } else { "PASS" },
                "CauseMetadata": {"StartLine": 3},
            })).collect::<Vec<_>>(),
        })
    }

    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Vulnerability => self.vulns.len(),
            Kind::Secret => self.secrets.len(),
            Kind::Misconfiguration => self.misconfigs.iter().filter(|m| m.1).count(),
        }
    }
}

fn severity() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN", "high"])
            .prop_map(String::from),
        ".{0,8}",
    ]
}

fn result() -> impl Strategy<Value = GenResult> {
    (
        ".{1,20}",
        prop::collection::vec(
            (
                "CVE-[0-9]{4}-[0-9]{1,6}",
                severity(),
                prop::option::of("[0-9.]{1,8}"),
            ),
            0..5,
        ),
        prop::collection::vec(("[a-z-]{1,20}", severity(), any::<i64>()), 0..3),
        prop::collection::vec(("[A-Z]{2,3}-[0-9]{4}", any::<bool>()), 0..3),
    )
        .prop_map(|(target, vulns, secrets, misconfigs)| GenResult {
            target,
            vulns,
            secrets,
            misconfigs,
        })
}

/// Every prefix of the real reports is an error saying it is truncated.
#[test]
fn truncated_reports_fail() {
    for (i, (name, text)) in harness::corpus_text("trivy").into_iter().enumerate() {
        assert!(trivy::parse(&text).is_ok(), "{name}");
        for at in harness::prefixes(text.trim_end(), i < 2) {
            let e = parse_checked(text[..at].to_string())
                .expect_err(&format!("{name} cut at {at} parses"));
            assert!(e.contains("truncated"), "{name} cut at {at}: {e}");
        }
    }
}
