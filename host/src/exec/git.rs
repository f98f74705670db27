//! The one way the host runs `git`: on [`crate::exec`]'s runner (clean
//! environment, bounded output, deadline, process group), hardened so
//! that neither the host's environment nor a repository's own
//! `.git/config` (which the user's checkout, or anything hostile that
//! wrote it, controls) can make git run a command or reach somewhere the
//! caller did not allow.
//!
//! Environment: only `PATH`, `HOME` (a host-owned directory), `LC_ALL=C`,
//! what the caller adds with [`Git::env`], and then, overriding anything
//! the caller set:
//!
//! | variable | value | why |
//! |---|---|---|
//! | `GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_SYSTEM` | `1`, `/dev/null` | no system config |
//! | `GIT_CONFIG_GLOBAL` | `/dev/null` | no user config (`~/.gitconfig`, XDG) |
//! | `GIT_ATTR_NOSYSTEM` | `1` | no system attributes |
//! | `GIT_TERMINAL_PROMPT` | `0` | never prompt |
//! | `GIT_ASKPASS` | empty | no askpass program (beats `core.askPass`) |
//! | `GIT_ALLOW_PROTOCOL` | the allowed transports | beats any `protocol.*` config |
//! | `GIT_PROTOCOL_FROM_USER` | `0` | |
//! | `GIT_PROXY_COMMAND` | empty | beats `core.gitProxy` (whose first match would otherwise win) |
//! | `GIT_SSH_COMMAND`, `GIT_SSH_VARIANT` | `false` (or `ssh -o BatchMode=yes` when ssh is allowed), `ssh` | beats `core.sshCommand` |
//! | `GIT_PAGER`, `GIT_EDITOR`, `GIT_SEQUENCE_EDITOR` | `cat`, `false`, `false` | beat `core.pager`/`core.editor` |
//! | `GIT_NO_REPLACE_OBJECTS` | `1` | a repository's replace refs do not rewrite what it reads |
//! | `GIT_OPTIONAL_LOCKS` | `0` | reading a checkout does not rewrite its index |
//!
//! Config given with `-c`, which wins over a repository's `.git/config`
//! and anything it `[include]`s: `core.hooksPath=/dev/null` (no hooks),
//! `core.fsmonitor=false`, `core.sshCommand` as above, `core.askPass=`,
//! `credential.helper=` (no helpers), `protocol.allow=never` with
//! `protocol.NAME.allow=always` for the allowed transports only (`ext::`
//! and `fd::` are never among them), `core.pager=cat`,
//! `submodule.recurse=false`, `gc.auto=0` and `maintenance.auto=false` (no
//! background gc outliving the call). What `-c` cannot undo (`filter.*`,
//! `diff.*` drivers named by a hostile config) is not reached by the
//! commands the host runs in repositories it did not create; the host's
//! own clones start from an empty template with only the config git
//! writes for the clone.
//!
//! A password in a URL among the arguments never appears in what the
//! runner hands back (output, errors): [`mask`] is the one place that
//! hides it, and [`redact_url`] the one for URLs callers print.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::exec::{self, Finished, Input};

/// Per git command, unless the caller says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// Kept of each output stream, unless the caller says otherwise.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;
/// Largest `ls-files` listing (the paths of a large working tree).
pub const MAX_LISTING: usize = 64 << 20;

/// A way of reaching a repository that a caller may allow. `ext::` and
/// `fd::` (which run commands or use descriptors) are not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    File,
    Git,
    Http,
    Https,
    Ssh,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::File => "file",
            Transport::Git => "git",
            Transport::Http => "http",
            Transport::Https => "https",
            Transport::Ssh => "ssh",
        }
    }

    /// The transport git would use for `url`, as git decides it: a
    /// `scheme://` URL by its scheme, `transport::address` (`ext::`,
    /// `fd::`) never, `host:path` ssh, anything else a local path.
    pub fn of_url(url: &str) -> Option<Transport> {
        if let Some((scheme, _)) = url.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "file" => Some(Transport::File),
                "git" => Some(Transport::Git),
                "http" => Some(Transport::Http),
                "https" => Some(Transport::Https),
                "ssh" | "git+ssh" | "ssh+git" => Some(Transport::Ssh),
                _ => None,
            };
        }
        if url.contains("::") {
            return None;
        }
        match (url.find(':'), url.find('/')) {
            (Some(colon), slash) if slash.is_none_or(|s| colon < s) => Some(Transport::Ssh),
            _ => Some(Transport::File),
        }
    }
}

