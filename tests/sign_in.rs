//! Signing in to `host serve`'s pages and acting through their forms,
//! attacked over HTTP: no session without the password, guessing slowed,
//! no form taken without its session's CSRF token or from another site,
//! roles held, reading closed when the server says so, and whatever a
//! pusher wrote shown as text.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pipeline_tests::serve::{
    config, hostile_pipeline as pipeline, push_payload, GitRepo, Server, APPROVED_DEPLOY as DEPLOY,
    SECRET,
};
use serde_json::Value;

const RUN: Duration = Duration::from_secs(120);

const PUSH: &str = r#"
[[repository.trigger]]
event = "push"
branch = ["main", "feature/**"]
"#;

/// olga operates, pat approves `prod`, vic only reads; each signs in with
/// `NAME-password`; olga also has the API token `tok-olga`.
fn users() -> String {
    let hash = |p: &str| host::serve::access::password::hash(p).unwrap();
    format!(
        r#"
[[user]]
name = "olga"
roles = ["operator"]
password = "{}"
tokens = ["sha256:{}"]

[[user]]
name = "pat"
approves = ["prod"]
password = "{}"

[[user]]
name = "vic"
password = "{}"
"#,
        hash("olga-password"),
        host::digest::sha256_hex(b"tok-olga"),
        hash("pat-password"),
        hash("vic-password"),
    )
}

/// A browser, as far as the server can tell: cookies kept, redirects not
/// followed, an `Origin` on every POST.
struct Browser {
    base: String,
    http: reqwest::blocking::Client,
    cookies: HashMap<String, String>,
    /// The `Set-Cookie` lines of the last answer.
    set_cookies: Vec<String>,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new(server: &Server) -> Self {
        Self {
            base: server.url.clone(),
            http: reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    fn send(&mut self, req: reqwest::blocking::RequestBuilder) -> Answer {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let req = if cookie.is_empty() {
            req
        } else {
            req.header("Cookie", cookie.join("; "))
        };
        let resp = req.send().unwrap();
        self.set_cookies = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for line in &self.set_cookies {
            let (kv, attrs) = line.split_once(';').unwrap_or((line, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.into(), v.into());
            }
        }
        Answer {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string()),
            body: resp.text().unwrap(),
        }
    }

    fn get(&mut self, path: &str) -> Answer {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req)
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Answer {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        self.send(req)
    }

    /// POST a page's form, from the page.
    fn submit(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let origin = self.base.clone();
        self.post(path, form, Some(&origin))
    }

    fn sign_in(&mut self, user: &str, password: &str, next: &str) -> Answer {
        let page = self.get(&format!("/sign-in?next={next}"));
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = hidden(&page.body, "csrf");
        let next = hidden(&page.body, "next");
        self.submit(
            "/sign-in",
            &[
                ("user", user),
                ("password", password),
                ("csrf", &csrf),
                ("next", &next),
            ],
        )
    }
}

/// The value of a page's hidden field `name` (maud writes `name="…" value="…"`).
fn hidden(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no hidden `{name}` in {page}"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// A server whose runs are for signed-in users, its state in `dir`.
fn closed_server(dir: &std::path::Path) -> Server {
    let repo = GitRepo::new(dir);
    repo.push("main", &[("pipeline.toml", &pipeline("closed", DEPLOY))]);
    let mut cfg = config(&repo.url(), "read = \"signed-in\"", "", PUSH);
    cfg.push_str(&users());
    Server::start(dir, &cfg)
}

#[test]
fn signing_in_takes_the_password_and_a_session_ends_with_signing_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = closed_server(dir.path());
    let mut b = Browser::new(&server);

    // Closed to strangers: pages send them to sign in, the API and
    // metrics answer 401; health and the sign-in page stay open.
    let a = b.get("/runs/x?y=1");
    assert_eq!(a.status, 303);
    assert_eq!(
        a.location.as_deref(),
        Some("/sign-in?next=%2Fruns%2Fx%3Fy%3D1")
    );
    for path in ["/api/runs", "/api/runs/x/events", "/metrics"] {
        assert_eq!(b.get(path).status, 401, "{path}");
    }
    assert_eq!(b.get("/healthz").status, 200);
    // Every answer forbids framing and any script but the live page's own.
    let resp = reqwest::blocking::get(format!("{}/sign-in", server.url)).unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let with_token = reqwest::blocking::Client::new()
        .get(format!("{}/api/runs", server.url))
        .bearer_auth("tok-olga")
        .send()
        .unwrap();
    assert_eq!(with_token.status(), 200, "a token reads");

    // A sign-in form is taken only with the cookie of the page it came
    // from, and only from this server's page.
    let page = b.get("/sign-in?next=/api/runs");
    let csrf = hidden(&page.body, "csrf");
    let mut stranger = Browser::new(&server);
    let a = stranger.submit(
        "/sign-in",
        &[
            ("user", "olga"),
            ("password", "olga-password"),
            ("csrf", &csrf),
        ],
    );
    assert_eq!(a.status, 403, "no form cookie: {}", a.body);
    let a = b.post(
        "/sign-in",
        &[
            ("user", "olga"),
            ("password", "olga-password"),
            ("csrf", &csrf),
        ],
        Some("http://evil.example"),
    );
    assert_eq!(a.status, 403, "another site's form");

    // Wrong passwords and unknown names get the same answer.
    for (user, pw) in [("olga", "guess"), ("nobody", "olga-password")] {
        let a = b.sign_in(user, pw, "/");
        assert_eq!(a.status, 401, "{user}");
        assert!(a.body.contains("wrong name or password"), "{}", a.body);
        assert!(!b.cookies.keys().any(|k| k.contains("session")));
    }

    // The right one: a session cookie (HttpOnly, SameSite=Strict, Secure,
    // `__Host-`), and on to where the browser was going.
    let a = b.sign_in("olga", "olga-password", "/api/runs");
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.location.as_deref(), Some("/api/runs"));
    let set = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("__Host-pipeline-session="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert_eq!(b.get("/api/runs").status, 200, "the session reads");
    let list = b.get("/");
    assert!(
        list.body.contains("id=\"signed-in-as\">olga<"),
        "{}",
        list.body
    );

    // Signing out needs the session's CSRF token, and ends the session.
    let session = b.cookies["__Host-pipeline-session"].clone();
    assert_eq!(b.submit("/sign-out", &[("csrf", "forged")]).status, 403);
    let token = hidden(&list.body, "csrf");
    assert_eq!(b.submit("/sign-out", &[("csrf", &token)]).status, 303);
    assert_eq!(b.get("/").status, 303, "signed out");
    let mut replay = Browser::new(&server);
    replay
        .cookies
        .insert("__Host-pipeline-session".into(), session);
    assert_eq!(
        replay.get("/api/runs").status,
        401,
        "the old cookie is dead"
    );
}

/// Guessing: after three failures an account waits, even for the right
/// password, and is told how long; another account is not held back.
#[test]
fn guessing_passwords_is_slowed() {
    let dir = tempfile::tempdir().unwrap();
    let server = closed_server(dir.path());
    let mut guesser = Browser::new(&server);
    for i in 0..4 {
        let a = guesser.sign_in("pat", &format!("guess-{i}"), "/");
        assert_eq!(a.status, 401, "guess {i}");
    }
    let a = guesser.sign_in("pat", "pat-password", "/");
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.body.contains("too many failed sign-ins"), "{}", a.body);
    assert_eq!(guesser.sign_in("vic", "vic-password", "/").status, 303);
    // The server logged the failures, never a password.
    let log = server.wait_log("sign-in refused", Duration::from_secs(5));
    assert!(!log.contains("pat-password"), "{log}");
}

