//! The wasmtime sandbox a step plugin runs in.
//!
//! A [`Runtime`] owns the engine, the linker with the host imports, the
//! compile cache and the epoch ticker. [`Runtime::load`] turns a component
//! file into a [`Plugin`] (checked against the contract, pre-instantiated);
//! each [`Plugin::run`] gets a fresh `Store` with its own WASI context (no
//! environment, no files, no sockets), memory limit and deadline, so one
//! misbehaving call never affects the next.

pub mod artifacts;
#[allow(missing_docs)]
pub mod bindings;
pub mod cache;
pub mod contract;
pub mod imports;
pub mod limits;
mod outbound;
mod pre;
pub mod sql;

pub use cache::{Cache, CacheStatus};
pub use contract::CONTRACT_VERSION;
pub use limits::Limits;
pub use outbound::{HttpLimits, RequestLog, RequestRecord};
pub use sql::SqlLimits;

use crate::capability::files::ARTIFACTS_GUEST_PATH;
use crate::capability::unit::{CallContext, CallLog, CallState};
use crate::capability::{Capabilities, Capability, Grants, Resolver};
use bindings::gantry::step::types as wit;
use bindings::Sandbox;
use pre::Pre;
use outbound::Refusal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx};

/// How often the epoch advances; the granularity of timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A core module was given where a component is needed.
    #[error("{path} is a core WebAssembly module, not a component: build it with `gantry plugin build <crate-dir>`, which componentizes it")]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// The bytes are not WebAssembly.
    #[error("{path} is not a WebAssembly component")]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// A component of some other world.
    #[error("{path} is not a gantry step: it does not export `gantry:step/plugin@{CONTRACT_VERSION}` (it exports: {exports}); build it with gantry-sdk and `gantry_sdk::export_step!`")]
    NotAStep {
        /// The file.
        path: PathBuf,
        /// What it exports instead.
        exports: String,
    },
    /// A step built for another contract version.
    #[error("{path} was built for contract gantry:step@{found}, but this host speaks gantry:step@{CONTRACT_VERSION}: rebuild it with a matching gantry-sdk")]
    IncompatibleContract {
        /// The file.
        path: PathBuf,
        /// The version it was built for.
        found: String,
    },
    /// The component imports an interface this host does not link.
    #[error("{path} imports `{interface}`, which {advice}")]
    Unprovided {
        /// The file.
        path: PathBuf,
        /// The interface, as the component names it.
        interface: String,
        /// What gantry offers instead, or where the interface comes from.
        advice: String,
    },
    /// Compilation or linking failed.
    #[error("cannot load {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        message: String,
    },
}

/// Why a step call did not return outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The plugin returned an error.
    #[error("step `{step}` failed: {message}")]
    Failed {
        /// Step id.
        step: String,
        /// The plugin's message.
        message: String,
        /// Whether the plugin says a retry may help.
        retryable: bool,
    },
    /// The plugin could not decide whether to go on (a gate without data): the run pauses for a person.
    #[error("step `{step}` is inconclusive: {message}")]
    Inconclusive {
        /// Step id.
        step: String,
        /// The plugin's message.
        message: String,
    },
    /// The call ran past its timeout and was stopped.
    #[error("step `{step}` timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// Step id.
        step: String,
        /// The timeout that was exceeded.
        after: Duration,
    },
    /// The plugin tried to grow its memory past the limit.
    #[error("step `{step}` exceeded its memory limit of {limit} bytes (tried to grow to {requested} bytes)")]
    MemoryLimit {
        /// Step id.
        step: String,
        /// The limit.
        limit: usize,
        /// The size the plugin asked for.
        requested: usize,
    },
    /// The plugin printed more than its output limit, or returned outputs larger than it.
    #[error("step `{step}` exceeded its output limit of {limit} bytes ({what})")]
    OutputLimit {
        /// Step id.
        step: String,
        /// The limit.
        limit: usize,
        /// Which output: stdout, stderr or outputs.
        what: String,
    },
    /// The host refused something the plugin asked for, and the plugin then failed.
    #[error("step `{step}` failed: {message}")]
    Refused {
        /// Step id.
        step: String,
        /// `network-denied`, `secret-denied` or `http-limit`.
        kind: &'static str,
        /// What the host refused and why.
        message: String,
    },
    /// The plugin left more in `/artifacts` than its limits allow; the directory was emptied.
    #[error("step `{step}` exceeded its artifacts limit of {bytes} bytes and {files} files ({used})")]
    ArtifactsLimit {
        /// Step id.
        step: String,
        /// The byte limit.
        bytes: usize,
        /// The file-count limit.
        files: usize,
        /// What was found.
        used: String,
    },
    /// The plugin trapped: a panic, stack overflow, unreachable code.
    #[error("step `{step}` crashed: {message}")]
    Trap {
        /// Step id.
        step: String,
        /// The trap and its backtrace.
        message: String,
    },
}

