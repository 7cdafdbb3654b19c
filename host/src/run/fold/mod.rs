//! The journal fold: one pure function from a run's records to what is
//! changed now, by which attempt, with which checkpoints, and in which phase
//! the run stands. `resume`, `rollback`, `gantry runs` and the reports all
//! ask it; none reads the events its own way.
//!
//! The model (docs/architecture.md has it as a table):
//! - the run's phase changes only on `phase` events (and `paused`, which is
//!   the phase event that names the step and the reason); a step's
//!   `rolled_back` never moves the phase. Journals written before phase
//!   events existed are read with the rules of the version that wrote them.
//! - every record names the session (the process) that wrote it, and every
//!   step event the attempt within that session: (session, attempt) names one
//!   call of a step.
//! - a step is *changed* from its `step_started` until a `rolled_back`; a step
//!   undone and run again is changed again, with the checkpoints of its new
//!   attempts only. `rolled_back` of a step not changed is harmless (rollback
//!   is idempotent by contract); `rollback_failed` leaves it changed.
//! - a step started outside the `running` phase (a `failure()`/`always()`
//!   notifier) is never part of what is undone.

use super::journal::Record;
use super::Event;
use crate::sandbox::Outputs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

mod shown;
pub use shown::{Identity, Outcome, PreflightShown, Shown, StepShown};

/// What a run may do from here on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Each step reads what it depends on; nothing has changed yet. A resume reads again.
    Preflight,
    /// Steps may start: the run goes forward.
    Running,
    /// It failed, was interrupted, rejected or asked to roll back: it may only go back.
    RollingBack,
    /// A step could not decide; nothing is undone until a person chooses `resume` or `rollback`.
    Paused,
    /// The rollback undid what ran after a rollback barrier and stopped there: the barrier's
    /// change cannot be undone, and a person chooses `resume` (forward), `rollback --past-barrier`
    /// or `settle`.
    AtBarrier,
}

impl RunPhase {
    /// The name the journal uses.
    pub fn name(self) -> &'static str {
        match self {
            RunPhase::Preflight => "preflight",
            RunPhase::Running => "running",
            RunPhase::RollingBack => "rolling_back",
            RunPhase::Paused => "paused",
            RunPhase::AtBarrier => "at_barrier",
        }
    }
}

/// One call of a step: the session (process) that made it and the attempt within that session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AttemptId {
    /// The session, from 1 (0 in journals from before sessions were recorded).
    pub session: u32,
    /// The attempt within the session, from 1.
    pub attempt: u32,
}

/// Where one step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Started and neither finished, failed nor undone: cut off, or still running.
    Started,
    /// Succeeded; its change is in place.
    Succeeded,
    /// Failed (or was cancelled) after it started; it may have changed something.
    Failed,
    /// Rolled back: nothing of it is in place.
    Undone,
}

/// One step as the fold sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// Where it stands.
    pub state: StepState,
    /// Its latest call.
    pub attempt: AttemptId,
    /// Checkpoints recorded since its last undo (key → first value).
    pub checkpoints: Outputs,
    /// The first request since its last undo that may have changed something (not `GET`, `HEAD`,
    /// `OPTIONS`), e.g. `PATCH https://api.notion.com/v1/pages/…`.
    pub change: Option<String>,
    /// Its outputs, while it is `Succeeded`.
    pub outputs: Option<Outputs>,
    /// Started outside the running phase (a notifier): never undone, never counted as completed.
    pub after_failure: bool,
    /// Its last undo failed: a rollback must try again.
    pub undo_failed: bool,
    /// It failed by its own report (its plugin returned an error) rather than being cut off by the
    /// host (cancelled, timed out, trapped, over a limit) or by a crash: a plugin that fails says
    /// what it changed through its checkpoints, so no checkpoint means no change to undo.
    pub failed_itself: bool,
    /// Sequence number of the event that put it in its state: the order undo goes by.
    pub since: u64,
}

impl StepView {
    /// Whether something of it may be in place now.
    pub fn changed(&self) -> bool {
        self.state != StepState::Undone && !self.after_failure
    }

    /// Changed but neither finished nor undone: what a recovery undoes from checkpoints first.
    pub fn cut_off(&self) -> bool {
        self.changed() && matches!(self.state, StepState::Started | StepState::Failed)
    }

    /// Cut off after a change that nothing records how to undo: a person must look.
    pub fn unknown_change(&self) -> bool {
        self.cut_off() && self.checkpoints.is_empty() && self.change.is_some() && !self.failed_itself
    }

