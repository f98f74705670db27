//! Line coverage from a Cobertura XML or an lcov tracefile; the format is
//! recognised from the content, not the file name.
//!
//! - Cobertura (coverage.py, Istanbul, gcovr...): the `<coverage>` root's
//!   `lines-covered`/`lines-valid` when both are present, else its `line-rate`;
//!   the whole document must be well-formed XML.
//! - lcov (Istanbul, c8, grcov, geninfo...): the sums of `LH` / `LF` over the
//!   records (from `DA` lines when a record has no `LF`/`LH`); every record
//!   must end with `end_of_record`.
//!
//! A report that is cut short or malformed is an error naming the file and
//! the line (and column, for XML): a truncated report must fail the stage,
//! not pass the coverage gate with whatever it got to.

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::Reader;

use crate::junit::line_col;

/// Which format a coverage file was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Cobertura,
    Lcov,
}

impl Format {
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Cobertura => "cobertura",
            Format::Lcov => "lcov",
        }
    }
}

/// Line coverage of one report (or of several, merged).
#[derive(Clone, Debug, PartialEq)]
pub struct Coverage {
    pub format: Format,
    /// Covered and coverable lines, when the report gives them.
    pub lines_covered: Option<u64>,
    pub lines_valid: Option<u64>,
    /// Cobertura's `line-rate` (0..=1), when present.
    pub line_rate: Option<f64>,
    /// Source files named by the report (lcov `SF`, backslashes made `/`).
    pub files: Vec<String>,
}

impl Coverage {
    /// Line coverage in percent; `None` when the report counts no line.
    pub fn percent(&self) -> Option<f64> {
        match (self.lines_covered, self.lines_valid) {
            (Some(c), Some(v)) if v > 0 => Some(c as f64 * 100.0 / v as f64),
            (Some(_), Some(_)) if self.line_rate.is_none() => None,
            _ => self.line_rate.map(|r| r * 100.0),
        }
    }
}

/// Merges the coverage of several reports: exact when every report has
/// line counts, else the mean of the percentages.
pub fn merge(reports: &[Coverage]) -> Option<f64> {
    if reports.is_empty() {
        return None;
    }
    if reports
        .iter()
        .all(|r| r.lines_covered.is_some() && r.lines_valid.is_some())
    {
        // u128: the counts come from the reports and may be as large as u64 allows.
        let covered: u128 = reports
            .iter()
            .filter_map(|r| r.lines_covered)
            .map(u128::from)
            .sum();
        let valid: u128 = reports
            .iter()
            .filter_map(|r| r.lines_valid)
            .map(u128::from)
            .sum();
        return (valid > 0).then(|| covered as f64 * 100.0 / valid as f64);
    }
    let pcts: Vec<f64> = reports.iter().filter_map(Coverage::percent).collect();
    (!pcts.is_empty()).then(|| pcts.iter().sum::<f64>() / pcts.len() as f64)
}

/// Parses a coverage report, detecting its format. `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Coverage, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('<') {
        parse_cobertura(file, text)
    } else if looks_like_lcov(text) {
        parse_lcov(file, text)
    } else {
        Err(format!(
            "{file}: not a coverage report (neither Cobertura XML nor lcov)"
        ))
    }
}

fn looks_like_lcov(text: &str) -> bool {
    text.lines().take(50).any(|l| {
        let l = l.trim();
        ["TN:", "SF:", "DA:", "LF:", "LH:"]
            .iter()
            .any(|p| l.starts_with(p))
            || l == "end_of_record"
    })
}

/// Deepest element nesting read (Cobertura nests five levels:
/// coverage/packages/package/classes/class/lines/line).
pub const MAX_DEPTH: usize = 256;

