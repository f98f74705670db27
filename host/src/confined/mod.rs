//! Files from untrusted places (a checkout, an upload, a workspace a stage
//! wrote), opened only beneath their root.
//!
//! Every path is resolved by `cap-std` against an open directory handle:
//! `..`, an absolute path or a symbolic link that leads outside the root is
//! refused by the kernel-level lookup itself (openat2 `RESOLVE_BENEATH`
//! where available), not by comparing strings, so a link swapped in between
//! a check and a use cannot redirect the host. [`Root`] is the one way the
//! host reads repository files; [`Origin`] says, per pipeline, whether its
//! files are the operator's own or untrusted.
//!
//! Errors name the file relative to its root and never quote its content.
mod origin;
pub mod scrub;

pub use origin::Origin;

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

/// Why a file beneath a root could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("`{path}` leads outside {root} (an absolute path, `..` or a link out)")]
    Outside { path: String, root: String },
    #[error("`{path}` does not exist")]
    NotFound { path: String },
    #[error("`{path}` is not a regular file")]
    NotAFile { path: String },
    #[error("`{path}` is larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error("`{path}` is not UTF-8 text")]
    NotText { path: String },
    #[error("`{path}`: {source}")]
    Io { path: String, source: io::Error },
}

impl FileError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::NotFound { .. })
    }
}

/// An open directory whose contents are untrusted.
#[derive(Debug)]
pub struct Root {
    dir: Dir,
    path: PathBuf,
    /// How the root is named in messages (`the checkout`).
    label: String,
}

