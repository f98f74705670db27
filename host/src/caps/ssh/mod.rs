//! SSH for a stage: the host runs the system `ssh` to the `[ssh.NAME]`
//! hosts the stage is granted, with the key from the host's secret and
//! the host key the pipeline pins. The stage names a host and a command;
//! it never sees the key, the connection or the user's ssh setup.
//!
//! ssh runs with `-F /dev/null` (no user config), its own known_hosts
//! holding only the pinned key, `StrictHostKeyChecking=yes` (there is no
//! way to turn it off), batch mode (no prompts, no passwords), no agent,
//! no forwarding, and a clean environment.
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::caps::audit::Audit;
use crate::caps::capability::{declared_names, Cap, Capability, GrantCx, StageEnv, StrList};
use crate::caps::denied;
use crate::caps::secrets::SecretStore;
use crate::confined::{FileError, Root};
use crate::exec::{self, Finished, Input};
use crate::wit::ci::stage::ssh::{ExecRequest, ExecResult, Host};
use crate::wit::ci::stage::types::RemoteError;
use crate::wit::CapError;

mod declare;

pub use declare::{check_host_key, ssh_address, SshHost};

/// Longest command run when the stage asks for no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest any command may run.
const MAX_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Kept of each output stream.
const MAX_OUTPUT: usize = 1 << 20;
/// Longest command text.
const MAX_COMMAND: usize = 64 << 10;

pub struct SshCap {
    stage: String,
    /// The granted hosts only.
    hosts: Vec<SshHost>,
    secrets: Arc<SecretStore>,
    /// Canonical workspace, when the stage may read it (uploads).
    workspace: Option<PathBuf>,
    /// Key and known_hosts files, created on first use, removed with the stage.
    files: Option<tempfile::TempDir>,
    audit: Audit,
}

impl Capability for SshCap {
    const NAME: &'static str = "ssh";
    const TABLE: Option<&'static str> = Some("ssh");
    type Raw = StrList;
    /// The names of the `[ssh.NAME]` hosts granted.
    type Grant = Vec<String>;
    type Decls = std::collections::BTreeMap<String, SshHost>;

    fn declare(cx: &mut GrantCx<'_>) -> Self::Decls {
        declare::declare(cx)
    }

    fn compile(raw: &StrList, decls: &Self::Decls, cx: &mut GrantCx<'_>) -> Vec<String> {
        declared_names(cx, raw, decls, "ssh")
    }

    fn covers(g: &Vec<String>, _: Option<&str>) -> bool {
        !g.is_empty()
    }

    fn link<T: Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        crate::wit::ci::stage::ssh::add_to_linker::<_, Cap<Self>>(linker, get)
    }

    fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self> {
        let hosts = env
            .grants
            .ssh
            .iter()
            .filter_map(|n| env.decls.ssh.get(n).cloned())
            .collect();
        let workspace = env.workspace.as_ref().map(|(p, _)| p.clone());
        Ok(
            SshCap::new(env.stage, hosts, env.secrets.clone(), workspace)
                .with_audit(env.audit.clone()),
        )
    }
}

impl SshCap {
    pub fn new(
        stage: &str,
        hosts: Vec<SshHost>,
        secrets: Arc<SecretStore>,
        workspace: Option<PathBuf>,
    ) -> Self {
        Self {
            stage: stage.to_string(),
            hosts,
            secrets,
            workspace: workspace.and_then(|w| w.canonicalize().ok()),
            files: None,
            audit: Audit::default(),
        }
    }

    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    fn host(&self, target: &str, capability: &str) -> Result<SshHost, CapError> {
        self.hosts
            .iter()
            .find(|h| h.name == target)
            .cloned()
            .ok_or_else(|| denied(&self.stage, capability, target))
    }

