//! The seam a capability plugs into: one [`Capability`] implementation owns its fields in the
//! pipeline file, the check of a step's grant, what the plan keeps of it, what reviewers read of
//! it, the WIT interface it links and the state of each call. The loader, the planner, the review,
//! the run report and the sandbox loop over a [`Capabilities`] registry and name none of them; an
//! embedder registers its own beside the built-in ones.
//!
//! What a unit sees of the rest of the host is call-wide and shared ([`CallContext`]: the step, its
//! deadline and limits, the resolver its connections go through, the redactor, the journal), never
//! another capability's state.

use super::{Redactor, Resolver};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A power a step can be granted, as one unit (see the module documentation).
pub trait Capability: Send + Sync + 'static {
    /// Its name: a step's `<name>:` field, the top-level and overlay `<name>:` that declare what
    /// steps name, the word a plugin's `describe()` declares, its key in the plan.
    fn name(&self) -> &'static str;

    /// The JSON Schemas of its fields in the pipeline file.
    fn grammar(&self) -> Grammar;

    /// One step's grant: what the step wrote under `<name>:` and the other fields the unit owns
    /// (`step`), checked against the declarations in force for its environment and entity. Returns
    /// every problem at once, each by the field path it is about (`steps[2].redis[0]`,
    /// `redis.cache.url`), which the loader turns into the file's line. A `null` grant
    /// ([`Granted::of`]`(None)`) grants nothing: the step then holds none of the capability.
    fn grant(&self, step: &StepFields, declared: &Declarations, secrets: &dyn SecretBinds)
        -> Result<Granted, Vec<UnitProblem>>;

    /// The grant a plan recorded before this capability was a unit, read from the step as that
    /// plan wrote it (JSON), so its journal resumes and rolls back; `None` when it held none. Only
    /// capabilities that were once part of the host's own grammar have one.
    fn recorded_before(&self, step: &Value) -> Option<Value> {
        let _ = step;
        None
    }

    /// What an environment's or entity's `replacement` of a declaration reaches beyond the
    /// pipeline's own (`declared`): overlays move a grant (another host, another user) and narrow
    /// it, never widen it. By default any replacement is accepted.
    fn widening(&self, declared: &Written, replacement: &Written) -> Vec<UnitProblem> {
        let _ = (declared, replacement);
        Vec::new()
    }

    /// One line per thing the grant lets the step reach, never a secret value: what `plan` prints,
    /// `plan --diff` and a promotion compare, and the run report's grants table shows.
    fn describe(&self, grant: &Value) -> Vec<GrantLine>;

    /// Adds its WIT interface to the linker every call instantiates through (once per runtime).
    fn link(&self, linker: &mut Linker<CallState>) -> wasmtime::Result<()>;

    /// Puts the state of one call into `state`, from the step's grant (`None` when the step has
    /// none: then every use is refused) and the call's context. An `Err` stops the call before the
    /// plugin starts, with that message.
    fn prepare(&self, grant: Option<&GrantInUse>, call: &CallContext, state: &mut CallState) -> Result<(), String>;
}

impl dyn Capability {
    /// The step fields it owns: its name and [`Grammar::also`]'s.
    pub fn fields(&self) -> Vec<&'static str> {
        let mut fields = vec![self.name()];
        fields.extend(self.grammar().also.iter().map(|(field, _)| *field));
        fields
    }
}

/// A capability's fields in the pipeline file, as JSON Schemas (draft 2020-12, no `$ref`s).
#[derive(Debug, Clone)]
pub struct Grammar {
    /// What a step's `<name>:` holds, e.g. a list of declared names.
    pub step: Value,
    /// What one entry of the top-level `<name>:` mapping holds, when steps name declared
    /// resources; an environment or entity replaces an entry whole, by name.
    pub declaration: Option<Value>,
    /// Further step fields it owns beside `<name>:` (TLS's `tls_ca:`), each with its schema.
    pub also: Vec<(&'static str, Value)>,
    /// One line for the top-level field's description.
    pub about: &'static str,
    /// Schemes of the origins its secrets are bound to, with their default ports (`("redis", 6379)`):
    /// a secret's `bind:` may name them.
    pub origins: Vec<(&'static str, u16)>,
}

impl Grammar {
    /// The schema of `T` with its subschemas inline, for [`Grammar`]'s fields.
    pub fn schema_of<T: schemars::JsonSchema>() -> Value {
        let settings = schemars::generate::SchemaSettings::default().with(|s| s.inline_subschemas = true);
        let mut schema = serde_json::to_value(settings.into_generator().into_root_schema_for::<T>()).unwrap_or_default();
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
            object.remove("title");
        }
        schema
    }
}

/// What a step (or a declaration) wrote, as JSON, with the field path it was written at.
#[derive(Debug, Clone, Copy)]
pub struct Written<'a> {
    /// The field path, e.g. `steps[2].redis`.
    pub field: &'a str,
    /// The value.
    pub value: &'a Value,
}

