//! Just enough HTTP/1.1 for a reverse proxy: message heads, body framing,
//! hop-by-hop headers, and relaying bodies as they arrive.

use std::io::{self, BufRead, Read, Write};

/// Largest message head accepted (start line + headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// A request or response head: the start line and the header fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any `name` header lists `token` (comma-separated, case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The head as bytes, ending with the empty line.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.start.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Reads one line ending in `\n` (at most `max` bytes), without the line end.
/// `Ok(None)` at end of input before any byte.
fn read_line<R: BufRead>(r: &mut R, max: usize) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(max as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if n > max {
            invalid("line too long")
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line")
        });
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| invalid("not UTF-8"))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads a message head. `Ok(None)` when the peer closed the connection
/// before sending anything (the normal end of a keep-alive connection).
/// Empty lines before the start line are skipped (RFC 9112 §2.2).
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut budget = MAX_HEAD;
    let start = loop {
        match read_line(r, budget)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    budget = budget.saturating_sub(start.len() + 2);
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let line = read_line(r, budget)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the head",
            )
        })?;
        if line.is_empty() {
            break;
        }
        budget = budget
            .checked_sub(line.len() + 2)
            .ok_or_else(|| invalid("head too large"))?;
        if line.starts_with([' ', '\t']) {
            return Err(invalid("obsolete header folding"));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| invalid("header without a colon"))?;
        if k.is_empty() || k.contains(|c: char| c.is_whitespace()) {
            return Err(invalid("bad header name"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok(Some(Head { start, headers }))
}

/// `METHOD target HTTP/1.x` of a request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    pub target: String,
    /// Minor version: 0 or 1.
    pub minor: u8,
}

pub fn parse_request_line(line: &str) -> Option<RequestLine> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_alphabetic())
        || target.is_empty()
    {
        return None;
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return None,
    };
    Some(RequestLine {
        method: method.to_string(),
        target: target.to_string(),
        minor,
    })
}

/// Status code of a response head (`HTTP/1.1 200 OK`).
pub fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (relayed as is).
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

fn content_length(head: &Head) -> Result<Option<u64>, &'static str> {
    let mut found: Option<u64> = None;
    for (k, v) in &head.headers {
        if !k.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for part in v.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("bad Content-Length");
            }
            let n: u64 = part.parse().map_err(|_| "bad Content-Length")?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting Content-Length values");
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn transfer_encoding(head: &Head) -> Result<Option<Framing>, &'static str> {
    let codings: Vec<String> = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    match codings.last() {
        None => Ok(None),
        Some(last) if last == "chunked" => Ok(Some(Framing::Chunked)),
        Some(_) => Err("unsupported Transfer-Encoding"),
    }
}

/// Framing of a request body: chunked, a Content-Length, or none.
pub fn request_framing(head: &Head) -> Result<Framing, &'static str> {
    let te = transfer_encoding(head)?;
    let cl = content_length(head)?;
    match (te, cl) {
        (Some(_), Some(_)) => Err("both Transfer-Encoding and Content-Length"),
        (Some(f), None) => Ok(f),
        (None, Some(0)) | (None, None) => Ok(Framing::Empty),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

/// Framing of a response body to a request with `method` (RFC 9112 §6.3).
pub fn response_framing(method: &str, status: u16, head: &Head) -> Result<Framing, &'static str> {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Ok(Framing::Empty);
    }
    if let Some(f) = transfer_encoding(head).unwrap_or(Some(Framing::UntilClose)) {
        return Ok(f);
    }
    match content_length(head)? {
        Some(0) => Ok(Framing::Empty),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::UntilClose),
    }
}

/// Whether the client wants the connection kept open after this exchange.
pub fn client_keep_alive(req: &RequestLine, head: &Head) -> bool {
    if head.has_token("connection", "close") {
        return false;
    }
    req.minor >= 1 || head.has_token("connection", "keep-alive")
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1),
/// plus whatever the `Connection` header names.
pub fn strip_hop_by_hop(head: &Head) -> Vec<(String, String)> {
    const HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ];
    let named: Vec<String> = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    head.headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !HOP.contains(&k.as_str()) && !named.contains(&k)
        })
        .cloned()
        .collect()
}

/// Copies exactly `n` bytes; an early end of input is an error.
pub fn copy_exact<R: Read, W: Write>(r: &mut R, w: &mut W, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), w)?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body ended after {copied} of {n} bytes"),
        ));
    }
    Ok(())
}

/// Relays a chunked body unchanged (sizes, extensions, data, trailers),
/// flushing after each chunk so the receiver sees it as it comes.
pub fn copy_chunked<R: BufRead, W: Write>(r: &mut R, w: &mut W) -> io::Result<()> {
    loop {
        let line = read_line(r, MAX_CHUNK_LINE)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "chunked body cut"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        w.write_all(line.as_bytes())?;
        w.write_all(b"\r\n")?;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let t = read_line(r, MAX_CHUNK_LINE)?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "chunked trailer cut")
                })?;
                w.write_all(t.as_bytes())?;
                w.write_all(b"\r\n")?;
                if t.is_empty() {
                    return w.flush();
                }
            }
        }
        copy_exact(r, w, size)?;
        let end = read_line(r, 2)?;
        if end.as_deref() != Some("") {
            return Err(invalid("chunk not followed by CRLF"));
        }
        w.write_all(b"\r\n")?;
        w.flush()?;
    }
}

