//! A Slack-compatible incoming-webhook receiver on 127.0.0.1.
//!
//! Slack itself cannot be reached from the test machines, so the integration
//! tests and the demo post to this server instead. It speaks the wire format
//! of Slack's incoming webhooks and answers with Slack's documented errors
//! (see `shared/data/slack/slack-incoming-webhook-examples.md`):
//!
//! | situation                                             | answer                          |
//! |-------------------------------------------------------|---------------------------------|
//! | accepted message                                      | `200 ok`                        |
//! | body not JSON / no `text`, `blocks` or `attachments`  | `400 invalid_payload`           |
//! | `blocks` present but malformed                        | `400 invalid_blocks`            |
//! | token segment `archived`                              | `410 channel_is_archived`       |
//! | token segment `missing`, or not `/services/T/B/token` | `404 no_service`                |
//! | `"channel": "#does-not-exist"`                        | `404 channel_not_found`         |
//! | token bucket of the hook path empty                   | `429 rate_limited`, `Retry-After` |
//! | body larger than [`Config::max_body_bytes`]           | `413 request_too_large` (*)     |
//!
//! Every error body is plain text holding exactly the error code, as Slack
//! does. (*) marks an answer Slack does not document.
//!
//! Besides the rules above, [`SlackReceiver::push_answer`] scripts the exact
//! answers of the next requests (e.g. one `429`, then normal processing).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// Slack's Block Kit limit: "You can include up to 50 blocks in each message".
pub const MAX_BLOCKS: usize = 50;
/// Block Kit: a section's `fields` holds at most 10 text objects.
const MAX_SECTION_FIELDS: usize = 10;
/// Block Kit: a header's `text` is at most 150 characters.
const MAX_HEADER_TEXT_CHARS: usize = 150;

/// Path of [`SlackReceiver::webhook_url`], shaped like a real hook
/// (`/services/<team id>/<bot id>/<24-character token>`).
pub const DEFAULT_HOOK_PATH: &str = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX";

/// How the receiver is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Messages a hook path may post back to back before `429 rate_limited`
    /// (Slack: "1 per second, short bursts >1 allowed"); only messages that
    /// pass every other check count. `0` rate-limits every valid message,
    /// which makes a `429` deterministic in tests.
    pub burst: u32,
    /// Tokens given back to each hook path's bucket per second (Slack: 1).
    pub refill_per_sec: f64,
    /// Largest body accepted; a larger one gets `413 request_too_large`.
    pub max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            burst: 5,
            refill_per_sec: 1.0,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// A message the receiver accepted (answered `200 ok`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceivedMessage {
    /// Request path, e.g. `/services/T1/B1/abc`.
    pub path: String,
    /// The JSON payload (for a form post, the decoded `payload` field).
    pub body: Value,
    /// The request's `Content-Type`, if any.
    pub content_type: Option<String>,
    /// All request headers, names lower-case, in the order received.
    pub headers: Vec<(String, String)>,
}

impl ReceivedMessage {
    /// The `text` field, if it is a string.
    pub fn text(&self) -> Option<&str> {
        self.body.get("text").and_then(Value::as_str)
    }

    /// The value of the first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer for [`SlackReceiver::push_answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `429 rate_limited` with `Retry-After: <retry_after_secs>`.
    RateLimited { retry_after_secs: u64 },
    /// `<status> <code>`, e.g. `Error { status: 500, code: "rollup_error" }`.
    Error { status: u16, code: &'static str },
    /// `200 ok` whatever the request; the message is recorded (as JSON when
    /// it parses, else as a JSON string of the raw body), bypassing
    /// validation and rate limiting.
    Ok,
}

/// The running receiver; shuts down gracefully when dropped.
pub struct SlackReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    config: Config,
    requests: AtomicUsize,
    notify: Notify,
    state: Mutex<MutState>,
}

