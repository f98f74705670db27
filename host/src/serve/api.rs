//! The server's HTTP routes: the webhook, the JSON API, `/metrics`, and the
//! web pages (rendered by [`super::web`]).
//!
//! | route | what |
//! |---|---|
//! | `POST /github-webhook/` | GitHub deliveries (signed) |
//! | `POST /upload/{name}` | a source archive for an `[[upload]]` source (signed the same way) |
//! | `GET /api/runs?pipeline=&branch=&status=&limit=` | run summaries, newest first, and the queue |
//! | `GET /api/runs/{id}` | one run record (stages, outputs, annotations, approvals, logs) |
//! | `GET /api/runs/{id}/logs?stage=&after=` | live log lines after position `after` |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | `ok` |
//! | `GET /`, `GET /runs/{id}`, `GET /pipelines/{name}` | the web pages |
//! | `POST /api/runs/{id}/cancel`, `…/rerun`, `…/stages/{stage}/approve`, `…/reject` | actions, with a token ([`crate::serve::access::routes`]) |
//! | `GET`/`POST /sign-in`, `POST /sign-out`, `POST /runs/{id}/…` | sign-in and the pages' forms ([`crate::serve::access::forms`]) |
//!
//! With `[server] read = "signed-in"`, every read needs a session or a
//! token ([`crate::serve::access::guard`]).
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::run::record::{new_run_id, TriggerInfo};
use crate::run::{RunFilter, Status};
use crate::serve::config::Upload;
use crate::serve::dispatch;
use crate::serve::metrics::{self, ServerCounts};
use crate::serve::queue::{self, Accepted, Job, Queue, Seen};
use crate::serve::webhook::{self, Plan};
use crate::serve::{web, ServerState};
use crate::source::archive::{Format, Limits, SourceArchive};

type S = State<Arc<ServerState>>;

pub fn router(state: Arc<ServerState>) -> Router {
    let limit = state.config.max_body;
    let upload_limit = state
        .config
        .uploads
        .iter()
        .map(|u| u.max_size as usize)
        .max()
        // Slack, so that a slightly bigger archive gets the handler's
        // clear 413 (naming the limit) rather than a cut connection.
        .map_or(0, |m| m.saturating_add(1 << 20));
    Router::new()
        .route("/github-webhook/", post(github_webhook))
        .route("/github-webhook", post(github_webhook))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/logs", get(get_logs))
        .route("/api/runs/{id}/events", get(crate::serve::events::events))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(page_list))
        .route("/runs/{id}", get(page_run))
        .merge(crate::serve::access::routes::router())
        .merge(crate::serve::access::forms::router())
        .route("/pipelines/{name}", get(page_pipeline))
        .layer(DefaultBodyLimit::max(limit))
        .merge(
            // Archives are bigger than webhook payloads; each upload's own
            // limit is checked in the handler.
            Router::new()
                .route("/upload/{name}", post(upload))
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::serve::access::guard::reads,
        ))
        .layer(axum::middleware::from_fn(
            crate::serve::access::guard::page_headers,
        ))
        .with_state(state)
}

/// The answer to a delivery that starts nothing because it was seen
/// before: by its id, or by what it means (naming the runs it duplicates).
fn duplicate(delivery: &str, runs: &[String]) -> Response {
    Json(json!({ "duplicate": true, "delivery": delivery, "runs": runs })).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("{e:#}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; see the server log",
    )
}

/// An id header shaped like GitHub's delivery ids (a GUID); anything else
/// is refused before it reaches the store or a log line. `None`: absent.
fn id_header(headers: &HeaderMap, name: &str, what: &str) -> Result<Option<String>, String> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let id = value.to_str().map_err(|_| format!("{name} is not text"))?;
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{name} is not {what}"));
    }
    Ok(Some(id.to_string()))
}

/// `X-Hub-Signature-256` of the raw body checked against the server's
/// secret (deliveries and uploads alike): the 401 to answer when it is
/// missing or wrong.
fn unsigned(s: &ServerState, headers: &HeaderMap, body: &[u8], what: &str) -> Option<Response> {
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    let e = webhook::verify_signature(&s.secret, body, signature).err()?;
    s.count_delivery("unauthorized");
    tracing::warn!("{what} refused: {e}");
    Some(error(StatusCode::UNAUTHORIZED, e.to_string()))
}

