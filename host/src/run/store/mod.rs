//! Where runs live: each run's events and the lock that keeps two runs of one
//! pipeline × environment × entity apart, behind one trait, [`RunStore`].
//!
//! The embedded [`file::FileStore`] is the default (a directory per run, a
//! `flock`ed lock file per key); [`postgres::PostgresStore`] serves teams whose
//! runs happen on many CI runners (event tables, session advisory locks).
//! Nothing outside this module knows which one it is or where it keeps things.

pub mod file;
pub mod postgres;

use super::journal::Record;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The environment variable naming the run store when `--state` is not given.
pub const STATE_ENV: &str = "GANTRY_STATE";

/// What a run lock keeps apart: one pipeline × environment × entity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockKey {
    /// Pipeline name.
    pub pipeline: String,
    /// Environment.
    pub environment: String,
    /// Entity.
    pub entity: String,
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.pipeline, self.environment, self.entity)
    }
}

/// Who holds a run lock, as the one refused is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    /// The run.
    pub run_id: String,
    /// Its process.
    pub pid: u32,
    /// The machine it runs on.
    pub host: String,
    /// When it took the lock, ms since the Unix epoch.
    pub since_ms: f64,
}

impl Holder {
    /// This process, for `run_id`.
    pub fn this_process(run_id: &str) -> Self {
        Self { run_id: run_id.to_string(), pid: std::process::id(), host: hostname(), since_ms: now_ms() }
    }

    /// Whether the process it names runs on this machine now (`/proc/<pid>` exists).
    pub fn alive_here(&self) -> bool {
        self.host == hostname() && std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(self.since_ms.max(0.0) / 1e3);
        write!(
            f,
            "run {}, pid {} on {}, since {}",
            self.run_id,
            self.pid,
            self.host,
            humantime::format_rfc3339_seconds(since)
        )
    }
}

/// Milliseconds since the Unix epoch, with microsecond precision.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// The status of a run a second signal ended before it could finish.
pub const NEEDS_A_PERSON: &str = "needs-a-person";

/// One run, as `gantry runs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    /// Run id.
    pub id: String,
    /// Pipeline name (`?` when the journal has no start).
    pub pipeline: String,
    /// Environment.
    pub environment: String,
    /// Entity.
    pub entity: String,
    /// How it ended, or `incomplete`.
    pub status: String,
    /// Events recorded.
    pub events: usize,
    /// The rollout it was part of, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

impl RunInfo {
    /// Summarises a run from its records: the journal fold's answer.
    pub fn from_records(id: &str, records: &[Record]) -> Self {
        let folded = super::fold::fold(records);
        let known = |text: &String| if text.is_empty() { "?".to_string() } else { text.clone() };
        let identity = &folded.shown.identity;
        RunInfo {
            id: id.to_string(),
            pipeline: known(&identity.pipeline),
            environment: known(&identity.environment),
            entity: known(&identity.entity),
            status: folded.status(),
            events: records.len(),
            rollout: identity.rollout.clone(),
        }
    }
}

/// A run's journal as stored.
#[derive(Debug, Clone, Default)]
pub struct StoredJournal {
    /// The events, in sequence order.
    pub records: Vec<Record>,
    /// Lines cut off mid-write by a crash: reported, never read as events.
    pub torn: Vec<String>,
}

/// Why the run store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another run holds the lock.
    #[error("{key} is already running ({}); lock {location}", holder.as_ref().map(ToString::to_string).unwrap_or_else(|| "holder not recorded yet".into()))]
    Held {
        /// The key.
        key: Box<LockKey>,
        /// Who holds it, when recorded.
        holder: Option<Box<Holder>>,
        /// Where the lock is (a file, or the database).
        location: String,
    },
    /// No such run.
    #[error("no run {id} in {location}: see `gantry runs`")]
    NotFound {
        /// The run id asked for.
        id: String,
        /// The store.
        location: String,
    },
    /// A journal entry is not an event (and is not a torn last line).
    #[error("run {id}: journal entry {entry} is not an event: {message}")]
    Corrupt {
        /// Run id.
        id: String,
        /// Line or sequence number.
        entry: u64,
        /// The parse error.
        message: String,
    },
    /// Reading or writing files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database failed or refused.
    #[error("run store {location}: {message}")]
    Database {
        /// The store, without credentials.
        location: String,
        /// What went wrong.
        message: String,
    },
}

/// Where runs are recorded and locked.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Where the store is, for messages (never with credentials).
    fn location(&self) -> String;
    /// Records a new run.
    async fn create(&self, run_id: &str) -> Result<(), StoreError>;
    /// Appends events durably, in order; they are on stable storage when this returns.
    async fn append(&self, run_id: &str, records: &[Record]) -> Result<(), StoreError>;
    /// Reads a run's journal.
    async fn read(&self, run_id: &str) -> Result<StoredJournal, StoreError>;
    /// Lists recorded runs, oldest first.
    async fn list(&self) -> Result<Vec<RunInfo>, StoreError>;
    /// Takes the run lock of `key` for `holder`, or fails at once naming the one who holds it.
    async fn lock(&self, key: &LockKey, holder: &Holder) -> Result<Arc<dyn RunLock>, StoreError>;
    /// The local directory where a run's steps keep their artifacts.
    fn artifacts(&self, run_id: &str) -> PathBuf;
}

/// A held run lock. Dropping it releases it, as does the death of the process.
#[async_trait]
pub trait RunLock: Send + Sync {
    /// Tells the store the holder is alive.
    async fn heartbeat(&self) -> Result<(), StoreError>;
    /// Releases the lock.
    async fn release(&self) -> Result<(), StoreError>;
}

/// Opens the store `spec` names: a `postgres://` or `postgresql://` URL, or
/// nothing for the file store under `workdir/.gantry`.
pub async fn open(spec: Option<&str>, workdir: &Path) -> Result<Arc<dyn RunStore>, StoreError> {
    match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(Arc::new(file::FileStore::new(workdir.join(file::STATE_DIR)))),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let artifacts = workdir.join(file::STATE_DIR).join("artifacts");
            Ok(Arc::new(postgres::PostgresStore::connect(url, artifacts).await?))
        }
        Some(other) => Err(StoreError::Database {
            location: other.split('@').next_back().unwrap_or_default().to_string(),
            message: "unknown run store: give a postgres:// URL, or nothing for the file store".into(),
        }),
    }
}
