//! The run journal: every event of a run, sequence-numbered and appended to
//! the [`RunStore`] in the order it happened.
//!
//! One writer task per run owns the store's append: events queued while it
//! waits on stable storage go out together in the next append, so a burst of
//! events costs one fsync (or one commit) instead of one each. An event whose
//! [`Journal::write`] returned is durable; the executor writes an event that
//! way before the side effect that follows it. Once an append fails, the
//! journal is broken for good and every later write says so: a run never
//! carries on with a gap in its record.

mod event;

use super::store::{now_ms, RunStore};
pub use event::{Event, SecretAnswered};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// One journal entry: the event with its sequence number and time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Position in the run's journal, from 1.
    #[serde(default)]
    pub seq: u64,
    /// Milliseconds since the Unix epoch, with microsecond precision.
    pub ts_ms: f64,
    /// The session (process) that wrote it, from 1; 0 in journals from before sessions were recorded.
    #[serde(default)]
    pub session: u32,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// Why an event could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the journal could not be written: {0}")]
pub struct JournalError(pub String);

/// A queued event, or (`None`) a flush marker acknowledged after everything before it.
struct Pending {
    event: Option<Event>,
    ts_ms: f64,
    ack: Option<Ack>,
}

/// A run's journal, open for appending; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Pending>,
    broken: Arc<OnceLock<JournalError>>,
}

impl Journal {
    /// Starts the writer of `run_id` for session `session`; its first event gets sequence number
    /// `next_seq`. A run that is new (`next_seq` 1) is created in the store with its first event,
    /// so a run refused before it started leaves no empty record.
    pub fn open(store: Arc<dyn RunStore>, run_id: String, next_seq: u64, session: u32) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let broken = Arc::new(OnceLock::new());
        tokio::spawn(writer(store, run_id, (next_seq, session), rx, broken.clone()));
        Self { tx, broken }
    }

    /// Records `event` and waits until it is on stable storage.
    pub async fn write(&self, event: Event) -> Result<(), JournalError> {
        let (ack, done) = oneshot::channel();
        self.send(Some(event), Some(ack))?;
        done.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Queues `event` without waiting: for records of what already happened (requests).
    pub fn record(&self, event: Event) {
        let _ = self.send(Some(event), None);
    }

    /// Waits until everything queued so far is on stable storage.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (ack, done) = oneshot::channel();
        self.send(None, Some(ack))?;
        done.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// The error that broke the journal, if one did.
    pub fn broken(&self) -> Option<&JournalError> {
        self.broken.get()
    }

    fn send(&self, event: Option<Event>, ack: Option<Ack>) -> Result<(), JournalError> {
        if let Some(e) = self.broken.get() {
            return Err(e.clone());
        }
        self.tx.send(Pending { event, ts_ms: now_ms(), ack }).map_err(|_| stopped())
    }
}

/// Answers a queued entry once it (and everything before it) is durable, or says why not.
type Ack = oneshot::Sender<Result<(), JournalError>>;

fn stopped() -> JournalError {
    JournalError("the journal writer stopped".into())
}

async fn append(store: &dyn RunStore, run_id: &str, records: &[Record]) -> Result<(), super::store::StoreError> {
    if records.first().is_some_and(|r| r.seq == 1) {
        store.create(run_id).await?;
    }
    store.append(run_id, records).await
}

async fn writer(
    store: Arc<dyn RunStore>,
    run_id: String,
    (mut seq, session): (u64, u32),
    mut rx: mpsc::UnboundedReceiver<Pending>,
    broken: Arc<OnceLock<JournalError>>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut acks = Vec::new();
        for pending in batch {
            acks.extend(pending.ack);
            if let Some(event) = pending.event {
                records.push(Record { seq, ts_ms: pending.ts_ms, session, event });
                seq += 1;
            }
        }
        let result = match broken.get() {
            Some(e) => Err(e.clone()),
            None if records.is_empty() => Ok(()),
            None => append(store.as_ref(), &run_id, &records).await.map_err(|e| {
                let e = JournalError(e.to_string());
                tracing::error!(run = %run_id, "{e}");
                broken.get_or_init(|| e).clone()
            }),
        };
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}
