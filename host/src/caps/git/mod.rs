//! Git for a stage: the host clones the `[git.NAME]` repositories the stage
//! is granted into directories of its own, lets the stage read and write
//! files there (paths confined to the clone), commits, and pushes only to
//! the branches the pipeline lets that repository push to.
//!
//! git runs on the host's hardened runner ([`crate::exec::git`]): a clean
//! environment, no user or system config, no hooks, fsmonitor, credential
//! helpers or prompts, only the https/http/git/file transports, clones
//! from an empty template, and symlinks checked out as plain files (so no
//! path the stage names can leave the clone through one).
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::caps::audit::Audit;
use crate::caps::capability::{declared_names, Cap, Capability, GrantCx, StageEnv, StrList};
use crate::caps::denied;
use crate::confined::{FileError, Root};
use crate::exec::git::{redact_url, Git, GitError, Transport, MAX_LISTING};
use crate::exec::{Finished, Input};
use crate::wit::ci::stage::git::{Checkout, Host};
use crate::wit::ci::stage::types::RemoteError;
use crate::wit::CapError;

mod declare;

pub use declare::{branch_name, git_url, GitRemote};

/// Limits of one stage's use of git.
#[derive(Debug, Clone)]
pub struct GitLimits {
    pub max_checkouts: usize,
    pub max_file: usize,
    pub max_message: usize,
    /// Per git command (a clone, a push).
    pub timeout: Duration,
}

impl Default for GitLimits {
    fn default() -> Self {
        Self {
            max_checkouts: 8,
            max_file: 8 << 20,
            max_message: 64 << 10,
            timeout: Duration::from_secs(300),
        }
    }
}

/// Who the host commits as, and what it writes in the trailers.
#[derive(Debug, Clone, Default)]
pub struct CommitIdentity {
    pub pipeline: String,
    pub run_id: String,
    pub stage: String,
}

struct Cloned {
    repo: GitRemote,
    branch: String,
    dir: PathBuf,
}

pub struct GitCap {
    stage: String,
    /// The granted repositories only.
    repos: Vec<GitRemote>,
    identity: CommitIdentity,
    limits: GitLimits,
    /// Created on the first clone, removed with the stage.
    work: Option<tempfile::TempDir>,
    clones: Vec<Cloned>,
    audit: Audit,
}

impl Capability for GitCap {
    const NAME: &'static str = "git";
    const TABLE: Option<&'static str> = Some("git");
    type Raw = StrList;
    /// The names of the `[git.NAME]` repositories granted.
    type Grant = Vec<String>;
    type Decls = std::collections::BTreeMap<String, GitRemote>;

    fn declare(cx: &mut GrantCx<'_>) -> Self::Decls {
        declare::declare(cx)
    }

    fn compile(raw: &StrList, decls: &Self::Decls, cx: &mut GrantCx<'_>) -> Vec<String> {
        declared_names(cx, raw, decls, "git")
    }

    fn covers(g: &Vec<String>, _: Option<&str>) -> bool {
        !g.is_empty()
    }

    fn link<T: Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        crate::wit::ci::stage::git::add_to_linker::<_, Cap<Self>>(linker, get)
    }

    fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self> {
        let repos = env
            .grants
            .git
            .iter()
            .filter_map(|n| env.decls.git.get(n).cloned())
            .collect();
        let identity = CommitIdentity {
            pipeline: env.pipeline.to_string(),
            run_id: env.run_id.to_string(),
            stage: env.stage.to_string(),
        };
        Ok(GitCap::new(env.stage, repos, identity).with_audit(env.audit.clone()))
    }
}

impl GitCap {
    pub fn new(stage: &str, repos: Vec<GitRemote>, identity: CommitIdentity) -> Self {
        Self {
            stage: stage.to_string(),
            repos,
            identity,
            limits: GitLimits::default(),
            work: None,
            clones: Vec::new(),
            audit: Audit::default(),
        }
    }

    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    pub fn with_limits(mut self, limits: GitLimits) -> Self {
        self.limits = limits;
        self
    }

