//! `demo-app`: the small HTTP service the example pipeline builds, tests,
//! pushes and deploys. Standard library only, one thread per connection,
//! HTTP/1.1 with `Connection: close`.
//!
//! Endpoints (GET or HEAD):
//!
//! - `/health` → 200 `{"status":"ok","version":"<version>"}`, or 503
//!   `{"status":"unhealthy",...}` when started with `DEMO_UNHEALTHY=1`;
//! - `/` → 200, a one-line text greeting with the version;
//! - `/slow?ms=N` → sleeps N ms (default 1000, at most 5000), then 200;
//! - anything else → 404 (405 for another method on a known path).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Longest `/slow` sleep.
pub const MAX_SLOW_MS: u64 = 5000;
/// Largest request head accepted (request line + headers).
const MAX_HEAD: usize = 16 * 1024;
/// Read/write timeout of a connection.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server answers with.
#[derive(Clone, Debug)]
pub struct Config {
    pub version: String,
    pub unhealthy: bool,
}

impl Config {
    /// From the environment: `VERSION` (default: the crate version) and
    /// `DEMO_UNHEALTHY` (`1`/`true` → `/health` answers 503).
    pub fn from_env() -> Self {
        let version = std::env::var("VERSION")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
        let unhealthy = matches!(
            std::env::var("DEMO_UNHEALTHY").as_deref(),
            Ok("1") | Ok("true") | Ok("yes")
        );
        Config { version, unhealthy }
    }
}

/// An HTTP response before serialisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn json(status: u16, body: String) -> Self {
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// The response bytes (`HEAD` gets the headers only).
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Escapes a string for a JSON string literal.
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// What to do for a request: the response, and how long to sleep first.
pub fn route(config: &Config, method: &str, target: &str) -> (Response, Duration) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let known = matches!(path, "/" | "/health" | "/slow");
    if !known {
        return (Response::text(404, "not found\n"), Duration::ZERO);
    }
    if method != "GET" && method != "HEAD" {
        return (Response::text(405, "method not allowed\n"), Duration::ZERO);
    }
    let version = &config.version;
    match path {
        "/health" => {
            let (status, word) = if config.unhealthy {
                (503, "unhealthy")
            } else {
                (200, "ok")
            };
            let body = format!(
                "{{\"status\":\"{word}\",\"version\":\"{}\"}}",
                json_escape(version)
            );
            (Response::json(status, body), Duration::ZERO)
        }
        "/" => (
            Response::text(200, format!("Hello from demo-app {version}!\n")),
            Duration::ZERO,
        ),
        _ => match slow_ms(query) {
            Ok(ms) => (
                Response::text(200, format!("slept {ms} ms\n")),
                Duration::from_millis(ms),
            ),
            Err(msg) => (Response::text(400, msg), Duration::ZERO),
        },
    }
}

/// `ms` of a `/slow` query: default 1000, capped at [`MAX_SLOW_MS`].
pub fn slow_ms(query: &str) -> Result<u64, String> {
    let value = query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == "ms")
        .map(|(_, v)| v);
    match value {
        None => Ok(1000),
        Some(v) => v
            .parse::<u64>()
            .map(|ms| ms.min(MAX_SLOW_MS))
            .map_err(|_| format!("ms must be a number of milliseconds, got {v:?}\n")),
    }
}

/// Requests being served right now (for a draining shutdown).
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one connection: one request, one response, close.
pub fn handle(stream: TcpStream, config: &Config) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(MAX_HEAD as u64);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target, proto) = (parts.next(), parts.next(), parts.next());
    // Drain the headers (no request body is expected).
    let mut complete = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        if h == "\r\n" || h == "\n" {
            complete = true;
            break;
        }
    }
    let mut out = stream;
    let (resp, head_only) = match (method, target, proto) {
        (Some(m), Some(t), Some(p)) if p.starts_with("HTTP/1.") && t.starts_with('/') => {
            if !complete && reader.limit() == 0 {
                (Response::text(431, "request head too large\n"), false)
            } else if !complete {
                (Response::text(400, "incomplete request\n"), false)
            } else {
                let (resp, wait) = route(config, m, t);
                if !wait.is_zero() {
                    thread::sleep(wait);
                }
                (resp, m == "HEAD")
            }
        }
        _ => (Response::text(400, "bad request\n"), false),
    };
    out.write_all(&resp.to_bytes(head_only))?;
    out.flush()
}

/// Accepts connections forever, one thread each. Counts them in `in_flight`.
pub fn serve(listener: TcpListener, config: Config, in_flight: InFlight) -> io::Result<()> {
    let config = Arc::new(config);
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("demo-app: accept: {e}");
                continue;
            }
        };
        in_flight.0.fetch_add(1, Ordering::SeqCst);
        let guard = Guard(in_flight.0.clone());
        let config = config.clone();
        thread::spawn(move || {
            let _guard = guard;
            if let Err(e) = handle(stream, &config) {
                eprintln!("demo-app: connection: {e}");
            }
        });
    }
    Ok(())
}

/// Binds `addr` and serves in a background thread; returns the bound address
/// (useful with port 0 in tests).
pub fn spawn(addr: &str, config: Config) -> io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    thread::spawn(move || serve(listener, config, InFlight::default()));
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(unhealthy: bool) -> Config {
        Config {
            version: "1.2.3".into(),
            unhealthy,
        }
    }

    #[test]
    fn health_ok_and_unhealthy() {
        let (r, _) = route(&cfg(false), "GET", "/health");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, r#"{"status":"ok","version":"1.2.3"}"#);
        assert_eq!(r.content_type, "application/json");
        let (r, _) = route(&cfg(true), "GET", "/health");
        assert_eq!(r.status, 503);
        assert_eq!(r.body, r#"{"status":"unhealthy","version":"1.2.3"}"#);
    }

    #[test]
    fn root_greets_with_version() {
        let (r, _) = route(&cfg(false), "GET", "/");
        assert_eq!(r.status, 200);
        assert!(r.body.contains("1.2.3"));
        let (r, _) = route(&cfg(false), "GET", "/?x=1");
        assert_eq!(r.status, 200);
    }

    #[test]
    fn slow_parses_and_caps() {
        assert_eq!(slow_ms(""), Ok(1000));
        assert_eq!(slow_ms("ms=250"), Ok(250));
        assert_eq!(slow_ms("a=1&ms=99999"), Ok(MAX_SLOW_MS));
        assert!(slow_ms("ms=abc").is_err());
        assert!(slow_ms("ms=").is_err());
        let (r, wait) = route(&cfg(false), "GET", "/slow?ms=20");
        assert_eq!((r.status, wait), (200, Duration::from_millis(20)));
        let (r, wait) = route(&cfg(false), "GET", "/slow?ms=-1");
        assert_eq!((r.status, wait), (400, Duration::ZERO));
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(route(&cfg(false), "GET", "/nope").0.status, 404);
        assert_eq!(route(&cfg(false), "GET", "/health/x").0.status, 404);
        assert_eq!(route(&cfg(false), "POST", "/health").0.status, 405);
        assert_eq!(route(&cfg(false), "HEAD", "/health").0.status, 200);
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(json_escape("x\ny\u{1}"), "x\\ny\\u0001");
    }

    #[test]
    fn response_bytes() {
        let r = Response::text(200, "hi\n");
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(full.contains("Content-Length: 3\r\n"));
        assert!(full.ends_with("\r\n\r\nhi\n"));
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }
}
