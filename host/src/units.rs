//! Sizes and durations as a person reads them (`64 MiB`, `1.2 ms`); JSON output keeps exact numbers.

use std::time::Duration;

/// Bytes in the largest binary unit that keeps the number at least 1: `64 MiB`, `1.5 KiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let (mut value, mut unit) = (n as f64 / 1024.0, UNITS[0]);
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        (value, unit) = (value / 1024.0, next);
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A duration with two or three significant digits: `850 us`, `1.2 ms`, `42 ms`, `3.4 s`, `2 min 5 s`.
pub fn duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    match us {
        us if us < 1000.0 => format!("{us:.0} us"),
        us if us < 10_000.0 => format!("{:.1} ms", us / 1e3),
        us if us < 1_000_000.0 => format!("{:.0} ms", us / 1e3),
        us if us < 60_000_000.0 => format!("{:.1} s", us / 1e6),
        _ => format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60),
    }
}

/// [`duration`] of milliseconds.
pub fn millis(ms: f64) -> String {
    duration(Duration::from_secs_f64(ms.max(0.0) / 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_a_person_writes_them() {
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1 << 20), "1 MiB");
        assert_eq!(bytes(16 << 20), "16 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(256 << 30), "256 GiB");
        assert_eq!(millis(0.672_157_999_999_999_9), "672 us");
        assert_eq!(millis(1.193), "1.2 ms");
        assert_eq!(millis(42.4), "42 ms");
        assert_eq!(millis(3400.0), "3.4 s");
        assert_eq!(duration(Duration::from_secs(125)), "2 min 5 s");
    }
}
