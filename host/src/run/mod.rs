//! Runs a [`Plan`]: a tokio executor over the step DAG with bounded
//! concurrency, `if:` conditions, timeouts and retries; on failure it cancels
//! what is still running, runs the steps whose condition asks for it
//! (`failure()`, `always()`), then rolls back completed steps in reverse
//! completion order. Every event goes to the run's journal (durably, before
//! the side effect it announces) and to the event stream.
//!
//! A run happens inside a [`Session`]: the run lock, the run's record in the
//! [`store::RunStore`], its journal and artifacts directory.

pub mod approval;
pub mod fold;
pub mod journal;
mod preflight;
pub mod resume;
pub mod session;
pub mod store;

use crate::capability::aws_credentials::{AwsCredentials, Renewal};
use crate::capability::source::SLOW_NOTICE;
use crate::capability::unit::GrantInUse;
use crate::capability::{Database, Databases, Files, Grants, Redactor, Secret, SecretFrom, Secrets};
use crate::pipeline::condition::Facts;
use crate::pipeline::expr;
use crate::plan::{Plan, PlannedStep};
use crate::sandbox::{
    ApprovalLog, CallError, CheckpointLog, LineLog, Outputs, Plugin, RequestLog, Runtime, StepCall, StepContext,
};
use journal::{Journal, JournalError};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub use journal::{Event, SecretAnswered};
pub use session::Session;


/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every step that had to run succeeded.
    Succeeded,
    /// A step failed and rollback succeeded.
    Failed,
    /// A step failed and rollback failed: a person must look.
    RollbackFailed,
    /// Completed steps were undone on request (`gantry rollback`).
    RolledBack,
    /// A signal stopped the run and its completed steps were rolled back.
    Interrupted,
    /// A step could not decide; nothing was rolled back and a person decides: `resume` or `rollback`.
    Paused,
    /// A gated step waits for `gantry approve` or `gantry reject`; nothing was rolled back.
    AwaitingApproval,
    /// The rollback ended but the journal cannot prove the target is back (a step cut off after a
    /// change it recorded no checkpoint for): a person must look.
    NeedsAPerson,
    /// The rollback undid what ran after a rollback barrier and stopped there: the barrier's change
    /// and what it needs stay. A person chooses `resume`, `rollback --past-barrier` or `settle`.
    StoppedAtBarrier,
    /// A person accepted the run's state as it is (`gantry settle`): nothing more is run or undone.
    Settled,
    /// A step's pre-flight found it cannot go ahead: the run stopped before any step ran.
    PreflightFailed,
}

impl Status {
    /// The process exit code: 0, 1, 3 (needs a person), 4 (paused for a decision), 5 (awaiting
    /// approval), 6 (stopped at a rollback barrier) or 7 (a pre-flight failed: nothing ran).
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Succeeded => 0,
            Status::Failed => 1,
            Status::RollbackFailed => 3,
            Status::RolledBack => 0,
            Status::Interrupted => 1,
            Status::Paused => 4,
            Status::AwaitingApproval => 5,
            Status::NeedsAPerson => 3,
            Status::StoppedAtBarrier => 6,
            Status::Settled => 0,
            Status::PreflightFailed => 7,
        }
    }

    /// The name the journal and `gantry runs` use.
    pub fn name(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::RollbackFailed => "rollback-failed",
            Status::RolledBack => "rolled-back",
            Status::Interrupted => "interrupted",
            Status::Paused => "paused",
            Status::AwaitingApproval => "awaiting-approval",
            Status::NeedsAPerson => store::NEEDS_A_PERSON,
            Status::StoppedAtBarrier => "stopped-at-barrier",
            Status::Settled => "settled",
            Status::PreflightFailed => "preflight-failed",
        }
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A plugin did not load.
    #[error("step `{step}`: {source}")]
    Load {
        /// Step id.
        step: String,
        /// Cause.
        source: crate::sandbox::LoadError,
    },
    /// A secret source could not be read.
    #[error("secret `{name}`: {message}")]
    Secret {
        /// Secret name.
        name: String,
        /// Cause.
        message: String,
    },
    /// A plugin file is not the one the plan recorded.
    #[error("the plugin of step `{step}` changed since the run was planned (sha256 {then} then, {now} now, {path}); refusing to mix plugins in one run")]
    PluginChanged {
        /// Step id.
        step: String,
        /// The plan's hash.
        then: String,
        /// The file's hash now.
        now: String,
        /// The component file.
        path: PathBuf,
    },
    /// The journal could not be written before the first step.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Most steps running at once (at least 1).
    pub jobs: usize,
    /// Steps report changes without making them.
    pub dry_run: bool,
    /// The pipeline file the plan came from, recorded for people reading the journal.
    pub file: Option<PathBuf>,
    /// Steps already completed by an earlier, interrupted attempt of this run, in completion order.
    pub completed: Vec<(String, Outputs)>,
    /// The run continues a journal that already holds its start (`resume`).
    pub resumed: bool,
    /// Becomes `Some(signal)` when the run is asked to stop (Ctrl-C, a cancelled CI job).
    pub interrupt: Option<tokio::sync::watch::Receiver<Option<String>>>,
    /// Checkpoints an earlier attempt of this run recorded, by step.
    pub checkpoints: BTreeMap<String, Outputs>,
    /// Steps that were under way when an earlier attempt stopped and left checkpoints: rolled back
    /// from them before anything else, then run again from the start, never on top of a half-change.
    pub partial: Vec<String>,
    /// Gated steps a person has approved.
    pub approved: BTreeSet<String>,
    /// Who started the run, for approval requests (the current user when empty).
    pub started_by: String,
    /// The rollout this run is part of, recorded at its start.
    pub rollout: Option<String>,
    /// Whether each step reads what it depends on before the run's first change.
    pub preflight: Preflight,
}

/// Whether a run reads what each step depends on before its first change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Preflight {
    /// Read first: a new run, or a resume of one stopped during its pre-flight.
    #[default]
    Read,
    /// Not read, on a person's word (`--skip-preflight`): the journal keeps who and why.
    Skipped(String),
    /// Not read: the run went past its pre-flight before it stopped.
    Past,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// How it ended.
    pub status: Status,
    /// Outputs of succeeded steps.
    pub outputs: BTreeMap<String, Outputs>,
    /// Steps that failed.
    pub failed: Vec<String>,
    /// Steps that did not run.
    pub skipped: Vec<String>,
    /// Steps undone, in the order they were undone.
    pub rolled_back: Vec<String>,
    /// Set when the journal stopped accepting events mid-run: the run stopped, rolled back
    /// what it could, and its record is incomplete.
    pub journal_error: Option<String>,
    /// What the pre-flight found in the way, as `step: check: answer`; empty when it passed.
    pub preflight_failures: Vec<String>,
}

