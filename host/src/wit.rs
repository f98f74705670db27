//! Host-side bindings for the `ci:stage` world (generated from `wit/`).
//!
//! Imports are async (they may wait on the network or Docker) and trappable
//! (a host function can kill the stage, e.g. when it exceeds its log budget),
//! except `log.write`: it never waits, and a stage may call it thousands of
//! times, so it is a plain call (no future, no fiber switch).
wasmtime::component::bindgen!({
    path: "../wit",
    world: "stage",
    imports: {
        "ci:stage/log.write": trappable,
        default: async | trappable,
    },
    exports: { default: async },
});

pub use ci::stage::types::{
    Annotation, CapError, Denial, Level, ReportStatus, RunContext, StageStatus, StageSummary,
    Upstream,
};
