//! Property tests of the report parsers (JUnit, Cobertura, lcov): reports
//! come from the tests a repository runs, so every byte is hostile.
//!
//! - Any bytes, and mutations of the real reports in
//!   `tests/fuzz/corpus/{junit,cobertura,lcov}`, never panic, hang or use
//!   memory out of proportion (each case runs under a time and memory guard).
//! - Every truncation of a real report fails with an error naming the file
//!   (and the line and column for XML).
//! - Generated well-formed reports parse to exactly what was generated.
//!
//! `FUZZ_CASES` sets the cases per property (`just fuzz` runs many).

#[path = "../../../tests/fuzz/harness.rs"]
mod harness;

use harness::{guarded, Budget, Dict};
use proptest::prelude::*;
use test_runner::coverage::{self, Coverage, Format};
use test_runner::junit::{self, Counts, Outcome};

#[global_allocator]
static ALLOC: harness::Counting = harness::Counting;

const REGRESSIONS: &str = "tests/fuzz.proptest-regressions";

const XML: Dict = Dict {
    tokens: &[
        "<",
        ">",
        "/>",
        "</",
        "&",
        "&amp;",
        "&#0;",
        "&#x110000;",
        "&#xFFFFFFFFFF;",
        "&bogus;",
        "<![CDATA[",
        "]]>",
        "<!--",
        "-->",
        "<?xml version=\"1.0\"?>",
        "<!DOCTYPE coverage [<!ENTITY x \"xx\">]>",
        "<!DOCTYPE",
        "\"",
        "'",
        "=",
        " a=\"1\"",
        " a=\"1\" a=\"2\"",
        "<testsuite name=\"s\">",
        "</testsuite>",
        "<testcase name=\"t\">",
        "</testcase>",
        "<failure message=\"m\">",
        "</failure>",
        "<skipped/>",
        "<coverage line-rate=\"0.5\">",
        "</coverage>",
        " line-rate=\"",
        " lines-covered=\"",
        " lines-valid=\"",
        "xmlns:a=\"urn:x\"",
        "<a:b>",
    ],
    nest: &[
        ("<a>", "</a>"),
        ("<testsuite>", "</testsuite>"),
        ("<testcase><failure>", "</failure></testcase>"),
        ("<x a=\"1\">", "</x>"),
        ("<!--", "-->"),
    ],
};

const LCOV: Dict = Dict {
    tokens: &[
        "\nend_of_record\n",
        "end_of_record",
        "\nSF:",
        "\nTN:",
        "\nDA:",
        "\nLF:",
        "\nLH:",
        "\nBRDA:1,0,0,-\n",
        "\nFN:1,f\n",
        ",",
        ":",
        "\n",
        "\r\n",
    ],
    nest: &[],
};

fn seeds(dir: &str) -> Vec<(String, String)> {
    harness::corpus_text(dir)
}

fn seed_bytes(dirs: &[&str]) -> Vec<Vec<u8>> {
    dirs.iter()
        .flat_map(|d| harness::corpus(d))
        .map(|(_, b)| b)
        .collect()
}

/// JUnit under the guard; checks what any result must satisfy.
fn junit_checked(text: String) -> Result<Vec<junit::TestCase>, junit::ParseError> {
    let len = text.len();
    let r = guarded("junit::parse", Budget::for_input(len), move || {
        let r = junit::parse("report.xml", &text);
        if let Err(e) = &r {
            assert_eq!(e.file, "report.xml");
            assert!(e.line >= 1 && e.column >= 1, "{e}");
            assert!(e.line <= text.matches('\n').count() + 1, "{e}");
            assert!(e.to_string().starts_with("report.xml: line "), "{e}");
        }
        r
    });
    if let Ok(cases) = &r {
        let c = Counts::of(cases);
        assert_eq!(c.tests, c.passed + c.failed + c.errors + c.skipped);
        for case in cases {
            assert!(case.body.len() <= 16 * 1024);
            for max in [0, 3, 10, 1024] {
                assert!(case.failure_text(max).len() <= max.max(3));
            }
            let _ = case.title();
        }
    }
    r
}