/// Reads a Cobertura report: the counts come from the `<coverage>` root's
/// attributes, but the whole document is read, so a report that is cut short
/// (a root or any element left open), is not well-formed XML (mismatched or
/// malformed tags, bad attributes, undefined entities, text or a second
/// element outside the root) or declares entities is an error naming the
/// file, line and column, as coverage-gate's parser refuses the same bytes.
pub fn parse_cobertura(file: &str, xml: &str) -> Result<Coverage, String> {
    // Computed on error only: line_col walks the text.
    let at = |pos: usize| {
        let (line, column) = line_col(xml, pos);
        format!("{file}: line {line}, column {column}")
    };
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut cov: Option<Coverage> = None;
    // Open elements: (name, where it starts).
    let mut open: Vec<(String, usize)> = Vec::new();
    loop {
        let start = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| {
            format!(
                "{}: not valid XML: {e}",
                at(reader.error_position() as usize)
            )
        })?;
        let outside = open.is_empty();
        let here = |m: String| format!("{}: {m}", at(start));
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if outside && cov.is_some() {
                    return Err(here(format!(
                        "not valid XML: a second root element <{name}> after </coverage>"
                    )));
                }
                let attrs = attributes(e, &name, outside).map_err(here)?;
                if outside {
                    cov = Some(root(&at(start), &name, &attrs)?);
                }
                if open.len() >= MAX_DEPTH {
                    return Err(here(format!("elements nested more than {MAX_DEPTH} deep")));
                }
                if matches!(event, Event::Start(_)) {
                    open.push((name, start));
                }
            }
            Event::End(_) => {
                // check_end_names: it closes the last element opened.
                open.pop();
            }
            Event::Text(ref t) => {
                let text = t
                    .decode()
                    .map_err(|e| here(format!("not valid text: {e}")))?;
                if outside && !text.trim().is_empty() {
                    return Err(here("not valid XML: text outside the root element".into()));
                }
            }
            Event::CData(_) if outside => {
                return Err(here("not valid XML: CDATA outside the root element".into()))
            }
            Event::CData(_) => {}
            Event::GeneralRef(ref r) => check_ref(r, outside).map_err(here)?,
            Event::DocType(ref d) => {
                // `<!DOCTYPE coverage SYSTEM "...dtd">` is harmless (never
                // fetched); an internal subset is where entities are declared.
                if d.contains(&b'[') {
                    return Err(here(
                        "refused: the DOCTYPE has an internal subset (entity declarations are not allowed)"
                            .into(),
                    ));
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if let Some((name, pos)) = open.last() {
        let (line, _) = line_col(xml, *pos);
        return Err(format!(
            "{}: the file ends early (truncated?): <{name}> opened at line {line} is not closed",
            at(xml.len())
        ));
    }
    cov.ok_or_else(|| format!("{file}: no XML element found"))
}

/// Every attribute of `<name>` checked well-formed; returned (trimmed)
/// only when `keep` (the root's: the others are not used).
fn attributes(e: &BytesStart<'_>, name: &str, keep: bool) -> Result<Vec<(String, String)>, String> {
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| format!("not valid XML: in <{name}>: {e}"))?;
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|e| format!("not valid XML: <{name} {key}=...>: {e}"))?;
        if keep {
            attrs.push((key, value.trim().to_string()));
        }
    }
    Ok(attrs)
}

/// An entity or character reference: defined, and inside the root.
fn check_ref(r: &BytesRef<'_>, outside: bool) -> Result<(), String> {
    let name = String::from_utf8_lossy(r).into_owned();
    let known = match r.resolve_char_ref() {
        Ok(Some(_)) => true,
        Ok(None) => quick_xml::escape::resolve_predefined_entity(&name).is_some(),
        Err(_) => false,
    };
    if !known {
        return Err(format!("not valid XML: undefined entity &{name};"));
    }
    if outside {
        return Err("not valid XML: text outside the root element".into());
    }
    Ok(())
}

