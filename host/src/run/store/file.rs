//! The embedded run store: `<dir>/runs/<run-id>/journal.jsonl` (one JSON
//! event per line, appended and fsynced), `<dir>/runs/<run-id>/artifacts/`,
//! and `<dir>/locks/<pipeline>.<environment>.<entity>.lock`.
//!
//! The lock is an exclusive `flock` on the lock file: atomic, released by the
//! kernel when the holder dies however it dies, with no pid check to get
//! wrong. The file holds the holder's description for the one refused; it is
//! never removed, since removing it would let a second process lock a new
//! file while a third still holds the old one.

use super::{Holder, LockKey, RunInfo, RunLock, RunStore, StoreError, StoredJournal};
use crate::run::journal::Record;
use async_trait::async_trait;
use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The directory, under the working directory, the file store uses.
pub const STATE_DIR: &str = ".gantry";

/// Runs and locks in a local directory.
pub struct FileStore {
    root: PathBuf,
    /// Open journals, so an append is one write and one fsync.
    open: Mutex<HashMap<String, Arc<Mutex<File>>>>,
}

impl FileStore {
    /// A store rooted at `root` (created on first use).
    pub fn new(root: PathBuf) -> Self {
        Self { root, open: Mutex::default() }
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    fn journal_path(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("journal.jsonl")
    }

    /// The journal file of a run, open for appending. A last line cut off by a
    /// crash is closed with a newline first, so new events never join it.
    fn journal(&self, run_id: &str) -> Result<Arc<Mutex<File>>, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = open.get(run_id) {
            return Ok(file.clone());
        }
        let path = self.journal_path(run_id);
        let io = |source| StoreError::Io { what: format!("journal {}", path.display()), source };
        let mut file = OpenOptions::new().read(true).append(true).open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io)?;
            }
        }
        let file = Arc::new(Mutex::new(file));
        open.insert(run_id.to_string(), file.clone());
        Ok(file)
    }
}

fn safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Parses journal text; lines that are not events are torn writes, reported and skipped.
pub(crate) fn parse_journal(text: &str) -> StoredJournal {
    let mut journal = StoredJournal::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Record>(line) {
            Ok(record) => journal.records.push(record),
            Err(_) => journal.torn.push(line.to_string()),
        }
    }
    journal
}

