//! `host serve`: the CI server. GitHub webhooks start runs of the pushed
//! commit; runs wait in a durable queue and run a few at a time; the run
//! history is served as a JSON API, Prometheus metrics and web pages.
//!
//! - [`config`]: the server's configuration file;
//! - [`webhook`]: signatures, payloads, which runs a delivery asks for;
//! - [`queue`]: the durable queue (SQLite, beside the run records);
//! - [`dispatch`]: takes queued runs, runs them, cancels superseded;
//! - [`cancel`]: `host cancel` requests, from any machine;
//! - [`forge`]: commit statuses on GitHub, from a durable outbox;
//! - [`access`]: users, tokens, roles, and the actions they may take;
//! - [`prepare`]: a job's source and pipeline, wherever it runs;
//! - [`api`], [`web`], [`metrics`]: what the server shows;
//! - [`events`]: live run pages (server-sent events).
pub mod access;
pub mod api;
pub mod cancel;
pub mod config;
pub mod dispatch;
pub mod events;
pub mod forge;
pub mod metrics;
pub mod prepare;
pub mod queue;
pub mod web;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::run::launch::RunControl;
use crate::run::RunStore;
use crate::runtime::Runtime;
use config::ServerConfig;

/// What every handler and the dispatcher share.
pub struct ServerState {
    pub config: ServerConfig,
    /// The webhook secret's value (never logged).
    secret: Vec<u8>,
    pub state_dir: PathBuf,
    pub workspaces: PathBuf,
    pub runtime: Arc<Runtime>,
    /// The state directory's stores, shared by every run here.
    pub run_stores: Arc<crate::run::stores::RunStores>,
    /// One connection for the handlers' reads and the queue's writes
    /// (each run's recorder has its own).
    db: Mutex<RunStore>,
    /// Woken when a run is queued or ends.
    pub(crate) wake: Notify,
    /// Woken when a commit status is enqueued.
    pub(crate) statuses: Notify,
    /// Runs in progress, to cancel them.
    pub(crate) running: Mutex<HashMap<String, RunControl>>,
    /// Webhook deliveries by outcome, since start.
    deliveries: Mutex<BTreeMap<String, u64>>,
    pub shutdown: CancellationToken,
    /// Build numbers are handed out one at a time.
    pub(crate) numbering: tokio::sync::Mutex<()>,
    /// Failed sign-ins, to slow guessing.
    pub(crate) sign_ins: access::throttle::Throttle,
    /// With `[cluster]`: the NATS side (set once connected, at start).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::server::Cluster>>,
}

impl ServerState {
    pub fn new(config: ServerConfig, state_dir: &Path, runtime: Arc<Runtime>) -> Result<Self> {
        let secret = config
            .webhook_secret
            .read()
            .map_err(|e| {
                anyhow::anyhow!("{}: server.webhook-secret: {e:#}", config.file.display())
            })?
            .into_bytes();
        let store = match &config.cluster {
            None => RunStore::open(state_dir)?,
            Some(c) => {
                let url = c.database.read().map_err(|e| {
                    anyhow::anyhow!("{}: cluster.database: {e:#}", config.file.display())
                })?;
                let store = RunStore::postgres(&url)?;
                crate::cluster::claims::init(store.db())?;
                store
            }
        };
        queue::Queue::new(store.db()).init()?;
        cancel::init(store.db())?;
        forge::outbox::init(store.db())?;
        access::actions::init(store.db())?;
        access::session::init(store.db())?;
        let workspaces = config
            .workspaces
            .clone()
            .unwrap_or_else(|| state_dir.join("workspaces"));
        std::fs::create_dir_all(&workspaces)
            .with_context(|| format!("creating {}", workspaces.display()))?;
        Ok(Self {
            config,
            secret,
            state_dir: state_dir.to_path_buf(),
            workspaces: workspaces.canonicalize()?,
            run_stores: crate::run::stores::RunStores::open(state_dir)?,
            runtime,
            db: Mutex::new(store),
            wake: Notify::new(),
            statuses: Notify::new(),
            running: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(BTreeMap::new()),
            shutdown: CancellationToken::new(),
            numbering: tokio::sync::Mutex::new(()),
            sign_ins: access::throttle::Throttle::default(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Run `f` with the shared store, off the async threads.
    pub async fn with_db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&RunStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            let db = s.db.lock();
            f(&db)
        })
        .await
        .context("store task")?
    }

    /// Where this server's run store is (for stores opened beside it).
    pub fn store_location(&self) -> Result<crate::store::StoreLocation> {
        Ok(match &self.config.cluster {
            Some(c) => crate::store::StoreLocation::Postgres(c.database.read()?),
            None => crate::store::StoreLocation::Dir(self.state_dir.clone()),
        })
    }

    /// What this server decides for the runs it runs itself.
    pub fn site(&self) -> prepare::Site<'_> {
        prepare::Site {
            state_dir: &self.state_dir,
            plugin_dirs: &self.config.plugin_dirs,
            secrets_dir: self.config.secrets_dir.as_deref(),
            public_url: self.config.public_url.as_deref(),
            // The server's own webhook secret is never a pipeline's to read.
            hidden_env: match &self.config.webhook_secret {
                config::SecretRef::Env(var) => Some(var),
                config::SecretRef::File(_) => None,
            },
        }
    }

    fn count_delivery(&self, outcome: &str) {
        *self
            .deliveries
            .lock()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    pub fn delivery_counts(&self) -> BTreeMap<String, u64> {
        self.deliveries.lock().clone()
    }
}

/// Serve until `shutdown` (or SIGTERM / Ctrl-C): runs in progress are
/// stopped and put back in the queue for the next start.
pub async fn serve(state: Arc<ServerState>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(state.config.listen)
        .await
        .with_context(|| format!("binding {}", state.config.listen))?;
    let addr = listener.local_addr()?;
    let signs_in = state.config.users.iter().any(|u| u.password.is_some());
    if signs_in && state.config.public_url.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "sign-in cookies are Secure: browsers keep them over HTTPS (or loopback) only; \
             serve behind TLS, or say `public-url = \"http://…\"` to send them over plain HTTP"
        );
    }
    // Registered before the server says it listens, so a signal right
    // after that line stops it cleanly.
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let (recovered, dispatcher) = match &state.config.cluster {
        None => (
            dispatch::recover(&state).await?,
            tokio::spawn(dispatch::run(state.clone())),
        ),
        Some(settings) => {
            use crate::cluster::server;
            let url = settings.database.read()?;
            let cluster = server::Cluster::connect(settings, &url).await?;
            let _ = state.cluster.set(cluster.clone());
            (
                server::recover(&state).await?,
                tokio::spawn(server::run(state.clone(), cluster)),
            )
        }
    };
    tokio::spawn(cancel::watch(state.clone()));
    if let Some(g) = state.config.github.clone() {
        tokio::spawn(forge::sender::run(state.clone(), g));
    }
    // Tests and scripts wait for this line.
    eprintln!("host serve: listening on http://{addr} ({recovered})");
    let app = api::router(state.clone());
    let shutdown = state.shutdown.clone();
    tokio::spawn(stop_on_signal(term, int, shutdown.clone()));
    // The peer's address counts failed sign-ins per address.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving HTTP")?;
    dispatcher.await.context("dispatcher")?;
    Ok(())
}

async fn stop_on_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = shutdown.cancelled() => return,
    }
    eprintln!("host serve: stopping (runs in progress go back to the queue)");
    shutdown.cancel();
}
