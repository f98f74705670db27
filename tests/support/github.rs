//! A GitHub-compatible commit status API on 127.0.0.1, speaking the wire
//! format of the recorded exchanges in `../shared/data/github-api/`
//! (bodies, status codes, rate-limit headers), with scripted failures.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// What the next POST is answered with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply {
    Created,
    ServerError,
    /// 429 with `retry-after: N`.
    RetryAfter(u64),
    /// 403 with `x-ratelimit-remaining: 0` and a reset N seconds away.
    RateLimited(i64),
    /// 422 Validation Failed (the recorded body).
    Invalid,
    /// 401 Bad credentials.
    BadCredentials,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub answered: u16,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    /// When the script is empty.
    otherwise: Option<Reply>,
    posts: Vec<Post>,
}

pub struct FakeGithub {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

fn fixture(name: &str) -> Value {
    let p = crate::plugins::root()
        .join("../shared/data/github-api")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

impl FakeGithub {
    pub fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route(
                "/repos/{owner}/{repo}/statuses/{sha}",
                post(create).get(list),
            )
            .with_state(inner.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let served = crate::http::serve(app).await.unwrap();
                tx.send(served).unwrap();
                std::future::pending::<()>().await;
            });
        });
        let (addr, shutdown) = rx.recv().unwrap();
        Self {
            url: format!("http://{addr}"),
            inner,
            _shutdown: shutdown,
        }
    }

    /// Answer the next POSTs so, then `otherwise` (default: created).
    pub fn script(&self, replies: &[Reply], otherwise: Option<Reply>) {
        let mut i = self.inner.lock();
        i.script = replies.iter().copied().collect();
        i.otherwise = otherwise;
    }

    pub fn posts(&self) -> Vec<Post> {
        self.inner.lock().posts.clone()
    }

    /// Wait until `pred` holds for the requests so far.
    pub fn wait(&self, within: Duration, what: &str, pred: impl Fn(&[Post]) -> bool) -> Vec<Post> {
        let deadline = Instant::now() + within;
        loop {
            let posts = self.posts();
            if pred(&posts) {
                return posts;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {within:?}: {posts:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The statuses created so far (201) for `context` and `state`.
pub fn created(posts: &[Post], context: &str, state: &str) -> usize {
    posts
        .iter()
        .filter(|p| p.answered == 201 && p.body["context"] == context && p.body["state"] == state)
        .count()
}

async fn create(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut i = inner.lock();
    let reply = i
        .script
        .pop_front()
        .or(i.otherwise)
        .unwrap_or(Reply::Created);
    let response = answer(reply, &owner, &repo, &sha, &body);
    i.posts.push(Post {
        path: format!("/repos/{owner}/{repo}/statuses/{sha}"),
        headers,
        body,
        answered: response.status().as_u16(),
    });
    response
}

fn answer(reply: Reply, owner: &str, repo: &str, sha: &str, body: &Value) -> Response {
    match reply {
        Reply::Created => {
            // The recorded 201 body, with what was asked for.
            let mut r = fixture("create-status.normalized-fixture.json")[0]["response"].clone();
            for k in ["state", "description", "target_url", "context"] {
                r[k] = body[k].clone();
            }
            r["url"] = json!(format!(
                "https://api.github.com/repos/{owner}/{repo}/statuses/{sha}"
            ));
            (StatusCode::CREATED, Json(r)).into_response()
        }
        Reply::ServerError => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "message": "Server Error" })),
        )
            .into_response(),
        Reply::RetryAfter(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            Json(json!({ "message": "You have exceeded a secondary rate limit." })),
        )
            .into_response(),
        Reply::RateLimited(in_secs) => {
            let reset = time::OffsetDateTime::now_utc().unix_timestamp() + in_secs;
            (
                StatusCode::FORBIDDEN,
                [
                    ("x-ratelimit-limit", "5000".to_string()),
                    ("x-ratelimit-remaining", "0".to_string()),
                    ("x-ratelimit-reset", reset.to_string()),
                ],
                Json(json!({ "message": "API rate limit exceeded for user ID 1000." })),
            )
                .into_response()
        }
        Reply::Invalid => {
            let r = fixture("errors-422.normalized-fixture.json")[0]["response"].clone();
            (StatusCode::UNPROCESSABLE_ENTITY, Json(r)).into_response()
        }
        Reply::BadCredentials => (
            StatusCode::UNAUTHORIZED,
            Json(json!({
                "message": "Bad credentials",
                "documentation_url": "https://docs.github.com/rest"
            })),
        )
            .into_response(),
    }
}

/// `GET …/statuses/{sha}`: what was created, newest first.
async fn list(State(inner): State<Arc<Mutex<Inner>>>) -> Response {
    let i = inner.lock();
    let list: Vec<Value> = i
        .posts
        .iter()
        .rev()
        .filter(|p| p.answered == 201)
        .map(|p| p.body.clone())
        .collect();
    Json(list).into_response()
}
