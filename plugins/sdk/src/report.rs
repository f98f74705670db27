//! [`Report`] builder and [`Annotation`] helpers.

use crate::{Annotation, Level, ReportStatus, StageReport};

/// What `run` returns: the generated `stage-report` record with builder methods.
///
/// ```ignore
/// Report::passed("3 tags")
///     .output("tags", "1.2.3,latest")
///     .annotate(Annotation::warning("stale base image", "debian:11 is EOL"))
/// ```
pub type Report = StageReport;

impl StageReport {
    /// A report with `status` and `summary`, no outputs or annotations.
    pub fn new(status: ReportStatus, summary: impl Into<String>) -> Self {
        StageReport {
            status,
            summary: summary.into(),
            outputs: Vec::new(),
            annotations: Vec::new(),
        }
    }

    /// The stage passed.
    pub fn passed(summary: impl Into<String>) -> Self {
        Self::new(ReportStatus::Passed, summary)
    }

    /// The stage passed, but something is worth showing.
    pub fn warning(summary: impl Into<String>) -> Self {
        Self::new(ReportStatus::Warning, summary)
    }

    /// The stage ran and failed.
    pub fn failed(summary: impl Into<String>) -> Self {
        Self::new(ReportStatus::Failed, summary)
    }

    /// Sets output `key` (replacing an earlier value for the same key).
    pub fn output(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.outputs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.outputs.push((key, value)),
        }
        self
    }

    /// Adds an annotation.
    pub fn annotate(mut self, annotation: Annotation) -> Self {
        self.annotations.push(annotation);
        self
    }

    /// Changes the status (e.g. downgrade to `Warning` after the fact).
    pub fn with_status(mut self, status: ReportStatus) -> Self {
        self.status = status;
        self
    }

    /// Value of output `key`, if set.
    pub fn get_output(&self, key: &str) -> Option<&str> {
        self.outputs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Annotation {
    /// An annotation with no file/line.
    pub fn new(level: Level, title: impl Into<String>, message: impl Into<String>) -> Self {
        Annotation {
            level,
            title: title.into(),
            message: message.into(),
            file: None,
            line: None,
        }
    }

    /// `Level::Info` annotation.
    pub fn info(title: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Level::Info, title, message)
    }

    /// `Level::Warn` annotation.
    pub fn warning(title: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Level::Warn, title, message)
    }

    /// `Level::Error` annotation.
    pub fn error(title: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Level::Error, title, message)
    }

    /// Points at a file (relative to the workspace).
    pub fn file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Points at a line of that file.
    pub fn line(mut self, line: u32) -> Self {
        self.line = Some(line);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_status_outputs_and_annotations() {
        let r = Report::passed("ok")
            .output("a", "1")
            .output("b", "2")
            .output("a", "3")
            .annotate(Annotation::error("t", "m").file("src/x.rs").line(4));
        assert_eq!(r.status, ReportStatus::Passed);
        assert_eq!(r.summary, "ok");
        assert_eq!(
            r.outputs,
            vec![("a".to_string(), "3".to_string()), ("b".into(), "2".into())]
        );
        assert_eq!(r.get_output("b"), Some("2"));
        assert_eq!(r.annotations[0].level, Level::Error);
        assert_eq!(r.annotations[0].line, Some(4));
        assert_eq!(Report::failed("x").status, ReportStatus::Failed);
        assert_eq!(
            Report::warning("x")
                .with_status(ReportStatus::Failed)
                .status,
            ReportStatus::Failed
        );
    }
}
