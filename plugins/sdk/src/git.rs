//! The `git` import: the [`Git`] port and [`HostGit`] forwarding it to the
//! host (`stage_sdk::testing::FakeGit` in tests). Repositories are granted
//! by name; a checkout is a handle the host keeps.
use crate::bindings::ci::stage::git as raw;
pub use crate::bindings::ci::stage::git::*;

/// Git repositories as a trait: the host's or a fake.
pub trait Git {
    /// Clones the granted repository `repo`; returns the checkout handle.
    fn clone_repo(&mut self, repo: &str, branch: Option<&str>) -> Result<Checkout, CapError>;
    fn list_files(&mut self, checkout: Checkout, pattern: &str) -> Result<Vec<String>, CapError>;
    fn read_file(&mut self, checkout: Checkout, path: &str) -> Result<Vec<u8>, CapError>;
    fn write_file(
        &mut self,
        checkout: Checkout,
        path: &str,
        content: &[u8],
    ) -> Result<(), CapError>;
    /// The new commit's sha; `None` when nothing changed.
    fn commit(&mut self, checkout: Checkout, message: &str) -> Result<Option<String>, CapError>;
    fn push(&mut self, checkout: Checkout) -> Result<(), CapError>;
    fn head(&mut self, checkout: Checkout) -> Result<String, CapError>;
}

/// The host's `git` import.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostGit;

impl Git for HostGit {
    fn clone_repo(&mut self, repo: &str, branch: Option<&str>) -> Result<Checkout, CapError> {
        raw::clone(repo, branch)
    }
    fn list_files(&mut self, checkout: Checkout, pattern: &str) -> Result<Vec<String>, CapError> {
        raw::list_files(checkout, pattern)
    }
    fn read_file(&mut self, checkout: Checkout, path: &str) -> Result<Vec<u8>, CapError> {
        raw::read_file(checkout, path)
    }
    fn write_file(
        &mut self,
        checkout: Checkout,
        path: &str,
        content: &[u8],
    ) -> Result<(), CapError> {
        raw::write_file(checkout, path, content)
    }
    fn commit(&mut self, checkout: Checkout, message: &str) -> Result<Option<String>, CapError> {
        raw::commit(checkout, message)
    }
    fn push(&mut self, checkout: Checkout) -> Result<(), CapError> {
        raw::push(checkout)
    }
    fn head(&mut self, checkout: Checkout) -> Result<String, CapError> {
        raw::head(checkout)
    }
}