/// The run page's forms: the buttons a role may use, CSRF held, and the
/// action done as the API would do it.
#[test]
fn the_forms_of_a_run_page_act_for_their_session_only() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let sha = repo.push("main", &[("pipeline.toml", &pipeline("forms", DEPLOY))]);
    let mut cfg = config(&repo.url(), "", "", PUSH);
    cfg.push_str(&users());
    let server = Server::start(dir.path(), &cfg);
    let run = server.push("f-1", "refs/heads/main", &sha);
    wait_for_approval(&server, &run);
    let page = format!("/runs/{run}");
    let approve = format!("/runs/{run}/stages/deploy/approve");

    // Public reading: a stranger sees the run and a way to sign in, no form.
    let mut stranger = Browser::new(&server);
    let a = stranger.get(&page);
    assert_eq!(a.status, 200);
    assert!(a.body.contains("to act on this run"), "{}", a.body);
    assert!(!a.body.contains("/approve\""));
    assert_eq!(stranger.submit(&approve, &[("csrf", "x")]).status, 401);

    // vic reads only: no button, and the form refused if forged.
    let mut vic = Browser::new(&server);
    assert_eq!(vic.sign_in("vic", "vic-password", &page).status, 303);
    let a = vic.get(&page);
    assert!(!a.body.contains("/approve\"") && !a.body.contains("id=\"cancel-run\""));
    let csrf = hidden(&a.body, "csrf");
    let a = vic.submit(&approve, &[("csrf", &csrf)]);
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("may not decide on deployments to `prod`"));

    // pat approves prod: the form is there; without its token, or from
    // another site, or with vic's token, it is refused.
    let mut pat = Browser::new(&server);
    assert_eq!(pat.sign_in("pat", "pat-password", &page).status, 303);
    let a = pat.get(&page);
    assert!(
        a.body.contains(&format!("action=\"{approve}\"")),
        "{}",
        a.body
    );
    let csrf = hidden(&a.body, "csrf");
    assert_eq!(pat.submit(&approve, &[]).status, 403, "no token");
    assert_eq!(pat.submit(&approve, &[("csrf", "forged")]).status, 403);
    let vic_csrf = hidden(&vic.get(&page).body, "csrf");
    assert_eq!(pat.submit(&approve, &[("csrf", &vic_csrf)]).status, 403);
    let evil = pat.post(&approve, &[("csrf", &csrf)], Some("http://evil.example"));
    assert_eq!(evil.status, 403, "cross-site");
    let comment = "<script>alert(1)</script> ship it";
    let a = pat.submit(&approve, &[("csrf", &csrf), ("comment", comment)]);
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.location.as_deref(), Some(page.as_str()));
    let r = server.wait_run(&run, RUN);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["stages"][0]["approval"]["by"], "pat");
    assert_eq!(r["stages"][0]["approval"]["comment"], comment);
    let shown = pat.get(&page).body;
    assert!(shown.contains("&lt;script&gt;alert(1)&lt;/script&gt; ship it"));
    assert!(!shown.contains("<script>alert(1)"));

    // olga re-runs it from the page; the new run waits; she cancels it.
    let mut olga = Browser::new(&server);
    assert_eq!(olga.sign_in("olga", "olga-password", &page).status, 303);
    let csrf = hidden(&olga.get(&page).body, "csrf");
    assert_eq!(
        pat.submit(
            &format!("/runs/{run}/rerun"),
            &[("csrf", &hidden(&shown, "csrf"))]
        )
        .status,
        403
    );
    // The button that runs every stage again, none from the cache.
    assert!(olga.get(&page).body.contains("id=\"rerun-no-cache\""));
    let a = olga.submit(
        &format!("/runs/{run}/rerun"),
        &[("csrf", &csrf), ("no_cache", "1")],
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let again = a
        .location
        .unwrap()
        .strip_prefix("/runs/")
        .unwrap()
        .to_string();
    assert_ne!(again, run);
    wait_for_approval(&server, &again);
    let a = olga.get(&format!("/runs/{again}"));
    assert!(a.body.contains("re-run of"), "{}", a.body);
    assert!(a.body.contains("without the stage cache"), "{}", a.body);
    assert!(a.body.contains("id=\"cancel-run\""));
    let a = olga.submit(&format!("/runs/{again}/cancel"), &[("csrf", &csrf)]);
    assert_eq!(a.status, 303, "{}", a.body);
    let r = server.wait_run(&again, RUN);
    assert_eq!(r["status"], "cancelled");
    assert_eq!(r["reason"], "cancelled by olga");
    assert_eq!(r["trigger"]["no_cache"], true, "{r}");
    let v = server.get_json(&format!("/api/runs/{run}"));
    let who: Vec<(&str, &str)> = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["who"].as_str().unwrap(), a["action"].as_str().unwrap()))
        .collect();
    assert_eq!(who, [("pat", "approved"), ("olga", "rerun")]);
}

