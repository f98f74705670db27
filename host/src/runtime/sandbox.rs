//! One stage's store: an empty WASI context plus exactly its grants, the
//! capability handles, and resource limits.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::caps::StageCaps;
use crate::wit::StageReport;

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

/// Store limits for one stage. Memory is a total: every linear memory and
/// every table the stage's instances create or grow counts against the
/// stage's one `memory` limit, whatever the number of memories. The limiter
/// also remembers which limit tripped, so the failure can say "memory
/// limit" rather than a bare trap.
pub struct Limits {
    /// The stage's `memory`: linear memories and tables together, in bytes.
    pub memory_bytes: usize,
    /// Bytes reserved so far by all memories and tables of the store.
    used_bytes: usize,
    /// Table elements of all tables of the store.
    table_elements: usize,
    pub memory_hit: bool,
}

/// Instances, tables and memories one stage may create in all (wasmtime
/// counts them per store: a stage's whole run, every instance of every
/// component together). componentize-py needs ~14 instances, --stub-wasi ~40.
pub const MAX_INSTANCES: usize = 64;
pub const MAX_TABLES: usize = 64;
pub const MAX_MEMORIES: usize = 32;
/// Table elements of all the stage's tables together (each also counts
/// [`TABLE_ELEMENT_BYTES`] against the memory limit).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// What wasmtime keeps per table element (a pointer).
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

impl Limits {
    pub fn new(memory_bytes: usize) -> Self {
        Self {
            memory_bytes,
            used_bytes: 0,
            table_elements: 0,
            memory_hit: false,
        }
    }

    /// Bytes of memories and tables the stage holds now.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Count `more` bytes, or fail naming the limit.
    fn reserve(&mut self, more: usize) -> wasmtime::Result<()> {
        let total = self.used_bytes.saturating_add(more);
        if total > self.memory_bytes {
            self.memory_hit = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory_bytes,
                total,
            }));
        }
        self.used_bytes = total;
        Ok(())
    }
}

// Growth is counted when it is allowed and never given back: a growth that
// wasmtime then fails anyway (rare: the OS refused) stays counted, which
// errs on the safe side.
impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past the memory's own maximum: wasmtime refuses it; not counted.
            return Ok(false);
        }
        self.reserve(desired.saturating_sub(current))?;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        let elements = self.table_elements.saturating_add(more);
        if elements > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(TableLimitExceeded {
                limit: MAX_TABLE_ELEMENTS,
                total: elements,
            }));
        }
        self.reserve(more.saturating_mul(TABLE_ELEMENT_BYTES))?;
        self.table_elements = elements;
        Ok(true)
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
#[error(
    "stage exceeded its memory limit of {} ({limit} bytes): its linear memories and tables together would need {total} bytes",
    size_text(*limit)
)]
pub struct MemoryLimitExceeded {
    pub limit: usize,
    pub total: usize,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "stage exceeded its table limit of {limit} elements (all tables together would hold {total})"
)]
pub struct TableLimitExceeded {
    pub limit: usize,
    pub total: usize,
}

/// `64 MiB`, `4 KiB`, or bytes: for messages that name a limit.
pub fn size_text(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// What one stage's report may hold. A report becomes the stage's record
/// (kept in `runs.db`, shown by `host runs show` and the web pages) and its
/// outputs are handed to later stages, so it is bounded like the log.
/// Over a count or a total, the stage fails naming the limit and keeps no
/// outputs or annotations; text meant for people that is longer than
/// [`MAX_REPORT_TEXT`] is cut instead, like a log line.
pub const MAX_OUTPUTS: usize = 1_000;
pub const MAX_OUTPUT_KEY_BYTES: usize = 256;
pub const MAX_OUTPUT_VALUE_BYTES: usize = 64 * 1024;
/// All output keys and values together.
pub const MAX_OUTPUTS_BYTES: usize = 1024 * 1024;
pub const MAX_ANNOTATIONS: usize = 1_000;
/// All annotation titles, messages and files together (after the cut).
pub const MAX_ANNOTATIONS_BYTES: usize = 1024 * 1024;
/// A summary, an annotation's title, message or file, or a stage's error
/// longer than this is cut (the same as a log line).
pub const MAX_REPORT_TEXT: usize = 16 * 1024;

/// A report over one of the limits: what it holds and the limit.
#[derive(Debug, thiserror::Error)]
#[error("report limit exceeded: {what}; the limit is {limit}")]
pub struct ReportLimit {
    pub what: String,
    pub limit: String,
}

/// Why a report is refused, naming the limit and the count.
pub fn check_report(report: &StageReport) -> Result<(), ReportLimit> {
    let over = |what: String, limit: String| Err(ReportLimit { what, limit });
    let n = report.outputs.len();
    if n > MAX_OUTPUTS {
        return over(
            format!("{n} outputs"),
            format!("{MAX_OUTPUTS} outputs per stage"),
        );
    }
    let mut total = 0usize;
    for (key, value) in &report.outputs {
        if key.len() > MAX_OUTPUT_KEY_BYTES {
            return over(
                format!("an output key of {} bytes", key.len()),
                format!("{MAX_OUTPUT_KEY_BYTES} bytes per key"),
            );
        }
        if value.len() > MAX_OUTPUT_VALUE_BYTES {
            return over(
                format!("output `{key}` holds {} bytes", value.len()),
                format!("{} per output value", size_text(MAX_OUTPUT_VALUE_BYTES)),
            );
        }
        total += key.len() + value.len();
    }
    if total > MAX_OUTPUTS_BYTES {
        return over(
            format!("outputs of {total} bytes in all"),
            format!("{} of outputs per stage", size_text(MAX_OUTPUTS_BYTES)),
        );
    }
    let n = report.annotations.len();
    if n > MAX_ANNOTATIONS {
        return over(
            format!("{n} annotations"),
            format!("{MAX_ANNOTATIONS} annotations per stage"),
        );
    }
    let kept = |s: &str| s.len().min(MAX_REPORT_TEXT);
    let total: usize = report
        .annotations
        .iter()
        .map(|a| kept(&a.title) + kept(&a.message) + a.file.as_deref().map_or(0, kept))
        .sum();
    if total > MAX_ANNOTATIONS_BYTES {
        return over(
            format!("annotations of {total} bytes in all"),
            format!(
                "{} of annotations per stage",
                size_text(MAX_ANNOTATIONS_BYTES)
            ),
        );
    }
    Ok(())
}

/// The data of one stage's wasmtime store.
pub struct StageState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: Limits,
    pub caps: StageCaps,
}