impl Root {
    /// Opens `path` (chosen by the host, so trusted) as a root.
    pub fn open(path: &Path, label: &str) -> io::Result<Root> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(Root {
            dir,
            path: path.to_path_buf(),
            label: label.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` relative to the root when it is lexically inside it (an
    /// absolute path the host built by joining the root with a name).
    pub fn relative<'p>(&self, path: &'p Path) -> Option<&'p Path> {
        if path.is_absolute() {
            path.strip_prefix(&self.path).ok()
        } else {
            Some(path)
        }
    }

    fn shown(rel: &Path) -> String {
        rel.display().to_string().escape_debug().to_string()
    }

    /// The error for an io error on `rel`.
    fn error(&self, rel: &Path, e: io::Error) -> FileError {
        let path = Self::shown(rel);
        match e.kind() {
            io::ErrorKind::NotFound => FileError::NotFound { path },
            // cap-std answers an escape with PermissionDenied; the host
            // runs with the rights to read its own checkouts.
            io::ErrorKind::PermissionDenied => FileError::Outside {
                path,
                root: self.label.clone(),
            },
            _ if e.raw_os_error() == Some(40) => FileError::Outside {
                // ELOOP: a link cycle; treated like a link out.
                path,
                root: self.label.clone(),
            },
            _ => FileError::Io { path, source: e },
        }
    }

    /// Refuse absolute paths and empty names before asking the kernel.
    fn checked<'r>(&self, rel: &'r Path) -> Result<&'r Path, FileError> {
        let bad = rel.as_os_str().is_empty()
            || rel
                .components()
                .any(|c| matches!(c, Component::RootDir | Component::Prefix(_)));
        if bad {
            return Err(FileError::Outside {
                path: Self::shown(rel),
                root: self.label.clone(),
            });
        }
        Ok(rel)
    }

    /// Opens a regular file beneath the root for reading.
    pub fn open_file(&self, rel: &Path) -> Result<std::fs::File, FileError> {
        let rel = self.checked(rel)?;
        // Non-blocking, so a fifo left where a file should be cannot hang
        // the host in open(); anything but a regular file is refused below.
        let mut opts = OpenOptions::new();
        opts.read(true).custom_flags(libc_nonblock());
        let f = self
            .dir
            .open_with(rel, &opts)
            .map_err(|e| self.error(rel, e))?;
        let meta = f.metadata().map_err(|e| self.error(rel, e))?;
        if !meta.is_file() {
            return Err(FileError::NotAFile {
                path: Self::shown(rel),
            });
        }
        // O_NONBLOCK does not change reads of a regular file.
        Ok(f.into_std())
    }

    /// The whole file, refused when over `max` bytes.
    pub fn read(&self, rel: &Path, max: u64) -> Result<Vec<u8>, FileError> {
        let f = self.open_file(rel)?;
        read_bounded(f, max).map_err(|e| match e {
            Bounded::TooLarge => FileError::TooLarge {
                path: Self::shown(rel),
                max,
            },
            Bounded::Io(e) => self.error(rel, e),
        })
    }

    /// The file as UTF-8 text.
    pub fn read_text(&self, rel: &Path, max: u64) -> Result<String, FileError> {
        let bytes = self.read(rel, max)?;
        String::from_utf8(bytes).map_err(|_| FileError::NotText {
            path: Self::shown(rel),
        })
    }

    /// Whether anything (a file, a directory, a link, wherever it points)
    /// is at `rel`.
    pub fn has_entry(&self, rel: &Path) -> bool {
        self.checked(rel).is_ok() && self.dir.symlink_metadata(rel).is_ok()
    }

    /// Replaces `rel` with `bytes` atomically: a fresh temporary file
    /// (created exclusively, so never through a link) beside it, renamed
    /// over it. A link at `rel` itself is replaced, not followed; missing
    /// parent directories are made (beneath the root); a regular file's
    /// permissions are kept.
    pub fn write_replace(&self, rel: &Path, bytes: &[u8]) -> Result<(), FileError> {
        let rel = self.checked(rel)?;
        let name = rel.file_name().ok_or_else(|| FileError::NotAFile {
            path: Self::shown(rel),
        })?;
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir
                .create_dir_all(parent)
                .map_err(|e| self.error(rel, e))?;
        }
        let kept = self
            .dir
            .symlink_metadata(rel)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.permissions());
        if self.dir.symlink_metadata(rel).is_ok_and(|m| m.is_dir()) {
            return Err(FileError::NotAFile {
                path: Self::shown(rel),
            });
        }
        let tmp = rel.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        let written = self
            .dir
            .open_with(&tmp, &opts)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                if let Some(p) = kept {
                    f.set_permissions(p)?;
                }
                f.sync_all()
            })
            .and_then(|_| self.dir.rename(&tmp, &self.dir, rel));
        written.map_err(|e| {
            let _ = self.dir.remove_file(&tmp);
            self.error(rel, e)
        })
    }
}

/// `O_NONBLOCK` on Linux.
fn libc_nonblock() -> i32 {
    0o4000
}

enum Bounded {
    TooLarge,
    Io(io::Error),
}

/// Reads at most `max` bytes; one more means too large.
fn read_bounded(f: impl Read, max: u64) -> Result<Vec<u8>, Bounded> {
    let mut out = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(Bounded::Io)?;
    if out.len() as u64 > max {
        return Err(Bounded::TooLarge);
    }
    Ok(out)
}

fn operator_error(path: &Path, e: io::Error) -> FileError {
    let path = path.display().to_string();
    match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound { path },
        _ => FileError::Io { path, source: e },
    }
}

/// Opens a regular file the operator named (not confined).
pub fn open_operator_file(path: &Path) -> Result<std::fs::File, FileError> {
    let f = std::fs::File::open(path).map_err(|e| operator_error(path, e))?;
    if !f.metadata().map_err(|e| operator_error(path, e))?.is_file() {
        return Err(FileError::NotAFile {
            path: path.display().to_string(),
        });
    }
    Ok(f)
}

/// Reads a file the operator named (not confined), with the same bound.
pub fn read_operator_file(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let shown = path.display().to_string();
    let io = |e: io::Error| operator_error(path, e);
    let f = open_operator_file(path)?;
    read_bounded(f, max).map_err(|e| match e {
        Bounded::TooLarge => FileError::TooLarge {
            path: shown.clone(),
            max,
        },
        Bounded::Io(e) => io(e),
    })
}

#[cfg(test)]
mod tests;