/// The counts from the `<coverage>` root's attributes; `at` names where it is.
fn root(at: &str, name: &str, attrs: &[(String, String)]) -> Result<Coverage, String> {
    let local = name.rsplit(':').next().unwrap_or(name);
    if local != "coverage" {
        return Err(format!(
            "{at}: not a Cobertura report: the root element is <{name}>, not <coverage>"
        ));
    }
    let mut cov = Coverage {
        format: Format::Cobertura,
        lines_covered: None,
        lines_valid: None,
        line_rate: None,
        files: Vec::new(),
    };
    for (key, value) in attrs {
        let bad = |what: &str| format!("{at}: {key}=\"{value}\" is not {what}");
        match key.as_str() {
            "line-rate" => {
                let rate: f64 = value.parse().map_err(|_| bad("a number"))?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(bad("a rate between 0 and 1"));
                }
                cov.line_rate = Some(rate);
            }
            "lines-covered" => cov.lines_covered = Some(value.parse().map_err(|_| bad("a count"))?),
            "lines-valid" => cov.lines_valid = Some(value.parse().map_err(|_| bad("a count"))?),
            _ => {}
        }
    }
    // Counts are used only as a pair.
    match (cov.lines_covered, cov.lines_valid) {
        (Some(c), Some(v)) if c > v => {
            return Err(format!(
                "{at}: lines-covered=\"{c}\" is more than lines-valid=\"{v}\": the report is inconsistent"
            ))
        }
        (Some(_), Some(_)) => {}
        _ => {
            cov.lines_covered = None;
            cov.lines_valid = None;
        }
    }
    if cov.line_rate.is_none() && cov.lines_valid.is_none() {
        return Err(format!(
            "{at}: <coverage> has neither line-rate nor lines-covered/lines-valid"
        ));
    }
    Ok(cov)
}