/// Relays a body of the given framing.
pub fn copy_body<R: BufRead, W: Write>(r: &mut R, w: &mut W, framing: Framing) -> io::Result<()> {
    match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => copy_exact(r, w, n),
        Framing::Chunked => copy_chunked(r, w),
        Framing::UntilClose => io::copy(r, w).map(|_| ()),
    }?;
    w.flush()
}

/// A complete small response (for the proxy's own answers).
pub fn simple_response(status: u16, content_type: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn head(text: &str) -> Head {
        read_head(&mut Cursor::new(text.as_bytes().to_vec()))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn reads_heads_and_headers() {
        let h = head("\r\nGET /x HTTP/1.1\r\nHost: a\r\nX-A:  1 \r\n\r\nbody");
        assert_eq!(h.start, "GET /x HTTP/1.1");
        assert_eq!(h.header("host"), Some("a"));
        assert_eq!(h.header("x-a"), Some("1"));
        assert_eq!(read_head(&mut Cursor::new(Vec::new())).unwrap(), None);
        assert!(read_head(&mut Cursor::new(b"GET / HTTP/1.1\r\nHost".to_vec())).is_err());
        assert!(read_head(&mut Cursor::new(b"GET / HTTP/1.1\r\nBad\r\n\r\n".to_vec())).is_err());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(read_head(&mut Cursor::new(big.into_bytes())).is_err());
    }

    #[test]
    fn request_lines_and_status() {
        let r = parse_request_line("GET /a?b HTTP/1.0").unwrap();
        assert_eq!(
            (r.method.as_str(), r.target.as_str(), r.minor),
            ("GET", "/a?b", 0)
        );
        assert!(parse_request_line("GET /a HTTP/2").is_none());
        assert!(parse_request_line("GET  /a HTTP/1.1").is_none());
        assert_eq!(parse_status("HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("HTTP/1.0 200"), Some(200));
        assert_eq!(parse_status("SPDY 200 OK"), None);
    }

    #[test]
    fn framing_rules() {
        let h = head("GET / HTTP/1.1\r\n\r\n");
        assert_eq!(request_framing(&h), Ok(Framing::Empty));
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(request_framing(&h), Ok(Framing::Length(5)));
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(request_framing(&h), Ok(Framing::Chunked));
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(request_framing(&h).is_err());
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert!(request_framing(&h).is_err());
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(request_framing(&h), Ok(Framing::Length(5)));

        let r = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(response_framing("GET", 200, &r), Ok(Framing::Length(3)));
        assert_eq!(response_framing("HEAD", 200, &r), Ok(Framing::Empty));
        assert_eq!(response_framing("GET", 304, &r), Ok(Framing::Empty));
        let r = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(response_framing("GET", 200, &r), Ok(Framing::Chunked));
        let r = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(response_framing("GET", 200, &r), Ok(Framing::UntilClose));
    }

    #[test]
    fn keep_alive_and_hop_by_hop() {
        let h = head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        let r = parse_request_line(&h.start).unwrap();
        assert!(!client_keep_alive(&r, &h));
        let h = head("GET / HTTP/1.1\r\n\r\n");
        assert!(client_keep_alive(
            &parse_request_line(&h.start).unwrap(),
            &h
        ));
        let h = head("GET / HTTP/1.0\r\n\r\n");
        assert!(!client_keep_alive(
            &parse_request_line(&h.start).unwrap(),
            &h
        ));
        let h = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(client_keep_alive(
            &parse_request_line(&h.start).unwrap(),
            &h
        ));

        let h = head(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: 1\r\nUpgrade: h2c\r\nAccept: */*\r\n\r\n",
        );
        let kept: Vec<String> = strip_hop_by_hop(&h).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kept, vec!["Host", "Accept"]);
    }

    #[test]
    fn relays_chunked_bodies_and_lengths() {
        let body = "4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nnext";
        let mut r = Cursor::new(body.as_bytes().to_vec());
        let mut out = Vec::new();
        copy_body(&mut r, &mut out, Framing::Chunked).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n"
        );
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "next");

        let mut out = Vec::new();
        assert!(copy_body(
            &mut Cursor::new(b"abc".to_vec()),
            &mut out,
            Framing::Length(5)
        )
        .is_err());
        let mut out = Vec::new();
        copy_body(
            &mut Cursor::new(b"abcdef".to_vec()),
            &mut out,
            Framing::Length(5),
        )
        .unwrap();
        assert_eq!(out, b"abcde");
        let mut out = Vec::new();
        assert!(copy_chunked(&mut Cursor::new(b"zz\r\n".to_vec()), &mut out).is_err());
    }

    #[test]
    fn simple_responses() {
        let r = String::from_utf8(simple_response(503, "text/plain", "no\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(r.contains("Content-Length: 3\r\nConnection: close\r\n\r\nno\n"));
    }
}
