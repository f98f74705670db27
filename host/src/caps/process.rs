//! Running a host tool (`git`, `ssh`) for a capability: a clean
//! environment, bounded output, a deadline, and no process outliving it.
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// What a finished (or killed) tool left.
#[derive(Debug)]
pub struct Finished {
    /// `None` when killed (deadline) or ended by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
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
/// `HOME`, pointed wherever the capability keeps its files).
pub fn command(program: &str, home: &std::path::Path) -> Command {
    let mut c = Command::new(program);
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
/// blocks on a full pipe).
pub async fn run(
    mut cmd: Command,
    input: Input,
    deadline: Duration,
    max: usize,
) -> std::io::Result<Finished> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match &input {
        Input::None => cmd.stdin(Stdio::null()),
        Input::Bytes(_) => cmd.stdin(Stdio::piped()),
        Input::File(f) => cmd.stdin(Stdio::from(f.try_clone()?)),
    };
    let mut child = cmd.spawn()?;
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
    let work = async {
        let (_, out, err, status) = tokio::join!(
            feed,
            bounded(stdout, max),
            bounded(stderr, max),
            child.wait()
        );
        Ok::<_, std::io::Error>((out?, err?, status?))
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(r) => {
            let (stdout, stderr, status) = r?;
            Ok(Finished {
                code: status.code(),
                stdout,
                stderr,
                timed_out: false,
            })
        }
        Err(_) => {
            let _ = child.kill().await;
            Ok(Finished {
                code: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
                timed_out: true,
            })
        }
    }
}

async fn bounded(mut r: impl AsyncRead + Unpin, max: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let mut c = command("sleep", &home);
        c.arg("30");
        let f = run(c, Input::None, Duration::from_millis(200), 10)
            .await
            .unwrap();
        assert!(f.timed_out);
        assert_eq!(f.code, None);
    }
}
