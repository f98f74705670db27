//! `host plugin new --lang rust|python|js NAME`: a working plugin project
//! from the templates in `host/templates/`, with the WIT contract copied in
//! so a Python or JS project builds on its own.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

const WIT: &str = include_str!("../../../wit/stage.wit");

fn templates(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => &[
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../templates/rust/src/lib.rs"),
            ),
            ("README.md", include_str!("../../templates/rust/README.md")),
        ],
        Lang::Python => &[
            ("app.py", include_str!("../../templates/python/app.py")),
            ("build.sh", include_str!("../../templates/python/build.sh")),
            (
                "README.md",
                include_str!("../../templates/python/README.md"),
            ),
        ],
        Lang::Js => &[
            ("stage.js", include_str!("../../templates/js/stage.js")),
            (
                "package.json",
                include_str!("../../templates/js/package.json"),
            ),
            ("build.sh", include_str!("../../templates/js/build.sh")),
            ("README.md", include_str!("../../templates/js/README.md")),
        ],
    }
}

/// Create the project in `dir` (which must not exist or be empty). For
/// Rust, `sdk` is the `plugins/sdk` directory (found above `dir` when not
/// given). Returns the files written.
pub fn scaffold(lang: Lang, name: &str, dir: &Path, sdk: Option<&Path>) -> Result<Vec<PathBuf>> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "plugin name {name:?}: use lowercase letters, digits and `-`, starting with a letter"
        );
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    let sdk = match (lang, sdk) {
        (Lang::Rust, Some(s)) => Some(
            s.canonicalize()
                .with_context(|| format!("--sdk {}", s.display()))?,
        ),
        (Lang::Rust, None) => Some(find_sdk(dir).ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find the stage-sdk crate (plugins/sdk) above {}; pass --sdk PATH",
                dir.display()
            )
        })?),
        _ => None,
    };
    let mut written = Vec::new();
    let mut files: Vec<(&str, String)> = templates(lang)
        .iter()
        .map(|(rel, text)| {
            let text = text
                .replace("{{name}}", name)
                .replace("{{crate}}", &name.replace('-', "_"))
                .replace("{{wit}}", "wit")
                .replace(
                    "{{sdk}}",
                    &sdk.as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                );
            (*rel, text)
        })
        .collect();
    if !matches!(lang, Lang::Rust) {
        files.push(("wit/stage.wit", WIT.to_string()));
    }
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if rel.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(path);
    }
    Ok(written)
}

/// `plugins/sdk` in `dir` or one of its ancestors (a checkout of this repo).
fn find_sdk(dir: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(dir).ok()?;
    start
        .ancestors()
        .map(|a| a.join("plugins/sdk"))
        .find(|c| c.join("Cargo.toml").is_file())
        .and_then(|c| c.canonicalize().ok())
}
