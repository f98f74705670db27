//! Artifacts handed between stages through the workspace.
//!
//! A stage lists the files it produces (`artifacts = ["dist/app.tar"]`);
//! when it succeeds the host records each file's sha256 in its stage
//! record. Before any later stage that depends on it (directly or through
//! other stages) runs, the host hashes the files again and refuses to run
//! the stage if one changed or disappeared: what is deployed is what was
//! built and scanned, even if a stage in between (or anyone with access to
//! the workspace during an approval wait) rewrote it.
use std::collections::BTreeMap;
use std::path::Path;

use crate::confined::{FileError, Root};
use crate::digest::sha256_of;

/// Workspace-relative path → `sha256:<hex>`.
pub type Digests = BTreeMap<String, String>;

/// A declared artifact's file, opened beneath the workspace (`None`:
/// nothing there); links leading out of it are refused.
pub fn resolve(workspace: &Path, path: &str) -> Result<Option<std::fs::File>, String> {
    let root = Root::open(workspace, "the workspace")
        .map_err(|e| format!("workspace {}: {e}", workspace.display()))?;
    match root.open_file(Path::new(path)) {
        Ok(f) => Ok(Some(f)),
        Err(FileError::NotFound { .. }) => Ok(None),
        Err(FileError::Outside { .. }) => {
            Err(format!("artifact `{path}` leads out of the workspace"))
        }
        Err(FileError::NotAFile { .. }) => Err(format!("artifact `{path}` is not a regular file")),
        Err(e) => Err(format!("artifact `{path}`: {e}")),
    }
}

/// sha256 of a workspace file, refusing links that lead out of it.
fn digest(workspace: &Path, path: &str) -> Result<String, String> {
    let f = resolve(workspace, path)?
        .ok_or_else(|| format!("artifact `{path}` is not in the workspace any more"))?;
    sha256_of(f).map_err(|e| format!("artifact `{path}`: {e}"))
}

/// Digests of the files a stage declared, after it succeeded.
pub fn record(workspace: &Path, paths: &[String]) -> Result<Digests, String> {
    record_with(workspace, paths, |path, file| {
        sha256_of(file).map_err(|e| format!("artifact `{path}`: {e}"))
    })
}

/// [`record`] with each file's digest taken by `digest_of(path, file)`
/// (the artifact store reads each file once to hash and encrypt it).
pub fn record_with(
    workspace: &Path,
    paths: &[String],
    mut digest_of: impl FnMut(&str, std::fs::File) -> Result<String, String>,
) -> Result<Digests, String> {
    let mut out = Digests::new();
    for p in paths {
        let file = resolve(workspace, p)?
            .ok_or_else(|| format!("declared artifact `{p}` was not produced"))?;
        out.insert(p.clone(), digest_of(p, file)?);
    }
    Ok(out)
}

/// Check that the artifacts `producer` recorded are unchanged.
pub fn verify(workspace: &Path, producer: &str, recorded: &Digests) -> Result<(), String> {
    for (path, want) in recorded {
        match digest(workspace, path) {
            Ok(got) if &got == want => {}
            Ok(got) => {
                return Err(format!(
                    "artifact `{path}` of stage `{producer}` was changed after `{producer}` recorded it ({} → {}): refusing to use it",
                    short(want),
                    short(&got)
                ))
            }
            Err(e) => {
                return Err(format!(
                    "artifact `{path}` of stage `{producer}` cannot be checked: {e}"
                ))
            }
        }
    }
    Ok(())
}

fn short(d: &str) -> &str {
    &d[..d.len().min("sha256:".len() + 12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_digests_catch_changes_and_removals() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("dist")).unwrap();
        std::fs::write(t.path().join("dist/app"), b"v1").unwrap();
        let d = record(t.path(), &["dist/app".into()]).unwrap();
        assert!(d["dist/app"].starts_with("sha256:"));
        verify(t.path(), "build", &d).unwrap();
        std::fs::write(t.path().join("dist/app"), b"v2").unwrap();
        let e = verify(t.path(), "build", &d).unwrap_err();
        assert!(
            e.starts_with("artifact `dist/app` of stage `build` was changed"),
            "{e}"
        );
        std::fs::remove_file(t.path().join("dist/app")).unwrap();
        assert!(verify(t.path(), "build", &d)
            .unwrap_err()
            .contains("cannot be checked"));
        let e = record(t.path(), &["dist/app".into()]).unwrap_err();
        assert_eq!(e, "declared artifact `dist/app` was not produced");
        std::os::unix::fs::symlink("/etc/hostname", t.path().join("out")).unwrap();
        assert!(record(t.path(), &["out".into()])
            .unwrap_err()
            .contains("leads out"));
        assert!(crate::pipeline::check_artifact_path("../x").is_err());
        assert!(crate::pipeline::check_artifact_path("dist/app.tar").is_ok());
    }
}
