//! `host`: a CI/CD pipeline runner whose stages are sandboxed WebAssembly
//! components.
//!
//! - [`pipeline`]: the pipeline file model and its validation.
//! - [`runtime`]: wasmtime engine, component cache, per-stage sandbox.
//! - [`wit`]: the generated `ci:stage` bindings, a leaf both `caps` and `runtime` import.
//! - [`caps`]: the host capabilities a stage may be granted (one module each).
//! - [`run`]: the executor (DAG scheduling, retries, cancellation) and run records.
//! - [`serve`]: `host serve`, the CI server (webhooks, queue, history, metrics, pages).
//! - [`source`]: making a workspace (a commit, an upload, a per-run copy).
//! - [`confined`]: files from untrusted places, opened beneath their root.
//! - [`exec`]: the one hardened runner for child processes (git, ssh, trivy).
//! - [`grants`]: grant patterns compiled once (URLs, images, names).
//! - [`digest`]: sha256 spellings.
//! - [`store`]: the run database (SQLite or PostgreSQL) the stores share.
//! - [`cli`]: the `host` command line.
pub mod caps;
pub mod cli;
pub mod cluster;
pub mod confined;
pub mod digest;
pub mod distribution;
pub mod exec;
pub mod grants;
pub mod perf;
pub mod pipeline;
pub mod plugin_source;
pub mod run;
pub mod runtime;
pub mod serve;
pub mod source;
pub mod store;
pub mod text;
pub mod units;
pub mod wit;