impl CallError {
    /// Whether a retry may help: plugin-marked errors and timeouts.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CallError::Failed { retryable: true, .. } | CallError::Timeout { .. })
    }

    /// A short, stable name for the kind of failure, for reports and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Failed { .. } => "failed",
            CallError::Inconclusive { .. } => "inconclusive",
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryLimit { .. } => "memory-limit",
            CallError::OutputLimit { .. } => "output-limit",
            CallError::ArtifactsLimit { .. } => "artifacts-limit",
            CallError::Refused { kind, .. } => kind,
            CallError::Trap { .. } => "trap",
        }
    }
}

/// What the plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginInfo {
    /// Short name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// JSON Schema of the `with:` input.
    pub input_schema: serde_json::Value,
    /// Capabilities it expects.
    pub capabilities: Vec<String>,
    /// The outputs it returns, when it declares them (contract 0.3.4).
    pub outputs: Option<Vec<DeclaredOutput>>,
}

/// An output a plugin declares it returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeclaredOutput {
    /// Read in a pipeline as `steps.<id>.outputs.<name>`.
    pub name: String,
    /// One line: what it holds.
    pub description: String,
}

/// One thing a step read in its pre-flight, and what it found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Check {
    /// What was read, e.g. `metric error_rate`.
    pub name: String,
    /// What the read found.
    pub answer: String,
    /// Whether the step can go ahead, as far as this check knows.
    pub passed: bool,
}

/// Where a step call happens and what it is given.
#[derive(Debug, Clone, Default)]
pub struct StepContext {
    /// Step id.
    pub step_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Environment, e.g. `staging`.
    pub environment: String,
    /// Business entity.
    pub entity: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Report-only run.
    pub dry_run: bool,
    /// The `with:` input.
    pub input: serde_json::Value,
    /// Outputs of the steps this one depends on, by step id.
    pub upstream: BTreeMap<String, BTreeMap<String, String>>,
}

/// One call of a step: context, grants and limits.
#[derive(Debug, Clone, Default)]
pub struct StepCall {
    /// Context handed to the plugin.
    pub context: StepContext,
    /// Capabilities granted.
    pub grants: Grants,
    /// Memory, time and output limits.
    pub limits: Limits,
    /// Caps on outgoing HTTP.
    pub http: HttpLimits,
    /// Caps on SQL.
    pub sql: SqlLimits,
    /// Receives a record of every request, for the journal.
    pub requests: Option<RequestLog>,
    /// Records the step's checkpoints durably; without it, `checkpoint` fails.
    pub checkpoints: Option<CheckpointLog>,
    /// Receives the step's log lines at `info` and above, redacted, up to [`LOG_LINES_KEPT`] per call.
    pub logs: Option<LineLog>,
    /// Answers `approval` (and records requests); without it, no gate is ever approved.
    pub approvals: Option<ApprovalLog>,
}

/// Answers a step's `approval(gate)`: true when approved in this run; false after durably recording a request.
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct ApprovalLog(
    pub Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync>,
);

impl std::fmt::Debug for ApprovalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApprovalLog")
    }
}

/// Most log lines of one call passed to a [`LineLog`]; the rest are counted in one last line.
pub const LOG_LINES_KEPT: usize = 1000;

/// How loud a plugin's log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Details for whoever debugs the plugin.
    Trace,
    /// Details for whoever debugs the run.
    Debug,
    /// What the step is doing.
    Info,
    /// Something an operator should look at.
    Warn,
    /// Something failed.
    Error,
}

/// Receives a step's log lines, for the journal.
#[derive(Clone)]
pub struct LineLog(pub Arc<dyn Fn(Level, String) + Send + Sync>);

impl std::fmt::Debug for LineLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineLog")
    }
}

/// Most bytes of one checkpoint's key, and of its value; most checkpoints per call.
pub const CHECKPOINT_LIMITS: (usize, usize, usize) = (256, 64 << 10, 1000);

/// Records a step's checkpoint (key, value) durably before the call goes on; `Err` says why it could not.
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct CheckpointLog(
    pub  Arc<
        dyn Fn(String, String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for CheckpointLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointLog")
    }
}

/// Outputs of a successful call.
pub type Outputs = BTreeMap<String, String>;

/// The sandbox's own state of one call, kept in its [`CallState`]: limits, outbound HTTP, SQL, the
/// step's log, checkpoints and approvals.
struct State {
    /// SQL connections and transactions handed to the plugin.
    table: ResourceTable,
    tracker: limits::Tracker,
    outbound: outbound::Outbound,
    sql: sql::Sql,
    /// Where the step's TCP connections (SQL, TLS probes) may go: `--resolve` answers and the
    /// restricted ranges its grants allow, as for its HTTP.
    resolver: Resolver,
    checkpoints: Option<CheckpointLog>,
    checkpointed: usize,
    approvals: Option<ApprovalLog>,
    logs: Option<LineLog>,
    logged: usize,
    /// Bytes of log lines printed, which count against the output limit, and what was dropped past it.
    log_bytes: usize,
    log_dropped: (usize, usize),
    log_limit: usize,
}

