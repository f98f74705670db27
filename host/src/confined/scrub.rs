//! What a container leaves in a workspace is data: set-uid/set-gid bits
//! are cleared and device nodes, fifos and sockets removed, so nothing a
//! container made is left for the host, another stage or another user of
//! the machine to execute with privileges or to block on.
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, PermissionsExt};

/// The most entries one scrub looks at (a bound on the host's time).
const MAX_ENTRIES: usize = 2_000_000;

/// One thing that was neutralized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    pub what: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.what)
    }
}

/// Walks `workspace` without following links and neutralizes what it
/// finds; returns the findings (empty: nothing was there).
pub fn scrub(workspace: &Path) -> std::io::Result<Vec<Finding>> {
    let dir = Dir::open_ambient_dir(workspace, cap_std::ambient_authority())?;
    let mut found = Vec::new();
    let mut seen = 0usize;
    walk(&dir, Path::new(""), &mut found, &mut seen)?;
    Ok(found)
}

fn walk(dir: &Dir, at: &Path, found: &mut Vec<Finding>, seen: &mut usize) -> std::io::Result<()> {
    use cap_std::fs::FileTypeExt;
    for entry in dir.entries()? {
        let entry = entry?;
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return Err(std::io::Error::other(format!(
                "more than {MAX_ENTRIES} entries in the workspace"
            )));
        }
        let name = entry.file_name();
        let path = at.join(&name);
        let ty = entry.file_type()?;
        if ty.is_dir() {
            let sub = dir.open_dir(&name)?;
            walk(&sub, &path, found, seen)?;
        } else if ty.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            if mode & 0o6000 != 0 {
                let kept = mode & 0o0777;
                dir.set_permissions(&name, cap_std::fs::Permissions::from_mode(kept))?;
                found.push(Finding {
                    path,
                    what: if mode & 0o4000 != 0 {
                        "set-uid bit cleared"
                    } else {
                        "set-gid bit cleared"
                    },
                });
            }
        } else if !ty.is_symlink() {
            let what = if ty.is_block_device() || ty.is_char_device() {
                "device node removed"
            } else if ty.is_fifo() {
                "fifo removed"
            } else {
                "socket removed"
            };
            dir.remove_file(&name)?;
            found.push(Finding { path, what });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn set_id_bits_and_special_files_are_neutralized() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path();
        std::fs::create_dir_all(ws.join("bin/deep")).unwrap();
        std::fs::write(ws.join("bin/deep/sh"), "#!").unwrap();
        std::fs::set_permissions(
            ws.join("bin/deep/sh"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::fs::write(ws.join("bin/g"), "#!").unwrap();
        std::fs::set_permissions(ws.join("bin/g"), std::fs::Permissions::from_mode(0o2711))
            .unwrap();
        std::fs::write(ws.join("plain"), "x").unwrap();
        std::os::unix::fs::symlink("/usr/bin/passwd", ws.join("link")).unwrap();
        let ok = std::process::Command::new("mkfifo")
            .arg(ws.join("bin/pipe"))
            .status()
            .unwrap();
        assert!(ok.success());
        let _sock = std::os::unix::net::UnixListener::bind(ws.join("sock")).unwrap();

        let mut got: Vec<String> = scrub(ws).unwrap().iter().map(|f| f.to_string()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "bin/deep/sh (set-uid bit cleared)",
                "bin/g (set-gid bit cleared)",
                "bin/pipe (fifo removed)",
                "sock (socket removed)",
            ]
        );
        let mode = |p: &str| std::fs::metadata(ws.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin/deep/sh"), 0o755);
        assert_eq!(mode("bin/g"), 0o711);
        assert!(!ws.join("bin/pipe").exists());
        // Links are neither followed nor changed; a second pass is clean.
        assert!(std::fs::symlink_metadata(ws.join("link")).is_ok());
        assert!(scrub(ws).unwrap().is_empty());
    }
}
