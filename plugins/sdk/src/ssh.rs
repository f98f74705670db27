//! The `ssh` import: the [`Ssh`] port and [`HostSsh`] forwarding it to the
//! host (`stage_sdk::testing::FakeSsh` in tests). Hosts are granted by name.
use crate::bindings::ci::stage::ssh as raw;
pub use crate::bindings::ci::stage::ssh::*;

/// SSH hosts as a trait: the host's or a fake.
pub trait Ssh {
    fn exec(&mut self, req: &ExecRequest) -> Result<ExecResult, CapError>;
    /// Copies the workspace file `local_path` to `remote_path` on `target`;
    /// returns the sha256 of what was sent.
    fn upload(
        &mut self,
        target: &str,
        local_path: &str,
        remote_path: &str,
    ) -> Result<String, CapError>;
}

/// The host's `ssh` import.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostSsh;

impl Ssh for HostSsh {
    fn exec(&mut self, req: &ExecRequest) -> Result<ExecResult, CapError> {
        raw::exec(req)
    }
    fn upload(
        &mut self,
        target: &str,
        local_path: &str,
        remote_path: &str,
    ) -> Result<String, CapError> {
        raw::upload(target, local_path, remote_path)
    }
}
