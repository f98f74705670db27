//! JavaScript stages (componentize-js): the `smoke-test` plugin against a
//! real HTTP server on 127.0.0.1, and the `host plugin new --lang js`
//! template built with its own build.sh.
//!
//! A JS component is ~13 MB and takes seconds to compile, so the first test
//! to need it compiles it once into a process-wide cache directory and each
//! harness starts with a copy of that cache (the host's own `.cwasm` files).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, Uri};
use axum::routing::get;
use axum::Router;
use host::run::{RunRecord, Status};
use host::runtime::cache::CacheOutcome;
use host::runtime::Runtime;
use pipeline_tests::harness::Harness;
use pipeline_tests::plugins::{plugin, target_dir};

// ---- a server with the answers the checks need -----------------------------

#[derive(Clone, Default)]
struct Site {
    hits: Arc<Mutex<HashMap<String, usize>>>,
    /// `/flaky` answers 503 this many more times, then 200.
    unhealthy_left: Arc<AtomicUsize>,
}

struct Server {
    base: String,
    site: Site,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    async fn start(unhealthy: usize) -> Self {
        let site = Site::default();
        site.unhealthy_left.store(unhealthy, Ordering::SeqCst);
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/version", get(|| async { "version 1.4.2 (build 42)" }))
            .route(
                "/status/{code}",
                get(|UrlPath(code): UrlPath<u16>| async move {
                    (
                        StatusCode::from_u16(code).unwrap(),
                        format!("status {code}"),
                    )
                }),
            )
            .route(
                "/flaky",
                get(|State(s): State<Site>| async move {
                    let left = s.unhealthy_left.load(Ordering::SeqCst);
                    if left > 0 {
                        s.unhealthy_left.store(left - 1, Ordering::SeqCst);
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    } else {
                        (StatusCode::OK, "ok")
                    }
                }),
            )
            .route(
                "/slow",
                // The server is slow, not the test: latency is what is checked.
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    "ok"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(site.clone(), count))
            .with_state(site.clone());
        let (addr, tx) = pipeline_tests::http::serve(app).await.unwrap();
        Self {
            base: format!("http://{addr}"),
            site,
            _shutdown: tx,
        }
    }

    fn hits(&self, path: &str) -> usize {
        self.site
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

async fn count(
    State(s): State<Site>,
    uri: Uri,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    *s.hits
        .lock()
        .unwrap()
        .entry(uri.path().to_string())
        .or_default() += 1;
    next.run(req).await
}

// ---- the compiled component, once per process ------------------------------

struct Warm {
    dir: PathBuf,
    compile: Duration,
}

/// Compile smoke-test (and the hostile fixture used as a stand-in deploy
/// stage) into a fresh cache directory under the target dir.
fn warm_cache() -> &'static Warm {
    static WARM: OnceLock<Warm> = OnceLock::new();
    WARM.get_or_init(|| {
        let smoke = plugin("smoke-test");
        let dir = target_dir().join("tmp/polyglot-js-cache");
        let _ = std::fs::remove_dir_all(&dir);
        let runtime = Runtime::new(dir.clone()).expect("runtime");
        let started = Instant::now();
        let loaded = runtime.load(&smoke).expect("loading smoke-test.wasm");
        assert_eq!(loaded.cache, CacheOutcome::Compiled);
        let compile = started.elapsed();
        runtime
            .load(&plugin("hostile"))
            .expect("loading hostile.wasm");
        Warm { dir, compile }
    })
}

fn seed(cache: &Path) {
    std::fs::create_dir_all(cache).unwrap();
    for entry in std::fs::read_dir(&warm_cache().dir).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "cwasm") {
            std::fs::copy(entry.path(), cache.join(entry.file_name())).unwrap();
        }
    }
}

fn harness() -> Harness {
    let h = Harness::new().unwrap();
    seed(&h.state_dir().join("cache"));
    h
}

/// A pipeline with one smoke-test stage allowed to call `grant`.
fn pipeline(with: &str, grant: &str) -> String {
    format!(
        r#"
[pipeline]
name = "smoke"

[plugins]
smoke-test = "{{plugin:smoke-test}}"
hostile = "{{plugin:hostile}}"

[[stage]]
name = "smoke"
plugin = "smoke-test"
with = {with}
grants = {{ http = ["{grant}"] }}
"#
    )
}

fn smoke(run: &RunRecord) -> &host::run::StageRecord {
    run.stage("smoke").expect("stage smoke")
}

fn error(run: &RunRecord) -> String {
    smoke(run).error.clone().unwrap_or_default()
}

// ---- smoke-test ------------------------------------------------------------

