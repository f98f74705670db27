//! The audit trail: every capability call a stage makes (docker, http,
//! secrets, scan, git, ssh), allowed or denied, with its target and
//! outcome, kept in the stage's run record (`host audit RUN`).
//!
//! Targets and outcomes go through [`render`], the one function that turns
//! text into trail text: masked by the run's masker, whole (never just its
//! first line), control characters escaped, bounded with a marker. No
//! capability passes a secret *value* here: URLs are recorded as the plugin
//! wrote them (`${secret:NAME}` unexpanded), secrets by name.
//!
//! A target with a raw line break is refused before it is acted on
//! ([`refuse_line_breaks`]; http URLs, ssh and docker commands): what a
//! line-oriented tool or log would split must not be run.
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::caps::secrets::Masker;
use crate::wit::CapError;

/// Entries kept per stage; later calls are counted, not kept.
pub const MAX_ENTRIES: usize = 5_000;
/// Longest target text kept (characters, escapes included).
pub const MAX_TARGET: usize = 4096;
/// Longest outcome text kept.
const MAX_OUTCOME: usize = 300;

/// The one rendering of text for the trail (and for log lines naming a
/// target): masked first (so a value is found as it is), then every
/// control character escaped (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}` for
/// bidirectional overrides and line separators) and `\` doubled, so the
/// result is one line and an escape cannot be forged; at most `max`
/// characters, ending with `…[N more chars]` when cut.
pub fn render(masker: &Masker, text: &str, max: usize) -> String {
    let masked = masker.mask(text);
    let mut out = String::with_capacity(masked.len().min(max));
    let mut kept = 0;
    let mut chars = masked.chars();
    while let Some(c) = chars.next() {
        let piece = escape(c);
        kept += piece.chars().count();
        if kept > max {
            let left = 1 + chars.count();
            out.push_str(&format!("…[{left} more chars]"));
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// [`render`] with the target bound.
pub fn render_target(masker: &Masker, text: &str) -> String {
    render(masker, text, MAX_TARGET)
}

fn escape(c: char) -> std::borrow::Cow<'static, str> {
    match c {
        '\\' => "\\\\".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        c if (c as u32) < 0x80 && c.is_control() => format!("\\x{:02x}", c as u32).into(),
        c if c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c) =>
        {
            format!("\\u{{{:x}}}", c as u32).into()
        }
        c => c.to_string().into(),
    }
}

/// Refuse a target (an http URL, an ssh or docker command) holding a raw
/// line break (CR or LF): the call is not made, and the audit entry shows
/// the target escaped. `what` names it for the message (`the URL`).
pub fn refuse_line_breaks(what: &str, target: &str) -> Result<(), CapError> {
    if target.contains(['\n', '\r']) {
        return Err(CapError::Invalid(format!(
            "{what} contains a raw line break; escape or encode it"
        )));
    }
    Ok(())
}

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
            target: render(&self.masker, target, MAX_TARGET),
            allowed,
            outcome: render(&self.masker, &outcome, MAX_OUTCOME),
        };
        let mut inner = self.inner.lock();
        if inner.entries.len() < MAX_ENTRIES {
            inner.entries.push(entry);
        } else {
            inner.dropped += 1;
        }
    }

    /// Everything recorded (and a last entry counting what was not kept).
    pub fn entries(&self) -> Vec<AuditEntry> {
        let inner = self.inner.lock();
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
    use crate::wit::Denial;

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

    #[test]
    fn targets_are_whole_escaped_and_bounded() {
        let m = Masker::new(["hunter2".to_string(), "two\nlines".to_string()]);
        let a = Audit::new(m.clone(), 1);
        let no: Result<(), CapError> = Err(CapError::Invalid("x".into()));
        a.record(
            "ssh.exec",
            "ls\nrm -rf / \x1b[2J\r\t\\n hunter2 two\nlines \u{202e}x\0",
            &no,
            |_| String::new(),
        );
        let e = a.entries();
        assert_eq!(
            e[0].target,
            "ls\\nrm -rf / \\x1b[2J\\r\\t\\\\n *** *** \\u{202e}x\\x00"
        );
        // A long target is kept up to the bound, then says how much is cut.
        let long = format!("GET https://x/{}", "a".repeat(MAX_TARGET));
        let r = render_target(&m, &long);
        assert!(r.starts_with("GET https://x/aaaa"), "{r}");
        assert!(r.ends_with("…[14 more chars]"), "{r}");
        assert!(r.chars().count() < MAX_TARGET + 20);
        // An escape is never cut in half.
        let r = render(&m, "ab\n", 3);
        assert_eq!(r, "ab…[1 more chars]");
        // Outcomes are one line too.
        a.record::<()>(
            "docker.build",
            "x",
            &Err(CapError::Failed("a\nb".into())),
            |_| String::new(),
        );
        assert_eq!(a.entries()[1].outcome, "failed: a\\nb");
    }

    #[test]
    fn line_breaks_in_targets_are_refused() {
        assert!(refuse_line_breaks("the URL", "https://x/a").is_ok());
        for t in ["https://x/\nHost: y", "ls\rrm", "a\r\n"] {
            match refuse_line_breaks("the URL", t) {
                Err(CapError::Invalid(m)) => assert!(m.contains("raw line break"), "{m}"),
                other => panic!("{t:?}: {other:?}"),
            }
        }
    }
}
