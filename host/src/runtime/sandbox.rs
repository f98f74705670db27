//! One stage's store: an empty WASI context plus exactly its grants, the
//! capability handles, and resource limits.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::caps::StageCaps;

/// Where the workspace appears inside every stage.
pub const WORKSPACE_GUEST_PATH: &str = "/workspace";

/// What the pipeline file grants one stage beyond its capabilities.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Host directory mounted at `/workspace`, and whether writes are allowed.
    pub workspace: Option<(PathBuf, bool)>,
    /// Environment variables passed through, by name, with their values.
    pub env: Vec<(String, String)>,
    pub memory_bytes: u64,
    pub timeout: Duration,
}

impl Sandbox {
    /// Deny by default: no preopens, no env, no args, no network, stdio
    /// into the stage log.
    pub fn wasi_ctx(&self, caps: &StageCaps) -> Result<WasiCtx> {
        let mut b = WasiCtxBuilder::new();
        b.stdout(caps.log.output(true))
            .stderr(caps.log.output(false))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        for (k, v) in &self.env {
            b.env(k, v);
        }
        if let Some((dir, writable)) = &self.workspace {
            let perms = if *writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(dir, WORKSPACE_GUEST_PATH, perms)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("opening workspace {}", dir.display()))?;
        }
        Ok(b.build())
    }
}

/// Store limits that also remember which limit tripped, so the failure can
/// say "memory limit" rather than a bare trap.
pub struct Limits {
    pub memory_bytes: usize,
    pub memory_hit: bool,
}

const MAX_INSTANCES: usize = 64; // componentize-py needs ~14, --stub-wasi ~40
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 32;
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let _ = current;
        if desired > self.memory_bytes {
            self.memory_hit = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory_bytes,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stage exceeded its memory limit of {limit} bytes")]
pub struct MemoryLimitExceeded {
    pub limit: usize,
}

/// The data of one stage's wasmtime store.
pub struct StageState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: Limits,
    pub caps: StageCaps,
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
