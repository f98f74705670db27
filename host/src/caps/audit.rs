//! The audit trail: every capability call a stage makes (docker, http,
//! secrets, scan, git, ssh), allowed or denied, with its target and
//! outcome, kept in the stage's run record (`host audit RUN`).
//!
//! Targets and outcomes go through the run's masker, and no capability
//! passes a secret *value* here: URLs are recorded as the plugin wrote them
//! (`${secret:NAME}` unexpanded), secrets by name.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::caps::secrets::Masker;
use crate::runtime::bindings::CapError;

/// Entries kept per stage; later calls are counted, not kept.
pub const MAX_ENTRIES: usize = 5_000;
/// Longest target or outcome text kept.
const MAX_TEXT: usize = 300;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Which attempt of the stage made the call (1 unless it was retried).
    pub attempt: u32,
    /// Milliseconds since the stage's attempt started.
    pub at_ms: u64,
    /// `http`, `secrets`, `secrets-read`, `scan`, `docker.build`, …
    pub capability: String,
    pub target: String,
    /// False when the grants refused the call (it went nowhere).
    pub allowed: bool,
    /// `ok` (with a detail) or the error, one line.
    pub outcome: String,
}

struct Inner {
    entries: Vec<AuditEntry>,
    dropped: usize,
}

/// One stage attempt's trail; clones share it.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Mutex<Inner>>,
    started: Instant,
    masker: Masker,
    attempt: u32,
}

impl Default for Audit {
    /// A trail nobody reads (`describe`, unit tests).
    fn default() -> Self {
        Self::new(Masker::default(), 0)
    }
}

impl Audit {
    pub fn new(masker: Masker, attempt: u32) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: Vec::new(),
                dropped: 0,
            })),
            started: Instant::now(),
            masker,
            attempt,
        }
    }

    /// Record a call that had no error path (e.g. listing secret names).
    pub fn note(&self, capability: &str, target: &str, outcome: &str) {
        self.record::<()>(capability, target, &Ok(()), |_| outcome.to_string());
    }

    fn clean(&self, s: &str) -> String {
        let s = self.masker.mask(s.lines().next().unwrap_or(""));
        if s.chars().count() > MAX_TEXT {
            let mut t: String = s.chars().take(MAX_TEXT).collect();
            t.push('…');
            t
        } else {
            s
        }
    }

    /// Record one call and how it ended; `ok` describes a success.
    pub fn record<T>(
        &self,
        capability: &str,
        target: &str,
        result: &Result<T, CapError>,
        ok: impl FnOnce(&T) -> String,
    ) {
        let (allowed, outcome) = match result {
            Ok(v) => (true, ok(v)),
            Err(e @ CapError::Denied(_)) => (false, crate::caps::describe(e)),
            Err(e) => (true, crate::caps::describe(e)),
        };
        let entry = AuditEntry {
            attempt: self.attempt,
            at_ms: self.started.elapsed().as_millis() as u64,
            capability: capability.to_string(),
            target: self.clean(target),
            allowed,
            outcome: self.clean(&outcome),
        };
        let mut inner = self.inner.lock().unwrap();
        if inner.entries.len() < MAX_ENTRIES {
            inner.entries.push(entry);
        } else {
            inner.dropped += 1;
        }
    }

    /// Everything recorded (and a last entry counting what was not kept).
    pub fn entries(&self) -> Vec<AuditEntry> {
        let inner = self.inner.lock().unwrap();
        let mut out = inner.entries.clone();
        if inner.dropped > 0 {
            out.push(AuditEntry {
                attempt: self.attempt,
                at_ms: self.started.elapsed().as_millis() as u64,
                capability: "audit".into(),
                target: String::new(),
                allowed: true,
                outcome: format!(
                    "{} more calls were made but not kept (limit {MAX_ENTRIES})",
                    inner.dropped
                ),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::Denial;

    #[test]
    fn entries_are_masked_and_bounded() {
        let a = Audit::new(Masker::new(["hunter2".to_string()]), 1);
        let ok: Result<u16, CapError> = Ok(200);
        a.record("http", "https://x/?t=hunter2", &ok, |s| format!("ok: {s}"));
        let no: Result<(), CapError> = Err(CapError::Denied(Denial {
            stage: "s".into(),
            capability: "http".into(),
            target: "https://evil/".into(),
        }));
        a.record("http", "https://evil/", &no, |_| String::new());
        let e = a.entries();
        assert_eq!(e[0].target, "https://x/?t=***");
        assert_eq!((e[0].allowed, e[0].outcome.as_str()), (true, "ok: 200"));
        assert!(!e[1].allowed && e[1].outcome.starts_with("denied:"));
        for _ in 0..MAX_ENTRIES {
            a.record("http", "x", &ok, |_| "ok".into());
        }
        let e = a.entries();
        assert_eq!(e.len(), MAX_ENTRIES + 1);
        assert!(e.last().unwrap().outcome.starts_with("2 more calls"));
    }
}