#[derive(Default)]
struct MutState {
    messages: Vec<ReceivedMessage>,
    answers: VecDeque<Answer>,
    buckets: HashMap<String, Bucket>,
    subscribers: Vec<mpsc::UnboundedSender<ReceivedMessage>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, MutState> {
        // A panic while holding the lock cannot leave the state half-updated
        // in a way that matters to a test server: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, message: ReceivedMessage) {
        {
            let mut state = self.lock();
            state
                .subscribers
                .retain(|tx| tx.send(message.clone()).is_ok());
            state.messages.push(message);
        }
        self.notify.notify_waiters();
    }

    /// Takes a token from `key`'s bucket, or says how many seconds to wait.
    fn take_token(&self, key: &str) -> Result<(), u64> {
        let burst = f64::from(self.config.burst);
        let rate = self.config.refill_per_sec;
        let now = Instant::now();
        let mut state = self.lock();
        let bucket = state.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 && burst >= 1.0 {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        } else {
            Err(1)
        }
    }
}

impl SlackReceiver {
    /// Starts a receiver with the default [`Config`] on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<SlackReceiver> {
        Self::start_with(Config::default()).await
    }

    /// Starts a receiver with the default [`Config`] on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<SlackReceiver> {
        Self::start_with(Config {
            listen: addr,
            ..Config::default()
        })
        .await
    }

    /// Starts a receiver with `config`.
    pub async fn start_with(config: Config) -> anyhow::Result<SlackReceiver> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the Slack receiver to {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            requests: AtomicUsize::new(0),
            notify: Notify::new(),
            state: Mutex::new(MutState::default()),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // Sent or dropped: either way, stop.
                    let _ = stop.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("slack receiver on {addr}: {e}");
            }
        });
        Ok(SlackReceiver {
            addr,
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The address the receiver listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A webhook URL shaped like a real one
    /// (`http://127.0.0.1:PORT/services/T00000000/B00000000/XXXX…`).
    pub fn webhook_url(&self) -> String {
        self.url_for(DEFAULT_HOOK_PATH)
    }

    /// `http://ADDR` followed by `path` (a leading `/` is added if missing).
    pub fn url_for(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("http://{}{path}", self.addr)
        } else {
            format!("http://{}/{path}", self.addr)
        }
    }

    /// Accepted messages so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.lock().messages.clone()
    }

    /// Waits until at least `n` messages were accepted and returns them all;
    /// errors when `timeout` passes first.
    pub async fn wait_for_messages(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReceivedMessage>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so a message recorded between
            // the look and the wait still wakes us.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.messages();
            if messages.len() >= n {
                return Ok(messages);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {n} Slack message(s): got {} ({} request(s) in all)",
                    messages.len(),
                    self.requests()
                );
            }
        }
    }

    /// Every request received so far, accepted or not.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Queues `answer` for a coming request: queued answers are given, in
    /// order, to the next requests (whatever their path or body) before the
    /// normal rules apply again.
    pub fn push_answer(&self, answer: Answer) {
        self.shared.lock().answers.push_back(answer);
    }

    /// A stream of the messages accepted from now on (used by the CLI to
    /// print each one as it arrives).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<ReceivedMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.lock().subscribers.push(tx);
        rx
    }

    /// Stops accepting connections and waits for the open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SlackReceiver {
    fn drop(&mut self) {
        // Graceful: the server stops accepting and lets open requests finish.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn rate_limited(retry_after_secs: u64) -> Response {
    let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// The `{token}` of `/services/{T}/{B}/{token}`, or `None` for any other path.
fn hook_token(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/services/")?;
    let mut segments = rest.split('/');
    let (team, bot, token) = (segments.next()?, segments.next()?, segments.next()?);
    if segments.next().is_some() || team.is_empty() || bot.is_empty() || token.is_empty() {
        return None;
    }
    Some(token)
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let headers = parts.headers;
    let body = match axum::body::to_bytes(body, shared.config.max_body_bytes).await {
        Ok(body) => body,
        // Slack documents no answer for an oversized webhook body: use the
        // HTTP one.
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
    };

    let scripted = shared.lock().answers.pop_front();
    match scripted {
        Some(Answer::RateLimited { retry_after_secs }) => return rate_limited(retry_after_secs),
        Some(Answer::Error { status, code }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return plain(status, code);
        }
        Some(Answer::Ok) => {
            let body = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            shared.record(message(path, body, &headers));
            return plain(StatusCode::OK, "ok");
        }
        None => {}
    }

    let Some(token) = hook_token(&path) else {
        return plain(StatusCode::NOT_FOUND, "no_service");
    };
    if parts.method != Method::POST {
        // Hooks only take POST; Slack documents no code for other methods,
        // so this is the HTTP answer.
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
    match token {
        "missing" => return plain(StatusCode::NOT_FOUND, "no_service"),
        "archived" => return plain(StatusCode::GONE, "channel_is_archived"),
        _ => {}
    }
    let payload = match parse_payload(&headers, body).await {
        Some(Value::Object(payload)) => payload,
        _ => return plain(StatusCode::BAD_REQUEST, "invalid_payload"),
    };
    if let Some(blocks) = payload.get("blocks").filter(|b| !b.is_null()) {
        if !valid_blocks(blocks) {
            return plain(StatusCode::BAD_REQUEST, "invalid_blocks");
        }
    }
    if !has_content(&payload) {
        return plain(StatusCode::BAD_REQUEST, "invalid_payload");
    }
    if payload.get("channel").and_then(Value::as_str) == Some("#does-not-exist") {
        return plain(StatusCode::NOT_FOUND, "channel_not_found");
    }

    // Slack: "Posting messages 1 per second [per channel]. Short bursts >1
    // allowed." The hook path stands for the channel, and only a message that
    // would be posted takes a token, so refused requests never use one up.
    if let Err(retry_after) = shared.take_token(&path) {
        return rate_limited(retry_after);
    }

    shared.record(message(path, Value::Object(payload), &headers));
    plain(StatusCode::OK, "ok")
}

fn message(path: String, body: Value, headers: &HeaderMap) -> ReceivedMessage {
    ReceivedMessage {
        path,
        body,
        content_type: headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

/// The JSON payload of a post. Like Slack, a JSON body is taken whatever its
/// `Content-Type`, and a form post (`application/x-www-form-urlencoded`)
/// carries the JSON in its `payload` field.
async fn parse_payload(headers: &HeaderMap, body: Bytes) -> Option<Value> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return serde_json::from_slice(&body).ok();
    }
    let request = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .ok()?;
    let axum::Form(fields) = axum::Form::<HashMap<String, String>>::from_request(request, &())
        .await
        .ok()?;
    serde_json::from_str(fields.get("payload")?).ok()
}

/// A message needs a non-empty `text`, `blocks` or `attachments`.
fn has_content(payload: &serde_json::Map<String, Value>) -> bool {
    let text = payload
        .get("text")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.trim().is_empty());
    let non_empty_array = |key: &str| {
        payload
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    text || non_empty_array("blocks") || non_empty_array("attachments")
}

/// Checks `blocks` against what Slack's Block Kit reference documents, and
/// no more: an array of at most 50 objects, each with a string `type`; a
/// `header` has a `plain_text` text object as `text` (at most 150
/// characters); a `section` has a text object as `text` and/or at most 10
/// text objects as `fields`. A text object is `{"type": "plain_text" |
/// "mrkdwn", "text": "..."}`. Other block types are taken as they come.
fn valid_blocks(blocks: &Value) -> bool {
    let Some(blocks) = blocks.as_array() else {
        return false;
    };
    blocks.len() <= MAX_BLOCKS && blocks.iter().all(valid_block)
}

fn valid_block(block: &Value) -> bool {
    let Some(kind) = block.get("type").and_then(Value::as_str) else {
        return false;
    };
    match kind {
        "header" => block.get("text").is_some_and(|text| {
            valid_text_object(text)
                && text["type"] == "plain_text"
                && text["text"].as_str().unwrap_or_default().chars().count()
                    <= MAX_HEADER_TEXT_CHARS
        }),
        "section" => {
            let text = block.get("text").filter(|t| !t.is_null());
            let fields = block.get("fields").filter(|f| !f.is_null());
            let text_ok = text.is_none_or(valid_text_object);
            let fields_ok = fields.is_none_or(|f| {
                f.as_array().is_some_and(|f| {
                    !f.is_empty()
                        && f.len() <= MAX_SECTION_FIELDS
                        && f.iter().all(valid_text_object)
                })
            });
            (text.is_some() || fields.is_some()) && text_ok && fields_ok
        }
        _ => true,
    }
}

fn valid_text_object(text: &Value) -> bool {
    matches!(
        text.get("type").and_then(Value::as_str),
        Some("plain_text" | "mrkdwn")
    ) && text.get("text").is_some_and(Value::is_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    async fn post(url: &str, body: &Value) -> (u16, String, HeaderMap) {
        let response = client().post(url).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, response.text().await.unwrap(), headers)
    }

    #[tokio::test]
    async fn slack_accepts_text_and_blocks() {
        let slack = SlackReceiver::start().await.unwrap();
        let (status, body, headers) =
            post(&slack.webhook_url(), &json!({"text": "Hello, World!"})).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));

        let blocks = json!({
            "channel": "#builds",
            "username": "pipeline",
            "icon_emoji": ":rocket:",
            "blocks": [{"type": "section", "text": {"type": "plain_text", "text": "Hello world"}}]
        });
        let (status, body, _) = post(&slack.url_for("services/T1/B1/abc"), &blocks).await;
        assert_eq!((status, body.as_str()), (200, "ok"));

        let messages = slack
            .wait_for_messages(2, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].path, DEFAULT_HOOK_PATH);
        assert_eq!(messages[0].text(), Some("Hello, World!"));
        assert_eq!(
            messages[0].content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(messages[0].header("Content-Type"), Some("application/json"));
        assert_eq!(messages[1].path, "/services/T1/B1/abc");
        assert_eq!(messages[1].body, blocks);
        assert_eq!(slack.requests(), 2);
    }

    #[tokio::test]
    async fn slack_accepts_attachments_and_form_posts() {
        let slack = SlackReceiver::start().await.unwrap();
        let attachments = json!({"attachments": [{"color": "good", "text": "passed"}]});
        assert_eq!(post(&slack.webhook_url(), &attachments).await.0, 200);

        let response = client()
            .post(slack.webhook_url())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("payload=%7B%22text%22%3A%22from%20a%20form%22%7D")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let messages = slack
            .wait_for_messages(2, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(messages[1].text(), Some("from a form"));
    }

    #[tokio::test]
    async fn slack_invalid_payload() {
        let slack = SlackReceiver::start().await.unwrap();
        let not_json = client()
            .post(slack.webhook_url())
            .header(header::CONTENT_TYPE, "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(not_json.status(), 400);
        assert_eq!(not_json.text().await.unwrap(), "invalid_payload");

        for body in [
            json!({}),
            json!({"text": ""}),
            json!({"text": 42}),
            json!({"username": "x", "channel": "#builds"}),
            json!({"blocks": [], "attachments": []}),
            json!(["text"]),
        ] {
            let (status, text, _) = post(&slack.webhook_url(), &body).await;
            assert_eq!((status, text.as_str()), (400, "invalid_payload"), "{body}");
        }
        assert!(slack.messages().is_empty());
        assert_eq!(slack.requests(), 7);
    }

    #[tokio::test]
    async fn slack_invalid_blocks() {
        let slack = SlackReceiver::start_with(Config {
            burst: 100,
            ..Config::default()
        })
        .await
        .unwrap();
        let many: Vec<Value> = (0..=MAX_BLOCKS)
            .map(|_| json!({"type": "divider"}))
            .collect();
        for blocks in [
            json!("not an array"),
            json!({"type": "section"}),
            json!([{"text": {"type": "plain_text", "text": "no type"}}]),
            json!([{"type": 7}]),
            Value::Array(many),
            json!([{"type": "section", "text": "just a string"}]),
            json!([{"type": "section", "text": {"type": "plain_text"}}]),
            json!([{"type": "section", "text": {"text": "no type"}}]),
            json!([{"type": "section"}]),
            json!([{"type": "header", "text": {"type": "mrkdwn", "text": "*no*"}}]),
            json!([{"type": "header"}]),
            json!([{"type": "header", "text": {"type": "plain_text", "text": "x".repeat(151)}}]),
        ] {
            let body = json!({"text": "fallback", "blocks": blocks});
            let (status, text, _) = post(&slack.webhook_url(), &body).await;
            assert_eq!((status, text.as_str()), (400, "invalid_blocks"), "{blocks}");
        }
        let fifty: Vec<Value> = (0..MAX_BLOCKS)
            .map(|_| json!({"type": "divider"}))
            .collect();
        let ok = json!({"blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Build #7"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": "*passed*"}]},
            {"type": "context", "elements": []},
        ]});
        assert_eq!(post(&slack.webhook_url(), &ok).await.0, 200);
        assert_eq!(
            post(&slack.webhook_url(), &json!({"blocks": fifty}))
                .await
                .0,
            200
        );
        assert_eq!(slack.messages().len(), 2);
    }

    #[tokio::test]
    async fn slack_archived_no_service_channel_not_found() {
        let slack = SlackReceiver::start().await.unwrap();
        let hi = json!({"text": "hi"});
        let cases = [
            ("/services/T1/B1/archived", 410, "channel_is_archived"),
            ("/services/T1/B1/missing", 404, "no_service"),
            ("/hooks/T1/B1/abc", 404, "no_service"),
            ("/services/T1/B1", 404, "no_service"),
            ("/services/T1/B1/abc/extra", 404, "no_service"),
            ("/", 404, "no_service"),
        ];
        for (path, want_status, want_body) in cases {
            let (status, body, _) = post(&slack.url_for(path), &hi).await;
            assert_eq!((status, body.as_str()), (want_status, want_body), "{path}");
        }
        let (status, body, _) = post(
            &slack.webhook_url(),
            &json!({"text": "hi", "channel": "#does-not-exist"}),
        )
        .await;
        assert_eq!((status, body.as_str()), (404, "channel_not_found"));
        let get = client().get(slack.webhook_url()).send().await.unwrap();
        assert_eq!(get.status(), 405);
        assert!(slack.messages().is_empty());
        assert_eq!(slack.requests(), cases.len() + 2);
    }

    #[tokio::test]
    async fn slack_rate_limits_after_burst() {
        let slack = SlackReceiver::start_with(Config {
            burst: 3,
            refill_per_sec: 1.0,
            ..Config::default()
        })
        .await
        .unwrap();
        let hi = json!({"text": "hi"});
        for _ in 0..3 {
            assert_eq!(post(&slack.webhook_url(), &hi).await.0, 200);
        }
        let (status, body, headers) = post(&slack.webhook_url(), &hi).await;
        assert_eq!((status, body.as_str()), (429, "rate_limited"));
        assert_eq!(headers[header::RETRY_AFTER], "1");
        // Buckets are per hook path.
        assert_eq!(
            post(&slack.url_for("/services/T1/B2/other"), &hi).await.0,
            200
        );
        assert_eq!(slack.messages().len(), 4);

        // Burst 0: every request is rate-limited, deterministically.
        let closed = SlackReceiver::start_with(Config {
            burst: 0,
            ..Config::default()
        })
        .await
        .unwrap();
        let (status, _, headers) = post(&closed.webhook_url(), &hi).await;
        assert_eq!(status, 429);
        assert_eq!(headers[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn slack_rate_limit_refills() {
        let slack = SlackReceiver::start_with(Config {
            burst: 1,
            refill_per_sec: 20.0,
            ..Config::default()
        })
        .await
        .unwrap();
        let hi = json!({"text": "hi"});
        assert_eq!(post(&slack.webhook_url(), &hi).await.0, 200);
        assert_eq!(post(&slack.webhook_url(), &hi).await.0, 429);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(post(&slack.webhook_url(), &hi).await.0, 200);
    }

    #[tokio::test]
    async fn slack_scripted_answers_come_first() {
        let slack = SlackReceiver::start().await.unwrap();
        slack.push_answer(Answer::RateLimited {
            retry_after_secs: 1,
        });
        slack.push_answer(Answer::Error {
            status: 500,
            code: "rollup_error",
        });
        slack.push_answer(Answer::Error {
            status: 403,
            code: "action_prohibited",
        });
        slack.push_answer(Answer::Ok);
        let hi = json!({"text": "hi"});

        let (status, body, headers) = post(&slack.webhook_url(), &hi).await;
        assert_eq!((status, body.as_str()), (429, "rate_limited"));
        assert_eq!(headers[header::RETRY_AFTER], "1");
        let (status, body, _) = post(&slack.webhook_url(), &hi).await;
        assert_eq!((status, body.as_str()), (500, "rollup_error"));
        let (status, body, _) = post(&slack.webhook_url(), &hi).await;
        assert_eq!((status, body.as_str()), (403, "action_prohibited"));
        // Scripted Ok accepts even what the rules would refuse.
        let (status, body, _) = post(&slack.webhook_url(), &json!({})).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        // Then the normal rules again.
        let (status, body, _) = post(&slack.webhook_url(), &json!({})).await;
        assert_eq!((status, body.as_str()), (400, "invalid_payload"));
        let (status, body, _) = post(&slack.webhook_url(), &hi).await;
        assert_eq!((status, body.as_str()), (200, "ok"));

        let messages = slack.messages();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].body, json!({}));
        assert_eq!(messages[1].text(), Some("hi"));
        assert_eq!(slack.requests(), 6);
    }

    #[tokio::test]
    async fn slack_wait_for_messages_times_out() {
        let slack = SlackReceiver::start().await.unwrap();
        let started = Instant::now();
        let err = slack
            .wait_for_messages(1, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[tokio::test]
    async fn slack_wait_for_messages_wakes_on_post() {
        let slack = SlackReceiver::start().await.unwrap();
        let url = slack.webhook_url();
        let poster = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            post(&url, &json!({"text": "late"})).await.0
        });
        let messages = slack
            .wait_for_messages(1, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(messages[0].text(), Some("late"));
        assert_eq!(poster.await.unwrap(), 200);
    }

    #[tokio::test]
    async fn slack_oversized_body_and_shutdown() {
        let slack = SlackReceiver::start_with(Config {
            max_body_bytes: 64,
            ..Config::default()
        })
        .await
        .unwrap();
        let (status, body, _) = post(&slack.webhook_url(), &json!({"text": "x".repeat(100)})).await;
        assert_eq!((status, body.as_str()), (413, "request_too_large"));

        let mut stream = slack.subscribe();
        assert_eq!(
            post(&slack.webhook_url(), &json!({"text": "short"}))
                .await
                .0,
            200
        );
        assert_eq!(stream.recv().await.unwrap().text(), Some("short"));

        let url = slack.webhook_url();
        slack.shutdown().await;
        assert!(client()
            .post(url)
            .json(&json!({"text": "hi"}))
            .send()
            .await
            .is_err());
    }
}