impl crate::caps::HasCaps for StageState {
    fn caps(&mut self) -> &mut StageCaps {
        &mut self.caps
    }
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::{Annotation, Level, ReportStatus};

    const MIB: usize = 1 << 20;

    #[test]
    fn memory_is_a_total_over_every_memory_and_table() {
        let mut l = Limits::new(64 * MIB);
        // Two memories of 40 MiB: each under the limit, not together.
        assert!(l.memory_growing(0, 40 * MIB, None).unwrap());
        let err = l.memory_growing(0, 40 * MIB, None).unwrap_err();
        assert!(l.memory_hit);
        let msg = err.to_string();
        assert!(msg.contains("memory limit of 64 MiB"), "{msg}");
        assert!(msg.contains(&(80 * MIB).to_string()), "{msg}");
        // Growing one memory counts the difference only.
        let mut l = Limits::new(64 * MIB);
        assert!(l.memory_growing(0, MIB, None).unwrap());
        assert!(l.memory_growing(MIB, 60 * MIB, None).unwrap());
        assert_eq!(l.used_bytes(), 60 * MIB);
        // Tables count against the same total.
        assert!(l.table_growing(0, 1000, None).unwrap());
        assert_eq!(l.used_bytes(), 60 * MIB + 1000 * TABLE_ELEMENT_BYTES);
        assert!(l.memory_growing(0, 4 * MIB, None).is_err());
        // Past a memory's own maximum: refused by wasmtime, not counted.
        let mut l = Limits::new(64 * MIB);
        assert!(!l.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
        assert_eq!(l.used_bytes(), 0);
    }

    #[test]
    fn table_elements_are_a_total_too() {
        let mut l = Limits::new(usize::MAX);
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        let err = l.table_growing(0, 1, None).unwrap_err().to_string();
        assert!(err.contains("table limit"), "{err}");
        assert_eq!((l.instances(), l.memories(), l.tables()), (64, 32, 64));
    }

    fn report(outputs: usize, value: usize, annotations: usize, message: usize) -> StageReport {
        StageReport {
            status: ReportStatus::Passed,
            summary: "s".into(),
            outputs: (0..outputs)
                .map(|i| (format!("k{i}"), "v".repeat(value)))
                .collect(),
            annotations: (0..annotations)
                .map(|i| Annotation {
                    level: Level::Info,
                    title: format!("t{i}"),
                    message: "m".repeat(message),
                    file: Some("f".into()),
                    line: None,
                })
                .collect(),
        }
    }

    #[test]
    fn reports_are_bounded_naming_the_limit_and_the_count() {
        assert!(check_report(&report(MAX_OUTPUTS, 10, MAX_ANNOTATIONS, 100)).is_ok());
        let err = |r: StageReport| check_report(&r).unwrap_err().to_string();
        let e = err(report(MAX_OUTPUTS + 1, 1, 0, 0));
        assert!(
            e.contains("1001 outputs") && e.contains("limit is 1000 outputs"),
            "{e}"
        );
        let e = err(report(1, MAX_OUTPUT_VALUE_BYTES + 1, 0, 0));
        assert!(
            e.contains("output `k0` holds 65537 bytes") && e.contains("64 KiB"),
            "{e}"
        );
        let e = err(report(20, 60 * 1024, 0, 0));
        assert!(e.contains("outputs of") && e.contains("1 MiB"), "{e}");
        let mut r = report(0, 0, 0, 0);
        r.outputs.push(("k".repeat(300), String::new()));
        assert!(err(r).contains("output key of 300 bytes"));
        let e = err(report(0, 0, 200_000, 1));
        assert!(
            e.contains("200000 annotations") && e.contains("limit is 1000"),
            "{e}"
        );
        let e = err(report(0, 0, 500, 4000));
        assert!(e.contains("annotations of") && e.contains("1 MiB"), "{e}");
        // A long message counts as what is kept of it (it is cut).
        assert!(check_report(&report(0, 0, 10, 10 * MIB)).is_ok());
        assert_eq!(size_text(64 * MIB), "64 MiB");
        assert_eq!(size_text(4096), "4 KiB");
        assert_eq!(size_text(1000), "1000 bytes");
    }
}
