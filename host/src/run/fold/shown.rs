//! What the fold answers for people: the run's name and each step as the summaries, JUnit,
//! annotations, the HTML report and `gantry runs show` present it, folded in the same pass as
//! what is changed now.

use super::{Barrier, Event, Outputs, Record};

/// How a step stands, as reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Started, not yet ended.
    Running,
    /// Its last attempt succeeded.
    Succeeded,
    /// It failed for good.
    Failed,
    /// The run stopped it because another step failed or a signal came.
    Cancelled,
    /// It did not run.
    Skipped,
    /// It could not decide; the run waits for a person.
    Paused,
    /// Its change was undone.
    RolledBack,
    /// Undoing it failed.
    RollbackFailed,
    /// It waits for `gantry approve`.
    AwaitingApproval,
    /// Its approval was refused or lapsed.
    Rejected,
}

impl Outcome {
    /// The name reports print (`rolled-back`).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped => "skipped",
            Outcome::Paused => "paused",
            Outcome::RolledBack => "rolled-back",
            Outcome::RollbackFailed => "rollback-failed",
            Outcome::AwaitingApproval => "awaiting-approval",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One step as reports show it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepShown {
    /// Step id.
    pub id: String,
    /// How it stands.
    pub outcome: Outcome,
    /// Attempts made.
    pub attempts: u32,
    /// Seconds from its first start to the end of its last attempt.
    pub seconds: f64,
    /// Its error, skip or pause reason, or who may approve it.
    pub message: Option<String>,
    /// Its outputs, once it succeeded.
    pub outputs: Outputs,
    /// HTTP requests the host let out.
    pub requests: u32,
    /// HTTP requests the host refused.
    pub denied: u32,
    /// When it first started (journal time, ms).
    first_ms: Option<f64>,
}

/// The run's name, from its start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// Run id.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Environment.
    pub environment: String,
    /// Entity.
    pub entity: String,
    /// The rollout the run is part of.
    pub rollout: Option<String>,
}

/// The people's view of a journal, built by [`super::fold`].
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// The run's name.
    pub identity: Identity,
    /// Every step the journal names, in the order it first names them.
    pub steps: Vec<StepShown>,
    /// In a dry run: the steps whose real run would record a rollback barrier.
    pub barriers_ahead: Vec<Barrier>,
    /// What each step's pre-flight read, in the order they answered.
    pub preflight: Vec<PreflightShown>,
    /// In the pre-flight phase: requests then are reads, not a step's work.
    preflighting: bool,
}

/// One step's pre-flight as reports show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreflightShown {
    /// Step id.
    pub step: String,
    /// What it read and found.
    pub checks: Vec<crate::sandbox::Check>,
    /// Why the pre-flight failed itself, or why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PreflightShown {
    /// Whether it found nothing in the way.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.passed)
    }
}

impl Shown {
    fn step(&mut self, id: &str) -> &mut StepShown {
        let i = match self.steps.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                self.steps.push(StepShown {
                    id: id.to_string(),
                    outcome: Outcome::Running,
                    attempts: 0,
                    seconds: 0.0,
                    message: None,
                    outputs: Outputs::new(),
                    requests: 0,
                    denied: 0,
                    first_ms: None,
                });
                self.steps.len() - 1
            }
        };
        &mut self.steps[i]
    }

    /// Ends step `id` at `ts_ms` with `outcome` and `message`.
    fn ended(&mut self, id: &str, ts_ms: f64, outcome: Outcome, message: Option<String>) -> &mut StepShown {
        let step = self.step(id);
        step.seconds = step.first_ms.map(|t| (ts_ms - t) / 1e3).unwrap_or_default();
        (step.outcome, step.message) = (outcome, message);
        step
    }

    /// Folds one record in.
    pub(super) fn apply(&mut self, record: &Record) {
        let ts = record.ts_ms;
        match &record.event {
            Event::RunStarted { run_id, pipeline, environment, entity, rollout, .. }
            | Event::ReadingSecrets { run_id, pipeline, environment, entity, rollout } => {
                self.identity = Identity {
                    run_id: run_id.clone(),
                    pipeline: pipeline.clone(),
                    environment: environment.clone(),
                    entity: entity.clone(),
                    rollout: rollout.clone(),
                };
            }
            Event::StepStarted { step, attempt, .. } => {
                let step = self.step(step);
                step.first_ms.get_or_insert(ts);
                step.attempts = *attempt;
            }
            Event::StepFinished { step, outputs, .. } => {
                self.ended(step, ts, Outcome::Succeeded, None).outputs = outputs.clone();
            }
            Event::StepFailed { step, kind, error, .. } => {
                let outcome = if kind == "cancelled" { Outcome::Cancelled } else { Outcome::Failed };
                self.ended(step, ts, outcome, Some(error.clone()));
            }
            Event::StepSkipped { step, reason } => {
                let step = self.step(step);
                (step.outcome, step.message) = (Outcome::Skipped, Some(reason.clone()));
            }
            Event::Paused { step, reason } => {
                self.ended(step, ts, Outcome::Paused, Some(reason.clone()));
            }
            Event::Request(_) if self.preflighting => {}
            Event::Request(r) => {
                let step = self.step(&r.step);
                *(if r.allowed { &mut step.requests } else { &mut step.denied }) += 1;
            }
            Event::RolledBack { step, .. } => self.step(step).outcome = Outcome::RolledBack,
            Event::RollbackFailed { step, error, .. } => {
                let step = self.step(step);
                (step.outcome, step.message) = (Outcome::RollbackFailed, Some(error.clone()));
            }
            Event::ApprovalRequested(r) => {
                let (step, by) = (self.step(&r.step), r.approvers.join(", "));
                (step.outcome, step.message) = (Outcome::AwaitingApproval, Some(format!("approvers: {by}")));
            }
            Event::Rejected { step, reason, .. } => {
                let step = self.step(step);
                (step.outcome, step.message) = (Outcome::Rejected, Some(reason.clone()));
            }
            Event::BarrierAhead { step, reason, changed } => self.barriers_ahead.push(Barrier {
                step: step.clone(),
                reason: reason.clone(),
                changed: changed.clone(),
            }),
            Event::Phase { phase, .. } => self.preflighting = *phase == super::RunPhase::Preflight,
            Event::PreflightChecked { step, checks, error } => {
                let (step, checks, error) = (step.clone(), checks.clone(), error.clone());
                self.preflight.push(PreflightShown { step, checks, error });
            }
            // A skipped pre-flight passed nothing and failed nothing: its line in the journal says why.
            Event::PreflightSkipped { .. } => {}
            // The run's end and phases are the fold's own answer (`Folded::status`); the rest says
            // nothing a step's row shows.
            Event::Approved { .. }
            | Event::StepRetrying { .. }
            | Event::Interrupted { .. }
            | Event::Checkpoint { .. }
            | Event::Opened { .. }
            | Event::SecretsRead { .. }
            | Event::AwsCredentials { .. }
            | Event::Log { .. }
            | Event::PastBarrier { .. }
            | Event::Settled { .. }
            | Event::Abandoned { .. }
            | Event::SecretSlow { .. }
            | Event::StartFailed { .. }
            | Event::RunFinished { .. } => {}
        }
    }
}
