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
