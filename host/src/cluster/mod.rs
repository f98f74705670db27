//! Many machines: `host serve` with `[cluster]` queues runs on NATS
//! JetStream and keeps run state in PostgreSQL; `host agent`s pull runs,
//! run them, and report back. See docs/design/cluster.md.
//!
//! - [`config`]: `[cluster]` of server.toml and the agent's file;
//! - [`protocol`]: what goes over NATS (runs, event batches, requests);
//! - [`bus`]: the NATS connection, streams and consumers;
//! - [`claims`]: who owns which attempt of which run, fenced;
//! - [`server`]: the server's side (publishing runs, answering agents,
//!   writing what they report);
//! - [`agent`]: `host agent`.
pub mod agent;
pub mod bus;
pub mod claims;
pub mod config;
pub mod protocol;
pub mod server;
