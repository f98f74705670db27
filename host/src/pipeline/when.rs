//! `when` conditions: which builds a stage runs for.
//!
//! Patterns are globs (globset) where `*`, `?` and `[..]` never cross a `/`
//! and `**` does (as a whole path component: `feature/**`, `**/hotfix`).
//! So `feature/*` matches `feature/login` but not `feature/ui/login`; use
//! `feature/**` for that. Branch names like `release/1.2` read like paths, so
//! this keeps `*` from silently matching more than intended.

use globset::{Glob, GlobBuilder, GlobMatcher};

/// Conditions under which a stage runs. An empty list means "no constraint";
/// every non-empty list must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct When {
    /// Branch patterns. A branch constraint never matches a tag build.
    pub branch: Vec<String>,
    /// Tag patterns (e.g. `v*`). A tag constraint never matches a branch build.
    pub tag: Vec<String>,
    /// Event patterns (e.g. `push`, `pull_request`, `manual`).
    pub event: Vec<String>,
    /// Run even when a stage this one `needs` failed or was skipped (the
    /// executor's concern; it does not bypass the branch/tag/event match).
    pub always: bool,
}

/// What started a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trigger {
    /// Set for branch builds.
    pub branch: Option<String>,
    /// Set for tag builds; a trigger with a tag is a tag build even when a
    /// branch is known too.
    pub tag: Option<String>,
    pub event: String,
}

impl When {
    /// True when every given constraint holds for `trigger`.
    pub fn matches(&self, trigger: &Trigger) -> bool {
        let is_tag_build = trigger.tag.is_some();
        if !self.branch.is_empty() {
            match (&trigger.branch, is_tag_build) {
                (Some(branch), false) if any_match(&self.branch, branch) => {}
                _ => return false,
            }
        }
        if !self.tag.is_empty() {
            match &trigger.tag {
                Some(tag) if any_match(&self.tag, tag) => {}
                _ => return false,
            }
        }
        if !self.event.is_empty() && !any_match(&self.event, &trigger.event) {
            return false;
        }
        true
    }

    /// True when there is no branch/tag/event constraint at all.
    pub fn is_unconditional(&self) -> bool {
        self.branch.is_empty() && self.tag.is_empty() && self.event.is_empty()
    }
}

/// Compiles one pattern with this module's rules; validation uses it to
/// reject bad patterns up front, so `matches` can treat failures as "no".
pub fn compile(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map(|g: Glob| g.compile_matcher())
}

fn any_match(patterns: &[String], value: &str) -> bool {
    patterns
        .iter()
        .any(|p| compile(p).is_ok_and(|m| m.is_match(value)))
}