    /// The private directory holding `NAME.key` and `NAME.known_hosts`.
    fn files_for(&mut self, host: &SshHost) -> Result<(PathBuf, PathBuf, PathBuf), CapError> {
        if self.files.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("pipeline-ssh-")
                .tempdir()
                .map_err(|e| CapError::Failed(format!("cannot make a directory for ssh: {e}")))?;
            self.files = Some(dir);
        }
        let dir = self.files.as_ref().expect("just set").path().to_path_buf();
        let key = dir.join(format!("{}.key", host.name));
        let known = dir.join(format!("{}.known_hosts", host.name));
        if !key.exists() {
            let value = self
                .secrets
                .get(&host.key)
                .map_err(|e| CapError::Failed(format!("the key of `[ssh.{}]`: {e}", host.name)))?;
            // ssh wants LF line ends and a final newline.
            let mut text = value.replace("\r\n", "\n");
            if !text.ends_with('\n') {
                text.push('\n');
            }
            write_private(&key, text.as_bytes())?;
            write_private(&known, format!("{}\n", host.known_hosts_line()).as_bytes())?;
        }
        Ok((dir, key, known))
    }

    fn ssh(&mut self, host: &SshHost) -> Result<tokio::process::Command, CapError> {
        let (home, key, known) = self.files_for(host)?;
        let mut c = exec::command("ssh", &home);
        let opt = |k: &str, v: &str| format!("{k}={v}");
        c.arg("-F").arg("/dev/null").arg("-T");
        for o in [
            opt("BatchMode", "yes"),
            opt("IdentitiesOnly", "yes"),
            opt("IdentityAgent", "none"),
            format!("IdentityFile={}", key.display()),
            format!("UserKnownHostsFile={}", known.display()),
            opt("GlobalKnownHostsFile", "/dev/null"),
            opt("StrictHostKeyChecking", "yes"),
            opt("UpdateHostKeys", "no"),
            opt("CheckHostIP", "no"),
            opt("PasswordAuthentication", "no"),
            opt("KbdInteractiveAuthentication", "no"),
            opt("ForwardAgent", "no"),
            opt("ForwardX11", "no"),
            opt("ClearAllForwardings", "yes"),
            opt("ControlMaster", "no"),
            opt("ControlPath", "none"),
            opt("PermitLocalCommand", "no"),
            opt("ConnectTimeout", "10"),
            opt("ServerAliveInterval", "15"),
            opt("ServerAliveCountMax", "2"),
            opt("LogLevel", "ERROR"),
        ] {
            c.arg("-o").arg(o);
        }
        c.arg("-p")
            .arg(host.port.to_string())
            .arg("-l")
            .arg(&host.user)
            .arg(&host.host)
            .arg("--");
        Ok(c)
    }

    async fn run_command(&mut self, req: ExecRequest) -> Result<ExecResult, CapError> {
        let host = self.host(&req.target, "ssh")?;
        if req.command.trim().is_empty() {
            return Err(CapError::Invalid("the command is empty".into()));
        }
        if req.command.len() > MAX_COMMAND {
            return Err(CapError::Limit(format!(
                "a command may have at most {MAX_COMMAND} bytes"
            )));
        }
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(DEFAULT_TIMEOUT)
            .min(MAX_TIMEOUT);
        let mut c = self.ssh(&host)?;
        c.arg(&req.command);
        let input = match req.stdin {
            Some(b) => Input::Bytes(b),
            None => Input::None,
        };
        let f = exec::run(c, input, timeout, MAX_OUTPUT)
            .await
            .map_err(|e| CapError::Failed(format!("cannot run ssh: {e}")))?;
        if f.timed_out {
            return Ok(ExecResult {
                exit_code: -1,
                stdout: String::new(),
                stderr: format!("killed after {timeout:?}"),
                timed_out: true,
            });
        }
        connection_error(&host, &f)?;
        Ok(ExecResult {
            exit_code: f.code.unwrap_or(-1),
            stdout: String::from_utf8_lossy(&f.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&f.stderr).into_owned(),
            timed_out: false,
        })
    }

    async fn send_file(
        &mut self,
        target: &str,
        local: &str,
        remote_path: &str,
    ) -> Result<String, CapError> {
        let host = self.host(target, "ssh")?;
        let Some(ws) = self.workspace.clone() else {
            return Err(denied(&self.stage, "workspace", local));
        };
        if remote_path.trim().is_empty() || remote_path.contains('\0') {
            return Err(CapError::Invalid("the remote path is empty".into()));
        }
        // Opened once, beneath the workspace: what is hashed is what is sent.
        let root = Root::open(&ws, "the workspace")
            .map_err(|e| CapError::Failed(format!("the workspace: {e}")))?;
        let opened = match root.open_file(Path::new(local)) {
            Ok(f) => f,
            Err(FileError::Outside { .. }) => return Err(denied(&self.stage, "workspace", local)),
            Err(FileError::NotFound { .. } | FileError::NotAFile { .. }) => {
                return Err(CapError::Invalid(format!(
                    "no file `{local}` in the workspace"
                )))
            }
            Err(e) => return Err(CapError::Failed(e.to_string())),
        };
        let digest = digest(&opened).await?;
        let mut c = self.ssh(&host)?;
        // The remote shell sees one quoted word, whatever the path holds.
        c.arg(format!("cat > {}", sh_quote(remote_path)));
        let f = exec::run(c, Input::File(opened), MAX_TIMEOUT, MAX_OUTPUT)
            .await
            .map_err(|e| CapError::Failed(format!("cannot run ssh: {e}")))?;
        if f.timed_out {
            return Err(CapError::Limit(format!(
                "the upload took longer than {MAX_TIMEOUT:?}"
            )));
        }
        connection_error(&host, &f)?;
        if !f.success() {
            return Err(CapError::Failed(format!(
                "writing `{remote_path}` on `{}` failed (exit {}): {}",
                host.name,
                f.code.unwrap_or(-1),
                f.stderr_tail(3)
            )));
        }
        Ok(digest)
    }
}