impl RunResult {
    /// The process exit code: the status's, or 3 (needs a person) when the journal is incomplete.
    pub fn exit_code(&self) -> u8 {
        if self.journal_error.is_some() {
            Status::RollbackFailed.exit_code()
        } else {
            self.status.exit_code()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Running,
    Succeeded(Outputs),
    Failed,
    Skipped,
}

struct Ctx {
    plan: Plan,
    /// Each step's position in `plan.steps`: a run looks steps up by id once per start, settle and undo.
    index: std::collections::HashMap<String, usize>,
    plugins: BTreeMap<String, Plugin>,
    grants: BTreeMap<String, Grants>,
    journal: Journal,
    events: Option<mpsc::UnboundedSender<Event>>,
    dry_run: bool,
    /// Every secret value of the run, redacted from every event.
    redactor: Redactor,
    /// Run id, told to steps.
    run_id: String,
    /// Each step's checkpoints (key → first value), as the journal has them.
    checkpoints: std::sync::Mutex<BTreeMap<String, Outputs>>,
    /// Approvals given in this run: step ids (gates before a step) and `step@gate` (gates inside one).
    approved: BTreeSet<String>,
    /// Who started the run, for approval requests.
    started_by: String,
    /// Gates inside a step whose approval was requested during its current call, by step.
    requested: std::sync::Mutex<BTreeMap<String, String>>,
    /// Each step's latest attempt in this session, named by the events that follow its start.
    attempts: std::sync::Mutex<BTreeMap<String, u32>>,
    /// The pipeline file, where known: a step input that does not fit is named at its line.
    file: Option<PathBuf>,
}

/// The key under which a gate inside a step is approved.
pub fn gate_key(step: &str, gate: &str) -> String {
    format!("{step}@{gate}")
}

/// The upstream entry under which a step receives its own checkpoints.
pub const CHECKPOINTS_UPSTREAM: &str = "gantry.checkpoints";

/// The checkpoint key under which a step records a rollback barrier: what it did cannot be undone
/// (the SDK's `Context::barrier`, `{"reason": …, "changed": …}`).
pub const BARRIER_CHECKPOINT: &str = "gantry.barrier";

impl Ctx {
    fn new(
        prepared: Prepared,
        plan: &Plan,
        session: &Session,
        dry_run: bool,
        events: Option<mpsc::UnboundedSender<Event>>,
    ) -> Self {
        let Prepared { plugins, grants, redactor } = prepared;
        Ctx {
            plan: plan.clone(),
            index: plan.steps.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect(),
            plugins,
            grants,
            journal: session.journal().clone(),
            events,
            dry_run,
            redactor,
            run_id: session.run_id().to_string(),
            checkpoints: Default::default(),
            approved: BTreeSet::new(),
            started_by: approval::current_user(),
            requested: Default::default(),
            attempts: Default::default(),
            file: None,
        }
    }

    /// The run's approvals, who started it and its pipeline file, from its options.
    fn with_options(mut self, options: &RunOptions) -> Self {
        self.file = options.file.clone();
        self.approved = options.approved.clone();
        if !options.started_by.is_empty() {
            self.started_by = options.started_by.clone();
        }
        self
    }

    /// Answers a step's `approval(gate)`: approved in this run, or a request recorded now.
    async fn approval(&self, step: &str, gate: String) -> bool {
        if self.approved.contains(&gate_key(step, &gate)) {
            return true;
        }
        let default = crate::pipeline::ApprovalPolicy {
            timeout: crate::pipeline::ApprovalPolicy::DEFAULT_TIMEOUT,
            approvers: Vec::new(),
            prevent_self_review: false,
            environments: Vec::new(),
        };
        let policy = self.step(step).approval.clone().unwrap_or(default);
        let mut request = approval::Request::new(step, &policy, &self.started_by, store::now_ms());
        request.gate = Some(gate.clone());
        if self.emit(Event::ApprovalRequested(request)).await.is_ok() {
            self.requested.lock().unwrap_or_else(|e| e.into_inner()).insert(step.to_string(), gate);
        }
        false
    }

    /// The gate step `id` asked approval for during its call, if it did (taken once).
    fn take_requested(&self, id: &str) -> Option<String> {
        self.requested.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
    }

    fn seed_checkpoints(self, checkpoints: &BTreeMap<String, Outputs>) -> Self {
        *self.checkpoints.lock().unwrap_or_else(|e| e.into_inner()) = checkpoints.clone();
        self
    }

    /// Step `id`'s checkpoints so far.
    fn checkpoints_of(&self, id: &str) -> Outputs {
        self.checkpoints.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned().unwrap_or_default()
    }

    /// `upstream` with the step's own checkpoints added, as a call of it receives them.
    fn with_checkpoints(&self, id: &str, upstream: &BTreeMap<String, Outputs>) -> BTreeMap<String, Outputs> {
        let mut upstream = upstream.clone();
        let own = self.checkpoints_of(id);
        if !own.is_empty() {
            upstream.insert(CHECKPOINTS_UPSTREAM.into(), own);
        }
        upstream
    }

    /// Records a checkpoint of attempt `attempt` durably; a key keeps its first value. In a dry run
    /// a rollback barrier is recorded as one ahead: nothing was changed, so nothing stops a rollback.
    async fn checkpoint(&self, step: &str, key: String, value: String, attempt: u32) -> Result<(), String> {
        if self.checkpoints_of(step).contains_key(&key) {
            return Ok(());
        }
        if self.dry_run && key == BARRIER_CHECKPOINT {
            let fold::Barrier { step, reason, changed } = fold::Barrier::read(step, &value);
            return self.emit(Event::BarrierAhead { step, reason, changed }).await.map_err(|e| e.to_string());
        }
        let event = Event::Checkpoint { step: step.to_string(), key: key.clone(), value: value.clone(), attempt };
        self.emit(event).await.map_err(|e| e.to_string())?;
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(step.to_string())
            .or_default()
            .insert(key, value);
        Ok(())
    }

    /// Step `id`'s latest attempt in this session (0 before its first).
    fn attempt_of(&self, id: &str) -> u32 {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied().unwrap_or(0)
    }

    /// Enters `phase`, durably: what a recovery may do from here on is decided by this record.
    async fn enter(&self, phase: fold::RunPhase, reason: impl Into<String>) -> Result<(), JournalError> {
        self.emit(Event::Phase { phase, reason: reason.into() }).await
    }

    /// Writes an event durably, then shows it.
    async fn emit(&self, event: Event) -> Result<(), JournalError> {
        let event = event.redacted(&self.redactor);
        let shown = self.events.is_some().then(|| event.clone());
        self.journal.write(event).await?;
        if let Some(event) = shown {
            self.show(event);
        }
        Ok(())
    }

    /// Queues a record of something that already happened, and shows it.
    fn record(&self, event: Event) {
        let event = event.redacted(&self.redactor);
        self.journal.record(event.clone());
        self.show(event);
    }

    fn show(&self, event: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// What a call of step `id` is told about where it runs.
    fn context(
        &self,
        id: &str,
        attempt: u32,
        input: serde_json::Value,
        upstream: BTreeMap<String, Outputs>,
    ) -> StepContext {
        StepContext {
            step_id: id.to_string(),
            pipeline: self.plan.pipeline.clone(),
            environment: self.plan.environment.clone(),
            entity: self.plan.entity.clone(),
            attempt,
            dry_run: self.dry_run,
            input,
            upstream,
        }
    }

    /// A call of `step` with its grants, limits and a request log feeding the journal.
    fn call(self: &Arc<Self>, step: &PlannedStep, context: StepContext) -> StepCall {
        let weak = Arc::downgrade(self);
        let log = RequestLog(Arc::new(move |record| {
            if let Some(ctx) = weak.upgrade() {
                ctx.record(Event::Request(record));
            }
        }));
        let (weak, id, attempt) = (Arc::downgrade(self), step.id.clone(), context.attempt);
        let checkpoints = CheckpointLog(Arc::new(move |key, value| {
            let (weak, id) = (weak.clone(), id.clone());
            Box::pin(async move {
                match weak.upgrade() {
                    Some(ctx) => ctx.checkpoint(&id, key, value, attempt).await,
                    None => Err("the run has ended".into()),
                }
            })
        }));
        let (weak, id) = (Arc::downgrade(self), step.id.clone());
        let logs = LineLog(Arc::new(move |level, message| {
            if let Some(ctx) = weak.upgrade() {
                ctx.record(Event::Log { step: id.clone(), level, message });
            }
        }));
        let (weak, id) = (Arc::downgrade(self), step.id.clone());
        let approvals = ApprovalLog(Arc::new(move |gate| {
            let (weak, id) = (weak.clone(), id.clone());
            Box::pin(async move {
                match weak.upgrade() {
                    Some(ctx) => ctx.approval(&id, gate).await,
                    None => false,
                }
            })
        }));
        StepCall {
            approvals: Some(approvals),
            context,
            grants: self.grants[&step.id].clone(),
            limits: step.limits.sandbox(),
            http: step.limits.http(),
            sql: step.limits.sql(),
            requests: Some(log),
            checkpoints: Some(checkpoints),
            logs: Some(logs),
        }
    }

    fn step(&self, id: &str) -> &PlannedStep {
        &self.plan.steps[self.index[id]]
    }

    /// The record that this process took the run up to do `command`.
    fn opened(&self, command: &str) -> Event {
        Event::Opened { command: command.into(), pid: std::process::id(), host: store::Holder::this_process("").host }
    }
}

fn grants_for(step: &PlannedStep, artifacts: &Path, read: &SecretsRead) -> Grants {
    let files = Files { read: step.files.clone(), artifacts: step.artifacts.then(|| artifacts.join(&step.id)) };
    let values = &read.values;
    let mut secrets = Secrets::default();
    for s in step.secrets.iter().filter(|s| values.contains_key(&s.name)) {
        secrets.insert(s.name.clone(), Secret::new(values[&s.name].clone(), s.bound_to.clone()));
    }
    for s in &step.secrets {
        if let Some(set) = read.aws.get(&s.name) {
            secrets.insert_aws(set.clone(), s.bound_to.clone());
        }
    }
    let mut databases = Databases::default();
    for d in step.databases.iter().filter(|d| values.contains_key(&d.password.name)) {
        let password = values[&d.password.name].clone();
        databases.insert(Database { grant: d.grant.clone(), password, preflight_of_writable: false });
    }
    let units = step
        .capabilities
        .iter()
        .map(|(name, g)| {
            let secrets = g.secrets.iter().filter_map(|s| Some((s.name.clone(), values.get(&s.name)?.clone()))).collect();
            (name.clone(), GrantInUse { grant: g.grant.clone(), secrets })
        })
        .collect();
    Grants {
        network: step.network.clone(),
        secrets,
        files,
        databases,
        units,
        reads_only: false,
    }
}

/// The secrets of a run: values by name (never journaled), and which source answered each.
pub struct SecretsRead {
    /// Values by secret name.
    pub values: BTreeMap<String, String>,
    /// AWS credential sets by secret name, held and renewed by the host.
    pub aws: BTreeMap<String, Arc<AwsCredentials>>,
    /// The source that answered by secret name, and those passed over first.
    pub answered: BTreeMap<String, SecretAnswered>,
    /// Which provider gave each credential set, and until when.
    pub credentials: Vec<Renewal>,
}

impl SecretsRead {
    /// The journal's record of where the values came from: never the values.
    fn events(&self) -> Vec<Event> {
        let answered = (!self.answered.is_empty()).then(|| Event::SecretsRead { answered: self.answered.clone() });
        answered.into_iter().chain(self.credentials.iter().map(Event::from)).collect()
    }

    /// Journals every renewal of a credential set from now on, as it happens.
    fn journal_renewals(&self, ctx: &Arc<Ctx>) {
        for set in self.aws.values() {
            let ctx = Arc::downgrade(ctx);
            set.observe(Arc::new(move |renewal| {
                if let Some(ctx) = ctx.upgrade() {
                    ctx.record(Event::from(renewal));
                }
            }));
        }
    }
}

impl From<&Renewal> for Event {
    fn from(r: &Renewal) -> Self {
        Event::AwsCredentials {
            secret: r.name.clone(),
            provider: r.provider.clone(),
            expires: r.expires.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            step: r.step.clone(),
        }
    }
}

/// Reads every secret the plan's steps use, each once, before any step runs: a source that fails
/// stops the run before anything changes, naming the secret and its source; in a chain, the first
/// available source answers.
/// `slow` hears, every [`SLOW_NOTICE`], of a secret whose sources have not answered yet.
pub async fn read_secrets(plan: &Plan, slow: &(dyn Fn(&str, &SecretFrom, Duration) + Sync)) -> Result<SecretsRead, RunError> {
    let reader = crate::capability::source::Reader::new(&plan.secret_stores);
    let mut read = SecretsRead {
        values: BTreeMap::new(),
        aws: BTreeMap::new(),
        answered: BTreeMap::new(),
        credentials: Vec::new(),
    };
    let unit_secrets = plan.steps.iter().flat_map(|step| step.capabilities.values().flat_map(|g| &g.secrets));
    let passwords = plan.steps.iter().flat_map(|step| step.databases.iter().map(|d| &d.password)).chain(unit_secrets);
    let step_secret_names: BTreeSet<&str> =
        plan.steps.iter().flat_map(|step| &step.secrets).map(|s| s.name.as_str()).collect();
    for s in plan.steps.iter().flat_map(|step| &step.secrets).chain(passwords) {
        if read.values.contains_key(&s.name) || read.aws.contains_key(&s.name) {
            continue;
        }
        if let Some(spec) = s.source.aws_credentials() {
            if !step_secret_names.contains(s.name.as_str()) {
                let message = "an AWS credential set only signs AWS requests: a password needs a secret with a value";
                return Err(RunError::Secret { name: s.name.clone(), message: message.into() });
            }
            let set = patiently(AwsCredentials::read(&s.name, spec), |waited| slow(&s.name, &s.source, waited))
                .await
                .map_err(|e| RunError::Secret { name: s.name.clone(), message: e.to_string() })?;
            read.credentials.push(set.held().await);
            read.aws.insert(s.name.clone(), set);
            continue;
        }
        let answer = patiently(reader.read(&s.source), |waited| slow(&s.name, &s.source, waited))
            .await
            .map_err(|message| RunError::Secret { name: s.name.clone(), message })?;
        for passed in &answer.passed_over {
            tracing::warn!("secret `{}`: {passed}: read from {} instead", s.name, answer.source);
        }
        let answered = SecretAnswered { source: answer.source.to_string(), passed_over: answer.passed_over };
        read.answered.insert(s.name.clone(), answered);
        read.values.insert(s.name.clone(), answer.value);
    }
    Ok(read)
}

/// Awaits `reading`, telling `slow` how long it has waited every [`SLOW_NOTICE`] until it is done.
async fn patiently<T>(reading: impl std::future::Future<Output = T>, slow: impl Fn(Duration)) -> T {
    tokio::pin!(reading);
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            done = &mut reading => return done,
            _ = tokio::time::sleep(SLOW_NOTICE) => slow(started.elapsed()),
        }
    }
}

/// Replaces `${{ steps.<id>.outputs.<name> }}` in every string of an input.
fn render_outputs(value: &serde_json::Value, outputs: &BTreeMap<String, Outputs>) -> serde_json::Value {
    expr::substitute(value, &|path: &[&str]| match path {
        ["steps", id, "outputs", name] => outputs.get(*id)?.get(*name).cloned(),
        _ => None,
    })
}

/// What a rollback leaves in place because of rollback barriers: each step that recorded one, and
/// every step it needs, directly or not. Steps after a barrier and beside it are undone as usual.
fn behind_barriers(ctx: &Ctx) -> BTreeSet<String> {
    let barriers: Vec<String> = ctx
        .checkpoints
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, c)| c.contains_key(BARRIER_CHECKPOINT))
        .map(|(id, _)| id.clone())
        .collect();
    let mut kept = BTreeSet::new();
    for id in barriers {
        kept.extend(upstream_of(ctx, &id));
        kept.insert(id);
    }
    kept
}

