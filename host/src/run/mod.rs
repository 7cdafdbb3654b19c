//! Runs a [`Plan`]: a tokio executor over the step DAG with bounded
//! concurrency, `if:` conditions, timeouts and retries; on failure it cancels
//! what is still running, runs the steps whose condition asks for it
//! (`failure()`, `always()`), then rolls back completed steps in reverse
//! completion order. Every event goes to the journal and the event stream.

pub mod journal;
pub mod resume;

use crate::capability::{FileGrant, Files, Grant, Grants, NetworkPolicy, Redactor, Secret, Secrets};
use crate::pipeline::expr::{self, Expr, Op};
use crate::plan::{Plan, PlannedStep};
use crate::sandbox::{
    CallError, HttpLimits, Limits, Outputs, Plugin, RequestLog, RequestRecord, Runtime, StepCall, StepContext,
};
use journal::{Journal, Record};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
    },
    /// An attempt of a step began.
    StepStarted {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
    },
    /// A step succeeded.
    StepFinished {
        /// Step id.
        step: String,
        /// Its outputs.
        outputs: Outputs,
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
    /// A completed step was undone.
    RolledBack {
        /// Step id.
        step: String,
    },
    /// Undoing a step failed.
    RollbackFailed {
        /// Step id.
        step: String,
        /// Why.
        error: String,
    },
    /// The run ended.
    RunFinished {
        /// succeeded, failed or rollback-failed.
        status: String,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every step that had to run succeeded.
    Succeeded,
    /// A step failed and rollback succeeded.
    Failed,
    /// A step failed and rollback failed: a person must look.
    RollbackFailed,
    /// Completed steps were undone on request (`gantry rollback`).
    RolledBack,
}

impl Status {
    /// The process exit code: 0, 1 or 3.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Succeeded => 0,
            Status::Failed => 1,
            Status::RollbackFailed => 3,
            Status::RolledBack => 0,
        }
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
    /// A grant or limit in the plan is invalid.
    #[error("step `{step}`: {message}")]
    Invalid {
        /// Step id.
        step: String,
        /// Cause.
        message: String,
    },
    /// The journal could not be written.
    #[error("journal: {0}")]
    Journal(#[from] std::io::Error),
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run id (names the run directory).
    pub run_id: String,
    /// Most steps running at once.
    pub jobs: usize,
    /// Steps report changes without making them.
    pub dry_run: bool,
    /// The pipeline file, recorded so the run can be resumed or rolled back.
    pub file: Option<PathBuf>,
    /// Steps already completed by an earlier, interrupted attempt of this run, in completion order.
    pub completed: Vec<(String, Outputs)>,
    /// Where steps with `artifacts: true` get their directory (`<dir>/<step id>`); by default a temporary directory.
    pub artifacts: Option<PathBuf>,
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
    plugins: BTreeMap<String, Plugin>,
    grants: BTreeMap<String, Grants>,
    journal: Arc<dyn Journal>,
    events: Option<mpsc::UnboundedSender<Event>>,
    dry_run: bool,
    /// Every secret value of the run, redacted from every event.
    redactor: Redactor,
    /// Run id, told to steps.
    run_id: String,
}

impl Ctx {
    fn emit(&self, event: Event) -> Result<(), RunError> {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or_default();
        let event = redact_event(&self.redactor, event);
        self.journal.append(&Record { ts_ms, event: event.clone() })?;
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
        Ok(())
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
                let _ = ctx.emit(Event::Request(record));
            }
        }));
        let l = step.limits;
        StepCall {
            context,
            grants: self.grants[&step.id].clone(),
            limits: Limits { memory_bytes: l.memory_bytes, output_bytes: l.output_bytes, ..Limits::default() },
            http: HttpLimits {
                max_requests: l.requests,
                max_response_bytes: l.response_bytes,
                request_timeout: Duration::from_millis(l.request_timeout_ms),
                ..HttpLimits::default()
            },
            requests: Some(log),
        }
    }

    fn step(&self, id: &str) -> &PlannedStep {
        self.plan.steps.iter().find(|s| s.id == id).expect("plan steps are indexed by id")
    }
}

/// Redacts every string of an event; events are small, so a round trip through JSON is cheap enough.
fn redact_event(redactor: &Redactor, event: Event) -> Event {
    if redactor.is_empty() {
        return event;
    }
    let Ok(mut value) = serde_json::to_value(&event) else { return event };
    redactor.redact_json(&mut value);
    serde_json::from_value(value).unwrap_or(event)
}

