//! Lines for standard output that a reader may stop reading (`gantry runs | head -1`): once the
//! pipe is closed, printing stops quietly and the command goes on to its own end — a run is never
//! cut off half-way by a pager, and nothing panics.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to standard output, unless the reader went away.
pub fn line(args: std::fmt::Arguments) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => CLOSED.store(true, Ordering::Relaxed),
        Err(e) => {
            // A full disk under a redirect: said once, then the command goes on.
            CLOSED.store(true, Ordering::Relaxed);
            tracing::warn!("standard output cannot be written ({e}); no more output");
        }
    }
}

/// Whether the reader of standard output went away.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}
