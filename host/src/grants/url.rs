//! `grants.http` URL patterns: parsed into scheme, host, port and path once,
//! when the pipeline is validated, and matched part by part against the
//! normalized request URL. `host check` and the http capability use the same
//! compiled [`UrlPattern`]s (`Grants.http`); nothing else compiles them.
//!
//! # Grammar
//!
//! ```text
//! pattern = scheme "://" host [ ":" port ] [ path ]
//! scheme  = "http" | "https"
//! host    = NAME | IPv4 | "[" IPv6 "]" | "*." NAME
//! port    = DIGITS | "*" | a glob over the port's digits, e.g. "1870[12]"
//! path    = "/" followed by a glob
//! ```
//!
//! # What each part means
//!
//! - **scheme**: exactly that scheme (`http` does not allow `https`).
//! - **host**: exactly that host, compared after normalization (lowercase,
//!   IDNA, IPv4 written any way — `2130706433`, `0x7f.1` — read as the
//!   dotted address, IPv6 compressed). `*.example.com` allows every host
//!   strictly below `example.com` (`a.example.com`, `a.b.example.com`), not
//!   `example.com` itself. `*` is allowed nowhere else in a host, and a
//!   host cannot be left open (`*` alone).
//! - **port**: a number allows that port; `*` any port; a digit glob
//!   (`1870[12]`) the ports whose decimal form it matches. Omitted, it is
//!   the scheme's default port (80 for `http`, 443 for `https`), so
//!   `https://x/*` does not allow `https://x:8443/`.
//! - **path**: a glob over the request's normalized path. `*` matches any
//!   run of characters, `/` included (`https://hooks.slack.com/services/*`
//!   allows `/services/T0/B0/x`); `[a-z]` classes, `{a,b}` alternatives and
//!   `\` escapes work as in other globs. Omitted, the path is `/` only.
//!   Write characters a URL would percent-encode (space, `"`, `<`, `>`,
//!   `` ` ``, non-ASCII) percent-encoded. A pattern cannot name a query or
//!   fragment (`?`, `#`), user info (`@` in the host part) or `.`/`..`
//!   segments.
//!
//! # What is matched
//!
//! The request URL is parsed as a browser does (the `url` crate): `.` and
//! `..` segments are resolved, `%2e` spellings of them included, `\` is
//! `/`, and the default port is filled in. In the path, percent-escapes of
//! unreserved characters (`%41` → `A`, `%7E` → `~`) are decoded and other
//! escapes written with uppercase hex, in the pattern as in the request. A
//! request with user info (`http://a@b/`) is refused whatever the grants,
//! and so is a path segment that hides a dot segment behind an encoded
//! separator or a path parameter (`..%2F`, `%5C..`, `..;x`), which some
//! servers would resolve. The
//! query and the fragment are never matched: `/admin?x=/services/y` is the
//! path `/admin`.
use std::fmt;
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};
use url::{Host, Url};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Debug, Clone)]
enum HostPattern {
    /// Exactly this host (normalized).
    Exact(Host<String>),
    /// Any host strictly below this domain (`*.example.com`).
    Below(String),
}