async fn github_webhook(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = unsigned(&s, &headers, &body, "webhook") {
        return refused;
    }
    let bad = |s: &ServerState, m: String| {
        s.count_delivery("bad-request");
        error(StatusCode::BAD_REQUEST, m)
    };
    let delivery = match id_header(&headers, "X-GitHub-Delivery", "a delivery id") {
        Ok(Some(d)) => d,
        Ok(None) => return bad(&s, "missing X-GitHub-Delivery header".into()),
        Err(e) => return bad(&s, e),
    };
    let Some(event) = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return bad(&s, "missing X-GitHub-Event header".into());
    };
    let parsed = match webhook::parse(&event, &body) {
        Ok(p) => p,
        Err(e) => return bad(&s, e.to_string()),
    };
    let (jobs, outcome) = match webhook::plan(&s.config, &parsed, &delivery) {
        Plan::Pong(zen) => {
            s.count_delivery("ping");
            return Json(json!({ "ok": true, "zen": zen })).into_response();
        }
        Plan::Ignore(reason) => (Vec::new(), format!("ignored: {reason}")),
        Plan::Run(jobs) => (jobs, "queued".to_string()),
    };
    let cancel = jobs.first().is_some_and(|j| {
        s.config
            .repositories
            .iter()
            .any(|r| r.name == j.repository && r.cancel_in_progress)
    });
    let jobs: Vec<_> = jobs.into_iter().map(|j| (new_run_id(), j)).collect();
    let accepted = accept(&s, &delivery, &event, &outcome, jobs, cancel).await;
    answer_delivery(&s, &delivery, &event, &outcome, accepted).await
}

/// Queue a delivery's runs with their `pending` statuses, in one
/// transaction: neither is kept without the other.
async fn accept(
    s: &Arc<ServerState>,
    delivery: &str,
    event: &str,
    outcome: &str,
    jobs: Vec<(String, Job)>,
    cancel: bool,
) -> anyhow::Result<Accepted> {
    let (d, e, o) = (delivery.to_string(), event.to_string(), outcome.to_string());
    let window = s.config.replay_window;
    let statuses = crate::serve::forge::Statuses::of(&s.config);
    let accepted = s
        .with_db(move |db| {
            db.db().transaction(|tx| {
                let a = Queue::new(tx).accept(&d, &e, &o, &jobs, cancel, window)?;
                if let (Accepted::Queued { runs, .. }, Some(st)) = (&a, &statuses) {
                    for (id, job) in jobs.iter().filter(|(id, _)| runs.contains(id)) {
                        st.queued(tx, id, &job.repository, &job.sha)?;
                    }
                }
                Ok(a)
            })
        })
        .await;
    s.statuses.notify_one();
    accepted
}

/// What the server answers GitHub once a delivery was taken (or not).
async fn answer_delivery(
    s: &Arc<ServerState>,
    delivery: &str,
    event: &str,
    outcome: &str,
    accepted: anyhow::Result<Accepted>,
) -> Response {
    match accepted {
        Err(e) => internal(e),
        Ok(Accepted::Duplicate { runs, seen }) => {
            s.count_delivery("duplicate");
            match seen {
                Seen::Delivery => {
                    tracing::info!("delivery {delivery} ({event}) was seen before: ignored")
                }
                Seen::Meaning => tracing::warn!(
                    "delivery {delivery} ({event}) asks for what run(s) {} already did \
                     (a replayed delivery?): ignored",
                    runs.join(", ")
                ),
            }
            duplicate(delivery, &runs)
        }
        Ok(Accepted::Queued {
            runs,
            cancel_running,
            dropped,
        }) => {
            if runs.is_empty() {
                s.count_delivery("ignored");
                tracing::info!("delivery {delivery} ({event}): {outcome}");
                return (
                    StatusCode::ACCEPTED,
                    Json(json!({ "delivery": delivery, "ignored": outcome.trim_start_matches("ignored: ") })),
                )
                    .into_response();
            }
            s.count_delivery("queued");
            let newest = runs.last().cloned().unwrap_or_default();
            dispatch::cancel_running(s, &cancel_running, &newest);
            for q in dropped {
                let reason = format!("superseded by run {newest} before it started");
                dispatch::record_unstarted(s, &q, &q.repository, Status::Cancelled, reason).await;
            }
            tracing::info!("delivery {delivery} ({event}): queued {}", runs.join(", "));
            s.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(json!({ "delivery": delivery, "queued": runs })),
            )
                .into_response()
        }
    }
}

