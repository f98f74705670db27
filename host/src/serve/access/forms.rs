//! The pages' forms: sign in, sign out, and the actions on a run
//! (`POST /runs/{id}/cancel`, `…/rerun`, `…/stages/{stage}/approve`,
//! `…/reject`). A form is taken only from a signed-in browser, with the
//! session's CSRF token, from a page of this server (`Origin`,
//! `Sec-Fetch-Site`); the action itself is [`super::act`]'s, as for the
//! API. Every answer is a redirect to a page (POST, then GET) or a page
//! saying why not.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::session::{self, Cookies, Session};
use super::throttle::Key;
use super::{act, constant_eq, named, password, Principal};
use crate::run::approvals::Decision;
use crate::serve::{web, ServerState};

type S = State<Arc<ServerState>>;

/// How long a failed sign-in takes at least (on top of the hash check).
const FAILED_SIGN_IN_DELAY: Duration = Duration::from_millis(300);

pub fn router() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/rerun", post(rerun))
        .route("/runs/{id}/stages/{stage}/{decision}", post(decide))
}

/// Who is looking at a page, and what their forms carry.
#[derive(Debug, Default, Clone)]
pub struct Viewer {
    pub principal: Option<Principal>,
    /// The session's CSRF token, put into every form.
    pub csrf: Option<String>,
    /// Whether anyone can sign in here (a `[[user]]` with a password).
    pub can_sign_in: bool,
}

pub fn cookies(s: &ServerState) -> Cookies {
    // Secure unless the server says it is reached over plain HTTP.
    Cookies {
        secure: s
            .config
            .public_url
            .as_deref()
            .is_none_or(|u| u.starts_with("https://")),
    }
}

/// The session the request's cookie names, with its user as server.toml
/// says now.
pub async fn signed_in(
    s: &Arc<ServerState>,
    headers: &HeaderMap,
) -> anyhow::Result<Option<(Principal, Session)>> {
    let Some(token) = session::cookie(headers, cookies(s).session_name()) else {
        return Ok(None);
    };
    let token = token.to_string();
    let found = s.with_db(move |db| session::find(db.db(), &token)).await?;
    Ok(found.and_then(|sess| named(&s.config.users, &sess.user).map(|p| (p, sess))))
}

/// The viewer of a page (nobody, when the store cannot say).
pub async fn viewer(s: &Arc<ServerState>, headers: &HeaderMap) -> Viewer {
    let found = signed_in(s, headers).await.unwrap_or_else(|e| {
        tracing::error!("reading a session: {e:#}");
        None
    });
    Viewer {
        can_sign_in: s.config.users.iter().any(|u| u.password.is_some()),
        csrf: found.as_ref().map(|(_, sess)| sess.csrf.clone()),
        principal: found.map(|(p, _)| p),
    }
}

/// A form posted by a page of this server, as far as the browser says:
/// no cross-site `Sec-Fetch-Site`, and an `Origin` (when sent) naming
/// the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return false;
    }
    match text(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let authority = url::Url::parse(origin).ok().and_then(|u| {
                let host = u.host_str()?.to_string();
                Some(match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            });
            authority.is_some() && authority.as_deref() == text(header::HOST)
        }
    }
}

/// A page saying why a form was not taken.
fn refused(status: StatusCode, why: &str, viewer: &Viewer) -> Response {
    (status, Html(web::refusal(status, why, viewer))).into_response()
}

