//! Where a run's time goes, phase by phase, for the benchmark (`just
//! bench` prints it). Off unless the bench turns it on: then each timed
//! phase costs two clock reads and two atomic adds; off, one atomic load.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The phases timed, in the order a run meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The pipeline file read and checked.
    Load,
    /// Reading, hashing and linking the plugins; `describe`.
    Preflight,
    /// Opening the run's stores (approvals, artifacts, live record).
    Stores,
    /// A stage's capabilities and sandbox, from its grants.
    Caps,
    /// The stage's WASI context and wasmtime store.
    Store,
    /// Instantiating the component.
    Instantiate,
    /// The stage's `run` export, until it returns.
    Call,
    /// The stage's store and instance freed (its memory unmapped).
    Teardown,
    /// The stage's record: report checked, masked, applied.
    Report,
    /// A stage task from its first poll to its record (holds the phases
    /// above; the rest of a stage's time is hand-offs between threads).
    Stage,
    /// The final record written.
    Finish,
}

const PHASES: [Phase; 11] = [
    Phase::Load,
    Phase::Preflight,
    Phase::Stores,
    Phase::Caps,
    Phase::Store,
    Phase::Instantiate,
    Phase::Call,
    Phase::Teardown,
    Phase::Report,
    Phase::Stage,
    Phase::Finish,
];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Preflight => "preflight",
            Phase::Stores => "stores",
            Phase::Caps => "caps",
            Phase::Store => "store",
            Phase::Instantiate => "instantiate",
            Phase::Call => "call",
            Phase::Teardown => "teardown",
            Phase::Report => "report",
            Phase::Stage => "stage",
            Phase::Finish => "finish",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; PHASES.len()] = [const { AtomicU64::new(0) }; PHASES.len()];
static COUNT: [AtomicU64; PHASES.len()] = [const { AtomicU64::new(0) }; PHASES.len()];

/// Turn the timers on (or off), from zero.
pub fn enable(on: bool) {
    for i in 0..PHASES.len() {
        NANOS[i].store(0, Ordering::Relaxed);
        COUNT[i].store(0, Ordering::Relaxed);
    }
    ON.store(on, Ordering::Relaxed);
}

/// A phase being timed: adds its time when dropped.
pub struct Timer(Option<(Phase, Instant)>);

pub fn start(phase: Phase) -> Timer {
    Timer(ON.load(Ordering::Relaxed).then(|| (phase, Instant::now())))
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((phase, at)) = self.0 {
            let i = phase as usize;
            NANOS[i].fetch_add(at.elapsed().as_nanos() as u64, Ordering::Relaxed);
            COUNT[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One phase's total since [`enable`].
pub struct PhaseTotal {
    pub name: &'static str,
    pub nanos: u64,
    pub count: u64,
    /// Timed inside [`Phase::Stage`] (its time is part of that phase's).
    pub in_stage: bool,
}

/// Each phase's total time and how often it ran, since [`enable`].
pub fn totals() -> Vec<PhaseTotal> {
    PHASES
        .iter()
        .map(|p| {
            let i = *p as usize;
            PhaseTotal {
                name: p.name(),
                nanos: NANOS[i].load(Ordering::Relaxed),
                count: COUNT[i].load(Ordering::Relaxed),
                in_stage: matches!(
                    p,
                    Phase::Caps
                        | Phase::Store
                        | Phase::Instantiate
                        | Phase::Call
                        | Phase::Teardown
                        | Phase::Report
                ),
            }
        })
        .collect()
}
