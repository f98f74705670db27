//! The trivy-gate plugin run by the host: real Trivy reports from
//! ../shared/data/trivy, and a live Trivy secret scan of an image with a
//! planted AWS key.
use host::run::{RunRecord, Status};
use pipeline_tests::harness::Harness;
use pipeline_tests::plugins::root;
use pipeline_tests::services::{self, planted_secret_image, remove_images};

/// The real reports in `../shared/data/trivy` (shared/ sits beside the
/// checkout, in CI as in development).
fn shared_trivy(name: &str) -> std::path::PathBuf {
    let p = root().join("../shared/data/trivy").join(name);
    assert!(
        p.exists(),
        "{} is missing: the tests expect shared/ beside the checkout",
        p.display()
    );
    p
}

fn gate_pipeline(stages: &[(&str, &str)]) -> String {
    let mut p = String::from(
        "[pipeline]\nname = \"gate\"\n[plugins]\ntrivy-gate = \"{plugin:trivy-gate}\"\n",
    );
    for (name, with) in stages {
        p.push_str(&format!(
            "[[stage]]\nname = \"{name}\"\nplugin = \"trivy-gate\"\nwith = {{ {with} }}\ngrants = {{ workspace = \"ro\", scan = true, docker = {{ scan = [\"local/ph-planted-*\", \"local/ph-clean-*\"] }} }}\n"
        ));
    }
    p
}

fn titles(run: &RunRecord, stage: &str) -> Vec<String> {
    run.stage(stage)
        .unwrap()
        .annotations
        .iter()
        .filter(|a| a.level == "error")
        .map(|a| a.title.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_reports_pass_or_block_with_the_right_findings() {
    let h = Harness::new().unwrap();
    for f in [
        "alpine-39.json.golden",
        "alpine-39-skip.json.golden",
        "alpine-39-high-critical.json.golden",
        "dockerfile.json.golden",
        "secrets.json.golden",
        "npm-with-dev.json.golden",
    ] {
        std::fs::copy(shared_trivy(f), h.workspace.join(f)).unwrap();
    }
    let run = h
        .run(&gate_pipeline(&[
            ("clean", r#"report = "alpine-39-skip.json.golden""#),
            ("alpine", r#"report = "alpine-39.json.golden""#),
            ("alpine-hc", r#"report = "alpine-39-high-critical.json.golden""#),
            ("misconfig", r#"report = "dockerfile.json.golden""#),
            ("secrets", r#"report = "secrets.json.golden""#),
            ("npm", r#"report = "npm-with-dev.json.golden""#),
            (
                "ignored",
                r#"report = "alpine-39.json.golden", ignore = [{ id = "CVE-2019-14697", reason = "not reachable", expires = "2999-01-01" }, { id = "CVE-2018-1000001", reason = "x" }]"#,
            ),
            (
                "expired",
                r#"report = "alpine-39.json.golden", ignore = [{ id = "CVE-2019-14697", reason = "was fine", expires = "2020-01-01" }]"#,
            ),
        ]))
        .await;
    let status = |s: &str| run.stage(s).unwrap().status;
    assert_eq!(status("clean"), Status::Success);
    assert_eq!(status("alpine"), Status::Failure);
    let mut t = titles(&run, "alpine");
    t.sort();
    // alpine-39: the 2 CRITICAL findings block (musl CVE-2019-14697, twice: musl and musl-utils).
    assert!(t.iter().all(|x| x == "CVE-2019-14697"), "{t:?}");
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(run.stage("alpine").unwrap().outputs["critical"], "2");
    assert_eq!(status("alpine-hc"), Status::Failure);
    assert_eq!(status("misconfig"), Status::Failure);
    assert_eq!(titles(&run, "misconfig"), ["DS-0002"]);
    assert_eq!(status("secrets"), Status::Failure);
    assert!(titles(&run, "secrets").contains(&"aws-access-key-id".to_string()));
    assert_eq!(
        status("ignored"),
        Status::Success,
        "{:?}",
        run.stage("ignored").unwrap().summary
    );
    assert_eq!(status("expired"), Status::Failure);
    // The blocking finding names package and versions.
    let msg = &run.stage("alpine").unwrap().annotations[0].message;
    assert!(
        msg.contains("musl") && msg.contains("1.1.20-r4") && msg.contains("1.1.20-r5"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_secret_is_blocked_by_a_live_scan() {
    services::require();
    let h = Harness::new().unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let dirty = format!("local/ph-planted-{tag}:1");
    let key = planted_secret_image(&h.path().join("dirty"), &dirty);
    // A clean image: busybox only.
    let clean = format!("local/ph-clean-{tag}:1");
    services::busybox_context(&h.path().join("clean"));
    services::docker(&[
        "build",
        "-q",
        "-t",
        &clean,
        h.path().join("clean").to_str().unwrap(),
    ]);
    let run = h
        .run(&gate_pipeline(&[
            (
                "dirty",
                &format!(r#"image = "{dirty}", scanners = ["secret"]"#),
            ),
            (
                "clean",
                &format!(r#"image = "{clean}", scanners = ["secret"]"#),
            ),
        ]))
        .await;
    let dirty_stage = run.stage("dirty").unwrap();
    assert_eq!(
        dirty_stage.status,
        Status::Failure,
        "{}",
        dirty_stage.summary
    );
    assert!(titles(&run, "dirty").contains(&"aws-access-key-id".to_string()));
    assert!(
        !serde_json::to_string(&run).unwrap().contains(&key),
        "the key leaked"
    );
    let clean_stage = run.stage("clean").unwrap();
    assert_eq!(
        clean_stage.status,
        Status::Success,
        "{} {:?}",
        clean_stage.summary,
        clean_stage.error
    );
    remove_images(&format!("ph-planted-{tag}"));
    remove_images(&format!("ph-clean-{tag}"));
}
