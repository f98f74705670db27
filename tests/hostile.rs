//! Hostile plugins: each attack must fail with a clear error while the host
//! survives and the other stages of the same run still complete.
use host::run::{RunRecord, Status};
use pipeline_tests::harness::Harness;
use pipeline_tests::http::TestServer;

fn assert_failed_with(run: &RunRecord, stage: &str, fragments: &[&str]) {
    let s = run
        .stage(stage)
        .unwrap_or_else(|| panic!("no stage {stage}"));
    let text = format!("{} {}", s.summary, s.error.clone().unwrap_or_default());
    assert_eq!(
        s.status,
        Status::Failure,
        "stage {stage} should fail: {text}"
    );
    assert!(!text.contains("ESCAPED"), "stage {stage} escaped: {text}");
    for f in fragments {
        assert!(
            text.contains(f),
            "stage {stage}: expected `{f}` in `{text}`"
        );
    }
}

fn assert_passed(run: &RunRecord, stage: &str) {
    let s = run.stage(stage).unwrap();
    assert_eq!(
        s.status,
        Status::Success,
        "stage {stage}: {} {:?}",
        s.summary,
        s.error
    );
}

/// Every attack in one run, side by side with benign stages: the attacks
/// fail, the benign ones (including one that needs a benign one) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_fails_alone_and_the_rest_completes() {
    let mut h = Harness::new().unwrap();
    std::fs::write(h.path().join("outside.txt"), "outside the workspace").unwrap();
    std::fs::write(h.workspace.join("inside.txt"), "inside").unwrap();
    h.env
        .insert("HOST_ONLY_TOKEN".into(), "env-secret-value".into());
    h.env.insert("GRANTED_VAR".into(), "granted-value".into());
    h.env.insert("API_TOKEN".into(), "tok-7a1b2c3d".into());

    let allowed = TestServer::start(None).await.unwrap();
    let forbidden = TestServer::start(None).await.unwrap();
    let redirector = TestServer::start(Some(forbidden.url("/ok"))).await.unwrap();

    let allowed_pattern = format!("http://{}/*", allowed.addr);
    let redirect_pattern = format!("http://{}/*", redirector.addr);
    let pipeline = format!(
        r#"
[pipeline]
name = "hostile"

[plugins]
hostile = "{{plugin:hostile}}"

[secrets]
api-token = {{ env = "API_TOKEN" }}

[[stage]]
name = "read-passwd"
plugin = "hostile"
with = {{ attack = "read-passwd" }}
grants = {{ workspace = "rw" }}

[[stage]]
name = "read-outside"
plugin = "hostile"
with = {{ attack = "read-outside", path = "/workspace/../outside.txt" }}
grants = {{ workspace = "ro" }}

[[stage]]
name = "read-tmp"
plugin = "hostile"
with = {{ attack = "read-outside", path = "{outside}" }}

[[stage]]
name = "read-no-grant"
plugin = "hostile"
with = {{ attack = "read-workspace", path = "inside.txt" }}

[[stage]]
name = "write-ro"
plugin = "hostile"
with = {{ attack = "write-workspace", path = "planted.txt", content = "pwned" }}
grants = {{ workspace = "ro" }}

[[stage]]
name = "env-not-granted"
plugin = "hostile"
with = {{ attack = "env", name = "HOST_ONLY_TOKEN" }}
grants = {{ env = ["GRANTED_VAR"] }}

[[stage]]
name = "secret-not-granted"
plugin = "hostile"
with = {{ attack = "secret", name = "api-token" }}

[[stage]]
name = "secret-use-only"
plugin = "hostile"
with = {{ attack = "secret", name = "api-token" }}
grants = {{ secrets = ["api-token"] }}

[[stage]]
name = "http-not-allowed"
plugin = "hostile"
with = {{ attack = "http", url = "{forbidden_url}" }}
grants = {{ http = ["{allowed_pattern}"] }}

[[stage]]
name = "http-redirect"
plugin = "hostile"
with = {{ attack = "http", url = "{redirect_url}" }}
grants = {{ http = ["{redirect_pattern}"] }}

[[stage]]
name = "loop"
plugin = "hostile"
with = {{ attack = "loop" }}
timeout = "1s"

[[stage]]
name = "alloc"
plugin = "hostile"
with = {{ attack = "alloc" }}
memory = "32MiB"

[[stage]]
name = "log-flood"
plugin = "hostile"
with = {{ attack = "log-flood" }}

[[stage]]
name = "stdout-flood"
plugin = "hostile"
with = {{ attack = "stdout-flood" }}

[[stage]]
name = "benign"
plugin = "hostile"
with = {{ attack = "ok" }}

[[stage]]
name = "after-benign"
plugin = "hostile"
needs = ["benign"]
with = {{ attack = "read-workspace", path = "inside.txt" }}
grants = {{ workspace = "ro" }}

[[stage]]
name = "allowed-http"
plugin = "hostile"
with = {{ attack = "http", url = "{allowed_url}" }}
grants = {{ http = ["{allowed_pattern}"] }}

[[stage]]
name = "granted-env"
plugin = "hostile"
with = {{ attack = "env", name = "GRANTED_VAR" }}
grants = {{ env = ["GRANTED_VAR"] }}
"#,
        outside = h.path().join("outside.txt").display(),
        forbidden_url = forbidden.url("/ok"),
        allowed_url = allowed.url("/ok"),
        allowed_pattern = allowed_pattern,
        redirect_url = redirector.url("/redirect"),
        redirect_pattern = redirect_pattern,
    );
    let run = h.run(&pipeline).await;
    // Shown when the test fails: what each stage said.
    for s in &run.stages {
        eprintln!("{}: {:?} {} {:?}", s.name, s.status, s.summary, s.error);
    }

    assert_failed_with(&run, "read-passwd", &["read-passwd", "failed"]);
    assert_failed_with(&run, "read-outside", &["read-outside", "failed"]);
    assert_failed_with(&run, "read-tmp", &["failed"]);
    assert_failed_with(&run, "read-no-grant", &["failed"]);
    assert_failed_with(&run, "write-ro", &["write-workspace", "failed"]);
    assert!(
        !h.workspace.join("planted.txt").exists(),
        "read-only workspace was written"
    );
    assert_failed_with(&run, "env-not-granted", &["HOST_ONLY_TOKEN"]);
    assert_failed_with(
        &run,
        "secret-not-granted",
        &["denied", "secret-not-granted", "secrets-read", "api-token"],
    );
    assert_failed_with(&run, "secret-use-only", &["denied", "secrets-read"]);
    assert_failed_with(
        &run,
        "http-not-allowed",
        &["denied", "http-not-allowed", "http", &forbidden.url("/ok")],
    );
    assert_failed_with(&run, "http-redirect", &["denied", "redirect"]);
    assert_eq!(forbidden.hits(), 0, "a denied request reached the server");
    assert_eq!(redirector.hits(), 1, "the allowed first hop is made");
    assert_failed_with(&run, "loop", &["timed out"]);
    assert_failed_with(&run, "alloc", &["memory limit"]);
    assert_failed_with(&run, "log-flood", &["log limit"]);
    assert_failed_with(&run, "stdout-flood", &["log limit"]);

    assert_passed(&run, "benign");
    assert_passed(&run, "after-benign");
    assert_eq!(
        run.stage("after-benign").unwrap().outputs["content"],
        "inside"
    );
    assert_passed(&run, "allowed-http");
    assert_eq!(allowed.hits(), 1);
    assert_passed(&run, "granted-env");
    assert_eq!(
        run.stage("granted-env").unwrap().outputs["value"],
        "granted-value"
    );

    // Nothing secret in the record, whatever the stages did.
    let json = serde_json::to_string(&run).unwrap();
    assert!(!json.contains("tok-7a1b2c3d"));
    assert!(!json.contains("env-secret-value"));
    assert_eq!(run.status, Status::Failure);
}

