//! What a person sees while a run goes: one line per stage event, the
//! stage's log lines prefixed with its name, and a summary table at the end.
use std::io::{IsTerminal, Write};

use parking_lot::Mutex;

use crate::caps::log::LogLine;
use crate::run::display::{format_duration, stage_line, status_word, terminal_safe};
use crate::run::observer::RunObserver;
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

    fn badge(&self, s: Status, warning: bool) -> String {
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
            // Pad the status before colouring so columns line up.
            let status = format!("{:<11}", status_word(s.status, s.warning));
            let status = self.paint(status_code(s), &status);
            text.push_str(&format!(
                "{:<w$}  {status}  {:>9}  {}\n",
                s.name,
                format_duration(s.duration_ms),
                stage_line(s)
            ));
        }
        let overall = self.badge(run.status, false);
        text.push_str(&format!(
            "\nrun {overall} in {}\n",
            format_duration(run.duration_ms)
        ));
        self.line(&text);
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
        self.line(&format!(
            "{:<w$}  {}  {}  {}",
            r.name,
            self.badge(r.status, r.warning),
            format_duration(r.duration_ms),
            stage_line(r),
            w = self.width
        ));
    }
}