/// `POST /upload/{name}`: a source archive, signed like a webhook
/// delivery (`X-Hub-Signature-256` over the body), named by
/// `X-Upload-Filename`. It is checked (unpacked with the limits, then
/// discarded) before anything is queued: a refused archive gets 422 and
/// starts nothing. `X-Upload-Id` (optional) makes a retried upload a
/// duplicate instead of a second run; so do the same bytes uploaded to the
/// same source again within the replay window, whatever the id (a
/// captured signed upload re-sent).
async fn upload(
    State(s): S,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unsigned(&s, &headers, &body, "upload") {
        return refused;
    }
    let (up, filename, format, delivery) = match upload_request(&s, &name, &headers, body.len()) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    if let Some(answered) = replayed_upload(&s, &up, &filename, &delivery, &body).await {
        return answered;
    }
    let run_id = new_run_id();
    let dir = s.state_dir.join("uploads");
    let stored = dir.join(format!("{run_id}.{}", format.extension()));
    let info = match store_and_check(&s, &up, &filename, dir, &stored, body).await {
        Ok(info) => info,
        Err(refused) => return refused,
    };
    let job = upload_job(&up, &delivery, &info, &stored);
    let jobs = vec![(run_id, job)];
    let d = delivery.clone();
    let window = s.config.replay_window;
    let accepted = s
        .with_db(move |db| Queue::new(db.db()).accept(&d, "upload", "queued", &jobs, false, window))
        .await;
    match accepted {
        Err(e) => {
            let _ = std::fs::remove_file(&stored);
            internal(e)
        }
        Ok(Accepted::Duplicate { runs, .. }) => {
            let _ = std::fs::remove_file(&stored);
            s.count_delivery("duplicate");
            duplicate(&delivery, &runs)
        }
        Ok(Accepted::Queued { runs, .. }) => {
            s.count_delivery("queued");
            tracing::info!(
                "upload {filename} to `{name}` (sha256 {}): queued {}",
                info.sha256,
                runs.join(", ")
            );
            s.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(json!({ "delivery": delivery, "queued": runs, "sha256": info.sha256 })),
            )
                .into_response()
        }
    }
}

/// The upload's source, file name, archive format and delivery id, from
/// the route and headers; or the answer refusing it.
fn upload_request(
    s: &ServerState,
    name: &str,
    headers: &HeaderMap,
    size: usize,
) -> Result<(Upload, String, Format, String), Box<Response>> {
    let Some(up) = s.config.uploads.iter().find(|u| u.name == name).cloned() else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no [[upload]] source named `{name}` on this server"),
        )));
    };
    let Some(filename) = headers
        .get("x-upload-filename")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "missing X-Upload-Filename header",
        )));
    };
    let Some(format) = Format::of(&filename) else {
        return Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{filename}: not a .zip, .tar.gz, .tgz or .tar file"),
        )));
    };
    if size as u64 > up.max_size {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{filename}: {size} bytes is over the {} byte limit of `{name}`",
                up.max_size
            ),
        )));
    }
    let delivery = match id_header(headers, "X-Upload-Id", "an id") {
        Ok(Some(id)) => format!("upload-{id}"),
        Ok(None) => format!("upload-{}", new_run_id()),
        Err(e) => return Err(Box::new(error(StatusCode::BAD_REQUEST, e))),
    };
    Ok((up, filename, format, delivery))
}

