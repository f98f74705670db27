//! Host-side bindings for the `ci:stage` world (generated from `wit/`).
//!
//! Imports are async (they may wait on the network or Docker) and trappable
//! (a host function can kill the stage, e.g. when it exceeds its log budget).
wasmtime::component::bindgen!({
    path: "../wit",
    world: "stage",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use ci::stage::types::{
    Annotation, CapError, Denial, Level, ReportStatus, RunContext, StageStatus, StageSummary,
    Upstream,
};
