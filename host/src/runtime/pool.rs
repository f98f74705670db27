//! The instance pool: every stage's memories, tables, instances and fiber
//! stack come from slots reserved once, when the engine starts (wasmtime's
//! pooling allocator). Starting a stage then takes a slot instead of
//! mapping a 4 GiB reservation and a stack, and ending one resets the slot
//! instead of unmapping (with a TLB shootdown on every core): instantiate
//! ~60 → ~10 µs and teardown ~80 → ~8 µs per stage on 2 cores. The pages a
//! stage wrote stay mapped and are copied back to the image, so the next
//! stage does not fault them in again: a no-op `run` call ~37 → ~10 µs.
//!
//! The pool is finite and a stage that found it full would fail, so a
//! stage takes what it needs from it before it starts ([`Pool::admit`]),
//! by the counts its component declares; when the pool is full it waits
//! for another stage to end.
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::component::Component;
use wasmtime::{Enabled, PoolingAllocationConfig};

use super::sandbox::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, MAX_TABLE_ELEMENTS};

/// Stages (and `describe` calls) instantiated at once in this process.
pub const STAGES: u32 = 512;
/// Linear memories and tables of all of them together (a Rust or JS
/// stage has one or two of each, a Python one a few).
pub const MEMORIES: u32 = 4 * STAGES;
pub const TABLES: u32 = 4 * STAGES;
/// Bytes of a stage's memory that stay mapped between stages and are reset
/// by copying (the rest is given back with `madvise` and faulted in again
/// by the next stage): about what a small stage writes. Where the kernel
/// can list a slot's written pages (`PAGEMAP_SCAN`, Linux 6.7), these are
/// the pages the stage wrote, wherever they lie (a Rust guest's stack sits
/// below 1 MiB, its heap above); elsewhere the memory's first bytes.
const KEEP_RESIDENT: usize = 256 * 1024;

/// The allocator's slots: every count is a ceiling the admission below
/// keeps stages under, or a per-stage limit times [`STAGES`].
pub fn config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(STAGES)
        .total_stacks(STAGES)
        .total_core_instances(STAGES * MAX_INSTANCES as u32)
        .total_memories(MEMORIES)
        .total_tables(TABLES)
        .max_memories_per_module(MAX_MEMORIES as u32)
        .max_tables_per_module(MAX_TABLES as u32)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(1 << 32)
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .async_stack_keep_resident(KEEP_RESIDENT);
    pool
}

/// What one instantiation of a component takes from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub memories: u32,
    pub tables: u32,
}

impl Needs {
    /// A component's memories and tables (every core instance it makes);
    /// one that imports core modules (none of ours can: components are
    /// self-contained) is counted at the per-stage limits.
    pub fn of(component: &Component) -> Self {
        match component.resources_required() {
            Some(r) => Self {
                memories: r.num_memories.min(MAX_MEMORIES as u32),
                tables: r.num_tables.min(MAX_TABLES as u32),
            },
            None => Self {
                memories: MAX_MEMORIES as u32,
                tables: MAX_TABLES as u32,
            },
        }
    }
}

/// What is left of the pool.
pub struct Pool {
    stages: Semaphore,
    memories: Semaphore,
    tables: Semaphore,
}

/// A stage's share of the pool, given back when dropped (after its store).
pub struct Admission<'a> {
    _permits: [SemaphorePermit<'a>; 3],
}

impl Default for Pool {
    fn default() -> Self {
        Self::with(STAGES, MEMORIES, TABLES)
    }
}

impl Pool {
    fn with(stages: u32, memories: u32, tables: u32) -> Self {
        Self {
            stages: Semaphore::new(stages as usize),
            memories: Semaphore::new(memories as usize),
            tables: Semaphore::new(tables as usize),
        }
    }

    /// Wait until the pool has room for one instantiation needing `needs`.
    /// Always taken in the same order, so two stages never hold part of
    /// what the other waits for.
    pub async fn admit(&self, needs: Needs) -> Admission<'_> {
        // The semaphores are never closed.
        let closed = "the instance pool's semaphores are never closed";
        let stage = self.stages.acquire().await.expect(closed);
        let memories = self
            .memories
            .acquire_many(needs.memories.min(MEMORIES))
            .await
            .expect(closed);
        let tables = self
            .tables
            .acquire_many(needs.tables.min(TABLES))
            .await
            .expect(closed);
        Admission {
            _permits: [stage, memories, tables],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn admitted_soon(pool: &Pool, needs: Needs) -> bool {
        tokio::time::timeout(Duration::from_millis(50), pool.admit(needs))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_stage_waits_for_room_instead_of_failing() {
        let pool = Pool::with(2, 4, 4);
        let big = Needs {
            memories: 3,
            tables: 1,
        };
        let first = pool.admit(big).await;
        // 1 memory left: a stage needing 3 waits, one needing 1 does not.
        assert!(!admitted_soon(&pool, big).await);
        let small = Needs {
            memories: 1,
            tables: 1,
        };
        assert!(admitted_soon(&pool, small).await);
        drop(first);
        assert!(admitted_soon(&pool, big).await);
        // Stage slots count too.
        let (_a, _b) = (pool.admit(small).await, pool.admit(small).await);
        assert!(!admitted_soon(&pool, small).await);
    }

    #[test]
    fn needs_come_from_the_component() {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let wat = r#"(component
            (core module $m (memory 1) (table 1 funcref))
            (core instance $a (instantiate $m))
            (core instance $b (instantiate $m)))"#;
        let component = Component::new(&engine, wat).unwrap();
        assert_eq!(
            Needs::of(&component),
            Needs {
                memories: 2,
                tables: 2
            }
        );
    }
}
