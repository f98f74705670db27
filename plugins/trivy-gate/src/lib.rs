//! `trivy-gate` stage: a policy gate over a Trivy JSON report
//! (SchemaVersion 2): vulnerabilities, secrets and failed misconfiguration
//! checks at or above a severity threshold fail the stage.
//!
//! `with` keys:
//! - `report` — path of a Trivy JSON report in the workspace (relative, no
//!   `..`), **or** `image` — an image reference the host scans (`scan`
//!   grant) with `scanners` (default `["vuln", "secret"]`). Exactly one.
//! - `severity` — threshold (default `"HIGH"`): findings at this severity or
//!   above block, lower ones are warnings. One of UNKNOWN < LOW < MEDIUM <
//!   HIGH < CRITICAL (case-insensitive). A threshold, not a list of
//!   severities (`block = [...]` is not supported).
//! - `ignore-unfixed` (false) — vulnerabilities without a fixed version
//!   (`FixedVersion` absent/empty, or `Status` other than `fixed`) are
//!   ignored (counted in `ignored` and `ignored-unfixed`).
//! - `ignore` — list of `{ id, reason, expires? }` tables; `reason` is
//!   required, `expires` is `YYYY-MM-DD`. The entry applies while today
//!   (UTC) is before `expires` (Trivy's `exp:` meaning); from that date it
//!   ignores nothing and the report gets a warning.
//! - `ignore-file` — workspace path of a plain-text `.trivyignore` (one ID
//!   per line, `#` comments, `exp:YYYY-MM-DD`). YAML ignore files are not
//!   supported (a config error says so).
//! - `gate-secrets` (true), `gate-misconfig` (true) — when false, those
//!   findings never block; they are reported as warnings.
//! - `max-annotations` (100) — most annotations per group (blocking,
//!   warnings, expired ignore entries), then one "N more" annotation.
//!
//! Outputs: `blocking`, `critical`, `high`, `medium`, `low`, `unknown` (not
//! ignored findings by severity, all kinds), `ignored`, `ignored-unfixed`,
//! `secrets`, `vulnerabilities`, `misconfigurations` (not ignored, by kind),
//! `threshold`.
//!
//! An ignore rule matches a vulnerability ID (or vendor ID), a secret rule
//! ID or a misconfiguration ID (`DS-0002` or `AVD-DS-0002`). Secrets are
//! reported by rule, title and location only: their matched text is never
//! read into the plugin.

use std::path::Path;

use serde::Deserialize;
use stage_sdk::scan::{HostScan, Scan, ScanRequest};
use stage_sdk::{Annotation, ConfigKey, Context, PluginInfo, Report, Stage, StageError};

pub mod date;
pub mod gate;
pub mod ignore;
pub mod trivy;

use date::Date;
use gate::Policy;
use ignore::{Ignores, Rule};
use trivy::Severity;

/// Where the host mounts the workspace.
pub const WORKSPACE: &str = "/workspace";
/// Largest report or ignore file read.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Scanners the host's Trivy offers.
const SCANNERS: &[&str] = &["vuln", "secret", "misconfig", "license"];

/// One `with.ignore` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnoreEntry {
    pub id: String,
    pub reason: String,
    #[serde(default)]
    pub expires: Option<String>,
}

/// The `with` table. Optional keys get their defaults from `describe()`
/// (the SDK fills them in), so none are written here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    #[serde(default)]
    pub report: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    /// Filled with the declared default even with `report`: whether the
    /// user gave it is read from the raw table ([`user_gave`]).
    pub scanners: Vec<String>,
    pub severity: String,
    pub ignore_unfixed: bool,
    pub ignore: Vec<IgnoreEntry>,
    #[serde(default)]
    pub ignore_file: Option<String>,
    pub gate_secrets: bool,
    pub gate_misconfig: bool,
    pub max_annotations: usize,
}

/// Where the report comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A workspace path (normalised, relative).
    File(String),
    /// An image the host scans.
    Image {
        image: String,
        scanners: Vec<String>,
    },
}

impl Source {
    /// How messages name it.
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.clone(),
            Source::Image { image, .. } => format!("image {image}"),
        }
    }
}

/// A relative workspace path: no absolute path, no `..`.
pub fn workspace_path(key: &str, path: &str) -> Result<String, StageError> {
    let mut p = path.trim();
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    if p.is_empty() {
        return Err(StageError::config(format!("with.{key}: empty path")));
    }
    if p.starts_with('/') || p.starts_with('\\') {
        return Err(StageError::config(format!(
            "with.{key}: {path:?} must be relative to the workspace"
        )));
    }
    if p.split(['/', '\\']).any(|c| c == "..") {
        return Err(StageError::config(format!(
            "with.{key}: {path:?}: `..` leaves the workspace"
        )));
    }
    Ok(p.to_string())
}