/// A granted read-write workspace can be written (the control for write-ro).
#[tokio::test]
async fn writable_workspace_when_granted() {
    let h = Harness::new().unwrap();
    let run = h
        .run(
            r#"
[pipeline]
name = "rw"
[plugins]
hostile = "{plugin:hostile}"
[[stage]]
name = "write"
plugin = "hostile"
with = { attack = "write-workspace", path = "out.txt", content = "hello" }
grants = { workspace = "rw" }
"#,
        )
        .await;
    assert_passed(&run, "write");
    assert_eq!(
        std::fs::read_to_string(h.workspace.join("out.txt")).unwrap(),
        "hello"
    );
}

/// A secret granted for reading is readable, and masked in the record.
#[tokio::test]
async fn readable_secret_is_masked_in_records() {
    let mut h = Harness::new().unwrap();
    h.env.insert("API_TOKEN".into(), "tok-7a1b2c3d".into());
    let run = h
        .run(
            r#"
[pipeline]
name = "secret"
[plugins]
hostile = "{plugin:hostile}"
[secrets]
api-token = { env = "API_TOKEN" }
[[stage]]
name = "read"
plugin = "hostile"
with = { attack = "secret", name = "api-token" }
grants = { secrets-read = ["api-token"] }
"#,
        )
        .await;
    let s = run.stage("read").unwrap();
    // The hostile plugin reports the value it read as an output and logs it:
    // both must be masked.
    let json = serde_json::to_string(&run).unwrap();
    assert!(!json.contains("tok-7a1b2c3d"), "secret leaked: {json}");
    assert!(json.contains("***"), "masked value expected: {json}");
    assert_eq!(s.status, Status::Success, "{:?}", s.error);
}