/// What went wrong running git; callers branch on it.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// No `git` on `PATH`.
    #[error("git is not installed (no `git` on PATH)")]
    NotFound,
    #[error("cannot run git: {0}")]
    Io(std::io::Error),
    /// Killed at the deadline (with everything it started).
    #[error("`git {command}` took longer than {after:?} and was stopped")]
    Timeout { command: String, after: Duration },
    /// Exited unsuccessfully; `code` is `None` when a signal ended it.
    #[error("`git {command}` failed ({}): {stderr_tail}", exit_text(*.code))]
    Exit {
        command: String,
        code: Option<i32>,
        /// The last lines of stderr, passwords masked.
        stderr_tail: String,
    },
    /// Wrote more than the caller's bound to stdout (nothing is parsed
    /// from a cut listing).
    #[error("`git {command}` wrote more than {limit} bytes")]
    TooLarge { command: String, limit: usize },
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".into(),
    }
}

/// The hardened git runner. Cheap to clone; the builder methods return a
/// changed copy.
#[derive(Debug, Clone)]
pub struct Git {
    home: PathBuf,
    /// Keeps a home made by [`Git::with_temp_home`] alive.
    _temp_home: Option<Arc<tempfile::TempDir>>,
    transports: Vec<Transport>,
    config: Vec<(String, String)>,
    env: Vec<(String, OsString)>,
    deadline: Duration,
    max_output: usize,
}

