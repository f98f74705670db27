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
    for (dir, dockerfile) in [
        ("evil", "FROM local/other:1\n"),
        (
            "copyfrom",
            "FROM scratch\nCOPY --from=private/secret-image:1 /etc/secret /secret\n",
        ),
        ("argfrom", "ARG BASE=scratch\nFROM ${BASE}\n"),
        ("unknown", "FROM local/base-${TARGETARCH}\n"),
    ] {
        std::fs::create_dir_all(h.workspace.join(dir)).unwrap();
        std::fs::write(h.workspace.join(dir).join("Dockerfile"), dockerfile).unwrap();
    }

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
        // A build reads only base images the stage is granted.
        (
            "build-from",
            r#"op = "build", image = "local/app", context = "evil""#,
            &["docker.base", "local/other:1 (FROM, Dockerfile line 1)"],
        ),
        (
            "build-copy-from",
            r#"op = "build", image = "local/app", context = "copyfrom""#,
            &[
                "docker.base",
                "private/secret-image:1 (COPY --from, Dockerfile line 2)",
            ],
        ),
        (
            "build-arg-from",
            r#"op = "build", image = "local/app", context = "argfrom", build-args = { BASE = "private/secret-image:1" }"#,
            &["docker.base", "private/secret-image:1 (FROM"],
        ),
    ];
    // Malformed requests: refused as invalid, before the engine too.
    let invalid: &[(&str, &str, &[&str])] = &[
        (
            "build-unknown-from",
            r#"op = "build", image = "local/app", context = "unknown""#,
            &["TARGETARCH", "set by the builder"],
        ),
        (
            "secret-build-arg",
            r#"op = "build", image = "local/app", context = "app", build-args = { TOKEN = "${secret:registry-auth}" }"#,
            &["build arg `TOKEN`", "image's history", "legacy builder"],
        ),
        (
            "newline-command",
            r#"op = "run", image = "local/app", command = ["/bin/sh", "-c", "echo hi\nrm -rf /workspace"]"#,
            &["command argument 3", "control character '\\n'"],
        ),
        (
            "newline-image",
            r#"op = "run", image = "local/app\nlocal/other""#,
            &["not an image reference", "'\\n'"],
        ),
        (
            "newline-env",
            r#"op = "run", image = "local/app", env = { "A\nB" = "x" }"#,
            &["environment variable name", "control character"],
        ),
        (
            "escape-workdir",
            r#"op = "run", image = "local/app", workdir = "/w\u001b[2J""#,
            &["working directory", "control character"],
        ),
        (
            "newline-label",
            r#"op = "create", name = "app-3", image = "local/app", labels = { team = "a\nb" }"#,
            &["label `team`", "control character"],
        ),
        (
            "newline-name",
            r#"op = "inspect", name = "app-1\nx""#,
            &["is not a container name"],
        ),
    ];
    let mut text_toml = String::from(
        "[pipeline]\nname = \"denials\"\n[plugins]\nhostile = \"{plugin:hostile}\"\n[secrets]\nregistry-auth = { env = \"REGISTRY_AUTH\" }\n",
    );
    for (name, with, _) in cases.iter().chain(invalid) {
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
    for (name, _, fragments) in invalid {
        let t = text(&run, name);
        assert_eq!(stage(&run, name).status, Status::Failure, "{name}: {t}");
        assert!(
            t.contains("invalid request"),
            "{name}: not refused as invalid: {t}"
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
    // As on a runner whose workspaces belong to an ordinary user: the
    // container runs as that user and writes the workspace as them.
    std::os::unix::fs::chown(&h.workspace, Some(4242), Some(4242)).unwrap();
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
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(h.workspace.join("out.txt")).unwrap();
    assert_eq!((owner.uid(), owner.gid()), (4242, 4242));
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

/// A busybox image (`FROM scratch`) the hardening tests share, built once
/// per test process and kept between runs (the engine caches it).
fn shared_busybox() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let image = "local/ph-test-hardening:1".to_string();
        let dir = tempfile::tempdir().unwrap();
        busybox_context(dir.path());
        docker(&["build", "-q", "-t", &image, dir.path().to_str().unwrap()]);
        assert!(
            !docker(&["image", "inspect", "--format", "{{.Id}}", &image]).is_empty(),
            "building {image} failed"
        );
        image
    })
}

fn output_lines(run: &RunRecord, name: &str) -> Vec<String> {
    stage(run, name).outputs["output"]
        .lines()
        .map(str::to_string)
        .collect()
}

