//! Line coverage from a Cobertura XML or an lcov tracefile; the format is
//! recognised from the content, not the file name.
//!
//! - Cobertura (coverage.py, Istanbul, gcovr...): the `<coverage>` root's
//!   `lines-covered`/`lines-valid` when both are present, else its `line-rate`.
//! - lcov (Istanbul, c8, grcov, geninfo...): the sums of `LH` / `LF` over the
//!   records (from `DA` lines when a record has no `LF`/`LH`).

use quick_xml::events::Event;
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
        let covered: u64 = reports.iter().filter_map(|r| r.lines_covered).sum();
        let valid: u64 = reports.iter().filter_map(|r| r.lines_valid).sum();
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

/// Reads the attributes of the `<coverage>` root element.
pub fn parse_cobertura(file: &str, xml: &str) -> Result<Coverage, String> {
    let mut reader = Reader::from_str(xml);
    loop {
        let start = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| {
            let (line, column) = line_col(xml, reader.error_position() as usize);
            format!("{file}: line {line}, column {column}: not valid XML: {e}")
        })?;
        let e = match event {
            Event::Start(e) | Event::Empty(e) => e,
            Event::Eof => return Err(format!("{file}: no XML element found")),
            _ => continue,
        };
        let (line, column) = line_col(xml, start);
        let at = format!("{file}: line {line}, column {column}");
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        if name != "coverage" {
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
        for a in e.attributes().with_checks(false).flatten() {
            let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
            let value = String::from_utf8_lossy(&a.value).trim().to_string();
            let bad = |what: &str| format!("{at}: {key}=\"{value}\" is not {what}");
            match key.as_str() {
                "line-rate" => {
                    let rate: f64 = value.parse().map_err(|_| bad("a number"))?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(bad("a rate between 0 and 1"));
                    }
                    cov.line_rate = Some(rate);
                }
                "lines-covered" => {
                    cov.lines_covered = Some(value.parse().map_err(|_| bad("a count"))?)
                }
                "lines-valid" => cov.lines_valid = Some(value.parse().map_err(|_| bad("a count"))?),
                _ => {}
            }
        }
        // Counts are used only as a pair.
        if cov.lines_covered.is_none() || cov.lines_valid.is_none() {
            cov.lines_covered = None;
            cov.lines_valid = None;
        }
        if cov.line_rate.is_none() && cov.lines_valid.is_none() {
            return Err(format!(
                "{at}: <coverage> has neither line-rate nor lines-covered/lines-valid"
            ));
        }
        return Ok(cov);
    }
}

/// Sums `LH`/`LF` over the records of an lcov tracefile.
pub fn parse_lcov(file: &str, text: &str) -> Result<Coverage, String> {
    #[derive(Default)]
    struct Record {
        lf: Option<u64>,
        lh: Option<u64>,
        da_found: u64,
        da_hit: u64,
        open: bool,
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
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let bad = |what: &str| format!("{file}: line {}: {what}: {line:?}", i + 1);
        let count = |v: &str| v.trim().parse::<u64>().map_err(|_| bad("not a count"));
        if line == "end_of_record" {
            let (c, v) = rec.totals();
            covered += c;
            valid += v;
            rec = Record::default();
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "SF" => {
                rec.open = true;
                files.push(value.trim().replace('\\', "/"));
            }
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
                rec.open = true;
                rec.da_found += 1;
                if hits > 0.0 {
                    rec.da_hit += 1;
                }
            }
            _ => {}
        }
    }
    if rec.open || rec.lf.is_some() {
        // Last record without `end_of_record`.
        let (c, v) = rec.totals();
        covered += c;
        valid += v;
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
            "SF:a.c\nDA:1,3\nDA:2,0\nDA:3,1\r\nend_of_record\nSF:b.c\nDA:1,0",
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
