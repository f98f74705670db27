//! Outgoing HTTP for a stage, through reqwest, inside its `grants.http`.
//!
//! One request goes through these steps, in this order:
//! 1. It is validated as the plugin wrote it, secrets unexpanded
//!    ([`request`]): no raw line break or other control character in the
//!    URL, `${secret:…}` references well formed and granted, a method that
//!    is a token (never expanded, never CONNECT), no header the host sets
//!    itself (`Host`, `Proxy-*`, hop-by-hop headers, `Forwarded`,
//!    `X-Forwarded-*`, …), no line break in a header, a bounded body.
//!    A URL without references must match a grant here; one whose scheme,
//!    host and port are written out before its first reference must match
//!    a grant's scheme, host and port.
//! 2. Secrets are expanded by [`SecretsCap::expand`] (the one expansion)
//!    in the URL, header values and a text body.
//! 3. The expanded URL is matched again, with the same compiled patterns
//!    (`Grants.http`): a value holding `/../`, `@`, `#` or a line break
//!    cannot send the request anywhere the grant does not allow.
//! 4. Every redirect is matched the same way; across origins, credentials
//!    and every header that carried a secret are dropped, and a body that
//!    carried a secret is never resent.
//!
//! Every error, log line and audit entry is built from the request as the
//! plugin wrote it: after expansion, a failure only says that the URL as
//! written (with its `${secret:…}`) is not allowed, and errors of the HTTP
//! client are described by kind, never by their text (which would name the
//! expanded URL).
mod request;

use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

use crate::caps::audit::{render, render_target, Audit};
use crate::caps::capability::{Cap, Capability, GrantCx, StageEnv, StrList};
use crate::caps::denied;
use crate::caps::secrets::SecretsCap;
use crate::grants::url::{Refusal, UrlAllowlist, UrlPattern};
use crate::wit::ci::stage::http::{Host, Request, Response};
use crate::wit::CapError;
use std::sync::Arc;

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_request_body: usize,
    pub max_response_body: usize,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_redirects: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_request_body: 8 * 1024 * 1024,
            max_response_body: 8 * 1024 * 1024,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_redirects: 5,
        }
    }
}

pub struct HttpCap {
    stage: String,
    allow: UrlAllowlist,
    client: reqwest::Client,
    limits: HttpLimits,
    secrets: Arc<SecretsCap>,
    audit: Audit,
}

impl Capability for HttpCap {
    const NAME: &'static str = "http";
    type Raw = StrList;
    type Grant = UrlAllowlist;
    type Decls = ();

    /// Parsed and compiled here, once: `host check` and every call use
    /// these values.
    fn compile(raw: &StrList, _: &(), cx: &mut GrantCx<'_>) -> UrlAllowlist {
        let mut out = Vec::new();
        for h in raw {
            let p = h.get_ref();
            match UrlPattern::parse(p) {
                Ok(pattern) => out.push(pattern),
                Err(e) => cx.err(h.span(), format!("`grants.http` pattern {p:?}: {e}")),
            }
        }
        UrlAllowlist::new(out)
    }

    fn covers(g: &UrlAllowlist, _: Option<&str>) -> bool {
        !g.is_empty()
    }

    fn link<T: Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        crate::wit::ci::stage::http::add_to_linker::<_, Cap<Self>>(linker, get)
    }

    fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self> {
        Ok(HttpCap::new(
            env.stage,
            env.grants.http.clone(),
            env.shared.http.clone(),
            env.shared.http_limits.clone(),
            env.secrets_cap.clone(),
        )
        .with_audit(env.audit.clone()))
    }
}

/// A header as the plugin wrote it, checked.
struct HeaderTemplate<'a> {
    name: HeaderName,
    value: &'a str,
    secret: bool,
}

/// A request on its way, as redirects change it.
struct Outgoing {
    method: reqwest::Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    /// Headers that carry secrets: dropped when leaving the origin.
    secret_headers: Vec<HeaderName>,
    /// The URL was written with `${secret:…}` (messages name the template).
    url_secrets: bool,
    body_secrets: bool,
}

