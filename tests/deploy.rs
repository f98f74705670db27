//! The `deploy` plugin on the real engine with the real deploy proxy:
//! blue-green and rolling deploys of the demo app, a zero-downtime check
//! under continuous traffic, and the rollback of an unhealthy version.
//!
//! One demo-app image per test (`local/<unique>:v1`); "v2" is the same
//! image with `VERSION=v2` in the plugin's `env`, "unhealthy" the same with
//! `DEMO_UNHEALTHY=1`. Containers are found and removed by their
//! `pipeline.service` label, even when a test fails.
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use host::run::{RunRecord, Status};
use pipeline_tests::harness::Harness;
use pipeline_tests::plugins::{demo_app_workspace, root};
use pipeline_tests::services::{self, docker, free_port};

/// `local/deploy-proxy:latest`, built once per test process by
/// `plugins/deploy-proxy/build.sh` (a no-op when up to date).
fn proxy_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new("bash")
            .arg(root().join("plugins/deploy-proxy/build.sh"))
            .status()
            .expect("running plugins/deploy-proxy/build.sh");
        assert!(status.success(), "plugins/deploy-proxy/build.sh failed");
    });
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Removes the test's containers (by service label) and image on drop.
struct Cleanup {
    service: String,
    repo: String,
}

impl Cleanup {
    fn containers(&self, extra: &str) -> Vec<String> {
        let mut args = vec![
            "ps".to_string(),
            "-a".into(),
            "--format".into(),
            "{{.Names}}".into(),
            "--filter".into(),
            format!("label=pipeline.service={}", self.service),
        ];
        if !extra.is_empty() {
            args.push("--filter".into());
            args.push(format!("label={extra}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut names: Vec<String> = docker(&args).lines().map(str::to_string).collect();
        names.sort();
        names
    }

    /// Running app containers of the service.
    fn apps(&self) -> Vec<String> {
        self.containers("pipeline.role=app")
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = self.containers("");
        if !names.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(names.iter().map(String::as_str));
            docker(&args);
        }
        services::remove_images(&self.repo);
    }
}

struct Setup {
    h: Harness,
    image: String,
    service: String,
    public: u16,
    admin: u16,
    /// Inclusive host-ports range.
    range: (u16, u16),
    cleanup: Cleanup,
}

/// A block of 10 ports below the ephemeral range, free right now (the
/// plugin skips ports taken later anyway).
fn port_block() -> (u16, u16) {
    loop {
        let n = u16::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..2].try_into().unwrap());
        let base = 20000 + (n % 1200) * 10;
        if (base..base + 10).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + 9);
        }
    }
}

fn setup() -> Setup {
    services::require();
    proxy_image();
    let h = Harness::new().unwrap();
    let ctx = demo_app_workspace(&h.workspace);
    let repo = unique("ph-deploy");
    let image = format!("local/{repo}:v1");
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &image, ctx.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = unique("dp");
    let (public, admin) = (free_port(), free_port());
    assert_ne!(public, admin);
    Setup {
        h,
        image,
        service: service.clone(),
        public,
        admin,
        range: port_block(),
        cleanup: Cleanup { service, repo },
    }
}

impl Setup {
    /// A one-stage pipeline deploying the test image with `with_extra`.
    fn pipeline(&self, with_extra: &str) -> String {
        let repo = self.image.rsplit_once(':').unwrap().0;
        format!(
            r#"
[pipeline]
name = "deploy"
[plugins]
deploy = "{{plugin:deploy}}"

[[stage]]
name = "deploy"
plugin = "deploy"
with = {{ service = "{svc}", image = "{image}", public-port = {public}, admin-port = {admin}, host-ports = "{lo}-{hi}", {with_extra} }}
grants = {{ http = ["http://127.0.0.1:*/*"], docker = {{ run = ["{repo}", "local/deploy-proxy"], containers = ["{svc}-*"], ports = [{public}, {admin}, "{lo}-{hi}"] }} }}
"#,
            svc = self.service,
            image = self.image,
            public = self.public,
            admin = self.admin,
            lo = self.range.0,
            hi = self.range.1,
        )
    }

    async fn deploy(&self, with_extra: &str) -> RunRecord {
        self.h.run(&self.pipeline(with_extra)).await
    }

    fn endpoint(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public)
    }
}

fn describe(run: &RunRecord) -> String {
    let s = run.stage("deploy").unwrap();
    let log: Vec<String> = s.log.iter().map(|l| l.text.clone()).collect();
    format!(
        "{} {} {:?}\n{:?}\n{}",
        s.status,
        s.summary,
        s.error,
        s.outputs,
        log.join("\n")
    )
}

