//! The whole stage against a simulated repository and remote.

use std::collections::BTreeMap;

use stage_sdk::{Context, Denial, Level, RemoteError, ReportStatus};

use super::*;
use crate::gitops_stage;

type Files = BTreeMap<String, Vec<u8>>;
/// Someone else's push: changes the remote's files.
type Race = Box<dyn FnMut(&mut Files)>;

struct Checkout {
    base: usize,
    files: Files,
    committed: Option<usize>,
}

/// A remote with a linear history, clones of it, and scripted trouble.
#[derive(Default)]
struct Sim {
    /// Snapshots: index = commit number.
    history: Vec<(String, Files)>,
    checkouts: Vec<Checkout>,
    /// Pushes by someone else that land just before each of ours.
    races: Vec<Race>,
    /// `op` → the error it answers.
    errors: BTreeMap<&'static str, CapError>,
    commit_finds_nothing: bool,
    calls: Vec<String>,
}

fn sha(n: usize) -> String {
    format!("{n:040x}")
}

impl Sim {
    fn new(files: &[(&str, &str)]) -> Self {
        let files = files
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect();
        Sim {
            history: vec![("initial".into(), files)],
            ..Sim::default()
        }
    }

    fn tip(&self) -> usize {
        self.history.len() - 1
    }

    fn file(&self, path: &str) -> String {
        String::from_utf8(self.history[self.tip()].1[path].clone()).unwrap()
    }

    fn count(&self, op: &str) -> usize {
        self.calls.iter().filter(|c| c.starts_with(op)).count()
    }

    fn call(&mut self, op: &'static str, detail: String) -> Result<(), CapError> {
        self.calls.push(format!("{op} {detail}"));
        match self.errors.get(op) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn co(&mut self, c: u32) -> &mut Checkout {
        &mut self.checkouts[c as usize]
    }
}

/// `*` within a path segment, `**` across segments.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => {
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        [b'*', rest @ ..] => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob(rest, &s[i..])),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

impl Git for Sim {
    fn clone_repo(&mut self, repo: &str, branch: Option<&str>) -> Result<u32, CapError> {
        self.call("clone", format!("{repo} {branch:?}"))?;
        let base = self.tip();
        self.checkouts.push(Checkout {
            base,
            files: self.history[base].1.clone(),
            committed: None,
        });
        Ok(self.checkouts.len() as u32 - 1)
    }
    fn list_files(&mut self, c: u32, pattern: &str) -> Result<Vec<String>, CapError> {
        self.call("list-files", pattern.to_string())?;
        Ok(self
            .co(c)
            .files
            .keys()
            .filter(|f| glob(pattern.as_bytes(), f.as_bytes()))
            .cloned()
            .collect())
    }
    fn read_file(&mut self, c: u32, path: &str) -> Result<Vec<u8>, CapError> {
        self.call("read-file", path.to_string())?;
        self.co(c)
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| CapError::Invalid(format!("no file {path}")))
    }
    fn write_file(&mut self, c: u32, path: &str, content: &[u8]) -> Result<(), CapError> {
        self.call("write-file", path.to_string())?;
        self.co(c).files.insert(path.to_string(), content.to_vec());
        Ok(())
    }
    fn commit(&mut self, c: u32, message: &str) -> Result<Option<String>, CapError> {
        self.call("commit", message.to_string())?;
        let base = self.co(c).base;
        let same = self.history[base].1 == self.checkouts[c as usize].files;
        if self.commit_finds_nothing || same {
            return Ok(None);
        }
        // The commit's number if it lands right after its base.
        self.co(c).committed = Some(base + 1);
        Ok(Some(sha(base + 1)))
    }
    fn push(&mut self, c: u32) -> Result<(), CapError> {
        self.call("push", String::new())?;
        if !self.races.is_empty() {
            let mut race = self.races.remove(0);
            let mut files = self.history[self.tip()].1.clone();
            race(&mut files);
            self.history.push(("someone else".into(), files));
        }
        let head = self.tip();
        let co = &self.checkouts[c as usize];
        if co.base != head {
            return Err(CapError::Remote(RemoteError {
                service: "git".into(),
                status: None,
                code: "NON_FAST_FORWARD".into(),
                message: "the remote branch moved on".into(),
                transient: false,
            }));
        }
        if co.committed.is_some() {
            let files = co.files.clone();
            self.history.push(("ours".into(), files));
        }
        Ok(())
    }
    fn head(&mut self, c: u32) -> Result<String, CapError> {
        self.call("head", String::new())?;
        Ok(sha(self.co(c).base))
    }
}