    fn home(&mut self) -> Result<PathBuf, CapError> {
        if self.work.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("pipeline-git-")
                .tempdir()
                .map_err(|e| CapError::Failed(format!("cannot make a directory for git: {e}")))?;
            self.work = Some(dir);
        }
        Ok(self.work.as_ref().expect("just set").path().to_path_buf())
    }

    /// The transports a `[git.NAME]` URL may use.
    const TRANSPORTS: &'static [Transport] = &[
        Transport::Https,
        Transport::Http,
        Transport::Git,
        Transport::File,
    ];

    /// The hardened git, with its home in the stage's git directory.
    fn git(&self) -> Git {
        let home = self
            .work
            .as_ref()
            .map(|w| w.path().to_path_buf())
            .unwrap_or_else(std::env::temp_dir);
        Git::new(home)
            .transports(Self::TRANSPORTS)
            .config("core.symlinks", "false")
            .deadline(self.limits.timeout)
            .max_output(1 << 20)
    }

    async fn run_git(&self, dir: &Path, args: &[&str], input: Input) -> Result<Finished, CapError> {
        self.git()
            .run(dir, args, input)
            .await
            .map_err(|e| git_error(e, self.limits.timeout))
    }

    fn clone_of(&self, checkout: Checkout) -> Result<&Cloned, CapError> {
        (checkout as usize)
            .checked_sub(1)
            .and_then(|i| self.clones.get(i))
            .ok_or_else(|| CapError::Invalid(format!("no checkout {checkout} in this stage")))
    }

    async fn clone_repo(
        &mut self,
        repo: &str,
        branch: Option<String>,
    ) -> Result<Checkout, CapError> {
        let Some(remote) = self.repos.iter().find(|r| r.name == repo).cloned() else {
            return Err(denied(&self.stage, "git", repo));
        };
        let branch = branch.unwrap_or_else(|| remote.branch.clone());
        branch_name(&branch).map_err(|e| CapError::Invalid(e.to_string()))?;
        if self.clones.len() >= self.limits.max_checkouts {
            return Err(CapError::Limit(format!(
                "a stage may make at most {} clones",
                self.limits.max_checkouts
            )));
        }
        let home = self.home()?;
        let dir = home.join(format!("clone-{}", self.clones.len() + 1));
        let dir_arg = dir.to_string_lossy().into_owned();
        let f = self
            .run_git(
                &home,
                &[
                    "clone",
                    "--quiet",
                    // No hooks, no config but what clone itself writes.
                    "--template=",
                    "--no-tags",
                    "--single-branch",
                    "--depth",
                    "1",
                    "--branch",
                    &branch,
                    "--",
                    &remote.url,
                    &dir_arg,
                ],
                Input::None,
            )
            .await?;
        if !f.success() {
            return Err(clone_error(&remote, &branch, &f));
        }
        let dir = dir
            .canonicalize()
            .map_err(|e| CapError::Failed(format!("the clone is gone: {e}")))?;
        self.clones.push(Cloned {
            repo: remote,
            branch,
            dir,
        });
        Ok(self.clones.len() as Checkout)
    }

    async fn list(&self, checkout: Checkout, pattern: &str) -> Result<Vec<String>, CapError> {
        let c = self.clone_of(checkout)?;
        let set = glob(pattern)?;
        let mut files: Vec<String> = self
            .git()
            .max_output(MAX_LISTING)
            .ls_files(&c.dir)
            .await
            .map_err(|e| git_error(e, self.limits.timeout))?
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| set.is_match(p))
            .collect();
        files.sort();
        files.dedup();
        Ok(files)
    }

    fn read(&self, checkout: Checkout, path: &str) -> Result<Vec<u8>, CapError> {
        let c = self.clone_of(checkout)?;
        let rel = not_git_dir(path)?;
        self.root(c)?
            .read(rel, self.limits.max_file as u64)
            .map_err(|e| file_error(path, e, self.limits.max_file))
    }

    fn write(&self, checkout: Checkout, path: &str, content: &[u8]) -> Result<(), CapError> {
        let c = self.clone_of(checkout)?;
        if content.len() > self.limits.max_file {
            return Err(CapError::Limit(format!(
                "a file written to a clone may have at most {} bytes",
                self.limits.max_file
            )));
        }
        let rel = not_git_dir(path)?;
        self.root(c)?
            .write_replace(rel, content)
            .map_err(|e| file_error(path, e, self.limits.max_file))
    }

    /// The clone, opened as a root every path a plugin names stays beneath.
    fn root(&self, c: &Cloned) -> Result<Root, CapError> {
        Root::open(&c.dir, "the clone")
            .map_err(|e| CapError::Failed(format!("the clone is gone: {e}")))
    }

    async fn commit_all(
        &self,
        checkout: Checkout,
        message: &str,
    ) -> Result<Option<String>, CapError> {
        let c = self.clone_of(checkout)?;
        let message = message.trim();
        if message.is_empty() {
            return Err(CapError::Invalid("the commit message is empty".into()));
        }
        if message.len() > self.limits.max_message {
            return Err(CapError::Limit(format!(
                "a commit message may have at most {} bytes",
                self.limits.max_message
            )));
        }
        let f = self.run_git(&c.dir, &["add", "--all"], Input::None).await?;
        if !f.success() {
            return Err(CapError::Failed(format!("git add: {}", f.stderr_tail(3))));
        }
        let f = self
            .run_git(
                &c.dir,
                &["diff", "--cached", "--quiet", "--no-ext-diff"],
                Input::None,
            )
            .await?;
        match f.code {
            Some(0) => return Ok(None),
            Some(1) => {}
            _ => return Err(CapError::Failed(format!("git diff: {}", f.stderr_tail(3)))),
        }
        let id = &self.identity;
        let full = format!(
            "{message}\n\nPipeline: {}\nPipeline-Run: {}\nPipeline-Stage: {}\n",
            id.pipeline, id.run_id, id.stage
        );
        let f = self
            .git()
            .config("user.name", &format!("{} pipeline", id.pipeline))
            .config("user.email", "pipeline@localhost")
            .run(
                &c.dir,
                &["commit", "--quiet", "--no-verify", "--file", "-"],
                Input::Bytes(full.into_bytes()),
            )
            .await
            .map_err(|e| git_error(e, self.limits.timeout))?;
        if !f.success() {
            return Err(CapError::Failed(format!(
                "git commit: {}",
                f.stderr_tail(3)
            )));
        }
        self.head_sha(checkout).await.map(Some)
    }

    async fn head_sha(&self, checkout: Checkout) -> Result<String, CapError> {
        let c = self.clone_of(checkout)?;
        let f = self
            .run_git(&c.dir, &["rev-parse", "HEAD"], Input::None)
            .await?;
        if !f.success() {
            return Err(CapError::Failed(format!(
                "git rev-parse: {}",
                f.stderr_tail(3)
            )));
        }
        Ok(String::from_utf8_lossy(&f.stdout).trim().to_string())
    }

    async fn push_branch(&self, checkout: Checkout) -> Result<(), CapError> {
        let c = self.clone_of(checkout)?;
        let allowed = c.repo.push.allows(&c.branch);
        if !allowed {
            return Err(denied(
                &self.stage,
                "git.push",
                format!("{}:{}", c.repo.name, c.branch),
            ));
        }
        let refspec = format!("HEAD:refs/heads/{}", c.branch);
        let f = self
            .run_git(
                &c.dir,
                &["push", "--porcelain", "--quiet", "origin", &refspec],
                Input::None,
            )
            .await?;
        if f.success() {
            return Ok(());
        }
        Err(push_error(&c.repo, &c.branch, &f))
    }
}