#[tokio::test]
async fn all_checks_pass_with_status_body_regex_and_latency() {
    let srv = Server::start(0).await;
    let b = &srv.base;
    let with = format!(
        r#"{{ checks = [
            {{ name = "health", url = "{b}/health", expect-status = 200, body-contains = "ok", max-latency = "2s" }},
            {{ name = "version", url = "{b}/version", body-matches = "^version \\d+\\.\\d+\\.\\d+" }},
            {{ name = "gone", url = "{b}/status/410", method = "get", expect-status = [404, 410] }},
        ] }}"#
    );
    let h = harness();
    let run = h.run(&pipeline(&with, &format!("{b}/*"))).await;
    let s = smoke(&run);
    assert_eq!(s.status, Status::Success, "{s:#?}");
    assert!(
        s.summary.starts_with("3 checks passed: health "),
        "{}",
        s.summary
    );
    assert_eq!(s.outputs["passed"], "3");
    assert_eq!(s.outputs["failed"], "0");
    assert_eq!(s.outputs["status.gone"], "410");
    for name in ["health", "version", "gone"] {
        let ms: u64 = s.outputs[&format!("latency-ms.{name}")].parse().unwrap();
        assert!(ms < 2000, "{name}: {ms} ms");
    }
    assert_eq!(srv.hits("/health"), 1);
    assert!(
        s.log
            .iter()
            .any(|l| l.stream == "info" && l.text.starts_with("health: ok (GET ")),
        "{:#?}",
        s.log
    );
}

#[tokio::test]
async fn wrong_status_fails_naming_the_check_and_the_status() {
    let srv = Server::start(0).await;
    let b = &srv.base;
    let with = format!(
        r#"{{ checks = [
            {{ name = "health", url = "{b}/health" }},
            {{ name = "api", url = "{b}/status/503", expect-status = 200 }},
        ], retries = 1, retry-delay = "10ms" }}"#
    );
    let h = harness();
    let run = h.run(&pipeline(&with, &format!("{b}/*"))).await;
    let s = smoke(&run);
    assert_eq!(s.status, Status::Failure, "{s:#?}");
    assert_eq!(
        error(&run),
        "api: status 503, expected 200 (after 2 attempts)"
    );
    assert_eq!(s.outputs["passed"], "1");
    assert_eq!(s.outputs["failed"], "1");
    // The passing check is not repeated; the failing one is, once.
    assert_eq!(srv.hits("/health"), 1);
    assert_eq!(srv.hits("/status/503"), 2);
    assert_eq!(s.annotations.len(), 1);
    assert_eq!(s.annotations[0].title, "smoke check api failed");
}

#[tokio::test]
async fn body_and_latency_mismatches_fail_with_their_reasons() {
    let srv = Server::start(0).await;
    let b = &srv.base;
    let with = format!(
        r#"{{ checks = [
            {{ name = "health", url = "{b}/health", body-contains = "healthy" }},
            {{ name = "version", url = "{b}/version", body-matches = "^v2\\." }},
            {{ name = "slow", url = "{b}/slow", max-latency = "100ms" }},
        ], retries = 0 }}"#
    );
    let h = harness();
    let run = h.run(&pipeline(&with, &format!("{b}/*"))).await;
    assert_eq!(smoke(&run).status, Status::Failure);
    let err = error(&run);
    assert!(
        err.contains(r#"health: body does not contain "healthy" (got "ok")"#),
        "{err}"
    );
    assert!(
        err.contains(r#"version: body does not match /^v2\./"#),
        "{err}"
    );
    assert!(err.contains("slow: latency "), "{err}");
    assert!(err.contains(", max 100 ms"), "{err}");
    assert_eq!(smoke(&run).outputs["failed"], "3");
}

#[tokio::test]
async fn a_server_that_becomes_healthy_passes_thanks_to_retries() {
    // 503 for the first three requests, then 200.
    let srv = Server::start(3).await;
    let b = &srv.base;
    let with = format!(
        r#"{{ checks = [ {{ name = "health", url = "{b}/flaky", body-contains = "ok" }} ],
             retries = 5, retry-delay = "50ms" }}"#
    );
    let h = harness();
    let run = h.run(&pipeline(&with, &format!("{b}/*"))).await;
    let s = smoke(&run);
    assert_eq!(s.status, Status::Success, "{s:#?}");
    assert!(s.summary.contains("(after 4 attempts)"), "{}", s.summary);
    assert_eq!(srv.hits("/flaky"), 4, "three 503s, then one 200");
    let waits = s
        .log
        .iter()
        .filter(|l| l.text.starts_with("retrying health in 50 ms"))
        .count();
    assert_eq!(waits, 3, "{:#?}", s.log);
}

