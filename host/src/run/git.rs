//! Defaults for a run's context, read from the git checkout it runs in.
//!
//! The checkout is the user's, and its `.git/config` may have been written
//! by anything (a hostile dependency, a previous build): git runs on the
//! host's hardened runner ([`crate::exec::git`]), locally only, so no
//! fsmonitor, hook, pager, credential helper or other configured command
//! runs, and neither the user's global config nor the host's environment
//! reaches it.
use std::path::Path;
use std::time::Duration;

use crate::exec::git::Git;

/// Per git command; these are all instant on any sane checkout.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A sha, a branch or a tag name.
const MAX_ANSWER: usize = 64 << 10;

#[derive(Debug, Default, Clone)]
pub struct Checkout {
    pub sha: Option<String>,
    pub branch: Option<String>,
    pub tag: Option<String>,
}

fn git(g: &Git, dir: &Path, args: &[&str]) -> Option<String> {
    let out = g.output_blocking(dir, args).ok()?;
    let s = String::from_utf8(out).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Whatever git can tell; empty when `dir` is not a checkout or git is missing.
pub fn read(dir: &Path) -> Checkout {
    let Ok(g) = Git::with_temp_home() else {
        return Checkout::default();
    };
    let g = g.deadline(READ_TIMEOUT).max_output(MAX_ANSWER);
    Checkout {
        sha: git(&g, dir, &["rev-parse", "HEAD"]),
        branch: git(&g, dir, &["symbolic-ref", "--short", "-q", "HEAD"]),
        tag: git(&g, dir, &["describe", "--tags", "--exact-match", "HEAD"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::git::fixtures::{self, Hostile};

    #[test]
    fn reads_a_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, sha) = fixtures::repo(dir.path());
        let c = read(&repo);
        assert_eq!(c.sha.as_deref(), Some(sha.as_str()));
        assert_eq!(c.branch.as_deref(), Some("main"));
        assert_eq!(c.tag.as_deref(), Some("v1"));
        // Not a checkout: nothing, no error.
        let c = read(dir.path());
        assert!(c.sha.is_none() && c.branch.is_none() && c.tag.is_none());
    }

    #[test]
    fn reading_a_hostile_checkout_runs_nothing_from_it() {
        let h = Hostile::new();
        h.assert_armed();
        let c = read(&h.repo);
        assert_eq!(c.sha.as_deref(), Some(h.sha.as_str()));
        assert_eq!(c.branch.as_deref(), Some("main"));
        assert_eq!(c.tag.as_deref(), Some("v1"));
        assert_eq!(h.fired(), "");
    }
}