/// A path a plugin names in a clone: never into the repository's `.git`.
fn not_git_dir(path: &str) -> Result<&Path, CapError> {
    let p = Path::new(path);
    if p.components().any(|c| c.as_os_str() == ".git") {
        return Err(CapError::Invalid(format!(
            "`{path}`: the repository's .git directory is the host's"
        )));
    }
    Ok(p)
}

/// What a plugin is told when a path in a clone cannot be used.
fn file_error(path: &str, e: FileError, max: usize) -> CapError {
    match e {
        FileError::Outside { .. } => {
            CapError::Invalid(format!("`{path}` is not a path inside the clone"))
        }
        FileError::NotFound { .. } => CapError::Invalid(format!("no file `{path}` in the clone")),
        FileError::NotAFile { .. } => CapError::Invalid(format!("`{path}` is not a file")),
        FileError::TooLarge { .. } => {
            CapError::Limit(format!("`{path}` is larger than {max} bytes"))
        }
        e => CapError::Failed(e.to_string()),
    }
}

/// `*` stays within a directory, `**` crosses them (as in `when`).
fn glob(pattern: &str) -> Result<GlobSet, CapError> {
    let g = GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| CapError::Invalid(format!("bad glob {pattern:?}: {}", e.kind())))?;
    GlobSetBuilder::new()
        .add(g)
        .build()
        .map_err(|e| CapError::Invalid(format!("bad glob {pattern:?}: {e}")))
}

