//! Defaults for a run's context, read from the git checkout it runs in.
use std::path::Path;
use std::process::Command;

#[derive(Debug, Default, Clone)]
pub struct Checkout {
    pub sha: Option<String>,
    pub branch: Option<String>,
    pub tag: Option<String>,
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Whatever git can tell; empty when `dir` is not a checkout or git is missing.
pub fn read(dir: &Path) -> Checkout {
    Checkout {
        sha: git(dir, &["rev-parse", "HEAD"]),
        branch: git(dir, &["symbolic-ref", "--short", "-q", "HEAD"]),
        tag: git(dir, &["describe", "--tags", "--exact-match", "HEAD"]),
    }
}
