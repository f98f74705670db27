//! Outgoing HTTP through the host's `http` import.
//!
//! The URL must match the stage's `http` grant. `${secret:NAME}` in the URL,
//! a header value or the body is expanded by the host.
//!
//! ```ignore
//! let resp = stage_sdk::http::post_json(&url, &serde_json::json!({"text": "hi"}))?;
//! if resp.is_success() { .. } else { log::warn!("{}: {}", resp.status, resp.text()) }
//! ```

use serde::{de::DeserializeOwned, Serialize};

use crate::bindings::ci::stage::http as raw;
use crate::CapError;

pub use raw::{Request, Response};

/// Sends `req` as is (the raw import).
pub fn send(req: &Request) -> Result<Response, CapError> {
    raw::send(req)
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, CapError> {
    Request::new("GET", url).send()
}

/// `POST url` with `value` serialized as JSON (`content-type: application/json`).
pub fn post_json<T: Serialize + ?Sized>(url: &str, value: &T) -> Result<Response, CapError> {
    Request::new("POST", url).json(value)?.send()
}

impl Request {
    /// A request with no headers, no body and the host's default timeout.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    ///
    /// Fails with `CapError::Invalid` when `value` does not serialize.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, CapError> {
        let body =
            serde_json::to_vec(value).map_err(|e| CapError::Invalid(format!("JSON body: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Per-request timeout (the host caps it).
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Sends it through the host.
    pub fn send(&self) -> Result<Response, CapError> {
        send(self)
    }
}

impl Response {
    /// 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_builder_and_json_body() {
        let r = Request::new("POST", "https://x")
            .timeout_ms(5)
            .json(&serde_json::json!({"a": 1}))
            .unwrap();
        assert_eq!(r.body.as_deref(), Some(&br#"{"a":1}"#[..]));
        assert_eq!(
            r.headers,
            vec![("content-type".to_string(), "application/json".to_string())]
        );
        assert_eq!(r.timeout_ms, Some(5));
    }

    #[test]
    fn response_helpers() {
        let r = Response {
            status: 429,
            headers: vec![("Retry-After".into(), "3".into())],
            body: b"rate_limited".to_vec(),
        };
        assert!(!r.is_success());
        assert_eq!(r.header("retry-after"), Some("3"));
        assert_eq!(r.text(), "rate_limited");
    }
}
