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

/// Why an artifact cannot be recorded or used; the stage fails with it.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("workspace {workspace}: {reason}")]
    Workspace { workspace: String, reason: String },
    #[error("artifact `{path}` leads out of the workspace")]
    Outside { path: String },
    #[error("artifact `{path}` is not a regular file")]
    NotAFile { path: String },
    #[error("artifact `{path}`: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("declared artifact `{path}` was not produced")]
    NotProduced { path: String },
    #[error("artifact `{path}` is not in the workspace any more")]
    Gone { path: String },
    #[error("artifact `{path}` of stage `{producer}` was changed after `{producer}` recorded it ({} → {}): refusing to use it", short(.was), short(.now))]
    Changed {
        path: String,
        producer: String,
        was: String,
        now: String,
    },
    /// The artifact store refused to keep it (its error names the path).
    #[error(transparent)]
    NotKept(Box<dyn std::error::Error + Send + Sync>),
    #[error("artifact `{path}` of stage `{producer}` cannot be checked: {cause}")]
    Unchecked {
        path: String,
        producer: String,
        cause: Box<ArtifactError>,
    },
}

/// A declared artifact's file, opened beneath the workspace (`None`:
/// nothing there); links leading out of it are refused.
pub fn resolve(workspace: &Path, path: &str) -> Result<Option<std::fs::File>, ArtifactError> {
    let root = Root::open(workspace, "the workspace").map_err(|e| ArtifactError::Workspace {
        workspace: workspace.display().to_string(),
        reason: e.to_string(),
    })?;
    let path_ = || path.to_string();
    match root.open_file(Path::new(path)) {
        Ok(f) => Ok(Some(f)),
        Err(FileError::NotFound { .. }) => Ok(None),
        Err(FileError::Outside { .. }) => Err(ArtifactError::Outside { path: path_() }),
        Err(FileError::NotAFile { .. }) => Err(ArtifactError::NotAFile { path: path_() }),
        Err(e) => Err(ArtifactError::Unreadable {
            path: path_(),
            reason: e.to_string(),
        }),
    }
}

/// The digest of an opened artifact file.
pub fn sha256_artifact(path: &str, file: std::fs::File) -> Result<String, ArtifactError> {
    sha256_of(file).map_err(|e| ArtifactError::Unreadable {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// sha256 of a workspace file, refusing links that lead out of it.
fn digest(workspace: &Path, path: &str) -> Result<String, ArtifactError> {
    let f = resolve(workspace, path)?.ok_or_else(|| ArtifactError::Gone {
        path: path.to_string(),
    })?;
    sha256_artifact(path, f)
}

/// Digests of the files a stage declared, after it succeeded.
pub fn record(workspace: &Path, paths: &[String]) -> Result<Digests, ArtifactError> {
    record_with(workspace, paths, sha256_artifact)
}

/// [`record`] with each file's digest taken by `digest_of(path, file)`
/// (the artifact store reads each file once to hash and encrypt it).
pub fn record_with(
    workspace: &Path,
    paths: &[String],
    mut digest_of: impl FnMut(&str, std::fs::File) -> Result<String, ArtifactError>,
) -> Result<Digests, ArtifactError> {
    let mut out = Digests::new();
    for p in paths {
        let file =
            resolve(workspace, p)?.ok_or_else(|| ArtifactError::NotProduced { path: p.clone() })?;
        out.insert(p.clone(), digest_of(p, file)?);
    }
    Ok(out)
}

/// Check that the artifacts `producer` recorded are unchanged.
pub fn verify(workspace: &Path, producer: &str, recorded: &Digests) -> Result<(), ArtifactError> {
    for (path, want) in recorded {
        match digest(workspace, path) {
            Ok(got) if &got == want => {}
            Ok(got) => {
                return Err(ArtifactError::Changed {
                    path: path.clone(),
                    producer: producer.to_string(),
                    was: want.clone(),
                    now: got,
                })
            }
            Err(e) => {
                return Err(ArtifactError::Unchecked {
                    path: path.clone(),
                    producer: producer.to_string(),
                    cause: Box::new(e),
                })
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
        let e = verify(t.path(), "build", &d).unwrap_err().to_string();
        assert!(
            e.starts_with("artifact `dist/app` of stage `build` was changed"),
            "{e}"
        );
        std::fs::remove_file(t.path().join("dist/app")).unwrap();
        assert!(verify(t.path(), "build", &d)
            .unwrap_err()
            .to_string()
            .contains("cannot be checked"));
        let e = record(t.path(), &["dist/app".into()]).unwrap_err();
        assert!(matches!(e, ArtifactError::NotProduced { .. }));
        assert_eq!(
            e.to_string(),
            "declared artifact `dist/app` was not produced"
        );
        std::os::unix::fs::symlink("/etc/hostname", t.path().join("out")).unwrap();
        assert!(record(t.path(), &["out".into()])
            .unwrap_err()
            .to_string()
            .contains("leads out"));
        assert!(crate::pipeline::check_artifact_path("../x").is_err());
        assert!(crate::pipeline::check_artifact_path("dist/app.tar").is_ok());
    }
}
