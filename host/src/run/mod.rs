//! Running pipelines: the executor, the console view and run records.
pub mod approvals;
pub mod console;
pub mod executor;
pub mod git;
pub mod preflight;
pub mod record;

pub use executor::{Executor, Quiet, RunObserver, RunOptions};
pub use record::{RunRecord, RunStore, StageRecord, Status};