fn read_file(workspace: &Path, rel: &str) -> Result<String, String> {
    let path = workspace.join(rel);
    let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than the {} MiB limit",
            meta.len(),
            MAX_FILE_BYTES / (1024 * 1024)
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// The checked configuration.
#[derive(Debug)]
pub struct Plan {
    pub source: Source,
    pub policy: Policy,
    pub rules: Vec<Rule>,
}

/// Checks the `with` table and reads the ignore file.
pub fn plan(ctx: &Context, workspace: &Path) -> Result<Plan, StageError> {
    let w: With = ctx.config_with_defaults()?;
    let source = source_of(&w, user_gave(ctx, "scanners")?)?;
    let threshold = Severity::parse(&w.severity).ok_or_else(|| {
        StageError::config(format!(
            "with.severity: {:?} is not a severity (CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN)",
            w.severity
        ))
    })?;
    let mut rules = ignore_rules(&w.ignore)?;
    if let Some(f) = &w.ignore_file {
        rules.append(&mut ignore_file_rules(workspace, f)?);
    }
    let targets_are_files = matches!(source, Source::File(_));
    Ok(Plan {
        source,
        policy: Policy {
            threshold,
            ignore_unfixed: w.ignore_unfixed,
            gate_secrets: w.gate_secrets,
            gate_misconfig: w.gate_misconfig,
            max_annotations: w.max_annotations,
            targets_are_files,
        },
        rules,
    })
}

/// Whether the user wrote `key` in the `with` table (not filled in from
/// its declared default).
fn user_gave(ctx: &Context, key: &str) -> Result<bool, StageError> {
    Ok(ctx.config_value()?.get(key).is_some())
}

/// `report` or `image`, exactly one; `scanners` (given by the user only
/// when `gave_scanners`) goes with `image` alone.
fn source_of(w: &With, gave_scanners: bool) -> Result<Source, StageError> {
    let image = w.image.as_deref().map(str::trim);
    match (&w.report, image) {
        (Some(_), Some(_)) => Err(StageError::config(
            "with: give either `report` (a Trivy JSON file in the workspace) or `image` (scanned by the host), not both",
        )),
        (None, None) => Err(StageError::config(
            "with: give `report` (a Trivy JSON file in the workspace) or `image` (an image for the host to scan)",
        )),
        (Some(r), None) => {
            if gave_scanners {
                return Err(StageError::config(
                    "with.scanners: only used with `image` (the report is already scanned)",
                ));
            }
            Ok(Source::File(workspace_path("report", r)?))
        }
        (None, Some(img)) => {
            if img.is_empty() {
                return Err(StageError::config("with.image: must not be empty"));
            }
            check_scanners(&w.scanners)?;
            Ok(Source::Image {
                image: img.to_string(),
                scanners: w.scanners.clone(),
            })
        }
    }
}

/// At least one scanner, each one the host's Trivy offers.
fn check_scanners(list: &[String]) -> Result<(), StageError> {
    if list.is_empty() {
        return Err(StageError::config(
            "with.scanners: give at least one scanner (vuln, secret, misconfig, license)",
        ));
    }
    if let Some(bad) = list.iter().find(|s| !SCANNERS.contains(&s.as_str())) {
        return Err(StageError::config(format!(
            "with.scanners: unknown scanner {bad:?} (expected one of: {})",
            SCANNERS.join(", ")
        )));
    }
    Ok(())
}

/// The `ignore` entries as rules: an id, a reason, maybe an end date.
fn ignore_rules(entries: &[IgnoreEntry]) -> Result<Vec<Rule>, StageError> {
    let mut rules = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let at = format!("with.ignore[{i}]");
        let id = e.id.trim();
        if id.is_empty() {
            return Err(StageError::config(format!("{at}.id: must not be empty")));
        }
        let reason = e.reason.trim();
        if reason.is_empty() {
            return Err(StageError::config(format!(
                "{at}.reason: say why {id} is ignored"
            )));
        }
        let expires = match &e.expires {
            None => None,
            Some(d) => {
                Some(Date::parse(d).map_err(|m| StageError::config(format!("{at}.expires: {m}")))?)
            }
        };
        rules.push(Rule {
            id: id.to_string(),
            reason: reason.to_string(),
            expires,
            origin: at,
        });
    }
    Ok(rules)
}

/// The rules of `ignore-file`, a plain-text .trivyignore in the workspace.
fn ignore_file_rules(workspace: &Path, file: &str) -> Result<Vec<Rule>, StageError> {
    let rel = workspace_path("ignore-file", file)?;
    let lower = rel.to_ascii_lowercase();
    if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        return Err(StageError::config(format!(
            "with.ignore-file: {rel}: YAML ignore files are not supported; use a plain .trivyignore or `ignore` entries"
        )));
    }
    let text = read_file(workspace, &rel)
        .map_err(|e| StageError::config(format!("with.ignore-file: {rel}: {e}")))?;
    ignore::parse_trivyignore(&rel, &text)
        .map_err(|e| StageError::config(format!("with.ignore-file: {e}")))
}

fn cannot(summary: String, title: &str, detail: String) -> Report {
    stage_sdk::log::error!("{summary}");
    Report::failed(summary).annotate(Annotation::error(title, detail))
}

