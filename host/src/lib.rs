//! `host`: a CI/CD pipeline runner whose stages are sandboxed WebAssembly
//! components.
//!
//! - [`pipeline`]: the pipeline file model and its validation.
//! - [`runtime`]: wasmtime engine, component cache, per-stage sandbox.
//! - [`caps`]: the host capabilities a stage may be granted (one module each).
//! - [`run`]: the executor (DAG scheduling, retries, cancellation) and run records.
//! - [`serve`]: `host serve`, the CI server (webhooks, queue, history, metrics, pages).
//! - [`source`]: making a workspace from a commit of a repository.
//! - [`cli`]: the `host` command line.
pub mod caps;
pub mod cli;
pub mod confined;
pub mod distribution;
pub mod grants;
pub mod pipeline;
pub mod run;
pub mod runtime;
pub mod serve;
pub mod source;
