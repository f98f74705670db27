//! The stage log: `log` import calls and the guest's stdout/stderr, masked,
//! bounded, and forwarded live to whoever watches the run.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::caps::secrets::Masker;
use crate::runtime::bindings::{ci::stage::log::Host, Level};

/// Default budget for one stage's log (all streams together).
pub const DEFAULT_LOG_LIMIT: usize = 2 * 1024 * 1024;
/// A single line longer than this is cut.
const MAX_LINE: usize = 16 * 1024;
/// Budget for output of work the host does for a stage (builds, containers).
pub const EXTERNAL_LOG_LIMIT: usize = 8 * 1024 * 1024;

fn truncate_line(text: &mut String) {
    if text.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" …[line cut]");
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    /// Milliseconds since the stage started.
    pub at_ms: u64,
    /// "trace".."error" for `log` calls, "stdout"/"stderr" for output.
    pub stream: String,
    pub text: String,
}

/// Receives log lines as they are written (console, `--follow`).
pub type LogSink = Arc<dyn Fn(&str, &LogLine) + Send + Sync>;

struct Inner {
    lines: Vec<LogLine>,
    used: usize,
    exceeded: bool,
    /// Output of work the host does for the stage (container, build).
    external_used: usize,
    external_truncated: bool,
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
}

/// Shared handle; clones write to the same log.
#[derive(Clone)]
pub struct StageLog {
    stage: Arc<str>,
    inner: Arc<Mutex<Inner>>,
    limit: usize,
    started: Instant,
    masker: Masker,
    sink: Option<LogSink>,
}

