//! Plugins shared as artifacts: pushed to and pulled from the real registry
//! on 127.0.0.1:5000, fetched from a URL, pinned in the lock file, cached
//! for offline runs, and signed. Everything runs through the `host` binary.
use std::path::{Path, PathBuf};

use pipeline_tests::cli::{host, host_env, shown, text};
use pipeline_tests::http::FileServer;
use pipeline_tests::plugins::plugin;
use pipeline_tests::services::{self, REGISTRY, REGISTRY_PASSWORD, REGISTRY_USER};
use sha2::{Digest, Sha256};

const CREDS: &[(&str, &str)] = &[
    ("HOST_REGISTRY_USERNAME", REGISTRY_USER),
    ("HOST_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
];
/// Credentials that the registry refuses: a run that still succeeds with
/// them did not need the registry.
const WRONG_CREDS: &[(&str, &str)] = &[
    ("HOST_REGISTRY_USERNAME", REGISTRY_USER),
    ("HOST_REGISTRY_PASSWORD", "wrong"),
];

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A fresh directory with a workspace holding `pipeline.toml`, and a state
/// dir (cache, run records) beside it.
struct Project {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    state: PathBuf,
}

impl Project {
    fn new(plugins: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        let p = Project {
            state: dir.path().join("state"),
            ws,
            _dir: dir,
        };
        std::fs::write(
            p.file(),
            format!(
                "[pipeline]\nname = \"dist\"\n\n[plugins]\n{plugins}\n{extra}\n[[stage]]\nname = \"tag\"\nplugin = \"tag\"\nwith = {{ image = \"127.0.0.1:5000/demo-app\" }}\n"
            ),
        )
        .unwrap();
        p
    }

    fn file(&self) -> PathBuf {
        self.ws.join("pipeline.toml")
    }

    fn lock(&self) -> String {
        std::fs::read_to_string(self.ws.join("pipeline.lock")).unwrap_or_default()
    }

    /// `host run`, with a state dir of its own when `fresh` (an empty cache).
    fn run(&self, env: &[(&str, &str)], extra: &[&str]) -> std::process::Output {
        let file = self.file();
        let mut args = vec![
            "run",
            file.to_str().unwrap(),
            "--workspace",
            self.ws.to_str().unwrap(),
            "-q",
        ];
        args.extend_from_slice(extra);
        host_env(&self.state, &args, env)
    }

    fn forget_cache(&self) {
        let _ = std::fs::remove_dir_all(self.state.join("plugins"));
    }
}

fn unique(repo: &str) -> String {
    format!(
        "{REGISTRY}/plugins/{repo}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn push(state: &Path, file: &Path, reference: &str) {
    let out = host_env(
        state,
        &["plugin", "push", file.to_str().unwrap(), reference],
        CREDS,
    );
    assert!(out.status.success(), "push failed:\n{}", shown(&out));
}

#[test]
fn push_pull_and_run_by_reference_then_offline_from_the_cache() {
    services::require();
    let tag = plugin("tag");
    let scratch = tempfile::tempdir().unwrap();
    let reference = format!("{}:1.0", unique("tag"));
    push(scratch.path(), &tag, &reference);

    // The manifest follows the CNCF Wasm artifact layout, as any OCI tool sees it.
    let (repo, t) = reference
        .split_once("/")
        .unwrap()
        .1
        .rsplit_once(':')
        .unwrap();
    let manifest: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("http://{REGISTRY}/v2/{repo}/manifests/{t}"))
        .basic_auth(REGISTRY_USER, Some(REGISTRY_PASSWORD))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest:#}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    assert_eq!(layers[0]["digest"], format!("sha256:{}", sha256(&tag)));

    // Pull writes the same bytes.
    let pulled = scratch.path().join("pulled.wasm");
    let out = host_env(
        scratch.path(),
        &[
            "plugin",
            "pull",
            &format!("oci://{reference}"),
            "-o",
            pulled.to_str().unwrap(),
        ],
        CREDS,
    );
    assert!(out.status.success(), "{}", shown(&out));
    assert_eq!(sha256(&pulled), sha256(&tag));

    // A pipeline runs it by reference and pins it.
    let p = Project::new(&format!("tag = \"oci://{reference}\""), "");
    let out = p.run(CREDS, &[]);
    assert!(out.status.success(), "{}", shown(&out));
    let lock = p.lock();
    assert!(
        lock.contains(&format!("sha256 = \"{}\"", sha256(&tag))),
        "{lock}"
    );
    assert!(
        lock.contains(&format!(
            "resolved = \"oci://{}@sha256:",
            reference.rsplit_once(':').unwrap().0
        )),
        "{lock}"
    );

    // Later runs need no registry: the cache has the pinned bytes.
    let out = p.run(WRONG_CREDS, &["--locked"]);
    assert!(out.status.success(), "offline run failed:\n{}", shown(&out));

    // Without the cache, the wrong credentials do reach the registry and fail clearly.
    p.forget_cache();
    let out = p.run(WRONG_CREDS, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("plugin `tag`") && err.contains("HOST_REGISTRY_PASSWORD"),
        "{err}"
    );
}

#[test]
fn a_moved_tag_and_a_tampered_cache_are_refused_against_the_lock() {
    services::require();
    let scratch = tempfile::tempdir().unwrap();
    let reference = format!("{}:stable", unique("tag"));
    push(scratch.path(), &plugin("tag"), &reference);
    let p = Project::new(&format!("tag = \"oci://{reference}\""), "");
    let out = p.run(CREDS, &[]);
    assert!(out.status.success(), "{}", shown(&out));
    let pinned = p.lock();

    // Someone tampers with the cached component.
    let blob = p
        .state
        .join("plugins/sha256")
        .join(format!("{}.wasm", sha256(&plugin("tag"))));
    let mut bytes = std::fs::read(&blob).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = p.run(CREDS, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains("changed on disk"),
        "{}",
        shown(&out)
    );
    assert!(
        text(&out.stderr).contains("pipeline.toml:5:"),
        "no file:line for the plugin:\n{}",
        shown(&out)
    );

    // The tag moves to other bytes (a different plugin, here).
    push(scratch.path(), &plugin("slack-notify"), &reference);
    p.forget_cache();
    let out = p.run(CREDS, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("tag `stable` now points to") && err.contains("host lock --update"),
        "{err}"
    );
    assert_eq!(
        p.lock(),
        pinned,
        "a refused run must not change the lock file"
    );

    // Accepting the move is explicit.
    let out = host_env(
        &p.state,
        &["lock", p.file().to_str().unwrap(), "--update"],
        CREDS,
    );
    assert!(out.status.success(), "{}", shown(&out));
    assert!(
        p.lock().contains(&sha256(&plugin("slack-notify"))),
        "{}",
        p.lock()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_plugin_is_checked_against_its_digest() {
    let tag = plugin("tag");
    let files = FileServer::default();
    files.put("/tag.wasm", std::fs::read(&tag).unwrap());
    let (addr, _stop) = files.start().await.unwrap();
    let url = format!("http://{addr}/tag.wasm");

    // A wrong pin in the pipeline file is refused.
    let wrong = "0".repeat(64);
    let p = Project::new(
        &format!("tag = {{ url = \"{url}\", sha256 = \"{wrong}\" }}"),
        "",
    );
    let out = tokio::task::block_in_place(|| p.run(&[], &[]));
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains(&format!("pipeline pins sha256:{wrong}")),
        "{}",
        shown(&out)
    );

    let p = Project::new(
        &format!("tag = {{ url = \"{url}\", sha256 = \"{}\" }}", sha256(&tag)),
        "",
    );
    let out = tokio::task::block_in_place(|| p.run(&[], &[]));
    assert!(out.status.success(), "{}", shown(&out));

    // The server now serves other bytes; a fresh machine must refuse them.
    files.put("/tag.wasm", std::fs::read(plugin("slack-notify")).unwrap());
    p.forget_cache();
    let out = tokio::task::block_in_place(|| p.run(&[], &[]));
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(text(&out.stderr).contains("pins sha256"), "{}", shown(&out));
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = host(dir, &["plugin", "keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", shown(&out));
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    (key, public.trim().to_string())
}

fn sign(file: &Path, key: &Path) {
    let out = host(
        key.parent().unwrap(),
        &[
            "plugin",
            "sign",
            file.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", shown(&out));
}

#[test]
fn signatures_are_required_when_the_pipeline_lists_trusted_keys() {
    services::require();
    let keys = tempfile::tempdir().unwrap();
    let (team, team_pub) = keygen(keys.path(), "team");
    let (other, _) = keygen(keys.path(), "other");
    let trust = format!("[trust]\nsigned-by = [\"{team_pub}\"]\n");

    // An unsigned local plugin is refused.
    let p = Project::new("tag = \"tag.wasm\"", &trust);
    let local = p.ws.join("tag.wasm");
    std::fs::copy(plugin("tag"), &local).unwrap();
    let out = p.run(&[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains("it is not signed"),
        "{}",
        shown(&out)
    );

    // Signed by a key the pipeline does not trust: refused.
    sign(&local, &other);
    let out = p.run(&[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains("which is not in [trust] signed-by"),
        "{}",
        shown(&out)
    );

    // Signed by the team: runs. Then the component changes under the signature: refused.
    sign(&local, &team);
    let out = p.run(&[], &[]);
    assert!(out.status.success(), "{}", shown(&out));
    std::fs::copy(plugin("slack-notify"), &local).unwrap();
    let out = p.run(&[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        text(&out.stderr).contains("its signature is for sha256:"),
        "{}",
        shown(&out)
    );

    // The signature travels with a pushed plugin and is checked after a pull.
    let signed = keys.path().join("tag.wasm");
    std::fs::copy(plugin("tag"), &signed).unwrap();
    sign(&signed, &team);
    let reference = format!("{}:1", unique("signed-tag"));
    push(keys.path(), &signed, &reference);
    let p = Project::new(&format!("tag = \"oci://{reference}\""), &trust);
    let out = p.run(CREDS, &[]);
    assert!(out.status.success(), "{}", shown(&out));

    // `host plugin verify` says the same as the run.
    let out = host(
        keys.path(),
        &[
            "plugin",
            "verify",
            signed.to_str().unwrap(),
            "--key",
            &team_pub,
        ],
    );
    assert!(out.status.success(), "{}", shown(&out));
}

/// Outside any checkout and without `--sdk`, the project carries the SDK
/// and WIT this host was built with, builds offline into a small component,
/// and passes `host check` and `host run`; the unset key gets the default
/// declared once in describe().
#[test]
fn plugin_new_rust_builds_outside_the_repository_with_the_vendored_sdk() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        !dir.path().starts_with(pipeline_tests::plugins::root()),
        "the temp dir must be outside the repository"
    );
    let project = dir.path().join("greeter");
    let out = host(
        dir.path(),
        &[
            "plugin",
            "new",
            "greeter",
            "--lang",
            "rust",
            "--dir",
            project.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("path = \"vendor/stage-sdk-"),
        "{manifest}"
    );
    let hello = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
    assert!(
        hello.lines().count() <= 20,
        "the hello stage grew:\n{hello}"
    );

    // A target dir of its own (the template's release profile differs from
    // the workspace's), kept between runs so only the two crates rebuild.
    let target = pipeline_tests::plugins::target_dir().join("plugin-new-build");
    let out = std::process::Command::new("cargo")
        .args([
            "build",
            "--offline",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
        ])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the scaffolded plugin does not build: {}",
        shown(&out)
    );
    let wasm = target.join("wasm32-wasip2/release/greeter.wasm");
    let size = std::fs::metadata(&wasm).unwrap().len();
    assert!(
        size <= 200 * 1024,
        "the hello component is {} KB (limit 200 KB)",
        size / 1024
    );

    let p = Project::new("", "");
    std::fs::copy(&wasm, p.ws.join("greeter.wasm")).unwrap();
    std::fs::write(
        p.file(),
        "[pipeline]\nname = \"g\"\n[plugins]\ngreeter = \"greeter.wasm\"\n[[stage]]\nname = \"hello\"\nplugin = \"greeter\"\n[[stage]]\nname = \"team\"\nplugin = \"greeter\"\nwith = { who = \"team\" }\n",
    )
    .unwrap();
    let out = host(&p.state, &["check", p.file().to_str().unwrap()]);
    assert!(out.status.success(), "{}", shown(&out));
    let out = p.run(&[], &["--json"]);
    assert!(out.status.success(), "{}", shown(&out));
    let json = text(&out.stdout);
    assert!(
        json.contains("hello, team") && json.contains("hello, world"),
        "{}",
        shown(&out)
    );
}