/// The answer to the same archive sent to the same source within the
/// replay window, if it is one. It comes before the archive is stored and
/// unpacked again; `accept` checks again, atomically, for uploads that race.
async fn replayed_upload(
    s: &Arc<ServerState>,
    up: &Upload,
    filename: &str,
    delivery: &str,
    body: &[u8],
) -> Option<Response> {
    let meaning = {
        use sha2::Digest;
        queue::meaning_key(
            &up.name,
            "upload",
            "",
            &hex::encode(sha2::Sha256::digest(body)),
        )
    };
    let window = s.config.replay_window;
    match s
        .with_db(move |db| Queue::new(db.db()).seen(&meaning, window))
        .await
    {
        Err(e) => Some(internal(e)),
        Ok(Some(run)) => {
            s.count_delivery("duplicate");
            tracing::warn!(
                "upload {filename} to `{}` ({delivery}): the same archive as run {run} \
                 (a replayed upload?): ignored",
                up.name
            );
            Some(duplicate(delivery, &[run]))
        }
        Ok(None) => None,
    }
}

/// The archive written to `stored` (in `dir`) and unpacked once into a
/// throwaway folder with the source's limits: what it holds, or 422 (and
/// the file removed) when it is refused.
async fn store_and_check(
    s: &ServerState,
    up: &Upload,
    filename: &str,
    dir: std::path::PathBuf,
    stored: &std::path::Path,
    body: Bytes,
) -> Result<SourceArchive, Response> {
    let limits = Limits {
        max_archive_bytes: up.max_size,
        ..Limits::default()
    };
    let (st, shown) = (stored.to_path_buf(), filename.to_string());
    let checked = tokio::task::spawn_blocking(move || -> anyhow::Result<Result<_, String>> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&st, &body)?;
        let probe = tempfile::tempdir_in(&dir)?;
        let r = crate::source::archive::workspace(&st, &shown, probe.path(), "check", &limits);
        Ok(r.map(|(_, info)| info).map_err(|e| {
            let _ = std::fs::remove_file(&st);
            e.to_string()
        }))
    })
    .await;
    match checked {
        Ok(Ok(Ok(info))) => Ok(info),
        Ok(Ok(Err(refused))) => {
            s.count_delivery("refused");
            tracing::warn!("upload to `{}` refused: {refused}", up.name);
            Err(error(StatusCode::UNPROCESSABLE_ENTITY, refused))
        }
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e.into())),
    }
}

/// The run an accepted upload queues: trusted (it was signed), in its
/// source's own concurrency group.
fn upload_job(up: &Upload, delivery: &str, info: &SourceArchive, stored: &std::path::Path) -> Job {
    Job {
        repository: up.name.clone(),
        branch: None,
        tag: None,
        sha: String::new(),
        event: "upload".into(),
        environment: up.environment.clone(),
        fetch_ref: None,
        trusted: true,
        group: Some(format!("upload/{}", up.name)),
        trigger: TriggerInfo {
            repository: up.name.clone(),
            delivery: delivery.to_string(),
            archive: Some(info.clone()),
            ..Default::default()
        },
        archive: Some(stored.to_path_buf()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    pipeline: Option<String>,
    branch: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

fn filter(q: &ListQuery) -> Result<RunFilter, String> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| format!("status: unknown status `{s}`"))?),
    };
    Ok(RunFilter {
        pipeline: q.pipeline.clone().filter(|p| !p.is_empty()),
        branch: q.branch.clone().filter(|b| !b.is_empty()),
        status,
    })
}

async fn list_runs(State(s): S, Query(q): Query<ListQuery>) -> Response {
    let f = match filter(&q) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let limit = q.limit.unwrap_or(50).min(1000);
    let r = s
        .with_db(move |db| {
            let runs = db.summaries(&f, limit)?;
            let queued = Queue::new(db.db()).waiting()?;
            Ok(json!({ "runs": runs, "queued": queued }))
        })
        .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => internal(e),
    }
}

