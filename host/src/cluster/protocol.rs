//! What the server and its agents say to each other over NATS. Runs and
//! events go through JetStream streams (kept across restarts); questions
//! to the server are NATS requests answered by the server alone (it is the
//! only one that writes the run store).
use serde::{Deserialize, Serialize};

use crate::caps::log::LogLine;
use crate::run::approvals::ApprovalRecord;
use crate::run::RunRecord;
use crate::serve::prepare::JobSource;
use crate::serve::queue::QueuedJob;

/// The work-queue stream of queued runs (`pipeline.runs.<labels>`).
pub const RUNS_STREAM: &str = "PIPELINE_RUNS";
/// The stream of what agents report (`pipeline.events.<run>`).
pub const EVENTS_STREAM: &str = "PIPELINE_EVENTS";
/// Requests to the server (one subject, the operation in the body).
pub const SERVER_SUBJECT: &str = "pipeline.server";
/// `pipeline.control.cancel.<run>`: stop that run wherever it runs.
pub const CANCEL_PREFIX: &str = "pipeline.control.cancel";

/// The subject a run needing `labels` is queued on: agents serving a
/// set of labels pull from every subset of it.
pub fn run_subject(labels: &[String]) -> String {
    format!("pipeline.runs.{}", label_key(labels))
}

/// `any` for no labels, else the sorted labels joined by `+`.
pub fn label_key(labels: &[String]) -> String {
    let mut l: Vec<&str> = labels.iter().map(String::as_str).collect();
    l.sort_unstable();
    l.dedup();
    if l.is_empty() {
        "any".into()
    } else {
        l.join("+")
    }
}

/// A label: what an agent offers and a pipeline or stage requires. Kept
/// to a subject-safe alphabet.
pub fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 32
        && l != "any"
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A queued run, as published for agents. Carries no secret: an agent
/// resolves secrets from its own `secrets-dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMessage {
    pub queued: QueuedJob,
    pub source: JobSource,
    pub labels: Vec<String>,
    /// The server's `public-url`, for the run's link.
    pub public_url: Option<String>,
}

/// One batch of what happened in an attempt of a run: a snapshot of its
/// record when it changed, and new log lines. `(run, attempt, seq)` is
/// unique: a batch delivered twice is applied once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub run: String,
    pub attempt: u32,
    pub fence: i64,
    pub seq: u64,
    /// The attempt starts: the run's earlier log is dropped.
    pub restarted: bool,
    pub record: Option<Box<RunRecord>>,
    pub lines: Vec<(String, LogLine)>,
    /// `record` is the final one.
    pub finished: bool,
}

/// What an agent asks the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Request {
    /// Take the run for this delivery (`stream_seq`, `delivered` times).
    Claim {
        run: String,
        agent: String,
        stream_seq: u64,
        delivered: u32,
    },
    /// The build number, saving `record` as the run's placeholder.
    Number {
        run: String,
        fence: i64,
        record: Box<RunRecord>,
    },
    /// Does this claim still own the run?
    Owns { run: String, fence: i64 },
    /// Queue the run again for agents offering `labels` (its pipeline
    /// requires labels this agent lacks).
    Relabel {
        run: String,
        fence: i64,
        labels: Vec<String>,
    },
    /// This agent is stopping: the attempt ends `stopped` and the run goes
    /// back to the queue.
    Release { run: String, fence: i64 },
    /// Record an approval request.
    AskApproval {
        run: String,
        fence: i64,
        stage: String,
        environment: String,
        timeout_ms: u64,
    },
    /// The decision on an approval, if any yet.
    Approval {
        run: String,
        fence: i64,
        stage: String,
    },
    /// Bytes of an uploaded source archive from `offset`.
    Upload {
        run: String,
        fence: i64,
        offset: u64,
    },
}

/// The server's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reply")]
pub enum Reply {
    Claimed {
        fence: i64,
        attempt: u32,
    },
    /// Not (any more) this agent's to run; `why` says so.
    Refused {
        why: String,
    },
    Number {
        number: u64,
    },
    Ok,
    Approval {
        record: Option<ApprovalRecord>,
    },
    Chunk {
        data: String,
        eof: bool,
    },
    /// The server could not answer now (its store is down): ask again.
    Retry {
        why: String,
    },
}

/// A cancel, for every agent: the run's current attempt, or only
/// `attempt` (a stale one) when given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cancel {
    pub run: String,
    pub attempt: Option<u32>,
    pub reason: String,
}
