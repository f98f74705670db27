//! The `docker` import: the generated functions and types, plus small
//! helpers. Every call is checked by the host against the stage's
//! `grants.docker`; a refused call returns `CapError::Denied`.
pub use crate::bindings::ci::stage::docker::*;

impl Privileges {
    /// No extra privileges: what every plugin should ask for (the host
    /// refuses anything else).
    pub fn none() -> Self {
        Privileges {
            privileged: false,
            network: None,
            cap_add: Vec::new(),
            devices: Vec::new(),
            mounts: Vec::new(),
        }
    }
}

/// Where the workspace is mounted, in the stage and in containers.
pub const WORKSPACE: &str = "/workspace";
