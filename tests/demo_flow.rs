//! The demo app's flow with the real plugins on the real engine and
//! registry: test → build → tag → push; a failing test fails the test stage
//! with the failed test names; wrong registry credentials fail the push with
//! the registry's own error.
use host::run::{RunRecord, Status};
use pipeline_tests::harness::Harness;
use pipeline_tests::plugins::demo_app_workspace;
use pipeline_tests::services;

fn pipeline(repo: &str, test_env: &str) -> String {
    format!(
        r#"
[pipeline]
name = "demo-app"
[plugins]
build = "{{plugin:build}}"
test-runner = "{{plugin:test-runner}}"
tag = "{{plugin:tag}}"
push = "{{plugin:push}}"
[secrets]
registry = {{ env = "REGISTRY_AUTH" }}

[[stage]]
name = "test-image"
plugin = "build"
with = {{ image = "local/{repo}-test:ci", context = "demo-app", dockerfile = "Dockerfile.test" }}
grants = {{ workspace = "ro", docker = {{ build = ["local/{repo}-test"] }} }}

# The test workspace belongs to root (the tests run as root): the test
# container writes its reports as root, still without capabilities.
[[stage]]
name = "test"
plugin = "test-runner"
needs = ["test-image"]
with = {{ image = "local/{repo}-test:ci", command = ["/container-tests.sh"], env = {{ REPORT_DIR = "reports" {test_env} }}, junit = "reports/*.xml", timeout = "2m" }}
grants = {{ workspace = "rw", docker = {{ run = ["local/{repo}-test"], root = true }} }}

[[stage]]
name = "build"
plugin = "build"
needs = ["test"]
with = {{ image = "local/{repo}:ci", context = "demo-app" }}
grants = {{ workspace = "ro", docker = {{ build = ["local/{repo}"] }} }}

[[stage]]
name = "tag"
plugin = "tag"
needs = ["build"]
with = {{ image = "{reg}/{repo}" }}
grants = {{ docker = {{ tag = ["local/{repo}", "{reg}/{repo}"] }} }}

[[stage]]
name = "push"
plugin = "push"
needs = ["tag"]
with = {{ auth = "registry", retries = 1, backoff-ms = 100 }}
grants = {{ docker = {{ push = ["{reg}/{repo}"] }}, secrets = ["registry"] }}
"#,
        reg = services::REGISTRY
    )
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn summary(run: &RunRecord) -> String {
    run.stages
        .iter()
        .map(|s| format!("{}: {} {} {:?}", s.name, s.status, s.summary, s.error))
        .collect::<Vec<_>>()
        .join("\n")
}

fn harness(password: &str) -> Harness {
    let mut h = Harness::new().unwrap();
    h.env.insert(
        "REGISTRY_AUTH".into(),
        format!("{}:{password}", services::REGISTRY_USER),
    );
    demo_app_workspace(&h.workspace);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_build_tag_push_lands_in_the_registry() {
    services::require();
    let h = harness(services::REGISTRY_PASSWORD);
    let repo = unique("ph-demo");
    let run = h
        .run_with(&pipeline(&repo, ""), |o| o.build_number = 5)
        .await;
    assert_eq!(run.status, Status::Success, "{}", summary(&run));
    let test = run.stage("test").unwrap();
    assert_eq!(test.outputs["failed"], "0");
    assert!(
        test.outputs["tests"].parse::<u32>().unwrap() >= 5,
        "{:?}",
        test.outputs
    );
    let digest = run.stage("push").unwrap().outputs["digest"].clone();

    // The registry lists the tags, and serves the manifest by digest.
    let client = reqwest::Client::new();
    let tags: serde_json::Value = client
        .get(format!("http://{}/v2/{repo}/tags/list", services::REGISTRY))
        .basic_auth(services::REGISTRY_USER, Some(services::REGISTRY_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tags = tags["tags"].to_string();
    for t in ["build-5", "main", "latest", "0123456"] {
        assert!(tags.contains(t), "{t} not in {tags}");
    }
    let status = client
        .head(format!(
            "http://{}/v2/{repo}/manifests/{digest}",
            services::REGISTRY
        ))
        .basic_auth(services::REGISTRY_USER, Some(services::REGISTRY_PASSWORD))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    services::remove_images(&repo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tests_fail_the_stage_and_name_the_tests() {
    services::require();
    let h = harness(services::REGISTRY_PASSWORD);
    let repo = unique("ph-demo");
    let run = h.run(&pipeline(&repo, r#", FAIL_TEST = "health""#)).await;
    let test = run.stage("test").unwrap();
    assert_eq!(test.status, Status::Failure, "{}", summary(&run));
    assert_eq!(test.outputs["failed"], "1", "{:?}", test.outputs);
    assert!(test.summary.contains("1 failed"), "{}", test.summary);
    let failed: Vec<&str> = test.annotations.iter().map(|a| a.title.as_str()).collect();
    assert!(failed.iter().any(|t| t.contains("health")), "{failed:?}");
    assert!(
        test.annotations
            .iter()
            .any(|a| a.message.contains("deliberate failure")),
        "{:?}",
        test.annotations
    );
    for s in ["build", "tag", "push"] {
        assert_eq!(run.stage(s).unwrap().status, Status::Skipped, "{s}");
    }
    // The run page's test results: the counts, and the failed test with
    // its message as the JUnit report gave it.
    use host::serve::web::{run_page, RunExtras, Viewer};
    let page = run_page(&run, &RunExtras::default(), &Viewer::default());
    let tests = &page[page
        .find("<section class=\"tests\" data-stage=\"test\">")
        .expect(&page)..];
    let tests = &tests[..tests.find("</section>").unwrap()];
    assert!(tests.contains(" passed, 1 failed, "), "{tests}");
    let row = &tests[tests.find("<table class=\"failed-tests\">").expect(tests)..];
    assert!(
        row.contains("health") && row.contains("deliberate failure"),
        "{row}"
    );
    services::remove_images(&repo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_registry_credentials_fail_with_the_registrys_error() {
    services::require();
    let h = harness("not-the-password");
    let repo = unique("ph-demo");
    let run = h.run(&pipeline(&repo, "")).await;
    let push = run.stage("push").unwrap();
    assert_eq!(push.status, Status::Failure, "{}", summary(&run));
    let err = format!("{} {:?}", push.summary, push.error);
    assert!(err.contains("UNAUTHORIZED") && err.contains("401"), "{err}");
    assert!(!err.contains("not-the-password"));
    assert!(!serde_json::to_string(&run)
        .unwrap()
        .contains("not-the-password"));
    services::remove_images(&repo);
}