/// Where to go after signing in: a path of this server only.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.len() <= 512
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn sign_in_page(State(s): S, Query(q): Query<NextQuery>) -> Response {
    let token = match session::random_token() {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    let c = cookies(&s);
    let page = web::sign_in_page(&token, &local_path(q.next.as_deref()), None);
    let mut r = Html(page).into_response();
    set_cookie(&mut r, &c.set(c.form_name(), &token, 600));
    r
}

fn set_cookie(r: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("a form: {e:#}");
    refused(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server failed; try again",
        &Viewer::default(),
    )
}

/// Missing fields are empty: refused as a wrong token or password
/// rather than a 422.
#[derive(Deserialize, Default)]
#[serde(default)]
struct SignInForm {
    user: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

async fn sign_in(
    State(s): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<SignInForm>,
) -> Response {
    let c = cookies(&s);
    let nobody = Viewer::default();
    let form_cookie = session::cookie(&headers, c.form_name()).unwrap_or("");
    if !same_origin(&headers) || !constant_eq(form_cookie.as_bytes(), f.csrf.as_bytes()) {
        let why = "this sign-in form did not come from this server's page (or it expired): open the sign-in page again";
        return refused(StatusCode::FORBIDDEN, why, &nobody);
    }
    let next = local_path(f.next.as_deref());
    let name = crate::text::cut(f.user.trim(), 64);
    let keys = [Key::Account(name.to_lowercase()), Key::Address(peer.ip())];
    if let Err(wait) = s.sign_ins.check(&keys, Instant::now()) {
        tracing::warn!(user = %name, from = %peer.ip(), "sign-in refused: too many failures");
        let why = format!(
            "too many failed sign-ins: try again in {} s",
            wait.as_secs().max(1)
        );
        let mut r = refused(StatusCode::TOO_MANY_REQUESTS, &why, &nobody);
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    // A password is never this long; argon2 need not read megabytes.
    let given = crate::text::cut(&f.password, 1024);
    let hash = s
        .config
        .users
        .iter()
        .find(|u| u.name == name)
        .and_then(|u| u.password.clone());
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => password::verify(&h, &given),
        None => {
            password::verify_nobody(&given);
            false
        }
    })
    .await
    .unwrap_or(false);
    if !ok {
        s.sign_ins.failed(&keys, Instant::now());
        tracing::warn!(user = %name, from = %peer.ip(), "sign-in failed");
        tokio::time::sleep(FAILED_SIGN_IN_DELAY).await;
        let token = session::random_token().unwrap_or_default();
        let page = web::sign_in_page(&token, &next, Some("wrong name or password"));
        let mut r = (StatusCode::UNAUTHORIZED, Html(page)).into_response();
        set_cookie(&mut r, &c.set(c.form_name(), &token, 600));
        return r;
    }
    s.sign_ins.succeeded(&keys[0]);
    let user = name.clone();
    match s.with_db(move |db| session::start(db.db(), &user)).await {
        Ok((token, _)) => {
            tracing::info!(user = %name, from = %peer.ip(), "signed in");
            let mut r = Redirect::to(&next).into_response();
            let max_age = session::LIFETIME_MS / 1000;
            set_cookie(&mut r, &c.set(c.session_name(), &token, max_age));
            set_cookie(&mut r, &c.set(c.form_name(), "", 0));
            r
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CsrfForm {
    csrf: String,
}

/// The signed-in user of a form that carries their session's CSRF token,
/// or the page saying why not.
async fn form_principal(
    s: &Arc<ServerState>,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(Principal, Viewer), Response> {
    let (p, sess) = match signed_in(s, headers).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            let why = "sign in first (your session ended or was never started)";
            return Err(refused(StatusCode::UNAUTHORIZED, why, &Viewer::default()));
        }
        Err(e) => return Err(internal(e)),
    };
    let viewer = Viewer {
        principal: Some(p.clone()),
        csrf: Some(sess.csrf.clone()),
        can_sign_in: true,
    };
    if !same_origin(headers) || !constant_eq(sess.csrf.as_bytes(), csrf.as_bytes()) {
        tracing::warn!(user = %p.user, "a form without its CSRF token refused");
        let why = "this form did not come from this server's page: reload the page and try again";
        return Err(refused(StatusCode::FORBIDDEN, why, &viewer));
    }
    Ok((p, viewer))
}

async fn sign_out(State(s): S, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = form_principal(&s, &headers, &f.csrf).await {
        return r;
    }
    let c = cookies(&s);
    if let Some(token) = session::cookie(&headers, c.session_name()) {
        let token = token.to_string();
        if let Err(e) = s.with_db(move |db| session::end(db.db(), &token)).await {
            return internal(e);
        }
    }
    let mut r = Redirect::to("/").into_response();
    set_cookie(&mut r, &c.set(c.session_name(), "", 0));
    r
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ActForm {
    csrf: String,
    comment: Option<String>,
    /// The re-run button that runs every stage (none from the cache).
    no_cache: Option<String>,
}

/// Runs an action for a form and goes on to its page.
async fn act_then_show<F, Fut>(
    s: &Arc<ServerState>,
    headers: &HeaderMap,
    f: &ActForm,
    action: F,
) -> Response
where
    F: FnOnce(Arc<ServerState>, Principal) -> Fut,
    Fut: std::future::Future<Output = Result<act::Done, act::Refused>>,
{
    let (p, viewer) = match form_principal(s, headers, &f.csrf).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    match action(s.clone(), p).await {
        Ok(done) => Redirect::to(&done.goto).into_response(),
        Err(e) => refused(e.status(), &e.to_string(), &viewer),
    }
}

async fn cancel(
    State(s): S,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<ActForm>,
) -> Response {
    act_then_show(&s, &headers, &f, |s, p| async move {
        act::cancel(&s, &p, &id).await
    })
    .await
}

async fn rerun(
    State(s): S,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<ActForm>,
) -> Response {
    let no_cache = f.no_cache.is_some();
    act_then_show(&s, &headers, &f, |s, p| async move {
        act::rerun(&s, &p, &id, no_cache).await
    })
    .await
}

/// `…/approve` or `…/reject`.
async fn decide(
    State(s): S,
    Path((id, stage, decision)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(f): Form<ActForm>,
) -> Response {
    let Some(decision) = Decision::from_action(&decision) else {
        return (StatusCode::NOT_FOUND, Html(web::no_such("action"))).into_response();
    };
    let comment = f.comment.clone();
    act_then_show(&s, &headers, &f, |s, p| async move {
        act::decide(&s, &p, (&id, &stage), decision, comment.as_deref()).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_form_from_another_site_is_told_apart() {
        let host = ("host", "ci.example:8080");
        assert!(same_origin(&headers(&[host])));
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://ci.example:8080")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-origin")
        ])));
        for bad in [
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://ci.example:8081")],
            vec![("origin", "http://ci.example:8080")],
            vec![host, ("sec-fetch-site", "cross-site")],
        ] {
            assert!(!same_origin(&headers(&bad)), "{bad:?}");
        }
    }

    #[test]
    fn after_signing_in_only_a_path_of_this_server() {
        assert_eq!(local_path(Some("/runs/r1")), "/runs/r1");
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil.example",
            "javascript:alert(1)",
            "/a b",
            "",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }
}
