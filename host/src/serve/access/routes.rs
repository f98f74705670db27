//! The actions of the JSON API, each behind a token and a role:
//! `POST /api/runs/{id}/cancel`, `…/rerun`, `…/stages/{stage}/approve`
//! and `…/reject` (body `{"comment": "…"}`, optional). 401 without a
//! token a user holds, 403 for a role that may not, 404 for an unknown
//! run, 409 when the run is past it.
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{actions, from_headers, operator, Denied, Principal};
use crate::run::approvals::{ApprovalStore, Decision};
use crate::run::record::new_run_id;
use crate::serve::cancel::NotCancellable;
use crate::serve::queue::{Accepted, Queue};
use crate::serve::ServerState;

type S = State<Arc<ServerState>>;

pub fn router() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/rerun", post(rerun))
        .route("/api/runs/{id}/stages/{stage}/approve", post(approve))
        .route("/api/runs/{id}/stages/{stage}/reject", post(reject))
}

fn refuse(d: Denied) -> Response {
    let status = match d {
        Denied::Unauthenticated => StatusCode::UNAUTHORIZED,
        Denied::Forbidden(_) => StatusCode::FORBIDDEN,
    };
    (status, Json(json!({ "error": d.to_string() }))).into_response()
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn failed(e: anyhow::Error) -> Response {
    tracing::error!("an action: {e:#}");
    answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({ "error": "the run store failed" }),
    )
}

/// Who asks, or the refusal (a failed guess costs a little time).
async fn principal(s: &ServerState, headers: &HeaderMap) -> Result<Principal, Response> {
    match from_headers(&s.config.users, headers) {
        Ok(p) => Ok(p),
        Err(d) => {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            Err(refuse(d))
        }
    }
}

async fn cancel(State(s): S, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let p = match principal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Err(d) = operator(&p, "cancel runs") {
        return refuse(d);
    }
    let (run, who) = (id.clone(), p.user.clone());
    let known = s
        .with_db(move |db| {
            let may = crate::serve::cancel::cancellable(db, &run)?;
            if may.is_ok() {
                actions::record(db.db(), &run, &who, "cancel", None)?;
            }
            Ok(may)
        })
        .await;
    match known {
        Ok(Ok(())) => {
            let reason = format!("cancelled by {}", p.user);
            crate::serve::cancel::cancel(&s, &id, &reason).await;
            answer(
                StatusCode::ACCEPTED,
                json!({ "cancelling": id, "by": p.user }),
            )
        }
        Ok(Err(e @ NotCancellable::Ended(..))) => {
            answer(StatusCode::CONFLICT, json!({ "error": e.to_string() }))
        }
        Ok(Err(e @ NotCancellable::Unknown(_))) => {
            answer(StatusCode::NOT_FOUND, json!({ "error": e.to_string() }))
        }
        Err(e) => failed(e),
    }
}

/// The same commit again: a new run linked to the old one.
async fn rerun(State(s): S, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let p = match principal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Err(d) = operator(&p, "re-run runs") {
        return refuse(d);
    }
    let (old, who) = (id.clone(), p.user.clone());
    let new = new_run_id();
    let window = s.config.replay_window;
    let statuses = crate::serve::forge::Statuses::of(&s.config);
    let queued = s
        .with_db(move |db| {
            let Some(q) = Queue::new(db.db()).find(&old)? else {
                return Ok(None);
            };
            let mut job = q.job;
            job.trigger.rerun_of = Some(old.clone());
            job.trigger.rerun_by = Some(who.clone());
            job.trigger.delivery = format!("rerun-{new}");
            if job.archive.is_some() {
                // The uploaded archive is gone once its run ended.
                return Ok(Some(Err("an uploaded source cannot be run again")));
            }
            db.db().transaction(|tx| {
                let jobs = [(new.clone(), job.clone())];
                let a = Queue::new(tx).accept(
                    &format!("rerun-{new}"),
                    "rerun",
                    "queued",
                    &jobs,
                    false,
                    window,
                )?;
                if let (Accepted::Queued { .. }, Some(st)) = (&a, &statuses) {
                    st.queued(tx, &new, &job.repository, &job.sha)?;
                }
                actions::record(tx, &old, &who, "rerun", Some(&new))?;
                Ok(Some(Ok(new.clone())))
            })
        })
        .await;
    s.wake.notify_one();
    s.statuses.notify_one();
    match queued {
        Ok(Some(Ok(new))) => answer(
            StatusCode::ACCEPTED,
            json!({ "queued": [new], "rerun_of": id }),
        ),
        Ok(Some(Err(why))) => answer(StatusCode::CONFLICT, json!({ "error": why })),
        Ok(None) => answer(StatusCode::NOT_FOUND, json!({ "error": "no such run" })),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize, Default)]
struct DecideBody {
    comment: Option<String>,
}

async fn approve(
    s: S,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<DecideBody>>,
) -> Response {
    decide(s, path, headers, body, Decision::Approved).await
}

async fn reject(
    s: S,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<DecideBody>>,
) -> Response {
    decide(s, path, headers, body, Decision::Rejected).await
}

async fn decide(
    State(s): S,
    Path((id, stage)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<DecideBody>>,
    decision: Decision,
) -> Response {
    let p = match principal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let comment = body
        .and_then(|b| b.0.comment)
        .map(|c| crate::text::cut(&c, 1000));
    let store = match approvals(&s).await {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    let pending = match store.pending().await {
        Ok(list) => list
            .into_iter()
            .find(|x| x.run_id == id && x.stage == stage),
        Err(e) => return failed(e),
    };
    let Some(waiting) = pending else {
        return answer(
            StatusCode::CONFLICT,
            json!({ "error": format!("stage `{stage}` of run {id} is not waiting for approval") }),
        );
    };
    if !p.may_approve(&waiting.environment) {
        let why = format!(
            "{} may not decide on deployments to `{}`",
            p.user, waiting.environment
        );
        return refuse(Denied::Forbidden(why));
    }
    if let Err(e) = store
        .decide(&id, &stage, decision, &p.user, comment.as_deref())
        .await
    {
        return answer(StatusCode::CONFLICT, json!({ "error": format!("{e:#}") }));
    }
    let (run, who, what) = (id.clone(), p.user.clone(), decision.as_str().to_string());
    let detail = format!(
        "{stage}{}",
        comment.map(|c| format!(": {c}")).unwrap_or_default()
    );
    if let Err(e) = s
        .with_db(move |db| actions::record(db.db(), &run, &who, &what, Some(&detail)))
        .await
    {
        return failed(e);
    }
    answer(
        StatusCode::OK,
        json!({ "run": id, "stage": stage, "decision": decision.as_str(), "by": p.user }),
    )
}

/// The approvals of this server's run store.
async fn approvals(s: &Arc<ServerState>) -> anyhow::Result<ApprovalStore> {
    let loc = s.store_location()?;
    tokio::task::spawn_blocking(move || ApprovalStore::open_at(&loc)).await?
}
