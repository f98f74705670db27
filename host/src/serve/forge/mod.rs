//! Telling the forge what happened: GitHub commit statuses (GitHub
//! Enterprise, Gitea and Forgejo speak the same endpoint). Every status
//! goes through a durable outbox in the run store, written in the same
//! transaction as what it reports (a run queued, a run ended), and a
//! sender posts it with retries; so a server restart neither loses a
//! status nor posts one twice. A status the forge refuses (422, 401) is
//! kept with the forge's answer, shown on the run, and never fails it.
//!
//! - [`outbox`]: the rows, what each run's end enqueues;
//! - [`github`]: one `POST /repos/{owner}/{repo}/statuses/{sha}` and what
//!   its answer means;
//! - [`sender`]: the loop that posts, backs off and records.
pub mod github;
pub mod outbox;
pub mod sender;

use crate::serve::config::SecretRef;

/// `[github]` in server.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct ForgeSettings {
    /// `https://api.github.com`, `https://HOST/api/v3` (Enterprise),
    /// `https://HOST/api/v1` (Gitea, Forgejo).
    pub api_url: String,
    pub token: SecretRef,
    /// The status context: `{context}` for the run, `{context}/{stage}`
    /// for each stage when `per_stage`.
    pub context: String,
    pub per_stage: bool,
}

pub const DEFAULT_API_URL: &str = "https://api.github.com";
pub const DEFAULT_CONTEXT: &str = "pipeline-host";

/// What the server needs to enqueue statuses: `[github]` and its
/// `public-url` (the statuses' links).
#[derive(Debug, Clone)]
pub struct Statuses {
    pub cfg: ForgeSettings,
    pub public_url: Option<String>,
}

impl Statuses {
    /// `None` without `[github]`: no statuses.
    pub fn of(config: &crate::serve::config::ServerConfig) -> Option<Self> {
        Some(Self {
            cfg: config.github.clone()?,
            public_url: config.public_url.clone(),
        })
    }

    /// `pending` for a queued run.
    pub fn queued(
        &self,
        db: &crate::store::Db,
        run: &str,
        repository: &str,
        sha: &str,
    ) -> anyhow::Result<()> {
        outbox::queued(
            db,
            &self.cfg,
            self.public_url.as_deref(),
            run,
            repository,
            sha,
        )
    }

    /// The end of a run (and its stages, with `per-stage`).
    pub fn ended(&self, db: &crate::store::Db, run: &crate::run::RunRecord) -> anyhow::Result<()> {
        outbox::ended(db, &self.cfg, self.public_url.as_deref(), run)
    }
}
