//! Where a run's workspace comes from when the host makes it itself
//! (`host serve`): a commit fetched from a git repository.
pub mod git;