/// Records that the rollback stopped at the barriers of `kept`, naming each barrier's reason.
async fn stop_at_barriers(ctx: &Ctx, kept: &BTreeSet<String>) -> Result<(), JournalError> {
    let checkpoints = ctx.checkpoints.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let said: Vec<String> = kept
        .iter()
        .filter_map(|id| {
            let barrier = fold::Barrier::read(id, checkpoints.get(id)?.get(BARRIER_CHECKPOINT)?);
            Some(format!("`{id}` ({})", barrier.reason))
        })
        .collect();
    let reason = format!(
        "the rollback stopped at the barrier of {}: it and the steps it needs stay as they are",
        said.join(", ")
    );
    tracing::warn!("{reason}");
    ctx.enter(fold::RunPhase::AtBarrier, reason).await
}

fn upstream_of(ctx: &Ctx, id: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![id];
    while let Some(k) = todo.pop() {
        for n in &ctx.step(k).needs {
            if seen.insert(n.clone()) {
                todo.push(n);
            }
        }
    }
    seen
}

/// Upstream key under which every step sees the run so far (not a valid step id, so no clash).
pub const RUN_UPSTREAM: &str = "gantry.run";

/// Why a step did not produce outputs: its call failed, or the journal could not record its start.
enum Failure {
    Call(CallError),
    Journal(JournalError),
}

