//! A per-run copy of a working tree, for `host run` in a git checkout when
//! a stage may write the workspace: the stages get the files git knows of
//! (tracked and untracked, not ignored, with uncommitted changes), and never
//! the repository's `.git`, where a written `config` or hook would run the
//! next time anyone uses git there.
//!
//! Files are read beneath the checkout and written beneath the copy (both
//! through `cap-std`); links are copied as links, never followed.
use std::io;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, PermissionsExt};

/// What was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub files: usize,
    pub links: usize,
    pub bytes: u64,
    /// Listed paths that were not copied, and why (a submodule, a path
    /// through a link, gone since it was listed).
    pub skipped: Vec<(PathBuf, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("copying `{path}` into the run's workspace: {source}")]
pub struct CopyError {
    pub path: String,
    pub source: io::Error,
}

/// Copies `files` (relative to `from`) into the empty directory `to`.
pub fn copy_tree(from: &Path, files: &[PathBuf], to: &Path) -> Result<Copied, CopyError> {
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| CopyError { path, source }
    };
    let src = Dir::open_ambient_dir(from, cap_std::ambient_authority()).map_err(err(from))?;
    let dst = Dir::open_ambient_dir(to, cap_std::ambient_authority()).map_err(err(to))?;
    let mut out = Copied::default();
    for rel in files {
        if let Some(why) = refused(rel) {
            out.skipped.push((rel.clone(), why.into()));
            continue;
        }
        let meta = match src.symlink_metadata(rel) {
            Ok(m) => m,
            Err(e) => {
                // Gone since it was listed, or under a link: not copied.
                out.skipped.push((rel.clone(), e.to_string()));
                continue;
            }
        };
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            dst.create_dir_all(parent).map_err(err(rel))?;
        }
        if meta.is_symlink() {
            let target = src.read_link_contents(rel).map_err(err(rel))?;
            dst.symlink_contents(&target, rel).map_err(err(rel))?;
            out.links += 1;
        } else if meta.is_file() {
            out.bytes += copy_file(&src, &dst, rel, meta.permissions().mode()).map_err(err(rel))?;
            out.files += 1;
        } else {
            out.skipped
                .push((rel.clone(), "not a file (a submodule?)".into()));
        }
    }
    Ok(out)
}

/// Why a listed path is never copied.
fn refused(rel: &Path) -> Option<&'static str> {
    let mut parts = rel.components();
    if rel.as_os_str().is_empty() || parts.any(|c| !matches!(c, Component::Normal(_))) {
        return Some("not a plain relative path");
    }
    if rel.components().any(|c| c.as_os_str() == ".git") {
        return Some("inside a .git directory");
    }
    None
}

/// One file, created exclusively; only its executable bit is kept.
fn copy_file(src: &Dir, dst: &Dir, rel: &Path, mode: u32) -> io::Result<u64> {
    let mut from = src.open(rel)?;
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    let mut to = dst.open_with(rel, &opts)?;
    let n = io::copy(&mut from, &mut to)?;
    let kept = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    to.set_permissions(cap_std::fs::Permissions::from_mode(kept))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    #[test]
    fn copies_files_and_links_but_never_git() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(a.join("src")).unwrap();
        std::fs::create_dir_all(a.join(".git/hooks")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(a.join("run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(a.join("run.sh"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::fs::write(a.join(".git/config"), "[core]").unwrap();
        symlink("src/main.rs", a.join("main")).unwrap();
        symlink("/etc", a.join("etc")).unwrap();
        let list: Vec<PathBuf> = [
            "src/main.rs",
            "run.sh",
            "main",
            "etc/passwd",
            ".git/config",
            "../x",
            "gone",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let c = copy_tree(&a, &list, &b).unwrap();
        assert_eq!((c.files, c.links), (2, 1));
        assert_eq!(
            std::fs::read_to_string(b.join("main")).unwrap(),
            "fn main() {}"
        );
        let mode = std::fs::metadata(b.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(!b.join(".git").exists());
        assert!(!b.join("etc").exists());
        let skipped: Vec<String> = c
            .skipped
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(skipped, ["etc/passwd", ".git/config", "../x", "gone"]);
    }
}
