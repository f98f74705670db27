//! The policy: which findings block, which only warn, which are ignored;
//! and the stage report built from that.

use std::collections::BTreeMap;

use stage_sdk::{Annotation, Report, ReportStatus};

use crate::ignore::{Ignores, Rule};
use crate::trivy::{Finding, Kind, Severity};

/// Longest annotation message.
const MAX_MESSAGE: usize = 1024;

/// The gate's settings (from the `with` table).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Findings at this severity or above block.
    pub threshold: Severity,
    /// Vulnerabilities without a fix never block (nor warn).
    pub ignore_unfixed: bool,
    /// Secrets can block (else they only warn).
    pub gate_secrets: bool,
    /// Failed misconfiguration checks can block (else they only warn).
    pub gate_misconfig: bool,
    /// Most annotations per group (blocking, warnings, expired entries).
    pub max_annotations: usize,
    /// Annotations may point at `Target` as a workspace file (the report
    /// comes from the workspace, not from an image).
    pub targets_are_files: bool,
}

/// What the policy makes of one finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fails the stage.
    Blocking,
    /// Below the threshold: a warning.
    Below,
    /// A secret or misconfiguration whose gate is off: a warning.
    NotGated,
    /// Matched an active ignore rule (its origin and reason).
    Ignored { origin: String, reason: String },
    /// A vulnerability without a fix, with `ignore-unfixed`.
    Unfixed,
}

/// Every finding with its verdict.
#[derive(Debug)]
pub struct Outcome {
    pub findings: Vec<(Finding, Verdict)>,
    pub threshold: Severity,
    /// Expired ignore rules no active rule renews.
    pub stale: Vec<Rule>,
}

pub fn evaluate(findings: Vec<Finding>, policy: &Policy, ignores: &Ignores) -> Outcome {
    let mut out: Vec<(Finding, Verdict)> = findings
        .into_iter()
        .map(|f| {
            let verdict = if let Some(rule) = ignores.matching(&f) {
                Verdict::Ignored {
                    origin: rule.origin.clone(),
                    reason: rule.reason.clone(),
                }
            } else if policy.ignore_unfixed && f.is_unfixed() {
                Verdict::Unfixed
            } else if (f.kind == Kind::Secret && !policy.gate_secrets)
                || (f.kind == Kind::Misconfiguration && !policy.gate_misconfig)
            {
                Verdict::NotGated
            } else if f.severity >= policy.threshold {
                Verdict::Blocking
            } else {
                Verdict::Below
            };
            (f, verdict)
        })
        .collect();
    // Most severe first; stable, so the report's order breaks ties.
    out.sort_by_key(|(f, _)| std::cmp::Reverse(f.severity));
    Outcome {
        findings: out,
        threshold: policy.threshold,
        stale: ignores.stale().into_iter().cloned().collect(),
    }
}

/// Counts derived from an [`Outcome`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub blocking: usize,
    /// Not ignored findings (blocking, below the threshold or not gated) by severity.
    pub by_severity: BTreeMap<Severity, usize>,
    pub blocking_by_severity: BTreeMap<Severity, usize>,
    pub below_by_severity: BTreeMap<Severity, usize>,
    pub not_gated: BTreeMap<Kind, usize>,
    /// Ignored by a rule or as unfixed.
    pub ignored: usize,
    pub ignored_unfixed: usize,
    /// Not ignored, by kind.
    pub by_kind: BTreeMap<Kind, usize>,
}

impl Outcome {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for (f, v) in &self.findings {
            match v {
                Verdict::Ignored { .. } => {
                    c.ignored += 1;
                    continue;
                }
                Verdict::Unfixed => {
                    c.ignored += 1;
                    c.ignored_unfixed += 1;
                    continue;
                }
                Verdict::Blocking => {
                    c.blocking += 1;
                    *c.blocking_by_severity.entry(f.severity).or_default() += 1;
                }
                Verdict::Below => *c.below_by_severity.entry(f.severity).or_default() += 1,
                Verdict::NotGated => *c.not_gated.entry(f.kind).or_default() += 1,
            }
            *c.by_severity.entry(f.severity).or_default() += 1;
            *c.by_kind.entry(f.kind).or_default() += 1;
        }
        c
    }

    /// IDs of the blocking findings, in report order (duplicates kept:
    /// one per package/target).
    pub fn blocking_ids(&self) -> Vec<&str> {
        self.findings
            .iter()
            .filter(|(_, v)| *v == Verdict::Blocking)
            .map(|(f, _)| f.id.as_str())
            .collect()
    }
}

