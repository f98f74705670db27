//! `[server] read = "signed-in"`: every read (pages, JSON API, live
//! events, metrics) needs a signed-in browser or an API token. A page
//! sends the browser to sign in and come back; the API and `/metrics`
//! answer 401. The webhook and uploads are signed, and `/healthz` and the
//! sign-in page stay open.
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde_json::json;

use super::{forms, from_headers, Read};
use crate::serve::ServerState;
use axum::http::HeaderValue;

/// Paths anyone may reach whatever `read` says.
fn open_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/sign-in" | "/github-webhook" | "/github-webhook/"
    ) || path.starts_with("/upload/")
}

pub async fn reads(State(s): State<Arc<ServerState>>, req: Request, next: Next) -> Response {
    // Other methods prove who they are in their handlers (a token, a
    // session with its CSRF token, a signature).
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if s.config.read == Read::Public || !read || open_path(req.uri().path()) {
        return next.run(req).await;
    }
    let headers = req.headers();
    // A token; or a session (state-changing forms check theirs again).
    let allowed = from_headers(&s.config.users, headers).is_ok()
        || matches!(forms::signed_in(&s, headers).await, Ok(Some(_)));
    if allowed {
        return next.run(req).await;
    }
    let path = req.uri().path();
    let page = !(path.starts_with("/api/") || path == "/metrics");
    if page {
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &target)
            .finish();
        return Redirect::to(&format!("/sign-in?{q}")).into_response();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": "sign in: this server's runs are for signed-in users (send `Authorization: Bearer TOKEN`)" })),
    )
        .into_response()
}

/// What every answer tells the browser, so that a value that escaped its
/// escaping still cannot run or frame the pages: scripts only the live
/// page's own (by digest), forms only to this server, no framing, no
/// sniffing, no referrer to other sites.
pub async fn page_headers(req: Request, next: Next) -> Response {
    static POLICY: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        use base64::Engine;
        use sha2::Digest;
        let live = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(crate::serve::web::LIVE.as_bytes()));
        let csp = format!(
            "default-src 'none'; script-src 'sha256-{live}'; connect-src 'self'; \
             style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
        );
        HeaderValue::from_str(&csp).expect("an ASCII policy")
    });
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, policy.clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}