    /// Its change may be in place and a rollback is owed it: completed, or cut off with a
    /// checkpoint, or cut off after a change it recorded nothing for.
    pub fn owes_undo(&self) -> bool {
        self.changed() && (self.state == StepState::Succeeded || !self.checkpoints.is_empty() || self.unknown_change())
    }
}

/// A rollback barrier: a step said what it did cannot be undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Barrier {
    /// The step.
    pub step: String,
    /// Why it cannot be undone, as the step said.
    pub reason: String,
    /// What stays changed.
    pub changed: String,
}

impl Barrier {
    /// Reads a barrier checkpoint's value (`{"reason": …, "changed": …}`; plain text is the reason).
    pub(crate) fn read(step: &str, value: &str) -> Self {
        let json: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
        let field = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Barrier {
            step: step.to_string(),
            reason: field("reason").unwrap_or_else(|| value.to_string()),
            changed: field("changed").unwrap_or_default(),
        }
    }
}

/// A run as its journal leaves it.
#[derive(Debug, Clone, Default)]
pub struct Folded {
    /// The run's start: the pipeline file and the recorded plan (JSON), once seen.
    pub start: Option<(Option<std::path::PathBuf>, serde_json::Value)>,
    /// Who started the run, as recorded.
    pub started_by: String,
    /// The phase it stands in (`None` before its first step or phase event).
    pub phase: Option<RunPhase>,
    /// The step that paused it, while paused.
    pub paused: Option<String>,
    /// The status it finished with, unless a later session took it up again.
    pub finished: Option<String>,
    /// A second signal ended a process of it before it could finish.
    pub abandoned: bool,
    /// Every step that started, by id.
    pub steps: BTreeMap<String, StepView>,
    /// Steps the plan never rolls back (`rollback: false`): their change stays by design.
    pub kept: BTreeSet<String>,
    /// The approval the run waits for, while it waits.
    pub awaiting: Option<super::approval::Request>,
    /// Gated steps approved so far (`step`, or `step@gate` for gates inside a step).
    pub approved: BTreeSet<String>,
    /// Steps stopped at a gate inside them that has since been approved: they go on from their
    /// checkpoints (never undone first).
    pub resumable: BTreeSet<String>,
    /// A person chose to roll back past the barriers; cleared when the run goes forward again.
    pub past_barrier: bool,
    /// The highest session number recorded.
    pub last_session: u32,
    /// The highest sequence number recorded.
    pub last_seq: u64,
    /// The run's name and each step as reports show it.
    pub shown: Shown,
    /// A new run is reading its secrets: nothing has run, its plan is not recorded yet.
    pub reading_secrets: bool,
}

impl Folded {
    /// Whether the run may only go back.
    pub fn rolling_back(&self) -> bool {
        self.phase == Some(RunPhase::RollingBack)
    }

    /// The rollback barriers in place: steps whose change is in place and that recorded that it
    /// cannot be undone, oldest first.
    pub fn barriers(&self) -> Vec<Barrier> {
        let mut found: Vec<(&String, &StepView)> = self
            .steps
            .iter()
            .filter(|(_, s)| s.changed() && s.checkpoints.contains_key(super::BARRIER_CHECKPOINT))
            .collect();
        found.sort_by_key(|(_, s)| s.since);
        found.into_iter().map(|(id, s)| Barrier::read(id, &s.checkpoints[super::BARRIER_CHECKPOINT])).collect()
    }

    /// Steps completed and in place, in completion order, with their outputs.
    pub fn completed(&self) -> Vec<(String, Outputs)> {
        let mut done: Vec<(&String, &StepView)> =
            self.steps.iter().filter(|(_, s)| s.changed() && s.state == StepState::Succeeded).collect();
        done.sort_by_key(|(_, s)| s.since);
        done.into_iter().map(|(id, s)| (id.clone(), s.outputs.clone().unwrap_or_default())).collect()
    }

    /// Steps cut off part-way, in the order they stopped.
    pub fn cut_off(&self) -> Vec<String> {
        let mut cut: Vec<(&String, &StepView)> = self.steps.iter().filter(|(_, s)| s.cut_off()).collect();
        cut.sort_by_key(|(_, s)| s.since);
        cut.into_iter().map(|(id, _)| id.clone()).collect()
    }

    /// The checkpoints of every step that is changed, by step.
    pub fn checkpoints(&self) -> BTreeMap<String, Outputs> {
        self.steps
            .iter()
            .filter(|(_, s)| s.changed() && !s.checkpoints.is_empty())
            .map(|(id, s)| (id.clone(), s.checkpoints.clone()))
            .collect()
    }

