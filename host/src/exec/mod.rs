//! Every child process the host starts (`git`, `ssh`, `trivy`) goes
//! through here: a clean environment, bounded output, a deadline, and no
//! process outliving the call.
//!
//! - The environment is cleared; the tool gets `PATH`, `HOME` (pointed at a
//!   directory the host owns, never the user's) and `LC_ALL=C`, plus
//!   whatever its caller sets on the returned command.
//! - Each output stream keeps at most `max` bytes; the rest is read and
//!   dropped (so the tool never blocks on a full pipe) and
//!   [`Finished::stdout_truncated`] / [`Finished::stderr_truncated`] say so.
//! - The tool runs in a process group of its own. The whole group is
//!   killed when the tool exits (whatever it left running in the
//!   background goes with it), at the deadline, and when the call is
//!   dropped (a cancelled stage) or unwinds.
//!
//! [`run`] is for async callers, [`run_blocking`] for the few sync ones.
//! [`git`] builds the hardened `git` on top of this.
pub mod git;

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// What a finished (or killed) tool left.
#[derive(Debug)]
pub struct Finished {
    /// `None` when killed (deadline) or ended by a signal.
    pub code: Option<i32>,
    /// At most `max` bytes (what was read before the deadline, if killed).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    /// The tool wrote more than `max` bytes to stdout; `stdout` is cut.
    pub stdout_truncated: bool,
    /// The tool wrote more than `max` bytes to stderr; `stderr` is cut.
    pub stderr_truncated: bool,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last `n` lines of stderr on one line, for messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }
}

/// Where the tool's stdin comes from.
pub enum Input {
    None,
    Bytes(Vec<u8>),
    File(std::fs::File),
}

/// A command with nothing of the host's environment but `PATH` (and
/// `HOME`, pointed wherever the caller keeps the tool's files).
pub fn command(program: impl AsRef<OsStr>, home: &Path) -> Command {
    Command::from(command_blocking(program, home))
}

/// [`command`] for [`run_blocking`].
pub fn command_blocking(program: impl AsRef<OsStr>, home: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("LC_ALL", "C");
    c
}

/// Runs `cmd` to its end or to `deadline`, keeping at most `max` bytes of
/// each output stream (the rest is read and dropped so the tool never
/// blocks on a full pipe). Neither the tool nor anything it started in its
/// process group is left running when this returns or is dropped.
pub async fn run(
    mut cmd: Command,
    input: Input,
    deadline: Duration,
    max: usize,
) -> std::io::Result<Finished> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    match &input {
        Input::None => cmd.stdin(Stdio::null()),
        Input::Bytes(_) => cmd.stdin(Stdio::piped()),
        Input::File(f) => cmd.stdin(Stdio::from(f.try_clone()?)),
    };
    let mut child = cmd.spawn()?;
    // Declared after `child`: dropped (the group killed) before tokio's
    // kill_on_drop reaps the leader, so the group id is still ours.
    let mut group = Group::new(child.id());
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let feed = async move {
        if let (Input::Bytes(bytes), Some(mut w)) = (input, stdin) {
            // A tool that exits without reading its input is not an error
            // here; its exit code says what happened.
            let _ = w.write_all(&bytes).await;
            let _ = w.shutdown().await;
        }
    };
    let mut out = Bounded::new(max);
    let mut err = Bounded::new(max);
    let ended = tokio::time::timeout(deadline, async {
        let exited = async {
            let status = child.wait().await;
            // Whatever the tool left in its group goes with it, and stops
            // holding the output pipes open.
            group.kill();
            status
        };
        let (_, o, e, status) =
            tokio::join!(feed, out.fill_async(stdout), err.fill_async(stderr), exited);
        o?;
        e?;
        status
    })
    .await;
    match ended {
        Ok(status) => {
            let status = status?;
            Ok(out.finish(err, status.code(), false))
        }
        Err(_) => {
            // The leader is not reaped yet, so its group id cannot have
            // been reused: kill the group, then the leader (and reap it).
            group.kill();
            let _ = child.kill().await;
            Ok(out.finish(err, None, true))
        }
    }
}

