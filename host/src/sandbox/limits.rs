//! Per-call resource limits: memory through a `ResourceLimiter`, time through
//! an epoch callback, so a limit hit is reported as what it is, not as a bare trap.

use std::time::{Duration, Instant};

/// Limits applied to one step call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time the call may take, host calls included.
    pub timeout: Duration,
    /// Most bytes of stdout plus stderr kept from the plugin.
    pub output_bytes: usize,
    /// Most bytes the plugin may leave in `/artifacts`.
    pub artifacts_bytes: usize,
    /// Most files and directories the plugin may leave in `/artifacts`.
    pub artifact_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            output_bytes: 1 << 20,
            artifacts_bytes: 256 << 20,
            artifact_files: 10_000,
        }
    }
}

/// Records which limit a call ran into.
#[derive(Debug)]
pub(crate) struct Tracker {
    memory_bytes: usize,
    pub(crate) deadline: Instant,
    pub(crate) memory_exceeded: Option<usize>,
    pub(crate) timed_out: bool,
    /// Raised by the artifacts watcher; the next epoch tick stops the call.
    pub(crate) artifacts_over: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Tracker {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            deadline: Instant::now() + limits.timeout,
            memory_exceeded: None,
            timed_out: false,
            artifacts_over: Default::default(),
        }
    }
}

/// Tables are small in practice; this only stops a plugin growing one without bound.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for Tracker {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_exceeded = Some(desired);
            // Trapping (instead of returning false) stops the plugin at once
            // rather than letting its allocator abort with a vaguer message.
            return Err(wasmtime::Error::msg("memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Parses a memory size such as `64MiB`, `512KiB`, `1GiB`, `100MB` or plain bytes.
pub fn parse_memory(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits.parse().map_err(|_| format!("invalid memory size {text:?}: expected e.g. 64MiB"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("invalid memory unit {other:?} in {text:?}: use B, KiB, MiB or GiB")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("memory size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory("64MiB"), Ok(64 << 20));
        assert_eq!(parse_memory("512KiB"), Ok(512 << 10));
        assert_eq!(parse_memory("1000"), Ok(1000));
        assert_eq!(parse_memory("2MB"), Ok(2_000_000));
        assert!(parse_memory("64 furlongs").unwrap_err().contains("invalid memory unit"));
        assert!(parse_memory("MiB").is_err());
    }
}