impl State {
    /// The store data of one call: WASI with only the granted directories, limits, outbound HTTP,
    /// and the state each registered capability prepares from the step's grant.
    fn new(runtime: &Runtime, call: &StepCall) -> Result<(CallState, MemoryOutputPipe, MemoryOutputPipe), CallError> {
        let step = call.context.step_id.clone();
        let setup = |message: String| CallError::Failed { step: step.clone(), message, retryable: false };
        let stdout = MemoryOutputPipe::new(call.limits.output_bytes);
        let stderr = MemoryOutputPipe::new(call.limits.output_bytes);
        // Nothing is inherited: no env, args, sockets or stdin; only the granted directories.
        let mut builder = WasiCtx::builder();
        builder.stdout(stdout.clone()).stderr(stderr.clone()).allow_tcp(false).allow_udp(false);
        builder.allow_ip_name_lookup(false);
        for grant in &call.grants.files.read {
            builder.preopened_dir(&grant.host, &grant.guest, FsPerms::ReadOnly).map_err(|e| {
                setup(format!("cannot open granted directory {} ({}): {e}", grant.host.display(), grant.guest))
            })?;
        }
        if let Some(dir) = &call.grants.files.artifacts {
            std::fs::create_dir_all(dir)
                .map_err(|e| setup(format!("cannot create artifacts directory {}: {e}", dir.display())))?;
            builder
                .preopened_dir(dir, ARTIFACTS_GUEST_PATH, FsPerms::ReadWrite)
                .map_err(|e| setup(format!("cannot open artifacts directory {}: {e}", dir.display())))?;
        }
        let wasi = builder.build();
        let client = runtime.inner.client(call.grants.network.addresses()).map_err(setup)?;
        let resolver = runtime.inner.resolver.allowing(call.grants.network.addresses().to_vec());
        let tracker = limits::Tracker::new(&call.limits);
        let log = call.logs.clone().map(|sink| CallLog(Arc::new(move |line: String| (sink.0)(Level::Info, line))));
        let context = CallContext {
            step: call.context.step_id.clone(),
            deadline: tracker.deadline,
            reads_only: call.grants.reads_only,
            resolver: resolver.clone(),
            redactor: call.grants.secrets.redactor().clone(),
            requests: call.requests.clone(),
            response_bytes: call.http.max_response_bytes,
            request_timeout: call.http.request_timeout,
            max_requests: call.http.max_requests,
            log,
        };
        let mut data = CallState::new(wasi);
        let units = &runtime.inner.capabilities;
        if let Some(unknown) = call.grants.units.keys().find(|name| units.get(name).is_none()) {
            return Err(setup(format!(
                "the step is granted capability `{unknown}`, which this host does not have (it has: {})",
                units.names().join(", ")
            )));
        }
        for unit in units.iter() {
            unit.prepare(call.grants.units.get(unit.name()), &context, &mut data)
                .map_err(|e| setup(format!("{}: {e}", unit.name())))?;
        }
        let state = Self {
            table: ResourceTable::new(),
            tracker,
            outbound: outbound::Outbound {
                step: call.context.step_id.clone(),
                grants: call.grants.clone(),
                limits: call.http,
                client,
                requests: 0,
                log: call.requests.clone(),
                refusal: None,
                hide_path: false,
                action: None,
            },
            sql: sql::Sql { databases: call.grants.databases.clone(), limits: call.sql, open: 0 },
            resolver,
            checkpoints: call.checkpoints.clone(),
            checkpointed: 0,
            approvals: call.approvals.clone(),
            logs: call.logs.clone(),
            logged: 0,
            log_bytes: 0,
            log_dropped: (0, 0),
            log_limit: call.limits.output_bytes,
        };
        data.insert(state);
        Ok((data, stdout, stderr))
    }

    /// The sandbox's state in a call's store.
    fn of(store: &mut Store<CallState>) -> &mut State {
        store.data_mut().slot::<State>()
    }
}

impl wit::Host for State {}

impl bindings::gantry::step::host::Host for State {
    async fn log(&mut self, level: wit::Level, message: String) {
        let step = self.outbound.step.as_str();
        if self.log_bytes + message.len() > self.log_limit {
            // Past the output limit nothing more is printed or journaled; the call fails with output-limit.
            self.log_dropped = (self.log_dropped.0 + 1, self.log_dropped.1 + message.len());
            return;
        }
        self.log_bytes += message.len();
        let message = self.outbound.grants.secrets.redact(&message);
        let level = match level {
            wit::Level::Trace => Level::Trace,
            wit::Level::Debug => Level::Debug,
            wit::Level::Info => Level::Info,
            wit::Level::Warn => Level::Warn,
            wit::Level::Error => Level::Error,
        };
        match level {
            Level::Trace => tracing::trace!(target: "gantry::plugin", step, "{message}"),
            Level::Debug => tracing::debug!(target: "gantry::plugin", step, "{message}"),
            Level::Info => tracing::info!(target: "gantry::plugin", step, "{message}"),
            Level::Warn => tracing::warn!(target: "gantry::plugin", step, "{message}"),
            Level::Error => tracing::error!(target: "gantry::plugin", step, "{message}"),
        }
        if let (Some(sink), true) = (&self.logs, level >= Level::Info) {
            self.logged += 1;
            match self.logged {
                n if n <= LOG_LINES_KEPT => (sink.0)(level, message),
                n if n == LOG_LINES_KEPT + 1 => {
                    (sink.0)(Level::Warn, format!("more than {LOG_LINES_KEPT} log lines: the rest are not journaled"))
                }
                _ => {}
            }
        }
    }

