//! Reading a Trivy JSON report (SchemaVersion 2) into [`Finding`]s.
//!
//! Only what the gate needs is read. Real reports leave keys out rather
//! than writing `[]` (`Results`, `Vulnerabilities`, `FixedVersion`...) and
//! sometimes write `null`: every field is optional here. Secrets are read
//! without their `Match` and `Code`: the secret's text never enters the
//! plugin's data, so it cannot leak into the report.

use serde::Deserialize;

/// Trivy severities, lowest first (so `>=` compares with a threshold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Highest first, for summaries.
    pub const DESCENDING: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Unknown,
    ];

    /// `CRITICAL`, `high`, ... (case-insensitive).
    pub fn parse(text: &str) -> Option<Severity> {
        match text.trim().to_ascii_uppercase().as_str() {
            "UNKNOWN" => Some(Severity::Unknown),
            "LOW" => Some(Severity::Low),
            "MEDIUM" => Some(Severity::Medium),
            "HIGH" => Some(Severity::High),
            "CRITICAL" => Some(Severity::Critical),
            _ => None,
        }
    }

    /// A report's severity; missing or unrecognised counts as `UNKNOWN`.
    fn of_report(text: Option<&str>) -> Severity {
        text.and_then(Severity::parse).unwrap_or(Severity::Unknown)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }

    /// Lower-case name, for output keys.
    pub fn key(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Vulnerability,
    Secret,
    Misconfiguration,
}

impl Kind {
    pub fn noun(self, n: usize) -> &'static str {
        match (self, n == 1) {
            (Kind::Vulnerability, true) => "vulnerability",
            (Kind::Vulnerability, false) => "vulnerabilities",
            (Kind::Secret, true) => "secret",
            (Kind::Secret, false) => "secrets",
            (Kind::Misconfiguration, true) => "misconfiguration",
            (Kind::Misconfiguration, false) => "misconfigurations",
        }
    }
}

/// One vulnerability, secret or failed misconfiguration check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    /// `VulnerabilityID`, secret `RuleID` or misconfiguration `ID`.
    pub id: String,
    /// Other names an ignore entry may use: a vulnerability's `VendorIDs`,
    /// a misconfiguration's `AVDID` (and `AVD-<ID>`).
    pub aliases: Vec<String>,
    pub severity: Severity,
    /// `Results[].Target` (image layer/OS, lock file, Dockerfile, file with the secret).
    pub target: String,
    /// `Results[].Class`: os-pkgs, lang-pkgs, config, secret...
    pub class: Option<String>,
    pub pkg: Option<String>,
    pub installed: Option<String>,
    /// `FixedVersion`, `None` when absent or empty (may be a comma list).
    pub fixed: Option<String>,
    /// Vulnerability `Status` (fixed, affected, will_not_fix...).
    pub status: Option<String>,
    pub title: Option<String>,
    /// Secret `StartLine`, misconfiguration `CauseMetadata.StartLine`.
    pub line: Option<u32>,
}

impl Finding {
    /// A vulnerability without a fix: no `FixedVersion`, or a `Status`
    /// other than `fixed` (Trivy's `--ignore-unfixed` meaning).
    pub fn is_unfixed(&self) -> bool {
        self.kind == Kind::Vulnerability
            && (self.fixed.is_none()
                || self
                    .status
                    .as_deref()
                    .is_some_and(|s| !s.eq_ignore_ascii_case("fixed")))
    }

    /// `Target` or `Target:line`.
    pub fn location(&self) -> String {
        match self.line {
            Some(l) => format!("{}:{l}", self.target),
            None => self.target.clone(),
        }
    }