impl Git {
    /// git with `HOME=home` (a directory the host owns), no transports
    /// (local repositories only, no fetching), [`DEFAULT_DEADLINE`] and
    /// [`DEFAULT_MAX_OUTPUT`].
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            _temp_home: None,
            transports: Vec::new(),
            config: Vec::new(),
            env: Vec::new(),
            deadline: DEFAULT_DEADLINE,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }

    /// [`Git::new`] with an empty private home of its own, removed when
    /// the last copy of this value is dropped.
    pub fn with_temp_home() -> Result<Self, GitError> {
        let dir = tempfile::Builder::new()
            .prefix("host-git-home-")
            .tempdir()
            .map_err(GitError::Io)?;
        let mut git = Self::new(dir.path());
        git._temp_home = Some(Arc::new(dir));
        Ok(git)
    }

    /// The transports git may use (all others, `ext::` and `fd::`
    /// included, are refused).
    pub fn transports(mut self, allowed: &[Transport]) -> Self {
        self.transports = allowed.to_vec();
        self
    }

    /// One more `-c key=value`. The hardening settings come after the
    /// caller's, so a caller cannot turn them off by accident.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_string(), value.to_string()));
        self
    }

    /// One more environment variable (e.g. `SSH_AUTH_SOCK` for an ssh
    /// fetch). The hardening variables are set after these and win.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn max_output(mut self, max: usize) -> Self {
        self.max_output = max;
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    fn allowed_ssh(&self) -> bool {
        self.transports.contains(&Transport::Ssh)
    }

    fn ssh_command(&self) -> &'static str {
        if self.allowed_ssh() {
            "ssh -o BatchMode=yes"
        } else {
            "false"
        }
    }

    /// The hardening environment, set last.
    fn hardened_env(&self) -> Vec<(&'static str, String)> {
        let allow: Vec<&str> = self.transports.iter().map(|t| t.name()).collect();
        [
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_SYSTEM", "/dev/null"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_ATTR_NOSYSTEM", "1"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_ASKPASS", ""),
            ("SSH_ASKPASS_REQUIRE", "never"),
            ("GIT_ALLOW_PROTOCOL", &allow.join(":")),
            ("GIT_PROTOCOL_FROM_USER", "0"),
            ("GIT_PROXY_COMMAND", ""),
            ("GIT_SSH_COMMAND", self.ssh_command()),
            ("GIT_SSH_VARIANT", "ssh"),
            ("GIT_PAGER", "cat"),
            ("PAGER", "cat"),
            ("GIT_EDITOR", "false"),
            ("GIT_SEQUENCE_EDITOR", "false"),
            ("GIT_NO_REPLACE_OBJECTS", "1"),
            ("GIT_OPTIONAL_LOCKS", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    }

    /// The `-c` settings: the caller's, then the hardening.
    fn config_args(&self) -> Vec<String> {
        let mut kv: Vec<String> = self
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        kv.extend(
            [
                "core.hooksPath=/dev/null",
                "core.fsmonitor=false",
                "core.askPass=",
                "credential.helper=",
                "core.pager=cat",
                "submodule.recurse=false",
                "gc.auto=0",
                "maintenance.auto=false",
                "protocol.allow=never",
            ]
            .map(String::from),
        );
        kv.push(format!("core.sshCommand={}", self.ssh_command()));
        kv.extend(
            self.transports
                .iter()
                .map(|t| format!("protocol.{}.allow=always", t.name())),
        );
        kv.into_iter()
            .flat_map(|kv| ["-c".to_string(), kv])
            .collect()
    }

    fn apply(&self, cmd: &mut std::process::Command, dir: &Path, args: &[&str]) {
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in self.hardened_env() {
            cmd.env(k, v);
        }
        cmd.arg("-C").arg(dir).args(self.config_args()).args(args);
    }

    /// The hardened `git -C dir ... args` (for [`exec::run`]).
    pub fn command(&self, dir: &Path, args: &[&str]) -> tokio::process::Command {
        tokio::process::Command::from(self.command_blocking(dir, args))
    }

    /// The hardened `git -C dir ... args` (for [`exec::run_blocking`]).
    pub fn command_blocking(&self, dir: &Path, args: &[&str]) -> std::process::Command {
        let mut c = exec::command_blocking("git", &self.home);
        self.apply(&mut c, dir, args);
        c
    }

    /// Runs `git args` in `dir` to its end whatever its exit code (the
    /// caller reads it from [`Finished`]); errors only when git could not
    /// run or hit the deadline. URL passwords in `args` are masked in the
    /// output handed back.
    pub async fn run(&self, dir: &Path, args: &[&str], input: Input) -> Result<Finished, GitError> {
        let r = exec::run(
            self.command(dir, args),
            input,
            self.deadline,
            self.max_output,
        )
        .await;
        self.finished(args, r)
    }

    /// [`Git::run`] for sync callers.
    pub fn run_blocking(
        &self,
        dir: &Path,
        args: &[&str],
        input: Input,
    ) -> Result<Finished, GitError> {
        let r = exec::run_blocking(
            self.command_blocking(dir, args),
            input,
            self.deadline,
            self.max_output,
        );
        self.finished(args, r)
    }

    /// `git args` in `dir`, which must succeed; its whole stdout.
    pub async fn output(&self, dir: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let f = self.run(dir, args, Input::None).await?;
        succeeded(args, f, self.max_output)
    }

    /// [`Git::output`] for sync callers.
    pub fn output_blocking(&self, dir: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let f = self.run_blocking(dir, args, Input::None)?;
        succeeded(args, f, self.max_output)
    }

    /// The files of the working tree at `dir` (tracked, and untracked but
    /// not ignored), relative to `dir`, as git names them.
    pub async fn ls_files(&self, dir: &Path) -> Result<Vec<PathBuf>, GitError> {
        Ok(paths(&self.output(dir, LS_FILES).await?))
    }

    /// [`Git::ls_files`] for sync callers.
    pub fn ls_files_blocking(&self, dir: &Path) -> Result<Vec<PathBuf>, GitError> {
        Ok(paths(&self.output_blocking(dir, LS_FILES)?))
    }

    fn finished(&self, args: &[&str], r: std::io::Result<Finished>) -> Result<Finished, GitError> {
        let mut f = r.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GitError::NotFound,
            _ => GitError::Io(e),
        })?;
        if f.timed_out {
            return Err(GitError::Timeout {
                command: subcommand(args),
                after: self.deadline,
            });
        }
        let secrets = secrets(args);
        f.stdout = mask(std::mem::take(&mut f.stdout), &secrets);
        f.stderr = mask(std::mem::take(&mut f.stderr), &secrets);
        Ok(f)
    }
}

