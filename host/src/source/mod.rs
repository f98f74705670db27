//! Where a run's workspace comes from when the host makes it itself: a
//! commit fetched from a git repository (`host serve`), or an uploaded
//! source archive (`host run --source`, `host serve`'s upload endpoint).
pub mod archive;
pub mod git;