/// Everything `run` does, with the scanner, the workspace and today given.
pub fn execute(
    ctx: &Context,
    scanner: &mut dyn Scan,
    workspace: &Path,
    today: Date,
) -> Result<Report, StageError> {
    let plan = plan(ctx, workspace)?;
    let name = plan.source.name();

    let text = match &plan.source {
        Source::File(rel) => match read_file(workspace, rel) {
            Ok(t) => t,
            Err(e) => {
                return Ok(cannot(
                    format!("cannot read the Trivy report {rel}: {e}"),
                    "unreadable Trivy report",
                    format!("{rel}: {e}"),
                ))
            }
        },
        Source::Image { image, scanners } => {
            stage_sdk::log::info!("scanning {image} ({})", scanners.join(", "));
            let req = ScanRequest {
                image: image.clone(),
                scanners: scanners.clone(),
            };
            match scanner.image(&req) {
                Ok(t) => t,
                Err(e) => {
                    let msg = e.message();
                    return Ok(cannot(
                        format!("could not scan {image}: {msg}"),
                        "scan failed",
                        format!("scan.image {image}: {msg}"),
                    ));
                }
            }
        }
    };

    let parsed = match trivy::parse(&text) {
        Ok(p) => p,
        Err(e) => {
            return Ok(cannot(
                format!("invalid Trivy report from {name}: {e}"),
                "invalid Trivy report",
                format!("{name}: {e}"),
            ))
        }
    };
    stage_sdk::log::info!(
        "{name}: {} results, {} findings{}",
        parsed.results,
        parsed.findings.len(),
        parsed
            .artifact
            .as_deref()
            .map(|a| format!(" (artifact {a})"))
            .unwrap_or_default()
    );

    let ignores = Ignores::new(plan.rules, today);
    let outcome = gate::evaluate(parsed.findings, &plan.policy, &ignores);
    for (f, v) in &outcome.findings {
        match v {
            gate::Verdict::Ignored { origin, reason } => {
                stage_sdk::log::info!("ignored {} in {} ({origin}: {reason})", f.id, f.target)
            }
            gate::Verdict::Unfixed => {
                stage_sdk::log::info!("ignored {} in {} (no fix, ignore-unfixed)", f.id, f.target)
            }
            _ => {}
        }
    }
    for r in &outcome.stale {
        if let Some(d) = r.expires {
            stage_sdk::log::warn!("ignore entry for {} expired on {d} ({})", r.id, r.origin);
        }
    }
    let report = gate::report(&outcome, &plan.policy);
    stage_sdk::log::info!("{}", report.summary);
    Ok(report)
}

struct TrivyGate;

impl Stage for TrivyGate {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "trivy-gate",
            env!("CARGO_PKG_VERSION"),
            "Fails the pipeline on vulnerabilities, secrets and misconfigurations at or above a severity in a Trivy JSON report",
        )
        .key(ConfigKey::optional_no_default(
            "report",
            "Trivy JSON report (SchemaVersion 2) in the workspace, e.g. \"reports/trivy.json\"; give this or `image`",
        ))
        .key(ConfigKey::optional_no_default(
            "image",
            "Image reference for the host to scan with Trivy (needs the `scan` grant); give this or `report`",
        ))
        .key(ConfigKey::optional(
            "scanners",
            "Trivy scanners used with `image`: vuln, secret, misconfig, license",
            "[\"vuln\",\"secret\"]",
        ))
        .key(ConfigKey::optional(
            "severity",
            "Threshold: findings at this severity or above block (CRITICAL, HIGH, MEDIUM, LOW, UNKNOWN); lower ones are warnings",
            "\"HIGH\"",
        ))
        .key(ConfigKey::optional(
            "ignore-unfixed",
            "Ignore vulnerabilities without a fixed version (FixedVersion absent or Status not \"fixed\")",
            "false",
        ))
        .key(ConfigKey::optional(
            "ignore",
            "Ignored findings: list of { id, reason, expires = \"YYYY-MM-DD\" (optional; the entry stops applying on that date) }",
            "[]",
        ))
        .key(ConfigKey::optional_no_default(
            "ignore-file",
            "Plain-text .trivyignore in the workspace (one ID per line, # comments, exp:YYYY-MM-DD); YAML is not supported",
        ))
        .key(ConfigKey::optional(
            "gate-secrets",
            "Secrets at or above the threshold block (false: they only warn)",
            "true",
        ))
        .key(ConfigKey::optional(
            "gate-misconfig",
            "Failed misconfiguration checks at or above the threshold block (false: they only warn)",
            "true",
        ))
        .key(ConfigKey::optional(
            "max-annotations",
            "Most annotations per group (blocking, warnings, expired ignore entries) before one \"N more\"",
            "100",
        ))
        .capability("scan?")
        .capability("workspace?")
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        execute(&ctx, &mut HostScan, Path::new(WORKSPACE), Date::today())
    }
}

stage_sdk::export_stage!(TrivyGate);

#[cfg(test)]
mod tests;