/// Runs one step with its retries; each attempt is journaled before it starts.
async fn attempt_step(
    ctx: Arc<Ctx>,
    id: String,
    input: serde_json::Value,
    upstream: BTreeMap<String, Outputs>,
    notifier: bool,
) -> Result<Outputs, Failure> {
    let step = ctx.step(&id).clone();
    let plugin = ctx.plugins[&id].clone();
    let mut input = input;
    let mut backoff = step.retry.backoff;
    let mut attempt = 1;
    loop {
        ctx.emit(Event::StepStarted { step: id.clone(), attempt, notifier }).await.map_err(Failure::Journal)?;
        ctx.attempts.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), attempt);
        if attempt == 1 && crate::inputs::holds_expression(&step.input) {
            if let Err(message) = fit_rendered(&ctx, &plugin, &step, &mut input).await {
                return Err(Failure::Call(CallError::Failed { step: id, message, retryable: false }));
            }
        }
        let call = ctx.call(&step, ctx.context(&id, attempt, input.clone(), ctx.with_checkpoints(&id, &upstream)));
        match plugin.run(&call).await {
            Ok(outputs) => return Ok(outputs),
            Err(e) if e.is_retryable() && attempt < step.retry.attempts => {
                let retrying = Event::StepRetrying {
                    step: id.clone(),
                    attempt,
                    error: e.to_string(),
                    backoff_ms: backoff.as_millis() as u64,
                };
                ctx.emit(retrying).await.map_err(Failure::Journal)?;
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(e) => return Err(Failure::Call(e)),
        }
    }
}

/// An input rendered with earlier steps' outputs, judged against its plugin's schema as `plan`
/// judged the rest: what reads as the wanted number or boolean is converted; what does not fit
/// fails the step before the plugin runs, naming the pipeline's file and line where it is known.
async fn fit_rendered(ctx: &Ctx, plugin: &Plugin, step: &PlannedStep, input: &mut serde_json::Value) -> Result<(), String> {
    // What the plugin says of itself is kept by digest: planning the run described it already.
    let runtime = plugin.runtime();
    let Some(info) = runtime.describe_file(plugin.path(), plugin.sha256()).await else { return Ok(()) };
    let found = crate::inputs::judge(&info.input_schema, input);
    if found.is_empty() {
        return Ok(());
    }
    // Read with the capabilities the runtime links: an embedder's pipeline names its own.
    let loaded = ctx.file.as_deref().and_then(|f| crate::pipeline::load_with(f, runtime.capabilities()).ok());
    let plan = &ctx.plan;
    let lines: Vec<String> = found
        .into_iter()
        .map(|(suffix, message)| {
            match loaded.as_ref().and_then(|l| Some((l, crate::inputs::locate(l, &plan.environment, &plan.entity, &step.id, &suffix)?))) {
                Some((l, (field, at))) => format!("{}:{}:{}: {field}: {message}", l.path.display(), at.line, at.column),
                None => format!("steps.{}.with{suffix}: {message}", step.id),
            }
        })
        .collect();
    Err(format!(
        "its input does not fit plugin `{}` once earlier steps' outputs are in: {}",
        info.name,
        lines.join("; ")
    ))
}

/// Loaded plugins and resolved grants by step id.
pub struct Prepared {
    /// Plugins, checked against the plan's hashes.
    pub plugins: BTreeMap<String, Plugin>,
    /// Grants, with secret values read from their sources.
    pub grants: BTreeMap<String, Grants>,
    /// Redacts every secret value of the run.
    pub redactor: Redactor,
}

/// Loads every plugin of the plan and resolves every grant with the secret values read for the run
/// ([`read_secrets`]), before any step runs.
pub fn prepare(runtime: &Runtime, plan: &Plan, artifacts: &Path, secrets: &SecretsRead) -> Result<Prepared, RunError> {
    let mut plugins = BTreeMap::new();
    let mut grants = BTreeMap::new();
    let mut by_path = std::collections::HashMap::new();
    for step in &plan.steps {
        // Each file is read and checked once; the runtime shares one compiled component per digest.
        let plugin = match by_path.get(step.plugin.as_path()) {
            Some(plugin) => Plugin::clone(plugin),
            None => {
                let loaded =
                    runtime.load(&step.plugin).map_err(|source| RunError::Load { step: step.id.clone(), source })?;
                by_path.insert(step.plugin.as_path(), loaded.clone());
                loaded
            }
        };
        if plugin.sha256() != step.sha256 {
            return Err(RunError::PluginChanged {
                step: step.id.clone(),
                then: step.sha256.clone(),
                now: plugin.sha256().to_string(),
                path: step.plugin.clone(),
            });
        }
        plugins.insert(step.id.clone(), plugin);
        grants.insert(step.id.clone(), grants_for(step, artifacts, secrets));
    }
    // A plugin may know a value it was not granted: every step redacts every secret of the run.
    let redactor = Redactor::new(grants.values().flat_map(|g: &Grants| {
        let units = g.units.values().flat_map(|u| u.secrets.values().map(String::as_str));
        g.secrets.values().chain(g.databases.passwords()).chain(units)
    }));
    for g in grants.values_mut() {
        g.secrets.redact_with(redactor.clone());
    }
    // Credential sets add what they hold now, and every renewal, to the same redactor.
    secrets.aws.values().for_each(|set| set.redact_into(&redactor));
    Ok(Prepared { plugins, grants, redactor })
}

/// How a step task ended: the step id, its result, and whether a success's finish was recorded.
type StepEnd = (String, Result<Outputs, Failure>, Result<(), JournalError>);

/// The executor's state over one run: what each step did, what ran, what failed first.
struct Executor {
    ctx: Arc<Ctx>,
    /// Outputs of the steps that succeeded, kept beside `state` so starting a step copies nothing.
    succeeded: Arc<BTreeMap<String, Outputs>>,
    state: BTreeMap<String, State>,
    /// Steps that completed and count for rollback, in completion order.
    completed: Vec<String>,
    /// Steps that failed or were cancelled part-way, in the order they stopped: rolled back first
    /// when they left checkpoints.
    partial: Vec<String>,
    failed: bool,
    first_failure: Option<(String, String)>,
    journal_error: Option<JournalError>,
    /// Step tasks.
    tasks: tokio::task::JoinSet<StepEnd>,
    running: BTreeMap<tokio::task::Id, String>,
    jobs: usize,
    interrupt: Option<tokio::sync::watch::Receiver<Option<String>>>,
    /// The signal that stopped the run, once one did.
    interrupted: Option<String>,
    /// The step whose inconclusive result paused the run.
    paused: Option<String>,
    /// Gated steps approved; the step whose approval the run waits for.
    approved: BTreeSet<String>,
    awaiting: Option<String>,
    started_by: String,
    /// `failure()`/`always()` steps held back until the rollback is done, so they can report it.
    deferred: BTreeSet<String>,
    /// Whether deferred steps may start now.
    release_deferred: bool,
    /// Steps started after the pipeline had failed (notifiers): not part of what is undone.
    after_failure: BTreeSet<String>,
    /// What the rollback undid and what it could not, once it ran.
    undone: Option<Undone>,
    /// Plan steps before this index are settled: starting the next step looks at the rest only,
    /// so a run of many steps is not quadratic in them.
    unsettled_from: usize,
}

