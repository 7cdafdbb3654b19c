//! Reopening a run from its journal, for `resume` and `rollback`: the plan it
//! recorded when it started (never the pipeline file as it is now), which
//! steps completed with which outputs, and whether it finished.

use super::store::StoredJournal;
use super::Event;
use crate::plan::Plan;
use crate::sandbox::Outputs;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A run as its journal left it.
#[derive(Debug, Clone)]
pub struct Reopened {
    /// The plan the run recorded when it started.
    pub plan: Plan,
    /// Steps completed and not rolled back, in completion order.
    pub completed: Vec<(String, Outputs)>,
    /// The status it finished with, if it finished.
    pub finished: Option<String>,
    /// It had failed or been interrupted, so it was rolling back: it may only go on rolling back.
    pub rolling_back: bool,
    /// Each step's checkpoints (key → first value).
    pub checkpoints: BTreeMap<String, Outputs>,
    /// Steps started and neither finished nor rolled back, in the order they started.
    pub partial: Vec<String>,
    /// The pipeline file it was planned from, for messages.
    pub file: Option<PathBuf>,
    /// Journal lines cut off by a crash, ignored.
    pub torn: Vec<String>,
    /// The sequence number the next event gets.
    pub next_seq: u64,
}

/// Why a run cannot be reopened.
#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    /// The journal does not say what ran.
    #[error("run {id}: {what}")]
    Incomplete {
        /// Run id.
        id: String,
        /// What is missing.
        what: String,
    },
}

impl Reopened {
    /// Reads what a run did from its journal.
    pub fn from_journal(id: &str, journal: StoredJournal) -> Result<Self, ReopenError> {
        let incomplete = |what: String| ReopenError::Incomplete { id: id.to_string(), what };
        let mut started = None;
        let mut completed: Vec<(String, Outputs)> = Vec::new();
        let mut finished = None;
        let mut rolling_back = false;
        let mut checkpoints: BTreeMap<String, Outputs> = BTreeMap::new();
        let mut partial: Vec<String> = Vec::new();
        let next_seq = journal.records.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
        for record in journal.records {
            match record.event {
                Event::RunStarted { file, plan, .. } if started.is_none() => started = Some((file, plan)),
                Event::StepStarted { step, .. } if !partial.contains(&step) => partial.push(step),
                Event::Checkpoint { step, key, value } => {
                    checkpoints.entry(step).or_default().entry(key).or_insert(value);
                }
                Event::StepFinished { step, outputs } => {
                    partial.retain(|s| *s != step);
                    completed.push((step, outputs));
                }
                Event::RolledBack { step } => {
                    completed.retain(|(s, _)| *s != step);
                    partial.retain(|s| *s != step);
                    checkpoints.remove(&step);
                    rolling_back = true;
                }
                Event::StepFailed { continue_on_error: false, .. }
                | Event::RollbackFailed { .. }
                | Event::Interrupted { .. }
                | Event::Abandoned { .. } => rolling_back = true,
                Event::RunFinished { status } => finished = Some(status),
                _ => {}
            }
        }
        let (file, plan) = started.ok_or_else(|| incomplete("the journal has no start".into()))?;
        let plan: Plan = serde_json::from_value(plan).map_err(|e| {
            incomplete(format!(
                "the plan recorded at its start cannot be read ({e}); it was written by another gantry version"
            ))
        })?;
        if !journal.torn.is_empty() {
            tracing::warn!(run = id, "ignoring {} journal line(s) cut off by a crash", journal.torn.len());
        }
        Ok(Self { plan, completed, finished, rolling_back, checkpoints, partial, file, torn: journal.torn, next_seq })
    }
}
