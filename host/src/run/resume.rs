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
    /// The status it finished with, if it finished (and no later `resume` took it up again).
    pub finished: Option<String>,
    /// It had failed or been interrupted, so it was rolling back: it may only go on rolling back.
    pub rolling_back: bool,
    /// The step whose inconclusive result paused it, while it waits for a person.
    pub paused: Option<String>,
    /// Each step's checkpoints (key → first value).
    pub checkpoints: BTreeMap<String, Outputs>,
    /// Steps started and neither finished nor rolled back, in the order they started.
    pub partial: Vec<String>,
    /// For steps of `partial`: the first request that may have changed something (not `GET`, `HEAD`
    /// or `OPTIONS`), e.g. `PATCH https://api.notion.com/v1/pages/…`, as the journal recorded it.
    pub changes: BTreeMap<String, String>,
    /// The pipeline file it was planned from, for messages.
    pub file: Option<PathBuf>,
    /// Journal lines cut off by a crash, ignored.
    pub torn: Vec<String>,
    /// The sequence number the next event gets.
    pub next_seq: u64,
    /// The approval the run waits for, while it waits.
    pub awaiting: Option<super::approval::Request>,
    /// Gated steps approved so far.
    pub approved: std::collections::BTreeSet<String>,
    /// Who started the run, as recorded (empty in journals from before it was).
    pub started_by: String,
    /// Steps stopped at a gate inside them that has since been approved: they go on from their
    /// checkpoints when the run continues (never undone first); a rollback still undoes them.
    pub resumable: std::collections::BTreeSet<String>,
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
        let mut finished: Option<String> = None;
        let mut phase = Phase::Running;
        // Steps that started once the run had failed or paused (notifiers): never counted as completed.
        let mut after_failure: Vec<String> = Vec::new();
        let mut checkpoints: BTreeMap<String, Outputs> = BTreeMap::new();
        let mut partial: Vec<String> = Vec::new();
        let mut changes: BTreeMap<String, String> = BTreeMap::new();
        let (mut awaiting, mut approved, mut started_by) = (None, std::collections::BTreeSet::new(), String::new());
        let mut resumable = std::collections::BTreeSet::new();
        let next_seq = journal.records.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
        for record in journal.records {
            if !matches!(record.event, Event::RunFinished { .. }) && finished.take().is_some() {
                // A later `resume` or `rollback` took the run up again; a paused one runs again.
                if let Phase::Paused(_) = phase {
                    phase = Phase::Running;
                    after_failure.clear();
                }
            }
            match record.event {
                Event::RunStarted { file, plan, started_by: by, .. } if started.is_none() => {
                    started = Some((file, plan));
                    started_by = by.unwrap_or_default();
                }
                Event::ApprovalRequested(request) => awaiting = Some(request),
                Event::Approved { step, gate, .. } => {
                    awaiting = None;
                    match gate {
                        Some(gate) => {
                            approved.insert(super::gate_key(&step, &gate));
                            resumable.insert(step);
                        }
                        None => {
                            approved.insert(step);
                        }
                    }
                }
                Event::Rejected { .. } => {
                    awaiting = None;
                    phase = Phase::RollingBack;
                }
                Event::StepStarted { step, .. } => {
                    if phase != Phase::Running && !after_failure.contains(&step) {
                        after_failure.push(step);
                    } else if phase == Phase::Running && !partial.contains(&step) {
                        partial.push(step);
                    }
                }
                Event::Checkpoint { step, key, value } => {
                    checkpoints.entry(step).or_default().entry(key).or_insert(value);
                }
                Event::StepFinished { step, outputs } if !after_failure.contains(&step) => {
                    partial.retain(|s| *s != step);
                    completed.push((step, outputs));
                }
                Event::RolledBack { step } => {
                    completed.retain(|(s, _)| *s != step);
                    partial.retain(|s| *s != step);
                    checkpoints.remove(&step);
                    changes.remove(&step);
                    phase = Phase::RollingBack;
                }
                Event::StepFailed { continue_on_error: false, step, .. } if !after_failure.contains(&step) => {
                    phase = phase.failed();
                }
                Event::RollbackFailed { .. } | Event::Interrupted { .. } | Event::Abandoned { .. } => {
                    phase = Phase::RollingBack;
                }
                Event::Paused { step, .. } if phase == Phase::Running => phase = Phase::Paused(step),
                Event::RunFinished { status } => finished = Some(status),
                Event::Request(r) if r.allowed && !matches!(r.method.as_str(), "GET" | "HEAD" | "OPTIONS") => {
                    changes.entry(r.step).or_insert_with(|| format!("{} {}{}", r.method, r.origin, r.path));
                }
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
        let rolling_back = phase == Phase::RollingBack;
        changes.retain(|step, _| partial.contains(step));
        let paused = if let Phase::Paused(step) = phase { Some(step) } else { None };
        Ok(Self {
            plan,
            completed,
            finished,
            rolling_back,
            paused,
            checkpoints,
            partial,
            changes,
            file,
            torn: journal.torn,
            next_seq,
            awaiting,
            approved,
            started_by,
            resumable,
        })
    }
}

/// Where a run stood as its journal is read.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Running,
    /// A step was inconclusive; nothing is undone until a person decides.
    Paused(String),
    /// It failed, was interrupted or a rollback began: it may only go back.
    RollingBack,
}

impl Phase {
    /// A step failed for good: the run rolls back, unless it is paused (a notifier failing then).
    fn failed(self) -> Self {
        match self {
            Phase::Paused(step) => Phase::Paused(step),
            _ => Phase::RollingBack,
        }
    }
}