    /// One line for an annotation (never the secret's content).
    ///
    /// - vulnerability: `musl 1.1.20-r4 → 1.1.20-r5 (CRITICAL) in <target>`
    /// - secret: `aws-access-key-id: AWS Access Key ID (CRITICAL) in deploy.sh:3`
    /// - misconfiguration: `DS-0002: Image user should not be 'root' (HIGH) in Dockerfile`
    pub fn message(&self) -> String {
        let sev = self.severity.as_str();
        match self.kind {
            Kind::Vulnerability => {
                let pkg = self.pkg.as_deref().unwrap_or("?");
                let installed = self.installed.as_deref().unwrap_or("?");
                let fixed = match (&self.fixed, &self.status) {
                    (Some(f), _) => f.clone(),
                    (None, Some(s)) if !s.is_empty() => format!("no fix ({s})"),
                    (None, _) => "no fix".to_string(),
                };
                format!("{pkg} {installed} → {fixed} ({sev}) in {}", self.target)
            }
            Kind::Secret | Kind::Misconfiguration => {
                let title = self.title.as_deref().unwrap_or("");
                let title = if title.is_empty() {
                    String::new()
                } else {
                    format!(" {title}")
                };
                format!("{}:{title} ({sev}) in {}", self.id, self.location())
            }
        }
    }
}