const DEV: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: demo\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          image: 127.0.0.1:5000/app:1   # deployed by the pipeline\n";
const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: demo\n";
const KUST: &str =
    "resources:\n  - deployment.yaml\nimages:\n  - name: 127.0.0.1:5000/app\n    newTag: \"1\"\n";

fn sim() -> Sim {
    Sim::new(&[
        ("apps/demo/dev/deployment.yaml", DEV),
        ("apps/demo/dev/service.yaml", SVC),
        ("apps/demo/prod/deployment.yaml", DEV),
        ("apps/demo/prod/kustomization.yaml", KUST),
        ("README.md", "config\n"),
    ])
}

fn ctx(with: &str) -> Context {
    // With the keys `describe()` declares, as the export glue does.
    Context::for_test("deploy-dev", with).with_keys(crate::keys())
}

const WITH: &str =
    r#"{"repo":"deploy-config","paths":["apps/demo/dev/*.yaml"],"image":"127.0.0.1:5000/app:2"}"#;

fn denied(capability: &str, target: &str) -> CapError {
    CapError::Denied(Denial {
        stage: "deploy-dev".into(),
        capability: capability.into(),
        target: target.into(),
    })
}

#[test]
fn edits_commits_and_pushes() {
    let mut s = sim();
    let r = gitops_stage(&ctx(WITH), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
    assert_eq!(
        s.file("apps/demo/dev/deployment.yaml"),
        DEV.replace("app:1   #", "app:2   #")
    );
    assert_eq!(s.file("apps/demo/dev/service.yaml"), SVC);
    assert_eq!(s.file("apps/demo/prod/deployment.yaml"), DEV);
    assert_eq!(s.tip(), 1);
    assert_eq!(r.get_output("image"), Some("127.0.0.1:5000/app:2"));
    assert_eq!(r.get_output("previous-image"), Some("127.0.0.1:5000/app:1"));
    assert_eq!(r.get_output("commit"), Some(sha(1).as_str()));
    assert_eq!(r.get_output("files"), Some("apps/demo/dev/deployment.yaml"));
    assert_eq!(r.get_output("repo"), Some("deploy-config"));
    assert_eq!(r.get_output("branch"), None);
    assert_eq!(
        r.summary,
        format!(
            "deployed 127.0.0.1:5000/app:2 to deploy-config: 1 line(s) in apps/demo/dev/deployment.yaml (commit {}, was 127.0.0.1:5000/app:1)",
            &sha(1)[..12]
        )
    );
    assert_eq!(r.annotations.len(), 1);
    let a = &r.annotations[0];
    assert_eq!(a.level, Level::Info);
    assert_eq!(a.file.as_deref(), Some("apps/demo/dev/deployment.yaml"));
    assert_eq!(a.line, Some(10));
    assert_eq!(
        s.calls,
        vec![
            "clone deploy-config None",
            "list-files apps/demo/dev/*.yaml",
            "read-file apps/demo/dev/deployment.yaml",
            "read-file apps/demo/dev/service.yaml",
            "write-file apps/demo/dev/deployment.yaml",
            "commit deploy 127.0.0.1:5000/app:2 to default (pipeline test #1, run test-run)",
            "push ",
        ]
    );
}

#[test]
fn branch_environment_and_message() {
    let mut s = sim();
    let mut raw = ctx(
        r#"{"repo":"deploy-config","branch":"env/dev","paths":["apps/**/deployment.yaml","apps/demo/dev/*.yaml"],
           "image":"127.0.0.1:5000/app:2","message":"[{stage}] {image} → {environment}"}"#,
    )
    .into_raw();
    raw.run.environment = Some("dev".into());
    let r = gitops_stage(&Context::new(raw).with_keys(crate::keys()), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
    assert_eq!(s.calls[0], "clone deploy-config Some(\"env/dev\")");
    assert!(s
        .calls
        .contains(&"commit [deploy-dev] 127.0.0.1:5000/app:2 → dev".to_string()));
    // Overlapping globs: each file read once.
    assert_eq!(s.count("read-file"), 3);
    assert_eq!(
        r.get_output("files"),
        Some("apps/demo/dev/deployment.yaml,apps/demo/prod/deployment.yaml")
    );
    assert_eq!(r.get_output("branch"), Some("env/dev"));
    assert!(
        r.summary.contains("to deploy-config@env/dev: 2 line(s)"),
        "{}",
        r.summary
    );
}

#[test]
fn already_at_the_image_neither_commits_nor_pushes() {
    let mut s = sim();
    let with = r#"{"repo":"deploy-config","paths":["apps/demo/dev/*.yaml"],"image":"127.0.0.1:5000/app:1"}"#;
    let r = gitops_stage(&ctx(with), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Passed);
    assert_eq!(
        r.summary,
        "already at 127.0.0.1:5000/app:1: 1 reference(s) in 1 file(s) of deploy-config"
    );
    assert_eq!(r.get_output("commit"), Some(sha(0).as_str()));
    assert_eq!(r.get_output("files"), Some(""));
    assert_eq!(r.get_output("previous-image"), None);
    assert_eq!(
        (s.count("write-file"), s.count("commit"), s.count("push")),
        (0, 0, 0)
    );
}

#[test]
fn no_reference_fails_naming_files_and_repository() {
    let mut s = sim();
    let with = r#"{"repo":"deploy-config","paths":["apps/demo/dev/*.yaml","README.md"],"image":"127.0.0.1:5000/other:1"}"#;
    let r = gitops_stage(&ctx(with), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(
        r.summary,
        "no image reference to 127.0.0.1:5000/other in apps/demo/dev/deployment.yaml, \
         apps/demo/dev/service.yaml, README.md (deploy-config)"
    );
    assert_eq!(s.count("commit"), 0);
}

#[test]
fn a_glob_matching_nothing_is_a_config_error() {
    let mut s = sim();
    let with = r#"{"repo":"deploy-config","paths":["apps/demo/dev/*.yaml","apps/demo/stage/*.yaml"],"image":"127.0.0.1:5000/app:2"}"#;
    match gitops_stage(&ctx(with), &mut s) {
        Err(StageError::Config(m)) => assert_eq!(
            m,
            "with.paths: \"apps/demo/stage/*.yaml\" matches no file in deploy-config"
        ),
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_eq!(s.count("commit"), 0);
}

#[test]
fn config_errors_come_before_any_git_call() {
    let mut s = sim();
    let with = r#"{"repo":"deploy-config","paths":["a"],"image":"127.0.0.1:5000/app:2","message":"{nope}"}"#;
    assert!(matches!(
        gitops_stage(&ctx(with), &mut s),
        Err(StageError::Config(m)) if m.starts_with("with.message:")
    ));
    assert!(s.calls.is_empty());
}

#[test]
fn a_repository_not_granted_is_a_clear_denial() {
    let mut s = sim();
    s.errors.insert("clone", denied("git", "deploy-config"));
    let r = gitops_stage(&ctx(WITH), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(
        r.summary,
        "git clone deploy-config: denied: stage \"deploy-dev\" has no \"git\" grant for \"deploy-config\""
    );
    let a = &r.annotations[0];
    assert_eq!(a.title, "git access denied");
    assert!(
        a.message.contains("grants = { git = [\"deploy-config\"] }"),
        "{}",
        a.message
    );
    assert_eq!(r.get_output("repo"), Some("deploy-config"));
}

#[test]
fn a_branch_that_may_not_be_pushed_is_a_clear_denial() {
    let mut s = sim();
    s.errors
        .insert("push", denied("git.push", "deploy-config@main"));
    let r = gitops_stage(&ctx(WITH), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(
        r.summary.starts_with("git push to deploy-config: denied:"),
        "{}",
        r.summary
    );
    assert!(r.annotations[0]
        .message
        .contains("`[git.deploy-config] push`"));
    assert_eq!(r.get_output("commit"), None);
    assert_eq!(s.tip(), 0);
}

#[test]
fn other_capability_errors_are_reported_with_their_message() {
    let mut s = sim();
    s.errors.insert(
        "read-file",
        CapError::Limit("file larger than 1 MiB".into()),
    );
    let r = gitops_stage(&ctx(WITH), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(
        r.summary,
        "git read-file apps/demo/dev/deployment.yaml: host limit: file larger than 1 MiB"
    );
    let mut s = sim();
    s.errors.insert(
        "push",
        CapError::Remote(RemoteError {
            service: "git".into(),
            status: None,
            code: "CONNECT_FAILED".into(),
            message: "connection refused".into(),
            transient: true,
        }),
    );
    let r = gitops_stage(&ctx(WITH), &mut s).unwrap();
    assert_eq!(
        r.summary,
        "git push to deploy-config: git: CONNECT_FAILED: connection refused"
    );
    assert_eq!(s.count("push"), 1);
}

#[test]
fn the_remote_moving_on_means_clone_again_and_reapply() {
    let mut s = sim();
    for i in 0..2 {
        s.races.push(Box::new(move |f: &mut Files| {
            f.insert("README.md".into(), format!("edit {i}\n").into_bytes());
        }));
    }
    let r = gitops_stage(&ctx(WITH), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
    assert_eq!((s.count("clone"), s.count("push")), (3, 3));
    // Both the others' change and ours are on the remote.
    assert_eq!(s.file("README.md"), "edit 1\n");
    assert!(s
        .file("apps/demo/dev/deployment.yaml")
        .contains("app:2   #"));
    assert_eq!(r.get_output("commit"), Some(sha(3).as_str()));
    assert_eq!(s.tip(), 3);
}

#[test]
fn retries_run_out() {
    let mut s = sim();
    for _ in 0..5 {
        s.races.push(Box::new(|f: &mut Files| {
            f.insert("README.md".into(), b"x\n".to_vec());
        }));
    }
    let with = r#"{"repo":"deploy-config","paths":["apps/demo/dev/*.yaml"],"image":"127.0.0.1:5000/app:2","retries":1}"#;
    let r = gitops_stage(&ctx(with), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(
        r.summary,
        "git push to deploy-config: git: NON_FAST_FORWARD: the remote branch moved on — \
         still rejected after 2 attempt(s) (with.retries = 1)"
    );
    assert_eq!(s.count("clone"), 2);
    assert!(!s.file("apps/demo/dev/deployment.yaml").contains("app:2"));
}

#[test]
fn no_retries_means_one_attempt() {
    let mut s = sim();
    s.races.push(Box::new(|f: &mut Files| {
        f.insert("README.md".into(), b"x\n".to_vec());
    }));
    let with = r#"{"repo":"deploy-config","paths":["apps/demo/dev/*.yaml"],"image":"127.0.0.1:5000/app:2","retries":0}"#;
    let r = gitops_stage(&ctx(with), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert_eq!(s.count("clone"), 1);
}

#[test]
fn someone_else_deploying_the_same_image_first_is_fine() {
    let mut s = sim();
    s.races.push(Box::new(|f: &mut Files| {
        let d = String::from_utf8(f["apps/demo/dev/deployment.yaml"].clone()).unwrap();
        f.insert(
            "apps/demo/dev/deployment.yaml".into(),
            d.replace("app:1", "app:2").into_bytes(),
        );
    }));
    let r = gitops_stage(&ctx(WITH), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
    assert!(
        r.summary.starts_with("already at 127.0.0.1:5000/app:2"),
        "{}",
        r.summary
    );
    assert_eq!(r.get_output("commit"), Some(sha(1).as_str()));
    assert_eq!((s.count("clone"), s.count("push")), (2, 1));
}

#[test]
fn unsafe_yaml_is_refused_naming_file_and_line() {
    let mut s = Sim::new(&[
        (
            "apps/a.yaml",
            "spec:\n  containers: [{name: app, image: 127.0.0.1:5000/app:1}]\n",
        ),
        ("apps/b.yaml", "image: 127.0.0.1:5000/app:1\n"),
        ("apps/c.yaml", "image: &x 127.0.0.1:5000/app:1\n"),
    ]);
    let with = r#"{"repo":"deploy-config","paths":["apps/*.yaml"],"image":"127.0.0.1:5000/app:2"}"#;
    let r = gitops_stage(&ctx(with), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(
        r.summary.starts_with("refusing to edit deploy-config: apps/a.yaml:2: `containers:` holds a flow-style collection"),
        "{}",
        r.summary
    );
    assert!(r.summary.ends_with("(and 1 more)"), "{}", r.summary);
    let at: Vec<(Option<&str>, Option<u32>)> = r
        .annotations
        .iter()
        .map(|a| (a.file.as_deref(), a.line))
        .collect();
    assert_eq!(
        at,
        vec![
            (Some("apps/a.yaml"), Some(2)),
            (Some("apps/c.yaml"), Some(1))
        ]
    );
    assert_eq!((s.count("write-file"), s.count("commit")), (0, 0));
}

#[test]
fn a_file_that_is_not_text_is_refused() {
    let mut s = Sim::new(&[("apps/a.yaml", "image: 127.0.0.1:5000/app:1\n")]);
    s.history[0]
        .1
        .insert("apps/b.yaml".into(), vec![0xff, 0xfe, 0x00]);
    let with = r#"{"repo":"deploy-config","paths":["apps/*.yaml"],"image":"127.0.0.1:5000/app:2"}"#;
    let r = gitops_stage(&ctx(with), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(
        r.summary.contains("apps/b.yaml is not UTF-8 text"),
        "{}",
        r.summary
    );
}

#[test]
fn a_commit_that_finds_nothing_fails() {
    let mut s = sim();
    s.commit_finds_nothing = true;
    let r = gitops_stage(&ctx(WITH), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Failed);
    assert!(
        r.summary.contains("found nothing to commit"),
        "{}",
        r.summary
    );
    assert_eq!(s.count("push"), 0);
}

#[test]
fn image_from_needs_and_the_rollback_with_previous_image() {
    let digest = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    let pushed = format!("127.0.0.1:5000/app@{digest}");
    let with = r#"{"repo":"deploy-config","paths":["apps/demo/prod/*.yaml"]}"#;
    let mut s = sim();
    let ctx1 = Context::for_test_with_needs(
        "deploy-prod",
        with,
        vec![(
            "push",
            vec![("image", "127.0.0.1:5000/app"), ("ref", &pushed)],
        )],
    )
    .with_keys(crate::keys());
    let r = gitops_stage(&ctx1, &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
    assert_eq!(r.get_output("image"), Some(pushed.as_str()));
    assert_eq!(r.get_output("previous-image"), Some("127.0.0.1:5000/app:1"));
    assert_eq!(
        r.get_output("files"),
        Some("apps/demo/prod/deployment.yaml,apps/demo/prod/kustomization.yaml")
    );
    assert_eq!(
        s.file("apps/demo/prod/kustomization.yaml"),
        format!("resources:\n  - deployment.yaml\nimages:\n  - name: 127.0.0.1:5000/app\n    digest: {digest}\n")
    );
    // The host's rollback: the same stage with `image` = previous-image.
    let previous = r.get_output("previous-image").unwrap().to_string();
    let mut raw = ctx1.into_raw();
    let mut w: serde_json::Value = serde_json::from_str(with).unwrap();
    w["image"] = previous.clone().into();
    raw.config = w.to_string();
    raw.stage = "deploy-prod.rollback".into();
    let r = gitops_stage(&Context::new(raw).with_keys(crate::keys()), &mut s).unwrap();
    assert_eq!(r.status, ReportStatus::Passed, "{}", r.summary);
    assert_eq!(r.get_output("image"), Some(previous.as_str()));
    assert_eq!(r.get_output("previous-image"), Some(pushed.as_str()));
    assert_eq!(s.file("apps/demo/prod/deployment.yaml"), DEV);
    assert_eq!(s.file("apps/demo/prod/kustomization.yaml"), KUST);
    assert_eq!(s.tip(), 2);
}

#[test]
fn the_test_glob_matches_like_the_host() {
    assert!(glob(b"apps/*.yaml", b"apps/a.yaml"));
    assert!(!glob(b"apps/*.yaml", b"apps/x/a.yaml"));
    assert!(glob(b"apps/**/*.yaml", b"apps/x/y/a.yaml"));
    assert!(glob(b"apps/**/*.yaml", b"apps/a.yaml"));
    assert!(!glob(b"apps/*.yaml", b"apps/a.yml"));
}
