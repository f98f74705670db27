//! Host capabilities: what a stage can ask the host to do.
//!
//! Each capability is one module with the same shape: a per-stage value
//! built from the stage's grants (`XCap::new(grants, ...)`) that implements
//! the generated `Host` trait of its WIT interface and checks the grant on
//! every call before acting. A call outside the grants returns
//! [`denied`] and never reaches the outside world.
pub mod audit;
pub mod docker;
pub mod git;
pub mod http;
pub mod log;
pub mod scan;
pub mod secrets;
pub mod ssh;

use crate::runtime::bindings::{CapError, Denial};

/// The refusal every capability returns for an ungranted call.
pub fn denied(stage: &str, capability: &str, target: impl Into<String>) -> CapError {
    let target = target.into();
    // Escaped: a target is plugin-controlled text on its way into the log.
    let shown = target.escape_debug().to_string();
    tracing::warn!(stage, capability, target = %shown, "capability call denied");
    CapError::Denied(Denial {
        stage: stage.to_string(),
        capability: capability.to_string(),
        target,
    })
}

/// A capability error as one line for people.
pub fn describe(e: &CapError) -> String {
    match e {
        CapError::Denied(d) => format!(
            "denied: stage `{}` has no `{}` grant for `{}`",
            d.stage, d.capability, d.target
        ),
        CapError::Invalid(m) => format!("invalid request: {m}"),
        CapError::Limit(m) => format!("limit exceeded: {m}"),
        CapError::Failed(m) => format!("failed: {m}"),
        CapError::Unsupported(m) => format!("unsupported: {m}"),
        CapError::Remote(r) => {
            let status = r.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
            format!("{}: {}{status}: {}", r.service, r.code, r.message)
        }
    }
}

/// Everything a stage may touch outside its own memory, one field per
/// capability. Built by the executor from the stage's grants.
pub struct StageCaps {
    pub log: log::StageLog,
    pub secrets: std::sync::Arc<secrets::SecretsCap>,
    pub http: http::HttpCap,
    pub docker: docker::DockerCap,
    pub scan: scan::ScanCap,
    pub git: git::GitCap,
    pub ssh: ssh::SshCap,
}

impl StageCaps {
    /// Capabilities of a stage granted nothing (used for `describe`).
    pub fn ungranted(stage: &str) -> Self {
        let store = std::sync::Arc::new(secrets::SecretStore::default());
        let secrets = std::sync::Arc::new(secrets::SecretsCap::new(
            stage,
            vec![],
            vec![],
            store.clone(),
        ));
        Self {
            log: log::StageLog::new(
                stage,
                log::DEFAULT_LOG_LIMIT,
                secrets::Masker::default(),
                None,
            ),
            http: http::HttpCap::new(
                stage,
                crate::grants::url::UrlAllowlist::default(),
                http::HttpCap::client(),
                http::HttpLimits::default(),
                secrets.clone(),
            ),
            docker: docker::DockerCap::new(
                docker::policy::DockerPolicy::new(stage, &Default::default(), None)
                    .expect("empty docker grants"),
                docker::DockerEngine::default(),
                secrets.clone(),
                log::StageLog::new(stage, 0, secrets::Masker::default(), None),
                stage,
            ),
            git: git::GitCap::new(stage, vec![], git::CommitIdentity::default()),
            ssh: ssh::SshCap::new(stage, vec![], store, None),
            secrets,
            scan: scan::ScanCap::new(
                stage,
                false,
                scan::ScanConfig::from_env(&std::env::temp_dir()),
                docker::DockerEngine::default(),
            ),
        }
    }
}
