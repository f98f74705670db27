//! The actions of the JSON API, each behind a token and a role:
//! `POST /api/runs/{id}/cancel`, `…/rerun`, `…/stages/{stage}/approve`
//! and `…/reject` (body `{"comment": "…"}`, optional). 401 without a
//! token a user holds, 403 for a role that may not, 404 for an unknown
//! run, 409 when the run is past it. Cookies are not credentials here:
//! a browser acts through the pages' forms, which carry a CSRF token.
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::act::{self, Done, Refused};
use super::{from_headers, Principal};
use crate::run::approvals::Decision;
use crate::serve::ServerState;

type S = State<Arc<ServerState>>;

pub fn router() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/rerun", post(rerun))
        .route("/api/runs/{id}/stages/{stage}/{decision}", post(decide))
}

fn reply(r: Result<Done, Refused>) -> Response {
    match r {
        Ok(d) => (d.status, Json(d.body)).into_response(),
        Err(e) => (e.status(), Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

/// Who asks, or the refusal (a failed guess costs a little time).
pub(crate) async fn principal(s: &ServerState, headers: &HeaderMap) -> Result<Principal, Response> {
    match from_headers(&s.config.users, headers) {
        Ok(p) => Ok(p),
        Err(d) => {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            Err(reply(Err(d.into())))
        }
    }
}

async fn cancel(State(s): S, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match principal(&s, &headers).await {
        Ok(p) => reply(act::cancel(&s, &p, &id).await),
        Err(r) => r,
    }
}

/// `{"no_cache": true}`: run every stage (none replayed from the cache).
#[derive(Deserialize, Default)]
struct RerunBody {
    #[serde(default)]
    no_cache: bool,
}

async fn rerun(
    State(s): S,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<RerunBody>>,
) -> Response {
    let no_cache = body.is_some_and(|b| b.0.no_cache);
    match principal(&s, &headers).await {
        Ok(p) => reply(act::rerun(&s, &p, &id, no_cache).await),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
struct DecideBody {
    comment: Option<String>,
}

/// `…/approve` or `…/reject`.
async fn decide(
    State(s): S,
    Path((id, stage, decision)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Option<Json<DecideBody>>,
) -> Response {
    let Some(decision) = Decision::from_action(&decision) else {
        let e = act::Refused::NotFound(format!("no action `{decision}` (approve, reject)"));
        return reply(Err(e));
    };
    let p = match principal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let comment = body.and_then(|b| b.0.comment);
    reply(act::decide(&s, &p, (&id, &stage), decision, comment.as_deref()).await)
}
