//! The proxy on loopback in front of small fake upstreams.

use super::*;
use std::io::BufRead;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// A fake upstream: answers `name` (Content-Length), `/chunked` with a
/// chunked body, `/slow?ms=N` after a delay, echoes POST bodies, `/close`
/// closes without answering. Counts requests.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

fn upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let h = h.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                let Ok(Some(head)) = http::read_head(&mut r) else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                assert!(head.has_token("connection", "close"), "{head:?}");
                let line = http::parse_request_line(&head.start).unwrap();
                let mut body = Vec::new();
                match http::request_framing(&head) {
                    Ok(Framing::Length(n)) => {
                        (&mut r).take(n).read_to_end(&mut body).unwrap();
                    }
                    Ok(Framing::Chunked) => {
                        http::copy_chunked(&mut r, &mut body).unwrap();
                        body = dechunk(&String::from_utf8(body).unwrap()).into_bytes();
                    }
                    _ => {}
                }
                let target = line.target.as_str();
                if target == "/close" {
                    return;
                }
                if let Some(ms) = target.strip_prefix("/slow?ms=") {
                    thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                }
                let resp = if target == "/chunked" {
                    format!(
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{name}\r\n3\r\n-ok\r\n0\r\n\r\n",
                        name.len()
                    )
                } else {
                    let text = if body.is_empty() {
                        name.to_string()
                    } else {
                        format!("{name}:{}", String::from_utf8_lossy(&body))
                    };
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\nX-Up: {name}\r\n\r\n{text}",
                        text.len()
                    )
                };
                let _ = w.write_all(resp.as_bytes());
            });
        }
    });
    Upstream { addr, hits }
}

fn proxy(pool: Arc<Pool>) -> (SocketAddr, SocketAddr) {
    spawn("127.0.0.1:0", "127.0.0.1:0", pool, Timeouts::default()).unwrap()
}

/// A keep-alive client: sends requests on one connection, reads responses.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn send(&mut self, raw: &str) -> (u16, Head, String) {
        self.w.write_all(raw.as_bytes()).unwrap();
        let head = http::read_head(&mut self.r).unwrap().expect("a response");
        let status = http::parse_status(&head.start).unwrap();
        let method = raw.split(' ').next().unwrap();
        let framing = http::response_framing(method, status, &head).unwrap();
        let mut body = Vec::new();
        http::copy_body(&mut self.r, &mut body, framing).unwrap();
        let mut text = String::from_utf8(body).unwrap();
        if framing == Framing::Chunked {
            text = dechunk(&text);
        }
        (status, head, text)
    }

    fn get(&mut self, path: &str) -> (u16, String) {
        let (s, _, b) = self.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        (s, b)
    }

    fn closed(&mut self) -> bool {
        let mut buf = Vec::new();
        matches!(self.r.read_until(b'\n', &mut buf), Ok(0))
    }
}

/// The data of a (small, well-formed) chunked body.
fn dechunk(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

fn admin(addr: SocketAddr, method: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} /pool HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let head = http::read_head(&mut r).unwrap().unwrap();
    let mut text = String::new();
    r.read_to_string(&mut text).unwrap();
    (
        http::parse_status(&head.start).unwrap(),
        serde_json::from_str(&text).unwrap(),
    )
}