    async fn http(&mut self, req: wit::Request) -> Result<wit::Response, wit::HttpError> {
        let deadline = self.tracker.deadline;
        self.outbound.send(req, deadline).await
    }

    async fn sleep(&mut self, ms: u64) {
        // Never past the deadline: the timeout then fires as it should.
        let until = Instant::now() + Duration::from_millis(ms);
        tokio::time::sleep_until(until.min(self.tracker.deadline).into()).await;
    }

    async fn now(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    }

    async fn checkpoint(&mut self, key: String, value: String) -> Result<(), String> {
        let (max_key, max_value, max_count) = CHECKPOINT_LIMITS;
        if key.is_empty() || key.len() > max_key || value.len() > max_value {
            return Err(format!("a checkpoint key is 1 to {max_key} bytes and its value at most {max_value} bytes"));
        }
        self.checkpointed += 1;
        if self.checkpointed > max_count {
            return Err(format!("more than {max_count} checkpoints in one call"));
        }
        let Some(log) = &self.checkpoints else {
            return Err("this host records no checkpoints here: make no change that would need one".into());
        };
        // Waits until the journal has it: the plugin makes its change only after this returns.
        log.0(key, value).await
    }

    async fn approval(&mut self, gate: String) -> bool {
        let gate: String = gate.chars().take(CHECKPOINT_LIMITS.0).collect();
        match &self.approvals {
            Some(log) => log.0(gate).await,
            None => false,
        }
    }
}

/// Stops the epoch ticker thread when the last runtime handle goes.
struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Inner {
    engine: Engine,
    linker: Linker<CallState>,
    /// The capabilities linked, each preparing its state for every call.
    capabilities: Capabilities,
    cache: Option<Cache>,
    resolver: Resolver,
    /// HTTP clients by the restricted ranges their resolver lets through; most steps share the first.
    clients: Mutex<Vec<(Vec<ipnet::IpNet>, reqwest::Client)>>,
    /// Pre-instantiated components by sha256: every step, entity and environment running one
    /// component shares its compiled code (a load takes milliseconds, an instantiation microseconds).
    loaded: Mutex<BTreeMap<String, Pre<CallState>>>,
    _ticker: Ticker,
}

impl Inner {
    fn client(&self, ranges: &[ipnet::IpNet]) -> Result<reqwest::Client, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = clients.iter().find(|(r, _)| r == ranges) {
            return Ok(c.clone());
        }
        let client = http_client(self.resolver.allowing(ranges.to_vec()))?;
        clients.push((ranges.to_vec(), client.clone()));
        Ok(client)
    }
}

fn http_client(resolver: Resolver) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        // The host follows redirects itself so every hop is checked.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would connect on the step's behalf, past the address checks.
        .no_proxy()
        .dns_resolver(Arc::new(resolver))
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The plugin host: engine, linker, cache. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

/// Configures a [`Runtime`].
#[derive(Debug, Default)]
pub struct RuntimeBuilder {
    capabilities: Option<Result<Capabilities, crate::capability::unit::RegistryError>>,
    cache: Option<Option<PathBuf>>,
    resolve: BTreeMap<String, Vec<std::net::IpAddr>>,
    pool: Option<(u32, usize)>,
}

/// Core instances, memories and tables one plugin component may hold in a pooled slot: a Rust
/// component with the WASI adapter uses a handful of each.
const POOLED_CORE_INSTANCES: u32 = 32;
const POOLED_MEMORIES: u32 = 2;
const POOLED_TABLES: u32 = 4;
/// What a pooled slot keeps resident when a call ends: pages the call dirtied up to this much are
/// reset in place (Linux finds them with `PAGEMAP_SCAN`), so the next call on the slot neither
/// faults them in again nor makes the kernel flush other cores' TLBs; the rest is decommitted.
const POOLED_KEEP_RESIDENT: (usize, usize, usize) = (1 << 20, 64 << 10, 256 << 10);

