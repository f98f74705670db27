//! JUnit XML parsing (the de-facto format of pytest, Surefire, Gradle, Jest,
//! go-junit-report, cargo-nextest, PHPUnit...).
//!
//! Totals are counted from the `<testcase>` elements themselves: the
//! `tests=`/`failures=` attributes of the suites are sometimes absent or wrong
//! (pytest counts xfail, PHPUnit nests suites). A case is `error` when it has
//! an `<error>`, `failed` with a `<failure>`, `skipped` with a `<skipped>`
//! (pytest's xfail included), and passed otherwise.

use std::fmt;

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::Reader;

/// Most text kept from a `<failure>`/`<error>` body (the annotation shows ~1 KB).
const MAX_BODY: usize = 16 * 1024;
/// Deepest element nesting read (PHPUnit nests suites a few levels).
pub const MAX_DEPTH: usize = 256;

/// Outcome of one test case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Error,
    Skipped,
}

/// One `<testcase>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    /// Name of the innermost enclosing `<testsuite>` ("" when none).
    pub suite: String,
    /// `classname` attribute ("" when absent).
    pub classname: String,
    pub name: String,
    pub outcome: Outcome,
    /// `message` attribute of the `<failure>`/`<error>`/`<skipped>` ("" when absent).
    pub message: String,
    /// Text or CDATA body of that element (bounded).
    pub body: String,
    /// `file` attribute of the test case.
    pub file: Option<String>,
    /// `line` attribute of the test case.
    pub line: Option<u32>,
}

impl TestCase {
    /// `classname::name`, else `suite/name`, else `name`.
    pub fn title(&self) -> String {
        if !self.classname.is_empty() {
            format!("{}::{}", self.classname, self.name)
        } else if !self.suite.is_empty() {
            format!("{}/{}", self.suite, self.name)
        } else {
            self.name.clone()
        }
    }

    /// What to show for a failed test: the `message` attribute, followed by
    /// the first lines of the body when it says more; bounded to `max` bytes.
    pub fn failure_text(&self, max: usize) -> String {
        let message = self.message.trim();
        let body = self.body.trim();
        let text = if message.is_empty() {
            head_lines(body, 20)
        } else if body.is_empty() || first_line(body) == first_line(message) {
            message.to_string()
        } else {
            format!("{message}\n\n{}", head_lines(body, 20))
        };
        truncate(&text, max)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

fn head_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[..lines.len().min(n)].join("\n");
    if lines.len() > n {
        out.push_str("\n…");
    }
    out
}

/// `s` cut to at most `max` bytes on a char boundary, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Totals over test cases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub tests: usize,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub skipped: usize,
}

impl Counts {
    pub fn of(cases: &[TestCase]) -> Counts {
        let mut c = Counts::default();
        for case in cases {
            c.add(case.outcome);
        }
        c
    }

    pub fn add(&mut self, outcome: Outcome) {
        self.tests += 1;
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Error => self.errors += 1,
            Outcome::Skipped => self.skipped += 1,
        }
    }

    /// `128 tests: 120 passed, 3 failed, 1 error, 4 skipped`.
    pub fn line(&self) -> String {
        format!(
            "{} {}: {} passed, {} failed, {} {}, {} skipped",
            self.tests,
            if self.tests == 1 { "test" } else { "tests" },
            self.passed,
            self.failed,
            self.errors,
            if self.errors == 1 { "error" } else { "errors" },
            self.skipped
        )
    }
}

/// A report that is not well-formed JUnit XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    /// 1-based line and column of the problem.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: line {}, column {}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// 1-based (line, column) of byte offset `pos` in `text`.
pub fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// What the element being read is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Suite,
    Case,
    /// The `<failure>`/`<error>`/`<skipped>` that decided the outcome.
    Result,
    Other,
}

struct Open {
    name: String,
    kind: Kind,
    pos: usize,
}

/// Parses one JUnit XML report. `file` names it in errors.
pub fn parse(file: &str, xml: &str) -> Result<Vec<TestCase>, ParseError> {
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut p = Parse::new(file, xml);
    loop {
        let start = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| {
            let pos = reader.error_position() as usize;
            p.err_at(pos, format!("not valid XML: {e}"))
        })?;
        match event {
            Event::Start(ref e) => p.open(e, start, false)?,
            Event::Empty(ref e) => p.open(e, start, true)?,
            Event::End(_) => p.end(),
            Event::Text(t) => {
                if p.collecting() {
                    let text = t
                        .decode()
                        .map_err(|e| p.err_at(start, format!("not valid text: {e}")))?;
                    p.push_body(&text);
                }
            }
            Event::CData(t) => {
                if p.collecting() {
                    let text = t
                        .decode()
                        .map_err(|e| p.err_at(start, format!("not valid text: {e}")))?;
                    p.push_body(&text);
                }
            }
            Event::GeneralRef(r) => {
                if p.collecting() {
                    let text = resolve_ref(&r).map_err(|m| p.err_at(start, m))?;
                    p.push_body(&text);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) | Event::Comment(_) => {}
        }
    }
    p.finish()
}