async fn get_run(State(s): S, Path(id): Path<String>) -> Response {
    let found = s
        .with_db(move |db| {
            let Some(run) = db.get(&id)? else {
                return Ok(None);
            };
            let statuses = crate::serve::forge::outbox::of_run(db.db(), &id)?;
            let actions = crate::serve::access::actions::of_run(db.db(), &id)?;
            Ok(Some((run, statuses, actions)))
        })
        .await;
    match found {
        // The record, the commit statuses posted for it and what people
        // did to it (if any).
        Ok(Some((r, statuses, actions))) => {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if !statuses.is_empty() {
                v["statuses"] = json!(statuses);
            }
            if !actions.is_empty() {
                v["actions"] = json!(actions);
            }
            Json(v).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such run"),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    stage: Option<String>,
    after: Option<i64>,
}

async fn get_logs(State(s): S, Path(id): Path<String>, Query(q): Query<LogQuery>) -> Response {
    let r = s
        .with_db(move |db| {
            let Some(run) = db.get(&id)? else {
                return Ok(None);
            };
            let lines = db.logs(&id, q.stage.as_deref(), q.after.unwrap_or(0), 5000)?;
            Ok(Some(json!({ "status": run.status, "lines": lines })))
        })
        .await;
    match r {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such run"),
        Err(e) => internal(e),
    }
}

async fn get_metrics(State(s): S) -> Response {
    let deliveries = s.delivery_counts();
    let r = s
        .with_db(move |db| {
            let runs = db.summaries(&RunFilter::default(), usize::MAX)?;
            let (queued, running) = Queue::new(db.db()).depth()?;
            let counts = ServerCounts {
                queued,
                running,
                deliveries,
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
            Ok(metrics::render(&runs, &counts, now as i64))
        })
        .await;
    match r {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

async fn page_list(State(s): S, Query(q): Query<ListQuery>, headers: HeaderMap) -> Response {
    let f = match filter(&q) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let viewer = web::viewer(&s, &headers).await;
    let r = s
        .with_db(move |db| {
            let runs = db.summaries(&f, 100)?;
            let queued = Queue::new(db.db()).waiting()?;
            Ok(web::run_list(&runs, &queued, &viewer))
        })
        .await;
    match r {
        Ok(html) => Html(html).into_response(),
        Err(e) => internal(e),
    }
}

async fn page_run(State(s): S, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let viewer = web::viewer(&s, &headers).await;
    let r = s
        .with_db(move |db| {
            let Some(run) = db.get(&id)? else {
                // Not started yet: the queue's page of it.
                let queued = Queue::new(db.db()).find(&id)?;
                return Ok(queued.map(|q| web::queued_page(&q, &viewer)));
            };
            // What the approvals table says is waiting (a waiting stage's
            // record only says `pending`). No table yet: nothing waits.
            let extras = web::RunExtras {
                waiting: crate::run::approvals::pending_in(db.db())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| p.run_id == run.id)
                    .map(|p| p.stage)
                    .collect(),
                statuses: crate::serve::forge::outbox::of_run(db.db(), &run.id)?,
                // Where a live page's event stream starts.
                log_after: match run.status.is_final() {
                    true => 0,
                    false => db
                        .logs(&run.id, None, 0, usize::MAX)?
                        .last()
                        .map_or(0, |l| l.seq),
                },
                actions: crate::serve::access::actions::of_run(db.db(), &run.id)?,
            };
            Ok(Some(web::run_page(&run, &extras, &viewer)))
        })
        .await;
    match r {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Html(web::not_found())).into_response(),
        Err(e) => internal(e),
    }
}

/// How many of a pipeline's runs its page reads for its DORA figures.
const PIPELINE_RUNS: usize = 5000;

async fn page_pipeline(State(s): S, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let viewer = web::viewer(&s, &headers).await;
    let r = s
        .with_db(move |db| {
            let f = RunFilter {
                pipeline: Some(name.clone()),
                ..RunFilter::default()
            };
            let runs = db.summaries(&f, PIPELINE_RUNS)?;
            if runs.is_empty() {
                return Ok(None);
            }
            let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
            let since = now - web::DORA_WEEKS as i64 * web::pictures::dora::WEEK_MS;
            let commits = db.commit_times(&name, since)?;
            let weeks = web::pictures::dora::weekly(&runs, &commits, now, web::DORA_WEEKS);
            Ok(Some(web::pipeline_page(&name, &runs, &weeks, &viewer)))
        })
        .await;
    match r {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Html(web::no_such("pipeline"))).into_response(),
        Err(e) => internal(e),
    }
}
