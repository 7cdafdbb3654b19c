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