/// What a rollback did.
#[derive(Debug, Clone, Default)]
struct Undone {
    rolled_back: Vec<String>,
    failed: Vec<String>,
}

/// Waits until `interrupt` names a signal; forever when there is none to watch.
async fn signalled(interrupt: &mut Option<tokio::sync::watch::Receiver<Option<String>>>) -> String {
    if let Some(rx) = interrupt {
        if let Ok(signal) = rx.wait_for(Option::is_some).await {
            return signal.clone().unwrap_or_default();
        }
    }
    std::future::pending().await
}

impl Executor {
    fn new(ctx: Arc<Ctx>, options: &RunOptions) -> Self {
        let (completed, jobs) = (&options.completed, options.jobs);
        let mut state: BTreeMap<String, State> =
            ctx.plan.steps.iter().map(|s| (s.id.clone(), State::Pending)).collect();
        let mut order = Vec::new();
        let mut succeeded = BTreeMap::new();
        for (id, outputs) in completed {
            if state.contains_key(id) {
                state.insert(id.clone(), State::Succeeded(outputs.clone()));
                succeeded.insert(id.clone(), outputs.clone());
                order.push(id.clone());
            }
        }
        Self {
            ctx,
            state,
            succeeded: Arc::new(succeeded),
            completed: order,
            partial: Vec::new(),
            failed: false,
            first_failure: None,
            journal_error: None,
            tasks: tokio::task::JoinSet::new(),
            running: BTreeMap::new(),
            jobs: jobs.max(1),
            interrupt: options.interrupt.clone(),
            interrupted: None,
            paused: None,
            approved: options.approved.clone(),
            awaiting: None,
            started_by: if options.started_by.is_empty() {
                approval::current_user()
            } else {
                options.started_by.clone()
            },
            deferred: BTreeSet::new(),
            release_deferred: false,
            after_failure: BTreeSet::new(),
            undone: None,
            unsettled_from: 0,
        }
    }

    /// A signal asked the run to stop: it starts nothing more, cancels what runs, and will roll back.
    async fn interrupt(&mut self, signal: String) {
        self.interrupt = None;
        // The phase first: a crash right after the signal still leaves a run that only goes back.
        if let Err(e) = self.ctx.enter(fold::RunPhase::RollingBack, format!("interrupted by {signal}")).await {
            self.journal_failed(e);
        }
        if let Err(e) = self.ctx.emit(Event::Interrupted { signal: signal.clone() }).await {
            self.journal_failed(e);
        }
        self.failed = true;
        self.first_failure.get_or_insert_with(|| ("(interrupted)".into(), format!("interrupted by {signal}")));
        self.interrupted = Some(signal.clone());
        self.cancel_running(&format!("cancelled: the run was interrupted by {signal}")).await;
    }

    /// The outputs of every step that succeeded so far (shared, not copied, per step started).
    fn outputs(&self) -> Arc<BTreeMap<String, Outputs>> {
        self.succeeded.clone()
    }

    fn settled(&self, id: &str) -> bool {
        !matches!(self.state[id], State::Pending | State::Running)
    }

    /// The journal refused an event: the run stops here and rolls back, since nothing more may happen unrecorded.
    fn journal_failed(&mut self, e: JournalError) {
        if self.journal_error.is_none() {
            self.first_failure.get_or_insert_with(|| ("(journal)".into(), e.to_string()));
            self.journal_error = Some(e);
        }
        self.failed = true;
    }

    /// What a step is told about the run: status (`running`, `failed`, `paused`, `rolled-back`,
    /// `rollback-failed`), the step that failed and why, what was rolled back and what could not be.
    fn run_so_far(&self) -> Outputs {
        let ctx = &self.ctx;
        let status = match (&self.undone, &self.paused) {
            _ if !self.failed => "running",
            (_, Some(_)) => Status::Paused.name(),
            (Some(u), None) if !u.failed.is_empty() => Status::RollbackFailed.name(),
            (Some(_), None) => Status::RolledBack.name(),
            (None, None) => Status::Failed.name(),
        };
        let mut o =
            Outputs::from([("status".to_string(), status.to_string()), ("run_id".to_string(), ctx.run_id.clone())]);
        if let Some((step, error)) = &self.first_failure {
            o.insert("failed_step".into(), step.clone());
            o.insert("error".into(), ctx.redactor.redact(error));
        }
        if let Some(u) = &self.undone {
            o.insert("rolled_back".into(), u.rolled_back.join(","));
            o.insert("rollback_failed".into(), u.failed.join(","));
        }
        o
    }

    /// The steps not known to be settled, in plan order.
    fn unsettled(&self) -> &[PlannedStep] {
        &self.ctx.plan.steps[self.unsettled_from..]
    }

    /// Starts every step whose needs are settled, within the concurrency bound; skips those whose condition says no.
    async fn start_ready(&mut self) {
        let ctx = self.ctx.clone();
        let outputs = self.outputs();
        let steps = &ctx.plan.steps;
        while self.unsettled_from < steps.len() && self.settled(&steps[self.unsettled_from].id) {
            self.unsettled_from += 1;
        }
        for step in &steps[self.unsettled_from..] {
            if self.journal_error.is_some() || self.awaiting.is_some() || self.running.len() >= self.jobs {
                break;
            }
            if self.state[&step.id] != State::Pending || self.held_back(&step.id) {
                continue;
            }
            if let Some(signal) = &self.interrupted {
                let reason = format!("the run was interrupted by {signal}");
                self.skip(&step.id, reason).await;
                continue;
            }
            if !step.needs.iter().all(|n| self.settled(n)) {
                continue;
            }
            let needs_ok = step.needs.iter().all(|n| {
                matches!(self.state[n], State::Succeeded(_))
                    || (ctx.step(n).continue_on_error && self.state[n] == State::Failed)
            });
            let facts = Facts {
                failed: self.failed,
                needs_ok,
                cancelled: self.interrupted.is_some(),
                environment: &ctx.plan.environment,
                entity: &ctx.plan.entity,
                outputs: &outputs,
            };
            if !step.condition.eval(&facts) {
                let reason = match (step.condition.overrides_status(), needs_ok) {
                    (false, false) => "a needed step did not succeed".to_string(),
                    (false, true) if self.failed => "the pipeline has failed".to_string(),
                    _ => format!("condition `{}` is false", step.condition),
                };
                self.skip(&step.id, reason).await;
                continue;
            }
            if self.failed && !self.release_deferred {
                // A notifier runs once the rollback is done, so it reports what was undone, not what will be.
                self.deferred.insert(step.id.clone());
                continue;
            }
            if let Some(policy) = step.approval.as_ref().filter(|_| !self.approved.contains(&step.id)) {
                if self.failed {
                    // A failed run deploys nothing more; a gate is not opened to report it.
                    self.skip(&step.id, "it needs an approval and the pipeline has failed".into()).await;
                    continue;
                }
                let request = approval::Request::new(&step.id, policy, &self.started_by, store::now_ms());
                match ctx.emit(Event::ApprovalRequested(request)).await {
                    Ok(()) => self.awaiting = Some(step.id.clone()),
                    Err(e) => self.journal_failed(e),
                }
                continue;
            }
            if self.failed {
                self.after_failure.insert(step.id.clone());
            }
            let mut upstream: BTreeMap<String, Outputs> = upstream_of(&ctx, &step.id)
                .into_iter()
                .filter_map(|id| outputs.get(&id).map(|o| (id, o.clone())))
                .collect();
            upstream.insert(RUN_UPSTREAM.into(), self.run_so_far());
            let input = render_outputs(&step.input, &outputs);
            let notifier = self.failed;
            let handle = self.tasks.spawn({
                let (ctx, id) = (ctx.clone(), step.id.clone());
                async move {
                    let result = attempt_step(ctx.clone(), id.clone(), input, upstream, notifier).await;
                    // Recorded by the task, so steps finishing together share one journal sync.
                    let recorded = match &result {
                        Ok(outputs) => {
                            let attempt = ctx.attempt_of(&id);
                            ctx.emit(Event::StepFinished { step: id.clone(), outputs: outputs.clone(), attempt }).await
                        }
                        Err(_) => Ok(()),
                    };
                    (id, result, recorded)
                }
            });
            self.running.insert(handle.id(), step.id.clone());
            self.state.insert(step.id.clone(), State::Running);
        }
    }

