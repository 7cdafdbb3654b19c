//! The run journal: an append-only record of every event, flushed and fsynced
//! per event, behind a small trait so a shared backend can replace the file.

use super::Event;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where run events are recorded.
pub trait Journal: Send + Sync {
    /// Appends one event durably.
    fn append(&self, event: &Record) -> std::io::Result<()>;
}

/// One journal line: the event with its time.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch, with microsecond precision.
    pub ts_ms: f64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// `.gantry/runs/<run-id>/journal.jsonl`.
pub struct FileJournal {
    path: PathBuf,
    file: Mutex<File>,
}

impl FileJournal {
    /// Creates the run directory and its journal.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { path, file: Mutex::new(file) })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Journal for FileJournal {
    fn append(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)?;
        // A killed runner must not lose an event it reported.
        file.sync_data()
    }
}

/// Reads a journal back.
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

/// Keeps two runs of one pipeline × environment × entity apart; released on drop.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error("{key} is already running (pid {pid}); lock file {path}")]
    Held {
        /// pipeline/environment/entity.
        key: String,
        /// The holder.
        pid: u32,
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be written.
    #[error("cannot take the lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl Lock {
    /// Takes `<dir>/<pipeline>.<environment>.<entity>.lock`, recording this process's pid.
    /// A lock left by a process that no longer exists is taken over.
    pub fn acquire(dir: &Path, pipeline: &str, environment: &str, entity: &str) -> Result<Self, LockError> {
        let key = format!("{pipeline}/{environment}/{entity}");
        let safe = |s: &str| {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                .collect::<String>()
        };
        let path = dir.join(format!("{}.{}.{}.lock", safe(pipeline), safe(environment), safe(entity)));
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(std::process::id().to_string().as_bytes()).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
                    match pid {
                        Some(pid) if alive(pid) => return Err(LockError::Held { key, pid, path }),
                        _ => {
                            tracing::warn!(lock = %path.display(), "taking over a lock left by a process that is gone");
                            std::fs::remove_file(&path).map_err(io)?;
                        }
                    }
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(LockError::Io { path, source: std::io::Error::other("the lock kept reappearing") })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_blocks_and_a_dead_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lock = Lock::acquire(dir.path(), "p", "production", "e").unwrap();
        let err = Lock::acquire(dir.path(), "p", "production", "e").unwrap_err();
        assert!(matches!(err, LockError::Held { pid, .. } if pid == std::process::id()), "{err}");
        assert!(Lock::acquire(dir.path(), "p", "staging", "e").is_ok(), "another environment is another lock");
        drop(lock);
        let path = dir.path().join("p.production.e.lock");
        assert!(!path.exists(), "released on drop");
        std::fs::write(&path, "4194304999").unwrap();
        assert!(Lock::acquire(dir.path(), "p", "production", "e").is_ok(), "a dead holder's lock is taken over");
    }
}
