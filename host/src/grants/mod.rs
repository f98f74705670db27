//! Grant patterns, parsed and compiled once when the pipeline is validated.
pub mod url;
