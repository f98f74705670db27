//! The stage log: `log` import calls and the guest's stdout/stderr, masked,
//! bounded, and forwarded live to whoever watches the run.
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::caps::capability::{Cap, Capability, GrantCx, NoGrant, StageEnv};
use crate::caps::secrets::Masker;
use crate::wit::{ci::stage::log::Host, Level};

/// Default budget for one stage's log (all streams together).
pub const DEFAULT_LOG_LIMIT: usize = 2 * 1024 * 1024;
/// A single line longer than this is cut. Lines are masked before they are
/// cut, so a secret that straddles the cut is masked whole.
pub const MAX_LINE: usize = 16 * 1024;
/// What a cut line ends with.
pub const LINE_CUT: &str = " …[line cut]";
/// Budget for output of work the host does for a stage (builds, containers).
pub const EXTERNAL_LOG_LIMIT: usize = 8 * 1024 * 1024;

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
    stdout: Partial,
    stderr: Partial,
}

/// The unterminated line of stdout or stderr.
#[derive(Default)]
struct Partial {
    /// At most [`MAX_LINE`] bytes plus how far a secret can reach past the
    /// cut (the masker's reach).
    buf: Vec<u8>,
    /// The line was too long: it has been logged, cut, and the rest of it
    /// (counted against the budget) is dropped until its newline.
    skipping: bool,
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
                stdout: Partial::default(),
                stderr: Partial::default(),
            })),
            limit,
            started: Instant::now(),
            masker,
            sink,
        }
    }

    /// Append one line from `stream`. Errors once the budget is spent.
    pub fn push(&self, stream: &str, text: &str) -> Result<(), LogLimitExceeded> {
        let mut inner = self.inner.lock();
        self.push_locked(&mut inner, stream, text)
    }

    fn push_locked(
        &self,
        inner: &mut Inner,
        stream: &str,
        text: &str,
    ) -> Result<(), LogLimitExceeded> {
        self.charge(inner, text.len() + 1)?;
        let line = LogLine {
            at_ms: self.started.elapsed().as_millis() as u64,
            stream: stream.to_string(),
            text: self.masker.mask_cut(text, MAX_LINE, LINE_CUT),
        };
        self.emit(&line);
        inner.lines.push(line);
        Ok(())
    }

    /// Count `cost` bytes against the budget; past it, note it once and
    /// fail from then on.
    fn charge(&self, inner: &mut Inner, cost: usize) -> Result<(), LogLimitExceeded> {
        if inner.exceeded {
            return Err(self.exceeded());
        }
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
        let mut inner = self.inner.lock();
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
        let line = LogLine {
            at_ms,
            stream: stream.to_string(),
            text: self.masker.mask_cut(text, MAX_LINE, LINE_CUT),
        };
        self.emit(&line);
        inner.lines.push(line);
    }

    /// Raw bytes from stdout/stderr: split into lines, keep the tail.
    fn write_stream(&self, stdout: bool, bytes: &[u8]) -> Result<(), LogLimitExceeded> {
        let mut inner = self.inner.lock();
        let stream = if stdout { "stdout" } else { "stderr" };
        let mut partial = std::mem::take(if stdout {
            &mut inner.stdout
        } else {
            &mut inner.stderr
        });
        let result = self.split_lines(&mut inner, stream, &mut partial, bytes);
        if result.is_err() {
            partial = Partial::default();
        }
        *(if stdout {
            &mut inner.stdout
        } else {
            &mut inner.stderr
        }) = partial;
        result
    }

    /// Log every line `bytes` completes. A line longer than [`MAX_LINE`] is
    /// logged (masked, then cut) as soon as enough of it has come to mask
    /// whatever starts before the cut; the rest of it is counted and
    /// dropped, never shown as a line of its own (which could start with
    /// the second half of a secret).
    fn split_lines(
        &self,
        inner: &mut Inner,
        stream: &str,
        partial: &mut Partial,
        mut bytes: &[u8],
    ) -> Result<(), LogLimitExceeded> {
        let window = MAX_LINE + self.masker.reach().max(1);
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let part = &bytes[..newline.unwrap_or(bytes.len())];
            bytes = &bytes[newline.map_or(bytes.len(), |i| i + 1)..];
            if partial.skipping {
                self.charge(inner, part.len())?;
            } else if partial.buf.len() + part.len() >= window {
                let keep = window - partial.buf.len();
                partial.buf.extend_from_slice(&part[..keep]);
                let text = String::from_utf8_lossy(&partial.buf).into_owned();
                partial.buf.clear();
                partial.skipping = true;
                self.push_locked(inner, stream, &text)?;
                self.charge(inner, part.len() - keep)?;
            } else {
                partial.buf.extend_from_slice(part);
                if newline.is_some() {
                    let text = String::from_utf8_lossy(&partial.buf).into_owned();
                    partial.buf.clear();
                    self.push_locked(inner, stream, text.trim_end_matches('\r'))?;
                }
            }
            if newline.is_some() {
                partial.skipping = false;
            }
        }
        Ok(())
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
    fn flush_partial(&self) -> parking_lot::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock();
        for stdout in [true, false] {
            let Partial { buf, skipping } = std::mem::take(if stdout {
                &mut inner.stdout
            } else {
                &mut inner.stderr
            });
            if !buf.is_empty() && !skipping {
                let text = String::from_utf8_lossy(&buf).into_owned();
                let _ =
                    self.push_locked(&mut inner, if stdout { "stdout" } else { "stderr" }, &text);
            }
        }
        inner
    }

    pub fn limit_exceeded(&self) -> bool {
        self.inner.lock().exceeded
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
    fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
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

impl Capability for StageLog {
    const NAME: &'static str = "log";
    type Raw = NoGrant;
    type Grant = ();
    type Decls = ();

    fn compile(_: &NoGrant, _: &(), _: &mut GrantCx<'_>) {}

    /// Every stage may log.
    fn covers(_: &(), _: Option<&str>) -> bool {
        true
    }

    fn link<T: Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        crate::wit::ci::stage::log::add_to_linker::<_, Cap<Self>>(linker, get)
    }

    /// The stage's log, shared with the executor that collects it.
    fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self> {
        Ok(env.log.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::secrets::MASK;

    #[test]
    fn splits_stream_output_into_masked_lines() {
        let log = StageLog::new("s", 1024, Masker::new(["hunter2".to_string()]), None);
        log.write_stream(true, b"hello\npass=hunter2\npart")
            .unwrap();
        log.write_stream(true, b"ial\n").unwrap();
        let lines: Vec<String> = log.finish().into_iter().map(|l| l.text).collect();
        assert_eq!(lines, ["hello", "pass=***", "partial"]);
    }

    const SECRET: &str = "tok-7a1b2c3d-e5f6";

    fn texts(log: &StageLog) -> Vec<String> {
        log.finish().into_iter().map(|l| l.text).collect()
    }

    fn assert_hidden(lines: &[String], what: &str) {
        for w in SECRET.as_bytes().windows(6) {
            let piece = std::str::from_utf8(w).unwrap();
            for l in lines {
                assert!(!l.contains(piece), "{what}: `{piece}` visible in {l:.80}");
            }
        }
    }

    /// A secret across the 16 KiB cut, whatever the writes' boundaries:
    /// masked in the cut line, and nothing of it after the cut.
    #[test]
    fn a_secret_across_the_line_cut_is_masked_on_both_sides() {
        let masker = Masker::new([SECRET.to_string()]);
        for start in MAX_LINE - SECRET.len()..MAX_LINE + 2 {
            let mut line = "x".repeat(start).into_bytes();
            line.extend_from_slice(SECRET.as_bytes());
            line.extend(std::iter::repeat_n(b'y', 30_000 - line.len()));
            line.extend_from_slice(b"\nnext\n");
            // Split where the secret is, and in the guest's 4 KiB pieces.
            let splits = [start + 3, start + SECRET.len() - 1, MAX_LINE, MAX_LINE + 1];
            for split in splits {
                let log = StageLog::new("s", 1 << 20, masker.clone(), None);
                log.write_stream(true, &line[..split]).unwrap();
                log.write_stream(true, &line[split..]).unwrap();
                let lines = texts(&log);
                assert_hidden(&lines, &format!("start {start}, split {split}"));
                assert_eq!(lines.len(), 2, "{start}/{split}: one cut line, then `next`");
                assert!(lines[0].ends_with(LINE_CUT));
                assert_eq!(lines[0].contains(MASK), start < MAX_LINE, "{start}");
                assert_eq!(lines[1], "next");
            }
            let log = StageLog::new("s", 1 << 20, masker.clone(), None);
            for piece in line.chunks(4096) {
                log.write_stream(false, piece).unwrap();
            }
            assert_hidden(&texts(&log), "4 KiB pieces");
            // The `log` import: whole lines, masked before the cut.
            let log = StageLog::new("s", 1 << 20, masker.clone(), None);
            log.push("info", std::str::from_utf8(&line[..30_000]).unwrap())
                .unwrap();
            let lines = texts(&log);
            assert_hidden(&lines, "push");
            assert!(lines[0].len() <= MAX_LINE + MASK.len() + LINE_CUT.len());
        }
    }

    #[test]
    fn the_dropped_rest_of_a_long_line_counts_against_the_budget() {
        let log = StageLog::new("s", 100_000, Masker::default(), None);
        let long = vec![b'z'; 90_000];
        log.write_stream(true, &long).unwrap();
        assert!(
            log.write_stream(true, &long).is_err(),
            "180,000 bytes > budget"
        );
        let lines = texts(&log);
        assert_eq!(lines[0].len(), MAX_LINE + LINE_CUT.len());
        assert!(lines.last().unwrap().starts_with("log truncated"));
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
