use std::path::PathBuf;

use super::*;

fn key() -> CacheKey {
    let mut k = CacheKey::default();
    k.part("plugin", b"p1")
        .part("with", br#"{"a":1}"#)
        .part("grants", b"g")
        .digest_part("input `src/a.rs`", "sha256:aa")
        .part("upstream `build`", b"out");
    k
}

#[test]
fn each_part_flips_the_key_and_names_itself() {
    let base = key();
    for name in [
        "plugin",
        "with",
        "grants",
        "input `src/a.rs`",
        "upstream `build`",
    ] {
        let mut k = base.clone();
        k.part(name, b"other");
        assert_ne!(k.digest(), base.digest(), "{name}");
        assert_eq!(k.changes_since(&base), vec![format!("{name} changed")]);
    }
    let mut k = base.clone();
    k.digest_part("input `src/b.rs`", "sha256:bb");
    assert_ne!(k.digest(), base.digest());
    assert_eq!(k.changes_since(&base), vec!["input `src/b.rs` added"]);
    assert_eq!(base.changes_since(&k), vec!["input `src/b.rs` removed"]);
    assert_eq!(key().digest(), base.digest());
    assert!(key().changes_since(&base).is_empty());
}

#[test]
fn canonical_json_sorts_keys_at_every_level() {
    let a: serde_json::Value =
        serde_json::from_str(r#"{"b":{"y":1,"x":2},"a":[{"d":1,"c":2}]}"#).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(r#"{"a":[{"c":2,"d":1}],"b":{"x":2,"y":1}}"#).unwrap();
    assert_eq!(canonical_json(&a), canonical_json(&b));
    assert_eq!(
        canonical_json(&a),
        r#"{"a":[{"c":2,"d":1}],"b":{"x":2,"y":1}}"#
    );
}

fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("src/deep")).unwrap();
    std::fs::write(t.path().join("src/a.rs"), b"a").unwrap();
    std::fs::write(t.path().join("src/deep/b.rs"), b"b").unwrap();
    std::fs::write(t.path().join("Cargo.lock"), b"lock").unwrap();
    std::fs::write(t.path().join("README.md"), b"no").unwrap();
    t
}

#[test]
fn inputs_are_the_matching_files_in_path_order() {
    let t = tree();
    let pats = vec!["src/**".to_string(), "Cargo.lock".to_string()];
    let got = hash_inputs(t.path(), &pats, Limits::default()).unwrap();
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(names, ["Cargo.lock", "src/a.rs", "src/deep/b.rs"]);
    assert_eq!(
        got["src/a.rs"],
        crate::digest::sha256_of(&b"a"[..]).unwrap()
    );
    // `*` does not cross `/`.
    let top = hash_inputs(t.path(), &["src/*".to_string()], Limits::default()).unwrap();
    assert_eq!(top.keys().collect::<Vec<_>>(), ["src/a.rs"]);
}

#[test]
fn a_link_out_of_the_workspace_is_refused_and_not_followed_when_listing() {
    let t = tree();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), t.path().join("src/leak")).unwrap();
    let e = hash_inputs(t.path(), &["src/**".to_string()], Limits::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cache input `src/leak`: a link that leads out of the workspace"
    );
    // A link to a directory outside is listed, never walked into.
    let t = tree();
    std::os::unix::fs::symlink(outside.path(), t.path().join("src/out")).unwrap();
    let got = hash_inputs(t.path(), &["src/out/**".to_string()], Limits::default()).unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn limits_are_named_when_exceeded() {
    let t = tree();
    let pats = vec!["**".to_string()];
    let few = Limits {
        files: 2,
        ..Limits::default()
    };
    assert_eq!(
        hash_inputs(t.path(), &pats, few).unwrap_err().to_string(),
        "cache inputs match more than 2 files; narrow `cache.inputs`"
    );
    let small = Limits {
        bytes: 5,
        ..Limits::default()
    };
    assert_eq!(
        hash_inputs(t.path(), &pats, small).unwrap_err().to_string(),
        "cache inputs are more than 5 bytes; narrow `cache.inputs`"
    );
    let entries = Limits {
        entries: 3,
        ..Limits::default()
    };
    assert!(matches!(
        hash_inputs(t.path(), &pats, entries),
        Err(InputError::TooManyEntries { max: 3 })
    ));
    let deep: PathBuf = std::iter::repeat_n("d", MAX_DEPTH + 1).collect();
    std::fs::create_dir_all(t.path().join(&deep)).unwrap();
    let e = hash_inputs(t.path(), &pats, Limits::default()).unwrap_err();
    assert!(
        matches!(e, InputError::TooDeep { max: MAX_DEPTH, .. }),
        "{e}"
    );
}

