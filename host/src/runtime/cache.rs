//! On-disk cache of precompiled components.
//!
//! Key: sha256 of the component bytes + a hash of the engine's compilation
//! settings (`Engine::precompile_compatibility_hash`), so a wasmtime upgrade
//! or a config change never loads stale native code. Deserialising a
//! `.cwasm` runs native code, so the cache directory must be trusted: it
//! lives in the host's state directory, never inside a stage's workspace.
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::component::Component;
use wasmtime::Engine;

pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained (for logs and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheOutcome {
    Hit,
    Compiled,
}

impl ComponentCache {
    pub fn new(engine: &Engine, dir: PathBuf) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Self {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The component for `bytes` (whose digest is `sha256`): from the cache
    /// when present, else compiled and stored.
    pub fn load(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome)> {
        let entry = self.entry(sha256);
        if entry.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same settings (both are in the key), in a
            // directory only the host writes to.
            match unsafe { Component::deserialize_file(engine, &entry) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %entry.display(), error = %e, "dropping unusable cache entry");
                    let _ = std::fs::remove_file(&entry);
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating cache directory {}", self.dir.display()))?;
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = self
            .dir
            .join(format!(".{sha256}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &compiled).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &entry)?;
        // Loaded from the file, as a cache hit is: the memory images are
        // then mapped from it. Loaded from bytes, wasmtime copies each
        // image into a sealed memfd, and sealing can fail with EBUSY while
        // another core still holds the freshly written pages (seen in CI).
        // SAFETY: written just above by this engine.
        let component = unsafe { Component::deserialize_file(engine, &entry) }
            .map_err(|e| anyhow::anyhow!("loading {}: {e:#}", entry.display()))?;
        Ok((component, CacheOutcome::Compiled))
    }
}
