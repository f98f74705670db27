//! The capability against real HTTP servers on 127.0.0.1: what reaches
//! them, and what the plugin, the log and the audit trail get to see.
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::caps::audit::AuditEntry;
use crate::caps::secrets::SecretStore;
use crate::grants::url::UrlPattern;

/// Every request head a server got.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn heads(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn paths(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.split(' ').nth(1).unwrap_or("").to_string())
            .collect()
    }
}

/// A plain HTTP/1.1 server: `/redirect` answers `status` to `location`,
/// everything else 200 "ok". Runs until the test ends.
async fn server(redirect: Option<(u16, String)>) -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            let redirect = redirect.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let head = head.split("\r\n\r\n").next().unwrap().to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                s.0.lock().unwrap().push(head);
                let answer = match &redirect {
                    Some((status, to)) if path.starts_with("/services/redirect") => format!(
                        "HTTP/1.1 {status} Moved\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    _ => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        .to_string(),
                };
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

const SECRET_MARK: &str = "sekrit";

/// A stage granted `http` patterns and secrets `x` (use only) whose
/// value is `value`, with its audit trail.
fn cap(patterns: &[&str], value: &str) -> (HttpCap, Audit) {
    let store = Arc::new(SecretStore::from_values([
        ("x".to_string(), value.to_string()),
        ("tok".to_string(), format!("{SECRET_MARK}-token")),
    ]));
    let audit = Audit::new(store.masker().clone(), 1);
    let secrets = Arc::new(SecretsCap::new(
        "s",
        vec!["x".into(), "tok".into()],
        vec![],
        store,
    ));
    let allow = UrlAllowlist::new(patterns.iter().map(|p| UrlPattern::parse(p).unwrap()));
    let cap = HttpCap::new(
        "s",
        allow,
        HttpCap::client(),
        HttpLimits::default(),
        secrets,
    )
    .with_audit(audit.clone());
    (cap, audit)
}

fn get(url: &str) -> Request {
    Request {
        method: "GET".into(),
        url: url.into(),
        headers: vec![],
        body: None,
        timeout_ms: Some(5_000),
    }
}

/// Log lines written while a test runs (every target, every level).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let w = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

/// Send as the plugin does (through the WIT entry point) and return what
/// the plugin gets back, as text.
async fn call(cap: &mut HttpCap, req: Request) -> (Result<Response, CapError>, String) {
    let r = Host::send(cap, req).await.unwrap();
    let text = match &r {
        Ok(resp) => format!(
            "{} {:?} {}",
            resp.status,
            resp.headers,
            String::from_utf8_lossy(&resp.body)
        ),
        Err(e) => format!("{e:?} {}", crate::caps::describe(e)),
    };
    (r, text)
}

fn assert_hidden(what: &str, text: &str) {
    assert!(
        !text.to_lowercase().contains(SECRET_MARK),
        "{what} shows the secret: {text}"
    );
}

fn audit_text(a: &Audit) -> String {
    serde_json::to_string(&a.entries()).unwrap()
}

/// The issue's leak (`a${secret:X}:` came back as `unsupported URL scheme
/// \`a<value>\``) and its variants: wherever the secret sits and whatever
/// its value holds, the plugin, the log and the audit never see it, and
/// nothing reaches a path or host outside the grant.
#[tokio::test]
async fn a_use_only_secret_is_never_shown_wherever_it_sits() {
    let (addr, seen) = server(None).await;
    let logs = Logs::default();
    let _guard = logs.install();
    let grant = "http://127.0.0.1:*/services/*";
    let values = [
        SECRET_MARK.to_string(),
        format!("{SECRET_MARK}@evil.example"),
        format!("evil.example/{SECRET_MARK}@127.0.0.1:{}", addr.port()),
        format!("{SECRET_MARK}/../../admin"),
        format!("{SECRET_MARK}%2F..%2F..%2Fadmin"),
        format!("{SECRET_MARK}#/services/"),
        format!("{SECRET_MARK}?/services/"),
        format!("{SECRET_MARK}\r\nHost: evil.example"),
        format!("{SECRET_MARK}\n"),
        format!("{SECRET_MARK} x"),
        format!("{}:{SECRET_MARK}", addr.ip()),
        format!("http://127.0.0.1:{}/admin?{SECRET_MARK}", addr.port()),
        format!("{SECRET_MARK}\u{1b}[2J"),
    ];
    let port = addr.port();
    let templates = [
        "a${secret:x}:".to_string(),
        "${secret:x}".to_string(),
        "${secret:x}://127.0.0.1/services/x".to_string(),
        "http${secret:x}://127.0.0.1/services/x".to_string(),
        "http://${secret:x}/services/x".to_string(),
        format!("http://127.0.0.1:{port}${{secret:x}}/services/x"),
        "http://127.0.0.1:${secret:x}/services/x".to_string(),
        format!("http://${{secret:x}}@127.0.0.1:{port}/services/x"),
        format!("http://u:${{secret:x}}@127.0.0.1:{port}/services/x"),
        format!("http://127.0.0.1:{port}/${{secret:x}}/services/x"),
        format!("http://127.0.0.1:{port}/services/../${{secret:x}}"),
        format!("http://127.0.0.1:{port}/admin?${{secret:x}}"),
        format!("http://127.0.0.1:{port}/admin#${{secret:x}}"),
        format!("http://127.0.0.1:{port}/admin/${{secret:x}}"),
        format!("http://127.0.0.1:{port}/services/${{secret:x}}"),
    ];
    for value in &values {
        for t in &templates {
            let (mut cap, audit) = cap(&[grant], value);
            let (r, text) = call(&mut cap, get(t)).await;
            assert_hidden(&format!("{t} with {value:?}: the answer"), &text);
            assert_hidden(
                &format!("{t} with {value:?}: the audit"),
                &audit_text(&audit),
            );
            if let Err(CapError::Denied(d)) = &r {
                assert_eq!(d.target, *t, "a denial names the URL as written");
            }
        }
        // In a header value and in the body: sent to the granted URL, never
        // shown. In the method or a header name: refused, never expanded.
        let ok = format!("http://127.0.0.1:{port}/services/ok");
        for req in [
            Request {
                headers: vec![("X-Token".into(), "${secret:x}".into())],
                ..get(&ok)
            },
            Request {
                headers: vec![("${secret:x}".into(), "v".into())],
                ..get(&ok)
            },
            Request {
                method: "${secret:x}".into(),
                ..get(&ok)
            },
            Request {
                method: "POST".into(),
                body: Some(b"token=${secret:x}".to_vec()),
                ..get(&ok)
            },
        ] {
            let (mut cap, audit) = cap(&[grant], value);
            let (_, text) = call(&mut cap, req.clone()).await;
            assert_hidden(&format!("{req:?} with {value:?}: the answer"), &text);
            assert_hidden("the audit", &audit_text(&audit));
        }
    }
    assert_hidden("the log", &logs.text());
    for p in seen.paths() {
        assert!(p.starts_with("/services/"), "a request left the grant: {p}");
    }
    for h in seen.heads() {
        let h = h.to_lowercase();
        assert!(!h.contains("\nhost: evil"), "a header was injected: {h}");
    }
    assert!(
        seen.paths().iter().any(|p| p.contains(SECRET_MARK)),
        "the control: a secret in an allowed path is sent"
    );
}

/// The exact case of the issue, spelled out.
#[tokio::test]
async fn a_secret_in_the_scheme_is_not_echoed() {
    let (mut cap, _) = cap(&["http://127.0.0.1:*/services/*"], "tok-7a1b2c3d");
    let (r, text) = call(&mut cap, get("a${secret:x}:")).await;
    assert!(!text.contains("7a1b2c3d"), "{text}");
    match r {
        Err(CapError::Denied(d)) => assert_eq!(d.target, "a${secret:x}:"),
        other => panic!("{other:?}"),
    }
}

/// A template whose scheme, host and port are written out is refused
/// before its secrets are expanded (an unavailable secret is never read).
#[tokio::test]
async fn a_written_out_origin_is_checked_before_expansion() {
    let store = Arc::new(SecretStore::default());
    let secrets = Arc::new(SecretsCap::new("s", vec!["x".into()], vec![], store));
    let allow = UrlAllowlist::new([UrlPattern::parse("http://127.0.0.1:*/services/*").unwrap()]);
    let mut cap = HttpCap::new(
        "s",
        allow,
        HttpCap::client(),
        HttpLimits::default(),
        secrets,
    );
    // `x` is granted but has no value: expanding it would fail with
    // "not declared"; the denial comes first.
    let (r, _) = call(&mut cap, get("http://evil.example/services/${secret:x}")).await;
    assert!(matches!(r, Err(CapError::Denied(_))), "{r:?}");
    let (r, _) = call(&mut cap, get("http://127.0.0.1:1/services/${secret:x}")).await;
    assert!(
        matches!(&r, Err(CapError::Failed(m)) if m.contains("`x`")),
        "{r:?}"
    );
}

/// `http://127.0.0.1:*/services/*` against a real server: only
/// `/services/…` on that host is ever requested.
#[tokio::test]
async fn the_grant_means_what_it_looks_like() {
    let (addr, seen) = server(None).await;
    let port = addr.port();
    let (other, other_seen) = server(None).await;
    let grant_any_port = "http://127.0.0.1:*/services/*";
    let exact_port = format!("http://127.0.0.1:{port}/services/*");
    let base = format!("http://127.0.0.1:{port}");
    for url in [
        format!("{base}/admin/secret?x=/services/y"),
        format!("{base}/admin#/services/"),
        format!("{base}/services/../admin"),
        format!("{base}/services/%2e%2e/admin"),
        format!("{base}/services/..%2Fadmin"),
        format!("{base}/servicesx"),
        format!("http://127.0.0.1:{port}@localhost:{port}/services/x"),
        format!("http://localhost:{port}@127.0.0.1:{port}/services/x"),
        format!("http://localhost:{port}/services/x"),
        format!("http://[::1]:{port}/services/x"),
        format!("http://2130706434:{port}/services/x"),
        format!("http://0x7f000002:{port}/services/x"),
        format!("https://127.0.0.1:{port}/services/x"),
    ] {
        let (mut cap, _) = cap(&[grant_any_port], "unused-secret-value");
        let (r, _) = call(&mut cap, get(&url)).await;
        assert!(matches!(r, Err(CapError::Denied(_))), "{url}: {r:?}");
    }
    // Another port when the grant names one.
    let (mut c, _) = cap(&[&exact_port], "unused-secret-value");
    let (r, _) = call(
        &mut c,
        get(&format!("http://127.0.0.1:{}/services/x", other.port())),
    )
    .await;
    assert!(matches!(r, Err(CapError::Denied(_))), "{r:?}");
    assert!(other_seen.heads().is_empty());
    // The control: inside the grant, the request is made (with the host
    // written as a number too: it is the same host).
    for (grant, url) in [
        (grant_any_port, format!("{base}/services/x")),
        (&exact_port, format!("{base}/services/y?z=/admin")),
        (
            grant_any_port,
            format!("http://2130706433:{port}/services/z"),
        ),
    ] {
        let (mut c, _) = cap(&[grant], "unused-secret-value");
        let (r, _) = call(&mut c, get(&url)).await;
        assert_eq!(r.map(|r| r.status).ok(), Some(200), "{url}");
    }
    assert_eq!(
        seen.paths(),
        ["/services/x", "/services/y?z=/admin", "/services/z"]
    );
}

#[tokio::test]
async fn headers_the_host_sets_are_refused() {
    let (addr, seen) = server(None).await;
    let url = format!("http://127.0.0.1:{}/services/x", addr.port());
    for (k, v) in [
        ("Host", "evil.example"),
        ("host", "evil.example"),
        ("Proxy-Authorization", "Basic x"),
        ("Connection", "close, X-Token"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Token"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Content-Length", "0"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "10.0.0.1"),
        ("X-Ok", "a\r\nHost: evil.example"),
        ("X-Ok", "a\nb"),
        ("X-Ok\r\nHost", "evil.example"),
        ("X-Ok\n", "v"),
        ("X Ok", "v"),
    ] {
        let (mut c, _) = cap(&["http://127.0.0.1:*/services/*"], "unused-secret-value");
        let req = Request {
            headers: vec![(k.into(), v.into())],
            ..get(&url)
        };
        let (r, text) = call(&mut c, req).await;
        assert!(matches!(r, Err(CapError::Invalid(_))), "{k}: {r:?}");
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
    }
    assert!(seen.heads().is_empty(), "{:?}", seen.heads());
    // The control: another header goes through.
    let (mut c, _) = cap(&["http://127.0.0.1:*/services/*"], "unused-secret-value");
    let req = Request {
        headers: vec![("X-Ok".into(), "fine".into())],
        ..get(&url)
    };
    assert_eq!(call(&mut c, req).await.0.unwrap().status, 200);
    assert!(seen.heads()[0].to_lowercase().contains("x-ok: fine"));
    assert!(seen.heads()[0]
        .to_lowercase()
        .contains(&format!("host: 127.0.0.1:{}", addr.port())));
}

/// A target with a raw newline is refused, and its audit entry shows the
/// whole target, escaped, on one line.
#[tokio::test]
async fn a_url_with_a_newline_is_refused_and_audited_escaped() {
    let (addr, seen) = server(None).await;
    let logs = Logs::default();
    let _guard = logs.install();
    let url = format!(
        "http://127.0.0.1:{}/services/x\nHost: evil.example\r\n\r\nGET /admin",
        addr.port()
    );
    let (mut c, audit) = cap(&["http://127.0.0.1:*/services/*"], "unused-secret-value");
    let (r, _) = call(&mut c, get(&url)).await;
    assert!(
        matches!(&r, Err(CapError::Invalid(m)) if m.contains("raw line break")),
        "{r:?}"
    );
    let e: Vec<AuditEntry> = audit.entries();
    assert_eq!(
        e[0].target,
        format!(
            "GET http://127.0.0.1:{}/services/x\\nHost: evil.example\\r\\n\\r\\nGET /admin",
            addr.port()
        )
    );
    assert!(e[0].outcome.contains("raw line break"), "{:?}", e[0]);
    // A tab or escape character is refused too (a URL parser drops tabs).
    for bad in ["\t", "\u{1b}[2J", "\0"] {
        let (mut c, audit) = cap(&["http://127.0.0.1:*/services/*"], "unused-secret-value");
        let u = format!("http://127.0.0.1:{}/services/{bad}x", addr.port());
        let (r, _) = call(&mut c, get(&u)).await;
        assert!(matches!(r, Err(CapError::Invalid(_))), "{bad:?}: {r:?}");
        assert!(!audit.entries()[0].target.contains(bad));
    }
    assert!(seen.heads().is_empty());
    assert!(
        !logs.text().contains("evil.example\r") && !logs.text().contains("x\nHost"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn redirects_are_matched_with_the_same_patterns() {
    let (target, target_seen) = server(None).await;
    let outside = format!("http://127.0.0.1:{}/admin", target.port());
    let (redirector, _) = server(Some((302, outside))).await;
    let grant = "http://127.0.0.1:*/services/*";
    let (mut c, _) = cap(&[grant], "unused-secret-value");
    let url = format!("http://127.0.0.1:{}/services/redirect", redirector.port());
    let (r, _) = call(&mut c, get(&url)).await;
    match r {
        Err(CapError::Denied(d)) => assert!(d.target.contains("redirect from"), "{d:?}"),
        other => panic!("{other:?}"),
    }
    // From a templated URL: only the template is named.
    let (mut c, _) = cap(&[grant], "redirect");
    let url = format!(
        "http://127.0.0.1:{}/services/${{secret:x}}",
        redirector.port()
    );
    let (r, _) = call(&mut c, get(&url)).await;
    match r {
        Err(CapError::Denied(d)) => {
            assert_eq!(d.target, format!("{url} (redirected outside the grant)"))
        }
        other => panic!("{other:?}"),
    }
    assert!(target_seen.heads().is_empty());
}

/// Across origins, headers that carried a secret and credentials are not
/// sent on, and a body that carried a secret is not resent.
#[tokio::test]
async fn secrets_stay_with_their_origin_across_redirects() {
    let (b, b_seen) = server(None).await;
    let (a, a_seen) = server(Some((
        307,
        format!("http://localhost:{}/services/landed", b.port()),
    )))
    .await;
    let grants = [
        "http://127.0.0.1:*/services/*",
        "http://localhost:*/services/*",
    ];
    let (mut c, _) = cap(&grants, "unused-secret-value");
    let req = Request {
        headers: vec![
            ("X-Token".into(), "${secret:tok}".into()),
            ("Authorization".into(), "Bearer plain".into()),
            ("X-Plain".into(), "kept".into()),
        ],
        ..get(&format!("http://127.0.0.1:{}/services/redirect", a.port()))
    };
    let (r, _) = call(&mut c, req).await;
    assert_eq!(r.unwrap().status, 200);
    assert!(a_seen.heads()[0].contains("sekrit-token"), "the control");
    let landed = b_seen.heads()[0].to_lowercase();
    assert!(!landed.contains(SECRET_MARK), "{landed}");
    assert!(!landed.contains("authorization"), "{landed}");
    assert!(landed.contains("x-plain: kept"), "{landed}");

    let (mut c, _) = cap(&grants, "unused-secret-value");
    let req = Request {
        method: "POST".into(),
        body: Some(b"token=${secret:tok}".to_vec()),
        ..get(&format!("http://127.0.0.1:{}/services/redirect", a.port()))
    };
    let (r, _) = call(&mut c, req).await;
    assert!(
        matches!(&r, Err(CapError::Failed(m)) if m.contains("body that carries secrets")),
        "{r:?}"
    );
    assert_eq!(b_seen.heads().len(), 1, "the body was not resent");
}

/// Client errors are described by kind, without the expanded URL.
#[tokio::test]
async fn client_errors_name_the_template() {
    // Nothing listens on port 1.
    let (mut c, _) = cap(&["http://127.0.0.1:*/services/*"], SECRET_MARK);
    let (r, text) = call(&mut c, get("http://127.0.0.1:1/services/${secret:x}")).await;
    match r {
        Err(CapError::Failed(m)) => assert_eq!(
            m,
            "request to http://127.0.0.1:1/services/${secret:x}: could not connect (connection refused)"
        ),
        other => panic!("{other:?}"),
    }
    assert_hidden("the answer", &text);
}