const LS_FILES: &[&str] = &[
    "ls-files",
    "-z",
    "--cached",
    "--others",
    "--exclude-standard",
];

/// `git ls-files -z --cached --others --exclude-standard` of the working
/// tree at `dir`: its files (tracked, and untracked but not ignored by the
/// repository's own ignore files), relative to `dir`, exactly as git names
/// them (raw bytes, not necessarily UTF-8), sorted, without duplicates.
///
/// git runs locally only (no transports) with a fresh private home, the
/// hardening above and [`MAX_LISTING`] bytes of listing at most.
pub async fn ls_files(dir: &Path) -> Result<Vec<PathBuf>, GitError> {
    Git::with_temp_home()?
        .max_output(MAX_LISTING)
        .ls_files(dir)
        .await
}

/// [`ls_files`] for sync callers.
pub fn ls_files_blocking(dir: &Path) -> Result<Vec<PathBuf>, GitError> {
    Git::with_temp_home()?
        .max_output(MAX_LISTING)
        .ls_files_blocking(dir)
}

fn paths(listing: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut v: Vec<PathBuf> = listing
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn succeeded(args: &[&str], f: Finished, limit: usize) -> Result<Vec<u8>, GitError> {
    if !f.success() {
        return Err(GitError::Exit {
            command: subcommand(args),
            code: f.code,
            stderr_tail: f.stderr_tail(3),
        });
    }
    if f.stdout_truncated {
        return Err(GitError::TooLarge {
            command: subcommand(args),
            limit,
        });
    }
    Ok(f.stdout)
}

/// The git subcommand among `args` (skipping `-c key=value` and options),
/// for messages; never a URL.
fn subcommand(args: &[&str]) -> String {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "-c" || *a == "-C" {
            it.next();
        } else if !a.starts_with('-') {
            return a.to_string();
        }
    }
    String::new()
}

/// The passwords of the URLs among `args`, as written and decoded.
fn secrets(args: &[&str]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for a in args {
        let Some(p) = url::Url::parse(a)
            .ok()
            .and_then(|u| u.password().map(str::to_string))
        else {
            continue;
        };
        if p.is_empty() {
            continue;
        }
        let decoded = percent_decode(&p);
        for s in [p.into_bytes(), decoded] {
            if !s.is_empty() && !out.contains(&s) {
                out.push(s);
            }
        }
    }
    // Longest first, so a password containing another is masked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `text` with every one of `secrets` replaced by `***`.
pub fn mask(mut text: Vec<u8>, secrets: &[Vec<u8>]) -> Vec<u8> {
    for s in secrets {
        if s.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            if text[i..].starts_with(s) {
                out.extend_from_slice(b"***");
                i += s.len();
            } else {
                out.push(text[i]);
                i += 1;
            }
        }
        text = out;
    }
    text
}

