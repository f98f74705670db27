//! Fakes of the capability ports for plugin unit tests. Each records every
//! call (in `calls`, in order) and answers from replies scripted per
//! function, first in first out. A call without a scripted reply returns
//! `CapError::Failed("fake: no reply scripted for ...")`, except calls whose
//! answer is `()`, which succeed: tests script only what they look at.
//!
//! ```ignore
//! let mut docker = FakeDocker::default();
//! docker.tag.reply(Err(CapError::Failed("boom".into())));
//! run_the_stage(&mut docker);
//! assert!(matches!(&docker.calls[0], DockerCall::Tag { target, .. } if target == "app:1"));
//! ```

use std::collections::VecDeque;

use crate::docker::{
    BuildRequest, BuildResult, ContainerInfo, ContainerSpec, Docker, PushResult, RunRequest,
    RunResult,
};
use crate::git::{Checkout, Git};
use crate::scan::{Scan, ScanRequest};
use crate::ssh::{ExecRequest, ExecResult, Ssh};
use crate::CapError;

/// Scripted answers of one function, first in first out.
pub struct Replies<T> {
    queue: VecDeque<Result<T, CapError>>,
}

impl<T> Default for Replies<T> {
    fn default() -> Self {
        Replies {
            queue: VecDeque::new(),
        }
    }
}

impl<T> Replies<T> {
    /// Queues the answer of the next unanswered call.
    pub fn reply(&mut self, answer: Result<T, CapError>) -> &mut Self {
        self.queue.push_back(answer);
        self
    }

    /// Replies not used yet.
    pub fn left(&self) -> usize {
        self.queue.len()
    }

    fn next(&mut self, what: &str) -> Result<T, CapError> {
        self.queue.pop_front().unwrap_or_else(|| {
            Err(CapError::Failed(format!(
                "fake: no reply scripted for {what}"
            )))
        })
    }
}

impl Replies<()> {
    fn next_or_ok(&mut self) -> Result<(), CapError> {
        self.queue.pop_front().unwrap_or(Ok(()))
    }
}

/// One call to [`FakeDocker`].
#[derive(Clone, Debug)]
pub enum DockerCall {
    Build(BuildRequest),
    Tag {
        source: String,
        target: String,
    },
    Push {
        image: String,
        auth_secret: Option<String>,
    },
    Run(RunRequest),
    Create(ContainerSpec),
    Start(String),
    Stop {
        name: String,
        timeout_secs: Option<u32>,
    },
    Remove(String),
    Inspect(String),
    ListContainers(String),
}

/// A [`Docker`] that records calls and answers from scripted replies.
#[derive(Default)]
pub struct FakeDocker {
    pub calls: Vec<DockerCall>,
    pub build: Replies<BuildResult>,
    pub tag: Replies<()>,
    pub push: Replies<PushResult>,
    pub run: Replies<RunResult>,
    pub create: Replies<String>,
    pub start: Replies<()>,
    pub stop: Replies<()>,
    pub remove: Replies<()>,
    pub inspect: Replies<ContainerInfo>,
    pub list_containers: Replies<Vec<ContainerInfo>>,
}

impl Docker for FakeDocker {
    fn build(&mut self, req: &BuildRequest) -> Result<BuildResult, CapError> {
        self.calls.push(DockerCall::Build(req.clone()));
        self.build.next("docker.build")
    }
    fn tag(&mut self, source: &str, target: &str) -> Result<(), CapError> {
        let (source, target) = (source.into(), target.into());
        self.calls.push(DockerCall::Tag { source, target });
        self.tag.next_or_ok()
    }
    fn push(&mut self, image: &str, auth_secret: Option<&str>) -> Result<PushResult, CapError> {
        let (image, auth_secret) = (image.into(), auth_secret.map(Into::into));
        self.calls.push(DockerCall::Push { image, auth_secret });
        self.push.next("docker.push")
    }
    fn run(&mut self, req: &RunRequest) -> Result<RunResult, CapError> {
        self.calls.push(DockerCall::Run(req.clone()));
        self.run.next("docker.run")
    }
    fn create(&mut self, spec: &ContainerSpec) -> Result<String, CapError> {
        self.calls.push(DockerCall::Create(spec.clone()));
        self.create.next("docker.create")
    }
    fn start(&mut self, name: &str) -> Result<(), CapError> {
        self.calls.push(DockerCall::Start(name.into()));
        self.start.next_or_ok()
    }
    fn stop(&mut self, name: &str, timeout_secs: Option<u32>) -> Result<(), CapError> {
        let name = name.into();
        self.calls.push(DockerCall::Stop { name, timeout_secs });
        self.stop.next_or_ok()
    }
    fn remove(&mut self, name: &str) -> Result<(), CapError> {
        self.calls.push(DockerCall::Remove(name.into()));
        self.remove.next_or_ok()
    }
    fn inspect(&mut self, name: &str) -> Result<ContainerInfo, CapError> {
        self.calls.push(DockerCall::Inspect(name.into()));
        self.inspect.next("docker.inspect")
    }
    fn list_containers(&mut self, label: &str) -> Result<Vec<ContainerInfo>, CapError> {
        self.calls.push(DockerCall::ListContainers(label.into()));
        self.list_containers.next("docker.list-containers")
    }
}

/// A [`Scan`] that records requests and answers from scripted reports.
#[derive(Default)]
pub struct FakeScan {
    pub calls: Vec<ScanRequest>,
    pub image: Replies<String>,
}