impl RuntimeBuilder {
    /// Links these capabilities instead of [`Capabilities::builtin`]: the registry an embedder
    /// also loads its pipelines with ([`crate::pipeline::load_with`]).
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(Ok(capabilities));
        self
    }

    /// Adds a capability from outside the crate, beside the built-in ones: its WIT interface is
    /// linked for every plugin, and the steps granted it get its state. A name already taken
    /// fails [`RuntimeBuilder::build`].
    pub fn capability(mut self, unit: impl Capability) -> Self {
        let registered = match self.capabilities.take() {
            Some(Ok(all)) => all.with(unit),
            Some(Err(e)) => Err(e),
            None => Capabilities::builtin().with(unit),
        };
        self.capabilities = Some(registered);
        self
    }

    /// Caches compiled components in `dir` instead of the user cache directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = Some(Some(dir.into()));
        self
    }

    /// Compiles every component on load, caching nothing.
    pub fn no_cache(mut self) -> Self {
        self.cache = Some(None);
        self
    }

    /// Answers lookups of `name` with `addrs` instead of asking DNS (as curl's `--resolve` does).
    /// The answers are checked like any other: a restricted address still needs a grant.
    pub fn resolve(mut self, name: impl Into<String>, addrs: Vec<std::net::IpAddr>) -> Self {
        self.resolve.insert(name.into(), addrs);
        self
    }

    /// Keeps instance slots for reuse (wasmtime's pooling allocator, with copy-on-write memory
    /// images) for a host that runs at most `calls` step calls at once, each with at most
    /// `max_memory` bytes of linear memory: a call then reuses a slot instead of mapping and
    /// unmapping its memory. A call beyond `calls` at once fails to instantiate.
    pub fn pooled(mut self, calls: u32, max_memory: usize) -> Self {
        self.pool = Some((calls.max(1), max_memory));
        self
    }

    /// Builds the runtime and starts its epoch ticker.
    pub fn build(self) -> Result<Runtime, wasmtime::Error> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Bounds checks in the compiled code, not guard pages and signals: a call then never makes
        // the kernel change page protections (with guard pages, every reuse of a pooled slot shrank
        // it and every memory.grow widened it, each an mprotect that flushes other cores' TLBs).
        // A step's guest code is glue around I/O: fewer syscalls per call outweigh the checks.
        // Both kinds of engine compile alike, so `plan` and `run` share cache entries.
        config.signals_based_traps(false).memory_guard_size(0);
        let engine = match self.pool {
            Some((calls, max_memory)) => {
                let mut pool = wasmtime::PoolingAllocationConfig::default();
                pool.total_component_instances(calls)
                    .total_core_instances(calls * POOLED_CORE_INSTANCES)
                    .max_core_instances_per_component(POOLED_CORE_INSTANCES)
                    .total_memories(calls * POOLED_MEMORIES)
                    .max_memories_per_component(POOLED_MEMORIES)
                    .total_tables(calls * POOLED_TABLES)
                    .max_tables_per_component(POOLED_TABLES)
                    .max_memory_size(max_memory)
                    .total_stacks(calls)
                    .linear_memory_keep_resident(POOLED_KEEP_RESIDENT.0)
                    .table_keep_resident(POOLED_KEEP_RESIDENT.1)
                    .async_stack_keep_resident(POOLED_KEEP_RESIDENT.2)
                    .pagemap_scan(wasmtime::Enabled::Auto)
                    // A call takes a slot the same plugin used before (its image mapped, its pages
                    // resident) rather than a cold one: a run touches as many slots as calls overlap.
                    .max_unused_warm_slots(0)
                    // Returning a slot's pages to the kernel in batches, not per call.
                    .decommit_batch_size(calls as usize);
                config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
                Engine::new(&config).or_else(|e| {
                    // Reserving the slots' address space can fail where it is limited (ulimit -v).
                    tracing::warn!("instance pool unavailable ({e:#}); each call allocates its own");
                    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
                    Engine::new(&config)
                })?
            }
            None => Engine::new(&config)?,
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Sandbox::add_to_linker::<CallState, HasSelf<State>>(&mut linker, |s| s.slot::<State>())?;
        let capabilities = match self.capabilities {
            Some(registered) => registered.map_err(wasmtime::Error::msg)?,
            None => Capabilities::builtin(),
        };
        for unit in capabilities.iter() {
            unit.link(&mut linker)?;
        }

        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("gantry-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| wasmtime::Error::msg(format!("cannot start the epoch ticker: {e}")))?;

        let cache = match self.cache {
            Some(explicit) => explicit.map(Cache::new),
            None => Cache::default_dir().map(Cache::new),
        };
        let resolver = Resolver::new(self.resolve);
        let client = http_client(resolver.clone()).map_err(wasmtime::Error::msg)?;
        let clients = Mutex::new(vec![(Vec::new(), client)]);
        let loaded = Mutex::default();
        Ok(Runtime {
            inner: Arc::new(Inner { engine, linker, capabilities, cache, resolver, clients, loaded, _ticker: Ticker(stop) }),
        })
    }
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The capabilities it links.
    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    /// The compile cache, if any.
    pub fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_ref()
    }

    fn shared(&self, sha256: &str, path: &Path) -> Option<Plugin> {
        let pre = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(sha256)?.clone();
        Some(Plugin {
            runtime: self.clone(),
            pre,
            sha256: sha256.to_string(),
            cache_status: CacheStatus::Shared,
            load_time: Duration::ZERO,
            path: path.to_path_buf(),
        })
    }

    /// Loads a component file: checks it, compiles or loads it from cache, pre-instantiates it.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
        self.load_bytes(&bytes, path)
    }

    /// What the component at `path`, whose sha256 is `sha256`, says of itself: kept in the cache by
    /// digest, so describing it again neither loads nor instantiates it. `None` when it cannot be
    /// loaded or described; a run of it says why.
    pub async fn describe_file(&self, path: &Path, sha256: &str) -> Option<PluginInfo> {
        if let Some(info) = self.inner.cache.as_ref().and_then(|c| c.description(sha256)) {
            return Some(info);
        }
        let info = self.load(path).ok()?.describe().await.ok()?;
        if let Some(cache) = &self.inner.cache {
            cache.store_description(sha256, &info);
        }
        Some(info)
    }

    /// Loads a component from bytes; `path` names it in errors.
    pub fn load_bytes(&self, bytes: &[u8], path: &Path) -> Result<Plugin, LoadError> {
        let path_buf = path.to_path_buf();
        match contract::binary_kind(bytes) {
            contract::BinaryKind::Component => {}
            contract::BinaryKind::CoreModule => return Err(LoadError::CoreModule { path: path_buf }),
            contract::BinaryKind::Other => return Err(LoadError::NotWasm { path: path_buf }),
        }
        let sha256 = cache::sha256_hex(bytes);
        if let Some(plugin) = self.shared(&sha256, path) {
            return Ok(plugin);
        }
        let engine = &self.inner.engine;
        let invalid = |e: wasmtime::Error| LoadError::Invalid { path: path.to_path_buf(), message: format!("{e:#}") };
        let started = Instant::now();
        let (component, cache_status) = match &self.inner.cache {
            Some(cache) => cache.load_or_compile(engine, &sha256, bytes).map_err(invalid)?,
            None => (Component::new(engine, bytes).map_err(invalid)?, CacheStatus::Disabled),
        };
        let load_time = started.elapsed();
        tracing::debug!(plugin = %path.display(), %sha256, cache = ?cache_status, time = %crate::units::duration(load_time), "plugin loaded");
        contract::check(engine, &component).map_err(|m| match m {
            contract::Mismatch::NotAStep(exports) => LoadError::NotAStep {
                path: path.to_path_buf(),
                exports: if exports.is_empty() { "nothing".into() } else { exports.join(", ") },
            },
            contract::Mismatch::Version(found) => LoadError::IncompatibleContract { path: path.to_path_buf(), found },
        })?;
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| match unprovided(&e) {
            Some(interface) => LoadError::Unprovided {
                path: path.to_path_buf(),
                advice: contract::instead_of(&interface, &self.inner.capabilities.names()),
                interface,
            },
            None => invalid(e),
        })?;
        let pre = Pre::new(pre).map_err(invalid)?;
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        // Kept for the runtime's life; an embedder loading ever new components bounds it here.
        if loaded.len() >= 256 {
            loaded.clear();
        }
        loaded.insert(sha256.clone(), pre.clone());
        drop(loaded);
        Ok(Plugin { runtime: self.clone(), pre, sha256, cache_status, load_time, path: path_buf })
    }
}

