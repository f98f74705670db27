//! Branch patterns (`[git.NAME] push = ["env/*"]`): compiled once when the
//! pipeline is validated and matched as they are when a stage pushes. `*`
//! stays within one `/`-separated part, `**` crosses them (as in `when`).
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};

/// One compiled branch glob, with the text it was written as.
#[derive(Clone)]
pub struct BranchPattern {
    text: String,
    matcher: GlobMatcher,
}

impl BranchPattern {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let g = GlobBuilder::new(text)
            .literal_separator(true)
            .build()
            .map_err(|e| anyhow::anyhow!("invalid branch glob: {}", e.kind()))?;
        Ok(Self {
            text: text.to_string(),
            matcher: g.compile_matcher(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The branches a stage may push to.
#[derive(Clone, Default)]
pub struct BranchPatterns(Arc<Vec<BranchPattern>>);

impl BranchPatterns {
    pub fn new(patterns: Vec<BranchPattern>) -> Self {
        Self(Arc::new(patterns))
    }

    pub fn allows(&self, branch: &str) -> bool {
        self.0.iter().any(|p| p.matcher.is_match(branch))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|p| p.text.as_str())
    }
}

impl std::fmt::Debug for BranchPatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for BranchPatterns {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for BranchPatterns {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_stays_within_a_part() {
        let p = BranchPatterns::new(vec![
            BranchPattern::parse("env/*").unwrap(),
            BranchPattern::parse("release/**").unwrap(),
        ]);
        assert!(p.allows("env/dev"));
        assert!(!p.allows("env/dev/x"));
        assert!(p.allows("release/1/2"));
        assert!(!p.allows("main"));
        assert!(BranchPattern::parse("a[").is_err());
    }
}