/// A git failure that is not git's answer (it could not run, or ran out
/// of time or room) as a capability error.
fn git_error(e: GitError, timeout: Duration) -> CapError {
    match e {
        GitError::Timeout { command, .. } => {
            CapError::Limit(format!("`git {command}` took longer than {timeout:?}"))
        }
        e @ GitError::TooLarge { .. } => CapError::Limit(e.to_string()),
        e @ (GitError::NotFound | GitError::Io(_) | GitError::Exit { .. }) => {
            CapError::Failed(e.to_string())
        }
    }
}

fn remote(code: &str, message: String, transient: bool) -> CapError {
    CapError::Remote(RemoteError {
        service: "git".into(),
        status: None,
        code: code.into(),
        message,
        transient,
    })
}

fn unreachable(stderr: &str) -> bool {
    [
        "Connection refused",
        "timed out",
        "Could not resolve",
        "unable to connect",
        "Connection reset",
    ]
    .iter()
    .any(|s| stderr.contains(s))
}

fn clone_error(repo: &GitRemote, branch: &str, f: &Finished) -> CapError {
    let stderr = String::from_utf8_lossy(&f.stderr);
    let tail = f.stderr_tail(3);
    if stderr.contains("Remote branch") && stderr.contains("not found") {
        remote(
            "BRANCH_NOT_FOUND",
            format!("`{}` has no branch `{branch}`", repo.name),
            false,
        )
    } else if unreachable(&stderr) {
        remote(
            "UNREACHABLE",
            format!(
                "cannot reach `{}` ({}): {tail}",
                repo.name,
                redact_url(&repo.url)
            ),
            true,
        )
    } else if stderr.contains("not found")
        || stderr.contains("does not exist")
        || stderr.contains("does not appear to be a git repository")
        || stderr.contains("not exported")
    {
        remote(
            "REPOSITORY_NOT_FOUND",
            format!("`{}` ({}): {tail}", repo.name, redact_url(&repo.url)),
            false,
        )
    } else {
        remote(
            "CLONE_FAILED",
            format!(
                "cloning `{}` ({}): {tail}",
                repo.name,
                redact_url(&repo.url)
            ),
            false,
        )
    }
}

fn push_error(repo: &GitRemote, branch: &str, f: &Finished) -> CapError {
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&f.stdout),
        String::from_utf8_lossy(&f.stderr)
    );
    if all.contains("non-fast-forward") || all.contains("fetch first") || all.contains("[rejected]")
    {
        remote(
            "NON_FAST_FORWARD",
            format!(
                "`{}` branch `{branch}` moved on since the clone; clone again, re-apply and push",
                repo.name
            ),
            true,
        )
    } else if unreachable(&all) {
        remote(
            "UNREACHABLE",
            format!("cannot reach `{}`: {}", repo.name, f.stderr_tail(3)),
            true,
        )
    } else {
        remote(
            "PUSH_REJECTED",
            format!(
                "`{}` refused the push to `{branch}`: {}",
                repo.name,
                f.stderr_tail(3)
            ),
            false,
        )
    }
}

impl Host for GitCap {
    async fn clone(
        &mut self,
        repo: String,
        branch: Option<String>,
    ) -> wasmtime::Result<Result<Checkout, CapError>> {
        let target = match &branch {
            Some(b) => format!("{repo} ({b})"),
            None => repo.clone(),
        };
        let r = self.clone_repo(&repo, branch).await;
        self.audit
            .record("git.clone", &target, &r, |n| format!("ok: checkout {n}"));
        Ok(r)
    }