/// An entity or character reference as text (unknown entities kept as
/// written).
fn resolve_ref(r: &BytesRef<'_>) -> Result<String, String> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => Ok(c.to_string()),
        Ok(None) => {
            let name = String::from_utf8_lossy(r).into_owned();
            Ok(match quick_xml::escape::resolve_predefined_entity(&name) {
                Some(s) => s.to_string(),
                None => format!("&{name};"),
            })
        }
        Err(e) => Err(format!("not valid XML: {e}")),
    }
}

/// One parse in progress: the open elements, the suites around, the test
/// case being read and those read.
struct Parse<'x> {
    file: &'x str,
    xml: &'x str,
    cases: Vec<TestCase>,
    stack: Vec<Open>,
    suites: Vec<String>,
    current: Option<TestCase>,
    seen_root: bool,
    // Whether the deciding `<failure>`/`<error>`/`<skipped>` is open (kept
    // here rather than searched for in `stack`: that made deep nesting
    // quadratic).
    in_result: bool,
}

impl<'x> Parse<'x> {
    fn new(file: &'x str, xml: &'x str) -> Self {
        Parse {
            file,
            xml,
            cases: Vec::new(),
            stack: Vec::new(),
            suites: Vec::new(),
            current: None,
            seen_root: false,
            in_result: false,
        }
    }

    fn err_at(&self, pos: usize, message: String) -> ParseError {
        let (line, column) = line_col(self.xml, pos);
        ParseError {
            file: self.file.to_string(),
            line,
            column,
            message,
        }
    }

    /// A start (or empty, `<x/>`) tag at byte `start`.
    fn open(&mut self, e: &BytesStart<'_>, start: usize, empty: bool) -> Result<(), ParseError> {
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        if !self.seen_root {
            self.seen_root = true;
            if name != "testsuites" && name != "testsuite" {
                return Err(self.err_at(
                    start,
                    format!(
                        "not a JUnit report: the root element is <{name}>, \
                         not <testsuites> or <testsuite>"
                    ),
                ));
            }
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.err_at(
                start,
                format!("<{name}>: elements nested more than {MAX_DEPTH} deep"),
            ));
        }
        let kind = self.kind_of(&name, e);
        if empty {
            close(kind, &mut self.current, &mut self.suites, &mut self.cases);
        } else {
            self.in_result |= kind == Kind::Result;
            self.stack.push(Open {
                name,
                kind,
                pos: start,
            });
        }
        Ok(())
    }

    /// What element `name` is here; a suite or a case starts being read.
    fn kind_of(&mut self, name: &str, e: &BytesStart<'_>) -> Kind {
        match name {
            _ if self.in_result => Kind::Other,
            "testsuite" if self.current.is_none() => {
                self.suites.push(attr(e, "name").unwrap_or_default());
                Kind::Suite
            }
            "testcase" if self.current.is_none() => {
                self.current = Some(TestCase {
                    suite: self.suites.last().cloned().unwrap_or_default(),
                    classname: attr(e, "classname").unwrap_or_default(),
                    name: attr(e, "name").unwrap_or_default(),
                    outcome: Outcome::Passed,
                    message: String::new(),
                    body: String::new(),
                    file: attr(e, "file").filter(|f| !f.is_empty()),
                    line: attr(e, "line").and_then(|l| l.trim().parse().ok()),
                });
                Kind::Case
            }
            "failure" | "error" | "skipped" => self.result_kind(name, e),
            _ => Kind::Other,
        }
    }

    /// A `<failure>`/`<error>`/`<skipped>`: `Result` when it decides the
    /// outcome of the case it is directly inside (not in system-out...).
    fn result_kind(&mut self, name: &str, e: &BytesStart<'_>) -> Kind {
        let in_case = self.stack.last().is_some_and(|o| o.kind == Kind::Case);
        let Some(case) = self.current.as_mut().filter(|_| in_case) else {
            return Kind::Other;
        };
        let outcome = match name {
            "failure" => Outcome::Failed,
            "error" => Outcome::Error,
            _ => Outcome::Skipped,
        };
        // The first failure/error decides; either beats a skip.
        let decides = match case.outcome {
            Outcome::Passed => true,
            Outcome::Skipped => outcome != Outcome::Skipped,
            Outcome::Failed | Outcome::Error => false,
        };
        if !decides {
            return Kind::Other;
        }
        case.outcome = outcome;
        case.message = attr(e, "message").unwrap_or_default();
        case.body.clear();
        Kind::Result
    }

    fn end(&mut self) {
        // check_end_names guarantees this matches the last Start.
        if let Some(open) = self.stack.pop() {
            self.in_result &= open.kind != Kind::Result;
            close(
                open.kind,
                &mut self.current,
                &mut self.suites,
                &mut self.cases,
            );
        }
    }

    /// Whether text now belongs to a case's result body.
    fn collecting(&self) -> bool {
        self.in_result && self.current.is_some()
    }

    /// Text inside the deciding result element, kept up to [`MAX_BODY`].
    fn push_body(&mut self, text: &str) {
        if let Some(body) = result_body(self.in_result, &mut self.current) {
            push_bounded(body, text);
        }
    }

    /// The cases read, once the document is whole.
    fn finish(self) -> Result<Vec<TestCase>, ParseError> {
        if let Some(open) = self.stack.last() {
            let (line, _) = line_col(self.xml, open.pos);
            return Err(self.err_at(
                self.xml.len(),
                format!(
                    "the file ends early (truncated?): <{}> opened at line {line} is not closed",
                    open.name
                ),
            ));
        }
        if !self.seen_root {
            return Err(self.err_at(
                self.xml.len(),
                "not a JUnit report: no XML element found".into(),
            ));
        }
        Ok(self.cases)
    }
}