/// Until the run's page marks its deploy as waiting for an approval.
fn wait_for_approval(server: &Server, run: &str) {
    let deadline = Instant::now() + RUN;
    while !server
        .get(&format!("/runs/{run}"))
        .1
        .contains("data-waiting=\"approval\"")
    {
        assert!(Instant::now() < deadline, "{run} never waited for approval");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A branch name and a commit message full of markup are text on the run
/// list, the run page and the pipeline page.
#[test]
fn what_a_pusher_wrote_is_text_on_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let ok = "[[stage]]\nname = \"s\"\nplugin = \"hostile\"\nwith = { attack = \"ok\" }\n";
    let sha = repo.push("main", &[("pipeline.toml", &pipeline("xss", ok))]);
    let server = Server::start(dir.path(), &config(&repo.url(), "", "", PUSH));
    let branch = "feature/<svg/onload=alert(1)>";
    let mut payload: Value =
        serde_json::from_slice(&push_payload(&format!("refs/heads/{branch}"), &sha)).unwrap();
    payload["head_commit"]["message"] = "<script>alert('msg')</script>".into();
    let body = serde_json::to_vec(&payload).unwrap();
    let (status, v) = server.deliver("push", "x-1", &body, Some(SECRET));
    assert_eq!(status, 202, "{v}");
    let run = v["queued"][0].as_str().unwrap().to_string();
    server.wait_run(&run, RUN);
    for path in [
        "/".to_string(),
        format!("/runs/{run}"),
        "/pipelines/xss".into(),
    ] {
        let (status, page) = server.get(&path);
        assert_eq!(status, 200, "{path}");
        assert!(!page.contains("<svg/onload"), "{path}: {page}");
        assert!(!page.contains("<script>alert('msg')"), "{path}: {page}");
    }
    let (_, page) = server.get(&format!("/runs/{run}"));
    assert!(page.contains("&lt;svg/onload=alert(1)&gt;"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert('msg')&lt;/script&gt;"),
        "{page}"
    );
}