/// `2 CRITICAL, 1 HIGH` (highest first, zeros left out).
fn by_severity(map: &BTreeMap<Severity, usize>) -> String {
    Severity::DESCENDING
        .iter()
        .filter_map(|s| {
            map.get(s)
                .filter(|n| **n > 0)
                .map(|n| format!("{n} {}", s.as_str()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The one-line summary, e.g.
/// `blocked: 2 CRITICAL (4 MEDIUM below HIGH)` or
/// `passed: 0 blocking (4 MEDIUM below HIGH; 3 ignored, 1 unfixed)`.
pub fn summary(outcome: &Outcome, c: &Counts) -> String {
    let head = if c.blocking > 0 {
        format!("blocked: {}", by_severity(&c.blocking_by_severity))
    } else {
        "passed: 0 blocking".to_string()
    };
    let mut parts = Vec::new();
    if !c.below_by_severity.is_empty() {
        parts.push(format!(
            "{} below {}",
            by_severity(&c.below_by_severity),
            outcome.threshold.as_str()
        ));
    }
    for (kind, n) in &c.not_gated {
        parts.push(format!("{n} {} not gated", kind.noun(*n)));
    }
    if c.ignored > 0 {
        let mut s = format!("{} ignored", c.ignored);
        if c.ignored_unfixed > 0 {
            s.push_str(&format!(", {} unfixed", c.ignored_unfixed));
        }
        parts.push(s);
    }
    if !outcome.stale.is_empty() {
        let n = outcome.stale.len();
        parts.push(format!(
            "{n} expired ignore {}",
            if n == 1 { "entry" } else { "entries" }
        ));
    }
    if parts.is_empty() {
        head
    } else {
        format!("{head} ({})", parts.join("; "))
    }
}

fn annotation(f: &Finding, error: bool, policy: &Policy) -> Annotation {
    let msg = clip(&f.message());
    let mut a = if error {
        Annotation::error(f.id.clone(), msg)
    } else {
        Annotation::warning(f.id.clone(), msg)
    };
    let file_like = matches!(f.kind, Kind::Secret | Kind::Misconfiguration)
        || f.class.as_deref() == Some("lang-pkgs");
    if policy.targets_are_files && file_like && !f.target.starts_with('(') {
        a = a.file(f.target.clone());
        if let Some(l) = f.line {
            a = a.line(l);
        }
    }
    a
}

/// Annotations of `items`, at most `max`, then one "N more" annotation.
fn capped<'a>(
    items: impl Iterator<Item = &'a Finding>,
    error: bool,
    policy: &Policy,
    what: &str,
    out: &mut Vec<Annotation>,
) {
    let mut more = 0usize;
    for (i, f) in items.enumerate() {
        if i < policy.max_annotations {
            out.push(annotation(f, error, policy));
        } else {
            more += 1;
        }
    }
    if more > 0 {
        let title = format!("{more} more {what}");
        let msg = format!(
            "only the first {} are annotated (max-annotations)",
            policy.max_annotations
        );
        out.push(if error {
            Annotation::error(title, msg)
        } else {
            Annotation::warning(title, msg)
        });
    }
}

/// The stage report: failed with any blocking finding, warning with
/// findings below the threshold (or not gated) or expired ignore entries,
/// passed otherwise.
pub fn report(outcome: &Outcome, policy: &Policy) -> Report {
    let c = outcome.counts();
    let status = if c.blocking > 0 {
        ReportStatus::Failed
    } else if !c.below_by_severity.is_empty()
        || !c.not_gated.is_empty()
        || !outcome.stale.is_empty()
    {
        ReportStatus::Warning
    } else {
        ReportStatus::Passed
    };

    let mut annotations = Vec::new();
    capped(
        outcome
            .findings
            .iter()
            .filter(|(_, v)| *v == Verdict::Blocking)
            .map(|(f, _)| f),
        true,
        policy,
        "blocking findings",
        &mut annotations,
    );
    for (i, rule) in outcome.stale.iter().enumerate() {
        if i == policy.max_annotations {
            annotations.push(Annotation::warning(
                format!("{} more expired ignore entries", outcome.stale.len() - i),
                "only the first are annotated (max-annotations)",
            ));
            break;
        }
        if let Some(d) = rule.expires {
            annotations.push(Annotation::warning(
                format!("expired ignore: {}", rule.id),
                clip(&format!(
                    "ignore entry for {} expired on {d} ({}: {}); it no longer ignores anything",
                    rule.id, rule.origin, rule.reason
                )),
            ));
        }
    }
    capped(
        outcome
            .findings
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Below | Verdict::NotGated))
            .map(|(f, _)| f),
        false,
        policy,
        "findings below the threshold",
        &mut annotations,
    );

    let count = |s: Severity| c.by_severity.get(&s).copied().unwrap_or(0).to_string();
    let kind = |k: Kind| c.by_kind.get(&k).copied().unwrap_or(0).to_string();
    let mut r = Report::new(status, summary(outcome, &c))
        .output("blocking", c.blocking.to_string())
        .output("critical", count(Severity::Critical))
        .output("high", count(Severity::High))
        .output("medium", count(Severity::Medium))
        .output("low", count(Severity::Low))
        .output("unknown", count(Severity::Unknown))
        .output("ignored", c.ignored.to_string())
        .output("ignored-unfixed", c.ignored_unfixed.to_string())
        .output("secrets", kind(Kind::Secret))
        .output("vulnerabilities", kind(Kind::Vulnerability))
        .output("misconfigurations", kind(Kind::Misconfiguration))
        .output("threshold", policy.threshold.as_str());
    for a in annotations {
        r = r.annotate(a);
    }
    r
}
