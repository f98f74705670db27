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

/// The `host` binary. Cargo does not build another package's binary for
/// these tests, and building it from inside `cargo test` would wait on the
/// build lock, so `just test` builds it first.
pub fn host_bin() -> PathBuf {
    let p = target_dir().join("debug").join("host");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p host` first (`just test` does)",
        p.display()
    );
    p
}

/// `pipelines/demo-app/dist/` (static binary + busybox), built once per
/// test process by `pipelines/demo-app/build.sh`.
pub fn demo_app_dist() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new("bash")
            .arg(root().join("pipelines/demo-app/build.sh"))
            .status()
            .expect("running pipelines/demo-app/build.sh");
        assert!(status.success(), "pipelines/demo-app/build.sh failed");
    });
    root().join("pipelines/demo-app/dist")
}

/// Copy the demo app's build contexts (Dockerfiles, tests, dist/) into
/// `workspace/demo-app`, so a test's workspace holds only what it needs.
pub fn demo_app_workspace(workspace: &Path) -> PathBuf {
    let src = root().join("pipelines/demo-app");
    demo_app_dist();
    let dst = workspace.join("demo-app");
    for rel in [
        "Dockerfile",
        "Dockerfile.test",
        "tests/container-tests.sh",
        "dist/demo-app",
        "dist/busybox",
    ] {
        let to = dst.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), &to).unwrap_or_else(|e| panic!("copying {rel}: {e}"));
    }
    dst
}