/// `url` with its password (if any) shown as `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some_and(|p| !p.is_empty()) => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Repositories for tests, made with the plain `git` (hermetic: no user
/// or system config).
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::{Path, PathBuf};

    /// Plain `git -C dir args`; must succeed; its trimmed stdout.
    pub fn git(dir: &Path, args: &[&str]) -> String {
        let out = plain(dir, args).output().unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Plain, unhardened `git -C dir args` (only hermetic config).
    pub fn plain(dir: &Path, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("git");
        c.arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null());
        c
    }

    /// A repository on `main` with one commit (`a.txt`), tagged `v1`.
    pub fn repo(dir: &Path) -> (PathBuf, String) {
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "--quiet", "--template=", "-b", "main"]);
        std::fs::write(repo.join("a.txt"), "a\n").unwrap();
        git(&repo, &["add", "a.txt"]);
        git(&repo, &["commit", "--quiet", "-m", "one"]);
        git(&repo, &["tag", "v1"]);
        let sha = git(&repo, &["rev-parse", "HEAD"]);
        (repo, sha)
    }

    /// A repository whose `.git/config` (and a file it includes) makes git
    /// run `script` for everything that can run a command: fsmonitor,
    /// hooks, ssh, the git:// proxy, askpass, credential helpers, the
    /// pager and editor; and allows every transport, `ext::` included.
    /// `script` appends its name and arguments to `marker`.
    pub struct Hostile {
        pub _dir: tempfile::TempDir,
        pub repo: PathBuf,
        pub sha: String,
        pub marker: PathBuf,
    }

    impl Hostile {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (repo, sha) = repo(dir.path());
            let marker = dir.path().join("marker");
            let script = |name: &str| {
                let p = dir.path().join(name);
                std::fs::write(
                    &p,
                    format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\n", marker.display()),
                )
                .unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
                p.display().to_string()
            };
            let hooks = dir.path().join("hooks");
            std::fs::create_dir(&hooks).unwrap();
            for hook in ["post-checkout", "reference-transaction", "pre-commit"] {
                let p = script(hook);
                std::fs::rename(&p, hooks.join(hook)).unwrap();
            }
            let included = dir.path().join("included.config");
            std::fs::write(
                &included,
                format!(
                    "[core]\n\tfsmonitor = {}\n[protocol]\n\tallow = always\n[protocol \"ext\"]\n\tallow = always\n",
                    script("fsmonitor")
                ),
            )
            .unwrap();
            let config = format!(
                "[core]\n\thooksPath = {hooks}\n\tsshCommand = {ssh}\n\tgitProxy = {proxy}\n\taskPass = {askpass}\n\tpager = {pager}\n\teditor = {editor}\n\
                 [credential]\n\thelper = {helper}\n\
                 [include]\n\tpath = {included}\n",
                hooks = hooks.display(),
                ssh = script("sshCommand"),
                proxy = script("gitProxy"),
                askpass = script("askPass"),
                pager = script("pager"),
                editor = script("editor"),
                helper = script("credential-helper"),
                included = included.display(),
            );
            let mut text = std::fs::read_to_string(repo.join(".git/config")).unwrap();
            text.push_str(&config);
            std::fs::write(repo.join(".git/config"), text).unwrap();
            Self {
                _dir: dir,
                repo,
                sha,
                marker,
            }
        }

        /// What ran (empty: nothing); cleared.
        pub fn fired(&self) -> String {
            let s = std::fs::read_to_string(&self.marker).unwrap_or_default();
            let _ = std::fs::remove_file(&self.marker);
            s
        }

        /// Proves the traps work: plain git run as the commands under test
        /// do fires them.
        pub fn assert_armed(&self) {
            let _ = plain(&self.repo, &["status"]).output().unwrap();
            let _ = plain(&self.repo, &["checkout", "-q", "--detach", &self.sha])
                .output()
                .unwrap();
            let _ = plain(&self.repo, &["fetch", "-q", "git://127.0.0.1:1/x"])
                .output()
                .unwrap();
            let _ = plain(&self.repo, &["fetch", "-q", "ssh://127.0.0.1:1/x"])
                .output()
                .unwrap();
            let fired = self.fired();
            for trap in [
                "fsmonitor",
                "post-checkout",
                "reference-transaction",
                "gitProxy",
                "sshCommand",
            ] {
                assert!(fired.contains(trap), "{trap} did not fire: {fired}");
            }
            // Back on main for the tests.
            let _ = plain(&self.repo, &["checkout", "-q", "main"]).output();
            self.fired();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{self, Hostile};
    use super::*;

    const ALL: &[Transport] = &[
        Transport::File,
        Transport::Git,
        Transport::Http,
        Transport::Https,
        Transport::Ssh,
    ];

    #[test]
    fn transports_are_what_git_would_use() {
        let t = Transport::of_url;
        assert_eq!(t("https://h/r.git"), Some(Transport::Https));
        assert_eq!(t("HTTP://h/r.git"), Some(Transport::Http));
        assert_eq!(t("git://h/r.git"), Some(Transport::Git));
        assert_eq!(t("ssh://git@h/r.git"), Some(Transport::Ssh));
        assert_eq!(t("git@h:r.git"), Some(Transport::Ssh));
        assert_eq!(t("file:///srv/r.git"), Some(Transport::File));
        assert_eq!(t("/srv/r.git"), Some(Transport::File));
        assert_eq!(t("./a:b"), Some(Transport::File));
        assert_eq!(t("ext::sh -c touch% x"), None);
        assert_eq!(t("fd::7"), None);
        assert_eq!(t("gopher://h/r"), None);
    }

    #[test]
    fn passwords_are_masked_and_redacted() {
        let s = secrets(&["fetch", "--", "https://u:p%40ss@h/r.git", "x"]);
        assert_eq!(s, vec![b"p%40ss".to_vec(), b"p@ss".to_vec()]);
        let out = mask(b"fatal: https://u:p%40ss@h/r.git and p@ss".to_vec(), &s);
        assert_eq!(out, b"fatal: https://u:***@h/r.git and ***");
        assert_eq!(
            redact_url("https://u:p%40ss@h/r.git"),
            "https://u:***@h/r.git"
        );
        assert_eq!(redact_url("https://u@h/r.git"), "https://u@h/r.git");
        assert_eq!(
            subcommand(&["-c", "a=b", "fetch", "https://u:p@h/"]),
            "fetch"
        );
    }

    #[tokio::test]
    async fn the_runner_masks_passwords_in_what_git_prints() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = fixtures::repo(dir.path());
        // An alias stands in for a git that echoes the URL it was given.
        let g = Git::new(dir.path()).config("alias.say", "!echo");
        let f = g
            .run(&repo, &["say", "https://u:hunter2@h/r.git"], Input::None)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&f.stdout).trim(),
            "https://u:***@h/r.git"
        );
    }

    #[tokio::test]
    async fn a_hostile_repository_config_runs_nothing() {
        let h = Hostile::new();
        h.assert_armed();
        let g = Git::with_temp_home().unwrap().transports(ALL);
        // Reading: fsmonitor (from the included file) would run here.
        g.output(&h.repo, &["status"]).await.unwrap();
        let files = g.ls_files(&h.repo).await.unwrap();
        assert_eq!(files, vec![PathBuf::from("a.txt")]);
        // What the server's checkout does: post-checkout and
        // reference-transaction hooks would run here.
        g.output(&h.repo, &["checkout", "--quiet", "--detach", &h.sha])
            .await
            .unwrap();
        // Fetching: core.gitProxy and core.sshCommand would run here.
        for url in ["git://127.0.0.1:1/x", "ssh://127.0.0.1:1/x"] {
            let e = g.output(&h.repo, &["fetch", "-q", url]).await.unwrap_err();
            assert!(matches!(e, GitError::Exit { .. }), "{e}");
        }
        // Committing: pre-commit and the editor would run here.
        std::fs::write(h.repo.join("b.txt"), "b").unwrap();
        g.output(&h.repo, &["add", "b.txt"]).await.unwrap();
        g.clone()
            .config("user.name", "t")
            .config("user.email", "t@t")
            .output(&h.repo, &["commit", "-q", "-m", "two"])
            .await
            .unwrap();
        assert_eq!(h.fired(), "");
        // The blocking variant is hardened the same way.
        g.output_blocking(&h.repo, &["status"]).unwrap();
        assert_eq!(h.fired(), "");
    }

    #[tokio::test]
    async fn ext_and_fd_transports_are_refused_whatever_the_repository_allows() {
        let h = Hostile::new();
        let out = h._dir.path().join("clone");
        let out = out.to_str().unwrap();
        // The capability's transports (https, http, git, file).
        let g = Git::with_temp_home().unwrap().transports(&[
            Transport::Https,
            Transport::Http,
            Transport::Git,
            Transport::File,
        ]);
        let touch = format!("ext::sh -c touch% {}", h.marker.display());
        for url in [touch.as_str(), "fd::0", "fd::0,1"] {
            let e = g
                .output(h._dir.path(), &["clone", "-q", "--", url, out])
                .await
                .unwrap_err();
            assert!(
                matches!(&e, GitError::Exit { stderr_tail, .. } if stderr_tail.contains("not allowed")),
                "{url}: {e}"
            );
            // In the hostile repository, whose config allows ext.
            let e = g.output(&h.repo, &["fetch", "-q", url]).await.unwrap_err();
            assert!(
                matches!(&e, GitError::Exit { stderr_tail, .. } if stderr_tail.contains("not allowed")),
                "{url}: {e}"
            );
        }
        assert!(!h.marker.exists());
        // With no transports, not even a local path.
        let local = Git::with_temp_home().unwrap();
        let e = local
            .output(
                h._dir.path(),
                &["clone", "-q", "--", h.repo.to_str().unwrap(), out],
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not allowed"), "{e}");
    }

    const ENV_CHILD: &str = "HOST_TEST_GIT_ENV_CHILD";

    /// Runs in a child test process (below) whose environment carries what
    /// a host could have in its own: git variables that would redirect or
    /// arm git, and a secret.
    #[test]
    fn git_sees_nothing_of_the_host_environment() {
        if let Some(repo) = std::env::var_os(ENV_CHILD) {
            return env_child(Path::new(&repo));
        }
        let h = Hostile::new();
        let trace = h._dir.path().join("trace");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "exec::git::tests::git_sees_nothing_of_the_host_environment",
                "--test-threads=1",
            ])
            .env(ENV_CHILD, &h.repo)
            .env("GIT_DIR", "/nonexistent")
            .env("GIT_WORK_TREE", "/nonexistent")
            .env("GIT_SSH_COMMAND", h.repo.join("../sshCommand"))
            .env(
                "GIT_CONFIG_PARAMETERS",
                format!(
                    "'core.fsmonitor'='{}'",
                    h.repo.join("../fsmonitor").display()
                ),
            )
            .env("GIT_TRACE", &trace)
            .env("HOST_WEBHOOK_SECRET", "hunter2-in-the-env")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!trace.exists(), "GIT_TRACE reached git");
        assert_eq!(h.fired(), "");
    }

    fn env_child(repo: &Path) {
        let g = Git::with_temp_home()
            .unwrap()
            .config("alias.show-env", "!env");
        // GIT_DIR=/nonexistent would make these fail.
        let sha = g.output_blocking(repo, &["rev-parse", "HEAD"]).unwrap();
        assert_eq!(sha.len(), 41);
        g.output_blocking(repo, &["status"]).unwrap();
        let env = String::from_utf8(g.output_blocking(repo, &["show-env"]).unwrap()).unwrap();
        for absent in [
            "hunter2",
            "/nonexistent",
            "GIT_TRACE",
            "GIT_WORK_TREE",
            "../fsmonitor",
            "../sshCommand",
        ] {
            assert!(!env.contains(absent), "{absent} in\n{env}");
        }
        for present in [
            "GIT_CONFIG_GLOBAL=/dev/null",
            "GIT_CONFIG_NOSYSTEM=1",
            "GIT_SSH_COMMAND=false",
            "GIT_ALLOW_PROTOCOL=\n",
            "LC_ALL=C",
        ] {
            assert!(env.contains(present), "{present} not in\n{env}");
        }
    }

    #[tokio::test]
    async fn output_over_the_bound_is_cut_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = fixtures::repo(dir.path());
        std::fs::write(repo.join("big"), vec![b'x'; 200_000]).unwrap();
        fixtures::git(&repo, &["add", "big"]);
        fixtures::git(&repo, &["commit", "-q", "-m", "big"]);
        let g = Git::new(dir.path()).max_output(1000);
        let f = g
            .run(&repo, &["cat-file", "-p", "HEAD:big"], Input::None)
            .await
            .unwrap();
        assert!(f.success());
        assert_eq!(f.stdout.len(), 1000);
        assert!(f.stdout_truncated);
        let e = g
            .output(&repo, &["cat-file", "-p", "HEAD:big"])
            .await
            .unwrap_err();
        assert!(
            matches!(e, GitError::TooLarge { ref command, limit: 1000 } if command == "cat-file"),
            "{e}"
        );
        let e = g
            .output_blocking(&repo, &["cat-file", "-p", "HEAD:big"])
            .unwrap_err();
        assert!(matches!(e, GitError::TooLarge { .. }), "{e}");
    }

    /// Pids of live processes whose command line contains `needle`.
    fn processes_with(needle: &str) -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(pid);
            }
        }
        found
    }

    #[tokio::test]
    async fn a_deadline_kills_a_hanging_git_and_its_helpers() {
        // A server that accepts connections (the kernel does) and never
        // answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let g = Git::new(dir.path())
            .transports(&[Transport::Http, Transport::Git])
            .deadline(Duration::from_secs(1));
        for url in [
            format!("http://127.0.0.1:{port}/hang.git"),
            format!("git://127.0.0.1:{port}/hang.git"),
        ] {
            let start = std::time::Instant::now();
            let e = g
                .output(dir.path(), &["ls-remote", &url])
                .await
                .unwrap_err();
            assert!(
                matches!(e, GitError::Timeout { ref command, .. } if command == "ls-remote"),
                "{e}"
            );
            assert!(start.elapsed() < Duration::from_secs(10));
            // git-remote-http (a child of git) is gone too.
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while !processes_with(&url).is_empty() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(processes_with(&url), Vec::<String>::new(), "{url}");
        }
        let e = g
            .output_blocking(
                dir.path(),
                &["ls-remote", &format!("git://127.0.0.1:{port}/b.git")],
            )
            .unwrap_err();
        assert!(matches!(e, GitError::Timeout { .. }), "{e}");
        drop(listener);
    }

    #[tokio::test]
    async fn ls_files_lists_the_working_tree_as_git_names_it() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = fixtures::repo(dir.path());
        std::fs::write(repo.join(".gitignore"), "*.log\n").unwrap();
        std::fs::create_dir(repo.join("sub")).unwrap();
        std::fs::write(repo.join("sub/untracked.rs"), "").unwrap();
        std::fs::write(repo.join("ignored.log"), "").unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 \n.txt");
        std::fs::write(repo.join(odd), "").unwrap();
        let want = vec![
            PathBuf::from(".gitignore"),
            PathBuf::from("a.txt"),
            PathBuf::from(odd),
            PathBuf::from("sub/untracked.rs"),
        ];
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(ls_files(&repo).await.unwrap(), want_sorted);
        assert_eq!(ls_files_blocking(&repo).unwrap(), want_sorted);
        // Relative to a subdirectory when asked about one.
        assert_eq!(
            ls_files(&repo.join("sub")).await.unwrap(),
            vec![PathBuf::from("untracked.rs")]
        );
        let e = ls_files(dir.path().join("nope").as_path())
            .await
            .unwrap_err();
        assert!(matches!(e, GitError::Exit { .. }), "{e}");
    }
}