impl HostPattern {
    fn matches(&self, host: &Host<String>) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Below(domain) => {
                let Host::Domain(d) = host else {
                    return false;
                };
                let Some(sub) = d
                    .strip_suffix(domain.as_str())
                    .and_then(|s| s.strip_suffix('.'))
                else {
                    return false;
                };
                !sub.is_empty() && !sub.split('.').any(str::is_empty)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum PortPattern {
    Exact(u16),
    Any,
    /// A glob over the port's decimal digits (`1870[12]`).
    Digits(GlobMatcher),
}

impl PortPattern {
    fn matches(&self, port: u16) -> bool {
        match self {
            PortPattern::Exact(p) => *p == port,
            PortPattern::Any => true,
            PortPattern::Digits(g) => g.is_match(port.to_string()),
        }
    }
}

/// One compiled `grants.http` pattern (see the module documentation for
/// the grammar and what each part means). Equal when written the same.
#[derive(Clone)]
pub struct UrlPattern {
    text: Arc<str>,
    scheme: Scheme,
    host: HostPattern,
    port: PortPattern,
    path: GlobMatcher,
}

/// Why a `grants.http` pattern is not valid (names the part at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

fn bad<T>(msg: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError(msg.into()))
}

impl UrlPattern {
    /// Parse and compile a pattern as written in `grants.http`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let (scheme, rest) =
            match text.split_once("://") {
                Some((s, rest)) if Scheme::parse(s).is_some() => (Scheme::parse(s).unwrap(), rest),
                _ => return bad(
                    "must start with `https://` or `http://`, e.g. \"https://hooks.slack.com/*\"",
                ),
            };
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return bad(format!(
                "contains {c:?}: write spaces and other such characters percent-encoded"
            ));
        }
        if text.contains('#') {
            return bad("a fragment (`#…`) is never sent and cannot be granted; remove it");
        }
        if text.contains('?') {
            return bad("the query (`?…`) is not matched: a pattern names scheme, host, port and path; remove it");
        }
        let (authority, path) = match rest.find(['/', '\\']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return bad("user info (`user@`) is never granted: URLs with user info are refused");
        }
        let (host, port) = split_host_port(authority)?;
        Ok(Self {
            text: text.into(),
            scheme,
            host: host_pattern(host)?,
            port: port_pattern(port, scheme)?,
            path: path_glob(path)?,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the (normalized) request target is inside this pattern.
    pub fn matches(&self, t: &Target) -> bool {
        self.matches_origin(t) && self.path.is_match(&t.path)
    }

    /// Whether scheme, host and port are inside this pattern (any path).
    pub fn matches_origin(&self, t: &Target) -> bool {
        self.scheme == t.scheme && self.host.matches(&t.host) && self.port.matches(t.port)
    }
}

impl fmt::Debug for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UrlPattern({:?})", &*self.text)
    }
}

impl fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for UrlPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for UrlPattern {}

impl PartialEq<&str> for UrlPattern {
    fn eq(&self, other: &&str) -> bool {
        &*self.text == *other
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), PatternError> {
    if authority.starts_with('[') {
        let Some(end) = authority.find(']') else {
            return bad("an IPv6 host needs its closing `]`");
        };
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            r => match r.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => bad(format!("unexpected {r:?} after the host")),
            },
        };
    }
    Ok(match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    })
}

fn host_pattern(host: &str) -> Result<HostPattern, PatternError> {
    if host.is_empty() {
        return bad("the host is missing");
    }
    if host == "*" {
        return bad(
            "the host cannot be left open (`*`): name it, or its domain as `*.example.com`",
        );
    }
    let (below, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    if name.contains(['*', '?', '[', ']', '{', '}']) && !name.starts_with('[') {
        return bad(format!(
            "host {host:?}: `*` is allowed only as a leading `*.` (any host below a domain)"
        ));
    }
    let parsed = Host::parse(name).map_err(|e| PatternError(format!("host {host:?}: {e}")))?;
    match (below, parsed) {
        (false, h) => Ok(HostPattern::Exact(h)),
        (true, Host::Domain(d)) => Ok(HostPattern::Below(d)),
        (true, _) => bad(format!(
            "host {host:?}: `*.` goes before a domain name, not an IP address"
        )),
    }
}

fn port_pattern(port: Option<&str>, scheme: Scheme) -> Result<PortPattern, PatternError> {
    const HINT: &str = "expected a port number, `*` or a digit glob like `1870[12]`";
    let Some(p) = port else {
        return Ok(PortPattern::Exact(scheme.default_port()));
    };
    if p == "*" {
        return Ok(PortPattern::Any);
    }
    if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
        return match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(PortPattern::Exact(n)),
            _ => bad(format!("port {p:?} is out of range (1-65535)")),
        };
    }
    if p.is_empty() || !p.bytes().all(|b| b"0123456789*?[]!^-,{}".contains(&b)) {
        return bad(format!("port {p:?}: {HINT}"));
    }
    let glob = GlobBuilder::new(p)
        .literal_separator(false)
        .build()
        .map_err(|e| PatternError(format!("port {p:?}: {}", e.kind())))?;
    Ok(PortPattern::Digits(glob.compile_matcher()))
}

/// Characters a request path keeps as they are (RFC 3986 `pchar` and `/`),
/// plus the glob syntax a pattern may use.
fn pattern_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%[]{}\\^|".contains(c)
}

fn path_glob(path: &str) -> Result<GlobMatcher, PatternError> {
    if let Some(c) = path.chars().find(|&c| !pattern_path_char(c)) {
        return bad(format!(
            "{c:?} in the path: write it percent-encoded, as it is sent"
        ));
    }
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        if !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return bad("`%` in the path must start an escape like `%2F`");
        }
    }
    let normalized = normalize_escapes(path);
    if normalized.split('/').any(|s| s == "." || s == "..") {
        return bad("the path cannot contain `.` or `..` segments: write the path they lead to");
    }
    GlobBuilder::new(&normalized)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| PatternError(format!("invalid glob pattern in the path: {}", e.kind())))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §6.2.2: decode escapes of unreserved characters, write the
