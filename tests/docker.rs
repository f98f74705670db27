//! The docker capability against the real engine and registry, and every
//! grant violation refused before anything reaches the engine.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use host::caps::docker::DockerEngine;
use host::run::{RunRecord, Status};
use pipeline_tests::harness::Harness;
use pipeline_tests::services::{self, busybox_context, docker, free_port};
use sha2::{Digest, Sha256};

fn stage<'a>(run: &'a RunRecord, name: &str) -> &'a host::run::StageRecord {
    run.stage(name).unwrap_or_else(|| panic!("no stage {name}"))
}

fn text(run: &RunRecord, name: &str) -> String {
    let s = stage(run, name);
    format!("{} {}", s.summary, s.error.clone().unwrap_or_default())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A unix socket that counts connections and answers 500: stands in for
/// the engine to prove denied calls never reach it.
async fn recording_socket(dir: &std::path::Path) -> (std::path::PathBuf, Arc<AtomicUsize>) {
    let path = dir.join("engine.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut conn, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let _ = conn
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (path, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_violations_are_refused_before_reaching_the_engine() {
    let mut h = Harness::new().unwrap();
    let (sock, hits) = recording_socket(h.path()).await;
    h.docker = Some(DockerEngine::at_socket(sock));
    h.env
        .insert("REGISTRY_AUTH".into(), "ci:ci-registry-password".into());
    busybox_context(&h.workspace.join("app"));

    let grants = r#"grants = { workspace = "ro", docker = { build = ["local/app"], run = ["local/app"], tag = ["127.0.0.1:5000/app"], push = ["127.0.0.1:5000/app"], containers = ["app-*"], ports = [18000] } }"#;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "run-image",
            r#"op = "run", image = "local/other:1""#,
            &["docker.run", "local/other:1"],
        ),
        (
            "push-registry",
            r#"op = "push", image = "127.0.0.1:5001/app:1""#,
            &["docker.push", "127.0.0.1:5001/app:1"],
        ),
        (
            "push-secret",
            r#"op = "push", image = "127.0.0.1:5000/app:1", auth = "registry-auth""#,
            &["secrets", "registry-auth"],
        ),
        (
            "create-name",
            r#"op = "create", name = "db", image = "local/app""#,
            &["docker.create", "db"],
        ),
        (
            "create-port",
            r#"op = "create", name = "app-1", image = "local/app", ports = [[8080, 80]]"#,
            &["docker.create", "host port 80"],
        ),
        (
            "privileged",
            r#"op = "run", image = "local/app", privileged = true"#,
            &["docker.run", "privileged"],
        ),
        (
            "host-mount",
            r#"op = "run", image = "local/app", mounts = ["/:/host"]"#,
            &["docker.run", "/:/host"],
        ),
        (
            "docker-sock",
            r#"op = "create", name = "app-2", image = "local/app", mounts = ["/var/run/docker.sock:/var/run/docker.sock"]"#,
            &["docker.create", "docker.sock"],
        ),
        (
            "host-network",
            r#"op = "run", image = "local/app", network = "host""#,
            &["docker.run", "network `host`"],
        ),
        (
            "cap-add",
            r#"op = "run", image = "local/app", cap-add = ["SYS_ADMIN"]"#,
            &["docker.run", "SYS_ADMIN"],
        ),
        (
            "device",
            r#"op = "run", image = "local/app", devices = ["/dev/sda"]"#,
            &["docker.run", "/dev/sda"],
        ),
        (
            "rw-on-ro",
            r#"op = "run", image = "local/app", workspace = "rw""#,
            &["workspace", "read-write"],
        ),
        (
            "build-outside",
            r#"op = "build", image = "local/app", context = "..""#,
            &["docker.build", "outside the workspace"],
        ),
        (
            "build-image",
            r#"op = "build", image = "local/evil", context = "app""#,
            &["docker.build", "local/evil"],
        ),
        (
            "tag-foreign",
            r#"op = "tag", source = "private/secret-image:1", target = "127.0.0.1:5000/app:1""#,
            &["docker.tag", "private/secret-image:1"],
        ),
        (
            "start-name",
            r#"op = "start", name = "someone-elses""#,
            &["docker.start", "someone-elses"],
        ),
    ];
    let mut text_toml = String::from(
        "[pipeline]\nname = \"denials\"\n[plugins]\nhostile = \"{plugin:hostile}\"\n[secrets]\nregistry-auth = { env = \"REGISTRY_AUTH\" }\n",
    );
    for (name, with, _) in cases {
        text_toml.push_str(&format!(
            "[[stage]]\nname = \"{name}\"\nplugin = \"hostile\"\nwith = {{ attack = \"docker\", {with} }}\n{grants}\n"
        ));
    }
    // A stage with no docker grant at all.
    text_toml.push_str("[[stage]]\nname = \"no-grant\"\nplugin = \"hostile\"\nwith = { attack = \"docker\", op = \"list\", label = \"x\" }\n");
    let run = h.run(&text_toml).await;
    for (name, _, fragments) in cases {
        let t = text(&run, name);
        assert_eq!(stage(&run, name).status, Status::Failure, "{name}: {t}");
        assert!(t.contains("denied"), "{name}: not a denial: {t}");
        assert!(
            t.contains(&format!("\"{name}\"")) || t.contains(&format!("`{name}`")),
            "{name}: stage not named: {t}"
        );
        for f in *fragments {
            assert!(t.contains(f), "{name}: expected `{f}` in: {t}");
        }
    }
    assert!(text(&run, "no-grant").contains("denied"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused call reached the engine"
    );

    // Control: an allowed call does reach the (recording) engine.
    let run = h
        .run(&format!(
            "[pipeline]\nname = \"control\"\n[plugins]\nhostile = \"{{plugin:hostile}}\"\n[[stage]]\nname = \"allowed\"\nplugin = \"hostile\"\nwith = {{ attack = \"docker\", op = \"inspect\", name = \"app-1\" }}\n{grants}\n"
        ))
        .await;
    assert_eq!(stage(&run, "allowed").status, Status::Failure);
    assert!(
        hits.load(Ordering::SeqCst) > 0,
        "the recording engine saw nothing"
    );
}

fn registry_auth_env(h: &mut Harness, password: &str) {
    h.env.insert(
        "REGISTRY_AUTH".into(),
        format!("{}:{password}", services::REGISTRY_USER),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_tag_push_and_pull_back_by_digest() {
    services::require();
    let mut h = Harness::new().unwrap();
    registry_auth_env(&mut h, services::REGISTRY_PASSWORD);
    busybox_context(&h.workspace.join("app"));
    let repo = unique("ph-test-app");
    let local = format!("local/{repo}:build-1");
    let remote = format!("{}/{repo}:1.0.0", services::REGISTRY);
    let grants = format!(
        r#"grants = {{ workspace = "ro", secrets = ["registry-auth"], docker = {{ build = ["local/{repo}"], tag = ["{reg}/{repo}"], push = ["{reg}/{repo}"] }} }}"#,
        reg = services::REGISTRY
    );
    let pipeline = format!(
        r#"
[pipeline]
name = "build-push"
[plugins]
hostile = "{{plugin:hostile}}"
[secrets]
registry-auth = {{ env = "REGISTRY_AUTH" }}
[[stage]]
name = "build"
plugin = "hostile"
with = {{ attack = "docker", op = "build", context = "app", image = "{local}", labels = {{ team = "ci" }} }}
{grants}
[[stage]]
name = "tag"
plugin = "hostile"
needs = ["build"]
with = {{ attack = "docker", op = "tag", source = "{local}", target = "{remote}" }}
{grants}
[[stage]]
name = "push"
plugin = "hostile"
needs = ["tag"]
with = {{ attack = "docker", op = "push", image = "{remote}", auth = "registry-auth" }}
{grants}
"#
    );
    let run = h.run(&pipeline).await;
    for s in ["build", "tag", "push"] {
        assert_eq!(
            stage(&run, s).status,
            Status::Success,
            "{s}: {}",
            text(&run, s)
        );
    }
    // The build log streamed into the stage log.
    assert!(
        stage(&run, "build").log.iter().any(|l| l.stream == "build"),
        "no build output in the log"
    );
    let digest = stage(&run, "push").outputs["digest"].clone();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // Pull the manifest back by digest, authenticated, and check its bytes.
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{}/v2/{repo}/manifests/{digest}", services::REGISTRY))
        .basic_auth(services::REGISTRY_USER, Some(services::REGISTRY_PASSWORD))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&body))),
        digest
    );
    // And the engine can pull it by digest.
    let label = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"team\"}}",
        &local,
    ]);
    assert_eq!(label, "ci", "build labels are applied");

    // Wrong credentials: the registry's own refusal comes back.
    registry_auth_env(&mut h, "wrong-password");
    let run = h.run(&pipeline).await;
    let t = text(&run, "push");
    assert_eq!(stage(&run, "push").status, Status::Failure);
    assert!(t.contains("UNAUTHORIZED") && t.contains("401"), "{t}");
    assert!(!t.contains("wrong-password"), "credentials leaked: {t}");
    docker(&["image", "rm", "-f", &local, &remote]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_to_completion_with_workspace_exit_code_timeout_and_cleanup() {
    services::require();
    let h = Harness::new().unwrap();
    let ctx = h.path().join("ctx");
    busybox_context(&ctx);
    let image = format!("local/{}:1", unique("ph-test-run"));
    docker(&["build", "-q", "-t", &image, ctx.to_str().unwrap()]);
    let grants = format!(r#"grants = {{ workspace = "rw", docker = {{ run = ["{image}"] }} }}"#);
    let run = h
        .run_with(
            &format!(
                r#"
[pipeline]
name = "run"
[plugins]
hostile = "{{plugin:hostile}}"
[[stage]]
name = "exit3"
plugin = "hostile"
with = {{ attack = "docker", op = "run", image = "{image}", workspace = "rw", command = ["/bin/sh", "-c", "echo hello from the container; echo $GREETING > /workspace/out.txt; exit 3"], env = {{ GREETING = "hi" }} }}
{grants}
[[stage]]
name = "slow"
plugin = "hostile"
with = {{ attack = "docker", op = "run", image = "{image}", command = ["/bin/sleep", "60"], timeout-ms = 1500 }}
{grants}
"#
            ),
            |o| o.id = unique("run"),
        )
        .await;
    let exit3 = stage(&run, "exit3");
    assert_eq!(exit3.status, Status::Success, "{}", text(&run, "exit3"));
    assert_eq!(exit3.outputs["exit-code"], "3");
    assert!(exit3.outputs["output"].contains("hello from the container"));
    assert!(exit3
        .log
        .iter()
        .any(|l| l.stream == "container" && l.text.contains("hello")));
    assert_eq!(
        std::fs::read_to_string(h.workspace.join("out.txt"))
            .unwrap()
            .trim(),
        "hi"
    );
    let slow = stage(&run, "slow");
    assert_eq!(slow.outputs["timed-out"], "true", "{}", text(&run, "slow"));
    // Containers are always removed.
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=pipeline-host.run={}", run.id),
    ]);
    assert_eq!(left, "", "containers left behind");
    docker(&["image", "rm", "-f", &image]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_with_a_port_on_loopback() {
    services::require();
    let h = Harness::new().unwrap();
    let ctx = h.path().join("ctx");
    busybox_context(&ctx);
    let image = format!("local/{}:1", unique("ph-test-web"));
    docker(&["build", "-q", "-t", &image, ctx.to_str().unwrap()]);
    let name = unique("ph-web");
    let port = free_port();
    let grants = format!(
        r#"grants = {{ docker = {{ run = ["{image}"], containers = ["ph-web-*"], ports = ["{port}-{port}"] }} }}"#
    );
    let stage_toml = |n: &str, with: &str, needs: &str| {
        format!("[[stage]]\nname = \"{n}\"\nplugin = \"hostile\"\nneeds = [{needs}]\nwith = {{ attack = \"docker\", {with} }}\n{grants}\n")
    };
    let mut p =
        String::from("[pipeline]\nname = \"web\"\n[plugins]\nhostile = \"{plugin:hostile}\"\n");
    p += &stage_toml(
        "create",
        &format!(
            r#"op = "create", name = "{name}", image = "{image}", command = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"], ports = [[8080, {port}]], labels = {{ app = "web" }}"#
        ),
        "",
    );
    p += &stage_toml(
        "start",
        &format!(r#"op = "start", name = "{name}""#),
        "\"create\"",
    );
    p += &stage_toml(
        "inspect",
        &format!(r#"op = "inspect", name = "{name}""#),
        "\"start\"",
    );
    p += &stage_toml("list", r#"op = "list", label = "app=web""#, "\"start\"");
    let run = h.run(&p).await;
    for s in ["create", "start", "inspect", "list"] {
        assert_eq!(
            stage(&run, s).status,
            Status::Success,
            "{s}: {}",
            text(&run, s)
        );
    }
    assert_eq!(stage(&run, "inspect").outputs["running"], "true");
    assert_eq!(
        stage(&run, "inspect").outputs["ports"],
        format!("{port}:8080")
    );
    assert!(stage(&run, "list").outputs["names"].contains(&name));
    // Published on 127.0.0.1 only, and serving.
    let binding = docker(&["port", &name, "8080/tcp"]);
    assert_eq!(binding, format!("127.0.0.1:{port}"));
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/")).await {
            body = r.text().await.unwrap_or_default();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(body.trim(), "ok");

    let mut p = String::from(
        "[pipeline]\nname = \"web-down\"\n[plugins]\nhostile = \"{plugin:hostile}\"\n",
    );
    p += &stage_toml("stop", &format!(r#"op = "stop", name = "{name}""#), "");
    p += &stage_toml(
        "remove",
        &format!(r#"op = "remove", name = "{name}""#),
        "\"stop\"",
    );
    p += &stage_toml(
        "gone",
        &format!(r#"op = "inspect", name = "{name}""#),
        "\"remove\"",
    );
    let run = h.run(&p).await;
    assert_eq!(
        stage(&run, "stop").status,
        Status::Success,
        "{}",
        text(&run, "stop")
    );
    assert_eq!(
        stage(&run, "remove").status,
        Status::Success,
        "{}",
        text(&run, "remove")
    );
    assert!(
        text(&run, "gone").contains("NOT_FOUND"),
        "{}",
        text(&run, "gone")
    );

    // A container the host did not create cannot be managed, whatever its name.
    let foreign = unique("ph-web");
    docker(&["create", "--name", &foreign, &image]);
    let mut p =
        String::from("[pipeline]\nname = \"foreign\"\n[plugins]\nhostile = \"{plugin:hostile}\"\n");
    p += &stage_toml(
        "remove-foreign",
        &format!(r#"op = "remove", name = "{foreign}""#),
        "",
    );
    let run = h.run(&p).await;
    assert!(
        text(&run, "remove-foreign").contains("not a container this host created"),
        "{}",
        text(&run, "remove-foreign")
    );
    assert_eq!(
        docker(&["inspect", "--format", "{{.Name}}", &foreign]),
        format!("/{foreign}")
    );
    docker(&["rm", "-f", &foreign]);
    docker(&["image", "rm", "-f", &image]);
}

/// Cancelling a run (Ctrl-C) stops its containers and removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_removes_its_containers() {
    services::require();
    let h = Harness::new().unwrap();
    let ctx = h.path().join("ctx");
    busybox_context(&ctx);
    let image = format!("local/{}:1", unique("ph-test-cancel"));
    docker(&["build", "-q", "-t", &image, ctx.to_str().unwrap()]);
    let run_id = unique("cancel");
    let text = format!(
        r#"
[pipeline]
name = "cancel"
[plugins]
hostile = "{{plugin:hostile}}"
[[stage]]
name = "sleeper"
plugin = "hostile"
with = {{ attack = "docker", op = "run", image = "{image}", command = ["/bin/sleep", "20"] }}
grants = {{ docker = {{ run = ["{image}"] }} }}
"#
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let filter = format!("label=pipeline-host.run={run_id}");
    let watcher = {
        let cancel = cancel.clone();
        let filter = filter.clone();
        tokio::spawn(async move {
            // Cancel once the container is really running.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while docker(&["ps", "-q", "--filter", &filter]).is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the container never started"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            cancel.cancel();
        })
    };
    let id = run_id.clone();
    let run = h.run_full(&text, move |o| o.id = id, cancel).await;
    watcher.await.unwrap();
    assert_eq!(run.status, Status::Cancelled);
    assert_eq!(stage(&run, "sleeper").status, Status::Cancelled);
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &filter]),
        "",
        "containers left behind"
    );
    docker(&["image", "rm", "-f", &image]);
}
