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

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element `{css}`: {e}"))
        .text()
        .await
        .unwrap()
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
