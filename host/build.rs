//! Embeds the plugin SDK (plugins/sdk) and the WIT contract (wit/) the host
//! is built with, so `host plugin new --lang rust` can vendor them into a
//! project outside this repository (see src/cli/vendor_sdk.rs).
//!
//! Writes `$OUT_DIR/sdk_files.rs`: `SDK_FILES: &[(&str, &str)]`, each a
//! path relative to the vendored crate and its text. The SDK's Cargo.toml
//! inherits from the workspace, so `x.workspace = true` lines are resolved
//! against the root Cargo.toml here: the copy must build on its own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let host = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = host.parent().unwrap().to_path_buf();
    let sdk = root.join("plugins/sdk");
    let mut files = Vec::new();
    collect(&sdk.join("src"), "src", &mut files);
    collect(&root.join("wit"), "wit", &mut files);
    files.sort();

    let mut out = String::from("pub const SDK_FILES: &[(&str, &str)] = &[\n");
    for (rel, path) in &files {
        writeln!(out, "    ({rel:?}, include_str!({:?})),", path.display()).unwrap();
    }
    out.push_str("];\n");
    let manifest = standalone_manifest(&sdk.join("Cargo.toml"), &root.join("Cargo.toml"));
    writeln!(out, "pub const SDK_MANIFEST: &str = {manifest:?};").unwrap();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("sdk_files.rs"), out).unwrap();
    // Directories too: a new or removed file changes their mtime.
    for dir in [sdk.join("src"), root.join("wit")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for (_, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        sdk.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
}

/// Every `.rs`/`.wit` file under `dir`, as (`prefix/relative path`, absolute path).
fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let rel = format!("{prefix}/{name}");
        if path.is_dir() {
            collect(&path, &rel, out);
        } else if name.ends_with(".rs") || name.ends_with(".wit") {
            out.push((rel, path));
        }
    }
}

/// The SDK's manifest with `key.workspace = true` replaced by the root's
/// `[workspace.package]` / `[workspace.dependencies]` value for `key`.
fn standalone_manifest(sdk: &Path, root: &Path) -> String {
    let root = std::fs::read_to_string(root).unwrap();
    let inherited = |key: &str| -> String {
        let mut section = "";
        for line in root.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line;
            } else if (section == "[workspace.package]" || section == "[workspace.dependencies]")
                && line.split('=').next().map(str::trim) == Some(key)
            {
                return line.to_string();
            }
        }
        panic!("{key}.workspace = true, but the root Cargo.toml does not set {key}");
    };
    let text = std::fs::read_to_string(sdk).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        match line.trim().strip_suffix(".workspace = true") {
            Some(key) => out.push_str(&inherited(key)),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}
