//! Finding report files in the workspace by glob (`reports/*.xml`,
//! `**/TEST-*.xml`, `coverage/lcov.info`).
//!
//! Patterns are relative to the workspace root; `*` does not cross `/`, `**`
//! does. The walk starts at each pattern's literal directory prefix, is
//! bounded in depth and in entries visited, does not follow directory
//! symlinks and skips `.git` and `node_modules` (unless a pattern names them).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Deepest directory level a `**` pattern reaches (below its literal prefix).
pub const MAX_DEPTH: usize = 24;
/// Most directory entries looked at over one search.
pub const MAX_ENTRIES: usize = 50_000;
/// Directories not searched unless a pattern names them.
const SKIPPED_DIRS: &[&str] = &[".git", "node_modules"];

/// Compiled patterns.
#[derive(Debug)]
pub struct Patterns {
    /// The normalised patterns, for messages.
    pub patterns: Vec<String>,
    set: GlobSet,
    /// (literal directory prefix, depth below it: `None` for `**`).
    roots: Vec<(String, Option<usize>)>,
}

/// Files found, relative to the workspace, `/`-separated, sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub files: Vec<String>,
    /// The entry limit was hit: some files may be missing.
    pub truncated: bool,
}

fn is_meta(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\')
}

/// Normalises `pattern` (strips `./` and a `/workspace/` prefix) and rejects
/// what would leave the workspace.
fn normalise(pattern: &str) -> Result<String, String> {
    let mut p = pattern.trim();
    if let Some(rest) = p.strip_prefix("/workspace/") {
        p = rest;
    }
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    if p.is_empty() {
        return Err(format!("{pattern:?}: empty pattern"));
    }
    if p.starts_with('/') {
        return Err(format!(
            "{pattern:?}: must be relative to the workspace (or under /workspace/)"
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("{pattern:?}: `..` leaves the workspace"));
    }
    Ok(p.to_string())
}

impl Patterns {
    /// Compiles the globs; the error names the bad pattern.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Patterns, String> {
        if patterns.is_empty() {
            return Err("no pattern given".into());
        }
        let mut builder = GlobSetBuilder::new();
        let mut normalised = Vec::new();
        let mut roots: Vec<(String, Option<usize>)> = Vec::new();
        for raw in patterns {
            let raw = raw.as_ref();
            let p = normalise(raw)?;
            let glob = GlobBuilder::new(&p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("{raw:?}: {}", e.kind()))?;
            builder.add(glob);
            let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
            let literal = parts.iter().take_while(|c| !c.contains(is_meta)).count();
            // A fully literal pattern names a file: its parent is the root.
            let literal = literal.min(parts.len() - 1);
            let root = parts[..literal].join("/");
            let depth = if parts[literal..].contains(&"**") {
                None
            } else {
                Some(parts.len() - literal)
            };
            match roots.iter_mut().find(|(r, _)| *r == root) {
                Some((_, d)) => {
                    *d = match (*d, depth) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    }
                }
                None => roots.push((root, depth)),
            }
            normalised.push(p);
        }
        // A root inside another root is searched by the outer one.
        roots.sort();
        let mut kept: Vec<(String, Option<usize>)> = Vec::new();
        for (root, depth) in roots {
            let inside = kept
                .iter_mut()
                .find(|(k, _)| k.is_empty() || root == *k || root.starts_with(&format!("{k}/")));
            match inside {
                Some((k, d)) => {
                    let extra = root.split('/').count()
                        - if k.is_empty() {
                            0
                        } else {
                            k.split('/').count()
                        };
                    *d = match (*d, depth) {
                        (Some(a), Some(b)) => Some(a.max(b + extra)),
                        _ => None,
                    };
                }
                None => kept.push((root, depth)),
            }
        }
        let set = builder
            .build()
            .map_err(|e| format!("{:?}: {}", normalised, e))?;
        Ok(Patterns {
            patterns: normalised,
            set,
            roots: kept,
        })
    }

    /// Whether `rel` (relative, `/`-separated) matches a pattern.
    pub fn is_match(&self, rel: &str) -> bool {
        self.set.is_match(rel)
    }

    /// Searches `workspace` for matching regular files.
    pub fn find(&self, workspace: &Path) -> Result<Found, String> {
        let mut files = BTreeSet::new();
        let mut budget = MAX_ENTRIES;
        let mut truncated = false;
        let named_skips: Vec<&str> = SKIPPED_DIRS
            .iter()
            .copied()
            .filter(|d| self.patterns.iter().any(|p| p.contains(d)))
            .collect();
        for (root, depth) in &self.roots {
            let dir = if root.is_empty() {
                workspace.to_path_buf()
            } else {
                workspace.join(root)
            };
            match fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                // A missing prefix directory just matches nothing.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", dir.display())),
            }
            let mut walk = Walk {
                set: &self.set,
                named_skips: &named_skips,
                budget: &mut budget,
                truncated: &mut truncated,
                files: &mut files,
                max_depth: depth.unwrap_or(MAX_DEPTH),
            };
            walk.dir(&dir, root, 1)?;
        }
        Ok(Found {
            files: files.into_iter().collect(),
            truncated,
        })
    }
}