/// [`run`] for sync callers: the same limits, the same guarantee that
/// nothing is left running (on return, on error and on unwind).
pub fn run_blocking(
    mut cmd: std::process::Command,
    input: Input,
    deadline: Duration,
    max: usize,
) -> std::io::Result<Finished> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;

    let end = Instant::now() + deadline;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    match &input {
        Input::None => cmd.stdin(Stdio::null()),
        Input::Bytes(_) => cmd.stdin(Stdio::piped()),
        Input::File(f) => cmd.stdin(Stdio::from(f.try_clone()?)),
    };
    let child = cmd.spawn()?;
    let mut guard = Reaper {
        group: Group::new(Some(child.id())),
        child,
        reaped: false,
    };
    if let (Input::Bytes(bytes), Some(mut w)) = (input, guard.child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = w.write_all(&bytes);
        });
    }
    let (tx, rx) = mpsc::channel();
    let stdout = guard.child.stdout.take().expect("piped stdout");
    let stderr = guard.child.stderr.take().expect("piped stderr");
    for (is_err, pipe) in [
        (false, Box::new(stdout) as Box<dyn Read + Send>),
        (true, Box::new(stderr)),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut b = Bounded::new(max);
            let r = b.fill_blocking(pipe).map(|()| b);
            let _ = tx.send((is_err, r));
        });
    }
    drop(tx);

    // Wait for the leader (polling, so it is never reaped behind our back
    // before its group is killed).
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(s) = guard.child.try_wait()? {
            guard.reaped = true;
            break Some(s);
        }
        let now = Instant::now();
        if now >= end {
            break None;
        }
        std::thread::sleep(pause.min(end - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let timed_out = status.is_none();
    guard.stop();
    // Both streams, until the deadline (a killed tool closes them at once;
    // only something that left the group could hold them open longer).
    let grace = Instant::now() + Duration::from_secs(1);
    let (mut out, mut err) = (Bounded::new(max), Bounded::new(max));
    let mut streams_done = true;
    for _ in 0..2 {
        let until = if timed_out { grace } else { end };
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((false, r)) => out = r?,
            Ok((true, r)) => err = r?,
            Err(_) => {
                streams_done = false;
                break;
            }
        }
    }
    if timed_out || !streams_done {
        return Ok(out.finish(err, None, true));
    }
    Ok(out.finish(err, status.and_then(|s| s.code()), false))
}

/// Kills and reaps the blocking run's child however `run_blocking` is left.
struct Reaper {
    group: Group,
    child: std::process::Child,
    reaped: bool,
}