/// Coverage under the guard; checks what any result must satisfy.
fn coverage_checked(text: String) -> Result<Coverage, String> {
    let len = text.len();
    let r = guarded("coverage::parse", Budget::for_input(len), move || {
        coverage::parse("cov.dat", &text)
    });
    match &r {
        Ok(c) => {
            if let (Some(hit), Some(found)) = (c.lines_covered, c.lines_valid) {
                assert!(hit <= found, "{c:?}");
            }
            if let Some(p) = c.percent() {
                assert!((0.0..=100.0).contains(&p), "{p} from {c:?}");
            }
        }
        Err(e) => assert!(e.starts_with("cov.dat: "), "{e}"),
    }
    r
}

proptest! {
    #![proptest_config(harness::config(1, REGRESSIONS))]

    #[test]
    fn junit_any_bytes(bytes in harness::bytes()) {
        let _ = junit_checked(harness::lossy(&bytes));
    }

    #[test]
    fn junit_mutated_reports(bytes in harness::mutant(seed_bytes(&["junit"]), XML)) {
        let _ = junit_checked(harness::lossy(&bytes));
    }

    #[test]
    fn coverage_any_bytes(bytes in harness::bytes()) {
        let _ = coverage_checked(harness::lossy(&bytes));
    }

    #[test]
    fn coverage_any_xml_ish(bytes in harness::mutant(vec![b"<coverage line-rate=\"0.5\"></coverage>".to_vec()], XML)) {
        let _ = coverage_checked(harness::lossy(&bytes));
    }

    #[test]
    fn coverage_mutated_reports(bytes in harness::mutant(seed_bytes(&["cobertura", "junit"]), XML)) {
        let _ = coverage_checked(harness::lossy(&bytes));
    }

    #[test]
    fn lcov_mutated_reports(bytes in harness::mutant(seed_bytes(&["lcov"]), LCOV)) {
        let _ = coverage_checked(harness::lossy(&bytes));
    }

    #[test]
    fn merge_is_a_percentage(reports in prop::collection::vec(any_coverage(), 0..6)) {
        if let Some(p) = coverage::merge(&reports) {
            prop_assert!((0.0..=100.0).contains(&p), "{p} from {reports:?}");
        }
    }

    /// A generated JUnit report parses to exactly its test cases, and every
    /// cut inside it is an error.
    #[test]
    fn junit_generated_round_trips((suites, cut) in (prop::collection::vec(suite(), 0..4), any::<prop::sample::Index>())) {
        let xml = junit_xml(&suites);
        let cases = junit_checked(xml.clone()).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        let expected: Vec<(String, String, String, Outcome, String, String)> = suites
            .iter()
            .flat_map(|(suite, cases)| cases.iter().map(move |c| (
                suite.clone(),
                c.classname.clone(),
                c.name.clone(),
                c.outcome,
                c.message.clone(),
                if matches!(c.outcome, Outcome::Failed | Outcome::Error) { c.body.clone() } else { String::new() },
            )))
            .collect();
        let got: Vec<_> = cases
            .iter()
            .map(|c| (c.suite.clone(), c.classname.clone(), c.name.clone(), c.outcome, c.message.clone(), c.body.clone()))
            .collect();
        prop_assert_eq!(got, expected);
        let end = xml.trim_end().len();
        let at = cut.index(end);
        if xml.is_char_boundary(at) {
            prop_assert!(junit_checked(xml[..at].to_string()).is_err(), "cut at {}: {}", at, &xml[..at]);
        }
    }

    /// A generated Cobertura report parses to its root's counts, and every
    /// cut inside it is an error.
    #[test]
    fn cobertura_generated_round_trips(
        (covered, extra, classes, cut) in (0u64..1_000_000, 0u64..1_000_000, prop::collection::vec(("[a-z/]{1,12}\\.py", prop::collection::vec(0u32..5, 0..8)), 0..5), any::<prop::sample::Index>())
    ) {
        let valid = covered + extra;
        let mut xml = format!(
            "<?xml version=\"1.0\" ?>\n<!DOCTYPE coverage SYSTEM \"http://cobertura.sourceforge.net/xml/coverage-04.dtd\">\n\
             <coverage line-rate=\"{}\" lines-covered=\"{covered}\" lines-valid=\"{valid}\" version=\"7\">\n\
             \t<!-- generated -->\n\t<sources><source>/src</source></sources>\n\t<packages><package name=\".\"><classes>\n",
            if valid == 0 { 1.0 } else { covered as f64 / valid as f64 }
        );
        for (file, hits) in &classes {
            xml.push_str(&format!("\t\t<class filename=\"{file}\" name=\"{file}\"><methods/><lines>\n"));
            for (i, h) in hits.iter().enumerate() {
                xml.push_str(&format!("\t\t\t<line hits=\"{h}\" number=\"{}\"/>\n", i + 1));
            }
            xml.push_str("\t\t</lines></class>\n");
        }
        xml.push_str("\t</classes></package></packages>\n</coverage>\n");
        let cov = coverage_checked(xml.clone()).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        prop_assert_eq!(cov.format, Format::Cobertura);
        prop_assert_eq!((cov.lines_covered, cov.lines_valid), (Some(covered), Some(valid)));
        let at = cut.index(xml.trim_end().len());
        prop_assert!(coverage_checked(xml[..at].to_string()).is_err(), "cut at {}", at);
    }

    /// A generated lcov tracefile sums to its records, and a cut is an error
    /// unless it falls just after an `end_of_record`.
    #[test]
    fn lcov_generated_round_trips(
        (records, cut) in (prop::collection::vec(lcov_record(), 1..6), any::<prop::sample::Index>())
    ) {
        let mut text = String::new();
        let (mut hit, mut found) = (0u64, 0u64);
        for (file, das, totals) in &records {
            text.push_str(&format!("SF:{file}\nFN:1,f\nFNDA:1,f\n"));
            for (i, h) in das.iter().enumerate() {
                text.push_str(&format!("DA:{},{h}\n", i + 1));
            }
            match totals {
                Some((lh, lf)) => {
                    text.push_str(&format!("LF:{lf}\nLH:{lh}\n"));
                    hit += lh;
                    found += lf;
                }
                None => {
                    hit += das.iter().filter(|h| **h > 0).count() as u64;
                    found += das.len() as u64;
                }
            }
            text.push_str("end_of_record\n");
        }
        let cov = coverage_checked(text.clone()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        prop_assert_eq!((cov.lines_covered, cov.lines_valid), (Some(hit), Some(found)));
        let at = cut.index(text.len());
        let prefix = &text[..at];
        let r = guarded("parse_lcov", Budget::for_input(at), {
            let p = prefix.to_string();
            move || coverage::parse_lcov("cut.info", &p)
        });
        let boundary = prefix.trim_end().is_empty() || prefix.trim_end().ends_with("end_of_record");
        prop_assert_eq!(r.is_ok(), boundary, "cut at {}: {:?} -> {:?}", at, prefix, r);
    }
}

fn any_coverage() -> impl Strategy<Value = Coverage> {
    (
        prop::option::of((any::<u64>(), any::<u64>())),
        prop::option::of(0.0f64..=1.0),
        any::<bool>(),
    )
        .prop_map(|(counts, line_rate, lcov)| {
            let counts = counts.map(|(a, b)| (a.min(b), a.max(b)));
            Coverage {
                format: if lcov {
                    Format::Lcov
                } else {
                    Format::Cobertura
                },
                lines_covered: counts.map(|c| c.0),
                lines_valid: counts.map(|c| c.1),
                line_rate,
                files: Vec::new(),
            }
        })
}

#[derive(Clone, Debug)]
struct GenCase {
    classname: String,
    name: String,
    outcome: Outcome,
    message: String,
    body: String,
}

/// Text with the characters XML must escape, and non-ASCII.
const TEXT: &str = "[a-zA-Z0-9 _.:/()\\[\\]<>&\"'é›💥-]{0,24}";

fn suite() -> impl Strategy<Value = (String, Vec<GenCase>)> {
    (TEXT, prop::collection::vec(case(), 0..6))
}

fn case() -> impl Strategy<Value = GenCase> {
    (
        TEXT,
        TEXT,
        prop::sample::select(vec![
            Outcome::Passed,
            Outcome::Failed,
            Outcome::Error,
            Outcome::Skipped,
        ]),
        TEXT,
        TEXT,
    )
        .prop_map(|(classname, name, outcome, message, body)| GenCase {
            classname,
            name,
            message: if outcome == Outcome::Passed {
                String::new()
            } else {
                message
            },
            outcome,
            body,
        })
}

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn junit_xml(suites: &[(String, Vec<GenCase>)]) -> String {
    let mut x =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"all\">\n");
    for (name, cases) in suites {
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\">\n    <properties><property name=\"p\" value=\"&lt;\"/></properties>\n",
            esc(name),
            cases.len()
        ));
        for c in cases {
            x.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"0.1\">",
                esc(&c.classname),
                esc(&c.name)
            ));
            match c.outcome {
                Outcome::Passed => {}
                Outcome::Skipped => {
                    x.push_str(&format!("<skipped message=\"{}\"/>", esc(&c.message)))
                }
                Outcome::Failed | Outcome::Error => {
                    let tag = if c.outcome == Outcome::Failed {
                        "failure"
                    } else {
                        "error"
                    };
                    x.push_str(&format!(
                        "<{tag} message=\"{}\" type=\"E\">{}</{tag}>",
                        esc(&c.message),
                        esc(&c.body)
                    ))
                }
            }
            x.push_str("<system-out>out &amp; <![CDATA[<noise>]]></system-out></testcase>\n");
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