#[tokio::test]
async fn too_few_retries_fail_with_the_last_status() {
    let srv = Server::start(10).await;
    let b = &srv.base;
    let with = format!(
        r#"{{ checks = [ {{ name = "health", url = "{b}/flaky" }} ], retries = 2, retry-delay = "1ms" }}"#
    );
    let h = harness();
    let run = h.run(&pipeline(&with, &format!("{b}/*"))).await;
    assert_eq!(
        error(&run),
        "health: status 503, expected 200 (after 3 attempts)"
    );
    assert_eq!(srv.hits("/flaky"), 3);
}

#[tokio::test]
async fn a_url_outside_the_grant_is_denied_by_the_host_and_not_retried() {
    let srv = Server::start(0).await;
    let b = &srv.base;
    let with = format!(
        r#"{{ checks = [
            {{ name = "health", url = "{b}/health" }},
            {{ name = "admin", url = "{b}/status/200" }},
        ], retries = 3, retry-delay = "10ms" }}"#
    );
    let h = harness();
    let run = h.run(&pipeline(&with, &format!("{b}/health"))).await;
    assert_eq!(smoke(&run).status, Status::Failure);
    assert_eq!(
        error(&run),
        format!(r#"admin: denied: stage "smoke" has no "http" grant for "{b}/status/200""#)
    );
    assert_eq!(
        srv.hits("/status/200"),
        0,
        "a denied request never leaves the host"
    );
    assert_eq!(srv.hits("/health"), 1);
}

#[tokio::test]
async fn urls_can_come_from_upstream_outputs() {
    let srv = Server::start(0).await;
    let b = &srv.base;
    // The hostile fixture's `echo` turns its `with` keys into outputs: a
    // stand-in for a deploy stage that reports where it deployed.
    let text = format!(
        r#"
[pipeline]
name = "smoke"

[plugins]
smoke-test = "{{plugin:smoke-test}}"
hostile = "{{plugin:hostile}}"

[[stage]]
name = "deploy"
plugin = "hostile"
with = {{ attack = "echo", url = "{b}" }}

[[stage]]
name = "smoke"
plugin = "smoke-test"
needs = ["deploy"]
with = {{ checks = [ {{ name = "health", url = "${{needs.deploy.url}}/health" }} ] }}
grants = {{ http = ["{b}/*"] }}

[[stage]]
name = "typo"
plugin = "smoke-test"
needs = ["deploy"]
with = {{ checks = [ {{ name = "health", url = "${{needs.deploy.adress}}/health" }} ] }}
grants = {{ http = ["{b}/*"] }}
"#
    );
    let h = harness();
    let run = h.run(&text).await;
    let s = smoke(&run);
    assert_eq!(s.status, Status::Success, "{s:#?}");
    assert_eq!(srv.hits("/health"), 1);
    let typo = run.stage("typo").unwrap();
    assert_eq!(typo.status, Status::Failure);
    assert_eq!(
        typo.error.as_deref().unwrap_or_default(),
        r#"configuration error: with.checks[0].url: ${needs.deploy.adress}: stage "deploy" (success) has no output "adress" (it has: url)"#
    );
}

