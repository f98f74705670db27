//! The actions a signed-in user takes on a run (cancel, re-run, approve,
//! reject), each checked and recorded here once: the JSON API
//! ([`super::routes`]) and the web forms ([`super::forms`]) only say who
//! asks and how to answer.
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{actions, operator, Denied, Principal};
use crate::run::approvals::{ApprovalStore, Decision};
use crate::run::record::new_run_id;
use crate::serve::cancel::NotCancellable;
use crate::serve::queue::{Accepted, Queue};
use crate::serve::ServerState;

/// What an action did: the API's answer, and the page a form goes on to.
#[derive(Debug)]
pub struct Done {
    pub status: StatusCode,
    pub body: Value,
    /// The run page to show next (the new run after a re-run).
    pub goto: String,
}

/// Why an action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The store failed: logged, never shown in detail.
    #[error("the run store failed")]
    Failed(#[source] anyhow::Error),
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Denied(Denied::Unauthenticated) => StatusCode::UNAUTHORIZED,
            Refused::Denied(Denied::Forbidden(_)) => StatusCode::FORBIDDEN,
            Refused::NotFound(_) => StatusCode::NOT_FOUND,
            Refused::Conflict(_) => StatusCode::CONFLICT,
            Refused::Failed(e) => {
                tracing::error!("an action: {e:#}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

fn failed(e: anyhow::Error) -> Refused {
    Refused::Failed(e)
}

fn run_page(id: &str) -> String {
    format!("/runs/{id}")
}

pub async fn cancel(s: &Arc<ServerState>, p: &Principal, id: &str) -> Result<Done, Refused> {
    operator(p, "cancel runs")?;
    let (run, who) = (id.to_string(), p.user.clone());
    let may = s
        .with_db(move |db| {
            let may = crate::serve::cancel::cancellable(db, &run)?;
            if may.is_ok() {
                actions::record(db.db(), &run, &who, "cancel", None)?;
            }
            Ok(may)
        })
        .await
        .map_err(failed)?;
    match may {
        Ok(()) => {
            let reason = format!("cancelled by {}", p.user);
            crate::serve::cancel::cancel(s, id, &reason).await;
            Ok(Done {
                status: StatusCode::ACCEPTED,
                body: json!({ "cancelling": id, "by": p.user }),
                goto: run_page(id),
            })
        }
        Err(e @ NotCancellable::Ended(..)) => Err(Refused::Conflict(e.to_string())),
        Err(e @ NotCancellable::Unknown(_)) => Err(Refused::NotFound(e.to_string())),
    }
}

/// The same commit again: a new run linked to the old one; with
/// `no_cache`, every stage runs (none is replayed from the stage cache).
pub async fn rerun(
    s: &Arc<ServerState>,
    p: &Principal,
    id: &str,
    no_cache: bool,
) -> Result<Done, Refused> {
    operator(p, "re-run runs")?;
    let (old, who) = (id.to_string(), p.user.clone());
    let new = new_run_id();
    let window = s.config.replay_window;
    let statuses = crate::serve::forge::Statuses::of(&s.config);
    let queued = s
        .with_db(move |db| {
            let Some(q) = Queue::new(db.db()).find(&old)? else {
                return Ok(Err(Refused::NotFound(format!("no run {old}"))));
            };
            let mut job = q.job;
            if job.archive.is_some() {
                // The uploaded archive is gone once its run ended.
                let why = "an uploaded source cannot be run again";
                return Ok(Err(Refused::Conflict(why.into())));
            }
            job.trigger.rerun_of = Some(old.clone());
            job.trigger.rerun_by = Some(who.clone());
            job.trigger.no_cache = no_cache;
            job.trigger.delivery = format!("rerun-{new}");
            db.db().transaction(|tx| {
                let jobs = [(new.clone(), job.clone())];
                let delivery = format!("rerun-{new}");
                let a =
                    Queue::new(tx).accept(&delivery, "rerun", "queued", &jobs, false, window)?;
                if let (Accepted::Queued { .. }, Some(st)) = (&a, &statuses) {
                    st.queued(tx, &new, &job.repository, &job.sha)?;
                }
                actions::record(tx, &old, &who, "rerun", Some(&new))?;
                Ok(Ok(new.clone()))
            })
        })
        .await
        .map_err(failed)??;
    s.wake.notify_one();
    s.statuses.notify_one();
    Ok(Done {
        status: StatusCode::ACCEPTED,
        body: json!({ "queued": [queued], "rerun_of": id }),
        goto: run_page(&queued),
    })
}

/// Approve or reject the waiting `stage` of run `id`.
pub async fn decide(
    s: &Arc<ServerState>,
    p: &Principal,
    (id, stage): (&str, &str),
    decision: Decision,
    comment: Option<&str>,
) -> Result<Done, Refused> {
    let comment = comment
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| crate::text::cut(c, 1000));
    let store = approvals(s).await.map_err(failed)?;
    let waiting = store
        .pending()
        .await
        .map_err(failed)?
        .into_iter()
        .find(|x| x.run_id == id && x.stage == stage)
        .ok_or_else(|| {
            Refused::Conflict(format!(
                "stage `{stage}` of run {id} is not waiting for approval"
            ))
        })?;
    if !p.may_approve(&waiting.environment) {
        let why = format!(
            "{} may not decide on deployments to `{}`",
            p.user, waiting.environment
        );
        return Err(Denied::Forbidden(why).into());
    }
    store
        .decide(id, stage, decision, &p.user, comment.as_deref())
        .await
        .map_err(|e| Refused::Conflict(format!("{e:#}")))?;
    let (run, who, what) = (
        id.to_string(),
        p.user.clone(),
        decision.as_str().to_string(),
    );
    let detail = format!(
        "{stage}{}",
        comment.map(|c| format!(": {c}")).unwrap_or_default()
    );
    s.with_db(move |db| actions::record(db.db(), &run, &who, &what, Some(&detail)))
        .await
        .map_err(failed)?;
    Ok(Done {
        status: StatusCode::OK,
        body: json!({ "run": id, "stage": stage, "decision": decision.as_str(), "by": p.user }),
        goto: run_page(id),
    })
}

/// The approvals of this server's run store.
async fn approvals(s: &Arc<ServerState>) -> anyhow::Result<ApprovalStore> {
    let loc = s.store_location()?;
    tokio::task::spawn_blocking(move || ApprovalStore::open_at(&loc)).await?
}