type LcovRecord = (String, Vec<u32>, Option<(u64, u64)>);

fn lcov_record() -> impl Strategy<Value = LcovRecord> {
    (
        "[a-z]{1,8}(/[a-z]{1,8}){0,2}\\.c",
        prop::collection::vec(0u32..4, 0..10),
        prop::option::of((0u64..1000, 0u64..1000)),
    )
        .prop_map(|(f, das, t)| (f, das, t.map(|(a, b)| (a.min(b), a.max(b)))))
}

// --- every truncation of the real reports -----------------------------------

/// Every prefix of a few real reports (and ~200 of each of the others) is
/// an error naming the file: a report cut short must never pass.
#[test]
fn truncated_junit_reports_fail() {
    for (i, (name, text)) in seeds("junit").into_iter().enumerate() {
        let complete = junit::parse(&name, &text).is_ok();
        for at in harness::prefixes(text.trim_end(), i < 3) {
            let cut = text[..at].to_string();
            let r = junit_checked(cut);
            assert!(
                r.is_err(),
                "{name} cut at {at} (complete: {complete}) parses: {r:?}"
            );
        }
    }
}

#[test]
fn truncated_cobertura_reports_fail() {
    for (name, text) in seeds("cobertura") {
        assert!(coverage::parse(&name, &text).is_ok(), "{name}");
        for at in harness::prefixes(text.trim_end(), true) {
            let r = coverage_checked(text[..at].to_string());
            assert!(r.is_err(), "{name} cut at {at} parses: {r:?}");
        }
    }
}

