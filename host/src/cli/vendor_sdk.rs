//! The stage SDK and WIT contract this host was built with, written next to
//! a new Rust plugin (`vendor/stage-sdk-<version>/`) so the plugin builds
//! outside this repository, against exactly the contract the host speaks.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// The SDK version carried (the workspace version the host was built with).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// In the repository the SDK finds the WIT two levels up; in the vendored
/// copy it sits beside it.
const WIT_PATH_IN_REPO: &str = r#"path: "../../wit","#;
const WIT_PATH_VENDORED: &str = r#"path: "wit","#;

/// Directory name of the vendored copy, relative to the plugin project.
pub fn relative_dir() -> String {
    format!("vendor/stage-sdk-{VERSION}")
}

/// Writes the SDK crate (manifest, sources, wit/) under `project`; returns
/// the crate's directory and the files written.
pub fn write(project: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let dir = project.join(relative_dir());
    let mut written = Vec::new();
    let mut put = |rel: &str, text: &str| -> Result<()> {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("a file under dir"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    put("Cargo.toml", SDK_MANIFEST)?;
    for (rel, text) in SDK_FILES {
        if *rel == "src/lib.rs" {
            put(rel, &vendored_lib(text)?)?;
        } else {
            put(rel, text)?;
        }
    }
    Ok((dir, written))
}

fn vendored_lib(text: &str) -> Result<String> {
    if !text.contains(WIT_PATH_IN_REPO) {
        bail!("the embedded SDK does not load its WIT from {WIT_PATH_IN_REPO}; vendor_sdk needs updating");
    }
    Ok(text.replace(WIT_PATH_IN_REPO, WIT_PATH_VENDORED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_a_standalone_sdk_and_its_wit() {
        let names: Vec<&str> = SDK_FILES.iter().map(|(rel, _)| *rel).collect();
        assert!(names.contains(&"src/lib.rs"), "{names:?}");
        assert!(names.contains(&"wit/stage.wit"), "{names:?}");
        // Workspace inheritance would not resolve outside the repository.
        assert!(!SDK_MANIFEST.contains("workspace"), "{SDK_MANIFEST}");
        assert!(SDK_MANIFEST.contains("name = \"stage-sdk\""));
    }

    #[test]
    fn writes_a_versioned_copy_that_loads_its_own_wit() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, files) = write(tmp.path()).unwrap();
        assert!(dir.ends_with(format!("vendor/stage-sdk-{VERSION}")));
        assert!(files.len() > 3);
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains(WIT_PATH_VENDORED) && !lib.contains(WIT_PATH_IN_REPO));
        assert!(dir.join("wit/stage.wit").is_file());
    }
}
