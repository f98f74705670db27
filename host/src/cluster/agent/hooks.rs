//! An agent's run hooks: approvals are asked of the server (approvers
//! decide on any machine, the server's store holds the decision), and
//! before a stage that acts outside the run the agent asks the server
//! whether its claim still stands.
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use tokio::time::Instant;

use super::forward::AttemptId;
use crate::cluster::bus::Bus;
use crate::cluster::protocol::{Reply, Request};
use crate::run::approvals::ApprovalRecord;
use crate::run::hooks::{Approvals, Ownership};

/// How often a waiting stage asks for the decision.
const POLL: Duration = Duration::from_millis(250);
/// How long a question may wait for the server.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct ServerHooks {
    pub bus: Bus,
    pub id: AttemptId,
}

#[async_trait]
impl Approvals for ServerHooks {
    async fn ask(
        &self,
        _run_id: &str,
        stage: &str,
        environment: &str,
        timeout: Duration,
    ) -> Result<Instant> {
        let req = Request::AskApproval {
            run: self.id.run.clone(),
            fence: self.id.fence,
            stage: stage.into(),
            environment: environment.into(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.bus.ask(&req, PATIENCE).await? {
            Reply::Ok => Ok(Instant::now() + timeout),
            Reply::Refused { why } => bail!("{why}"),
            other => Err(anyhow!("unexpected answer {other:?}")),
        }
    }

    async fn wait(&self, _run_id: &str, stage: &str, _deadline: Instant) -> Result<ApprovalRecord> {
        // The server decides the timeout too: one clock for every machine.
        loop {
            let req = Request::Approval {
                run: self.id.run.clone(),
                fence: self.id.fence,
                stage: stage.into(),
            };
            match self.bus.ask(&req, PATIENCE).await? {
                Reply::Approval { record: Some(r) } => return Ok(r),
                Reply::Approval { record: None } => tokio::time::sleep(POLL).await,
                Reply::Refused { why } => bail!("{why}"),
                other => bail!("unexpected answer {other:?}"),
            }
        }
    }
}

#[async_trait]
impl Ownership for ServerHooks {
    async fn still_owned(&self) -> Result<(), String> {
        let req = Request::Owns {
            run: self.id.run.clone(),
            fence: self.id.fence,
        };
        match self.bus.ask(&req, PATIENCE).await {
            Ok(Reply::Ok) => Ok(()),
            Ok(Reply::Refused { why }) => Err(format!("this agent no longer owns the run: {why}")),
            Ok(other) => Err(format!("unexpected answer from the server: {other:?}")),
            Err(e) => Err(format!(
                "cannot confirm with the server that this agent still owns the run: {e:#}"
            )),
        }
    }
}