fn assert_ok(run: &RunRecord) {
    assert_eq!(
        run.stage("deploy").unwrap().status,
        Status::Success,
        "{}",
        describe(run)
    );
}

fn outputs(run: &RunRecord) -> &std::collections::BTreeMap<String, String> {
    &run.stage("deploy").unwrap().outputs
}

fn names(csv: &str) -> Vec<String> {
    let mut v: Vec<String> = csv
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// What a background poller saw.
#[derive(Debug, Default)]
struct Seen {
    ok: Vec<String>,
    failures: Vec<String>,
}

impl Seen {
    fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ok
            .iter()
            .map(|b| {
                b.trim()
                    .trim_start_matches("Hello from demo-app ")
                    .trim_end_matches('!')
                    .to_string()
            })
            .collect();
        v.dedup();
        v
    }
}

/// Polls `url` every ~20 ms on one keep-alive client until `stop` is set
/// (or 2 minutes / 6000 requests have passed).
fn poll(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut seen = Seen::default();
        let deadline = Instant::now() + Duration::from_secs(120);
        for _ in 0..6000 {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => match r.text().await {
                    Ok(t) => seen.ok.push(t),
                    Err(e) => seen.failures.push(format!("body: {e}")),
                },
                Ok(r) => {
                    let s = r.status();
                    seen.failures
                        .push(format!("{s}: {}", r.text().await.unwrap_or_default()))
                }
                Err(e) => seen.failures.push(format!("{e:?}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get_owned(url: String) -> (u16, String) {
    get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switches_to_the_new_version_and_removes_the_old() {
    let s = setup();
    let run = s
        .deploy(r#"strategy = "blue-green", replicas = 2, env = { VERSION = "v1" }"#)
        .await;
    assert_ok(&run);
    let first = names(&outputs(&run)["containers"]);
    assert_eq!(first.len(), 2);
    assert_eq!(outputs(&run)["endpoint"], s.endpoint(""));
    assert_eq!(outputs(&run)["strategy"], "blue-green");
    assert_eq!(outputs(&run)["image"], s.image);
    assert!(!outputs(&run).contains_key("previous-image"));
    assert_eq!(s.cleanup.apps(), first);
    let (status, body) = get(&s.endpoint("/health")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"status":"ok","version":"v1"}"#)
    );

    let run = s
        .deploy(r#"strategy = "blue-green", replicas = 2, env = { VERSION = "v2" }"#)
        .await;
    assert_ok(&run);
    assert_eq!(outputs(&run)["previous-image"], s.image);
    let second = names(&outputs(&run)["containers"]);
    assert_eq!(second.len(), 2);
    assert!(second.iter().all(|n| !first.contains(n)));
    for _ in 0..4 {
        let (status, body) = get(&s.endpoint("/health")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"status":"ok","version":"v2"}"#)
        );
        assert_eq!(get(&s.endpoint("/")).await.1, "Hello from demo-app v2!\n");
    }
    // The old replicas are gone; the proxy stayed.
    assert_eq!(s.cleanup.apps(), second);
    assert!(s
        .cleanup
        .containers("pipeline.role=proxy")
        .contains(&format!("{}-proxy", s.service)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_deploy_under_traffic_drops_no_request() {
    let s = setup();
    let run = s.deploy(r#"replicas = 2, env = { VERSION = "v1" }"#).await;
    assert_ok(&run);
    assert_eq!(outputs(&run)["strategy"], "rolling");
    let first = names(&outputs(&run)["containers"]);

    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll(s.endpoint("/"), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Slow requests in flight on the old replicas when they leave the pool:
    // the deploy drains them before stopping the containers.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get_owned(s.endpoint("/slow?ms=1500"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let run = s.deploy(r#"replicas = 2, env = { VERSION = "v2" }"#).await;
    let took = started.elapsed();
    for r in slow {
        assert_eq!(r.await.unwrap(), (200, "slept 1500 ms\n".to_string()));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = poller.await.unwrap();
    assert_ok(&run);
    let count = |v: &str| {
        seen.ok
            .iter()
            .filter(|b| b.contains(&format!(" {v}!")))
            .count()
    };
    eprintln!(
        "rolling deploy took {took:?}; {} requests answered 200 ({} v1, {} v2), {} failed",
        seen.ok.len(),
        count("v1"),
        count("v2"),
        seen.failures.len(),
    );
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        seen.failures
    );
    assert!(seen.ok.len() >= 20, "too few requests: {}", seen.ok.len());
    assert_eq!(seen.versions().first().map(String::as_str), Some("v1"));
    assert_eq!(seen.versions().last().map(String::as_str), Some("v2"));
    assert!(seen.versions().contains(&"v2".to_string()));
    let second = names(&outputs(&run)["containers"]);
    assert_eq!(second.len(), 2);
    assert!(second.iter().all(|n| !first.contains(n)));
    assert_eq!(s.cleanup.apps(), second);
    // The run log shows one replica at a time.
    let log: Vec<String> = run
        .stage("deploy")
        .unwrap()
        .log
        .iter()
        .map(|l| l.text.clone())
        .collect();
    assert_eq!(
        log.iter().filter(|l| l.contains(" out")).count(),
        2,
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unhealthy_version_fails_and_the_old_one_keeps_serving() {
    let s = setup();
    let run = s.deploy(r#"env = { VERSION = "v1" }"#).await;
    assert_ok(&run);
    let before = s.cleanup.apps();
    assert_eq!(before.len(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll(s.endpoint("/"), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let run = s
        .deploy(
            r#"env = { VERSION = "v2", DEMO_UNHEALTHY = "1" }, health = { timeout = "3s", interval = "250ms" }"#,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = poller.await.unwrap();

    let stage = run.stage("deploy").unwrap();
    assert_eq!(stage.status, Status::Failure, "{}", describe(&run));
    let text = format!(
        "{} {}",
        stage.summary,
        stage.error.clone().unwrap_or_default()
    );
    assert!(
        text.contains("health check of")
            && text.contains("failed: GET /health answered 503 for 3s")
            && text.contains(&format!("rolled back to {}", s.image)),
        "{text}"
    );
    assert_eq!(outputs(&run)["previous-image"], s.image);
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        seen.failures
    );
    assert!(!seen.ok.is_empty());
    assert_eq!(seen.versions(), vec!["v1"]);
    // The unhealthy container is gone; the old one is untouched.
    assert_eq!(s.cleanup.apps(), before);
    assert_eq!(get(&s.endpoint("/")).await.1, "Hello from demo-app v1!\n");
}

/// `local/<repo>:<tag>`: the test image with `VERSION=<tag>` baked in.
fn versioned(s: &Setup, tag: &str) -> String {
    let repo = s.image.rsplit_once(':').unwrap().0;
    let image = format!("{repo}:{tag}");
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", &image, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    write!(
        child.stdin.take().unwrap(),
        "FROM {}\nENV VERSION={tag}\n",
        s.image
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "docker build of {image}");
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_smoke_test_rolls_back_the_deploy_it_follows() {
    let s = setup();
    let (r1, r2) = (versioned(&s, "r1"), versioned(&s, "r2"));
    // The image `s.pipeline` deploys, swapped for another tag of its repo.
    let with_image = |image: &str| {
        s.pipeline("replicas = 1").replace(
            &format!(r#"image = "{}""#, s.image),
            &format!(r#"image = "{image}""#),
        )
    };
    let run = s.h.run(&with_image(&r1)).await;
    assert_ok(&run);
    assert_eq!(get(&s.endpoint("/")).await.1, "Hello from demo-app r1!\n");

    // r2 deploys fine (it is healthy) but fails its smoke test.
    let smoke = format!(
        r#"
[[stage]]
name = "smoke"
plugin = "smoke"
needs = ["deploy"]
rollback = "deploy"
with = {{ checks = [{{ name = "version", url = "{}", body-contains = "r3" }}], retries = 0 }}
grants = {{ http = ["http://127.0.0.1:*/*"] }}
"#,
        s.endpoint("/")
    );
    let text = with_image(&r2).replace(
        r#"deploy = "{plugin:deploy}""#,
        "deploy = \"{plugin:deploy}\"\nsmoke = \"{plugin:smoke-test}\"",
    ) + &smoke;
    let run = s.h.run(&text).await;
    assert_eq!(run.status, Status::Failure);
    let deploy = run.stage("deploy").unwrap();
    assert_eq!(deploy.status, Status::Success, "{}", describe(&run));
    assert_eq!(
        (
            deploy.outputs["image"].as_str(),
            deploy.outputs["previous-image"].as_str()
        ),
        (r2.as_str(), r1.as_str())
    );
    let smoke = run.stage("smoke").unwrap();
    assert_eq!(smoke.status, Status::Failure);
    let err = smoke.error.clone().unwrap_or_default();
    assert!(
        err.contains(&format!("rolled back `deploy` to {r1}")),
        "{err}"
    );
    let rollback = run.stage("deploy:rollback").expect("a rollback record");
    assert_eq!(rollback.status, Status::Success, "{:?}", rollback);
    assert_eq!(rollback.outputs["image"], r1);
    assert_eq!(run.stages.last().unwrap().name, "deploy:rollback");
    // r1 serves again.
    assert_eq!(get(&s.endpoint("/")).await.1, "Hello from demo-app r1!\n");
}