fn close(
    kind: Kind,
    current: &mut Option<TestCase>,
    suites: &mut Vec<String>,
    cases: &mut Vec<TestCase>,
) {
    match kind {
        Kind::Suite => {
            suites.pop();
        }
        Kind::Case => {
            if let Some(case) = current.take() {
                cases.push(case);
            }
        }
        Kind::Result | Kind::Other => {}
    }
}

/// The body being collected, when inside the deciding `<failure>`/`<error>`/`<skipped>`.
fn result_body(in_result: bool, current: &mut Option<TestCase>) -> Option<&mut String> {
    if in_result {
        current.as_mut().map(|c| &mut c.body)
    } else {
        None
    }
}

fn push_bounded(body: &mut String, text: &str) {
    if body.len() >= MAX_BODY {
        return;
    }
    let room = MAX_BODY - body.len();
    if text.len() <= room {
        body.push_str(text);
    } else {
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        body.push_str(&text[..end]);
    }
}

/// Unescaped value of attribute `name` (raw text when an entity is unknown).
fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .with_checks(false)
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name.as_bytes())
        .map(|a| match a.unescape_value() {
            Ok(v) => v.into_owned(),
            Err(_) => String::from_utf8_lossy(&a.value).into_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> String {
        let path = format!(
            "{}/../../../shared/data/junit/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn parse_file(name: &str) -> Vec<TestCase> {
        parse(name, &load(name)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn c(tests: usize, passed: usize, failed: usize, errors: usize, skipped: usize) -> Counts {
        Counts {
            tests,
            passed,
            failed,
            errors,
            skipped,
        }
    }

    fn failing(cases: &[TestCase]) -> Vec<&TestCase> {
        cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed | Outcome::Error))
            .collect()
    }

    #[test]
    fn go_junit_report_pass_fail_skip() {
        let cases = parse_file("go-junit-report_001_pass-fail-skip.xml");
        assert_eq!(Counts::of(&cases), c(5, 2, 1, 0, 2));
        let f = failing(&cases);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].title(), "package/fail::TestOne");
        assert_eq!(f[0].suite, "package/fail");
        assert_eq!(f[0].message, "Failed");
        assert!(f[0].body.starts_with("    fail_test.go:6: Error message\n"));
        assert_eq!(
            f[0].failure_text(1024),
            "Failed\n\nfail_test.go:6: Error message\n    fail_test.go:7: Longer\n        \
             error\n        message."
        );
        // system-out of a passing test is not a body.
        assert_eq!(cases[1].name, "TestPassLog");
        assert_eq!(cases[1].body, "");
    }

    #[test]
    fn go_junit_report_panic_is_an_error() {
        let cases = parse_file("go-junit-report_014_panic-errors.xml");
        assert_eq!(Counts::of(&cases), c(2, 0, 0, 2, 0));
        let titles: Vec<String> = cases.iter().map(|c| c.title()).collect();
        assert_eq!(
            titles,
            vec!["package/panic::Failure", "package/panic2::Failure"]
        );
        assert_eq!(cases[0].message, "Runtime error");
        assert_eq!(cases[0].body, "panic: init\nstacktrace");
    }

    #[test]
    fn gradle_all_pass() {
        let cases = parse_file("gradle_TEST-CalculatorTest.xml");
        assert_eq!(Counts::of(&cases), c(24, 24, 0, 0, 0));
        assert_eq!(cases[1].name, "[1] 1, 2, 3");
        assert_eq!(cases[0].suite, "com.github.guenhter.junit.CalculatorTest");
    }

    #[test]
    fn jest_failures_with_entities_and_empty_classname() {
        let cases = parse_file("jest-junit_failures.xml");
        assert_eq!(Counts::of(&cases), c(6, 1, 4, 0, 1));
        let f = failing(&cases);
        let titles: Vec<String> = f.iter().map(|c| c.title()).collect();
        assert_eq!(
            titles,
            vec![
                "Test 1 › Test 1.1::Failing test",
                "Test 1 › Test 1.1::Exception in target unit",
                "Test 2::Exception in test",
                "__tests__\\second.test.js/Timeout test",
            ]
        );
        // No message attribute: the body's first lines, entities decoded.
        assert_eq!(f[0].message, "");
        let text = f[0].failure_text(1024);
        assert!(
            text.starts_with("Error: expect(received).toBeTruthy()\n\nReceived: false\n    at Object.<anonymous> (C:\\Users\\Michal"),
            "{text}"
        );
        assert!(f[3].failure_text(1024).len() <= 1024);
        assert!(f[3].failure_text(1024).ends_with('…'));
    }

    #[test]
    fn nested_testsuites_phpunit_style() {
        let cases = parse_file("nested_testsuite-in-testsuite.xml");
        assert_eq!(Counts::of(&cases), c(5, 5, 0, 0, 0));
        let where_: Vec<(&str, &str, Option<u32>)> = cases
            .iter()
            .map(|c| (c.name.as_str(), c.suite.as_str(), c.line))
            .collect();
        assert_eq!(
            where_,
            vec![
                ("TestCase1", "TestSuite1", Some(34)),
                ("TestCase2", "TestSuite1", Some(65)),
                ("TestCase3", "TestSuite2.1", Some(40)),
                ("TestCase4", "TestSuite2", Some(40)),
                ("TestCase5", "Project Test Suite", Some(40)),
            ]
        );
        assert_eq!(cases[0].file.as_deref(), Some("/somepath"));
    }

    #[test]
    fn nextest_apos_entities() {
        let cases = parse_file("nextest_basic.xml");
        assert_eq!(Counts::of(&cases), c(3, 2, 1, 0, 0));
        let f = failing(&cases);
        assert_eq!(f[0].title(), "oxidized_navigation::parry3d::test_failure");
        assert!(f[0]
            .body
            .starts_with("thread 'test_failure' panicked at tests/parry3d.rs:154:5:\n"));
        assert!(!f[0].body.contains("running 1 test"), "system-out leaked");
    }

    #[test]
    fn pytest_fail_with_message_and_body() {
        let cases = parse_file("pytest_fail.xml");
        assert_eq!(Counts::of(&cases), c(5, 3, 1, 0, 1));
        let f = failing(&cases);
        assert_eq!(f[0].title(), "test.test_spark.SparkTests::test_rsh_events");
        assert_eq!(f[0].file.as_deref(), Some("test/test_spark.py"));
        assert_eq!(f[0].line, Some(819));
        assert!(f[0]
            .message
            .starts_with("self = <test_spark.SparkTests testMethod=test_rsh_events>\n"));
        assert!(f[0].message.ends_with("E   AssertionError: 143 != 0"));
        // Message and body say the same: the message alone.
        assert_eq!(f[0].failure_text(4096), f[0].message);
        let skipped = cases
            .iter()
            .find(|c| c.outcome == Outcome::Skipped)
            .unwrap();
        assert_eq!(
            skipped.message,
            "get_available_devices only supported in Spark 3.0 and above"
        );
    }

    #[test]
    fn pytest_one_line_skips() {
        let cases = parse_file("pytest_gloo-elastic_skipped.xml");
        assert_eq!(Counts::of(&cases), c(14, 10, 0, 0, 4));
        assert_eq!(cases[0].line, Some(29));
        assert_eq!(
            cases[0].file.as_deref(),
            Some("test/integration/test_elastic_torch.py")
        );
    }

    #[test]
    fn pytest_properties_and_xfail() {
        let cases = parse_file("pytest_properties_xfail.xml");
        // The suite claims tests="15": ten test cases are in the file.
        assert_eq!(Counts::of(&cases), c(10, 6, 2, 0, 2));
        let f = failing(&cases);
        let got: Vec<(String, String)> = f.iter().map(|c| (c.title(), c.message.clone())).collect();
        assert_eq!(
            got,
            vec![
                (
                    "tests.test_lib::test_always_fail".to_string(),
                    "assert False".to_string()
                ),
                (
                    "tests.test_lib::test_error".to_string(),
                    "Exception: error".to_string()
                ),
            ]
        );
        let xfail = cases
            .iter()
            .find(|c| c.name == "test_expected_failure")
            .unwrap();
        assert_eq!(xfail.outcome, Outcome::Skipped);
        assert_eq!(
            cases[2].title(),
            "tests.test_lib::test_parameterized[param1]"
        );
        let prop = cases
            .iter()
            .find(|c| c.name == "test_with_record_property")
            .unwrap();
        assert_eq!(prop.outcome, Outcome::Passed);
    }

    #[test]
    fn surefire_cdata_and_char_refs() {
        let cases = parse_file("surefire_CalcUtilsTest.xml");
        assert_eq!(Counts::of(&cases), c(2, 0, 2, 0, 0));
        assert_eq!(
            cases[0].title(),
            "action.surefire.report.calc.CalcUtilsTest::test error handling"
        );
        assert_eq!(
            cases[0].message,
            "unexpected exception type thrown; expected:<java.lang.IllegalStateException> \
             but was:<java.lang.IllegalArgumentException>"
        );
        assert_eq!(
            cases[1].message,
            "\nExpected: <100.10>\n     but: was <100.11>"
        );
        assert!(cases[1]
            .body
            .starts_with("java.lang.AssertionError: \n\nExpected: <100.10>"));
    }

    #[test]
    fn truncated_report_is_a_clean_error() {
        let name = "pytest_corrupt-truncated.xml";
        let err = parse(name, &load(name)).unwrap_err();
        assert_eq!(err.file, name);
        let text = err.to_string();
        assert!(
            text.starts_with("pytest_corrupt-truncated.xml: line "),
            "{text}"
        );
        assert!(text.contains("not closed"), "{text}");
        assert!(text.contains("<skipped> opened at line 9"), "{text}");
        // The file stops mid-line: "                suppo" is line 11.
        assert_eq!((err.line, err.column), (11, 22));
    }

    #[test]
    fn malformed_and_foreign_xml() {
        let e = parse("a.xml", "<testsuite><testcase></testsuite>").unwrap_err();
        assert_eq!((e.line, e.column), (1, 22));
        assert!(e.message.starts_with("not valid XML"), "{e}");
        let e = parse("b.xml", "<coverage line-rate=\"1\"/>").unwrap_err();
        assert!(e.message.contains("root element is <coverage>"), "{e}");
        let e = parse("c.xml", "").unwrap_err();
        assert!(e.message.contains("no XML element"), "{e}");
        let e = parse(
            "d.xml",
            "<testsuite>\n<testcase name=\"x\"><error>a &bogus; b</error></testcase></testsuite>",
        );
        let cases = e.unwrap();
        assert_eq!(cases[0].body, "a &bogus; b");
    }

    #[test]
    fn empty_and_minimal_reports() {
        assert_eq!(parse("e.xml", "<testsuites/>").unwrap(), vec![]);
        let cases = parse(
            "f.xml",
            "\u{feff}<testsuite name=\"s\"><testcase name=\"t\"><skipped/><failure message=\"boom\"/></testcase></testsuite>",
        )
        .unwrap();
        assert_eq!(cases[0].outcome, Outcome::Failed);
        assert_eq!(cases[0].message, "boom");
        assert_eq!(cases[0].title(), "s/t");
    }

    #[test]
    fn counts_line() {
        assert_eq!(
            c(128, 120, 3, 1, 4).line(),
            "128 tests: 120 passed, 3 failed, 1 error, 4 skipped"
        );
        assert_eq!(
            c(1, 1, 0, 0, 0).line(),
            "1 test: 1 passed, 0 failed, 0 errors, 0 skipped"
        );
    }

    #[test]
    fn truncate_on_char_boundary() {
        assert_eq!(truncate("abc", 3), "abc");
        let t = truncate("ééééé", 6);
        assert!(t.len() <= 6 && t.ends_with('…'), "{t}");
    }
}