impl Scan for FakeScan {
    fn image(&mut self, req: &ScanRequest) -> Result<String, CapError> {
        self.calls.push(req.clone());
        self.image.next("scan.image")
    }
}

/// One call to [`FakeGit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitCall {
    Clone {
        repo: String,
        branch: Option<String>,
    },
    ListFiles {
        checkout: Checkout,
        pattern: String,
    },
    ReadFile {
        checkout: Checkout,
        path: String,
    },
    WriteFile {
        checkout: Checkout,
        path: String,
        content: Vec<u8>,
    },
    Commit {
        checkout: Checkout,
        message: String,
    },
    Push(Checkout),
    Head(Checkout),
}

/// A [`Git`] that records calls and answers from scripted replies.
#[derive(Default)]
pub struct FakeGit {
    pub calls: Vec<GitCall>,
    pub clone_repo: Replies<Checkout>,
    pub list_files: Replies<Vec<String>>,
    pub read_file: Replies<Vec<u8>>,
    pub write_file: Replies<()>,
    pub commit: Replies<Option<String>>,
    pub push: Replies<()>,
    pub head: Replies<String>,
}

impl Git for FakeGit {
    fn clone_repo(&mut self, repo: &str, branch: Option<&str>) -> Result<Checkout, CapError> {
        let (repo, branch) = (repo.into(), branch.map(Into::into));
        self.calls.push(GitCall::Clone { repo, branch });
        self.clone_repo.next("git.clone")
    }
    fn list_files(&mut self, checkout: Checkout, pattern: &str) -> Result<Vec<String>, CapError> {
        let pattern = pattern.into();
        self.calls.push(GitCall::ListFiles { checkout, pattern });
        self.list_files.next("git.list-files")
    }
    fn read_file(&mut self, checkout: Checkout, path: &str) -> Result<Vec<u8>, CapError> {
        let path = path.into();
        self.calls.push(GitCall::ReadFile { checkout, path });
        self.read_file.next("git.read-file")
    }
    fn write_file(
        &mut self,
        checkout: Checkout,
        path: &str,
        content: &[u8],
    ) -> Result<(), CapError> {
        let (path, content) = (path.into(), content.to_vec());
        self.calls.push(GitCall::WriteFile {
            checkout,
            path,
            content,
        });
        self.write_file.next_or_ok()
    }
    fn commit(&mut self, checkout: Checkout, message: &str) -> Result<Option<String>, CapError> {
        let message = message.into();
        self.calls.push(GitCall::Commit { checkout, message });
        self.commit.next("git.commit")
    }
    fn push(&mut self, checkout: Checkout) -> Result<(), CapError> {
        self.calls.push(GitCall::Push(checkout));
        self.push.next_or_ok()
    }
    fn head(&mut self, checkout: Checkout) -> Result<String, CapError> {
        self.calls.push(GitCall::Head(checkout));
        self.head.next("git.head")
    }
}

/// One call to [`FakeSsh`].
#[derive(Clone, Debug)]
pub enum SshCall {
    Exec(ExecRequest),
    Upload {
        target: String,
        local_path: String,
        remote_path: String,
    },
}

/// An [`Ssh`] that records calls and answers from scripted replies.
#[derive(Default)]
pub struct FakeSsh {
    pub calls: Vec<SshCall>,
    pub exec: Replies<ExecResult>,
    pub upload: Replies<String>,
}

impl Ssh for FakeSsh {
    fn exec(&mut self, req: &ExecRequest) -> Result<ExecResult, CapError> {
        self.calls.push(SshCall::Exec(req.clone()));
        self.exec.next("ssh.exec")
    }
    fn upload(
        &mut self,
        target: &str,
        local_path: &str,
        remote_path: &str,
    ) -> Result<String, CapError> {
        self.calls.push(SshCall::Upload {
            target: target.into(),
            local_path: local_path.into(),
            remote_path: remote_path.into(),
        });
        self.upload.next("ssh.upload")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fakes_record_calls_and_answer_in_order() {
        let mut git = FakeGit::default();
        git.clone_repo.reply(Ok(7));
        git.commit.reply(Ok(Some("abc".into()))).reply(Ok(None));
        let c = git.clone_repo("deploy", Some("main")).unwrap();
        git.write_file(c, "a.yaml", b"x").unwrap();
        assert_eq!(git.commit(c, "m").unwrap().as_deref(), Some("abc"));
        assert_eq!(git.commit(c, "m").unwrap(), None);
        assert_eq!(git.calls.len(), 4);
        assert_eq!(
            git.calls[0],
            GitCall::Clone {
                repo: "deploy".into(),
                branch: Some("main".into())
            }
        );
        assert_eq!(git.commit.left(), 0);
    }

    #[test]
    fn an_unscripted_answer_is_an_error_naming_the_call() {
        let mut ssh = FakeSsh::default();
        let e = ssh.upload("web", "a", "b").unwrap_err();
        assert_eq!(
            e.message(),
            "failed: fake: no reply scripted for ssh.upload"
        );
        let mut docker = FakeDocker::default();
        docker.tag.reply(Err(CapError::Failed("boom".into())));
        assert!(docker.tag("a:1", "a:2").is_err());
        // `()` answers succeed unless scripted otherwise.
        assert!(docker.tag("a:1", "a:3").is_ok());
        assert!(matches!(&docker.calls[1], DockerCall::Tag { target, .. } if target == "a:3"));
        let mut scan = FakeScan::default();
        assert!(scan
            .image(&ScanRequest {
                image: "x".into(),
                scanners: vec![]
            })
            .is_err());
        assert_eq!(scan.calls.len(), 1);
    }
}
