//! Logging through the host, which tags each line with the step.

use crate::__private::bindings::gantry::step::{host, types as wit};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Diagnostics for plugin authors.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the step survived.
    Warn,
    /// A failure.
    Error,
}

/// Writes a log line; prefer the [`crate::info!`] family of macros.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    host::log(level, message);
}

/// Logs at debug level: `gantry_sdk::debug!("probe {i}")`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &format!($($arg)*)) };
}

/// Logs at info level: `gantry_sdk::info!("{n} pages")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &format!($($arg)*)) };
}

/// Logs at warn level: `gantry_sdk::warn!("slow answer")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &format!($($arg)*)) };
}

/// Logs at error level: `gantry_sdk::error!("gave up")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &format!($($arg)*)) };
}
