//! A run's session: the run lock of its pipeline × environment × entity, its
//! record in the [`RunStore`], its journal and its artifacts directory, taken
//! together before the first step and given back together at the end. The CLI
//! and any embedding program start runs through here, so no run goes unlocked.

use super::journal::Journal;
use super::resume::{ReopenError, Reopened};
use super::store::{Holder, LockKey, RunLock, RunStore, StoreError};
use crate::plan::Plan;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often a held run lock tells the store its holder is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store refused or failed (the lock is held, the run is unknown, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run's journal cannot be resumed or rolled back from.
    #[error(transparent)]
    Reopen(#[from] ReopenError),
}

/// A locked, recorded run.
pub struct Session {
    store: Arc<dyn RunStore>,
    run_id: String,
    lock: Arc<dyn RunLock>,
    heartbeat: tokio::task::JoinHandle<()>,
    journal: Journal,
}

/// The lock key of a plan.
pub fn lock_key(plan: &Plan) -> LockKey {
    LockKey { pipeline: plan.pipeline.clone(), environment: plan.environment.clone(), entity: plan.entity.clone() }
}

/// A new run id: the start time in milliseconds and the process id, so ids sort by start.
fn new_run_id() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{ms}-{}", std::process::id())
}

impl Session {
    /// Takes the plan's run lock for a new run; the run is recorded with its first event.
    pub async fn start(store: Arc<dyn RunStore>, plan: &Plan) -> Result<Self, SessionError> {
        let run_id = new_run_id();
        let lock = store.lock(&lock_key(plan), &Holder::this_process(&run_id)).await?;
        Ok(Self::with(store, run_id, lock, (1, 1)))
    }

    /// Ends a run whose process stopped while it read its secrets (no plan recorded, nothing ran)
    /// as `failed`, under its run lock, for `resume` and `rollback` to close; false for any other
    /// run. Its plan was never recorded, so there is nothing to go forward with or to undo.
    pub async fn close_unstarted(store: Arc<dyn RunStore>, run_id: &str) -> Result<bool, SessionError> {
        let unstarted = |records: &[super::journal::Record]| {
            let folded = super::fold::fold(records);
            (folded.reading_secrets && folded.finished.is_none()).then_some(folded)
        };
        let Some(folded) = unstarted(&store.read(run_id).await?.records) else { return Ok(false) };
        let name = &folded.shown.identity;
        let key = LockKey { pipeline: name.pipeline.clone(), environment: name.environment.clone(), entity: name.entity.clone() };
        let lock = store.lock(&key, &Holder::this_process(run_id)).await?;
        // Read again under the lock: the run's own process may have gone on meanwhile.
        let Some(folded) = unstarted(&store.read(run_id).await?.records) else {
            lock.release().await?;
            return Ok(false);
        };
        let session = Self::with(store, run_id.to_string(), lock, (folded.last_seq + 1, folded.last_session + 1));
        let error = "its process ended while it read its secrets, before anything ran".to_string();
        let written = async {
            session.journal().write(super::Event::StartFailed { error }).await?;
            session.journal().write(super::Event::RunFinished { status: super::Status::Failed.name().into() }).await
        };
        let written = written.await;
        session.close().await?;
        written.map_err(|e| StoreError::Io { what: "closing the run".into(), source: std::io::Error::other(e) })?;
        Ok(true)
    }

    /// Takes the run lock of a recorded run and reads its journal, for `resume` and `rollback`.
    pub async fn reopen(store: Arc<dyn RunStore>, run_id: &str) -> Result<(Self, Reopened), SessionError> {
        let first = Reopened::from_journal(run_id, store.read(run_id).await?)?;
        let lock = store.lock(&lock_key(&first.plan), &Holder::this_process(run_id)).await?;
        // Read again under the lock: whoever held it may have written more before letting go.
        let reopened = Reopened::from_journal(run_id, store.read(run_id).await?)?;
        let session = Self::with(store, run_id.to_string(), lock, (reopened.next_seq, reopened.next_session));
        Ok((session, reopened))
    }

    fn with(store: Arc<dyn RunStore>, run_id: String, lock: Arc<dyn RunLock>, (next_seq, session): (u64, u32)) -> Self {
        let beating = lock.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Err(e) = beating.heartbeat().await {
                    tracing::warn!("run lock heartbeat failed: {e}");
                }
            }
        });
        let journal = Journal::open(store.clone(), run_id.clone(), next_seq, session);
        Self { store, run_id, lock, heartbeat, journal }
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The run's journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The store the run is recorded in.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// Where steps with `artifacts: true` keep what they produce (`<dir>/<step id>`).
    pub fn artifacts(&self) -> PathBuf {
        self.store.artifacts(&self.run_id)
    }

    /// Waits for the journal to be on stable storage, then releases the lock.
    pub async fn close(self) -> Result<(), SessionError> {
        let flushed = self.journal.flush().await;
        self.heartbeat.abort();
        self.lock.release().await?;
        flushed
            .map_err(|e| StoreError::Io { what: "the last journal sync".into(), source: std::io::Error::other(e) })?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