/// Sums `LH`/`LF` over the records of an lcov tracefile.
///
/// Every record ends with `end_of_record` (geninfo, Istanbul, c8, grcov and
/// coverage.py all write it): a record left open at the end of the file is a
/// report cut short, and an error, as is a line that is neither `KEY:VALUE`
/// nor `end_of_record`.
pub fn parse_lcov(file: &str, text: &str) -> Result<Coverage, String> {
    #[derive(Default)]
    struct Record {
        lf: Option<u64>,
        lh: Option<u64>,
        da_found: u64,
        da_hit: u64,
        /// Line (1-based) of the first line of the record, when one is open.
        opened: Option<usize>,
    }
    impl Record {
        fn totals(&self) -> (u64, u64) {
            (
                self.lh.unwrap_or(self.da_hit),
                self.lf.unwrap_or(self.da_found),
            )
        }
    }

    let mut covered = 0u64;
    let mut valid = 0u64;
    let mut files = Vec::new();
    let mut rec = Record::default();
    let mut lines = 0;
    for (i, raw) in text.lines().enumerate() {
        lines = i + 1;
        let line = raw.trim();
        let bad = |what: &str| format!("{file}: line {}: {what}: {line:?}", i + 1);
        let count = |v: &str| v.trim().parse::<u64>().map_err(|_| bad("not a count"));
        if line == "end_of_record" {
            let (c, v) = rec.totals();
            covered = covered
                .checked_add(c)
                .ok_or_else(|| bad("the line counts add up to more than 2^64"))?;
            valid = valid
                .checked_add(v)
                .ok_or_else(|| bad("the line counts add up to more than 2^64"))?;
            rec = Record::default();
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad("not an lcov line (KEY:VALUE or end_of_record)"));
        };
        match key {
            "SF" => files.push(value.trim().replace('\\', "/")),
            "LF" => rec.lf = Some(count(value)?),
            "LH" => rec.lh = Some(count(value)?),
            "DA" => {
                // DA:<line>,<hits>[,<checksum>]
                let mut parts = value.split(',');
                let (Some(_), Some(hits)) = (parts.next(), parts.next()) else {
                    return Err(bad("DA needs <line>,<hits>"));
                };
                // Some tools write hit counts as floats or negative numbers.
                let hits: f64 = hits.trim().parse().map_err(|_| bad("not a hit count"))?;
                rec.da_found += 1;
                if hits > 0.0 {
                    rec.da_hit += 1;
                }
            }
            _ => {}
        }
        // A test name may stand before a record; anything else is in one.
        if key != "TN" {
            rec.opened.get_or_insert(i + 1);
        }
    }
    if let Some(opened) = rec.opened {
        return Err(format!(
            "{file}: line {lines}: the file ends early (truncated?): the record opened at line {opened} has no end_of_record"
        ));
    }
    if covered > valid {
        return Err(format!(
            "{file}: {covered} lines hit (LH) out of {valid} found (LF): the report is inconsistent"
        ));
    }
    Ok(Coverage {
        format: Format::Lcov,
        lines_covered: Some(covered),
        lines_valid: Some(valid),
        line_rate: None,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> String {
        let path = format!(
            "{}/../../../shared/data/coverage/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn cobertura_from_coverage_py() {
        let name = "cobertura_coveragepy_x_xml.xml";
        let cov = parse(name, &load(name)).unwrap();
        assert_eq!(cov.format, Format::Cobertura);
        assert_eq!(cov.line_rate, Some(0.6667));
        assert_eq!(cov.lines_covered, Some(2));
        assert_eq!(cov.lines_valid, Some(3));
        // lines-covered/lines-valid is exact: 2/3.
        let pct = cov.percent().unwrap();
        assert!((pct - 200.0 / 3.0).abs() < 1e-9, "{pct}");
        assert_eq!(format!("{pct:.1}"), "66.7");
    }

    #[test]
    fn cobertura_line_rate_only() {
        let cov = parse("c.xml", r#"<?xml version="1.0"?><!DOCTYPE coverage SYSTEM "x.dtd"><coverage line-rate="0.832"/>"#).unwrap();
        assert_eq!(cov.lines_valid, None);
        assert!((cov.percent().unwrap() - 83.2).abs() < 1e-9);
    }

    #[test]
    fn lcov_from_jest_with_backslash_paths() {
        let name = "lcov_jest-istanbul_windows-paths.info";
        let cov = parse(name, &load(name)).unwrap();
        assert_eq!(cov.format, Format::Lcov);
        // LF 10 + 9 + 9, LH 10 + 9 + 3.
        assert_eq!(cov.lines_valid, Some(28));
        assert_eq!(cov.lines_covered, Some(22));
        assert_eq!(
            cov.files,
            vec![
                "funtions/async-function.js",
                "funtions/basic-function.js",
                "funtions/service-function.js"
            ]
        );
        assert_eq!(format!("{:.1}", cov.percent().unwrap()), "78.6");
    }

    #[test]
    fn lcov_without_lf_lh_counts_da_lines() {
        let cov = parse(
            "x.info",
            "SF:a.c\nDA:1,3\nDA:2,0\nDA:3,1\r\nend_of_record\nSF:b.c\nDA:1,0\nend_of_record",
        )
        .unwrap();
        assert_eq!((cov.lines_covered, cov.lines_valid), (Some(2), Some(4)));
        assert_eq!(cov.percent(), Some(50.0));
    }

    #[test]
    fn lcov_errors_name_file_and_line() {
        let e = parse("x.info", "SF:a\nLF:ten\nend_of_record").unwrap_err();
        assert_eq!(e, "x.info: line 2: not a count: \"LF:ten\"");
        let e = parse("y.info", "SF:a\nLF:1\nLH:2\nend_of_record").unwrap_err();
        assert!(e.contains("inconsistent"), "{e}");
    }

    #[test]
    fn detection_and_bad_input() {
        let e = parse("r.txt", "hello world").unwrap_err();
        assert!(e.contains("not a coverage report"), "{e}");
        let e = parse("j.xml", "<testsuites/>").unwrap_err();
        assert!(e.contains("root element is <testsuites>"), "{e}");
        let e = parse("k.xml", r#"<coverage line-rate="1.5"/>"#).unwrap_err();
        assert!(e.contains("line-rate=\"1.5\""), "{e}");
        let e = parse("t.xml", "<coverage line-rate=\"0.5").unwrap_err();
        assert!(e.starts_with("t.xml: line 1"), "{e}");
        // An empty lcov file: no line, no percentage.
        assert_eq!(parse("e.info", "TN:\n").unwrap().percent(), None);
    }

    /// A seed report of the fuzz corpus (`tests/fuzz/corpus/<dir>/<name>`).
    fn corpus(dir: &str, name: &str) -> String {
        let path = format!(
            "{}/../../tests/fuzz/corpus/{dir}/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn truncated_cobertura_is_an_error() {
        // coverage.py's report cut inside <classes>: the root's attributes
        // are all there (and say 66.7%), the document is not.
        let full = corpus("cobertura", "cobertura_coveragepy_x_xml.xml");
        assert!(parse("coverage.xml", &full).is_ok());
        let cut = &full[..full.find("<lines>").unwrap() + 10];
        let e = parse("coverage.xml", cut).unwrap_err();
        assert!(
            e.starts_with("coverage.xml: line 14, column 3: the file ends early (truncated?): "),
            "{e}"
        );
        assert!(e.contains("<lines> opened at line 13 is not closed"), "{e}");
        // Cut inside a tag, and right after the root's start tag.
        let e = parse("c.xml", &full[..full.find("<class ").unwrap() + 12]).unwrap_err();
        assert!(e.starts_with("c.xml: line "), "{e}");
        let root_end = full.find("<coverage").unwrap();
        let root_end = root_end + full[root_end..].find('>').unwrap() + 1;
        let e = parse("c.xml", &full[..root_end]).unwrap_err();
        assert!(
            e.contains("<coverage> opened at line 2 is not closed"),
            "{e}"
        );
    }

    #[test]
    fn malformed_cobertura_is_an_error() {
        let ok = r#"<coverage line-rate="0.5"><packages/></coverage>"#;
        assert!(parse("c.xml", ok).is_ok());
        for (xml, why) in [
            (
                r#"<coverage line-rate="0.5"><a></b></coverage>"#,
                "not valid XML",
            ),
            (
                r#"<coverage line-rate="0.5"><a x="1" x="2"/></coverage>"#,
                "in <a>",
            ),
            (
                r#"<coverage line-rate="0.5">&bogus;</coverage>"#,
                "undefined entity &bogus;",
            ),
            (
                r#"<coverage line-rate="0.5"/><coverage/>"#,
                "a second root element",
            ),
            (
                r#"<coverage line-rate="0.5"/>junk"#,
                "text outside the root",
            ),
            (
                r#"<!DOCTYPE coverage [<!ENTITY a "b">]><coverage line-rate="0.5"/>"#,
                "internal subset",
            ),
            (
                r#"<coverage lines-covered="4" lines-valid="3"/>"#,
                "inconsistent",
            ),
        ] {
            let e = parse("c.xml", xml).unwrap_err();
            assert!(e.starts_with("c.xml: line 1, column "), "{xml}: {e}");
            assert!(e.contains(why), "{xml}: {e}");
        }
        let deep = format!(
            "<coverage line-rate=\"1\">{}{}</coverage>",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        assert!(parse("d.xml", &deep)
            .unwrap_err()
            .contains("nested more than"));
    }

    #[test]
    fn truncated_lcov_is_an_error() {
        let full = corpus("lcov", "lcov_jest-istanbul_windows-paths.info");
        assert!(parse("lcov.info", &full).is_ok());
        // Cut in the middle of the last record: its LF/LH never come.
        let cut = &full[..full.rfind("BRF:").unwrap()];
        let e = parse("lcov.info", cut).unwrap_err();
        assert!(
            e.starts_with("lcov.info: line ") && e.contains("the file ends early (truncated?)"),
            "{e}"
        );
        assert!(e.contains("has no end_of_record"), "{e}");
        // Cut inside `end_of_record` or a key.
        let e = parse("l.info", "SF:a\nLF:1\nLH:1\nend_of_rec").unwrap_err();
        assert!(e.contains("line 4: not an lcov line"), "{e}");
        let e = parse("l.info", "SF:a\nLF:1\nLH:1\nend_of_record\nS").unwrap_err();
        assert!(e.contains("line 5: not an lcov line"), "{e}");
        // Counts too large to add up are an error, not an overflow.
        let e = parse(
            "l.info",
            "SF:a\nLF:18446744073709551615\nLH:1\nend_of_record\nSF:b\nLF:1\nLH:1\nend_of_record\n",
        )
        .unwrap_err();
        assert!(e.contains("line 8: the line counts add up"), "{e}");
    }

    #[test]
    fn merging_huge_counts_does_not_overflow() {
        let a = parse(
            "a.xml",
            r#"<coverage lines-covered="18446744073709551615" lines-valid="18446744073709551615"/>"#,
        )
        .unwrap();
        assert_eq!(merge(&[a.clone(), a]), Some(100.0));
    }

    #[test]
    fn merging_reports() {
        let a = parse("a.info", "SF:a\nLF:10\nLH:5\nend_of_record").unwrap();
        let b = parse("b.info", "SF:b\nLF:30\nLH:30\nend_of_record").unwrap();
        assert_eq!(merge(&[a.clone(), b]), Some(87.5));
        let c = parse("c.xml", r#"<coverage line-rate="1"/>"#).unwrap();
        assert_eq!(merge(&[a, c]), Some(75.0));
        assert_eq!(merge(&[]), None);
    }
}