    /// Records that a step will not run, and why.
    async fn skip(&mut self, id: &str, reason: String) {
        match self.ctx.emit(Event::StepSkipped { step: id.to_string(), reason }).await {
            Ok(()) => {
                self.state.insert(id.to_string(), State::Skipped);
            }
            Err(e) => self.journal_failed(e),
        }
    }

    /// Whether a `failure()`/`always()` step waits for the rollback to finish.
    fn held_back(&self, id: &str) -> bool {
        self.deferred.contains(id) && !self.release_deferred
    }

    /// Whether a pending step could start now (a skip can settle others).
    fn can_progress(&self) -> bool {
        self.journal_error.is_none()
            && self.awaiting.is_none()
            && self.unsettled().iter().any(|s| {
                self.state[&s.id] == State::Pending && !self.held_back(&s.id) && s.needs.iter().all(|n| self.settled(n))
            })
    }

    /// Records how one step ended.
    async fn settle(&mut self, id: String, result: Result<Outputs, Failure>) {
        let ctx = self.ctx.clone();
        match result {
            Ok(outputs) => {
                // Steps that started because the pipeline had failed (notifiers) are not part of what is undone;
                // a step whose finish the journal could not record still made its change, so it is.
                // (Its `step_finished` was written by its task.)
                let ran_after_failure = self.after_failure.contains(&id);
                if !ran_after_failure {
                    self.completed.push(id.clone());
                }
                Arc::make_mut(&mut self.succeeded).insert(id.clone(), outputs.clone());
                self.state.insert(id, State::Succeeded(outputs));
            }
            Err(Failure::Journal(e)) => {
                // The attempt never started: nothing to undo for it.
                self.state.insert(id, State::Failed);
                self.journal_failed(e);
                self.cancel_running("the journal could not be written").await;
            }
            Err(Failure::Call(_)) if ctx.take_requested(&id).is_some() && !self.failed => {
                // The step stopped at a gate: nothing is undone, it runs again (from its checkpoints) once approved.
                self.state.insert(id.clone(), State::Pending);
                self.awaiting = Some(id);
            }
            Err(Failure::Call(CallError::Inconclusive { message, .. }))
                if !ctx.step(&id).continue_on_error && !self.failed =>
            {
                // Nothing is undone: the person who decides sees the target as the step left it.
                if let Err(e) = ctx.emit(Event::Paused { step: id.clone(), reason: message.clone() }).await {
                    self.journal_failed(e);
                }
                self.state.insert(id.clone(), State::Failed);
                self.failed = true;
                self.first_failure = Some((id.clone(), message));
                self.paused = Some(id);
            }
            Err(Failure::Call(e)) => {
                let continue_on_error = ctx.step(&id).continue_on_error;
                if !continue_on_error && !self.failed {
                    // The phase before the failure: a crash between the two never rolls the run forward.
                    if let Err(je) = ctx.enter(fold::RunPhase::RollingBack, format!("step `{id}` failed")).await {
                        self.journal_failed(je);
                    }
                }
                let event = Event::StepFailed {
                    step: id.clone(),
                    kind: e.kind().into(),
                    error: e.to_string(),
                    continue_on_error,
                    attempt: ctx.attempt_of(&id),
                };
                if let Err(je) = ctx.emit(event).await {
                    self.journal_failed(je);
                }
                self.partial.push(id.clone());
                self.state.insert(id.clone(), State::Failed);
                if !continue_on_error && self.first_failure.is_none() {
                    self.failed = true;
                    self.first_failure = Some((id.clone(), e.to_string()));
                    self.cancel_running(&format!("cancelled because `{id}` failed")).await;
                }
            }
        }
    }