/// A parsed report.
#[derive(Debug, Default)]
pub struct Parsed {
    /// `ArtifactName`.
    pub artifact: Option<String>,
    pub findings: Vec<Finding>,
    /// Number of `Results` entries.
    pub results: usize,
    /// Misconfiguration checks that did not fail (PASS, EXCEPTION...): not findings.
    pub misconfig_passed: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawReport {
    #[serde(default)]
    artifact_name: Option<String>,
    #[serde(default)]
    results: Option<Vec<RawResult>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawResult {
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    vulnerabilities: Option<Vec<RawVuln>>,
    #[serde(default)]
    secrets: Option<Vec<RawSecret>>,
    #[serde(default)]
    misconfigurations: Option<Vec<RawMisconf>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawVuln {
    #[serde(rename = "VulnerabilityID", default)]
    vulnerability_id: Option<String>,
    #[serde(rename = "VendorIDs", default)]
    vendor_ids: Option<Vec<String>>,
    #[serde(default)]
    pkg_name: Option<String>,
    #[serde(rename = "PkgID", default)]
    pkg_id: Option<String>,
    #[serde(default)]
    installed_version: Option<String>,
    #[serde(default)]
    fixed_version: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

/// Deliberately without `Match` and `Code`: they hold the secret.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawSecret {
    #[serde(rename = "RuleID", default)]
    rule_id: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    start_line: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawMisconf {
    #[serde(rename = "ID", default)]
    id: Option<String>,
    #[serde(rename = "AVDID", default)]
    avd_id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    cause_metadata: Option<RawCause>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawCause {
    #[serde(default)]
    start_line: Option<i64>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn line(n: Option<i64>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0)
}

/// Parses the report text. The error is one line without the source's name
/// (the caller adds it).
pub fn parse(text: &str) -> Result<Parsed, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        if e.is_eof() {
            format!("not valid JSON, the report is truncated or empty ({e})")
        } else {
            format!("not valid JSON ({e})")
        }
    })?;
    check_schema(&value)?;
    let raw: RawReport = serde_json::from_value(value)
        .map_err(|e| format!("unexpected Trivy report structure: {e}"))?;

    let mut parsed = Parsed {
        artifact: non_empty(raw.artifact_name),
        ..Parsed::default()
    };
    let results = raw.results.unwrap_or_default();
    parsed.results = results.len();
    for r in results {
        let target = non_empty(r.target).unwrap_or_else(|| "(no target)".to_string());
        let class = non_empty(r.class);
        let at = |kind, id, severity: Option<String>| Finding {
            kind,
            id,
            aliases: Vec::new(),
            severity: Severity::of_report(severity.as_deref()),
            target: target.clone(),
            class: class.clone(),
            pkg: None,
            installed: None,
            fixed: None,
            status: None,
            title: None,
            line: None,
        };
        for v in r.vulnerabilities.unwrap_or_default() {
            parsed.findings.push(vulnerability(v, &at));
        }
        for s in r.secrets.unwrap_or_default() {
            parsed.findings.push(Finding {
                title: non_empty(s.title),
                line: line(s.start_line),
                ..at(
                    Kind::Secret,
                    non_empty(s.rule_id).unwrap_or_else(|| "(no rule id)".into()),
                    s.severity,
                )
            });
        }
        for m in r.misconfigurations.unwrap_or_default() {
            match misconfiguration(m, &at) {
                Some(f) => parsed.findings.push(f),
                None => parsed.misconfig_passed += 1,
            }
        }
    }
    Ok(parsed)
}

/// A JSON object with `SchemaVersion` 2.
fn check_schema(value: &serde_json::Value) -> Result<(), String> {
    let obj = value
        .as_object()
        .ok_or("not a Trivy JSON report (the top level is not an object)")?;
    match obj.get("SchemaVersion") {
        None => {
            Err("not a Trivy JSON report (no SchemaVersion; use `trivy ... --format json`)".into())
        }
        Some(v) if v.as_u64() == Some(2) => Ok(()),
        Some(v) => Err(format!(
            "Trivy report SchemaVersion {v} is not supported (expected 2)"
        )),
    }
}

/// A finding of `kind` with `id` and `severity` in the result being read,
/// everything else unset.
type FindingAt<'a> = dyn Fn(Kind, String, Option<String>) -> Finding + 'a;

/// A vulnerability; its vendor ids (other than its own) are aliases.
fn vulnerability(v: RawVuln, at: &FindingAt<'_>) -> Finding {
    let id = non_empty(v.vulnerability_id).unwrap_or_else(|| "(no id)".into());
    let aliases = v
        .vendor_ids
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.trim().is_empty() && *a != id)
        .collect();
    let pkg = non_empty(v.pkg_name).or_else(|| non_empty(v.pkg_id));
    Finding {
        aliases,
        pkg,
        installed: non_empty(v.installed_version),
        fixed: non_empty(v.fixed_version),
        status: non_empty(v.status),
        title: non_empty(v.title),
        ..at(Kind::Vulnerability, id, v.severity)
    }
}

/// A failed misconfiguration check (`None` for PASS, EXCEPTION...); it is
/// also known by its AVD id.
fn misconfiguration(m: RawMisconf, at: &FindingAt<'_>) -> Option<Finding> {
    let failed = m
        .status
        .as_deref()
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("FAIL"));
    if !failed {
        return None;
    }
    let id = non_empty(m.id).unwrap_or_else(|| "(no id)".into());
    let mut aliases = Vec::new();
    if let Some(avd) = non_empty(m.avd_id) {
        aliases.push(avd);
    }
    let avd = format!("AVD-{id}");
    if !id.starts_with("AVD-") && !aliases.contains(&avd) {
        aliases.push(avd);
    }
    Some(Finding {
        aliases,
        title: non_empty(m.title),
        line: line(m.cause_metadata.and_then(|c| c.start_line)),
        ..at(Kind::Misconfiguration, id, m.severity)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_order_and_names() {
        assert!(Severity::Critical > Severity::High);
        assert!(Severity::Low > Severity::Unknown);
        assert_eq!(Severity::parse(" high "), Some(Severity::High));
        assert_eq!(Severity::parse("severe"), None);
        assert_eq!(Severity::of_report(None), Severity::Unknown);
        assert_eq!(Severity::of_report(Some("NEGLIGIBLE")), Severity::Unknown);
    }

    #[test]
    fn missing_and_null_lists() {
        let p = parse(r#"{"SchemaVersion":2}"#).unwrap();
        assert!(p.findings.is_empty());
        let p = parse(
            r#"{"SchemaVersion":2,"Results":[{"Target":"x","Vulnerabilities":null},{"Target":"y"}]}"#,
        )
        .unwrap();
        assert_eq!(p.results, 2);
        assert!(p.findings.is_empty());
        let p = parse(r#"{"SchemaVersion":2,"Results":null}"#).unwrap();
        assert_eq!(p.results, 0);
    }

    #[test]
    fn fixed_version_absent_empty_or_list() {
        let p = parse(
            r#"{"SchemaVersion":2,"Results":[{"Target":"Gemfile.lock","Class":"lang-pkgs","Vulnerabilities":[
                {"VulnerabilityID":"CVE-1","PkgName":"rails","InstalledVersion":"5.2.0","FixedVersion":"6.0.3.1, 5.2.4.3","Severity":"HIGH"},
                {"VulnerabilityID":"CVE-2","PkgName":"a","InstalledVersion":"1","FixedVersion":"","Severity":"LOW","Status":"affected"},
                {"VulnerabilityID":"CVE-3","PkgName":"b","InstalledVersion":"1","Severity":"BOGUS","Status":"will_not_fix"},
                {"VulnerabilityID":"CVE-4","PkgName":"c","InstalledVersion":"1","FixedVersion":"2","Status":"affected"}
            ]}]}"#,
        )
        .unwrap();
        let f = &p.findings;
        assert_eq!(f[0].fixed.as_deref(), Some("6.0.3.1, 5.2.4.3"));
        assert!(!f[0].is_unfixed(), "no Status, a FixedVersion: fixed");
        assert_eq!(
            f[0].message(),
            "rails 5.2.0 → 6.0.3.1, 5.2.4.3 (HIGH) in Gemfile.lock"
        );
        assert_eq!(f[1].fixed, None);
        assert!(f[1].is_unfixed());
        assert_eq!(
            f[1].message(),
            "a 1 → no fix (affected) (LOW) in Gemfile.lock"
        );
        assert_eq!(f[2].severity, Severity::Unknown);
        assert!(f[2].is_unfixed());
        assert!(f[3].is_unfixed(), "Status not fixed");
    }

