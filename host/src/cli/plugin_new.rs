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
/// Rust, `sdk` is a `plugins/sdk` directory to depend on; without it the
/// SDK this host carries is vendored. Returns the files written.
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
    // Rust: `--sdk` points at a checkout's plugins/sdk; otherwise the SDK
    // and WIT carried by this binary are vendored into the project.
    let mut written = Vec::new();
    let sdk = match (lang, sdk) {
        (Lang::Rust, Some(s)) => s
            .canonicalize()
            .with_context(|| format!("--sdk {}", s.display()))?
            .display()
            .to_string(),
        (Lang::Rust, None) => {
            let (_, files) = super::vendor_sdk::write(dir)?;
            written.extend(files);
            super::vendor_sdk::relative_dir()
        }
        _ => String::new(),
    };
    let mut files: Vec<(&str, String)> = templates(lang)
        .iter()
        .map(|(rel, text)| {
            let text = text
                .replace("{{name}}", name)
                .replace("{{crate}}", &name.replace('-', "_"))
                .replace("{{wit}}", "wit")
                .replace("{{sdk}}", &sdk);
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
