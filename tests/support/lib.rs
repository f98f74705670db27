//! Shared pieces for the integration tests: building the plugins, running
//! pipelines in-process or through the `host` binary, and real servers on
//! 127.0.0.1 (a Slack-compatible webhook receiver, a plain HTTP server).
pub mod archive;
pub mod argocd;
pub mod cli;
pub mod cluster;
pub mod github;
pub mod harness;
pub mod http;
pub mod plugins;
pub mod remote;
pub mod serve;
pub mod services;
pub mod slack;