fn grants_for(step: &PlannedStep, artifacts: Option<&std::path::Path>) -> Result<Grants, RunError> {
    let invalid = |message: String| RunError::Invalid { step: step.id.clone(), message };
    let ranges = step
        .addresses
        .iter()
        .map(|a| crate::capability::address::parse_range(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let network = NetworkPolicy::parse(&step.network).map_err(|e| invalid(e.to_string()))?.with_addresses(ranges);
    let files = Files {
        read: step.files.iter().map(|f| FileGrant { host: f.host.clone(), guest: f.guest.clone() }).collect(),
        artifacts: match (step.artifacts, artifacts) {
            (true, Some(dir)) => Some(dir.join(&step.id)),
            (true, None) => {
                Some(std::env::temp_dir().join(format!("gantry-artifacts-{}", std::process::id())).join(&step.id))
            }
            (false, _) => None,
        },
    };
    let mut secrets = Secrets::default();
    for s in &step.secrets {
        let value = crate::capability::secrets::read_source(&s.source)
            .map_err(|message| RunError::Secret { name: s.name.clone(), message })?;
        let bound = s
            .bound_to
            .iter()
            .map(|o| Grant::parse(o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        secrets.insert(s.name.clone(), Secret::new(value, bound));
    }
    Ok(Grants { network, secrets, files })
}

/// Evaluates an `if:` condition; `failed` says whether the pipeline has failed so far.
fn condition(text: &str, failed: bool, environment: &str, entity: &str, outputs: &BTreeMap<String, Outputs>) -> bool {
    let inner = text.trim();
    let inner = inner.strip_prefix("${{").and_then(|t| t.strip_suffix("}}")).unwrap_or(inner);
    let Ok(e) = expr::parse(inner) else { return false };
    fn value(e: &Expr, failed: bool, env: &str, entity: &str, outputs: &BTreeMap<String, Outputs>) -> String {
        match e {
            Expr::Str(s) => s.clone(),
            Expr::Bool(b) => b.to_string(),
            Expr::Ref(path) => match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                ["environment"] => env.to_string(),
                ["entity"] => entity.to_string(),
                ["steps", id, "outputs", name] => {
                    outputs.get(*id).and_then(|o| o.get(*name)).cloned().unwrap_or_default()
                }
                _ => String::new(),
            },
            Expr::Call(f) => match f.as_str() {
                "success" => !failed,
                "failure" => failed,
                "always" => true,
                _ => false,
            }
            .to_string(),
            Expr::Not(inner) => (value(inner, failed, env, entity, outputs) != "true").to_string(),
            Expr::Binary(op, a, b) => {
                let (a, b) = (value(a, failed, env, entity, outputs), value(b, failed, env, entity, outputs));
                match op {
                    Op::Eq => a == b,
                    Op::Ne => a != b,
                    Op::And => a == "true" && b == "true",
                    Op::Or => a == "true" || b == "true",
                }
                .to_string()
            }
        }
    }
    value(&e, failed, environment, entity, outputs) == "true"
}

/// Replaces `${{ steps.<id>.outputs.<name> }}` in every string of an input.
fn render_outputs(value: &serde_json::Value, outputs: &BTreeMap<String, Outputs>) -> serde_json::Value {
    expr::substitute(value, &|path: &[&str]| match path {
        ["steps", id, "outputs", name] => outputs.get(*id)?.get(*name).cloned(),
        _ => None,
    })
}

fn upstream_of(plan: &Plan, id: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![id.to_string()];
    while let Some(k) = todo.pop() {
        if let Some(step) = plan.steps.iter().find(|s| s.id == k) {
            for n in &step.needs {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
    }
    seen
}

/// Upstream key under which every step sees the run so far (not a valid step id, so no clash).
pub const RUN_UPSTREAM: &str = "gantry.run";

/// What a step is told about the run: status, the step that failed and why, what will be rolled back.
fn run_so_far(ctx: &Ctx, failed: bool, first: &Option<(String, String)>, completed: &[String]) -> Outputs {
    let undo: Vec<&str> = completed.iter().rev().filter(|id| ctx.step(id).rollback).map(String::as_str).collect();
    let mut o = Outputs::from([
        ("status".to_string(), if failed { "failed" } else { "running" }.to_string()),
        ("run_id".to_string(), ctx.run_id.clone()),
    ]);
    if let Some((step, error)) = first {
        o.insert("failed_step".into(), step.clone());
        o.insert("error".into(), ctx.redactor.redact(error));
        o.insert("rolling_back".into(), undo.join(","));
    }
    o
}

/// Runs one step with its retries.
async fn attempt_step(
    ctx: Arc<Ctx>,
    id: String,
    input: serde_json::Value,
    upstream: BTreeMap<String, Outputs>,
) -> Result<Outputs, CallError> {
    let step = ctx.step(&id).clone();
    let plugin = ctx.plugins[&id].clone();
    let timeout =
        step.timeout.as_deref().and_then(|t| humantime::parse_duration(t).ok()).unwrap_or(Duration::from_secs(30));
    let mut backoff =
        step.backoff.as_deref().and_then(|b| humantime::parse_duration(b).ok()).unwrap_or(Duration::from_millis(500));
    let mut attempt = 1;
    loop {
        let _ = ctx.emit(Event::StepStarted { step: id.clone(), attempt });
        let mut call = ctx.call(&step, ctx.context(&id, attempt, input.clone(), upstream.clone()));
        call.limits.timeout = timeout;
        match plugin.run(&call).await {
            Ok(outputs) => return Ok(outputs),
            Err(e) if e.is_retryable() && attempt < step.attempts => {
                let _ = ctx.emit(Event::StepRetrying {
                    step: id.clone(),
                    attempt,
                    error: e.to_string(),
                    backoff_ms: backoff.as_millis() as u64,
                });
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
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

/// Loads every plugin of the plan and resolves every grant, before any step runs.
pub fn prepare(runtime: &Runtime, plan: &Plan, artifacts: Option<&std::path::Path>) -> Result<Prepared, RunError> {
    let mut plugins = BTreeMap::new();
    let mut grants = BTreeMap::new();
    for step in &plan.steps {
        let plugin = runtime.load(&step.plugin).map_err(|source| RunError::Load { step: step.id.clone(), source })?;
        if plugin.sha256() != step.sha256 {
            return Err(RunError::Invalid {
                step: step.id.clone(),
                message: format!(
                    "plugin changed since planning: {} is now sha256 {}",
                    step.plugin.display(),
                    plugin.sha256()
                ),
            });
        }
        plugins.insert(step.id.clone(), plugin);
        grants.insert(step.id.clone(), grants_for(step, artifacts)?);
    }
    // A plugin may know a value it was not granted: every step redacts every secret of the run.
    let redactor = Redactor::new(grants.values().flat_map(|g: &Grants| g.secrets.values()));
    for g in grants.values_mut() {
        g.secrets.redact_with(redactor.clone());
    }
    Ok(Prepared { plugins, grants, redactor })
}

/// Runs the plan, writing every event to `journal` and, when given, to `events`.
pub async fn run(
    runtime: &Runtime,
    plan: &Plan,
    options: &RunOptions,
    journal: Arc<dyn Journal>,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<RunResult, RunError> {
    let Prepared { plugins, grants, redactor } = prepare(runtime, plan, options.artifacts.as_deref())?;
    let ctx = Arc::new(Ctx {
        plan: plan.clone(),
        plugins,
        grants,
        journal,
        events,
        dry_run: options.dry_run,
        redactor,
        run_id: options.run_id.clone(),
    });
    ctx.emit(Event::RunStarted {
        run_id: options.run_id.clone(),
        pipeline: plan.pipeline.clone(),
        environment: plan.environment.clone(),
        entity: plan.entity.clone(),
        plugins: plan.steps.iter().map(|s| (s.id.clone(), s.sha256.clone())).collect(),
        file: options.file.clone(),
        plan: serde_json::to_value(plan).unwrap_or_default(),
    })?;

    let mut state: BTreeMap<String, State> = plan.steps.iter().map(|s| (s.id.clone(), State::Pending)).collect();
    let mut completed_order: Vec<String> = Vec::new();
    for (id, outputs) in &options.completed {
        if state.contains_key(id) {
            state.insert(id.clone(), State::Succeeded(outputs.clone()));
            completed_order.push(id.clone());
        }
    }
    let mut failed = false;
    let mut first_failure: Option<(String, String)> = None;
    let mut tasks: tokio::task::JoinSet<(String, Result<Outputs, CallError>)> = tokio::task::JoinSet::new();
    let mut running: BTreeMap<tokio::task::Id, String> = BTreeMap::new();
    let jobs = options.jobs.max(1);

    loop {
        // Start every step whose needs are settled, within the concurrency bound.
        let outputs: BTreeMap<String, Outputs> = state
            .iter()
            .filter_map(|(k, s)| if let State::Succeeded(o) = s { Some((k.clone(), o.clone())) } else { None })
            .collect();
        for step in &plan.steps {
            if state[&step.id] != State::Pending || running.len() >= jobs {
                continue;
            }
            let settled = step.needs.iter().all(|n| !matches!(state[n], State::Pending | State::Running));
            if !settled {
                continue;
            }
            let needs_ok = step.needs.iter().all(|n| {
                matches!(state[n], State::Succeeded(_)) || (ctx.step(n).continue_on_error && state[n] == State::Failed)
            });
            let wants = condition(&step.condition, failed, &plan.environment, &plan.entity, &outputs);
            let default_condition = step.condition.trim() == "success()";
            if !wants || (default_condition && !needs_ok) {
                let reason = if !wants {
                    format!("condition `{}` is false", step.condition)
                } else {
                    "a needed step did not succeed".into()
                };
                ctx.emit(Event::StepSkipped { step: step.id.clone(), reason })?;
                state.insert(step.id.clone(), State::Skipped);
                continue;
            }
            let mut upstream: BTreeMap<String, Outputs> = upstream_of(plan, &step.id)
                .into_iter()
                .filter_map(|id| outputs.get(&id).map(|o| (id, o.clone())))
                .collect();
            upstream.insert(RUN_UPSTREAM.into(), run_so_far(&ctx, failed, &first_failure, &completed_order));
            let input = render_outputs(&step.input, &outputs);
            let handle = tasks.spawn({
                let (ctx, id) = (ctx.clone(), step.id.clone());
                async move {
                    let result = attempt_step(ctx, id.clone(), input, upstream).await;
                    (id, result)
                }
            });
            running.insert(handle.id(), step.id.clone());
            state.insert(step.id.clone(), State::Running);
        }
        // A skipped step can settle others: loop again before waiting.
        let progressed_by_skip = plan.steps.iter().any(|s| {
            state[&s.id] == State::Pending
                && s.needs.iter().all(|n| !matches!(state[n], State::Pending | State::Running))
        });
        if running.is_empty() && !progressed_by_skip {
            break;
        }
        if running.is_empty() {
            continue;
        }
        let Some(joined) = tasks.join_next_with_id().await else { break };
        let (task_id, (id, result)) = match joined {
            Ok((task_id, value)) => (task_id, value),
            Err(e) => {
                let id = running.get(&e.id()).cloned().unwrap_or_default();
                (e.id(), (id.clone(), Err(CallError::Trap { step: id, message: format!("step task ended: {e}") })))
            }
        };
        running.remove(&task_id);
        match result {
            Ok(outputs) => {
                ctx.emit(Event::StepFinished { step: id.clone(), outputs: outputs.clone() })?;
                // Steps that ran because the pipeline failed (notifiers) are not part of what is undone.
                if !failed {
                    completed_order.push(id.clone());
                }
                state.insert(id, State::Succeeded(outputs));
            }
            Err(e) => {
                let continue_on_error = ctx.step(&id).continue_on_error;
                ctx.emit(Event::StepFailed {
                    step: id.clone(),
                    kind: e.kind().into(),
                    error: e.to_string(),
                    continue_on_error,
                })?;
                state.insert(id.clone(), State::Failed);
                if !continue_on_error && !failed {
                    failed = true;
                    first_failure = Some((id.clone(), e.to_string()));
                    // Cancel what is still running: it ran for a pipeline that has failed.
                    for (task, other) in std::mem::take(&mut running) {
                        let _ = task;
                        ctx.emit(Event::StepFailed {
                            step: other.clone(),
                            kind: "cancelled".into(),
                            error: format!("cancelled because `{id}` failed"),
                            continue_on_error: false,
                        })?;
                        state.insert(other, State::Failed);
                    }
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
            }
        }
    }

    let (rolled_back, rollback_failed) = if failed {
        let outputs = succeeded(&state);
        undo(&ctx, &completed_order, &outputs).await?
    } else {
        (Vec::new(), false)
    };
    let status = match (failed, rollback_failed) {
        (false, _) => Status::Succeeded,
        (true, false) => Status::Failed,
        (true, true) => Status::RollbackFailed,
    };
    finish(&ctx, status)?;
    Ok(RunResult {
        status,
        outputs: succeeded(&state),
        failed: state.iter().filter(|(_, s)| **s == State::Failed).map(|(k, _)| k.clone()).collect(),
        skipped: state.iter().filter(|(_, s)| **s == State::Skipped).map(|(k, _)| k.clone()).collect(),
        rolled_back,
    })
}

fn succeeded(state: &BTreeMap<String, State>) -> BTreeMap<String, Outputs> {
    state
        .iter()
        .filter_map(|(k, s)| if let State::Succeeded(o) = s { Some((k.clone(), o.clone())) } else { None })
        .collect()
}

fn finish(ctx: &Ctx, status: Status) -> Result<(), RunError> {
    ctx.emit(Event::RunFinished {
        status: serde_json::to_value(status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
    })?;
    Ok(())
}

/// Rolls back `order` (completion order) in reverse, for steps that allow it.
async fn undo(
    ctx: &Arc<Ctx>,
    order: &[String],
    outputs: &BTreeMap<String, Outputs>,
) -> Result<(Vec<String>, bool), RunError> {
    let mut rolled_back = Vec::new();
    let mut failed = false;
    for id in order.iter().rev() {
        let step = ctx.step(id);
        if !step.rollback {
            continue;
        }
        // The step's own outputs go in as upstream under its id: what `run` recorded is what `rollback` undoes.
        let own = outputs.get(id).map(|o| BTreeMap::from([(id.clone(), o.clone())])).unwrap_or_default();
        let call = ctx.call(step, ctx.context(id, 1, render_outputs(&step.input, outputs), own));
        match ctx.plugins[id].rollback(&call).await {
            Ok(_) => {
                ctx.emit(Event::RolledBack { step: id.clone() })?;
                rolled_back.push(id.clone());
            }
            Err(e) => {
                ctx.emit(Event::RollbackFailed { step: id.clone(), error: e.to_string() })?;
                failed = true;
            }
        }
    }
    Ok((rolled_back, failed))
}

/// Undoes the completed steps of an earlier run (`gantry rollback <id>`), newest first.
pub async fn rollback(
    runtime: &Runtime,
    plan: &Plan,
    completed: &[(String, Outputs)],
    journal: Arc<dyn Journal>,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<RunResult, RunError> {
    let Prepared { plugins, grants, redactor } = prepare(runtime, plan, None)?;
    let run_id = String::new();
    let ctx = Arc::new(Ctx { plan: plan.clone(), plugins, grants, journal, events, dry_run: false, redactor, run_id });
    let order: Vec<String> = completed.iter().map(|(id, _)| id.clone()).collect();
    let outputs: BTreeMap<String, Outputs> = completed.iter().cloned().collect();
    let (rolled_back, failed) = undo(&ctx, &order, &outputs).await?;
    let status = if failed { Status::RollbackFailed } else { Status::RolledBack };
    finish(&ctx, status)?;
    Ok(RunResult { status, outputs: BTreeMap::new(), failed: Vec::new(), skipped: Vec::new(), rolled_back })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_the_pipeline_status() {
        let none = BTreeMap::new();
        assert!(condition("success()", false, "production", "e", &none));
        assert!(!condition("success()", true, "production", "e", &none));
        assert!(condition("${{ failure() }}", true, "production", "e", &none));
        assert!(condition("always()", true, "production", "e", &none));
        assert!(condition("environment == 'production' && !failure()", false, "production", "e", &none));
        assert!(!condition("environment != 'production'", false, "production", "e", &none));
    }

    #[test]
    fn outputs_render_into_inputs() {
        let outputs = BTreeMap::from([("a".to_string(), Outputs::from([("id".to_string(), "42".to_string())]))]);
        let input = serde_json::json!({"url": "http://h/${{ steps.a.outputs.id }}/${{steps.a.outputs.id}}", "n": 1});
        assert_eq!(render_outputs(&input, &outputs), serde_json::json!({"url": "http://h/42/42", "n": 1}));
    }
}