impl Reaper {
    fn stop(&mut self) {
        self.group.kill();
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process group the child leads (`process_group(0)`), killed once:
/// when the child has exited, at the deadline, or on drop.
struct Group(Option<i32>);

impl Group {
    fn new(pid: Option<u32>) -> Self {
        // Never 0 or 1: kill(0) and kill(-1) would reach far more than the
        // child's group.
        Self(pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1))
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) only sends a signal; a negative pid names the
            // process group `pgid`, which the child was made to lead.
            unsafe {
                kill(-pgid, SIGKILL);
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

const SIGKILL: i32 = 9;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// One output stream, kept up to `max` bytes.
struct Bounded {
    max: usize,
    kept: Vec<u8>,
    cut: bool,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Self {
            max,
            kept: Vec::new(),
            cut: false,
        }
    }

    fn keep(&mut self, chunk: &[u8]) {
        let room = self.max.saturating_sub(self.kept.len());
        if chunk.len() > room {
            self.cut = true;
        }
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    async fn fill_async(&mut self, mut r: impl AsyncRead + Unpin) -> std::io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.keep(&buf[..n]);
        }
    }

    fn fill_blocking(&mut self, mut r: impl Read) -> std::io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(());
            }
            self.keep(&buf[..n]);
        }
    }

    fn finish(self, err: Bounded, code: Option<i32>, timed_out: bool) -> Finished {
        Finished {
            code,
            stdout: self.kept,
            stderr: err.kept,
            timed_out,
            stdout_truncated: self.cut,
            stderr_truncated: err.cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` is still a live process (a zombie counts as gone).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    /// Waits up to 5 s for `pid` to be gone.
    fn gone(pid: i32) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A shell that starts a background `sleep`, writes its pid to `file`
    /// and then runs `then`.
    fn leaves_a_sleeper(file: &Path, then: &str) -> String {
        format!("sleep 300 & echo $! > '{}'; {then}", file.display())
    }

    fn pid_in(file: &Path) -> i32 {
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn output_is_bounded_input_is_fed_and_deadlines_kill() {
        let home = std::env::temp_dir();
        let mut c = command("sh", &home);
        c.args(["-c", "cat; head -c 100000 /dev/zero; echo oops >&2; exit 3"]);
        let f = run(
            c,
            Input::Bytes(b"hi".to_vec()),
            Duration::from_secs(10),
            1000,
        )
        .await
        .unwrap();
        assert_eq!(f.code, Some(3));
        assert_eq!(f.stdout.len(), 1000);
        assert!(f.stdout.starts_with(b"hi"));
        assert!(f.stdout_truncated);
        assert!(!f.stderr_truncated);
        assert_eq!(f.stderr_tail(1), "oops");

        let mut c = command("sh", &home);
        c.args(["-c", "echo $HOME:${SECRET_VAR:-unset}"]);
        std::env::set_var("SECRET_VAR", "x");
        let f = run(c, Input::None, Duration::from_secs(10), 1000)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&f.stdout).trim(),
            format!("{}:unset", home.display())
        );
        assert!(!f.stdout_truncated);

        let mut c = command("sleep", &home);
        c.arg("30");
        let f = run(c, Input::None, Duration::from_millis(200), 10)
            .await
            .unwrap();
        assert!(f.timed_out);
        assert_eq!(f.code, None);
    }

    #[tokio::test]
    async fn a_deadline_kills_what_the_tool_started_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut c = command("sh", dir.path());
        c.args(["-c", &leaves_a_sleeper(&pidfile, "sleep 300")]);
        let start = Instant::now();
        let f = run(c, Input::None, Duration::from_secs(1), 100)
            .await
            .unwrap();
        assert!(f.timed_out);
        assert!(start.elapsed() < Duration::from_secs(8));
        assert!(gone(pid_in(&pidfile)), "the background sleep survived");
    }

    #[tokio::test]
    async fn what_a_tool_leaves_behind_dies_with_it_and_does_not_hold_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut c = command("sh", dir.path());
        // The sleeper keeps stdout open: without the group kill the call
        // would wait for it until the deadline.
        c.args(["-c", &leaves_a_sleeper(&pidfile, "echo done")]);
        let start = Instant::now();
        let f = run(c, Input::None, Duration::from_secs(20), 100)
            .await
            .unwrap();
        assert!(!f.timed_out);
        assert_eq!(f.code, Some(0));
        assert_eq!(String::from_utf8_lossy(&f.stdout).trim(), "done");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(gone(pid_in(&pidfile)), "the background sleep survived");
    }

    #[tokio::test]
    async fn dropping_the_call_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut c = command("sh", dir.path());
        c.args(["-c", &leaves_a_sleeper(&pidfile, "sleep 300")]);
        let mut call = Box::pin(run(c, Input::None, Duration::from_secs(600), 100));
        // Run until the sleeper is started, then drop the call mid-run (as
        // a cancelled stage does).
        while std::fs::metadata(&pidfile).map_or(true, |m| m.len() == 0) {
            tokio::select! {
                _ = &mut call => panic!("the call ended"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        drop(call);
        assert!(gone(pid_in(&pidfile)), "the background sleep survived");
    }

    #[test]
    fn blocking_runs_have_the_same_limits() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("SECRET_VAR_BLOCKING", "x");
        let mut c = command_blocking("sh", dir.path());
        c.args([
            "-c",
            "cat; echo ${SECRET_VAR_BLOCKING:-unset}; head -c 100000 /dev/zero; echo oops >&2; exit 3",
        ]);
        let f = run_blocking(
            c,
            Input::Bytes(b"hi\n".to_vec()),
            Duration::from_secs(10),
            1000,
        )
        .unwrap();
        assert_eq!(f.code, Some(3));
        assert!(f.stdout.starts_with(b"hi\nunset\n"));
        assert_eq!(f.stdout.len(), 1000);
        assert!(f.stdout_truncated);
        assert_eq!(f.stderr_tail(1), "oops");

        // A deadline kills the tool and what it started.
        let pidfile = dir.path().join("pid");
        let mut c = command_blocking("sh", dir.path());
        c.args(["-c", &leaves_a_sleeper(&pidfile, "sleep 300")]);
        let start = Instant::now();
        let f = run_blocking(c, Input::None, Duration::from_secs(1), 100).unwrap();
        assert!(f.timed_out);
        assert_eq!(f.code, None);
        assert!(start.elapsed() < Duration::from_secs(8));
        assert!(gone(pid_in(&pidfile)), "the background sleep survived");

        // What a tool leaves behind dies when it exits.
        let pidfile = dir.path().join("pid2");
        let mut c = command_blocking("sh", dir.path());
        c.args(["-c", &leaves_a_sleeper(&pidfile, "echo done")]);
        let start = Instant::now();
        let f = run_blocking(c, Input::None, Duration::from_secs(20), 100).unwrap();
        assert_eq!(f.code, Some(0));
        assert_eq!(String::from_utf8_lossy(&f.stdout).trim(), "done");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(gone(pid_in(&pidfile)), "the background sleep survived");
    }
}
