//! How run records are shown to people, the same way by the console, the
//! `host runs`/`host logs`/`host audit` commands and the server's pages:
//! durations, times, refs, commits, status words, and stage-controlled
//! text made safe for a terminal.
use std::borrow::Cow;
use std::fmt::Write as _;

use crate::run::record::Status;

pub fn format_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// An RFC 3339 timestamp as `2026-12-01 18:20:01Z` (to the second), or as
/// given when it does not parse.
pub fn format_time(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => t
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .unwrap_or_else(|_| rfc3339.to_string()),
        Err(_) => rfc3339.to_string(),
    }
}

/// What a run builds, as a list shows it: `tag v1`, the branch, or `-`.
pub fn ref_name(branch: Option<&str>, tag: Option<&str>) -> String {
    match (tag, branch) {
        (Some(t), _) => format!("tag {t}"),
        (None, Some(b)) => b.to_string(),
        (None, None) => "-".into(),
    }
}

/// A commit as a list shows it: its first 8 characters.
pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// The word for a status: `warning` for a success that reported one.
pub fn status_word(status: Status, warning: bool) -> &'static str {
    if warning && status == Status::Success {
        "warning"
    } else {
        status.as_str()
    }
}

/// The first line of a summary or error, safe for the terminal.
pub fn first_line(s: &str) -> Cow<'_, str> {
    terminal_safe(s.lines().next().unwrap_or(""))
}

/// A stage's line in a table: the first line of its detail, after
/// `cached from run N` when its result was replayed.
pub fn stage_line(s: &crate::run::StageRecord) -> String {
    match &s.cached_from {
        Some(from) => format!("{from}  {}", first_line(s.detail())),
        None => first_line(s.detail()).into_owned(),
    }
}

/// Text a stage controls (log lines, summaries, errors) made safe to print
/// on a terminal: control characters (C0 but tab, DEL, C1) are shown as
/// `\x1b`-style escapes and bidirectional overrides and isolates as
/// `\u{202e}`, so nothing a stage writes can move the cursor, clear the
/// screen, set the window title, recolour or reorder what the operator
/// reads. Every stage-controlled text printed on a terminal goes through it.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{a}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_text_is_neutralized_for_the_terminal() {
        assert!(matches!(terminal_safe("plain\ttext é"), Cow::Borrowed(_)));
        assert_eq!(
            terminal_safe("\u{1b}[2J\u{1b}]0;t\u{7}a\rb\u{8}\u{7f}\u{9b}1m\u{202e}z\u{2066}"),
            "\\x1b[2J\\x1b]0;t\\x07a\\x0db\\x08\\x7f\\u{9b}1m\\u{202e}z\\u{2066}"
        );
        assert_eq!(first_line("ok\u{1b}[A\nsecond"), "ok\\x1b[A");
    }

    #[test]
    fn refs_commits_and_durations() {
        assert_eq!(ref_name(Some("main"), Some("v1")), "tag v1");
        assert_eq!(ref_name(Some("main"), None), "main");
        assert_eq!(ref_name(None, None), "-");
        assert_eq!(short_sha("0123456789abcdef"), "01234567");
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(format_duration(999), "999ms");
        assert_eq!(format_duration(1500), "1.5s");
        assert_eq!(format_duration(61_000), "1m01s");
        assert_eq!(
            format_time("2026-12-01T18:20:01.5Z"),
            "2026-12-01 18:20:01Z"
        );
        assert_eq!(format_time("now"), "now");
        assert_eq!(status_word(Status::Success, true), "warning");
        assert_eq!(status_word(Status::Failure, true), "failure");
    }
}