/// What one step wrote in a capability's fields, with where, and the directory its paths are
/// relative to.
#[derive(Debug, Clone)]
pub struct StepFields {
    /// The step's field path, e.g. `steps[2]`.
    pub step: String,
    /// The pipeline file's directory: relative paths in a grant are relative to it.
    pub base: std::path::PathBuf,
    fields: Vec<(String, String, Value)>,
}

impl StepFields {
    /// `step`'s fields (name → value), as written in the file in `base`.
    pub fn new(step: impl Into<String>, base: impl Into<std::path::PathBuf>, fields: BTreeMap<String, Value>) -> Self {
        let step = step.into();
        let fields = fields.into_iter().map(|(name, value)| (format!("{step}.{name}"), name, value)).collect();
        StepFields { step, base: base.into(), fields }
    }

    /// The field `name`, when the step wrote it.
    pub fn get(&self, name: &str) -> Option<Written<'_>> {
        self.fields.iter().find(|(_, n, _)| n == name).map(|(field, _, value)| Written { field, value })
    }

    /// The path of field `name` (`steps[2].tls`), written or not, for a problem about it.
    pub fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.step)
    }
}

/// The declarations in force for one environment and entity, by name: the top-level ones, each
/// replaced whole by an environment's and then an entity's of the same name.
#[derive(Debug, Clone, Default)]
pub struct Declarations {
    /// Name → (the field path it was written at, its value).
    pub by_name: BTreeMap<String, (String, Value)>,
}

impl Declarations {
    /// The declaration called `name`, with where it was written.
    pub fn get(&self, name: &str) -> Option<Written<'_>> {
        self.by_name.get(name).map(|(field, value)| Written { field, value })
    }

    /// The declared names, for "declared: …" in a problem.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// The pipeline's declared secrets, as a grant check sees them: which exist and where each may go.
pub trait SecretBinds {
    /// The origins secret `name` is bound to (`scheme://host[:port]`), `None` when it is not declared.
    fn bound_to(&self, name: &str) -> Option<Vec<String>>;
}

impl SecretBinds for BTreeMap<String, Vec<String>> {
    fn bound_to(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).cloned()
    }
}

/// A problem of a grant, by field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitProblem {
    /// Where: a field path such as `redis.cache.prefixes[0]`.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl UnitProblem {
    /// A problem of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        UnitProblem { field: field.into(), message: message.into() }
    }
}

/// A checked grant: the capability's own typed value as JSON (it reads it back), and the declared
/// secrets whose values the host needs to act on it (read with the run's other secrets, never
/// handed to the plugin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Granted {
    /// The grant, as the capability serialises it.
    pub grant: Value,
    /// Names of the secrets the host signs in with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl Granted {
    /// `grant` with no secrets; nothing granted (`dns: []`) when `None`.
    pub fn of<T: Serialize>(grant: Option<T>) -> Self {
        Granted { grant: grant.map(|g| serde_json::to_value(g).unwrap_or_default()).unwrap_or_default(), secrets: Vec::new() }
    }

    /// Whether it grants nothing: then the step holds no grant of the capability.
    pub fn is_nothing(&self) -> bool {
        self.grant.is_null()
    }
}

/// Parses every entry of the list `value` written at `field`, each problem at its index.
pub fn parse_each<T>(
    field: &str,
    value: &Value,
    parse: impl Fn(&str) -> Result<T, String>,
    problems: &mut Vec<UnitProblem>,
) -> Vec<T> {
    let Some(items) = value.as_array() else {
        problems.push(UnitProblem::new(field, "a list of strings"));
        return Vec::new();
    };
    let mut parsed = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let text = item.as_str().map(str::to_string).unwrap_or_else(|| item.to_string());
        match parse(&text) {
            Ok(p) => parsed.push(p),
            Err(message) => problems.push(UnitProblem::new(format!("{field}[{i}]"), message)),
        }
    }
    parsed
}

/// A line of what a grant allows, for reviewers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantLine {
    /// Everything a reviewer reads: where, as whom, which secret from which source's name.
    pub review: String,
    /// What must match between environments for a promotion (not hosts, which differ by design).
    pub promotion: String,
}

impl GrantLine {
    /// A line that reads the same for review and promotion.
    pub fn same(text: impl Into<String>) -> Self {
        let text = text.into();
        GrantLine { review: text.clone(), promotion: text }
    }
}

