use std::os::unix::fs::symlink;

use super::*;

/// A root with a file, a directory, and links in and out; plus a secret
/// beside the root that nothing may reach.
fn fixture() -> (tempfile::TempDir, Root) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("checkout");
    std::fs::create_dir_all(root.join("ci")).unwrap();
    std::fs::write(t.path().join("secret.key"), "TOP-SECRET").unwrap();
    std::fs::write(root.join("ci/pipeline.toml"), "[pipeline]\n").unwrap();
    symlink("pipeline.toml", root.join("ci/same.toml")).unwrap();
    symlink("../secret.key", root.join("up.lock")).unwrap();
    symlink(t.path().join("secret.key"), root.join("abs.lock")).unwrap();
    symlink("..", root.join("parent")).unwrap();
    symlink("ci/../../secret.key", root.join("sneaky")).unwrap();
    symlink("loop-b", root.join("loop-a")).unwrap();
    symlink("loop-a", root.join("loop-b")).unwrap();
    let r = Root::open(&root, "the checkout").unwrap();
    (t, r)
}

#[test]
fn reads_stay_beneath_the_root() {
    let (_t, r) = fixture();
    assert_eq!(
        r.read_text(Path::new("ci/pipeline.toml"), 100).unwrap(),
        "[pipeline]\n"
    );
    // A link inside the root is followed.
    assert!(r.read(Path::new("ci/same.toml"), 100).is_ok());
    assert!(r.read(Path::new("ci/../ci/pipeline.toml"), 100).is_ok());
    for bad in [
        "up.lock",
        "abs.lock",
        "parent/secret.key",
        "sneaky",
        "../secret.key",
        "ci/../../secret.key",
        "loop-a",
    ] {
        let e = r.read(Path::new(bad), 100).unwrap_err();
        assert!(matches!(e, FileError::Outside { .. }), "{bad}: {e:?}");
        assert!(!e.to_string().contains("TOP-SECRET"), "{e}");
    }
    let abs = r.path().join("ci/pipeline.toml");
    assert!(matches!(
        r.read(&abs, 100).unwrap_err(),
        FileError::Outside { .. }
    ));
    assert!(r.read(Path::new("nope"), 100).unwrap_err().is_not_found());
    assert!(matches!(
        r.read(Path::new("ci"), 100).unwrap_err(),
        FileError::NotAFile { .. }
    ));
    assert!(matches!(
        r.read(Path::new("ci/pipeline.toml"), 3).unwrap_err(),
        FileError::TooLarge { max: 3, .. }
    ));
    assert!(r.has_entry(Path::new("up.lock")));
    assert!(!r.has_entry(Path::new("parent/secret.key")));
}

#[test]
fn writes_never_go_through_a_link() {
    let (t, r) = fixture();
    // A link where the file goes is replaced, not written through.
    r.write_replace(Path::new("up.lock"), b"locked").unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("secret.key")).unwrap(),
        "TOP-SECRET"
    );
    assert_eq!(r.read_text(Path::new("up.lock"), 100).unwrap(), "locked");
    // A directory link on the way is refused.
    assert!(r.write_replace(Path::new("parent/x.lock"), b"x").is_err());
    assert!(!t.path().join("x.lock").exists());
    // A planted temporary name cannot be used either: names are random and
    // created exclusively; nothing is left behind.
    let names: Vec<_> = std::fs::read_dir(r.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn untrusted_origins_confine_every_file_they_name() {
    let (t, r) = fixture();
    let plugins = t.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("tag.wasm"), "\0asm").unwrap();
    let o = Origin::Untrusted {
        root: r.path().to_path_buf(),
        plugin_dirs: vec![plugins.clone()],
    };
    let root = r.path();
    assert!(o.read(&root.join("ci/pipeline.toml"), 100).is_ok());
    for bad in [
        root.join("up.lock"),
        root.join("ci/../../secret.key"),
        t.path().join("secret.key"),
        plugins.join("tag.wasm"), // plugin dirs are for plugins only
    ] {
        let e = o.read(&bad, 100).unwrap_err();
        assert!(matches!(e, FileError::Outside { .. }), "{bad:?}: {e:?}");
    }
    assert!(o.read_plugin(&plugins.join("tag.wasm"), 100).is_ok());
    assert!(o.read_plugin(&plugins.join("../secret.key"), 100).is_err());
    assert!(o.write(&root.join("pipeline.lock"), b"x").is_err());
    assert!(!root.join("pipeline.lock").exists());
    assert_eq!(o.shown(&root.join("ci/pipeline.toml")), "ci/pipeline.toml");
    // The operator's own files are used as written.
    assert!(Origin::Operator
        .read(&t.path().join("secret.key"), 100)
        .is_ok());
}

#[test]
fn a_fifo_where_a_file_should_be_is_refused_without_hanging() {
    let (_t, r) = fixture();
    let fifo = r.path().join("report.xml");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(matches!(
        r.read(Path::new("report.xml"), 100).unwrap_err(),
        FileError::NotAFile { .. }
    ));
}

#[test]
fn replacing_a_file_keeps_its_mode_and_makes_parents() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, r) = fixture();
    std::fs::write(r.path().join("run.sh"), "old").unwrap();
    std::fs::set_permissions(
        r.path().join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    r.write_replace(Path::new("run.sh"), b"new").unwrap();
    let mode = std::fs::metadata(r.path().join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    r.write_replace(Path::new("deploy/prod/app.yaml"), b"x")
        .unwrap();
    assert_eq!(
        r.read_text(Path::new("deploy/prod/app.yaml"), 10).unwrap(),
        "x"
    );
    assert!(matches!(
        r.write_replace(Path::new("ci"), b"x").unwrap_err(),
        FileError::NotAFile { .. }
    ));
}