fn hex(text: &str) -> String {
    hex::encode(text.as_bytes())
}

/// The test process's peak resident memory, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Containers run as the workspace owner (root only with the grant), with
/// no capabilities and no-new-privileges: what they leave in the workspace
/// cannot gain privileges. Memory, CPU and pid limits are always on, come
/// from the grant or the stage's `memory`, and are in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_unprivileged_with_limits_that_are_recorded() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    services::require();
    let image = shared_busybox();
    let h = Harness::new().unwrap();
    let ws = &h.workspace;
    // Made by the host (root): a container must not make it set-id.
    std::fs::write(ws.join("rootfile"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(ws.join("rootfile"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A workspace of an ordinary user, as on a runner.
    std::os::unix::fs::chown(ws, Some(4242), Some(4243)).unwrap();
    let attack = "id -u; id -g; \
        touch /workspace/made && echo made; \
        chown 0:0 /workspace/made && echo CHOWN-WORKED || echo chown-refused; \
        chmod u+s /workspace/rootfile && echo SETUID-WORKED || echo setuid-refused; \
        chmod g+s /workspace/rootfile && echo SETGID-WORKED || echo setgid-refused; \
        mknod /workspace/null c 1 3 && echo MKNOD-WORKED || echo mknod-refused";
    let inside = "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
        cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes \
            /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max \
            /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null; true";
    let as_root = "id -u; mknod /tmp/null c 1 3 && echo MKNOD-WORKED || echo mknod-refused";
    let name = unique("ph-limits");
    let run = h
        .run(&format!(
            r#"
[pipeline]
name = "privileges"
[plugins]
hostile = "{{plugin:hostile}}"
[[stage]]
name = "default"
plugin = "hostile"
with = {{ attack = "docker", op = "run", image = "{image}", workspace = "rw", command = ["/bin/sh", "-c", "{attack}; {inside}"] }}
grants = {{ workspace = "rw", docker = {{ run = ["{image}"], memory = "96MiB", cpus = 0.5, pids = 64 }} }}
[[stage]]
name = "root"
plugin = "hostile"
memory = "80MiB"
with = {{ attack = "docker", op = "run", image = "{image}", workspace = "rw", command = ["/bin/sh", "-c", "{as_root}; {inside}"] }}
grants = {{ workspace = "rw", docker = {{ run = ["{image}"], root = true }} }}
[[stage]]
name = "create"
plugin = "hostile"
memory = "72MiB"
with = {{ attack = "docker", op = "create", name = "{name}", image = "{image}", command = ["/bin/sleep", "1"] }}
grants = {{ docker = {{ run = ["{image}"], containers = ["ph-limits-*"] }} }}
"#
        ))
        .await;
    // What the engine was told, for the created container (removed first,
    // whatever the assertions below say).
    let host_config: serde_json::Value = serde_json::from_str(&docker(&[
        "inspect",
        "--format",
        "{{json .HostConfig}}",
        &name,
    ]))
    .unwrap_or_default();
    let user = docker(&["inspect", "--format", "{{.Config.User}}", &name]);
    docker(&["rm", "-f", &name]);
    for s in ["default", "root", "create"] {
        assert_eq!(
            stage(&run, s).status,
            Status::Success,
            "{s}: {}",
            text(&run, s)
        );
    }

    // The workspace owner's ids, and every escalation refused.
    let out = output_lines(&run, "default");
    let has = |lines: &[String], l: &str| lines.iter().any(|x| x.trim() == l);
    for want in [
        "4242",
        "4243",
        "made",
        "chown-refused",
        "setuid-refused",
        "setgid-refused",
        "mknod-refused",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        // 96MiB, 64 pids, half a CPU (cgroup v1 or v2).
        "100663296",
        "64",
    ] {
        assert!(has(&out, want), "`{want}` missing in {out:?}");
    }
    assert!(
        out.iter()
            .any(|l| l.trim() == "50000" || l.trim() == "50000 100000"),
        "no CPU quota in {out:?}"
    );
    assert!(!out.iter().any(|l| l.contains("WORKED")), "{out:?}");
    let made = std::fs::metadata(ws.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (4242, 4243));
    let rootfile = std::fs::metadata(ws.join("rootfile")).unwrap();
    assert_eq!(rootfile.mode() & 0o6000, 0);
    assert!(!ws.join("null").exists());

    // Root only with the grant, and still without capabilities; the
    // stage's `memory` when the grant names none.
    let out = output_lines(&run, "root");
    for want in [
        "0",
        "mknod-refused",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "83886080",
        "512",
    ] {
        assert!(has(&out, want), "root: `{want}` missing in {out:?}");
    }

    // In the record: the audit trail and the stage log say what applied.
    let audit = |s: &str, op: &str| {
        stage(&run, s)
            .audit
            .iter()
            .find(|a| a.capability == op)
            .unwrap_or_else(|| panic!("{s}: no {op} in the audit trail"))
            .outcome
            .clone()
    };
    assert_eq!(
        audit("default", "docker.run"),
        "exit 0 (user 4242:4243, memory 96MiB, cpus 0.5, pids 64)"
    );
    assert_eq!(
        audit("root", "docker.run"),
        "exit 0 (user 0:0, memory 80MiB, cpus 1, pids 512)"
    );
    assert!(audit("create", "docker.create")
        .ends_with("(user 65534:65534, memory 72MiB, cpus 1, pids 512)"));
    assert!(stage(&run, "default").log.iter().any(|l| l.stream == "host"
        && l.text.contains(
            "user 4242:4243, memory 96MiB, cpus 0.5, pids 64, no capabilities, no-new-privileges"
        )));

    assert_eq!(user, "65534:65534");
    assert_eq!(host_config["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(
        host_config["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(host_config["Privileged"], false);
    assert_eq!(host_config["Memory"], 72 << 20);
    assert_eq!(host_config["MemorySwap"], 72 << 20);
    assert_eq!(host_config["NanoCpus"], 1_000_000_000);
    assert_eq!(host_config["PidsLimit"], 512);
    assert_eq!(host_config["IpcMode"], "private");
    assert!(host_config["Devices"]
        .as_array()
        .is_none_or(|d| d.is_empty()));
}

/// A build reads only base images the stage is granted (`scratch` needs
/// none), and its context is streamed with a limit: a 3GiB file fails the
/// build at once without the host reading it into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_start_only_from_granted_bases_and_stream_a_bounded_context() {
    services::require();
    let image = shared_busybox();
    let base_repo = image.rsplit_once(':').unwrap().0;
    let h = Harness::new().unwrap();
    let ctx = h.workspace.join("derived");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {image}\nCOPY hello.txt /hello.txt\n"),
    )
    .unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    let big = h.workspace.join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("Dockerfile"), "FROM scratch\nCOPY blob /blob\n").unwrap();
    std::fs::File::create(big.join("blob"))
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let repo = unique("local/ph-test-derived");
    let stage_toml = |name: &str, with: &str, base: &str| {
        format!(
            "[[stage]]\nname = \"{name}\"\nplugin = \"hostile\"\nwith = {{ attack = \"docker\", op = \"build\", {with} }}\ngrants = {{ workspace = \"ro\", docker = {{ build = [\"{repo}\"], base = [{base}] }} }}\n"
        )
    };
    let mut p =
        String::from("[pipeline]\nname = \"bases\"\n[plugins]\nhostile = \"{plugin:hostile}\"\n");
    p += &stage_toml(
        "granted",
        &format!(r#"image = "{repo}:1", context = "derived""#),
        &format!("\"{base_repo}\""),
    );
    p += &stage_toml(
        "ungranted",
        &format!(r#"image = "{repo}:2", context = "derived""#),
        "\"local/other\"",
    );
    p += &stage_toml(
        "big",
        &format!(r#"image = "{repo}:3", context = "big""#),
        "",
    );
    let before = peak_rss();
    let run = h.run(&p).await;
    let grew = peak_rss().saturating_sub(before);

    assert_eq!(
        stage(&run, "granted").status,
        Status::Success,
        "{}",
        text(&run, "granted")
    );
    assert!(docker(&["run", "--rm", &format!("{repo}:1"), "cat", "/hello.txt"]) == "hello");

    let t = text(&run, "ungranted");
    assert_eq!(stage(&run, "ungranted").status, Status::Failure);
    assert!(
        t.contains("docker.base") && t.contains(&format!("{image} (FROM, Dockerfile line 1)")),
        "{t}"
    );
    assert_eq!(
        docker(&["images", "-q", &format!("{repo}:2")]),
        "",
        "built without a grant"
    );

    let big = stage(&run, "big");
    let t = text(&run, "big");
    assert_eq!(big.status, Status::Failure);
    assert!(
        t.contains("larger than its limit of 1GiB")
            && t.contains("`blob`")
            && t.contains("context-limit"),
        "{t}"
    );
    assert!(big.duration_ms < 30_000, "took {} ms", big.duration_ms);
    assert!(
        grew < 512 << 20,
        "the host's peak memory grew by {grew} bytes"
    );
    assert_eq!(docker(&["images", "-q", &format!("{repo}:3")]), "");
    services::remove_images(&repo);
}

/// Secrets never land in an image (a build arg is in its history), and
/// every text the docker capability hands back is masked: the plugin
/// itself never sees a secret it was not granted to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_images_and_what_the_plugin_gets_is_masked() {
    services::require();
    let image = shared_busybox();
    let base_repo = image.rsplit_once(':').unwrap().0;
    let mut h = Harness::new().unwrap();
    let secret = format!("tok{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    h.env.insert("TOKEN_VALUE".into(), secret.clone());
    let ctx = h.workspace.join("app");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {image}\nARG NOTE\nARG TOKEN\nRUN [\"/bin/sh\", \"-c\", \"echo note=$NOTE\"]\n"
        ),
    )
    .unwrap();
    let repo = unique("local/ph-test-secret");
    let build_grants = format!(
        r#"grants = {{ workspace = "ro", secrets = ["tok"], docker = {{ build = ["{repo}"], base = ["{base_repo}"] }} }}"#
    );
    let run_grants = format!(
        r#"grants = {{ secrets = ["tok"], docker = {{ run = ["{image}"], containers = ["nothing-*"] }} }}"#
    );
    let run = h
        .run(&format!(
            r#"
[pipeline]
name = "secrets"
[plugins]
hostile = "{{plugin:hostile}}"
[secrets]
tok = {{ env = "TOKEN_VALUE" }}
[[stage]]
name = "build-plain"
plugin = "hostile"
with = {{ attack = "docker", op = "build", image = "{repo}:1", context = "app", build-args = {{ NOTE = "visible-in-history" }} }}
{build_grants}
[[stage]]
name = "build-secret"
plugin = "hostile"
with = {{ attack = "docker", op = "build", image = "{repo}:2", context = "app", build-args = {{ TOKEN = "${{secret:tok}}" }} }}
{build_grants}
[[stage]]
name = "build-literal"
plugin = "hostile"
with = {{ attack = "docker", op = "build", image = "{repo}:3", context = "app", build-args = {{ TOKEN = "{secret}" }} }}
{build_grants}
[[stage]]
name = "echo"
plugin = "hostile"
with = {{ attack = "docker", op = "run", image = "{image}", env = {{ TOKEN = "${{secret:tok}}" }}, command = ["/bin/sh", "-c", "echo token=$TOKEN"] }}
{run_grants}
[[stage]]
name = "denied-name"
plugin = "hostile"
with = {{ attack = "docker", op = "inspect", name = "{secret}" }}
{run_grants}
"#
        ))
        .await;
    assert_eq!(
        stage(&run, "build-plain").status,
        Status::Success,
        "{}",
        text(&run, "build-plain")
    );
    // Why: build args are in the image's history for anyone to read.
    let history = docker(&["history", "--no-trunc", &format!("{repo}:1")]);
    assert!(history.contains("visible-in-history"), "{history}");
    assert!(!history.contains(&secret));

    for s in ["build-secret", "build-literal"] {
        let t = text(&run, s);
        assert_eq!(stage(&run, s).status, Status::Failure, "{s}: {t}");
        assert!(
            t.contains("build arg `TOKEN`")
                && t.contains("image's history")
                && t.contains("legacy builder"),
            "{s}: {t}"
        );
    }
    assert_eq!(docker(&["images", "-q", &format!("{repo}:2")]), "");
    assert_eq!(docker(&["images", "-q", &format!("{repo}:3")]), "");

    // The container printed the secret: the plugin got it masked.
    let echo = stage(&run, "echo");
    assert_eq!(echo.status, Status::Success, "{}", text(&run, "echo"));
    assert_eq!(echo.outputs["output-hex"], hex("token=***\n"));
    assert!(echo
        .log
        .iter()
        .any(|l| l.stream == "container" && l.text == "token=***"));
    // An error naming it: masked too.
    let denied = stage(&run, "denied-name");
    assert_eq!(denied.status, Status::Failure);
    let error = String::from_utf8(hex::decode(&denied.outputs["error-hex"]).unwrap()).unwrap();
    assert!(error.contains("denied") && error.contains("***"), "{error}");
    assert!(!error.contains(&secret));

    // Nowhere in the record, in any encoding the plugin could choose here.
    let record = serde_json::to_string(&run).unwrap();
    assert!(!record.contains(&secret) && !record.contains(&hex(&secret)));
    services::remove_images(&repo);
}
