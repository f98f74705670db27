//! `[git.NAME]`: the repositories a pipeline declares once and grants
//! stages by name (`grants.git`). The URL, the branch and the branches a
//! stage may push to sit together where a reviewer sees them.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::caps::capability::{Capability, GrantCx, Str, StrList};
use crate::grants::branch::{BranchPattern, BranchPatterns};

/// A repository the host clones and pushes for the stages granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRemote {
    pub name: String,
    /// `https://`, `http://`, `git://` or `file://`.
    pub url: String,
    /// Branch cloned when the stage names none.
    pub branch: String,
    /// Branches a granted stage may push to (default: `branch`), compiled.
    pub push: BranchPatterns,
}

/// The pipeline file as the git capability reads it: its own tables.
#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    git: BTreeMap<Str, Spanned<RawGitRemote>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGitRemote {
    url: Option<Str>,
    branch: Option<Str>,
    push: Option<StrList>,
}

/// Every `[git.NAME]` table, checked.
pub(super) fn declare(cx: &mut GrantCx<'_>) -> BTreeMap<String, GitRemote> {
    let Some(doc) = cx.decode::<Doc>(super::GitCap::TABLE.as_slice()) else {
        return BTreeMap::new();
    };
    cx.declarations(doc.git, "git repository", remote)
}

fn remote(
    cx: &mut GrantCx<'_>,
    name: String,
    span: std::ops::Range<usize>,
    r: RawGitRemote,
) -> Option<GitRemote> {
    let Some(url) = r.url else {
        cx.err(
            span,
            format!("[git.{name}] is missing `url`; expected e.g. `url = \"https://git.example.com/org/deploy.git\"`"),
        );
        return None;
    };
    if let Err(e) = git_url(url.get_ref()) {
        cx.err(url.span(), format!("[git.{name}] `url`: {e}"));
    }
    let branch = match &r.branch {
        Some(b) => {
            if let Err(e) = branch_name(b.get_ref()) {
                cx.err(b.span(), format!("[git.{name}] `branch`: {e}"));
            }
            b.get_ref().clone()
        }
        None => "main".to_string(),
    };
    let written: Vec<Str> = match r.push {
        Some(list) => list,
        None => vec![Spanned::new(span.clone(), branch.clone())],
    };
    let mut push = Vec::new();
    for p in &written {
        match BranchPattern::parse(p.get_ref()) {
            Ok(b) => push.push(b),
            Err(e) => cx.err(p.span(), format!("[git.{name}] `push`: {e}")),
        }
    }
    Some(GitRemote {
        name,
        url: url.into_inner(),
        branch,
        push: BranchPatterns::new(push),
    })
}

/// Remotes the host's git may talk to. `ssh://` and scp-style addresses
/// are refused: git would use the user's own ssh keys and config, outside
/// every grant. `ext::` and friends would run commands.
pub fn git_url(url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).map_err(|e| {
        anyhow::anyhow!("{url:?} is not a URL ({e}); expected https://, http://, git:// or file://")
    })?;
    match parsed.scheme() {
        "https" | "http" | "git" | "file" => {}
        other => {
            anyhow::bail!(
                "scheme `{other}` is not supported; expected https://, http://, git:// or file://"
            )
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        anyhow::bail!("credentials do not belong in the URL (they would be logged and stored)");
    }
    Ok(())
}

/// A branch name git accepts and no option can hide in.
pub fn branch_name(b: &str) -> anyhow::Result<()> {
    let ok = !b.is_empty()
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("@{")
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{b:?} is not a branch name (letters, digits, `-`, `_`, `.`, `/`; no `..`, not starting with `-`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls() {
        for ok in [
            "https://git.example.com/o/r.git",
            "git://127.0.0.1:19418/r.git",
            "file:///srv/git/r.git",
        ] {
            assert!(git_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ssh://git@github.com/o/r",
            "git@github.com:o/r.git",
            "ext::sh -c touch% /tmp/x",
            "https://user:token@github.com/o/r",
            "/srv/r.git",
        ] {
            assert!(git_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branch_names() {
        for ok in ["main", "env/dev", "release-1.2"] {
            assert!(branch_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-f", "a..b", "x.lock", "a b", "a/", "@{u}", "a;rm"] {
            assert!(branch_name(bad).is_err(), "{bad}");
        }
    }
}
