//! Grant patterns compiled once, when the pipeline is validated, and used as
//! they are by `host check` and every capability call.
pub mod branch;
pub mod image;
pub mod url;
