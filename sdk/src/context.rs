//! The step's view of its call: who it is, where it runs, what it was given.

use crate::__private::bindings::gantry::step::types as wit;
use crate::{Client, Error};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Everything a step call knows: ids, environment, entity, input, upstream outputs.
#[derive(Debug, Clone)]
pub struct Context {
    step_id: String,
    pipeline: String,
    environment: String,
    entity: String,
    attempt: u32,
    dry_run: bool,
    input: String,
    upstream: BTreeMap<String, BTreeMap<String, String>>,
    /// This step's checkpoints so far: from earlier attempts (given by the host) and this call.
    checkpoints: std::cell::RefCell<BTreeMap<String, String>>,
    /// Gates approved outside a host (unit tests); a host answers `approval` itself.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    approved: std::collections::BTreeSet<String>,
}

/// The upstream entry under which the host hands a step its own checkpoints.
const CHECKPOINTS_UPSTREAM: &str = "gantry.checkpoints";

impl Context {
    pub(crate) fn from_wit(ctx: wit::Context) -> Self {
        Self {
            step_id: ctx.step_id,
            pipeline: ctx.pipeline,
            environment: ctx.environment,
            entity: ctx.entity,
            attempt: ctx.attempt,
            dry_run: ctx.dry_run,
            input: ctx.input,
            upstream: ctx.upstream.into_iter().map(|u| (u.step, u.outputs.into_iter().collect())).collect(),
            checkpoints: Default::default(),
            approved: Default::default(),
        }
        .with_checkpoints_from_upstream()
    }

    fn with_checkpoints_from_upstream(mut self) -> Self {
        let given = self.upstream.remove(CHECKPOINTS_UPSTREAM).unwrap_or_default();
        self.checkpoints = std::cell::RefCell::new(given);
        self
    }

    /// A context for unit tests of a step's pure logic.
    ///
    /// ```
    /// let ctx = gantry_sdk::Context::for_test("check", serde_json::json!({"url": "http://x"}));
    /// assert_eq!(ctx.step_id(), "check");
    /// ```
    pub fn for_test(step_id: &str, input: serde_json::Value) -> Self {
        Self {
            step_id: step_id.to_string(),
            pipeline: "test".into(),
            environment: "development".into(),
            entity: "default".into(),
            attempt: 1,
            dry_run: false,
            input: input.to_string(),
            upstream: BTreeMap::new(),
            checkpoints: Default::default(),
            approved: Default::default(),
        }
    }

    /// Id of the step in its pipeline.
    pub fn step_id(&self) -> &str {
        &self.step_id
    }

    /// Name of the pipeline.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Environment the pipeline runs for, e.g. `production`.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// Business entity the pipeline runs for, e.g. `the_7_space`.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// 1 on the first attempt, 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// True when the step must only report what it would change.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// The step's `with:` input as raw JSON text.
    pub fn input_json(&self) -> &str {
        &self.input
    }

