//! Paths a plugin names, relative to a directory the host owns (the
//! workspace, a git clone): resolved so that neither `..` nor a symlink
//! leads out of it.
use std::path::{Component, Path, PathBuf};

#[derive(Debug, PartialEq, Eq)]
pub enum Resolve {
    /// Absolute, `..`, or through a link leaving the base.
    Outside,
    /// Nothing there (or unreadable).
    Missing,
}

/// A relative path with only plain components.
fn plain(rel: &str) -> Result<&Path, Resolve> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Resolve::Outside);
    }
    Ok(p)
}

/// `base/rel` if it exists and stays inside `base` once symlinks are
/// resolved. `base` must be canonical.
pub fn existing(base: &Path, rel: &str) -> Result<PathBuf, Resolve> {
    let rel = plain(if rel.is_empty() { "." } else { rel })?;
    let p = base
        .join(rel)
        .canonicalize()
        .map_err(|_| Resolve::Missing)?;
    if p.starts_with(base) {
        Ok(p)
    } else {
        Err(Resolve::Outside)
    }
}

/// Where `base/rel` may be written: the deepest existing ancestor stays in
/// `base` once resolved and the file itself, if there, is not a link (a
/// write would go wherever it points). `base` must be canonical.
pub fn writable(base: &Path, rel: &str) -> Result<PathBuf, Resolve> {
    let rel = plain(rel)?;
    let target = base.join(rel);
    if let Ok(m) = std::fs::symlink_metadata(&target) {
        if m.file_type().is_symlink() || m.is_dir() {
            return Err(Resolve::Outside);
        }
    }
    let mut ancestor = target.parent();
    while let Some(a) = ancestor {
        if let Ok(real) = a.canonicalize() {
            return if real.starts_with(base) {
                Ok(target)
            } else {
                Err(Resolve::Outside)
            };
        }
        ancestor = a.parent();
    }
    Err(Resolve::Outside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("d")).unwrap();
        std::fs::write(base.join("d/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", base.join("pw")).unwrap();
        assert_eq!(existing(&base, "d/f").unwrap(), base.join("d/f"));
        assert_eq!(existing(&base, "d/nope"), Err(Resolve::Missing));
        assert_eq!(existing(&base, "").unwrap(), base);
        for bad in ["/etc/passwd", "../x", "d/../../x", "out/passwd", "pw"] {
            assert!(existing(&base, bad).is_err(), "{bad}");
        }
        assert_eq!(writable(&base, "d/new/g").unwrap(), base.join("d/new/g"));
        assert!(writable(&base, "d/f").is_ok());
        for bad in ["out/x", "pw", "d", "../x", "/tmp/x"] {
            assert_eq!(writable(&base, bad), Err(Resolve::Outside), "{bad}");
        }
    }
}
