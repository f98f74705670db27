//! Whose files a pipeline names: the operator's own, or untrusted ones.
use std::path::{Path, PathBuf};

use super::{open_operator_file, read_operator_file, FileError, Root};

/// Where a pipeline file came from, and so how the host opens every file
/// it names (itself, its lock file, plugins, signatures, secret files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// The operator named it (`host run FILE`, `host check`, `host lock`):
    /// paths are the operator's own and are used as written.
    #[default]
    Operator,
    /// Committed to a repository or uploaded (`host serve`): every file it
    /// names is opened beneath `root` (the checkout), and a plugin may also
    /// be named beneath one of the operator's `plugin_dirs`. The host never
    /// writes here.
    Untrusted {
        root: PathBuf,
        plugin_dirs: Vec<PathBuf>,
    },
}

impl Origin {
    /// The root (and path beneath it) that `path` lies in, lexically: the
    /// checkout, or (for plugins) one of the plugin directories.
    fn locate(&self, path: &Path, plugin: bool) -> Result<Option<(Root, PathBuf)>, FileError> {
        let Origin::Untrusted { root, plugin_dirs } = self else {
            return Ok(None);
        };
        let mut places = vec![(root, "the checkout")];
        if plugin {
            places.extend(
                plugin_dirs
                    .iter()
                    .map(|d| (d, "the server's plugin directory")),
            );
        }
        for (dir, label) in places {
            if let Ok(rel) = path.strip_prefix(dir) {
                let r = Root::open(dir, label).map_err(|source| FileError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
                return Ok(Some((r, rel.to_path_buf())));
            }
        }
        Err(FileError::Outside {
            path: path.display().to_string(),
            root: if plugin {
                "the checkout and the server's plugin directories".into()
            } else {
                "the checkout".into()
            },
        })
    }

    /// A file the pipeline names (itself, its lock file, a secret file).
    pub fn read(&self, path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
        match self.locate(path, false)? {
            Some((root, rel)) => root.read(&rel, max),
            None => read_operator_file(path, max),
        }
    }

    /// Like [`Origin::read`], as UTF-8 text.
    pub fn read_text(&self, path: &Path, max: u64) -> Result<String, FileError> {
        let bytes = self.read(path, max)?;
        String::from_utf8(bytes).map_err(|_| FileError::NotText {
            path: self.shown(path),
        })
    }

    /// A plugin component or its signature.
    pub fn read_plugin(&self, path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
        match self.locate(path, true)? {
            Some((root, rel)) => root.read(&rel, max),
            None => read_operator_file(path, max),
        }
    }

    /// A plugin component, opened for reading.
    pub fn open_plugin(&self, path: &Path) -> Result<std::fs::File, FileError> {
        match self.locate(path, true)? {
            Some((root, rel)) => root.open_file(&rel),
            None => open_operator_file(path),
        }
    }

    /// Whether a file the pipeline names exists (for an optional file such
    /// as the lock file); a path leading outside counts as existing, so
    /// reading it reports the refusal.
    pub fn exists(&self, path: &Path) -> bool {
        match self.locate(path, false) {
            Ok(Some((root, rel))) => root.has_entry(&rel),
            Ok(None) => std::fs::symlink_metadata(path).is_ok(),
            Err(_) => true,
        }
    }

    /// Replace a file next to an operator's pipeline (the lock file),
    /// atomically and never through a link. Untrusted checkouts are never
    /// written to.
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), FileError> {
        if let Origin::Untrusted { .. } = self {
            return Err(FileError::Io {
                path: self.shown(path),
                source: std::io::Error::other("the server never writes into a checkout"),
            });
        }
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(d), Some(n)) => (
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                },
                n,
            ),
            _ => {
                return Err(FileError::NotAFile {
                    path: path.display().to_string(),
                })
            }
        };
        let root = Root::open(dir, "the pipeline's directory").map_err(|source| FileError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        root.write_replace(Path::new(name), bytes)
    }

    /// How `path` is named in messages: relative to the checkout when
    /// untrusted (where the checkout is kept is the server's business).
    pub fn shown(&self, path: &Path) -> String {
        match self {
            Origin::Untrusted { root, .. } => path
                .strip_prefix(root)
                .unwrap_or(path)
                .display()
                .to_string(),
            Origin::Operator => path.display().to_string(),
        }
    }

    pub fn is_untrusted(&self) -> bool {
        matches!(self, Origin::Untrusted { .. })
    }
}
