//! Where a run's workspace comes from when the host makes it itself: a
//! commit fetched from a git repository (`host serve`), or an uploaded
//! source archive (`host run --source`, `host serve`'s upload endpoint),
//! or a per-run copy of a working tree (`host run` when a stage may write).
pub mod archive;
pub mod copy;
pub mod git;