/// The file's digest, read from the start; the handle is left at the start
/// again for sending.
async fn digest(file: &std::fs::File) -> Result<String, CapError> {
    let hashing = file
        .try_clone()
        .map_err(|e| CapError::Failed(format!("hashing: {e}")))?;
    let d = tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        let mut f = hashing;
        let d = crate::digest::sha256_of(&mut f)?;
        f.seek(SeekFrom::Start(0))?;
        Ok::<_, std::io::Error>(d)
    })
    .await
    .map_err(|e| CapError::Failed(format!("hashing: {e}")))?
    .map_err(|e| CapError::Failed(format!("hashing: {e}")))?;
    Ok(d)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CapError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| CapError::Failed(format!("cannot write ssh files: {e}")))
}

/// One single-quoted shell word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// ssh exits 255 for its own failures; stderr says which. A remote
/// command exiting 255 with other output stays the command's result.
fn connection_error(host: &SshHost, f: &Finished) -> Result<(), CapError> {
    if f.code != Some(255) {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&f.stderr);
    let tail = f.stderr_tail(2);
    let err = |code: &str, message: String, transient: bool| {
        Err(CapError::Remote(RemoteError {
            service: "ssh".into(),
            status: None,
            code: code.into(),
            message,
            transient,
        }))
    };
    let addr = host.address();
    if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("host key for")
    {
        return err(
            "HOST_KEY_MISMATCH",
            format!(
                "{addr} did not present the host key `[ssh.{}]` pins (refused, nothing was sent): {tail}",
                host.name
            ),
            false,
        );
    }
    if stderr.contains("Permission denied") || stderr.contains("Too many authentication failures") {
        return err(
            "AUTH_FAILED",
            format!("{addr} refused the key of `[ssh.{}]`: {tail}", host.name),
            false,
        );
    }
    if stderr.contains("Load key") || stderr.contains("invalid format") {
        return Err(CapError::Failed(format!(
            "the secret `{}` is not an OpenSSH private key ssh can load",
            host.key
        )));
    }
    if [
        "Connection refused",
        "timed out",
        "No route to host",
        "Could not resolve",
        "Connection closed",
        "Connection reset",
    ]
    .iter()
    .any(|s| stderr.contains(s))
    {
        return err(
            "CONNECT_FAILED",
            format!("cannot connect to {addr}: {tail}"),
            true,
        );
    }
    Ok(())
}

impl Host for SshCap {
    async fn exec(&mut self, req: ExecRequest) -> wasmtime::Result<Result<ExecResult, CapError>> {
        let target = format!("{}: {}", req.target, req.command);
        let r = self.run_command(req).await;
        self.audit.record("ssh.exec", &target, &r, |r| {
            if r.timed_out {
                "timed out".into()
            } else {
                format!("ok: exit {}", r.exit_code)
            }
        });
        Ok(r)
    }

    async fn upload(
        &mut self,
        target: String,
        local_path: String,
        remote_path: String,
    ) -> wasmtime::Result<Result<String, CapError>> {
        let what = format!("{target}: {local_path} -> {remote_path}");
        let r = self.send_file(&target, &local_path, &remote_path).await;
        self.audit
            .record("ssh.upload", &what, &r, |d| format!("ok: {d}"));
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_one_word() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