#[test]
fn truncated_lcov_reports_fail() {
    for (name, text) in seeds("lcov") {
        assert!(coverage::parse(&name, &text).is_ok(), "{name}");
        for at in harness::prefixes(&text, true) {
            let prefix = &text[..at];
            let r = coverage::parse_lcov("cut.info", prefix);
            // Undetectable: a cut between records (after `end_of_record`,
            // or after the test name that starts the next one).
            let last = prefix.trim_end().lines().last().unwrap_or("").trim();
            let boundary = last.is_empty() || last == "end_of_record" || last.starts_with("TN:");
            if !boundary {
                let e = r.expect_err(&format!("{name} cut at {at} parses"));
                assert!(e.starts_with("cut.info: line "), "{e}");
            }
        }
    }
}

/// Deep nesting is refused quickly (it was quadratic in JUnit).
#[test]
fn deep_nesting_is_bounded() {
    for depth in [300, 100_000] {
        let xml = format!(
            "<testsuites><testsuite><testcase><failure>{}",
            "<a>".repeat(depth)
        );
        let e = junit_checked(xml).unwrap_err();
        assert!(e.message.contains("nested more than"), "{e}");
        let xml = format!("<coverage line-rate=\"1\">{}", "<a>".repeat(depth));
        let e = coverage_checked(xml).unwrap_err();
        assert!(e.contains("nested more than"), "{e}");
    }
}