struct Walk<'a> {
    set: &'a GlobSet,
    named_skips: &'a [&'a str],
    budget: &'a mut usize,
    truncated: &'a mut bool,
    files: &'a mut BTreeSet<String>,
    max_depth: usize,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path, rel: &str, depth: usize) -> Result<(), String> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            // The workspace root must be readable; a subdirectory may not be.
            Err(e) if depth == 1 && rel.is_empty() => {
                return Err(format!("{}: {e}", dir.display()))
            }
            Err(_) => return Ok(()),
        };
        let mut subdirs = Vec::new();
        for entry in entries {
            let Ok(entry) = entry else { continue };
            if *self.budget == 0 {
                *self.truncated = true;
                return Ok(());
            }
            *self.budget -= 1;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(ft) = entry.file_type() else { continue };
            let is_file = if ft.is_symlink() {
                // A symlinked file counts; a symlinked directory is not entered.
                fs::metadata(entry.path()).is_ok_and(|m| m.is_file())
            } else {
                ft.is_file()
            };
            if is_file {
                if self.set.is_match(&child_rel) {
                    self.files.insert(child_rel);
                }
            } else if ft.is_dir()
                && depth < self.max_depth
                && (!SKIPPED_DIRS.contains(&name.as_str())
                    || self.named_skips.contains(&name.as_str()))
            {
                subdirs.push((entry.path(), child_rel));
            }
        }
        subdirs.sort();
        for (path, child_rel) in subdirs {
            self.dir(&path, &child_rel, depth + 1)?;
            if *self.truncated {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh scratch directory.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("test-runner-reports-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, "x").unwrap();
    }

    fn find(root: &Path, patterns: &[&str]) -> Vec<String> {
        Patterns::new(patterns).unwrap().find(root).unwrap().files
    }

    #[test]
    fn globs_match_like_a_shell() {
        let ws = scratch("globs");
        for f in [
            "reports/a.xml",
            "reports/b.xml",
            "reports/nested/c.xml",
            "reports/notes.txt",
            "svc/target/surefire-reports/TEST-x.xml",
            "svc/target/surefire-reports/other.xml",
            "node_modules/pkg/junit.xml",
            ".git/junit.xml",
            "coverage/lcov.info",
            "junit.xml",
        ] {
            touch(&ws, f);
        }
        assert_eq!(
            find(&ws, &["reports/*.xml"]),
            ["reports/a.xml", "reports/b.xml"]
        );
        assert_eq!(
            find(&ws, &["reports/**/*.xml"]),
            ["reports/a.xml", "reports/b.xml", "reports/nested/c.xml"]
        );
        assert_eq!(
            find(&ws, &["**/TEST-*.xml"]),
            ["svc/target/surefire-reports/TEST-x.xml"]
        );
        // node_modules and .git are skipped unless named.
        assert_eq!(find(&ws, &["**/junit.xml"]), ["junit.xml"]);
        assert_eq!(
            find(&ws, &["node_modules/**/junit.xml"]),
            ["node_modules/pkg/junit.xml"]
        );
        assert_eq!(find(&ws, &["./coverage/lcov.info"]), ["coverage/lcov.info"]);
        assert_eq!(find(&ws, &["/workspace/junit.xml"]), ["junit.xml"]);
        assert_eq!(
            find(&ws, &["reports/{a,b}.xml", "reports/a.xml", "junit.xml"]),
            ["junit.xml", "reports/a.xml", "reports/b.xml"]
        );
        assert!(find(&ws, &["missing/*.xml"]).is_empty());
        assert!(find(&ws, &["reports/zzz.xml"]).is_empty());
        let _ = fs::remove_dir_all(&ws);
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (p, why) in [
            ("../etc/passwd", "leaves the workspace"),
            ("/etc/*.xml", "relative to the workspace"),
            ("", "empty"),
            ("reports/[.xml", "reports/[.xml"),
        ] {
            let e = Patterns::new(&[p]).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
        assert!(Patterns::new::<&str>(&[]).is_err());
    }

    #[test]
    fn walk_is_bounded() {
        let ws = scratch("bounded");
        let mut deep = String::from("d");
        for _ in 0..(MAX_DEPTH + 3) {
            deep.push_str("/d");
        }
        touch(&ws, &format!("{deep}/deep.xml"));
        touch(&ws, "d/d/shallow.xml");
        assert_eq!(find(&ws, &["**/*.xml"]), ["d/d/shallow.xml"]);
        let _ = fs::remove_dir_all(&ws);
    }

    #[test]
    fn roots_nest() {
        let p = Patterns::new(&["a/*.xml", "a/b/c/*.xml", "x/**/y.xml"]).unwrap();
        assert_eq!(
            p.roots,
            vec![("a".to_string(), Some(3)), ("x".to_string(), None)]
        );
        assert!(p.is_match("a/b/c/d.xml"));
        assert!(!p.is_match("a/b/d.xml"));
    }

    #[test]
    fn missing_workspace_matches_nothing() {
        let p = Patterns::new(&["*.xml"]).unwrap();
        let missing = std::env::temp_dir().join("test-runner-no-such-workspace");
        assert_eq!(p.find(&missing).unwrap(), Found::default());
    }
}
