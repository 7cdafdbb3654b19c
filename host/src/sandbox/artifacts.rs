//! Caps on what a step leaves in `/artifacts`: a watcher stops the call once
//! the directory holds more bytes or entries than allowed (so a plugin cannot
//! fill the disk; it may overshoot by what it writes in one poll interval),
//! and when the call ends only regular files and directories stay — links of
//! any kind, fifos, sockets and devices are removed and reported, so a process
//! uploading artifacts later cannot be led outside the directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the watcher measures the directory.
const POLL: Duration = Duration::from_millis(100);

/// Bytes of regular files and number of entries under a directory, not following links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of regular files.
    pub bytes: u64,
    /// Files, directories and anything else.
    pub entries: usize,
}

/// Measures `dir` without following links.
pub fn usage(dir: &Path) -> Usage {
    walk(dir, false).1
}

/// Walks `dir` without following links, measuring what stays; with `remove`, anything that is not a
/// regular file or a directory is removed and named, as `path (kind)` relative to `dir`.
fn walk(dir: &Path, remove: bool) -> (Vec<String>, Usage) {
    let (mut removed, mut total) = (Vec::new(), Usage::default());
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else { continue };
            let kind = meta.file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                total.bytes += meta.len();
            } else if remove {
                let what = if kind.is_symlink() { "link" } else { "special file" };
                let relative = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        removed.push(format!("{relative} ({what})"));
                        continue;
                    }
                    Err(e) => removed.push(format!("{relative} ({what}; could not remove: {e})")),
                }
            }
            total.entries += 1;
        }
    }
    removed.sort();
    (removed, total)
}

/// Watches `dir` while a call runs and raises `over` once it holds more than `bytes` or `entries`.
pub(crate) fn watch(dir: PathBuf, bytes: u64, entries: usize, over: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            let dir = dir.clone();
            let used = tokio::task::spawn_blocking(move || usage(&dir)).await.unwrap_or_default();
            if used.bytes > bytes || used.entries > entries {
                over.store(true, Ordering::Relaxed);
                return;
            }
        }
    })
}

/// Removes everything under `dir` that is not a regular file or a directory; gives back what it
/// removed, as `path (kind)` relative to `dir`, and what stays.
pub fn sanitise(dir: &Path) -> (Vec<String>, Usage) {
    walk(dir, true)
}

/// Empties `dir`: a step over its artifacts cap leaves nothing half-written behind.
pub fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = path.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false);
            let _ = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_fifos_go_and_files_and_directories_stay() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/report.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("sub/up")).unwrap();
        let fifo = std::ffi::CString::new(root.join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path and a plain mode.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(usage(root), Usage { bytes: 2, entries: 5 });
        let (removed, left) = sanitise(root);
        assert_eq!(removed, ["passwd (link)", "pipe (special file)", "sub/up (link)"]);
        assert_eq!(left, Usage { bytes: 2, entries: 2 });
        assert_eq!(usage(root), left);
        assert!(root.join("sub/report.json").is_file());
        clear(root);
        assert_eq!(usage(root), Usage::default());
    }
}