/// A grant at run time: the plan's grant and the values of its secrets.
#[derive(Clone, PartialEq)]
pub struct GrantInUse {
    /// The grant, as the plan holds it.
    pub grant: Value,
    /// Secret values by name.
    pub secrets: BTreeMap<String, String>,
}

impl fmt::Debug for GrantInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&String> = self.secrets.keys().collect();
        f.debug_struct("GrantInUse").field("grant", &self.grant).field("secrets", &names).finish()
    }
}

/// The grants of registered capabilities one call holds, by capability name.
pub type UnitGrants = BTreeMap<String, GrantInUse>;

/// One request a plugin made (or tried to) through a host capability, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Step id.
    pub step: String,
    /// HTTP method, or the command (`SCAN`, `DEL`).
    pub method: String,
    /// `scheme://host[:port]`.
    pub origin: String,
    /// Path, without the query (which may carry data the journal should not keep).
    pub path: String,
    /// Response status, when one came.
    pub status: Option<u16>,
    /// Response body bytes.
    pub bytes: u64,
    /// Time from sending to the end of the body, in milliseconds.
    pub duration_ms: f64,
    /// Whether the host let the request out.
    pub allowed: bool,
    /// Why it was refused or failed.
    pub reason: Option<String>,
    /// The API action the request calls, where its protocol names one in the request
    /// (`Action=ModifyListener` in an AWS query body, `X-Amz-Target: ….UpdateService`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// Receives request records, for the journal.
#[derive(Clone)]
pub struct RequestLog(pub Arc<dyn Fn(RequestRecord) + Send + Sync>);

impl fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestLog")
    }
}

/// What every capability of one call reads: the step, its deadline and limits, the resolver its
/// connections go through, the redactor and the journal.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Step id.
    pub step: String,
    /// When the call times out: no host call waits past it.
    pub deadline: Instant,
    /// Only what reads goes out (a pre-flight).
    pub reads_only: bool,
    /// Where the step's connections may go: `--resolve` answers and the restricted ranges its grants allow.
    pub resolver: Resolver,
    /// Redacts every secret value of the run.
    pub redactor: Redactor,
    /// Receives a record of every request, for the journal.
    pub requests: Option<RequestLog>,
    /// Largest response one host call may return, in bytes.
    pub response_bytes: usize,
    /// Longest one host call may take.
    pub request_timeout: Duration,
    /// Most requests one call may make.
    pub max_requests: u32,
    /// Receives the step's log lines of what a host call did, when the call keeps a log.
    pub log: Option<CallLog>,
}

/// Receives a line of what a host call did (a handshake, a lookup), for the step's log.
#[derive(Clone)]
pub struct CallLog(pub Arc<dyn Fn(String) + Send + Sync>);

impl fmt::Debug for CallLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallLog")
    }
}

impl CallContext {
    /// The time one request may take from now: the request timeout, never past the deadline.
    pub fn request_budget(&self) -> Duration {
        self.request_timeout.min(self.deadline.saturating_duration_since(Instant::now()))
    }

    /// Logs what a host call did as a line of the step, redacted.
    pub fn line(&self, message: &str) {
        let message = self.redactor.redact(message);
        tracing::info!(target: "gantry::capability", step = self.step.as_str(), "{message}");
        if let Some(log) = &self.log {
            (log.0)(message);
        }
    }

    /// Journals one call that is not HTTP (a lookup, a handshake): what, where, since when, and
    /// why it was refused (`denied`) or failed, redacted.
    pub fn record_call(&self, method: String, origin: String, started: Instant, denied: Option<&str>, failed: Option<&str>) {
        self.record(RequestRecord {
            step: self.step.clone(),
            method,
            origin,
            path: String::new(),
            status: None,
            bytes: 0,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
            allowed: denied.is_none(),
            reason: denied.or(failed).map(|m| self.redactor.redact(m)),
            action: None,
        });
    }

    /// Journals a request, when the call has a journal.
    pub fn record(&self, record: RequestRecord) {
        if let Some(log) = &self.requests {
            (log.0)(record);
        }
    }
}