crate::both_engines!(owned: the_store_hits_on_the_same_key_and_says_what_changed_otherwise, only_the_newest_entries_of_a_stage_are_kept);

fn the_store_hits_on_the_same_key_and_says_what_changed_otherwise(db: Db) {
    let cache = StageCache::with_db(db).unwrap();
    let k = key();
    let miss = |l: Lookup| match l {
        Lookup::Miss(why) => why,
        Lookup::Hit(_) => panic!("hit"),
    };
    assert_eq!(miss(cache.lookup("p", "s", &k).unwrap()), "no earlier run");
    let entry = Entry {
        run_id: "r1".into(),
        build_number: 1,
        summary: "ok".into(),
        ..Entry::default()
    };
    cache.store("p", "s", &k, &entry).unwrap();
    match cache.lookup("p", "s", &k).unwrap() {
        Lookup::Hit(e) => assert_eq!((e.run_id.as_str(), e.summary.as_str()), ("r1", "ok")),
        Lookup::Miss(why) => panic!("{why}"),
    }
    // Another pipeline or stage never sees it.
    assert_eq!(miss(cache.lookup("q", "s", &k).unwrap()), "no earlier run");
    assert_eq!(miss(cache.lookup("p", "t", &k).unwrap()), "no earlier run");
    let mut changed = k.clone();
    changed.digest_part("input `src/a.rs`", "sha256:ab");
    assert_eq!(
        miss(cache.lookup("p", "s", &changed).unwrap()),
        "input `src/a.rs` changed"
    );
}

#[test]
fn a_record_names_the_run_it_was_cached_from_only_when_it_was() {
    let mut rec = StageRecord::pending("s", "p");
    let json = serde_json::to_value(&rec).unwrap();
    assert!(json.get("cached_from").is_none(), "{json}");
    rec.cached_from = Some(CachedFrom {
        run_id: "r1".into(),
        build_number: 4,
    });
    let json = serde_json::to_string(&rec).unwrap();
    let back: StageRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back.cached_from, rec.cached_from);
    assert_eq!(back.cached_from.unwrap().to_string(), "cached from run 4");
    rec.summary = "built\nmore".into();
    assert_eq!(
        crate::run::display::stage_line(&rec),
        "cached from run 4  built"
    );
}

#[test]
fn another_repository_or_file_is_another_pipeline() {
    let checkout = |root: &str| Origin::Untrusted {
        root: root.into(),
        plugin_dirs: Vec::new(),
    };
    let id = |o: &Origin, f: &str, r: Option<&str>| pipeline_identity(o, Path::new(f), r);
    // A server run: the checkout directory changes per run, the
    // repository and the file's place in it do not.
    assert_eq!(
        id(&checkout("/w/1"), "/w/1/ci.toml", Some("acme/app")),
        id(&checkout("/w/2"), "/w/2/ci.toml", Some("acme/app"))
    );
    assert_ne!(
        id(&checkout("/w/1"), "/w/1/ci.toml", Some("acme/app")),
        id(&checkout("/w/2"), "/w/2/ci.toml", Some("evil/app"))
    );
    assert_ne!(
        id(&checkout("/w/1"), "/w/1/ci.toml", Some("acme/app")),
        id(&checkout("/w/1"), "/w/1/other.toml", Some("acme/app"))
    );
    assert_ne!(
        id(&Origin::Operator, "/a/ci.toml", None),
        id(&Origin::Operator, "/b/ci.toml", None)
    );
}

fn only_the_newest_entries_of_a_stage_are_kept(db: Db) {
    let cache = StageCache::with_db(db).unwrap();
    let keyed = |i: usize| {
        let mut k = key();
        k.part("with", i.to_string().as_bytes());
        k
    };
    for i in 0..=ENTRIES_PER_STAGE {
        let entry = Entry {
            run_id: format!("r{i}"),
            ..Entry::default()
        };
        cache.store("p", "s", &keyed(i), &entry).unwrap();
    }
    cache
        .store("p", "other", &keyed(0), &Entry::default())
        .unwrap();
    let hit = |stage: &str, i: usize| {
        matches!(cache.lookup("p", stage, &keyed(i)).unwrap(), Lookup::Hit(_))
    };
    assert!(!hit("s", 0), "the oldest entry is dropped");
    assert!((1..=ENTRIES_PER_STAGE).all(|i| hit("s", i)));
    assert!(hit("other", 0), "another stage's entries are its own");
}
