//! Built plugin components, built once per test process by `plugins/build.sh`.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Path of a built plugin, e.g. `plugin("tag")`. Builds all plugins the
/// first time it is called in a process (cargo makes that a no-op when
/// they are up to date).
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new("bash")
            .arg(root().join("plugins/build.sh"))
            .status()
            .expect("running plugins/build.sh");
        assert!(status.success(), "plugins/build.sh failed");
    });
    let p = target_dir().join("plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// The `host` binary cargo built for this test run.
pub fn host_bin() -> PathBuf {
    let p = target_dir().join("debug").join("host");
    if !p.exists() {
        let status = Command::new("cargo")
            .args(["build", "-p", "host"])
            .current_dir(root())
            .status()
            .expect("cargo build -p host");
        assert!(status.success());
    }
    p
}