/// Returned when a stage writes past its budget; it ends the stage.
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}` exceeded its log limit of {limit} bytes")]
pub struct LogLimitExceeded {
    pub stage: String,
    pub limit: usize,
}

impl StageLog {
    pub fn new(stage: &str, limit: usize, masker: Masker, sink: Option<LogSink>) -> Self {
        Self {
            stage: stage.into(),
            inner: Arc::new(Mutex::new(Inner {
                lines: Vec::new(),
                used: 0,
                exceeded: false,
                external_used: 0,
                external_truncated: false,
                partial_stdout: Vec::new(),
                partial_stderr: Vec::new(),
            })),
            limit,
            started: Instant::now(),
            masker,
            sink,
        }
    }

    /// Append one line from `stream`. Errors once the budget is spent.
    pub fn push(&self, stream: &str, text: &str) -> Result<(), LogLimitExceeded> {
        let mut inner = self.inner.lock().unwrap();
        self.push_locked(&mut inner, stream, text)
    }

    fn push_locked(
        &self,
        inner: &mut Inner,
        stream: &str,
        text: &str,
    ) -> Result<(), LogLimitExceeded> {
        if inner.exceeded {
            return Err(self.exceeded());
        }
        let cost = text.len() + 1;
        if inner.used + cost > self.limit {
            inner.exceeded = true;
            let note = LogLine {
                at_ms: self.started.elapsed().as_millis() as u64,
                stream: "host".into(),
                text: format!("log truncated: {}", self.exceeded()),
            };
            self.emit(&note);
            inner.lines.push(note);
            return Err(self.exceeded());
        }
        inner.used += cost;
        let mut text = self.masker.mask(text);
        truncate_line(&mut text);
        let line = LogLine {
            at_ms: self.started.elapsed().as_millis() as u64,
            stream: stream.to_string(),
            text,
        };
        self.emit(&line);
        inner.lines.push(line);
        Ok(())
    }

    fn emit(&self, line: &LogLine) {
        if let Some(sink) = &self.sink {
            sink(&self.stage, line);
        }
    }

    fn exceeded(&self) -> LogLimitExceeded {
        LogLimitExceeded {
            stage: self.stage.to_string(),
            limit: self.limit,
        }
    }

    /// A line of output of something the host runs for the stage (a build,
    /// a container). It has its own budget: chatty tools are cut, not
    /// fatal, and cannot spend the plugin's own log budget.
    pub fn append_external(&self, stream: &str, text: &str) {
        let mut inner = self.inner.lock().unwrap();
        if inner.external_truncated {
            return;
        }
        let cost = text.len() + 1;
        let at_ms = self.started.elapsed().as_millis() as u64;
        if inner.external_used + cost > EXTERNAL_LOG_LIMIT {
            inner.external_truncated = true;
            let note = LogLine {
                at_ms,
                stream: "host".into(),
                text: format!("{stream} output truncated after {EXTERNAL_LOG_LIMIT} bytes"),
            };
            self.emit(&note);
            inner.lines.push(note);
            return;
        }
        inner.external_used += cost;
        let mut text = self.masker.mask(text);
        truncate_line(&mut text);
        let line = LogLine {
            at_ms,
            stream: stream.to_string(),
            text,
        };
        self.emit(&line);
        inner.lines.push(line);
    }

    /// Raw bytes from stdout/stderr: split into lines, keep the tail.
    fn write_stream(&self, stdout: bool, bytes: &[u8]) -> Result<(), LogLimitExceeded> {
        let mut inner = self.inner.lock().unwrap();
        let stream = if stdout { "stdout" } else { "stderr" };
        let mut buf = std::mem::take(if stdout {
            &mut inner.partial_stdout
        } else {
            &mut inner.partial_stderr
        });
        buf.extend_from_slice(bytes);
        let mut result = Ok(());
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            if let Err(e) = self.push_locked(&mut inner, stream, text.trim_end_matches('\r')) {
                result = Err(e);
                buf.clear();
                break;
            }
        }
        // A line that never ends still counts against the budget.
        if result.is_ok() && buf.len() > MAX_LINE {
            let text = String::from_utf8_lossy(&buf).to_string();
            buf.clear();
            result = self.push_locked(&mut inner, stream, &text);
        }
        *(if stdout {
            &mut inner.partial_stdout
        } else {
            &mut inner.partial_stderr
        }) = buf;
        result
    }

    /// Flush unterminated output and return every line.
    pub fn finish(&self) -> Vec<LogLine> {
        self.flush_partial().lines.clone()
    }

    /// Like `finish`, but hands the lines over (no copy).
    pub fn take(&self) -> Vec<LogLine> {
        std::mem::take(&mut self.flush_partial().lines)
    }

    /// Log what is left of unterminated stdout/stderr lines.
    fn flush_partial(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap();
        for stdout in [true, false] {
            let buf = std::mem::take(if stdout {
                &mut inner.partial_stdout
            } else {
                &mut inner.partial_stderr
            });
            if !buf.is_empty() {
                let text = String::from_utf8_lossy(&buf).to_string();
                let _ =
                    self.push_locked(&mut inner, if stdout { "stdout" } else { "stderr" }, &text);
            }
        }
        inner
    }

    pub fn limit_exceeded(&self) -> bool {
        self.inner.lock().unwrap().exceeded
    }

    /// A WASI stdout/stderr that writes into this log.
    pub fn output(&self, stdout: bool) -> StageOutput {
        StageOutput {
            log: self.clone(),
            stdout,
        }
    }
}

pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl Host for StageLog {
    async fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        for line in message.lines() {
            self.push(level_name(level), line)?;
        }
        Ok(())
    }
}

/// The guest's stdout or stderr.
#[derive(Clone)]
pub struct StageOutput {
    log: StageLog,
    stdout: bool,
}

impl IsTerminal for StageOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StageOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for StageOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for StageOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.log
            .write_stream(self.stdout, &bytes)
            .map_err(|e| StreamError::Trap(e.into()))
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        if self.log.limit_exceeded() {
            return Err(StreamError::Trap(self.log.exceeded().into()));
        }
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for StageOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = self
            .log
            .write_stream(self.stdout, buf)
            .map(|_| buf.len())
            .map_err(std::io::Error::other);
        std::task::Poll::Ready(r)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_stream_output_into_masked_lines() {
        let log = StageLog::new("s", 1024, Masker::new(["hunter2".to_string()]), None);
        log.write_stream(true, b"hello\npass=hunter2\npart")
            .unwrap();
        log.write_stream(true, b"ial\n").unwrap();
        let lines: Vec<String> = log.finish().into_iter().map(|l| l.text).collect();
        assert_eq!(lines, ["hello", "pass=***", "partial"]);
    }

    #[test]
    fn budget_is_enforced_and_noted() {
        let log = StageLog::new("flood", 100, Masker::default(), None);
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = log.push("info", "0123456789") {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("limit must trip");
        assert!(err
            .to_string()
            .contains("`flood` exceeded its log limit of 100 bytes"));
        let lines = log.finish();
        assert!(lines.last().unwrap().text.starts_with("log truncated"));
        assert!(
            log.push("info", "x").is_err(),
            "stays closed after the limit"
        );
    }
}