/// others with uppercase hex. Text that is not an escape is kept.
fn normalize_escapes(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_value(b[i + 1]), hex_value(b[i + 2])) {
                let v = h * 16 + l;
                if is_unreserved(v) {
                    out.push(v);
                } else {
                    out.push(b'%');
                    out.push(b[i + 1].to_ascii_uppercase());
                    out.push(b[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // Only ASCII escapes were decoded, so the text stays UTF-8.
    String::from_utf8(out).expect("ASCII-only changes keep UTF-8")
}

/// Fully percent-decoded bytes (for looking at what a server might see).
fn decode_all(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_value(b[i + 1]), hex_value(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Why a request URL is outside the grants (or never allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not `http` or `https`.
    Scheme(String),
    /// `user:password@` in the URL.
    UserInfo,
    /// A segment hiding a dot segment behind an encoded separator or a
    /// path parameter (`..%2F`, `..;x`).
    HiddenDotSegment,
    /// No host (cannot happen for http/https, kept for completeness).
    NoHost,
    /// No pattern allows it.
    NotGranted,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Scheme(s) => write!(f, "unsupported URL scheme `{s}`"),
            Refusal::UserInfo => f.write_str("URLs with user info are refused"),
            Refusal::HiddenDotSegment => {
                f.write_str("a path segment hides `..` behind an encoded separator or `;`")
            }
            Refusal::NoHost => f.write_str("the URL has no host"),
            Refusal::NotGranted => f.write_str("no `grants.http` pattern allows it"),
        }
    }
}

/// A request URL in the form patterns are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub host: Host<String>,
    pub port: u16,
    /// Dot segments resolved, escapes normalized; no query, no fragment.
    pub path: String,
}

impl Target {
    /// Normalize a parsed URL; refuses what no grant can allow.
    pub fn of(url: &Url) -> Result<Self, Refusal> {
        let scheme =
            Scheme::parse(url.scheme()).ok_or_else(|| Refusal::Scheme(url.scheme().into()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::UserInfo);
        }
        let host = url.host().ok_or(Refusal::NoHost)?.to_owned();
        let port = url.port_or_known_default().unwrap_or(scheme.default_port());
        let path = normalize_escapes(url.path());
        for segment in path.split('/') {
            let decoded = decode_all(segment);
            // `..;x` is `..` to servers that strip path parameters.
            let hides_dots = decoded
                .split(|&b| b == b'/' || b == b'\\')
                .map(|p| p.split(|&b| b == b';').next().unwrap_or_default())
                .any(|p| p == b"." || p == b"..");
            if hides_dots {
                return Err(Refusal::HiddenDotSegment);
            }
        }
        Ok(Self {
            scheme,
            host,
            port,
            path,
        })
    }
}

/// The compiled `grants.http` of one stage (`Grants.http`), built once at
/// validation; clones share the patterns.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct UrlAllowlist {
    patterns: Arc<[UrlPattern]>,
}

impl UrlAllowlist {
    pub fn new(patterns: impl IntoIterator<Item = UrlPattern>) -> Self {
        Self {
            patterns: patterns.into_iter().collect(),
        }
    }

    pub fn patterns(&self) -> &[UrlPattern] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The pattern that allows `url`, or why none does.
    pub fn check(&self, url: &Url) -> Result<&UrlPattern, Refusal> {
        let t = Target::of(url)?;
        self.patterns
            .iter()
            .find(|p| p.matches(&t))
            .ok_or(Refusal::NotGranted)
    }

    /// Whether some pattern allows `url`'s scheme, host and port (its path
    /// is not looked at: used before a templated path is expanded).
    pub fn check_origin(&self, url: &Url) -> Result<(), Refusal> {
        let t = Target::of(url)?;
        if self.patterns.iter().any(|p| p.matches_origin(&t)) {
            Ok(())
        } else {
            Err(Refusal::NotGranted)
        }
    }
}

/// Compares with the patterns as written (`grants.http == ["https://x/*"]`).
impl<const N: usize> PartialEq<[&str; N]> for UrlAllowlist {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.patterns.len() == N && self.patterns.iter().zip(other).all(|(p, o)| p == o)
    }
}

#[cfg(test)]
mod tests;