    /// The step's `with:` input, deserialized into the plugin's input type.
    ///
    /// A mismatch becomes a non-retryable error naming the offending field.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Input { probes: u32 }
    /// let ctx = gantry_sdk::Context::for_test("s", serde_json::json!({"probes": 3}));
    /// let input: Input = ctx.input().unwrap();
    /// assert_eq!(input.probes, 3);
    /// ```
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let text = if self.input.trim().is_empty() { "{}" } else { &self.input };
        serde_json::from_str(text).map_err(|e| Error::failed(format!("invalid input for step `{}`: {e}", self.step_id)))
    }

    /// An output of an earlier step this step depends on.
    pub fn upstream(&self, step: &str, output: &str) -> Option<&str> {
        self.upstream.get(step)?.get(output).map(String::as_str)
    }

    /// What the host says about the run so far, for notifiers: `status` (`running`, `failed`, `paused`,
    /// `rolled-back`, `rollback-failed`), `run_id`, after a failure `failed_step` and `error`, and once
    /// the rollback ran (before `failure()`/`always()` steps start) `rolled_back` and `rollback_failed`
    /// (comma-separated, in undo order).
    pub fn run_info(&self, key: &str) -> Option<&str> {
        self.upstream("gantry.run", key)
    }

    /// The same context with an upstream output set, for unit tests.
    pub fn with_upstream(mut self, step: &str, output: &str, value: &str) -> Self {
        self.upstream.entry(step.to_string()).or_default().insert(output.to_string(), value.to_string());
        self
    }

    /// In `rollback`: an output this step's `run` returned, so it can undo exactly what it did.
    pub fn recorded(&self, output: &str) -> Option<&str> {
        self.upstream(&self.step_id, output)
    }

    /// Records undo information in the run's journal before a change: call it *before* the side effect
    /// it protects, and make the change only when it returns `Ok`. A key keeps its first value for the
    /// whole step, across retries and resumes, so record what was there before the first change.
    /// `rollback` reads them back with [`Context::checkpointed`], whether `run` finished or not.
    ///
    /// ```
    /// let ctx = gantry_sdk::Context::for_test("shift", serde_json::json!({}));
    /// ctx.checkpoint("original_weights", "100,0").unwrap();
    /// ctx.checkpoint("original_weights", "95,5").unwrap(); // the first value stays
    /// assert_eq!(ctx.checkpointed("original_weights").as_deref(), Some("100,0"));
    /// ```
    pub fn checkpoint(&self, key: &str, value: &str) -> Result<(), Error> {
        if self.checkpoints.borrow().contains_key(key) {
            return Ok(());
        }
        #[cfg(target_arch = "wasm32")]
        crate::__private::bindings::gantry::step::host::checkpoint(key, value)
            .map_err(|e| Error::failed(format!("cannot record checkpoint `{key}`: {e}")))?;
        self.checkpoints.borrow_mut().insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Records that what this step is about to do cannot be undone (a migration without a down
    /// file, a message sent, a key deleted): a rollback after a later failure undoes what ran
    /// after this step, then stops here and waits for a person (`gantry resume`, `gantry rollback
    /// --past-barrier`, `gantry settle`) instead of failing. Call it *before* the change, as a
    /// checkpoint: a crash between the change and the record must not let a rollback walk past it.
    /// `changed` says what stays changed, for the person who decides. In a dry run, call it where
    /// the real run would: the host shows the step as a barrier ahead and records no barrier.
    ///
    /// ```
    /// let ctx = gantry_sdk::Context::for_test("migrate", serde_json::json!({}));
    /// ctx.barrier("V2 has no down file", "V2__drop_legacy.sql").unwrap();
    /// assert!(ctx.checkpointed(gantry_sdk::BARRIER_CHECKPOINT).unwrap().contains("no down file"));
    /// ```
    pub fn barrier(&self, reason: &str, changed: &str) -> Result<(), Error> {
        let value = serde_json::json!({ "reason": reason, "changed": changed }).to_string();
        self.checkpoint(crate::BARRIER_CHECKPOINT, &value)
    }

    /// A checkpoint this step recorded (in this call, an earlier attempt, or before a crash).
    pub fn checkpointed(&self, key: &str) -> Option<String> {
        self.checkpoints.borrow().get(key).cloned()
    }

    /// Whether a person approved going past `gate` (e.g. `stage 25%`) in this run. When not, the
    /// host has recorded a request for approval: return at once with an error, leaving things as
    /// they are; after `gantry approve` the step runs again with its checkpoints and should go on
    /// from where it stopped (this call then returns true). Outside a host (unit tests) only gates
    /// given with [`Context::with_approval`] are approved.
    pub fn approval(&self, gate: &str) -> bool {
        #[cfg(target_arch = "wasm32")]
        {
            crate::__private::bindings::gantry::step::host::approval(gate)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.approved.contains(gate)
        }
    }

    /// The same context with `gate` approved, for unit tests.
    pub fn with_approval(mut self, gate: &str) -> Self {
        self.approved.insert(gate.to_string());
        self
    }

    /// Every checkpoint this step recorded, by key.
    pub fn checkpoints(&self) -> BTreeMap<String, String> {
        self.checkpoints.borrow().clone()
    }

    /// The same context with a checkpoint already recorded, for unit tests of `rollback`.
    pub fn with_checkpoint(self, key: &str, value: &str) -> Self {
        self.checkpoints.borrow_mut().insert(key.to_string(), value.to_string());
        self
    }

    /// The HTTP client; requests are performed by the host under the step's network policy.
    pub fn http(&self) -> Client {
        Client::new()
    }
}
