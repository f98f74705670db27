//! `deploy-proxy`: the traffic switch of the `deploy` plugin, a small
//! HTTP/1.1 reverse proxy with a pool of upstreams that an admin API
//! replaces atomically. Standard library (and serde_json) only, one thread
//! per connection, built static and shipped `FROM scratch`.
//!
//! - Traffic port (default 8080): every client request (keep-alive clients
//!   too) picks an upstream from the current pool (round robin) and is
//!   forwarded with `Connection: close`; the response streams back
//!   (Content-Length, chunked, or until close). A request that cannot
//!   connect to its upstream tries the next one; an idempotent request
//!   (GET/HEAD/OPTIONS without a body) whose upstream closes before
//!   answering is retried too. Empty pool: 503. No upstream reachable: 502.
//! - Admin port (default 8081): `GET /pool` → `{"upstreams":[{"addr",
//!   "in_flight"}], "draining":[...], "version":N}`; `PUT /pool` with
//!   `{"upstreams":["ip:port", ...]}` replaces the pool atomically;
//!   `GET /health` → 200.
//!
//! See `plugins/deploy/README.md` for how the deploy plugin uses it.

pub mod http;
pub mod pool;

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde::Deserialize;

use http::{Framing, Head};
use pool::{Lease, Pool};

/// Timeouts of the proxy's connections.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Connecting to an upstream.
    pub connect: Duration,
    /// One read or write on an upstream connection.
    pub upstream_io: Duration,
    /// A client connection idle between requests (and one read/write).
    pub client_io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            upstream_io: Duration::from_secs(120),
            client_io: Duration::from_secs(75),
        }
    }
}