    async fn list_files(
        &mut self,
        checkout: Checkout,
        pattern: String,
    ) -> wasmtime::Result<Result<Vec<String>, CapError>> {
        let r = self.list(checkout, &pattern).await;
        let target = self.target(checkout, &pattern);
        self.audit.record("git.list", &target, &r, |v| {
            format!("ok: {} files", v.len())
        });
        Ok(r)
    }

    async fn read_file(
        &mut self,
        checkout: Checkout,
        path: String,
    ) -> wasmtime::Result<Result<Vec<u8>, CapError>> {
        let r = self.read(checkout, &path);
        let target = self.target(checkout, &path);
        self.audit.record("git.read", &target, &r, |v| {
            format!("ok: {} bytes", v.len())
        });
        Ok(r)
    }

    async fn write_file(
        &mut self,
        checkout: Checkout,
        path: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<(), CapError>> {
        let r = self.write(checkout, &path, &content);
        let target = self.target(checkout, &path);
        self.audit.record("git.write", &target, &r, |_| {
            format!("ok: {} bytes", content.len())
        });
        Ok(r)
    }

    async fn commit(
        &mut self,
        checkout: Checkout,
        message: String,
    ) -> wasmtime::Result<Result<Option<String>, CapError>> {
        let r = self.commit_all(checkout, &message).await;
        let first = message.lines().next().unwrap_or("");
        let target = self.target(checkout, first);
        self.audit.record("git.commit", &target, &r, |c| match c {
            Some(sha) => format!("ok: {sha}"),
            None => "ok: nothing to commit".into(),
        });
        Ok(r)
    }

    async fn push(&mut self, checkout: Checkout) -> wasmtime::Result<Result<(), CapError>> {
        let r = self.push_branch(checkout).await;
        let target = self.target(checkout, "");
        self.audit.record("git.push", &target, &r, |_| "ok".into());
        Ok(r)
    }

    async fn head(&mut self, checkout: Checkout) -> wasmtime::Result<Result<String, CapError>> {
        Ok(self.head_sha(checkout).await)
    }
}

impl GitCap {
    /// `repo:branch what` for the audit trail.
    fn target(&self, checkout: Checkout, what: &str) -> String {
        match self.clone_of(checkout) {
            Ok(c) if what.is_empty() => format!("{}:{}", c.repo.name, c.branch),
            Ok(c) => format!("{}:{} {what}", c.repo.name, c.branch),
            Err(_) => format!("checkout {checkout} {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::git::fixtures::Hostile;

    fn remote(name: &str, url: &str) -> GitRemote {
        use crate::grants::branch::{BranchPattern, BranchPatterns};
        GitRemote {
            name: name.into(),
            url: url.into(),
            branch: "main".into(),
            push: BranchPatterns::new(vec![BranchPattern::parse("main").unwrap()]),
        }
    }

    #[tokio::test]
    async fn clones_start_empty_and_command_transports_are_refused() {
        let h = Hostile::new();
        let evil = format!("ext::sh -c touch% {}", h.marker.display());
        let mut cap = GitCap::new(
            "s",
            vec![
                remote("app", &format!("file://{}", h.repo.display())),
                remote("evil", &evil),
                remote("fd", "fd::0"),
            ],
            CommitIdentity::default(),
        );
        let n = cap.clone_repo("app", None).await.unwrap();
        let dir = cap.clone_of(n).unwrap().dir.clone();
        // An empty template: no sample hooks, nothing but clone's config.
        assert!(!dir.join(".git/hooks").exists());
        assert_eq!(cap.list(n, "*").await.unwrap(), vec!["a.txt".to_string()]);
        cap.write(n, "b.txt", b"b").unwrap();
        assert!(cap.commit_all(n, "two").await.unwrap().is_some());
        for name in ["evil", "fd"] {
            let e = cap.clone_repo(name, None).await.unwrap_err();
            assert!(
                matches!(&e, CapError::Remote(r) if r.message.contains("not allowed")),
                "{name}: {}",
                crate::caps::describe(&e)
            );
        }
        assert_eq!(h.fired(), "");
    }
}
