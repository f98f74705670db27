//! `pipeline.lock`: every remote plugin of a pipeline pinned to the exact
//! bytes it resolved to. Written next to the pipeline file, named after it
//! (`pipeline.toml` → `pipeline.lock`), meant to be committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::confined::Origin;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    #[serde(default)]
    pub plugins: BTreeMap<String, LockEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The `[plugins]` entry as written; a changed entry is re-resolved.
    pub source: String,
    /// What the source resolved to: for OCI the manifest by digest
    /// (`oci://registry/repo@sha256:…`), for a URL the URL.
    pub resolved: String,
    /// sha256 of the component bytes (lowercase hex).
    pub sha256: String,
}

/// Where a lock file's text is wrong: `LINE:COL: message`, quoting no
/// more of the text than the offending token.
#[derive(Debug, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct LockParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

const HEADER: &str = "# Written by `host run` / `host lock`: the exact plugin bytes this pipeline runs.\n# Commit it. `host lock --update` re-resolves tags and URLs.\n";

/// The largest lock file the host reads.
pub const MAX_LOCK_BYTES: u64 = 1 << 20;

/// 1-based line and character column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

pub fn path_for(pipeline_file: &Path) -> PathBuf {
    pipeline_file.with_extension("lock")
}

impl LockFile {
    /// The lock file, or an empty one when there is none yet.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        Self::read_from(&Origin::Operator, path)
    }

    /// The lock file beside a pipeline of `origin` (opened the way the
    /// origin allows), or an empty one when there is none yet.
    pub fn read_from(origin: &Origin, path: &Path) -> anyhow::Result<Self> {
        if !origin.exists(path) {
            return Ok(LockFile {
                version: 1,
                ..Default::default()
            });
        }
        let shown = origin.shown(path);
        let text = origin
            .read_text(path, MAX_LOCK_BYTES)
            .with_context(|| format!("reading plugin lock {shown}"))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{shown}:{e}"))
    }

    /// A lock file's text, checked (untrusted: it comes from a
    /// repository). Errors are `LINE:COL: message` and quote no more of
    /// the text than the offending token.
    pub fn parse(text: &str) -> Result<Self, LockParseError> {
        let lock: LockFile = toml::from_str(text).map_err(|e| {
            let (line, col) = line_col(text, e.span().map_or(0, |s| s.start));
            LockParseError {
                line,
                col,
                message: format!(
                    "not a valid lock file: {}",
                    crate::text::tidy_message(e.message())
                ),
            }
        })?;
        if lock.version != 1 {
            return Err(LockParseError {
                line: 1,
                col: 1,
                message: format!(
                    "lock file version {} is not supported (expected 1)",
                    lock.version
                ),
            });
        }
        Ok(lock)
    }

    /// Writes the lock file (atomically, never through a link) beside an
    /// operator's pipeline; never into an untrusted checkout.
    pub fn write(&self, origin: &Origin, path: &Path) -> anyhow::Result<()> {
        let body = toml::to_string(self).context("serializing the plugin lock")?;
        origin
            .write(path, format!("{HEADER}{body}").as_bytes())
            .with_context(|| format!("writing plugin lock {}", origin.shown(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipeline.lock");
        assert_eq!(LockFile::read(&p).unwrap().plugins.len(), 0);
        let mut l = LockFile {
            version: 1,
            ..Default::default()
        };
        l.plugins.insert(
            "tag".into(),
            LockEntry {
                source: "oci://r/tag:1".into(),
                resolved: "oci://r/tag@sha256:00".into(),
                sha256: "ab".into(),
            },
        );
        l.write(&Origin::Operator, &p).unwrap();
        assert_eq!(LockFile::read(&p).unwrap(), l);
        std::fs::write(&p, "version = 2\n").unwrap();
        assert!(LockFile::read(&p)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        assert_eq!(
            path_for(Path::new("ci/demo.toml")),
            Path::new("ci/demo.lock")
        );
    }
}