    #[test]
    fn misconfig_pass_is_not_a_finding() {
        let p = parse(
            r#"{"SchemaVersion":2,"Results":[{"Target":"k8s.yaml","Class":"config","Misconfigurations":[
                {"ID":"KSV001","AVDID":"AVD-KSV-0001","Title":"t","Severity":"MEDIUM","Status":"FAIL","CauseMetadata":{"StartLine":12}},
                {"ID":"KSV002","Severity":"HIGH","Status":"PASS"}
            ]}]}"#,
        )
        .unwrap();
        assert_eq!(p.findings.len(), 1);
        assert_eq!(p.misconfig_passed, 1);
        let f = &p.findings[0];
        assert_eq!(f.aliases, ["AVD-KSV-0001", "AVD-KSV001"]);
        assert_eq!(f.line, Some(12));
        assert_eq!(f.message(), "KSV001: t (MEDIUM) in k8s.yaml:12");
    }

    #[test]
    fn errors() {
        let e = parse("").unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = parse(r#"{"SchemaVersion":2,"Results":[{"Tar"#).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = parse("<html>").unwrap_err();
        assert!(e.starts_with("not valid JSON"), "{e}");
        let e = parse("[]").unwrap_err();
        assert!(e.contains("not an object"), "{e}");
        let e = parse(r#"{"Results":[]}"#).unwrap_err();
        assert!(e.contains("no SchemaVersion"), "{e}");
        let e = parse(r#"{"SchemaVersion":1}"#).unwrap_err();
        assert!(e.contains("SchemaVersion 1 is not supported"), "{e}");
        let e = parse(r#"{"SchemaVersion":"2"}"#).unwrap_err();
        assert!(e.contains("SchemaVersion \"2\""), "{e}");
        let e = parse(r#"{"SchemaVersion":2,"Results":{"a":1}}"#).unwrap_err();
        assert!(e.starts_with("unexpected Trivy report structure"), "{e}");
    }
}