/// A server on 127.0.0.1 that records every request it gets: the path
/// with its query, then each header as `name: value` on its own line.
struct Recorder {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Recorder {
    async fn start() -> Self {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let s = s.clone();
            async move {
                let mut line = req.uri().to_string();
                for (k, v) in req.headers() {
                    line.push_str(&format!("\n{k}: {}", String::from_utf8_lossy(v.as_bytes())));
                }
                s.lock().unwrap().push(line);
                "fine"
            }
        });
        let (addr, stop) = pipeline_tests::http::serve(app).await.unwrap();
        Self {
            addr,
            seen,
            _stop: stop,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// One `http-send` stage of the hostile plugin; `with` and `grants` are
/// TOML inline-table bodies.
fn http_stage(name: &str, with: &str, grants: &str) -> String {
    format!(
        "[[stage]]\nname = \"{name}\"\nplugin = \"hostile\"\nwith = {{ attack = \"http-send\", {with} }}\ngrants = {{ {grants} }}\n\n"
    )
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A secret granted for use only (`secrets`, no `secrets-read`) is put into
/// the request by the host and never comes back: wherever the plugin puts
/// `${secret:…}` (scheme, host, port, user info, path, header name and
/// value, method, body) and whatever the value holds (`@`, `/../`, `#`,
/// `?`, CRLF), neither the plugin (which reports everything it gets back
/// hex-encoded, out of the masker's reach), nor the log, the audit trail or
/// the run record see it; nothing reaches a path outside the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_only_secret_never_reaches_the_plugin() {
    let mut h = Harness::new().unwrap();
    let values = [
        ("plain", "sekrit-7a1b2c3d"),
        ("at", "sekrit-at@evil.example"),
        ("dots", "sekrit-dots/../../admin"),
        ("hash", "sekrit-hash#/services/"),
        ("query", "sekrit-query?/services/"),
        ("crlf", "sekrit-crlf\r\nHost: evil.example"),
    ];
    let mut secrets = String::new();
    for (name, value) in values {
        let var = format!("HOSTILE_{}", name.to_uppercase());
        h.env.insert(var.clone(), value.into());
        secrets.push_str(&format!("{name} = {{ env = \"{var}\" }}\n"));
    }
    let srv = Recorder::start().await;
    let base = format!("http://127.0.0.1:{}", srv.addr.port());
    let grants = r#"http = ["http://127.0.0.1:*/services/*"], secrets = ["plain", "at", "dots", "hash", "query", "crlf"]"#;
    let ok = format!("{base}/services/ok");
    let attacks = [
        ("scheme", "url = \"a${secret:plain}:\"".to_string()),
        ("scheme-at", "url = \"a${secret:at}:\"".to_string()),
        ("whole", "url = \"${secret:at}\"".to_string()),
        ("whole-crlf", "url = \"${secret:crlf}\"".to_string()),
        (
            "host",
            "url = \"http://${secret:at}/services/x\"".to_string(),
        ),
        (
            "host-dots",
            "url = \"http://${secret:dots}/services/x\"".to_string(),
        ),
        (
            "port",
            "url = \"http://127.0.0.1:${secret:plain}/services/x\"".to_string(),
        ),
        (
            "userinfo",
            format!("url = \"http://${{secret:plain}}@{}/services/x\"", srv.addr),
        ),
        (
            "password",
            format!("url = \"http://u:${{secret:at}}@{}/services/x\"", srv.addr),
        ),
        (
            "path-dots",
            format!("url = \"{base}/services/${{secret:dots}}\""),
        ),
        (
            "path-admin",
            format!("url = \"{base}/admin/${{secret:at}}\""),
        ),
        (
            "path-hash",
            format!("url = \"{base}/admin${{secret:hash}}\""),
        ),
        (
            "path-query",
            format!("url = \"{base}/admin${{secret:query}}\""),
        ),
        (
            "path-crlf",
            format!("url = \"{base}/services/${{secret:crlf}}\""),
        ),
        (
            "header-name",
            format!("url = \"{ok}\", headers = {{ \"${{secret:plain}}\" = \"v\" }}"),
        ),
        (
            "header-crlf",
            format!("url = \"{ok}\", headers = {{ X-Token = \"${{secret:crlf}}\" }}"),
        ),
        (
            "method",
            format!("url = \"{ok}\", method = \"${{secret:plain}}\""),
        ),
    ];
    // The controls: the value goes to the granted server, and only there.
    let controls = [
        (
            "path-ok",
            format!("url = \"{base}/services/${{secret:plain}}\""),
        ),
        (
            "path-hash-ok",
            format!("url = \"{base}/services/${{secret:hash}}\""),
        ),
        (
            "header-ok",
            format!("url = \"{ok}\", headers = {{ X-Token = \"Bearer ${{secret:plain}}\" }}"),
        ),
        (
            "body-ok",
            format!("url = \"{ok}\", method = \"POST\", body = \"t=${{secret:at}}\""),
        ),
    ];
    let mut text = format!(
        "[pipeline]\nname = \"use-only\"\n\n[plugins]\nhostile = \"{{plugin:hostile}}\"\n\n[secrets]\n{secrets}\n"
    );
    for (name, with) in attacks.iter().chain(&controls) {
        text.push_str(&http_stage(name, with, grants));
    }
    let run = h.run(&text).await;
    for s in &run.stages {
        eprintln!("{}: {:?} {} {:?}", s.name, s.status, s.summary, s.error);
    }

    let mark = "sekrit";
    for (name, _) in &attacks {
        let s = run.stage(name).unwrap();
        assert_eq!(s.status, Status::Failure, "{name}: {}", s.summary);
        // Had the plugin been handed a value, the masker would have had
        // something to hide here.
        let shown = format!("{} {:?} {:?} {:?}", s.summary, s.error, s.audit, s.log);
        assert!(!shown.contains("***"), "{name} was handed a value: {shown}");
    }
    for (name, _) in &controls {
        assert_passed(&run, name);
    }
    let json = serde_json::to_string(&run).unwrap();
    assert!(!json.contains(mark), "a value in the record: {json}");
    assert!(!json.contains(&hex(mark)), "the plugin saw a value: {json}");
    assert!(!json.contains("evil.example"), "{json}");

    let seen = srv.seen();
    for r in &seen {
        assert!(r.starts_with("/services/"), "a request left the grant: {r}");
        assert!(!r.to_lowercase().contains("\nhost: evil"), "{r}");
    }
    assert!(seen
        .iter()
        .any(|r| r.starts_with("/services/sekrit-7a1b2c3d")));
    assert!(seen
        .iter()
        .any(|r| r.starts_with("/services/sekrit-hash\n")));
    assert!(seen
        .iter()
        .any(|r| r.contains("\nx-token: Bearer sekrit-7a1b2c3d")));
}

/// `http://127.0.0.1:*/services/*` means that host, any port, paths under
/// `/services/`; with a port, only that port. `host check` and `host run`
/// load the file the same way (`pipeline::load`) into the compiled
/// `Grants.http` the http capability matches with: what the loaded grant
/// allows is exactly what the run lets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_grants_mean_what_they_look_like() {
    let h = Harness::new().unwrap();
    let srv = Recorder::start().await;
    let other = Recorder::start().await;
    let port = srv.addr.port();
    let base = format!("http://127.0.0.1:{port}");
    let any_port = r#"http = ["http://127.0.0.1:*/services/*"]"#.to_string();
    let this_port = format!(r#"http = ["http://127.0.0.1:{port}/services/*"]"#);
    let cases: Vec<(&str, String, &String, bool)> = vec![
        ("ok", format!("{base}/services/x"), &any_port, true),
        (
            "ok-query",
            format!("{base}/services/y?z=/admin"),
            &this_port,
            true,
        ),
        (
            "ok-decimal",
            format!("http://2130706433:{port}/services/z"),
            &any_port,
            true,
        ),
        (
            "query",
            format!("{base}/admin/secret?x=/services/y"),
            &any_port,
            false,
        ),
        (
            "fragment",
            format!("{base}/admin#/services/"),
            &any_port,
            false,
        ),
        (
            "dots",
            format!("{base}/services/../admin"),
            &any_port,
            false,
        ),
        (
            "enc-dots",
            format!("{base}/services/%2e%2e/admin"),
            &any_port,
            false,
        ),
        (
            "enc-slash",
            format!("{base}/services/..%2Fadmin"),
            &any_port,
            false,
        ),
        (
            "userinfo",
            format!("http://127.0.0.1:{port}@localhost:{port}/services/x"),
            &any_port,
            false,
        ),
        (
            "userinfo2",
            format!("http://localhost:{port}@127.0.0.1:{port}/services/x"),
            &any_port,
            false,
        ),
        (
            "other-name",
            format!("http://localhost:{port}/services/x"),
            &any_port,
            false,
        ),
        (
            "ipv6",
            format!("http://[::1]:{port}/services/x"),
            &any_port,
            false,
        ),
        (
            "decimal",
            format!("http://2130706434:{port}/services/x"),
            &any_port,
            false,
        ),
        (
            "hex",
            format!("http://0x7f000002:{port}/services/x"),
            &any_port,
            false,
        ),
        (
            "other-port",
            format!("http://127.0.0.1:{}/services/x", other.addr.port()),
            &this_port,
            false,
        ),
    ];
    let mut text = "[pipeline]\nname = \"grants\"\n\n[plugins]\nhostile = \"{plugin:hostile}\"\n\n"
        .to_string();
    for (name, url, grants, _) in &cases {
        text.push_str(&http_stage(name, &format!("url = \"{url}\""), grants));
    }

    // What the loaded grants say (the values `host check` validates and the
    // run hands to the capability).
    let path = h.write_pipeline(&text);
    let loaded = host::pipeline::load(&path).expect("valid pipeline");
    for (name, url, _, allowed) in &cases {
        let grant: &host::grants::url::UrlAllowlist = &loaded.stage(name).unwrap().grants.http;
        let decided = grant.check(&reqwest::Url::parse(url).unwrap()).is_ok();
        assert_eq!(decided, *allowed, "{name}: {url}");
    }

    let run = h.run(&text).await;
    for (name, url, _, allowed) in &cases {
        let s = run.stage(name).unwrap();
        if *allowed {
            assert_passed(&run, name);
        } else {
            assert_failed_with(&run, name, &["denied", "http"]);
            assert!(
                s.error.clone().unwrap_or_default().contains(url.as_str()),
                "{name}: the denial names the URL as written: {:?}",
                s.error
            );
            assert!(!s.audit[0].allowed, "{name}: {:?}", s.audit);
        }
    }
    let seen: Vec<String> = srv
        .seen()
        .iter()
        .map(|r| r.lines().next().unwrap().to_string())
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["/services/x", "/services/y?z=/admin", "/services/z"]
    );
    assert!(other.seen().is_empty());
}

/// Bad patterns are refused when the file is loaded (by `host check` and
/// `host run` alike), at the pattern's line and column.
#[test]
fn bad_http_grants_are_refused_where_they_are_written() {
    let h = Harness::new().unwrap();
    for (pattern, msg) in [
        ("https://*/x", "cannot be left open"),
        ("https://x/a?b=1", "query"),
        ("https://u@x/", "user info"),
        ("https://x/../y", "`..` segments"),
        ("hooks.slack.com/*", "must start with"),
    ] {
        let text = format!(
            "[pipeline]\nname = \"bad\"\n[plugins]\nhostile = \"{{plugin:hostile}}\"\n[[stage]]\nname = \"s\"\nplugin = \"hostile\"\nwith = {{ attack = \"ok\" }}\ngrants = {{ http = [\"{pattern}\"] }}\n"
        );
        let path = h.write_pipeline(&text);
        let err = host::pipeline::load(&path).unwrap_err().to_string();
        assert!(err.contains("pipeline.toml:9:20:"), "{pattern}: {err}");
        assert!(err.contains(msg), "{pattern}: {err}");
    }
}

/// Headers that decide where a request goes or whom it comes from are the
/// host's; a URL with a raw line break is refused, and its audit entry
/// shows the whole of it, escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_headers_and_line_breaks_are_refused() {
    let h = Harness::new().unwrap();
    let srv = Recorder::start().await;
    let ok = format!("http://{}/services/ok", srv.addr);
    let grants = r#"http = ["http://127.0.0.1:*/services/*"]"#;
    let headers = [
        ("host", "Host", "evil.example"),
        ("proxy", "Proxy-Authorization", "Basic eDp5"),
        ("forwarded-for", "X-Forwarded-For", "10.0.0.1"),
        ("forwarded", "Forwarded", "for=10.0.0.1"),
        ("real-ip", "X-Real-IP", "10.0.0.1"),
        ("te", "Transfer-Encoding", "chunked"),
        ("connection", "Connection", "close"),
        ("upgrade", "Upgrade", "websocket"),
    ];
    let mut text =
        "[pipeline]\nname = \"headers\"\n\n[plugins]\nhostile = \"{plugin:hostile}\"\n\n"
            .to_string();
    for (name, k, v) in headers {
        text.push_str(&http_stage(
            name,
            &format!("url = \"{ok}\", headers = {{ \"{k}\" = \"{v}\" }}"),
            grants,
        ));
    }
    text.push_str(&http_stage(
        "crlf-value",
        &format!("url = \"{ok}\", headers = {{ X-Ok = \"a\\r\\nHost: evil.example\" }}"),
        grants,
    ));
    text.push_str(&http_stage(
        "newline",
        &format!("url = \"{ok}\\nHost: evil.example\\r\\n\\u001b[2J\""),
        grants,
    ));
    text.push_str(&http_stage(
        "control",
        &format!("url = \"{ok}\", headers = {{ X-Ok = \"fine\" }}"),
        grants,
    ));
    let run = h.run(&text).await;
    for (name, k, _) in headers {
        assert_failed_with(&run, name, &["invalid request", k, "set by the host only"]);
    }
    assert_failed_with(&run, "crlf-value", &["invalid request", "line break"]);
    assert_failed_with(&run, "newline", &["invalid request", "raw line break"]);
    let entry = &run.stage("newline").unwrap().audit[0];
    assert_eq!(
        entry.target,
        format!("GET {ok}\\nHost: evil.example\\r\\n\\x1b[2J")
    );
    assert!(entry.outcome.contains("raw line break"), "{entry:?}");
    assert_passed(&run, "control");
    let seen = srv.seen();
    assert_eq!(seen.len(), 1, "only the control was sent: {seen:?}");
    assert!(seen[0].contains("\nx-ok: fine"));
    assert!(!seen[0].contains("evil.example"));
}

/// Stages share the host's instance pool: a slot is reset before the next
/// stage gets it. The second stage runs the same plugin in the slot the
/// first left (the pool prefers it) and looks for what the first wrote.
#[tokio::test]
async fn a_stage_never_sees_what_an_earlier_stage_left_in_memory() {
    let h = Harness::new().unwrap();
    let run = h
        .run(
            r#"
[pipeline]
name = "remnants"

[plugins]
hostile = "{plugin:hostile}"

[[stage]]
name = "first"
plugin = "hostile"
with = { attack = "remnant", marker = "left-by-first-7f3a" }

[[stage]]
name = "second"
plugin = "hostile"
needs = ["first"]
with = { attack = "remnant", marker = "left-by-first-7f3a" }
"#,
        )
        .await;
    assert_passed(&run, "first");
    assert_passed(&run, "second");
    assert!(run.stage("second").unwrap().summary.contains("clean"));
}