/// The store data of one call: the WASI context every plugin gets, and one state per unit (the
/// sandbox's own among them), each reached by its type.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    slots: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl CallState {
    /// A call's store data around its WASI context.
    pub fn new(wasi: WasiCtx) -> Self {
        CallState { wasi, table: ResourceTable::new(), slots: Vec::with_capacity(4) }
    }

    /// Keeps `state` for this call; a second state of one type replaces the first.
    pub fn insert<T: Send + 'static>(&mut self, state: T) {
        let id = TypeId::of::<T>();
        match self.slots.iter_mut().find(|(t, _)| *t == id) {
            Some(slot) => slot.1 = Box::new(state),
            None => self.slots.push((id, Box::new(state))),
        }
    }

    /// The state of type `T`, if prepared.
    pub fn get<T: Send + 'static>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.slots.iter_mut().find(|(t, _)| *t == id).and_then(|(_, s)| s.downcast_mut())
    }

    /// The state of type `T`, for a linker's getter. Every registered capability prepares its
    /// state before a call starts, so a missing one is a bug in the unit, not in a plugin.
    pub fn slot<T: Send + 'static>(&mut self) -> &mut T {
        match self.get::<T>() {
            Some(state) => state,
            None => panic!("no call state of type {}: its capability's prepare() did not insert it", std::any::type_name::<T>()),
        }
    }

    /// The call's resource table, for units whose interfaces hand out resources.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Why a capability cannot join a registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two capabilities, or a capability and a field of the pipeline grammar, share a name.
    #[error("capability `{0}` is already registered, or is a field the pipeline grammar uses")]
    Taken(String),
}

/// The capabilities a host knows, in registration order. Cheap to clone.
#[derive(Clone, Default)]
pub struct Capabilities(Arc<Vec<Arc<dyn Capability>>>);

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|c| c.name())).finish()
    }
}

/// Fields of a step, the top level or an overlay that the pipeline grammar itself uses: no
/// capability may take one.
const GRAMMAR_FIELDS: &[&str] = &[
    "id", "name", "uses", "with", "needs", "if", "env", "network", "secrets", "databases", "addresses", "files", "artifacts", "timeout", "limits", "retry", "continue_on_error", "rollback",
    "approval", "process_env", "secret_stores", "registries", "environments", "entities", "rollout", "steps", "plugins",
];

impl Capabilities {
    /// The capabilities gantry ships.
    pub fn builtin() -> Self {
        let mut all = Capabilities::default();
        for unit in super::builtin() {
            all = all.with_arc(unit).expect("built-in capabilities have distinct names");
        }
        all
    }

    /// These capabilities and `unit`; refused when its name is taken.
    pub fn with(self, unit: impl Capability) -> Result<Self, RegistryError> {
        self.with_arc(Arc::new(unit))
    }

    /// These capabilities and `unit`, shared; refused when its name is taken.
    pub fn with_arc(self, unit: Arc<dyn Capability>) -> Result<Self, RegistryError> {
        let fields = unit.fields();
        let taken = self.iter().flat_map(|c| c.fields()).chain(GRAMMAR_FIELDS.iter().copied()).collect::<Vec<_>>();
        if let Some(name) = fields.iter().find(|f| taken.contains(f)) {
            return Err(RegistryError::Taken(name.to_string()));
        }
        let mut all: Vec<Arc<dyn Capability>> = self.0.iter().cloned().collect();
        all.push(unit);
        Ok(Capabilities(Arc::new(all)))
    }

    /// The capability called `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Capability> {
        self.0.iter().find(|c| c.name() == name).map(|c| c.as_ref())
    }

    /// Every capability, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Capability> {
        self.0.iter().map(|c| c.as_ref())
    }

    /// Their names.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter().map(|c| c.name()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_state_keeps_one_state_per_type() {
        let mut state = CallState::new(WasiCtx::builder().build());
        state.insert(1u32);
        state.insert(String::from("a"));
        state.insert(2u32);
        assert_eq!(*state.slot::<u32>(), 2);
        assert_eq!(state.slot::<String>(), "a");
        assert!(state.get::<u64>().is_none());
    }

    struct Named(&'static str);

    impl Capability for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn grammar(&self) -> Grammar {
            Grammar { step: serde_json::json!({"type": "array"}), declaration: None, also: vec![], about: "", origins: vec![] }
        }
        fn grant(&self, _: &StepFields, _: &Declarations, _: &dyn SecretBinds) -> Result<Granted, Vec<UnitProblem>> {
            Ok(Granted { grant: Value::Null, secrets: vec![] })
        }
        fn describe(&self, _: &Value) -> Vec<GrantLine> {
            vec![]
        }
        fn link(&self, _: &mut Linker<CallState>) -> wasmtime::Result<()> {
            Ok(())
        }
        fn prepare(&self, _: Option<&GrantInUse>, _: &CallContext, _: &mut CallState) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_name_is_registered_once_and_never_one_the_grammar_uses() {
        let all = Capabilities::default().with(Named("tickets")).unwrap();
        assert_eq!(all.clone().with(Named("tickets")).unwrap_err(), RegistryError::Taken("tickets".into()));
        assert!(all.clone().with(Named("network")).is_err());
        assert_eq!(all.with(Named("pager")).unwrap().names(), ["tickets", "pager"]);
    }
}
