//! Logging through the host's `log` import.
//!
//! Functions take a message; the macros (`log::info!` etc., also at the
//! crate root as `stage_sdk::info!`) take `format!` arguments. Natively (unit
//! tests on the host target) lines go to stderr instead.

pub use crate::Level;

/// Writes one line at `level`.
pub fn write(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::ci::stage::log::write(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// `Level::Trace` line.
pub fn trace(message: &str) {
    write(Level::Trace, message)
}

/// `Level::Debug` line.
pub fn debug(message: &str) {
    write(Level::Debug, message)
}

/// `Level::Info` line.
pub fn info(message: &str) {
    write(Level::Info, message)
}

/// `Level::Warn` line.
pub fn warn(message: &str) {
    write(Level::Warn, message)
}

/// `Level::Error` line.
pub fn error(message: &str) {
    write(Level::Error, message)
}

/// Logs a panic's message at `error` before the instance traps, so the host
/// has more than "unreachable" to show.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            error(&format!("panic: {info}"));
        }));
    });
}

/// `trace!("fmt", args..)`
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::write($crate::Level::Trace, &::std::format!($($arg)*)) };
}

/// `debug!("fmt", args..)`
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::Level::Debug, &::std::format!($($arg)*)) };
}

/// `info!("fmt", args..)`
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::Level::Info, &::std::format!($($arg)*)) };
}

/// `warn!("fmt", args..)`
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::Level::Warn, &::std::format!($($arg)*)) };
}

/// `error!("fmt", args..)`
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::Level::Error, &::std::format!($($arg)*)) };
}

pub use crate::{debug, error, info, trace, warn};