    /// What a rollback undoes, in order: steps cut off that left checkpoints (latest first), then
    /// completed steps, newest first.
    pub fn undo_order(&self) -> Vec<String> {
        let cut = self.cut_off().into_iter().rev().filter(|id| !self.steps[id].checkpoints.is_empty());
        cut.chain(self.completed().into_iter().rev().map(|(id, _)| id)).collect()
    }

    /// Steps whose change is in place and that no rollback can undo (cut off after a change,
    /// no checkpoints): the fold cannot prove the target is back while any is.
    pub fn unknown_changes(&self) -> BTreeMap<String, String> {
        self.steps
            .iter()
            .filter(|(_, s)| s.unknown_change())
            .map(|(id, s)| (id.clone(), s.change.clone().unwrap_or_default()))
            .collect()
    }

    /// Steps whose change may be in place and that a rollback undoes: completed ones, and those cut
    /// off that recorded a checkpoint or made a change. A run that ended rolled back has none.
    pub fn in_place(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|(id, s)| s.owes_undo() && !self.kept.contains(*id))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// What `gantry runs` says of the run: its finish, or `needs-a-person` where it ended rolled
    /// back but the journal cannot prove the target is back (or a second signal ended it), else
    /// `incomplete`.
    pub fn status(&self) -> String {
        let back = [super::Status::RolledBack, super::Status::Failed, super::Status::Interrupted].map(|s| s.name());
        match &self.finished {
            Some(status) if back.contains(&status.as_str()) && !self.in_place().is_empty() => {
                super::store::NEEDS_A_PERSON.into()
            }
            Some(status) => status.clone(),
            None if self.abandoned => super::store::NEEDS_A_PERSON.into(),
            None if self.reading_secrets => READING_SECRETS.into(),
            None => "incomplete".into(),
        }
    }
}

/// What `gantry runs` says of a new run while it reads its secrets.
pub const READING_SECRETS: &str = "reading-secrets";

/// `step_failed` kinds by which a plugin reported its own failure (see `CallError::kind`); any
/// other kind, a future one included, counts as cut off by the host.
const SELF_REPORTED: [&str; 5] = ["failed", "inconclusive", "network-denied", "secret-denied", "http-limit"];