/// The interface a component imports that the linker lacks, from wasmtime's error (which names it
/// in backquotes: "component imports instance `wasi:http/types@0.2.10`, but a matching
/// implementation was not found in the linker").
fn unprovided(e: &wasmtime::Error) -> Option<String> {
    let text = e.to_string();
    let rest = text.strip_prefix("component imports ")?;
    let (_, after) = rest.split_once('`')?;
    let (name, _) = after.split_once('`')?;
    Some(name.to_string())
}

/// A loaded, pre-instantiated plugin; each call instantiates it afresh.
#[derive(Clone)]
pub struct Plugin {
    runtime: Runtime,
    pre: Pre<CallState>,
    sha256: String,
    cache_status: CacheStatus,
    load_time: Duration,
    path: PathBuf,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("sha256", &self.sha256).finish()
    }
}

#[derive(Clone, Copy)]
enum Entry {
    Run,
    Rollback,
    Preflight,
}

/// What an entry point returned.
enum Answer {
    Outcome(wit::Outcome),
    /// A pre-flight's checks; `None` when the component has no pre-flight.
    Checks(Option<Vec<bindings::exports::gantry::step::preflight::Check>>),
}

impl Plugin {
    /// Hex sha256 of the component bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Whether loading hit the compile cache.
    pub fn cache_status(&self) -> CacheStatus {
        self.cache_status
    }

