//! Timing helpers the benches share.

use std::time::{Duration, Instant};

/// Where plugins are built: `target/plugins`, or `GANTRY_PLUGIN_TARGET_DIR` as the test command sets it.
#[allow(dead_code)]
pub fn plugin_target_dir() -> std::path::PathBuf {
    match std::env::var_os("GANTRY_PLUGIN_TARGET_DIR") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"),
    }
}

/// The middle sample.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The median time of `n` calls of `f`.
pub fn time<T>(n: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}