#[tokio::test]
async fn bad_config_names_the_with_field() {
    let grant = "http://127.0.0.1:1/*";
    let cases = [
        (
            r#"{ checks = [ { name = "health" } ] }"#,
            "with.checks[0].url: required key is missing",
        ),
        (
            r#"{ checks = [ { name = "health", url = "http://127.0.0.1:1/", expect = 200 } ] }"#,
            "with.checks[0].expect: unknown key (expected one of: name, url, method, expect-status, body-contains, body-matches, max-latency, headers)",
        ),
        (
            r#"{ checks = [ { name = "health", url = "http://127.0.0.1:1/" } ], retry-delay = "soon" }"#,
            r#"with.retry-delay: "soon" is not a duration (e.g. 500ms, 30s, 5m, 1h30m)"#,
        ),
        (
            r#"{ checks = [ { name = "health", url = "http://127.0.0.1:1/", max-latency = 500 } ] }"#,
            r#"with.checks[0].max-latency: expected a duration string such as "500ms" or "1s", got 500"#,
        ),
        (
            r#"{ checks = [ { name = "a", url = "http://127.0.0.1:1/", body-matches = "(" } ] }"#,
            "with.checks[0].body-matches: not a valid regular expression",
        ),
        (
            r#"{ checks = [ { name = "a", url = "ftp://127.0.0.1/" } ] }"#,
            r#"with.checks[0].url: "ftp://127.0.0.1/" is not an http:// or https:// URL"#,
        ),
        (r#"{ checks = [] }"#, "with.checks: expected a non-empty list of checks"),
        (
            r#"{ checks = [ { name = "a", url = "http://127.0.0.1:1/" } ], retries = 11 }"#,
            "with.retries: expected an integer from 0 to 10, got 11",
        ),
    ];
    let h = harness();
    for (with, want) in cases {
        let run = h.run(&pipeline(with, grant)).await;
        assert_eq!(smoke(&run).status, Status::Failure, "{with}");
        let err = error(&run);
        assert!(
            err.starts_with(&format!("configuration error: {want}")),
            "{with}\n  got:  {err}\n  want: {want}"
        );
    }
}

/// Keys outside `describe()` never reach the plugin: the host's preflight
/// refuses them, naming the key and listing the declared ones.
#[tokio::test]
async fn describe_declares_the_with_keys_the_host_checks() {
    let h = harness();
    let path = h.write_pipeline(&pipeline(
        r#"{ checks = [], retry = 3 }"#,
        "http://127.0.0.1:1/*",
    ));
    let p = host::pipeline::load(&path).expect("valid pipeline");
    let runtime = Runtime::new(h.state_dir().join("cache")).unwrap();
    let diags = host::run::preflight::load_plugins(&p, &runtime)
        .await
        .err()
        .expect("with.retry is refused");
    let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|d| d.contains(
            "`with.retry` is not a setting of plugin `smoke-test` (expected one of: checks, retries, retry-delay, timeout)"
        )),
        "{text:#?}"
    );

    let smoke = runtime.load(&plugin("smoke-test")).unwrap();
    assert_eq!(smoke.cache, CacheOutcome::Hit);
    let info = runtime.describe(&smoke).await.unwrap();
    assert_eq!(info.name, "smoke-test");
    assert_eq!(info.capabilities, ["http"]);
    let checks = info.config.iter().find(|k| k.name == "checks").unwrap();
    assert!(checks.required);
}

/// Component size, compile and cached load times, one stage run; printed
/// for `--nocapture` and kept loose enough for a loaded CI machine.
#[tokio::test]
async fn load_and_run_times() {
    let warm = warm_cache();
    let path = plugin("smoke-test");
    let size = std::fs::metadata(&path).unwrap().len();
    let h = harness();
    let runtime = Runtime::new(h.state_dir().join("cache")).unwrap();
    let started = Instant::now();
    let loaded = runtime.load(&path).unwrap();
    let cached = started.elapsed();
    assert_eq!(loaded.cache, CacheOutcome::Hit);

    let srv = Server::start(0).await;
    let b = &srv.base;
    let with = format!(r#"{{ checks = [ {{ name = "health", url = "{b}/health" }} ] }}"#);
    let run = h.run(&pipeline(&with, &format!("{b}/*"))).await;
    assert_eq!(smoke(&run).status, Status::Success);
    println!(
        "smoke-test.wasm: {:.1} MiB; compile {:.2?}; cached load {:.2?}; stage run {} ms (latency {} ms)",
        size as f64 / (1024.0 * 1024.0),
        warm.compile,
        cached,
        smoke(&run).duration_ms,
        smoke(&run).outputs["latency-ms.health"],
    );
    assert!(
        cached < Duration::from_secs(5),
        "cached load took {cached:?}"
    );
}

// ---- the `host plugin new --lang js` template ------------------------------

#[tokio::test]
async fn the_js_template_builds_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hello");
    pipeline_tests::cli::plugin_new("js", "hello", &dir);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["README.md", "build.sh", "package.json", "stage.js", "wit"]
    );

    let out = tokio::process::Command::new("bash")
        .arg(dir.join("build.sh"))
        .output()
        .await
        .expect("running the template's build.sh");
    assert!(
        out.status.success(),
        "build.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = dir.join("hello.wasm");
    assert!(wasm.exists());

    let h = Harness::new().unwrap();
    let text = format!(
        r#"
[pipeline]
name = "hello"

[plugins]
hello = "{}"

[[stage]]
name = "greet"
plugin = "hello"
with = {{ who = "polyglot" }}
"#,
        wasm.display()
    );
    let run = h.run(&text).await;
    let greet = run.stage("greet").unwrap();
    assert_eq!(greet.status, Status::Success, "{greet:#?}");
    assert_eq!(greet.summary, "hello, polyglot");
    assert_eq!(greet.outputs["greeting"], "polyglot");
    assert!(
        greet
            .log
            .iter()
            .any(|l| l.text == "greeting polyglot from stage greet"),
        "{:#?}",
        greet.log
    );
}
