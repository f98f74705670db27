//! What a run asks of whoever started it, beyond the observer: where
//! approvals are asked for, and whether it may still act. On one machine
//! approvals are in the state directory's store and a run always owns
//! itself; on an agent both go to the server (`crate::cluster`).
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use tokio::time::Instant;

use crate::run::approvals::{ApprovalRecord, ApprovalStore};

/// Where a stage waiting for a person asks and hears the decision.
#[async_trait]
pub trait Approvals: Send + Sync {
    /// Ask; once this returns, an approver can find the request. Returns
    /// when the request times out.
    async fn ask(
        &self,
        run_id: &str,
        stage: &str,
        environment: &str,
        timeout: Duration,
    ) -> Result<Instant>;
    /// The decision (a timeout at `deadline` is one).
    async fn wait(&self, run_id: &str, stage: &str, deadline: Instant) -> Result<ApprovalRecord>;
}

#[async_trait]
impl Approvals for ApprovalStore {
    async fn ask(
        &self,
        run_id: &str,
        stage: &str,
        environment: &str,
        timeout: Duration,
    ) -> Result<Instant> {
        ApprovalStore::ask(self, run_id, stage, environment, timeout).await
    }

    async fn wait(&self, run_id: &str, stage: &str, deadline: Instant) -> Result<ApprovalRecord> {
        ApprovalStore::wait(self, run_id, stage, deadline).await
    }
}

/// Asked before every stage that acts outside the run
/// ([`crate::pipeline::Stage::acts_outside`]): an agent whose claim on the
/// run was taken over must not deploy or push any more.
#[async_trait]
pub trait Ownership: Send + Sync {
    /// `Err(why)` when the run is no longer this process's to act for.
    async fn still_owned(&self) -> Result<(), String>;
}

/// The hooks of one run; the default is one machine's (the state
/// directory's approvals, no ownership to check).
#[derive(Clone, Default)]
pub struct RunHooks {
    pub approvals: Option<Arc<dyn Approvals>>,
    pub ownership: Option<Arc<dyn Ownership>>,
}
