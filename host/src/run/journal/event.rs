//! What a run records: every event, as the journal writes it (one JSON object per line, tagged
//! `event`) and every reader folds it. Serialisation is the journal format: a field added here is
//! `#[serde(default)]` so older journals still read and resume.

use crate::capability::Redactor;
use crate::run::{approval, fold};
use crate::sandbox::{Check, Level, Outputs, RequestRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Something that happened during a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run began.
    RunStarted {
        /// Run id.
        run_id: String,
        /// Pipeline name.
        pipeline: String,
        /// Environment.
        environment: String,
        /// Entity.
        entity: String,
        /// Plugin sha256 by step id.
        plugins: BTreeMap<String, String>,
        /// The pipeline file, for resume and rollback.
        #[serde(default)]
        file: Option<PathBuf>,
        /// The resolved plan the run executes.
        #[serde(default)]
        plan: serde_json::Value,
        /// Who started it (`GANTRY_USER`, else the login name).
        #[serde(default)]
        started_by: Option<String>,
        /// The rollout (one `gantry run --entity all` or list) this run is part of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<String>,
    },
    /// An attempt of a step began.
    StepStarted {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// It runs because the pipeline failed or paused (`failure()`, `always()`): never undone.
        /// Said by the executor, not read from the phase: a step spawned just before a failure may
        /// write its start just after the failure's phase event.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        notifier: bool,
    },
    /// A step succeeded.
    StepFinished {
        /// Step id.
        step: String,
        /// Its outputs.
        outputs: Outputs,
        /// The attempt that succeeded (0 in journals from before attempts were named).
        #[serde(default)]
        attempt: u32,
    },
    /// An attempt failed and will be retried.
    StepRetrying {
        /// Step id.
        step: String,
        /// The failed attempt.
        attempt: u32,
        /// Why.
        error: String,
        /// Wait before the next attempt.
        backoff_ms: u64,
    },
    /// A step failed for good.
    StepFailed {
        /// Step id.
        step: String,
        /// Error kind: failed, timeout, memory-limit, trap, cancelled.
        kind: String,
        /// Message.
        error: String,
        /// Whether the pipeline carries on regardless.
        continue_on_error: bool,
        /// The attempt that failed (0 in journals from before attempts were named).
        #[serde(default)]
        attempt: u32,
    },
    /// A step did not run.
    StepSkipped {
        /// Step id.
        step: String,
        /// Why.
        reason: String,
    },
    /// A step made (or tried to make) an HTTP request.
    Request(RequestRecord),
    /// A step logged a line (`info` and above; the first lines of each attempt, see `LOG_LINES_KEPT`).
    Log {
        /// Step id.
        step: String,
        /// How loud.
        level: Level,
        /// The line, redacted.
        message: String,
    },
    /// A step recorded undo information before a change.
    Checkpoint {
        /// Step id.
        step: String,
        /// Key, as the plugin named it.
        key: String,
        /// Value.
        value: String,
        /// The attempt of the call that recorded it (0 in journals from before attempts were named).
        #[serde(default)]
        attempt: u32,
    },
    /// A step's change was undone: nothing of it is in place any more.
    RolledBack {
        /// Step id.
        step: String,
        /// The attempt of the rollback call that undid it (0 in journals from before attempts were named).
        #[serde(default)]
        attempt: u32,
    },
    /// Undoing a step failed: its change is still in place.
    RollbackFailed {
        /// Step id.
        step: String,
        /// Why.
        error: String,
        /// The attempt of the rollback call that failed last (0 in older journals).
        #[serde(default)]
        attempt: u32,
    },
    /// The run entered a phase; the journal fold reads the phase from these events only.
    Phase {
        /// The phase.
        phase: fold::RunPhase,
        /// Why, e.g. `step `deploy` failed`, `resumed`, `SIGTERM`.
        #[serde(default)]
        reason: String,
    },
    /// A process took the run up: its records carry the session number of this event's record.
    Opened {
        /// What it does: `run`, `resume`, `rollback`.
        command: String,
        /// Its process id.
        pid: u32,
        /// The machine it runs on.
        host: String,
    },
    /// A new run is reading its secrets: recorded first, so `gantry runs` lists the run while a
    /// store is slow. Its plan follows in `run_started`, once every secret is read and the plan is
    /// checked to carry none of their values.
    ReadingSecrets {
        /// Run id.
        run_id: String,
        /// Pipeline name.
        pipeline: String,
        /// Environment.
        environment: String,
        /// Entity.
        entity: String,
        /// The rollout this run is part of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<String>,
    },
    /// A secret's sources have not answered yet: said every few seconds while a store is slow.
    SecretSlow {
        /// The secret's name in the pipeline.
        secret: String,
        /// Its sources, as written.
        from: String,
        /// How long the run has waited for it.
        waited_ms: u64,
    },
    /// A step's pre-flight answered: what it read before the run changed anything. Its requests
    /// precede it in the journal, under the step's id, with no `step_started`: never a change.
    PreflightChecked {
        /// Step id.
        step: String,
        /// What it read and found.
        checks: Vec<Check>,
        /// Why the pre-flight itself failed (a refused request, an error, a timeout), if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A pre-flight was not made: for the whole run (`--skip-preflight`, no `step`), or for one
    /// step (its plugin has none, or its input needs an earlier step's outputs).
    PreflightSkipped {
        /// The step, or none for the whole run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        /// Why, e.g. `--skip-preflight by ana`.
        reason: String,
    },
    /// A new run could not start (a secret unreadable, a plugin not loaded, the plan carrying a
    /// secret's value): nothing ran, and `run_finished: failed` follows.
    StartFailed {
        /// Why, as `gantry run` prints it.
        error: String,
    },
    /// Where this session's secret values came from (which source of a chain answered), never a value.
    SecretsRead {
        /// By secret name.
        answered: BTreeMap<String, SecretAnswered>,
    },
    /// An AWS credential set read before the first step, or renewed ahead of its expiry when a
    /// step's request found it due: which provider answered and until when, never a value.
    AwsCredentials {
        /// The secret's name in the pipeline.
        secret: String,
        /// The provider of the AWS SDK's chain that answered (`WebIdentityToken`, `EcsContainer`, …).
        provider: String,
        /// When they expire (RFC 3339); absent for long-term keys.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires: Option<String>,
        /// The step whose request renewed them; absent when read before the first step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
    },
    /// A step could not decide whether to go on (a gate without data): the run starts nothing more,
    /// rolls nothing back, and waits for a person to `resume` (the step runs again) or `rollback`.
    Paused {
        /// Step id.
        step: String,
        /// Why it could not decide.
        reason: String,
    },
    /// A signal asked the run to stop: no new steps, running ones cancelled, completed ones rolled back.
    Interrupted {
        /// What asked, e.g. `SIGTERM`.
        signal: String,
    },
    /// A second signal ended the process before the run could finish: the run needs a person,
    /// and `gantry rollback <id>` finishes undoing it from the journal.
    Abandoned {
        /// What ended it, e.g. `SIGINT`.
        signal: String,
    },
    /// A gated step waits for a person: the run starts nothing more and ends as `awaiting-approval`.
    ApprovalRequested(approval::Request),
    /// A person approved a gated step; the run continues with it.
    Approved {
        /// Step id.
        step: String,
        /// The gate inside the step, when the step asked for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gate: Option<String>,
        /// Who approved.
        by: String,
        /// What they said.
        #[serde(default)]
        comment: Option<String>,
    },
    /// A gated step was rejected, or its request lapsed: the run is rolled back.
    Rejected {
        /// Step id.
        step: String,
        /// The gate inside the step, when the step asked for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gate: Option<String>,
        /// Who rejected (`gantry` when the request lapsed).
        by: String,
        /// What they said.
        #[serde(default)]
        comment: Option<String>,
        /// Why: `rejected`, or `timed out`.
        reason: String,
    },
    /// A person chose to roll back past the run's rollback barriers (`gantry rollback --past-barrier`):
    /// recorded before the first undo, so a rollback taken up again after a crash still goes past them.
    PastBarrier {
        /// Who chose it.
        by: String,
    },
    /// A person accepted the run's state as it is (`gantry settle`): nothing more is undone or run.
    Settled {
        /// Who accepted it.
        by: String,
        /// Why, as they said it.
        reason: String,
    },
    /// In a dry run, a step said its real run would record a rollback barrier here (the SDK's
    /// `Context::barrier`): shown before anything irreversible happens, never folded as a change.
    BarrierAhead {
        /// Step id.
        step: String,
        /// Why its change could not be undone, as the step said.
        reason: String,
        /// What would stay changed.
        changed: String,
    },
    /// The run ended.
    RunFinished {
        /// succeeded, failed or rollback-failed.
        status: String,
    },
}

impl Event {
    /// The event with every secret value redacted from every text it carries. A typed walk:
    /// it cannot fail, so no event is ever written unredacted.
    pub fn redacted(mut self, r: &Redactor) -> Self {
        if r.is_empty() {
            return self;
        }
        let text = |s: &mut String| *s = r.redact(s);
        let outputs = |o: &mut Outputs| *o = o.iter().map(|(k, v)| (r.redact(k), r.redact(v))).collect();
        match &mut self {
            Event::RunStarted { run_id, pipeline, environment, entity, plan, started_by, rollout, .. } => {
                [run_id, pipeline, environment, entity].into_iter().for_each(text);
                started_by.iter_mut().chain(rollout.iter_mut()).for_each(text);
                r.redact_json(plan);
            }
            Event::ApprovalRequested(req) => {
                [&mut req.step, &mut req.requested_by].into_iter().for_each(text);
                req.approvers.iter_mut().chain(req.gate.iter_mut()).for_each(text);
            }
            Event::Approved { step, by, comment, gate } => {
                [step, by].into_iter().for_each(text);
                comment.iter_mut().chain(gate.iter_mut()).for_each(text);
            }
            Event::Rejected { step, by, comment, reason, gate } => {
                [step, by, reason].into_iter().for_each(text);
                comment.iter_mut().chain(gate.iter_mut()).for_each(text);
            }
            Event::StepStarted { step, .. } | Event::RolledBack { step, .. } => text(step),
            Event::Phase { reason, .. } => text(reason),
            Event::PreflightChecked { step, checks, error } => {
                text(step);
                checks.iter_mut().for_each(|c| [&mut c.name, &mut c.answer].into_iter().for_each(text));
                error.iter_mut().for_each(text);
            }
            Event::PreflightSkipped { step, reason } => {
                step.iter_mut().for_each(text);
                text(reason);
            }
            Event::Opened { command, host, .. } => [command, host].into_iter().for_each(text),
            Event::AwsCredentials { secret, provider, step, .. } => {
                [secret, provider].into_iter().chain(step.as_mut()).for_each(text)
            }
            Event::ReadingSecrets { run_id, pipeline, environment, entity, rollout } => {
                [run_id, pipeline, environment, entity].into_iter().chain(rollout.as_mut()).for_each(text)
            }
            Event::SecretSlow { secret, from, .. } => [secret, from].into_iter().for_each(text),
            Event::StartFailed { error } => text(error),
            Event::SecretsRead { answered } => {
                for a in answered.values_mut() {
                    text(&mut a.source);
                    a.passed_over.iter_mut().for_each(text);
                }
            }
            Event::StepSkipped { step, reason } | Event::Paused { step, reason } => {
                [step, reason].into_iter().for_each(text)
            }
            Event::StepFinished { step, outputs: o, .. } => {
                text(step);
                outputs(o);
            }
            Event::StepRetrying { step, error, .. } | Event::RollbackFailed { step, error, .. } => {
                text(step);
                text(error);
            }
            Event::StepFailed { step, kind, error, .. } => [step, kind, error].into_iter().for_each(text),
            Event::Request(req) => {
                [&mut req.step, &mut req.method, &mut req.origin, &mut req.path].into_iter().for_each(text);
                req.reason.iter_mut().for_each(text);
            }
            Event::RunFinished { status } => text(status),
            Event::PastBarrier { by } => text(by),
            Event::Settled { by, reason } => [by, reason].into_iter().for_each(text),
            Event::BarrierAhead { step, reason, changed } => [step, reason, changed].into_iter().for_each(text),
            Event::Interrupted { signal } | Event::Abandoned { signal } => text(signal),
            Event::Checkpoint { step, key, value, .. } => [step, key, value].into_iter().for_each(text),
            Event::Log { step, message, .. } => [step, message].into_iter().for_each(text),
        }
        self
    }
}

/// Which of a secret's sources gave its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretAnswered {
    /// The source that answered, as written.
    pub source: String,
    /// Sources asked first that were unavailable, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<String>,
}