fn put_pool(addr: SocketAddr, ups: &[SocketAddr]) -> serde_json::Value {
    let list: Vec<String> = ups.iter().map(|a| a.to_string()).collect();
    let (status, v) = admin(
        addr,
        "PUT",
        &serde_json::json!({ "upstreams": list }).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn empty_pool_answers_503_and_keeps_the_connection() {
    let (traffic, _) = proxy(Arc::new(Pool::default()));
    let mut c = Client::new(traffic);
    assert_eq!(c.get("/").0, 503);
    assert_eq!(c.get("/").0, 503, "connection still usable");
}

#[test]
fn keep_alive_client_follows_a_switch_on_the_next_request() {
    let (a, b) = (upstream("blue"), upstream("green"));
    let pool = Arc::new(Pool::default());
    let (traffic, adm) = proxy(pool);
    put_pool(adm, &[a.addr]);
    let mut c = Client::new(traffic);
    assert_eq!(c.get("/"), (200, "blue".into()));
    assert_eq!(c.get("/"), (200, "blue".into()));
    let v = put_pool(adm, &[b.addr]);
    assert_eq!(v["version"], 2);
    assert_eq!(c.get("/"), (200, "green".into()), "same connection");
    assert_eq!(c.get("/chunked"), (200, "green-ok".into()));
    let (s, head, body) = c.send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((s, body.as_str()), (200, "green:hello"));
    assert_eq!(head.header("x-up"), Some("green"));
    assert_eq!(head.header("connection"), Some("keep-alive"));
    let (s, _, body) = c.send(
        "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    assert_eq!(
        (s, body.as_str()),
        (200, "green:hi"),
        "chunked request body relayed"
    );
    let (s, head, body) = c.send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((s, body.as_str()), (200, ""));
    assert_eq!(head.header("content-length"), Some("5"));
    assert_eq!(a.hits.load(Ordering::SeqCst), 2);
    // Connection: close from the client is honoured.
    let (_, head, _) = c.send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(head.header("connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn round_robin_over_the_pool() {
    let (a, b) = (upstream("a"), upstream("b"));
    let (traffic, adm) = proxy(Arc::new(Pool::default()));
    put_pool(adm, &[a.addr, b.addr]);
    let mut c = Client::new(traffic);
    let seen: Vec<String> = (0..4).map(|_| c.get("/").1).collect();
    assert_eq!(seen, vec!["a", "b", "a", "b"]);
}

#[test]
fn unreachable_upstreams_are_skipped_and_502_when_none_answers() {
    let a = upstream("alive");
    // A port nothing listens on.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (traffic, adm) = proxy(Arc::new(Pool::default()));
    put_pool(adm, &[dead, a.addr]);
    let mut c = Client::new(traffic);
    for _ in 0..4 {
        assert_eq!(c.get("/"), (200, "alive".into()));
    }
    put_pool(adm, &[dead]);
    assert_eq!(c.get("/").0, 502);
    // An idempotent request whose upstream closes unanswered goes to the next.
    put_pool(adm, &[a.addr]);
    assert_eq!(c.get("/close").0, 502);
}

#[test]
fn in_flight_counts_and_draining_after_removal() {
    let (a, b) = (upstream("old"), upstream("new"));
    let pool = Arc::new(Pool::default());
    let (traffic, adm) = proxy(pool);
    put_pool(adm, &[a.addr]);
    let slow = thread::spawn(move || Client::new(traffic).get("/slow?ms=600"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = admin(adm, "GET", "");
        if v["upstreams"][0]["in_flight"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never in flight: {v}");
        thread::sleep(Duration::from_millis(10));
    }
    let v = put_pool(adm, &[b.addr]);
    assert_eq!(v["upstreams"][0]["addr"], b.addr.to_string());
    assert_eq!(v["draining"][0]["addr"], a.addr.to_string());
    assert_eq!(v["draining"][0]["in_flight"], 1);
    assert_eq!(Client::new(traffic).get("/"), (200, "new".into()));
    assert_eq!(
        slow.join().unwrap(),
        (200, "old".into()),
        "finished after removal"
    );
    let (_, v) = admin(adm, "GET", "");
    assert_eq!(v["draining"], serde_json::json!([]));
    assert_eq!(v["upstreams"][0]["in_flight"], 0);
}

#[test]
fn admin_api_validates() {
    let pool = Pool::default();
    assert_eq!(admin_route(&pool, "GET", "/health", b"").0, 200);
    let (s, b) = admin_route(&pool, "PUT", "/pool", br#"{"upstreams":["nope"]}"#);
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("not an ip:port"), "{b}");
    assert_eq!(admin_route(&pool, "PUT", "/pool", b"{").0, 400);
    assert_eq!(
        admin_route(&pool, "PUT", "/pool", br#"{"upstream":[]}"#).0,
        400
    );
    assert_eq!(admin_route(&pool, "DELETE", "/pool", b"").0, 405);
    assert_eq!(admin_route(&pool, "GET", "/other", b"").0, 404);
    let (s, b) = admin_route(&pool, "PUT", "/pool", br#"{"upstreams":["10.1.2.3:8080"]}"#);
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"upstreams":[{"addr":"10.1.2.3:8080","in_flight":0}],"draining":[],"version":1})
    );
    let (_, b) = admin_route(&pool, "GET", "/pool?x=1", b"");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&b).unwrap(), v);
}

#[test]
fn bad_requests_get_400_and_close() {
    let (traffic, _) = proxy(Arc::new(Pool::default()));
    let mut c = Client::new(traffic);
    let (s, _, _) = c.send("NOT A REQUEST\r\n\r\n");
    assert_eq!(s, 400);
    assert!(c.closed());
}
