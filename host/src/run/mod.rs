//! Running pipelines: the executor (the scheduler decides what starts, a
//! stage module runs one stage), the console view, run records (kept live
//! while a run goes) and what every way of starting a run shares.
pub mod approvals;
pub mod artifact_store;
pub mod artifacts;
pub mod console;
pub mod display;
pub mod executor;
pub mod git;
pub mod hooks;
pub mod launch;
pub mod live;
pub mod observer;
pub mod options;
pub mod preflight;
pub mod record;
pub mod scheduler;
mod stage;
pub mod stage_cache;
pub mod stores;

pub use executor::Executor;
pub use observer::{Quiet, RunObserver};
pub use options::RunOptions;
pub use record::{RunFilter, RunRecord, RunStore, RunSummary, StageRecord, Status, TriggerInfo};
