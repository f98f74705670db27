//! A plain HTTP server on 127.0.0.1 that counts the requests it gets, with
//! a redirect route, for the http capability tests.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub struct TestServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
struct AppState {
    hits: Arc<AtomicUsize>,
    redirect_to: Option<String>,
}

impl TestServer {
    /// `/ok` answers 200 "fine"; `/redirect` answers 302 to `redirect_to`.
    pub async fn start(redirect_to: Option<String>) -> anyhow::Result<Self> {
        let hits = Arc::new(AtomicUsize::new(0));
        let state = AppState {
            hits: hits.clone(),
            redirect_to,
        };
        let app = Router::new()
            .route("/ok", get(ok))
            .route("/redirect", get(redirect))
            .fallback(ok)
            .with_state(state);
        let (addr, tx) = serve(app).await?;
        Ok(Self {
            addr,
            hits,
            _shutdown: tx,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn ok(State(s): State<AppState>) -> impl IntoResponse {
    s.hits.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, "fine")
}

async fn redirect(State(s): State<AppState>) -> impl IntoResponse {
    s.hits.fetch_add(1, Ordering::SeqCst);
    match s.redirect_to {
        Some(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        None => (StatusCode::NOT_FOUND, "no redirect configured").into_response(),
    }
}

/// Serve `app` on a free 127.0.0.1 port until the sender is dropped.
pub async fn serve(app: Router) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok((addr, tx))
}

/// Serves files from a map that a test can change while it runs (to
/// publish a plugin, then tamper with it). Unknown paths answer 404.
#[derive(Clone, Default)]
pub struct FileServer {
    files: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>,
}

impl FileServer {
    pub async fn start(&self) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
        let files = self.files.clone();
        let app = Router::new().fallback(move |uri: axum::http::Uri| {
            let files = files.clone();
            async move {
                match files.lock().unwrap().get(uri.path()) {
                    Some(b) => (StatusCode::OK, b.clone()),
                    None => (StatusCode::NOT_FOUND, b"not found".to_vec()),
                }
            }
        });
        serve(app).await
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), bytes);
    }
}