    /// Cancels what is still running: it ran for a pipeline that has failed.
    async fn cancel_running(&mut self, why: &str) {
        for (_, other) in std::mem::take(&mut self.running) {
            let event = Event::StepFailed {
                step: other.clone(),
                kind: "cancelled".into(),
                error: why.to_string(),
                continue_on_error: false,
                attempt: self.ctx.attempt_of(&other),
            };
            if let Err(e) = self.ctx.emit(event).await {
                self.journal_failed(e);
            }
            self.partial.push(other.clone());
            self.state.insert(other, State::Failed);
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Drives the DAG until nothing more can run.
    async fn drive(&mut self) {
        loop {
            self.start_ready().await;
            if self.running.is_empty() {
                if self.can_progress() {
                    continue;
                }
                break;
            }
            let joined = tokio::select! {
                joined = self.tasks.join_next_with_id() => joined,
                signal = signalled(&mut self.interrupt) => {
                    self.interrupt(signal).await;
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let (task_id, (id, result, recorded)) = match joined {
                Ok(done) => done,
                Err(e) => {
                    let id = self.running.get(&e.id()).cloned().unwrap_or_default();
                    let trap = CallError::Trap { step: id.clone(), message: format!("step task ended: {e}") };
                    (e.id(), (id, Err(Failure::Call(trap)), Ok(())))
                }
            };
            self.running.remove(&task_id);
            if let Err(e) = recorded {
                self.journal_failed(e);
            }
            self.settle(id, result).await;
        }
    }

    /// What a rollback undoes, in order: steps stopped part-way that left checkpoints (latest first),
    /// then completed steps, newest first.
    fn undo_order(&self) -> Vec<String> {
        undo_order(&self.ctx, &self.partial, &self.completed)
    }

    fn ids_in(&self, wanted: &State) -> Vec<String> {
        self.state.iter().filter(|(_, s)| *s == wanted).map(|(k, _)| k.clone()).collect()
    }
}

/// Refuses a plan that carries a secret's value (a literal in `with:`, a path, a URL): the journal
/// records the plan redacted, and resume and rollback would read a plan that is not the one that ran.
fn secret_free(plan: &Plan, redactor: &Redactor, values: &BTreeMap<String, String>) -> Result<(), RunError> {
    let recorded = serde_json::to_value(plan).unwrap_or_default();
    let mut redacted = recorded.clone();
    redactor.redact_json(&mut redacted);
    if redacted == recorded {
        return Ok(());
    }
    let text = recorded.to_string();
    let name = values.iter().find(|(_, v)| !v.is_empty() && text.contains(v.as_str())).map(|(n, _)| n.clone());
    Err(RunError::Secret {
        name: name.unwrap_or_else(|| "(one of the run's)".into()),
        message: "its value appears in the plan (a step's input, a path or a URL), which the journal records redacted: \
                  resume and rollback would read something other than what ran; use another value, or keep it out of the pipeline"
            .into(),
    })
}

/// Runs the plan in `session`, writing every event to its journal and, when given, to `events`.
pub async fn run(
    runtime: &Runtime,
    plan: &Plan,
    session: &Session,
    options: &RunOptions,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<RunResult, RunError> {
    let fresh = !options.resumed;
    if fresh {
        // Durable before any store is asked: `gantry runs` lists the run while a store is slow.
        let identity = Event::ReadingSecrets {
            run_id: session.run_id().to_string(),
            pipeline: plan.pipeline.clone(),
            environment: plan.environment.clone(),
            entity: plan.entity.clone(),
            rollout: options.rollout.clone(),
        };
        session.journal().write(identity.clone()).await?;
        show(&events, identity);
    }
    let slow = slow_secrets(session, fresh, events.clone());
    let started = async {
        let secrets = read_secrets(plan, &slow).await?;
        let prepared = prepare(runtime, plan, &session.artifacts(), &secrets)?;
        if fresh {
            secret_free(plan, &prepared.redactor, &secrets.values)?;
        }
        Ok::<_, RunError>((secrets, prepared))
    };
    let (secrets, prepared) = match started.await {
        Ok(started) => started,
        Err(e) if fresh => {
            // A run that could not start says so and ends: nothing ran, nothing is left to resume.
            let journal = session.journal();
            let failed = Event::StartFailed { error: e.to_string() };
            journal.write(failed.clone()).await?;
            show(&events, failed);
            journal.write(Event::RunFinished { status: Status::Failed.name().into() }).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let ctx = Arc::new(
        Ctx::new(prepared, plan, session, options.dry_run, events)
            .seed_checkpoints(&options.checkpoints)
            .with_options(options),
    );
    secrets.journal_renewals(&ctx);
    let started = Event::RunStarted {
        run_id: ctx.run_id.clone(),
        pipeline: plan.pipeline.clone(),
        environment: plan.environment.clone(),
        entity: plan.entity.clone(),
        plugins: plan.steps.iter().map(|s| (s.id.clone(), s.sha256.clone())).collect(),
        file: options.file.clone(),
        plan: serde_json::to_value(plan).unwrap_or_default(),
        started_by: Some(if options.started_by.is_empty() {
            approval::current_user()
        } else {
            options.started_by.clone()
        }),
        rollout: options.rollout.clone(),
    };
    // Resuming keeps the start the journal already has.
    if options.resumed {
        ctx.record(ctx.opened("resume"));
    } else {
        ctx.record(started);
        ctx.record(ctx.opened("run"));
    }
    secrets.events().into_iter().for_each(|e| ctx.record(e));
    match &options.preflight {
        Preflight::Read => {
            // Durable before the first read: a run stopped from here on reads again when resumed.
            ctx.enter(fold::RunPhase::Preflight, "each step reads what it depends on").await?;
            let found = preflight::run(&ctx).await;
            if !found.failures.is_empty() {
                let mut journal_error = None;
                finish(&ctx, Status::PreflightFailed, &mut journal_error).await;
                return Ok(RunResult {
                    status: Status::PreflightFailed,
                    outputs: BTreeMap::new(),
                    failed: Vec::new(),
                    skipped: plan.steps.iter().map(|s| s.id.clone()).collect(),
                    rolled_back: Vec::new(),
                    journal_error: journal_error.map(|e| e.to_string()),
                    preflight_failures: found.failures,
                });
            }
        }
        Preflight::Skipped(why) => ctx.emit(Event::PreflightSkipped { step: None, reason: why.clone() }).await?,
        Preflight::Past => {}
    }
    if options.resumed {
        // Durable before a step cut off part-way is undone and run again.
        ctx.enter(fold::RunPhase::Running, "resumed").await?;
    } else {
        // Durable with the first step's start, which waits for it.
        ctx.record(Event::Phase { phase: fold::RunPhase::Running, reason: "started".into() });
    }

    let mut exec = Executor::new(ctx.clone(), options);
    // A step cut off part-way by a crash is undone from its checkpoints before it runs again.
    let (mut rolled_back, mut rollback_failed) = (Vec::new(), false);
    if !options.partial.is_empty() {
        let order = undo_order(&ctx, &options.partial, &[]);
        let failed;
        (rolled_back, failed) = undo(&ctx, &order, &exec.outputs()).await;
        rollback_failed = !failed.is_empty();
        ctx.checkpoints.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| !rolled_back.contains(id));
        if rollback_failed {
            let reason = "a step cut off part-way could not be rolled back";
            if let Err(e) = ctx.enter(fold::RunPhase::RollingBack, reason).await {
                exec.journal_failed(e);
            }
            exec.failed = true;
            exec.first_failure = Some(("(resume)".into(), "a step cut off part-way could not be rolled back".into()));
        }
    }
    if !rollback_failed {
        exec.drive().await;
    }
    let mut at_barrier = false;
    if exec.failed && !rollback_failed && exec.paused.is_none() {
        // A barrier's step and what it needs stay; the rest is undone, newest first.
        let kept = behind_barriers(&ctx);
        let order: Vec<String> = exec.undo_order().into_iter().filter(|id| !kept.contains(id)).collect();
        let (more, failed) = undo(&ctx, &order, &exec.outputs()).await;
        rolled_back.extend(more);
        rollback_failed = !failed.is_empty();
        exec.undone = Some(Undone { rolled_back: rolled_back.clone(), failed });
        if !kept.is_empty() && !rollback_failed {
            at_barrier = true;
            if let Err(e) = stop_at_barriers(&ctx, &kept).await {
                exec.journal_failed(e);
            }
        }
    }
    if !exec.deferred.is_empty() {
        exec.release_deferred = true;
        exec.drive().await;
    }
    let status = match (exec.failed, rollback_failed, &exec.interrupted, &exec.paused) {
        (false, _, _, _) if exec.awaiting.is_some() => Status::AwaitingApproval,
        (false, _, _, _) => Status::Succeeded,
        (true, true, _, _) => Status::RollbackFailed,
        (true, false, _, None) if at_barrier => Status::StoppedAtBarrier,
        (true, false, Some(_), _) => Status::Interrupted,
        (true, false, None, Some(_)) => Status::Paused,
        (true, false, None, None) => Status::Failed,
    };
    let status = proven(session, status).await;
    finish(&ctx, status, &mut exec.journal_error).await;
    Ok(RunResult {
        status,
        outputs: Arc::unwrap_or_clone(exec.outputs()),
        failed: exec.ids_in(&State::Failed),
        skipped: exec.ids_in(&State::Skipped),
        rolled_back,
        journal_error: exec.journal_error.map(|e| e.to_string()),
        preflight_failures: Vec::new(),
    })
}

/// `status`, unless it says the run was rolled back and the journal, folded, cannot prove it: then
/// [`Status::NeedsAPerson`], naming the steps still in place. Only a run that went back pays for
/// reading its journal again.
async fn proven(session: &Session, status: Status) -> Status {
    if !matches!(status, Status::Failed | Status::Interrupted | Status::RolledBack) {
        return status;
    }
    let read = match session.journal().flush().await {
        Ok(()) => session.store().read(session.run_id()).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let in_place = match read {
        Ok(journal) => fold::fold(&journal.records).in_place(),
        // Its finish cannot be recorded either; the journal error says so.
        Err(_) => return status,
    };
    if in_place.is_empty() {
        return status;
    }
    tracing::error!(
        run = session.run_id(),
        "the journal cannot prove step(s) {} undone (cut off after a change with no checkpoint, or its rollback refused): check the target",
        in_place.join(", ")
    );
    Status::NeedsAPerson
}

async fn finish(ctx: &Ctx, status: Status, journal_error: &mut Option<JournalError>) {
    if let Err(e) = ctx.emit(Event::RunFinished { status: status.name().into() }).await {
        journal_error.get_or_insert(e);
    }
}

/// Steps stopped part-way that left checkpoints (latest first), then `completed` newest first.
fn undo_order(ctx: &Ctx, partial: &[String], completed: &[String]) -> Vec<String> {
    let with_checkpoints = partial.iter().rev().filter(|id| !ctx.checkpoints_of(id).is_empty());
    with_checkpoints.chain(completed.iter().rev()).cloned().collect()
}

/// Rolls back the steps of `order`, in that order, for steps that allow it; gives back the steps undone
/// and those whose rollback failed. Every step is tried even when the journal no longer records: undoing
/// a change matters more than writing down that it was undone.
async fn undo(ctx: &Arc<Ctx>, order: &[String], outputs: &BTreeMap<String, Outputs>) -> (Vec<String>, Vec<String>) {
    let mut rolled_back = Vec::new();
    let mut failed = Vec::new();
    for id in order {
        let step = ctx.step(id);
        if !step.rollback {
            continue;
        }
        let (result, attempt) = undo_step(ctx, step, outputs).await;
        let event = match result {
            Ok(_) => {
                rolled_back.push(id.clone());
                Event::RolledBack { step: id.clone(), attempt }
            }
            Err(e) => {
                failed.push(id.clone());
                Event::RollbackFailed { step: id.clone(), error: e.to_string(), attempt }
            }
        };
        if ctx.emit(event.clone()).await.is_err() {
            // Still shown, so the person who must reconcile the journal sees it.
            ctx.show(event);
        }
    }
    (rolled_back, failed)
}

/// Rolls back one step under its own timeout, retrying errors its plugin marks retryable (and
/// timeouts) as its retry policy allows, as `run` does; gives back the last attempt's result and number.
async fn undo_step(
    ctx: &Arc<Ctx>,
    step: &PlannedStep,
    outputs: &BTreeMap<String, Outputs>,
) -> (Result<Outputs, CallError>, u32) {
    let id = &step.id;
    // The step's own outputs go in as upstream under its id: what `run` recorded is what `rollback` undoes.
    let own = outputs.get(id).map(|o| BTreeMap::from([(id.clone(), o.clone())])).unwrap_or_default();
    let own = ctx.with_checkpoints(id, &own);
    let input = render_outputs(&step.input, outputs);
    let mut backoff = step.retry.backoff;
    let mut attempt = 1;
    loop {
        let call = ctx.call(step, ctx.context(id, attempt, input.clone(), own.clone()));
        match ctx.plugins[id].rollback(&call).await {
            Err(e) if e.is_retryable() && attempt < step.retry.attempts => {
                let retrying = Event::StepRetrying {
                    step: id.clone(),
                    attempt,
                    error: format!("rollback: {e}"),
                    backoff_ms: backoff.as_millis() as u64,
                };
                if ctx.emit(retrying.clone()).await.is_err() {
                    ctx.show(retrying);
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            result => return (result, attempt),
        }
    }
}

/// Undoes an earlier run (`gantry rollback <id>`, or `resume` of a run that was rolling back): steps
/// stopped part-way that left checkpoints, then completed steps newest first.
///
/// The rollback stops at rollback barriers (their steps and what they need stay, and the run ends
/// [`Status::StoppedAtBarrier`]) unless `past_barrier` is given by `by` (journaled before the first
/// undo) or was given earlier in the run: then every step is undone, the barriers' own steps undoing
/// what they still can.
pub async fn rollback(
    runtime: &Runtime,
    session: &Session,
    reopened: &resume::Reopened,
    past_barrier: Option<&str>,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<RunResult, RunError> {
    let plan = &reopened.plan;
    let secrets = read_secrets(plan, &slow_secrets(session, false, events.clone())).await?;
    let prepared = prepare(runtime, plan, &session.artifacts(), &secrets)?;
    let ctx = Arc::new(Ctx::new(prepared, plan, session, false, events).seed_checkpoints(&reopened.checkpoints));
    secrets.journal_renewals(&ctx);
    ctx.record(ctx.opened("rollback"));
    secrets.events().into_iter().for_each(|e| ctx.record(e));
    if let Some(by) = past_barrier.filter(|_| !reopened.fold.past_barrier) {
        ctx.emit(Event::PastBarrier { by: by.to_string() }).await?;
    }
    ctx.enter(fold::RunPhase::RollingBack, "rollback").await?;
    let past = past_barrier.is_some() || reopened.fold.past_barrier;
    let kept = if past { BTreeSet::new() } else { behind_barriers(&ctx) };
    let order: Vec<String> = reopened.fold.undo_order().into_iter().filter(|id| !kept.contains(id)).collect();
    let outputs: BTreeMap<String, Outputs> = reopened.completed.iter().cloned().collect();
    let (rolled_back, failed) = undo(&ctx, &order, &outputs).await;
    let status = match (failed.is_empty(), kept.is_empty()) {
        (false, _) => Status::RollbackFailed,
        (true, true) => Status::RolledBack,
        (true, false) => {
            stop_at_barriers(&ctx, &kept).await?;
            Status::StoppedAtBarrier
        }
    };
    let status = proven(session, status).await;
    let mut journal_error = session.journal().broken().cloned();
    finish(&ctx, status, &mut journal_error).await;
    Ok(RunResult {
        status,
        outputs: BTreeMap::new(),
        failed: Vec::new(),
        skipped: Vec::new(),
        rolled_back,
        journal_error: journal_error.map(|e| e.to_string()),
        preflight_failures: Vec::new(),
    })
}

/// What a run does with a slow secret: shows it, and journals it when the run is new (a resume or a
/// rollback writes nothing before its secrets are read, so a failed read leaves its journal as it was).
fn slow_secrets<'a>(
    session: &'a Session,
    journaled: bool,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> impl Fn(&str, &SecretFrom, Duration) + Sync + 'a {
    move |secret, from, waited| {
        let event =
            Event::SecretSlow { secret: secret.to_string(), from: from.to_string(), waited_ms: waited.as_millis() as u64 };
        if journaled {
            session.journal().record(event.clone());
        }
        show(&events, event);
    }
}

/// Sends `event` to the run's printer, if it has one.
fn show(events: &Option<mpsc::UnboundedSender<Event>>, event: Event) {
    if let Some(tx) = events {
        let _ = tx.send(event);
    }
}

/// Records that a second signal (`second`, after `first`) abandons the run at once: it may only go
/// back from here, and it needs a person to finish undoing it.
pub async fn abandon(journal: &Journal, first: &str, second: &str) -> Result<(), JournalError> {
    journal.write(Event::Phase { phase: fold::RunPhase::RollingBack, reason: format!("{first}, then {second}") }).await?;
    journal.write(Event::Abandoned { signal: second.to_string() }).await
}

/// Records that a person (`by`) accepts a run's state as it is: nothing more is run or undone, and
/// the run ends `settled`. One record, so no crash can leave a settle half-written.
pub async fn settle(session: &Session, by: &str, reason: &str) -> Result<(), JournalError> {
    session.journal().write(Event::Settled { by: by.to_string(), reason: reason.to_string() }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_is_a_typed_walk_that_cannot_fail_open() {
        // A secret equal to an event tag once broke the JSON round trip, and the event was written as it was.
        let r = Redactor::new(["step_finished", "hunter22"]);
        let event = Event::StepFinished {
            step: "deploy".into(),
            outputs: Outputs::from([("token".into(), "hunter22".into()), ("note".into(), "step_finished".into())]),
            attempt: 1,
        };
        let Event::StepFinished { outputs, .. } = event.redacted(&r) else { panic!("same variant") };
        assert!(outputs.values().all(|v| !v.contains("hunter22") && !v.contains("step_finished")), "{outputs:?}");
    }

    #[test]
    fn outputs_render_into_inputs() {
        let outputs = BTreeMap::from([("a".to_string(), Outputs::from([("id".to_string(), "42".to_string())]))]);
        let input = serde_json::json!({"url": "http://h/${{ steps.a.outputs.id }}/${{steps.a.outputs.id}}", "n": 1});
        assert_eq!(render_outputs(&input, &outputs), serde_json::json!({"url": "http://h/42/42", "n": 1}));
    }
}