    /// Time spent compiling or deserializing.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The runtime it was loaded by.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn store(&self, call: &StepCall) -> Result<(Store<CallState>, MemoryOutputPipe, MemoryOutputPipe), CallError> {
        let (state, stdout, stderr) = State::new(&self.runtime, call)?;
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.slot::<State>().tracker);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let tracker = &mut ctx.data_mut().slot::<State>().tracker;
            if tracker.artifacts_over.load(Ordering::Relaxed) {
                Ok(UpdateDeadline::Interrupt)
            } else if Instant::now() >= tracker.deadline {
                tracker.timed_out = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yielding lets the tokio timeout below fire too.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok((store, stdout, stderr))
    }

    /// Asks the plugin to describe itself.
    pub async fn describe(&self) -> Result<PluginInfo, CallError> {
        let call = StepCall {
            context: StepContext { step_id: "describe".into(), ..Default::default() },
            ..Default::default()
        };
        let (mut store, stdout, stderr) = self.store(&call)?;
        let result = async {
            let loaded = self.pre.instantiate(&mut store).await?;
            let info = loaded.plugin.call_describe(&mut store).await?;
            let outputs = match &loaded.outputs {
                Some(outputs) => outputs.call_outputs(&mut store).await?,
                None => None,
            };
            wasmtime::Result::Ok((info, outputs))
        };
        let result = tokio::time::timeout(call.limits.timeout, result).await;
        let captured = forward_output(&call, &stdout, &stderr);
        let (info, outputs) = self.settle(&call, &mut store, result, &captured.stderr)?;
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            input_schema: serde_json::from_str(&info.input_schema).unwrap_or(serde_json::Value::Null),
            capabilities: info.capabilities,
            outputs: outputs.map(|list| list.into_iter().map(|o| DeclaredOutput { name: o.name, description: o.description }).collect()),
        })
    }

    /// Runs the step.
    pub async fn run(&self, call: &StepCall) -> Result<Outputs, CallError> {
        self.call(call, Entry::Run).await
    }

    /// Undoes the step.
    pub async fn rollback(&self, call: &StepCall) -> Result<Outputs, CallError> {
        self.call(call, Entry::Rollback).await
    }

    /// Asks the step what it depends on, before anything changes; `None` when the component
    /// has no pre-flight (built for a contract before 0.3.4). Give it [`Grants::for_preflight`].
    pub async fn preflight(&self, call: &StepCall) -> Result<Option<Vec<Check>>, CallError> {
        if !self.pre.has_preflight() {
            return Ok(None);
        }
        let checks = match self.answer(call, Entry::Preflight).await? {
            Answer::Checks(checks) => checks,
            Answer::Outcome(_) => None,
        };
        let redact = |text: &str| call.grants.secrets.redact(text);
        Ok(checks.map(|checks| {
            let check = |c: bindings::exports::gantry::step::preflight::Check| Check {
                name: redact(&c.name),
                answer: redact(&c.answer),
                passed: c.passed,
            };
            checks.into_iter().map(check).collect()
        }))
    }

    async fn call(&self, call: &StepCall, entry: Entry) -> Result<Outputs, CallError> {
        match self.answer(call, entry).await? {
            Answer::Outcome(outcome) => Ok(outcome.outputs.into_iter().collect()),
            Answer::Checks(_) => Ok(Outputs::new()),
        }
    }

    async fn answer(&self, call: &StepCall, entry: Entry) -> Result<Answer, CallError> {
        let ctx = wit::Context {
            step_id: call.context.step_id.clone(),
            pipeline: call.context.pipeline.clone(),
            environment: call.context.environment.clone(),
            entity: call.context.entity.clone(),
            attempt: call.context.attempt.max(1),
            dry_run: call.context.dry_run,
            input: call.context.input.to_string(),
            upstream: call
                .context
                .upstream
                .iter()
                .map(|(step, outputs)| wit::Upstream {
                    step: step.clone(),
                    outputs: outputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                })
                .collect(),
        };
        let (mut store, stdout, stderr) = self.store(call)?;
        let artifacts = call.grants.files.artifacts.clone();
        let watcher = artifacts.as_ref().map(|dir| {
            let over = State::of(&mut store).tracker.artifacts_over.clone();
            artifacts::watch(dir.clone(), call.limits.artifacts_bytes as u64, call.limits.artifact_files, over)
        });
        let result = async {
            let loaded = self.pre.instantiate(&mut store).await?;
            Ok(match (entry, loaded.preflight) {
                (Entry::Run, _) => loaded.plugin.call_run(&mut store, &ctx).await?.map(Answer::Outcome),
                (Entry::Rollback, _) => loaded.plugin.call_rollback(&mut store, &ctx).await?.map(Answer::Outcome),
                (Entry::Preflight, Some(p)) => p.call_preflight(&mut store, &ctx).await?.map(|c| Answer::Checks(Some(c))),
                (Entry::Preflight, None) => Ok(Answer::Checks(None)),
            })
        };
        let result = tokio::time::timeout(call.limits.timeout, result).await;
        watcher.inspect(tokio::task::JoinHandle::abort);
        if let Some(dir) = &artifacts {
            self.check_artifacts(call, dir)?;
        }
        let captured = forward_output(call, &stdout, &stderr);
        let secrets = &call.grants.secrets;
        let step = call.context.step_id.clone();
        let settled = self.settle(call, &mut store, result, &captured.stderr);
        let (lines, bytes) = State::of(&mut store).log_dropped;
        if lines > 0 {
            let limit = call.limits.output_bytes;
            tracing::warn!(target: "gantry::plugin", step, "log output over {limit} bytes: dropped {lines} lines ({bytes} bytes)");
        }
        if lines > 0 && !matches!(settled, Err(CallError::Timeout { .. } | CallError::MemoryLimit { .. })) {
            let what = format!("log: {lines} lines ({bytes} bytes) dropped");
            return Err(CallError::OutputLimit { step, limit: call.limits.output_bytes, what });
        }
        // A full pipe means writes were refused; whatever the plugin made of that, the limit was hit.
        if captured.full && !matches!(settled, Err(CallError::Timeout { .. } | CallError::MemoryLimit { .. })) {
            return Err(CallError::OutputLimit { step, limit: call.limits.output_bytes, what: "stdout/stderr".into() });
        }
        match settled? {
            Ok(Answer::Outcome(outcome)) => {
                let size: usize = outcome.outputs.iter().map(|(k, v)| k.len() + v.len()).sum();
                if size > call.limits.output_bytes {
                    return Err(CallError::OutputLimit {
                        step,
                        limit: call.limits.output_bytes,
                        what: format!("outputs of {size} bytes"),
                    });
                }
                let outputs = outcome.outputs.into_iter().map(|(k, v)| (k, secrets.redact(&v))).collect();
                Ok(Answer::Outcome(wit::Outcome { outputs }))
            }
            Ok(checks) => Ok(checks),
            Err(e) => Err(match State::of(&mut store).outbound.refusal.clone() {
                Some(refusal) => {
                    let (kind, host) = match refusal {
                        Refusal::Network(m) => ("network-denied", m),
                        Refusal::Secret(m) => ("secret-denied", m),
                        Refusal::Limit(m) => ("http-limit", m),
                    };
                    let message = secrets.redact(&format!("{host} (the plugin reported: {})", e.message));
                    CallError::Refused { step, kind, message }
                }
                None => {
                    let message = secrets.redact(&e.message);
                    match e.failure {
                        wit::Failure::Inconclusive => CallError::Inconclusive { step, message },
                        failure => CallError::Failed { step, message, retryable: failure == wit::Failure::Retryable },
                    }
                }
            }),
        }
    }

    /// Turns a finished, trapped or timed-out call into a value or a `CallError`.
    /// After a call: over its caps, `/artifacts` is emptied and the call fails; otherwise anything but
    /// regular files and directories is removed, and each removal is logged (and journaled).
    fn check_artifacts(&self, call: &StepCall, dir: &Path) -> Result<(), CallError> {
        let step = call.context.step_id.clone();
        let (removed, used) = artifacts::sanitise(dir);
        for what in &removed {
            let line = format!("removed {what} from /artifacts: only regular files and directories are kept");
            tracing::warn!(target: "gantry::plugin", step, "{line}");
            if let Some(sink) = &call.logs {
                (sink.0)(Level::Warn, line);
            }
        }
        if used.bytes > call.limits.artifacts_bytes as u64 || used.entries > call.limits.artifact_files {
            artifacts::clear(dir);
            return Err(CallError::ArtifactsLimit {
                step,
                bytes: call.limits.artifacts_bytes,
                files: call.limits.artifact_files,
                used: format!("found {} bytes in {} entries; removed them", used.bytes, used.entries),
            });
        }
        Ok(())
    }

    fn settle<T>(
        &self,
        call: &StepCall,
        store: &mut Store<CallState>,
        result: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
        stderr: &str,
    ) -> Result<T, CallError> {
        let step = call.context.step_id.clone();
        let tracker = &State::of(store).tracker;
        match result {
            Ok(Ok(value)) => Ok(value),
            Err(_) => Err(CallError::Timeout { step, after: call.limits.timeout }),
            Ok(Err(_)) if tracker.timed_out => Err(CallError::Timeout { step, after: call.limits.timeout }),
            Ok(Err(_)) if tracker.memory_exceeded.is_some() => Err(CallError::MemoryLimit {
                step,
                limit: call.limits.memory_bytes,
                requested: tracker.memory_exceeded.unwrap_or_default(),
            }),
            Ok(Err(e)) => {
                tracing::debug!(step = %step, "plugin trapped: {e:?}");
                Err(CallError::Trap { step, message: call.grants.secrets.redact(&trap_message(&e, stderr)) })
            }
        }
    }
}