/// Accepts traffic connections forever, one thread each.
pub fn serve_traffic(listener: TcpListener, pool: Arc<Pool>, timeouts: Timeouts) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let pool = pool.clone();
                thread::spawn(move || {
                    let _ = handle_client(stream, &pool, timeouts);
                });
            }
            Err(e) => {
                eprintln!("deploy-proxy: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Accepts admin connections forever, one thread each.
pub fn serve_admin(listener: TcpListener, pool: Arc<Pool>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let pool = pool.clone();
                thread::spawn(move || {
                    let _ = handle_admin(stream, &pool);
                });
            }
            Err(e) => {
                eprintln!("deploy-proxy: admin accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Binds both ports and serves them in background threads; returns the
/// bound addresses (port 0 picks free ones, for tests).
pub fn spawn(
    traffic: &str,
    admin: &str,
    pool: Arc<Pool>,
    timeouts: Timeouts,
) -> io::Result<(SocketAddr, SocketAddr)> {
    let t = TcpListener::bind(traffic)?;
    let a = TcpListener::bind(admin)?;
    let addrs = (t.local_addr()?, a.local_addr()?);
    let p = pool.clone();
    thread::spawn(move || serve_traffic(t, p, timeouts));
    thread::spawn(move || serve_admin(a, pool));
    Ok(addrs)
}

fn send_simple(client: &mut TcpStream, status: u16, body: &str, keep: bool) -> io::Result<()> {
    client.write_all(&http::simple_response(
        status,
        "text/plain; charset=utf-8",
        body,
        keep,
    ))?;
    client.flush()
}

/// Why forwarding one request failed.
enum Forward {
    /// Nothing was sent to the client yet: answer with this status, and
    /// whether the client connection is still usable afterwards.
    Answer(u16, String, bool),
    /// Part of the response (or of the request body) is gone: close.
    Broken,
}

/// Serves one client connection: requests one after the other until the
/// client closes, asks to close, or something breaks.
pub fn handle_client(client: TcpStream, pool: &Pool, timeouts: Timeouts) -> io::Result<()> {
    client.set_read_timeout(Some(timeouts.client_io))?;
    client.set_write_timeout(Some(timeouts.client_io))?;
    let _ = client.set_nodelay(true);
    let peer = client.peer_addr().ok();
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    loop {
        let head = match http::read_head(&mut reader) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let _ = send_simple(&mut writer, 400, &format!("bad request: {e}\n"), false);
                break;
            }
            Err(_) => break,
        };
        let Some(line) = http::parse_request_line(&head.start) else {
            let _ = send_simple(&mut writer, 400, "bad request line\n", false);
            break;
        };
        let framing = match http::request_framing(&head) {
            Ok(f) => f,
            Err(msg) => {
                let _ = send_simple(&mut writer, 400, &format!("{msg}\n"), false);
                break;
            }
        };
        let keep = http::client_keep_alive(&line, &head);
        if head.has_token("expect", "100-continue") && framing != Framing::Empty {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let req = Incoming {
            line: &line,
            head: &head,
            framing,
            peer,
            keep,
        };
        match forward(&mut reader, &mut writer, pool, timeouts, req) {
            Ok(true) => {}
            Ok(false) => break,
            Err(Forward::Answer(status, msg, usable)) => {
                let keep = keep && usable;
                send_simple(&mut writer, status, &msg, keep)?;
                if !keep {
                    break;
                }
            }
            Err(Forward::Broken) => break,
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
}

/// The head sent upstream: hop-by-hop headers dropped, `Connection: close`,
/// `X-Forwarded-For`/`-Proto` added.
fn upstream_head(line: &http::RequestLine, head: &Head, peer: Option<SocketAddr>) -> Head {
    let mut headers = http::strip_hop_by_hop(head);
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("expect"));
    if let Some(p) = peer {
        let ip = p.ip().to_string();
        match headers
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
        {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&ip);
            }
            None => headers.push(("X-Forwarded-For".into(), ip)),
        }
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-proto"))
    {
        headers.push(("X-Forwarded-Proto".into(), "http".into()));
    }
    headers.push(("Connection".into(), "close".into()));
    Head {
        start: format!("{} {} HTTP/1.1", line.method, line.target),
        headers,
    }
}

fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// One client request as read from the connection (its body not yet).
#[derive(Clone, Copy)]
struct Incoming<'a> {
    line: &'a http::RequestLine,
    head: &'a Head,
    framing: Framing,
    peer: Option<SocketAddr>,
    /// The client asked to keep the connection open.
    keep: bool,
}

/// Forwards one request and relays its response. `Ok(keep)`: the response
/// went out whole; `keep` says whether the client connection stays open.
fn forward(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    pool: &Pool,
    timeouts: Timeouts,
    req: Incoming<'_>,
) -> Result<bool, Forward> {
    let Incoming {
        line,
        head,
        framing,
        peer,
        keep,
    } = req;
    let out_head = upstream_head(line, head, peer).to_bytes();
    let retry_unanswered = idempotent(&line.method) && framing == Framing::Empty;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut body_sent = false;
    let (lease, mut up_reader, resp, status) = loop {
        let Some(lease) = pool.pick(&tried) else {
            let usable = !body_sent && framing == Framing::Empty;
            return Err(if tried.is_empty() {
                Forward::Answer(503, "no upstream in the pool\n".into(), usable)
            } else {
                Forward::Answer(
                    502,
                    format!("no upstream reachable (tried {})\n", tried.len()),
                    usable,
                )
            });
        };
        tried.push(lease.addr());
        let up = match TcpStream::connect_timeout(&lease.addr(), timeouts.connect) {
            Ok(s) => s,
            Err(_) => continue,
        };
        let _ = up.set_read_timeout(Some(timeouts.upstream_io));
        let _ = up.set_write_timeout(Some(timeouts.upstream_io));
        let _ = up.set_nodelay(true);
        let Ok(up_clone) = up.try_clone() else {
            continue;
        };
        let mut up_writer = up;
        if up_writer.write_all(&out_head).is_err() {
            if framing == Framing::Empty {
                continue;
            }
            return Err(Forward::Answer(
                502,
                "upstream refused the request\n".into(),
                false,
            ));
        }
        if framing != Framing::Empty {
            body_sent = true;
            // A failure here is the client's or the upstream's: either way
            // the client connection cannot be trusted any more.
            let mut w = io::BufWriter::new(&mut up_writer);
            if http::copy_body(reader, &mut w, framing).is_err() {
                return Err(Forward::Broken);
            }
        }
        let mut up_reader = BufReader::new(up_clone);
        match read_response_head(&mut up_reader) {
            Ok(Some((resp, status))) => break (lease, up_reader, resp, status),
            Ok(None) | Err(_) if retry_unanswered => continue,
            _ => {
                return Err(Forward::Answer(
                    502,
                    format!("upstream {} closed without an answer\n", lease.addr()),
                    framing == Framing::Empty,
                ))
            }
        }
    };
    relay_response(
        &mut up_reader,
        writer,
        &line.method,
        resp,
        status,
        keep,
        lease,
    )
}

/// The first final (non-1xx) response head.
fn read_response_head<R: io::BufRead>(r: &mut R) -> io::Result<Option<(Head, u16)>> {
    loop {
        let Some(head) = http::read_head(r)? else {
            return Ok(None);
        };
        let status = http::parse_status(&head.start)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        if (100..200).contains(&status) {
            continue;
        }
        return Ok(Some((head, status)));
    }
}

fn relay_response(
    up: &mut BufReader<TcpStream>,
    client: &mut TcpStream,
    method: &str,
    resp: Head,
    status: u16,
    keep: bool,
    lease: Lease,
) -> Result<bool, Forward> {
    let framing = match http::response_framing(method, status, &resp) {
        Ok(f) => f,
        Err(msg) => {
            return Err(Forward::Answer(
                502,
                format!("bad upstream response: {msg}\n"),
                true,
            ))
        }
    };
    let keep = keep && framing != Framing::UntilClose;
    let mut headers = http::strip_hop_by_hop(&resp);
    headers.push((
        "Connection".into(),
        if keep { "keep-alive" } else { "close" }.into(),
    ));
    let out = Head {
        start: resp.start.clone(),
        headers,
    };
    if client.write_all(&out.to_bytes()).is_err() {
        return Err(Forward::Broken);
    }
    let result = http::copy_body(up, client, framing);
    drop(lease);
    match result {
        Ok(()) => Ok(keep),
        Err(_) => Err(Forward::Broken),
    }
}

/// `PUT /pool` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolUpdate {
    pub upstreams: Vec<String>,
}

/// Largest admin request body.
const MAX_ADMIN_BODY: u64 = 1024 * 1024;

/// Answers one admin request: `(status, JSON body)`.
pub fn admin_route(pool: &Pool, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let path = path.split('?').next().unwrap_or(path);
    let error =
        |status: u16, msg: String| (status, serde_json::json!({ "error": msg }).to_string());
    match (method, path) {
        ("GET", "/health") | ("HEAD", "/health") => (200, r#"{"status":"ok"}"#.to_string()),
        ("GET", "/pool") | ("HEAD", "/pool") => (
            200,
            serde_json::to_string(&pool.snapshot()).expect("snapshot serializes"),
        ),
        ("PUT", "/pool") => {
            let update: PoolUpdate = match serde_json::from_slice(body) {
                Ok(u) => u,
                Err(e) => return error(400, format!("body: {e}")),
            };
            let addrs = match pool::parse_addrs(&update.upstreams) {
                Ok(a) => a,
                Err(e) => return error(400, e),
            };
            let shown: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            let version = pool.replace(addrs);
            eprintln!("deploy-proxy: pool v{version}: [{}]", shown.join(", "));
            (
                200,
                serde_json::to_string(&pool.snapshot()).expect("snapshot serializes"),
            )
        }
        (_, "/health") | (_, "/pool") => error(405, format!("{method} {path} is not allowed")),
        _ => error(404, format!("no route {path}")),
    }
}

/// Serves one admin connection (one request, then close).
pub fn handle_admin(stream: TcpStream, pool: &Pool) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let (status, body, head_only) = match http::read_head(&mut reader) {
        Ok(Some(head)) => match http::parse_request_line(&head.start) {
            None => (400, r#"{"error":"bad request line"}"#.to_string(), false),
            Some(line) => match http::request_framing(&head) {
                Ok(Framing::Empty) => {
                    let (s, b) = admin_route(pool, &line.method, &line.target, &[]);
                    (s, b, line.method == "HEAD")
                }
                Ok(Framing::Length(n)) if n <= MAX_ADMIN_BODY => {
                    let mut body = Vec::with_capacity(n as usize);
                    (&mut reader).take(n).read_to_end(&mut body)?;
                    if body.len() as u64 != n {
                        return Ok(());
                    }
                    let (s, b) = admin_route(pool, &line.method, &line.target, &body);
                    (s, b, false)
                }
                Ok(Framing::Length(_)) => (413, r#"{"error":"body too large"}"#.into(), false),
                _ => (
                    411,
                    r#"{"error":"send the body with a Content-Length"}"#.into(),
                    false,
                ),
            },
        },
        Ok(None) => return Ok(()),
        Err(e) => (
            400,
            serde_json::json!({ "error": e.to_string() }).to_string(),
            false,
        ),
    };
    let mut bytes = http::simple_response(status, "application/json", &body, false);
    if head_only {
        let end = bytes.len() - body.len();
        bytes.truncate(end);
    }
    out.write_all(&bytes)?;
    out.flush()?;
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests;
