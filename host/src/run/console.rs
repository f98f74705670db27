//! What a person sees while a run goes: one line per stage event, the
//! stage's log lines prefixed with its name, and a summary table at the end.
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use parking_lot::Mutex;

use crate::caps::log::LogLine;
use crate::run::executor::RunObserver;
use crate::run::record::{RunRecord, StageRecord, Status};

pub struct Console {
    /// Print stage log lines as they come.
    pub show_logs: bool,
    color: bool,
    out: Mutex<std::io::Stderr>,
    width: usize,
}

impl Console {
    pub fn new(show_logs: bool, stage_names: &[String]) -> Self {
        Self {
            show_logs,
            color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            out: Mutex::new(std::io::stderr()),
            width: stage_names.iter().map(|n| n.len()).max().unwrap_or(8),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn status_word(&self, s: Status, warning: bool) -> String {
        let (code, word) = match s {
            Status::Success if warning => ("33", "✔ warning"),
            Status::Success => ("32", "✔ success"),
            Status::Failure => ("31", "✘ failure"),
            Status::Skipped => ("90", "○ skipped"),
            Status::Cancelled => ("33", "■ cancelled"),
            Status::Running => ("36", "▶ running"),
            Status::Pending => ("90", "· pending"),
            Status::Queued => ("90", "· queued"),
        };
        self.paint(code, word)
    }

    fn line(&self, text: &str) {
        let mut out = self.out.lock();
        let _ = writeln!(out, "{text}");
    }

    /// The table printed when the run ends.
    pub fn summary(&self, run: &RunRecord) {
        let w = self.width.max(5);
        let mut text = format!(
            "\n{} #{} ({})\n{:<w$}  {:<11}  {:>9}  {}\n",
            run.pipeline, run.build_number, run.id, "STAGE", "STATUS", "DURATION", "SUMMARY"
        );
        for s in &run.stages {
            let detail = if s.summary.is_empty() {
                s.error.clone().unwrap_or_default()
            } else {
                s.summary.clone()
            };
            // Pad the status before colouring so columns line up.
            let status = format!("{:<11}", plain_status(s));
            let status = self.paint(status_code(s), &status);
            text.push_str(&format!(
                "{:<w$}  {status}  {:>9}  {}\n",
                s.name,
                format_duration(s.duration_ms),
                first_line(&detail)
            ));
        }
        let overall = self.status_word(run.status, false);
        text.push_str(&format!(
            "\nrun {overall} in {}\n",
            format_duration(run.duration_ms)
        ));
        self.line(&text);
    }
}

fn plain_status(s: &StageRecord) -> String {
    if s.warning && s.status == Status::Success {
        "warning".into()
    } else {
        s.status.to_string()
    }
}

fn status_code(s: &StageRecord) -> &'static str {
    match s.status {
        Status::Success if s.warning => "33",
        Status::Success => "32",
        Status::Failure => "31",
        Status::Cancelled => "33",
        _ => "90",
    }
}

/// The first line of a summary or error, safe for the terminal.
fn first_line(s: &str) -> Cow<'_, str> {
    terminal_safe(s.lines().next().unwrap_or(""))
}

/// Text a stage controls (log lines, summaries, errors) made safe to print
/// on a terminal: control characters (C0 but tab, DEL, C1) are shown as
/// `\x1b`-style escapes and bidirectional overrides and isolates as
/// `\u{202e}`, so nothing a stage writes can move the cursor, clear the
/// screen, set the window title, recolour or reorder what the operator
/// reads. Every stage-controlled text the console prints goes through it.
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

pub fn format_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

impl RunObserver for Console {
    fn stage_started(&self, stage: &str, attempt: u32) {
        let what = if attempt > 1 {
            format!("▶ retry {attempt}")
        } else {
            "▶ started".to_string()
        };
        self.line(&format!(
            "{:<w$}  {}",
            stage,
            self.paint("36", &what),
            w = self.width
        ));
    }

    fn approval_requested(
        &self,
        run_id: &str,
        stage: &str,
        environment: &str,
        timeout: std::time::Duration,
    ) {
        self.line(&format!(
            "{:<w$}  {}  deploying to `{environment}` needs approval (times out in {}):\n{:<w$}    approve: host approve {run_id} {stage}\n{:<w$}    reject:  host reject {run_id} {stage} --comment \"why\"",
            stage,
            self.paint("35", "⏸ waiting"),
            format_duration(timeout.as_millis() as u64),
            "",
            "",
            w = self.width
        ));
    }

    fn stage_log(&self, stage: &str, line: &LogLine) {
        if self.show_logs {
            let prefix = self.paint("90", &format!("{stage:>w$} │", w = self.width));
            self.line(&format!("{prefix} {}", terminal_safe(&line.text)));
        }
    }

    fn stage_finished(&self, r: &StageRecord) {
        let detail = if r.summary.is_empty() {
            r.error.clone().unwrap_or_default()
        } else {
            r.summary.clone()
        };
        self.line(&format!(
            "{:<w$}  {}  {}  {}",
            r.name,
            self.status_word(r.status, r.warning),
            format_duration(r.duration_ms),
            first_line(&detail),
            w = self.width
        ));
    }
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
}