/// Says what a trap was, with the plugin's panic message when it printed one.
fn trap_message(e: &wasmtime::Error, stderr: &str) -> String {
    let reason = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => "stack overflow".to_string(),
        Some(wasmtime::Trap::UnreachableCodeReached) => "the plugin aborted (wasm `unreachable`)".to_string(),
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    // Rust prints `thread '..' panicked at file:line:col:` then the message.
    let lines: Vec<&str> = stderr.lines().collect();
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => format!("{reason}: {}", lines[i..].iter().take(2).map(|l| l.trim()).collect::<Vec<_>>().join(" ")),
        None => reason,
    }
}

/// What a call printed, read once from its pipes.
struct Captured {
    /// stderr as text, for trap messages.
    stderr: String,
    /// Whether either pipe reached its capacity.
    full: bool,
}

/// Sends what the plugin printed to stdout/stderr into the log, tagged with
/// the step; returns stderr for error messages and whether a pipe filled up.
fn forward_output(call: &StepCall, stdout: &MemoryOutputPipe, stderr: &MemoryOutputPipe) -> Captured {
    let step = call.context.step_id.as_str();
    let mut captured = Captured { stderr: String::new(), full: false };
    for (stream, pipe) in [("stdout", stdout), ("stderr", stderr)] {
        // `contents` copies the buffer: take it once per pipe.
        let contents = pipe.contents();
        captured.full |= contents.len() >= call.limits.output_bytes;
        let text = String::from_utf8_lossy(&contents);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(target: "gantry::plugin", step, stream, "{}", call.grants.secrets.redact(line));
        }
        if stream == "stderr" {
            captured.stderr = text.into_owned();
        }
    }
    captured
}
