//! Hearing about a run as it goes: the console, the live recorder, the
//! server and tests implement [`RunObserver`].
use std::time::Duration;

use crate::caps::log::LogLine;
use crate::run::record::{RunRecord, StageRecord};

/// Hears about a run as it happens (console, server, tests).
pub trait RunObserver: Send + Sync {
    /// The run begins; `record` has every stage pending.
    fn run_started(&self, _record: &RunRecord) {}
    fn stage_started(&self, _stage: &str, _attempt: u32) {}
    /// A stage waits for a person to approve its deployment.
    fn approval_requested(
        &self,
        _run_id: &str,
        _stage: &str,
        _environment: &str,
        _timeout: Duration,
    ) {
    }
    fn stage_log(&self, _stage: &str, _line: &LogLine) {}
    fn stage_finished(&self, _record: &StageRecord) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl RunObserver for Quiet {}
