//! `pipeline.lock`: every remote plugin of a pipeline pinned to the exact
//! bytes it resolved to. Written next to the pipeline file, named after it
//! (`pipeline.toml` → `pipeline.lock`), meant to be committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

const HEADER: &str = "# Written by `host run` / `host lock`: the exact plugin bytes this pipeline runs.\n# Commit it. `host lock --update` re-resolves tags and URLs.\n";

pub fn path_for(pipeline_file: &Path) -> PathBuf {
    pipeline_file.with_extension("lock")
}

impl LockFile {
    /// The lock file, or an empty one when there is none yet.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LockFile {
                    version: 1,
                    ..Default::default()
                })
            }
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        };
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// A lock file's text, checked (untrusted: it comes from a repository).
    pub fn parse(text: &str) -> Result<Self, String> {
        let lock: LockFile =
            toml::from_str(text).map_err(|e| format!("not a valid lock file: {e}"))?;
        if lock.version != 1 {
            return Err(format!(
                "lock file version {} is not supported (expected 1)",
                lock.version
            ));
        }
        Ok(lock)
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let body = toml::to_string(self)?;
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, format!("{HEADER}{body}"))
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
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
        l.write(&p).unwrap();
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
