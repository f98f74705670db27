//! The server's web pages in a real browser: headless Chromium driven
//! through ChromeDriver (WebDriver), against `host serve` on loopback.
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use host::run::display::format_duration;
use pipeline_tests::plugins::plugin;
use pipeline_tests::serve::{config, GitRepo, Server};
use serde_json::{json, Value};

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// ChromeDriver on a free port, once it answers `/status`.
fn chromedriver() -> Driver {
    let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (`just services` installs chromium-driver)")
        });
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::blocking::get(format!("{url}/status")).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not answer within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, url }
}

async fn browser(driver: &str, profile: &std::path::Path) -> Client {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    // ChromeDriver is on loopback: plain HTTP, no TLS stack needed.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// The shown text of `css`, once the page has it (a click that submits a
/// form returns before the next page is there).
async fn text_of(c: &Client, css: &str) -> String {
    let script = format!(
        "var e = document.querySelector({}); return e && e.innerText;",
        json!(css)
    );
    let shown = |v: Value| v.as_str().map(|s| s.trim().to_string());
    until(c, &format!("element `{css}` shown"), shown, &script).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_list_and_a_finished_run_render_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let stages = r#"
[[stage]]
name = "talk"
plugin = "hostile"
with = { attack = "chatty", lines = 3 }

[[stage]]
name = "tests"
plugin = "hostile"
needs = ["talk"]
with = { attack = "fail" }

[[stage]]
name = "deploy"
plugin = "hostile"
needs = ["tests"]
with = { attack = "ok" }
"#;
    let text = format!(
        "[pipeline]\nname = \"web-demo\"\n\n[plugins]\nhostile = \"{}\"\n{stages}",
        plugin("hostile").display()
    );
    let sha = repo.push("main", &[("pipeline.toml", &text)]);
    let triggers = "[[repository.trigger]]\nevent = \"push\"\nbranch = [\"main\"]\n";
    let (dir, server, run, record) = tokio::task::spawn_blocking(move || {
        let server = Server::start(dir.path(), &config(&repo.url(), "", "", triggers));
        let run = server.push("web-1", "refs/heads/main", &sha);
        let record = server.wait_run(&run, Duration::from_secs(120));
        (dir, server, run, record)
    })
    .await
    .unwrap();
    assert_eq!(record["status"], "failure");
    let stage = |name: &str| -> Value {
        record["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };

    let driver = tokio::task::spawn_blocking(chromedriver).await.unwrap();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver.url, profile.path()).await;

    // The list: the run is there with its status; its link leads to it.
    c.goto(&server.url).await.unwrap();
    let row = format!("tr[data-run=\"{run}\"]");
    assert_eq!(text_of(&c, &format!("{row} .status")).await, "failure");
    assert_eq!(
        text_of(&c, &format!("{row} td:nth-child(3)")).await,
        "web-demo"
    );
    c.find(Locator::Css(&format!("{row} a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.current_url().await.unwrap().path().ends_with(&run) {
        assert!(
            Instant::now() < deadline,
            "the link did not lead to the run page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The run page: stages with statuses and durations, and logs.
    assert_eq!(c.title().await.unwrap(), "web-demo #1 · pipeline host");
    for (name, status) in [
        ("talk", "success"),
        ("tests", "failure"),
        ("deploy", "skipped"),
    ] {
        let row = format!("#stages tr[data-stage=\"{name}\"]");
        assert_eq!(
            text_of(&c, &format!("{row} .status")).await,
            status,
            "{name}"
        );
        let shown = text_of(&c, &format!("{row} td:nth-child(3)")).await;
        let expected = if name == "deploy" {
            String::new()
        } else {
            format_duration(stage(name)["duration_ms"].as_u64().unwrap())
        };
        assert_eq!(shown, expected, "{name} duration");
    }
    assert_eq!(
        text_of(&c, "#stages tr[data-stage=\"tests\"] td:nth-child(5)").await,
        "fail: failed on purpose"
    );
    // The failed stage's log is open; the passed one's is folded until clicked.
    let failed_log = c
        .find(Locator::Css("#stage-tests details"))
        .await
        .unwrap()
        .attr("open")
        .await
        .unwrap();
    assert!(failed_log.is_some());
    let talk_log = c.find(Locator::Css("#stage-talk pre.log")).await.unwrap();
    assert!(!talk_log.is_displayed().await.unwrap());
    c.find(Locator::Css("#stage-talk summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(talk_log.is_displayed().await.unwrap());
    assert_eq!(
        talk_log.text().await.unwrap(),
        "line 1 of 3\nline 2 of 3\nline 3 of 3"
    );
    let duration = text_of(&c, "#run-duration").await;
    assert_eq!(
        duration,
        format_duration(record["duration_ms"].as_u64().unwrap())
    );
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a real rendering");
    if let Ok(out) = std::env::var("WEB_SCREENSHOT") {
        std::fs::write(out, png).unwrap();
    }
    c.close().await.unwrap();
    // Its blocking HTTP client must not be dropped on an async thread.
    tokio::task::spawn_blocking(move || drop((server, dir)))
        .await
        .unwrap();
}

/// The pictures, without a browser: a real run's page carries its stage
/// graph and timeline; its pipeline's page its history and DORA figures,
/// with a name full of markup shown as text.
#[test]
fn the_run_and_pipeline_pages_carry_their_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let name = r#"pics <b>&"x"#;
    let text = format!(
        "[pipeline]\nname = '{name}'\n\n[plugins]\nhostile = \"{}\"\n{}",
        plugin("hostile").display(),
        r#"
[[stage]]
name = "compile"
plugin = "hostile"
with = { attack = "ok" }

[[stage]]
name = "lint"
plugin = "hostile"
with = { attack = "ok" }

[[stage]]
name = "package"
plugin = "hostile"
needs = ["compile", "lint"]
with = { attack = "ok" }
"#
    );
    let sha = repo.push("main", &[("pipeline.toml", &text)]);
    let triggers = "[[repository.trigger]]\nevent = \"push\"\nbranch = [\"main\"]\n";
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", triggers));
    let run = server.push("pics-1", "refs/heads/main", &sha);
    let record = server.wait_run(&run, Duration::from_secs(120));
    assert_eq!(record["status"], "success", "{record}");
    assert_eq!(record["stages"][2]["needs"], json!(["compile", "lint"]));
    assert_eq!(record["trigger"]["commit_time"], "2019-05-15T15:19:25Z");

    let (status, page) = server.get(&format!("/runs/{run}"));
    assert_eq!(status, 200);
    for class in ["stage-graph", "stage-timeline"] {
        assert!(
            page.contains(&format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"{class}\""
            )),
            "{class}: {page}"
        );
    }
    for stage in ["compile", "lint", "package"] {
        assert!(
            page.contains(&format!("<g class=\"stage\" data-stage=\"{stage}\"")),
            "{stage}"
        );
        assert!(
            page.contains("class=\"bar")
                && page.contains(&format!("data-stage=\"{stage}\" data-status=\"success\""))
        );
    }
    assert!(page.contains("data-from=\"lint\" data-to=\"package\""));
    let href = host::serve::web::pipeline_href(name);
    assert!(
        page.contains(&format!("href=\"{href}\"")),
        "a link to the pipeline's page"
    );

    let (status, page) = server.get(&href);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("class=\"run-history\""), "{page}");
    assert!(page.contains("class=\"dora\""));
    assert!(page.contains(&format!("data-run=\"{run}\"")));
    assert!(
        page.contains("pics &lt;b&gt;&amp;&quot;x"),
        "the name, escaped"
    );
    assert!(!page.contains("<b>&"), "never as markup");

    let (status, page) = server.get("/pipelines/no-such-pipeline");
    assert_eq!(status, 404);
    assert!(page.contains("No such pipeline"));
    let (_, list) = server.get("/");
    assert!(
        list.contains(&format!("href=\"{href}\"")),
        "the run list links the pipeline"
    );
}

/// Where the browser tests keep their screenshots (CI keeps them as
/// artifacts of the run).
fn screenshot_dir() -> std::path::PathBuf {
    let d = pipeline_tests::plugins::target_dir().join("test-artifacts/web");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a real rendering");
    std::fs::write(screenshot_dir().join(name), png).unwrap();
}

/// Run `script` in the page until `probe` takes its answer (60 s).
async fn until<T: std::fmt::Debug>(
    c: &Client,
    what: &str,
    mut probe: impl FnMut(Value) -> Option<T>,
    script: &str,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = c.execute(script, vec![]).await.unwrap_or(Value::Null);
        if let Some(t) = probe(v.clone()) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} did not happen: last {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
        .click()
        .await
        .unwrap();
}

const RELEASE: &str = r#"
[environments.prod]
branch = ["main"]
approval = true

[[stage]]
name = "build"
plugin = "hostile"
with = { attack = "chatty", lines = 12, every-ms = 400 }

[[stage]]
name = "deploy"
plugin = "hostile"
needs = ["build"]
environment = "prod"
with = { attack = "ok" }
"#;

/// A person signs in from the run page, approves the waiting deploy,
/// re-runs the run and cancels the re-run, in headless Chromium; the page
/// of a running run takes new log lines without reloading.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_operator_approves_reruns_and_cancels_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let text = format!(
        "[pipeline]\nname = \"release\"\n\n[plugins]\nhostile = \"{}\"\n{RELEASE}",
        plugin("hostile").display(),
    );
    let sha = repo.push("main", &[("pipeline.toml", &text)]);
    let hash = host::serve::access::password::hash("olga-password").unwrap();
    let users = format!(
        "\n[[user]]\nname = \"olga\"\nroles = [\"operator\"]\napproves = [\"prod\"]\npassword = \"{hash}\"\n"
    );
    let triggers = "[[repository.trigger]]\nevent = \"push\"\nbranch = [\"main\"]\n";
    let cfg = config(&repo.url(), "", "", triggers) + &users;
    // The browser first: the page must be open while the stage still talks.
    let driver = tokio::task::spawn_blocking(chromedriver).await.unwrap();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver.url, profile.path()).await;
    c.set_window_size(1280, 1800).await.unwrap();
    let (dir, server, run) = tokio::task::spawn_blocking(move || {
        let server = Server::start(dir.path(), &cfg);
        let run = server.push("ui-1", "refs/heads/main", &sha);
        server.wait_until(&run, Duration::from_secs(120), "build running", |r| {
            r["stages"].get(0).is_some_and(|s| s["status"] == "running")
        });
        (dir, server, run)
    })
    .await
    .unwrap();
    let page = format!("{}/runs/{run}", server.url);
    c.goto(&page).await.unwrap();
    log_lines_arrive_live(&c).await;
    sign_in_from_the_waiting_run(&c, &page).await;
    approve_with_a_comment(&c).await;
    rerun_then_cancel(&c, &run).await;
    c.close().await.unwrap();
    tokio::task::spawn_blocking(move || drop((server, dir)))
        .await
        .unwrap();
}

const WAITING: &str = "return !!document.querySelector('#stage-graph [data-waiting=approval]');";
const RUN_STATUS: &str =
    "var s = document.querySelector('h1 .status'); return s && s.dataset.status;";

/// Lines arrive while the page stays the same document (a mark set in it
/// survives), until a status change redraws it.
async fn log_lines_arrive_live(c: &Client) {
    let live = r#"
        if (window.__mark === undefined) {
            window.__mark = document.querySelectorAll('#stage-build pre.log span').length;
            return null;
        }
        return [window.__mark, document.querySelectorAll('#stage-build pre.log span').length];
    "#;
    until(
        c,
        "a log line appended without a reload",
        |v| {
            let (at, now) = (v.get(0)?.as_u64()?, v.get(1)?.as_u64()?);
            (now > at).then_some(())
        },
        live,
    )
    .await;
    screenshot(c, "run-live.png").await;
}

/// The deploy waits: the page says so and offers to sign in, and comes
/// back to the run signed in.
async fn sign_in_from_the_waiting_run(c: &Client, page: &str) {
    until(
        c,
        "the deploy marked waiting",
        |v| v.as_bool().filter(|b| *b),
        WAITING,
    )
    .await;
    click(c, "p.act a").await;
    for (field, value) in [("#user", "olga"), ("#password", "olga-password")] {
        c.find(Locator::Css(field))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    click(c, "#sign-in-submit").await;
    assert_eq!(text_of(c, "#signed-in-as").await, "olga");
    assert_eq!(c.current_url().await.unwrap().as_str(), page);
    screenshot(c, "run-waiting-signed-in.png").await;
}

/// Approve with a comment; the run goes on and the page follows it.
async fn approve_with_a_comment(c: &Client) {
    c.find(Locator::Css("form.decide textarea"))
        .await
        .unwrap()
        .send_keys("looks good")
        .await
        .unwrap();
    click(c, "form.decide button[name=approve]").await;
    let success = |v: Value| (v.as_str()? == "success").then_some(());
    until(c, "the run shown successful", success, RUN_STATUS).await;
    assert!(text_of(c, "#stage-deploy p.approval")
        .await
        .contains("approved by olga"));
    for svg in ["#stage-graph svg", "#stage-timeline svg"] {
        let e = c.find(Locator::Css(svg)).await.unwrap();
        assert!(e.is_displayed().await.unwrap(), "{svg}");
    }
    screenshot(c, "run-approved.png").await;
}

/// Re-run: a new run of the same commit, linked to this one; once it
/// waits for its approval (the page follows it), cancel it.
async fn rerun_then_cancel(c: &Client, run: &str) {
    click(c, "#rerun").await;
    let old = format!("/runs/{run}");
    let again = until(
        c,
        "the re-run's page",
        |v| Some(v.as_str()?.to_string()).filter(|p| *p != old),
        "return location.pathname;",
    )
    .await;
    until(
        c,
        "the re-run waiting",
        |v| v.as_bool().filter(|b| *b),
        WAITING,
    )
    .await;
    assert!(text_of(c, "dl.meta").await.contains(run));
    click(c, "#cancel-run").await;
    let cancelled = |v: Value| (v.as_str()? == "cancelled").then_some(());
    until(c, "the re-run shown cancelled", cancelled, RUN_STATUS).await;
    assert!(text_of(c, "p.reason").await.contains("cancelled by olga"));
    assert!(c.current_url().await.unwrap().path().ends_with(&again));
    screenshot(c, "rerun-cancelled.png").await;
}