/// Folds a run's records, in sequence order, into what is changed now.
pub fn fold(records: &[Record]) -> Folded {
    let mut f = Folded::default();
    // Journals from before phase events existed say the phase only through failure events.
    let explicit = records.iter().any(|r| matches!(r.event, Event::Phase { .. }));
    for record in records {
        f.last_session = f.last_session.max(record.session);
        f.last_seq = f.last_seq.max(record.seq);
        f.shown.apply(record);
        if !matches!(record.event, Event::RunFinished { .. } | Event::Settled { .. }) && f.finished.is_some() {
            // A later session took the run up again.
            f.finished = None;
            if !explicit && f.phase == Some(RunPhase::Paused) {
                f.phase = Some(RunPhase::Running);
                f.paused = None;
            }
        }
        if !explicit {
            if let Some(phase) = legacy_phase(&f, &record.event) {
                f.phase = Some(phase);
            }
        }
        let seq = record.seq;
        let at = |attempt: u32| AttemptId { session: record.session, attempt };
        match &record.event {
            Event::RunStarted { file, plan, started_by, .. } if f.start.is_none() => {
                f.reading_secrets = false;
                f.start = Some((file.clone(), plan.clone()));
                if let Ok(plan) = crate::plan::Plan::read(plan.clone()) {
                    f.kept = plan.steps.into_iter().filter(|s| !s.rollback).map(|s| s.id).collect();
                }
                f.started_by = started_by.clone().unwrap_or_default();
                if !explicit {
                    f.phase = Some(RunPhase::Running);
                }
            }
            Event::Phase { phase, .. } => {
                f.phase = Some(*phase);
                if *phase != RunPhase::Paused {
                    f.paused = None;
                }
                if *phase == RunPhase::Running {
                    f.past_barrier = false;
                }
            }
            Event::PastBarrier { .. } => f.past_barrier = true,
            Event::Paused { step, .. } if f.phase != Some(RunPhase::RollingBack) => {
                f.phase = Some(RunPhase::Paused);
                f.paused = Some(step.clone());
            }
            Event::ApprovalRequested(request) => f.awaiting = Some(request.clone()),
            Event::Approved { step, gate, .. } => {
                f.awaiting = None;
                match gate {
                    Some(gate) => {
                        f.approved.insert(super::gate_key(step, gate));
                        f.resumable.insert(step.clone());
                    }
                    None => {
                        f.approved.insert(step.clone());
                    }
                }
            }
            Event::Rejected { .. } => f.awaiting = None,
            Event::StepStarted { step, attempt, notifier } => {
                let after_failure = if explicit { *notifier } else { f.phase != Some(RunPhase::Running) };
                let view = f.steps.entry(step.clone()).or_insert_with(|| StepView::new(after_failure));
                if view.state == StepState::Undone || view.after_failure {
                    // A fresh change: the checkpoints of what was undone are spent.
                    *view = StepView::new(after_failure);
                }
                view.state = StepState::Started;
                view.attempt = at(*attempt);
                view.outputs = None;
                view.undo_failed = false;
                view.failed_itself = false;
                view.since = seq;
            }
            Event::Checkpoint { step, key, value, .. } => {
                if let Some(view) = f.steps.get_mut(step).filter(|v| v.state != StepState::Undone) {
                    view.checkpoints.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            Event::Request(r) if r.allowed && r.may_change() => {
                if let Some(view) = f.steps.get_mut(&r.step).filter(|v| v.state == StepState::Started) {
                    view.change.get_or_insert_with(|| format!("{} {}{}", r.method, r.origin, r.path));
                }
            }
            Event::StepFinished { step, outputs, .. } => {
                if let Some(view) = f.steps.get_mut(step).filter(|v| v.state == StepState::Started) {
                    view.state = StepState::Succeeded;
                    view.outputs = Some(outputs.clone());
                    view.since = seq;
                }
            }
            Event::StepFailed { step, kind, .. } => {
                if let Some(view) = f.steps.get_mut(step).filter(|v| v.state == StepState::Started) {
                    view.state = StepState::Failed;
                    view.failed_itself = SELF_REPORTED.contains(&kind.as_str());
                    view.since = seq;
                }
            }
            Event::RolledBack { step, .. } => {
                if let Some(view) = f.steps.get_mut(step) {
                    view.state = StepState::Undone;
                    view.checkpoints.clear();
                    view.change = None;
                    view.outputs = None;
                    view.undo_failed = false;
                    view.since = seq;
                }
            }
            Event::RollbackFailed { step, .. } => {
                if let Some(view) = f.steps.get_mut(step) {
                    view.undo_failed = true;
                }
            }
            Event::Abandoned { .. } => f.abandoned = true,
            Event::RunFinished { status } => f.finished = Some(status.clone()),
            // A person's settle is the run's end in one record: a crash right after it cannot undo it.
            Event::Settled { .. } => f.finished = Some(super::Status::Settled.name().into()),
            Event::ReadingSecrets { .. } => f.reading_secrets = f.start.is_none(),
            // Decided explicitly, so a new event is a compile error here until the fold decides it.
            // A second start (a resume's) and a pause recorded while rolling back change nothing;
            // reads and denied requests change nothing on the target.
            Event::RunStarted { .. } | Event::Paused { .. } | Event::Request(_) => {}
            // What happened around the steps, not to the target: retries are followed by their
            // attempt's own events, skips ran nothing.
            Event::StepRetrying { .. }
            | Event::StepSkipped { .. }
            | Event::Log { .. }
            | Event::Opened { .. }
            | Event::SecretsRead { .. }
            | Event::AwsCredentials { .. }
            | Event::Interrupted { .. }
            | Event::BarrierAhead { .. }
            | Event::SecretSlow { .. }
            | Event::StartFailed { .. } => {}
            // A pre-flight reads; its requests come with no step start, so they are no change.
            Event::PreflightChecked { .. } | Event::PreflightSkipped { .. } => {}
        }
    }
    f
}

/// The phase a journal without phase events implied, as the version that wrote it read it: a
/// failure moved it to rolling back, except a notifier's failure while paused.
fn legacy_phase(f: &Folded, event: &Event) -> Option<RunPhase> {
    match event {
        Event::StepFailed { continue_on_error: false, step, .. } => {
            let notifier = f.steps.get(step).is_some_and(|s| s.after_failure);
            (!notifier && f.phase != Some(RunPhase::Paused)).then_some(RunPhase::RollingBack)
        }
        Event::RolledBack { .. }
        | Event::RollbackFailed { .. }
        | Event::Interrupted { .. }
        | Event::Abandoned { .. }
        | Event::Rejected { .. } => Some(RunPhase::RollingBack),
        _ => None,
    }
}

impl StepView {
    fn new(after_failure: bool) -> Self {
        StepView {
            state: StepState::Started,
            attempt: AttemptId::default(),
            checkpoints: Outputs::new(),
            change: None,
            outputs: None,
            after_failure,
            undo_failed: false,
            failed_itself: false,
            since: 0,
        }
    }
}

#[cfg(test)]
mod model;
