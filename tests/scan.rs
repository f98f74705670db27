//! The scan capability: the host exports the image and runs the real Trivy.
use host::run::Status;
use pipeline_tests::harness::Harness;
use pipeline_tests::services::{self, planted_secret_image, remove_images};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_needs_its_grant_and_finds_a_planted_secret() {
    services::require();
    let h = Harness::new().unwrap();
    let image = format!(
        "local/ph-secret-{}:1",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let key_id = planted_secret_image(&h.path().join("img"), &image);
    let run = h
        .run(&format!(
            r#"
[pipeline]
name = "scan"
[plugins]
hostile = "{{plugin:hostile}}"
[[stage]]
name = "no-grant"
plugin = "hostile"
with = {{ attack = "scan", image = "{image}", scanners = ["secret"] }}
[[stage]]
name = "not-its-image"
plugin = "hostile"
with = {{ attack = "scan", image = "{image}", scanners = ["secret"] }}
grants = {{ scan = true, docker = {{ scan = ["local/other"], run = ["local/ph-other-*"] }} }}
[[stage]]
name = "scan"
plugin = "hostile"
with = {{ attack = "scan", image = "{image}", scanners = ["secret"] }}
grants = {{ scan = true, docker = {{ scan = ["local/ph-secret-*"] }} }}
[[stage]]
name = "bad-scanner"
plugin = "hostile"
with = {{ attack = "scan", image = "{image}", scanners = ["--config=/etc/passwd"] }}
grants = {{ scan = true, docker = {{ scan = ["local/ph-secret-*"] }} }}
"#
        ))
        .await;
    let no = run.stage("no-grant").unwrap();
    assert_eq!(no.status, Status::Failure);
    assert!(
        no.summary.contains("denied") && no.summary.contains("scan"),
        "{}",
        no.summary
    );

    // A scan reads the image: only images the stage may use.
    let other = run.stage("not-its-image").unwrap();
    assert_eq!(other.status, Status::Failure);
    assert!(
        other.summary.contains("denied") && other.summary.contains("docker.scan"),
        "{}",
        other.summary
    );

    let scan = run.stage("scan").unwrap();
    assert_eq!(
        scan.status,
        Status::Success,
        "{:?} {}",
        scan.error,
        scan.summary
    );
    let report: serde_json::Value = serde_json::from_str(&scan.outputs["report"]).unwrap();
    assert_eq!(report["SchemaVersion"], 2);
    let rules: Vec<String> = report["Results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["Secrets"].as_array().cloned().unwrap_or_default())
        .map(|s| s["RuleID"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        rules.contains(&"aws-access-key-id".to_string()),
        "{rules:?}"
    );
    // Trivy masks the key in its report.
    assert!(!scan.outputs["report"].contains(&key_id));

    let bad = run.stage("bad-scanner").unwrap();
    assert!(bad.summary.contains("unknown scanner"), "{}", bad.summary);
    remove_images(&image[..image.len() - 2]);
}