impl HttpCap {
    /// `allow` is the stage's `Grants.http`, compiled when the pipeline
    /// was validated.
    pub fn new(
        stage: &str,
        allow: UrlAllowlist,
        client: reqwest::Client,
        limits: HttpLimits,
        secrets: Arc<SecretsCap>,
    ) -> Self {
        Self {
            stage: stage.to_string(),
            allow,
            client,
            limits,
            secrets,
            audit: Audit::default(),
        }
    }

    /// Record every call in this trail.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// A client that never follows redirects by itself (we re-check them).
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pipeline-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static reqwest configuration")
    }

    /// Text the plugin wrote, fit for a message: masked, escaped.
    fn show(&self, text: &str) -> String {
        render_target(self.secrets.masker(), text)
    }

    fn deny(&self, target: String) -> CapError {
        denied(&self.stage, "http", target)
    }

    async fn send(&self, req: Request) -> Result<Response, CapError> {
        // 1. The request as written.
        let written = req.url.as_str();
        let shown = self.show(written);
        request::check_url_text(written)?;
        let url_secrets = self.secrets.check_template(written)?;
        let method = request::method(&req.method, &|t| self.show(t))?;
        let templates = self.header_templates(&req.headers)?;
        let body_secrets = self.body_has_secrets(req.body.as_deref())?;
        // 2. Expansion, and 3. the expanded URL matched again.
        let url = self.target_url(written, &shown, url_secrets)?;
        let (headers, secret_headers) = self.expand_headers(templates)?;
        let body = match req.body {
            Some(b) if body_secrets => {
                let text = String::from_utf8(b).expect("checked as UTF-8 above");
                Some(self.secrets.expand(&text)?.into_bytes())
            }
            other => other,
        };
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.limits.default_timeout)
            .min(self.limits.max_timeout);
        let mut out = Outgoing {
            method,
            url,
            headers,
            body,
            secret_headers,
            url_secrets,
            body_secrets,
        };
        self.exchange(&mut out, timeout, &shown).await
    }

    /// Each header's name and value checked as written, and whether the
    /// value carries `${secret:…}`.
    fn header_templates<'a>(
        &self,
        headers: &'a [(String, String)],
    ) -> Result<Vec<HeaderTemplate<'a>>, CapError> {
        let mut templates = Vec::with_capacity(headers.len());
        for (k, v) in headers {
            let name = request::header_name(k, &|t| self.show(t))?;
            request::check_header_value(&name, v)?;
            let secret = self.secrets.check_template(v)?;
            templates.push(HeaderTemplate {
                name,
                value: v,
                secret,
            });
        }
        Ok(templates)
    }

    /// The body within its limit; whether it is text carrying `${secret:…}`.
    fn body_has_secrets(&self, body: Option<&[u8]>) -> Result<bool, CapError> {
        match body {
            Some(b) if b.len() > self.limits.max_request_body => Err(CapError::Limit(format!(
                "request body of {} bytes exceeds the {} byte limit",
                b.len(),
                self.limits.max_request_body
            ))),
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => self.secrets.check_template(s),
                Err(_) => Ok(false),
            },
            None => Ok(false),
        }
    }

    /// The URL to call: matched as written, or (with secrets) its written
    /// origin matched, then expanded and matched again.
    fn target_url(&self, written: &str, shown: &str, url_secrets: bool) -> Result<Url, CapError> {
        if !url_secrets {
            return self.check_written(written, shown);
        }
        self.check_origin_of_template(written, shown)?;
        let expanded = self.secrets.expand(written)?;
        self.check_expanded(&expanded)
            .map_err(|_| self.deny(shown.to_string()))
    }

    /// The headers with their secrets expanded (and marked sensitive), and
    /// the names of those that carry secrets.
    fn expand_headers(
        &self,
        templates: Vec<HeaderTemplate<'_>>,
    ) -> Result<(HeaderMap, Vec<HeaderName>), CapError> {
        let mut headers = HeaderMap::new();
        let mut secret_headers = Vec::new();
        for t in templates {
            let value = if t.secret {
                self.secrets.expand(t.value)?
            } else {
                t.value.to_string()
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                CapError::Invalid(format!(
                    "the value of header `{}` is not a valid header value{}",
                    t.name,
                    if t.secret {
                        " once its secrets are expanded"
                    } else {
                        ""
                    }
                ))
            })?;
            if t.secret {
                value.set_sensitive(true);
                secret_headers.push(t.name.clone());
            }
            headers.append(t.name, value);
        }
        Ok((headers, secret_headers))
    }

    /// 4. The request, and every redirect checked again.
    async fn exchange(
        &self,
        out: &mut Outgoing,
        timeout: Duration,
        shown: &str,
    ) -> Result<Response, CapError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for _ in 0..=self.limits.max_redirects {
            let mut rb = self
                .client
                .request(out.method.clone(), out.url.clone())
                .headers(out.headers.clone());
            if let Some(b) = &out.body {
                rb = rb.body(b.clone());
            }
            let resp = tokio::time::timeout_at(deadline, rb.send())
                .await
                .map_err(|_| CapError::Limit(format!("request timed out after {timeout:?}")))?
                .map_err(|e| CapError::Failed(client_error(shown, &e)))?;
            if resp.status().is_redirection() {
                if let Some(loc) = resp.headers().get(reqwest::header::LOCATION) {
                    self.redirect(out, resp.status(), loc, shown)?;
                    continue;
                }
            }
            return self.read_response(resp, deadline, timeout, shown).await;
        }
        Err(CapError::Limit(format!(
            "more than {} redirects",
            self.limits.max_redirects
        )))
    }

    /// `out` turned toward a redirect's Location, which must be granted;
    /// leaving the origin drops credentials and secret headers, and a body
    /// with secrets is never resent elsewhere.
    fn redirect(
        &self,
        out: &mut Outgoing,
        status: reqwest::StatusCode,
        loc: &HeaderValue,
        shown: &str,
    ) -> Result<(), CapError> {
        let loc = loc
            .to_str()
            .map_err(|_| CapError::Failed("redirect with a non-text Location".into()))?;
        let next = out
            .url
            .join(loc)
            .map_err(|e| CapError::Failed(format!("bad redirect Location: {e}")))?;
        if self.allow.check(&next).is_err() {
            // A relative Location keeps parts of the expanded
            // URL: name only the template then.
            let target = if out.url_secrets {
                format!("{shown} (redirected outside the grant)")
            } else {
                format!("{} (redirect from {shown})", self.show(next.as_str()))
            };
            return Err(self.deny(target));
        }
        let keeps_body =
            matches!(status.as_u16(), 307 | 308) || out.method == reqwest::Method::HEAD;
        if next.origin() != out.url.origin() {
            // Credentials and secrets stay with the origin
            // they were meant for.
            if keeps_body && out.body_secrets && out.body.is_some() {
                return Err(CapError::Failed(format!(
                    "request to {shown}: not following a redirect to another origin: it would resend a body that carries secrets"
                )));
            }
            for h in [
                reqwest::header::AUTHORIZATION,
                reqwest::header::COOKIE,
                reqwest::header::PROXY_AUTHORIZATION,
            ]
            .iter()
            .chain(&out.secret_headers)
            {
                out.headers.remove(h);
            }
        }
        if !keeps_body {
            out.method = reqwest::Method::GET;
            out.body = None;
        }
        out.url = next;
        Ok(())
    }

    /// A URL with no `${secret:…}`: parsed and matched as written. Its
    /// errors may say what is wrong (it is the plugin's own text).
    fn check_written(&self, written: &str, shown: &str) -> Result<Url, CapError> {
        let url = Url::parse(written)
            .map_err(|e| CapError::Invalid(format!("bad URL `{shown}`: {e}")))?;
        match self.allow.check(&url) {
            Ok(_) => Ok(url),
            Err(e) => Err(self.refused(e, shown)),
        }
    }

    /// A URL with `${secret:…}`: when its scheme, host and port are
    /// written out before the first reference, they must be granted before
    /// anything is expanded.
    fn check_origin_of_template(&self, written: &str, shown: &str) -> Result<(), CapError> {
        let Some(origin) = request::literal_origin(written) else {
            return Ok(());
        };
        let url = Url::parse(&origin)
            .map_err(|e| CapError::Invalid(format!("bad URL `{shown}`: {e}")))?;
        self.allow
            .check_origin(&url)
            .map_err(|e| self.refused(e, shown))
    }

    fn refused(&self, e: Refusal, shown: &str) -> CapError {
        match e {
            Refusal::Scheme(s) => CapError::Invalid(format!(
                "unsupported URL scheme `{}` in `{shown}`",
                self.show(&s)
            )),
            _ => self.deny(shown.to_string()),
        }
    }

    /// The expanded URL. Its errors are never shown (they would describe
    /// a secret): the caller denies the URL as written.
    fn check_expanded(&self, expanded: &str) -> Result<Url, ()> {
        if request::check_url_text(expanded).is_err() {
            return Err(());
        }
        let url = Url::parse(expanded).map_err(|_| ())?;
        self.allow.check(&url).map_err(|_| ())?;
        Ok(url)
    }

    async fn read_response(
        &self,
        resp: reqwest::Response,
        deadline: tokio::time::Instant,
        timeout: Duration,
        shown: &str,
    ) -> Result<Response, CapError> {
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let max = self.limits.max_response_body;
        if resp.content_length().is_some_and(|n| n as usize > max) {
            return Err(CapError::Limit(format!(
                "response body exceeds the {max} byte limit"
            )));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        loop {
            let chunk = tokio::time::timeout_at(deadline, stream.next())
                .await
                .map_err(|_| CapError::Limit(format!("response timed out after {timeout:?}")))?;
            match chunk {
                None => break,
                Some(Err(e)) => return Err(CapError::Failed(client_error(shown, &e))),
                Some(Ok(c)) => {
                    if body.len() + c.len() > max {
                        return Err(CapError::Limit(format!(
                            "response body exceeds the {max} byte limit"
                        )));
                    }
                    body.extend_from_slice(&c);
                }
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// A client error, by kind: reqwest's own text names the (expanded) URL
/// and TLS errors may name the host, so none of it is used.
fn client_error(shown: &str, e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the response could not be read"
    } else if e.is_request() {
        "the request could not be sent"
    } else {
        "failed"
    };
    let mut source = std::error::Error::source(e);
    let mut io = None;
    while let Some(s) = source {
        if let Some(i) = s.downcast_ref::<std::io::Error>() {
            io = Some(i.kind());
        }
        source = s.source();
    }
    match io {
        Some(kind) => format!("request to {shown}: {what} ({kind})"),
        None => format!("request to {shown}: {what}"),
    }
}

impl Host for HttpCap {
    async fn send(&mut self, req: Request) -> wasmtime::Result<Result<Response, CapError>> {
        // As written: `${secret:…}` unexpanded; the audit masks and
        // escapes it, the log line goes through the same rendering.
        let written = format!("{} {}", req.method, req.url);
        let result = HttpCap::send(self, req).await;
        self.audit
            .record("http", &written, &result, |r| format!("HTTP {}", r.status));
        let m = self.secrets.masker();
        let target = render_target(m, &written);
        match &result {
            Ok(r) => {
                tracing::debug!(stage = %self.stage, %target, status = r.status, "http")
            }
            Err(e) => {
                let error = render(m, &crate::caps::describe(e), 1000);
                tracing::debug!(stage = %self.stage, %target, %error, "http")
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests;
