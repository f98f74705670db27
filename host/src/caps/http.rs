//! Outgoing HTTP for a stage, through reqwest, inside an allowlist.
//!
//! Order of checks for one request:
//! 1. the URL as the plugin wrote it is checked against the `http` grant; if
//!    it carries no `${secret:…}` it must match before anything else happens;
//! 2. secret references are expanded (each name must be granted); a URL that
//!    came from a secret is checked again, expanded, so a secret can never
//!    send the request somewhere the grant does not allow;
//! 3. every redirect target is checked against the allowlist again.
//!
//! Errors and denials name the URL as written, never the expanded one.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::caps::audit::Audit;
use crate::caps::denied;
use crate::caps::secrets::{contains_reference, SecretsCap};
use crate::runtime::bindings::ci::stage::http::{Host, Request, Response};
use crate::runtime::bindings::CapError;

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

/// URL patterns a stage may call. `*` matches any run of characters.
#[derive(Clone)]
pub struct Allowlist {
    set: Arc<GlobSet>,
}

impl Allowlist {
    pub fn new(patterns: &[String]) -> Result<Self, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(
                GlobBuilder::new(p)
                    .literal_separator(false)
                    .backslash_escape(true)
                    .build()?,
            );
        }
        Ok(Self {
            set: Arc::new(b.build()?),
        })
    }

    pub fn allows(&self, url: &str) -> bool {
        self.set.is_match(url)
    }
}

pub struct HttpCap {
    stage: String,
    allow: Allowlist,
    client: reqwest::Client,
    limits: HttpLimits,
    secrets: Arc<SecretsCap>,
    audit: Audit,
}

impl HttpCap {
    pub fn new(
        stage: &str,
        allow: Allowlist,
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

    fn deny(&self, url_as_written: &str) -> CapError {
        denied(
            &self.stage,
            "http",
            self.secrets.masker().mask(url_as_written),
        )
    }

    async fn send(&self, req: Request) -> Result<Response, CapError> {
        let written = req.url.clone();
        let templated = contains_reference(&written);
        if !templated {
            self.check_url(&written, &written)?;
        }
        let expanded = self.secrets.expand(&written)?;
        let mut url = self.check_url(&expanded, &written)?;
        let method = reqwest::Method::from_bytes(req.method.to_uppercase().as_bytes())
            .map_err(|_| CapError::Invalid(format!("bad HTTP method `{}`", req.method)))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &req.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| CapError::Invalid(format!("bad header name `{k}`")))?;
            let value = reqwest::header::HeaderValue::from_str(&self.secrets.expand(v)?)
                .map_err(|_| CapError::Invalid(format!("bad value for header `{k}`")))?;
            headers.append(name, value);
        }
        let body = match req.body {
            Some(b) if b.len() > self.limits.max_request_body => {
                return Err(CapError::Limit(format!(
                    "request body of {} bytes exceeds the {} byte limit",
                    b.len(),
                    self.limits.max_request_body
                )))
            }
            Some(b) => match std::str::from_utf8(&b) {
                Ok(s) if contains_reference(s) => Some(self.secrets.expand(s)?.into_bytes()),
                _ => Some(b),
            },
            None => None,
        };
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.limits.default_timeout)
            .min(self.limits.max_timeout);
        let deadline = tokio::time::Instant::now() + timeout;

        let mut method = method;
        let mut body = body;
        for _ in 0..=self.limits.max_redirects {
            let mut rb = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                rb = rb.body(b.clone());
            }
            let resp = tokio::time::timeout_at(deadline, rb.send())
                .await
                .map_err(|_| CapError::Limit(format!("request timed out after {timeout:?}")))?
                .map_err(|e| CapError::Failed(self.describe_error(&written, &e)))?;
            if resp.status().is_redirection() {
                if let Some(loc) = resp.headers().get(reqwest::header::LOCATION) {
                    let loc = loc.to_str().map_err(|_| {
                        CapError::Failed("redirect with a non-text Location".into())
                    })?;
                    let next = url
                        .join(loc)
                        .map_err(|e| CapError::Failed(format!("bad redirect Location: {e}")))?;
                    let m = self.secrets.masker();
                    let shown = format!(
                        "{} (redirect from {})",
                        m.mask(next.as_str()),
                        m.mask(&written)
                    );
                    let next = self.check_url(next.as_str(), &shown)?;
                    if next.origin() != url.origin() {
                        // Credentials stay with the origin they were meant for.
                        headers.remove(reqwest::header::AUTHORIZATION);
                        headers.remove(reqwest::header::COOKIE);
                    }
                    if matches!(resp.status().as_u16(), 301..=303)
                        && method != reqwest::Method::HEAD
                    {
                        method = reqwest::Method::GET;
                        body = None;
                    }
                    url = next;
                    continue;
                }
            }
            return self.read_response(resp, deadline, timeout).await;
        }
        Err(CapError::Limit(format!(
            "more than {} redirects",
            self.limits.max_redirects
        )))
    }

    async fn read_response(
        &self,
        resp: reqwest::Response,
        deadline: tokio::time::Instant,
        timeout: Duration,
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
                Some(Err(e)) => return Err(CapError::Failed(format!("reading response: {e}"))),
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

    fn describe_error(&self, written: &str, e: &reqwest::Error) -> String {
        // reqwest errors include the (expanded) URL: mask it.
        let m = self.secrets.masker();
        format!("request to {}: {}", m.mask(written), m.mask(&e.to_string()))
    }

    /// Parse and normalise `url`, then match it against the allowlist.
    /// URLs with user info are refused outright: `http://allowed:x@evil/`
    /// would otherwise slip past a `http://allowed:*` pattern.
    fn check_url(&self, url: &str, written: &str) -> Result<reqwest::Url, CapError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            CapError::Invalid(format!(
                "bad URL `{}`: {e}",
                self.secrets.masker().mask(written)
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CapError::Invalid(format!(
                "unsupported URL scheme `{}`",
                parsed.scheme()
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(self.deny(written));
        }
        if !self.allow.allows(parsed.as_str()) {
            return Err(self.deny(written));
        }
        Ok(parsed)
    }
}

impl Host for HttpCap {
    async fn send(&mut self, req: Request) -> wasmtime::Result<Result<Response, CapError>> {
        let method = req.method.clone();
        let shown = self.secrets.masker().mask(&req.url);
        let written = format!("{method} {}", req.url);
        let result = HttpCap::send(self, req).await;
        self.audit
            .record("http", &written, &result, |r| format!("HTTP {}", r.status));
        match &result {
            Ok(r) => {
                tracing::debug!(stage = %self.stage, %method, url = %shown, status = r.status, "http")
            }
            Err(e) => {
                tracing::debug!(stage = %self.stage, %method, url = %shown, error = %crate::caps::describe(e), "http")
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_globs_match_whole_urls() {
        let a = Allowlist::new(&[
            "https://hooks.slack.com/*".into(),
            "http://127.0.0.1:*/ok".into(),
        ])
        .unwrap();
        assert!(a.allows("https://hooks.slack.com/services/T/B/x"));
        assert!(a.allows("http://127.0.0.1:8080/ok"));
        assert!(!a.allows("http://127.0.0.1:8080/ok/more"));
        assert!(!a.allows("https://hooks.slack.com.evil.example/x"));
        assert!(!a.allows("https://evil.example/?https://hooks.slack.com/"));
    }
}