#[async_trait]
impl RunStore for FileStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn create(&self, run_id: &str) -> Result<(), StoreError> {
        let dir = self.run_dir(run_id);
        let io = |source| StoreError::Io { what: format!("creating {}", dir.display()), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        OpenOptions::new().create_new(true).append(true).open(self.journal_path(run_id)).map_err(io)?;
        // The new entry in `runs/` must survive a crash as much as the events in it.
        File::open(dir.parent().unwrap_or(&dir)).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    async fn append(&self, run_id: &str, records: &[Record]) -> Result<(), StoreError> {
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, record).map_err(|e| StoreError::Io {
                what: format!("run {run_id}: encoding an event"),
                source: std::io::Error::other(e),
            })?;
            lines.push(b'\n');
        }
        let file = self.journal(run_id)?;
        let io = |source| StoreError::Io { what: format!("writing the journal of run {run_id}"), source };
        // Off the runtime's threads: while one batch is synced, the events that arrive meanwhile
        // gather into the next, so many steps share one sync.
        tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            file.write_all(&lines)?;
            // A killed runner must not lose an event it reported, nor act before it is recorded.
            file.sync_data()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(io)
    }

    async fn read(&self, run_id: &str) -> Result<StoredJournal, StoreError> {
        let path = self.journal_path(run_id);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(parse_journal(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound { id: run_id.to_string(), location: self.location() })
            }
            Err(source) => Err(StoreError::Io { what: format!("reading {}", path.display()), source }),
        }
    }

    async fn list(&self) -> Result<Vec<RunInfo>, StoreError> {
        let mut ids: Vec<String> = match std::fs::read_dir(self.root.join("runs")) {
            Ok(entries) => {
                entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
            }
            Err(_) => Vec::new(),
        };
        ids.sort();
        let mut runs = Vec::new();
        for id in ids {
            let journal = self.read(&id).await.unwrap_or_default();
            runs.push(RunInfo::from_records(&id, &journal.records));
        }
        Ok(runs)
    }

    async fn lock(&self, key: &LockKey, holder: &Holder) -> Result<Arc<dyn RunLock>, StoreError> {
        let dir = self.root.join("locks");
        let path = dir.join(format!("{}.{}.{}.lock", safe(&key.pipeline), safe(&key.environment), safe(&key.entity)));
        let io = |source| StoreError::Io { what: format!("lock {}", path.display()), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let read = |file: &mut std::fs::File| -> Option<Box<Holder>> {
                    let mut text = String::new();
                    file.seek(SeekFrom::Start(0)).ok()?;
                    file.read_to_string(&mut text).ok()?;
                    serde_json::from_str(&text).ok().map(Box::new)
                };
                // The winner describes itself just after it takes the lock: a description naming
                // no live process here is its predecessor's (a runner that died), so it is read
                // again for a moment rather than named.
                let mut holder = read(&mut file);
                let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while !holder.as_ref().is_some_and(|h| h.alive_here()) && std::time::Instant::now() < until {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    holder = read(&mut file);
                }
                return Err(StoreError::Held {
                    key: Box::new(key.clone()),
                    holder,
                    location: path.display().to_string(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let record = serde_json::to_vec(holder).map_err(|e| io(std::io::Error::other(e)))?;
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&record).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(Arc::new(FileLock { file }))
    }

    fn artifacts(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("artifacts")
    }
}

/// An `flock` held on a lock file; the kernel releases it when the file closes.
struct FileLock {
    file: File,
}

#[async_trait]
impl RunLock for FileLock {
    async fn heartbeat(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn release(&self) -> Result<(), StoreError> {
        self.file.unlock().map_err(|source| StoreError::Io { what: "releasing a run lock".into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(entity: &str) -> LockKey {
        LockKey { pipeline: "p".into(), environment: "production".into(), entity: entity.into() }
    }

    #[tokio::test]
    async fn a_held_lock_names_its_holder_and_is_free_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().to_path_buf());
        let lock = store.lock(&key("e"), &Holder::this_process("run-1")).await.unwrap();
        let err = store.lock(&key("e"), &Holder::this_process("run-2")).await.err().unwrap();
        assert!(matches!(&err, StoreError::Held { holder: Some(h), .. } if h.run_id == "run-1"), "{err}");
        assert!(err.to_string().starts_with("p/production/e is already running (run run-1, pid "), "{err}");
        assert!(store.lock(&key("other"), &Holder::this_process("run-3")).await.is_ok(), "another entity");
        lock.release().await.unwrap();
        assert!(store.lock(&key("e"), &Holder::this_process("run-4")).await.is_ok(), "free again");
    }

    #[test]
    fn a_torn_line_is_reported_and_skipped() {
        let good = r#"{"seq":1,"ts_ms":1.0,"event":"run_finished","status":"failed"}"#;
        let journal = parse_journal(&format!("{good}\n{{\"seq\":2,\"ts_ms\":2.0,\"eve"));
        assert_eq!(journal.records.len(), 1);
        assert_eq!(journal.torn, vec![r#"{"seq":2,"ts_ms":2.0,"eve"#.to_string()]);
    }

    #[tokio::test]
    async fn appending_after_a_torn_line_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().to_path_buf());
        store.create("r").await.unwrap();
        std::fs::write(store.journal_path("r"), "{\"seq\":1,\"ts_").unwrap();
        let record: Record =
            serde_json::from_str(r#"{"seq":2,"ts_ms":2.0,"event":"run_finished","status":"failed"}"#).unwrap();
        store.append("r", &[record]).await.unwrap();
        let journal = store.read("r").await.unwrap();
        assert_eq!((journal.records.len(), journal.torn.len()), (1, 1));
    }
}
