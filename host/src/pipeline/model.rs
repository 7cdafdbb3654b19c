//! The typed pipeline file. Every node a semantic error can point at keeps its
//! position ([`Loc`]); the JSON Schema published by `gantry schema` is derived
//! from these same types, so the parser and the schema cannot drift.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// A 1-based line and column in a pipeline file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl Position {
    pub(crate) fn of(span: &marked_yaml::Span) -> Self {
        span.start().map(|m| Position { line: m.line(), column: m.column() }).unwrap_or_default()
    }
}

/// A value with the position it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc<T> {
    /// The value.
    pub value: T,
    /// Where it starts in the file.
    pub at: Position,
}

impl<T> std::ops::Deref for Loc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de> + Clone> Deserialize<'de> for Loc<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = marked_yaml::Spanned::<T>::deserialize(deserializer)?;
        let at = Position::of(spanned.span());
        // marked-yaml offers no way to move the value out of its wrapper.
        Ok(Loc { value: (*spanned).clone(), at })
    }
}

impl<T: JsonSchema> JsonSchema for Loc<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// A deployment pipeline.
///
/// Example:
/// ```yaml
/// name: gallery-release
/// steps:
///   - id: health
///     uses: plugins/http-check
///     with: { url: "https://the7space.example/health" }
///     network: ["https://the7space.example"]
/// ```
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Name of the pipeline; runs and locks are keyed by it.
    pub name: Loc<String>,
    /// Variables for `${{ env.NAME }}`.
    #[serde(default)]
    pub env: BTreeMap<String, Loc<String>>,
    /// Allows `${VAR}` / `${VAR:-default}` from the process environment in `env:` values.
    #[serde(default)]
    pub process_env: bool,
    /// Secrets steps may use, by name. Example: `NOTION_TOKEN: { from: "env:NOTION_TOKEN", bind: ["https://api.notion.com"] }`
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretDef>,
    /// Secret managers that `aws-sm:` and `vault:` sources read from.
    #[serde(default)]
    pub secret_stores: SecretStoresDef,
    /// SQL databases steps may use, by name. Example: `app: { url: "postgres://db.internal/app", user: deploy, password: DB_PASSWORD }`
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseDef>,
    /// Credentials for the OCI registries plugins come from, by registry (`host[:port]`).
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryDef>,
    /// Per-environment overrides, e.g. `development`, `staging`, `production`.
    #[serde(default)]
    pub environments: BTreeMap<String, Overlay>,
    /// Per-business-entity overrides, e.g. `the_7_space`.
    #[serde(default)]
    pub entities: BTreeMap<String, Overlay>,
    /// How `--entity all` (or a list) rolls out: waves, and the failures that stop it.
    #[serde(default)]
    pub rollout: Option<RolloutDef>,
    /// The steps, a DAG through `needs:`.
    pub steps: Loc<Vec<StepDef>>,
    /// Values the run exports when it ends, by name: to `$GITHUB_OUTPUT` in GitHub Actions and the JSON report.
    ///
    /// Example: `outputs: { site_url: "${{ steps.deploy.outputs.url }}" }`
    #[serde(default)]
    pub outputs: BTreeMap<String, Loc<String>>,
}

/// Waves of entities for a run of many, e.g. `waves: [[the_7_space], 50%, rest]`, `failure_budget: 1`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutDef {
    /// Waves in order: a list of entities, a share of all selected entities (`25%`), or `rest`.
    pub waves: Vec<Loc<WaveDef>>,
    /// Once this many entities have failed, no further wave starts (default 1).
    #[serde(default)]
    pub failure_budget: Option<Loc<u32>>,
}

/// One wave as written: entity names, or `N%` / `rest`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WaveDef {
    /// These entities.
    Entities(Vec<String>),
    /// `N%` or `rest`.
    Share(String),
}

/// Where a secret comes from and where it may be sent.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretDef {
    /// `env:NAME`, `file:PATH`, `exec:COMMAND` (run without a shell; its stdout), `aws-sm:SECRET_ID[#JSON_KEY]`,
    /// `vault:MOUNT/data/PATH[#KEY]` or `aws-credentials:[OPTIONS]` (an AWS credential set, alone); or a list of them, the first available answering.
    pub from: Loc<FromDef>,
    /// Origins the secret may be sent to.
    pub bind: Vec<Loc<String>>,
}

/// A secret's source as written: one, or a fallback chain.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FromDef {
    /// One source.
    One(String),
    /// Sources in order: a source that is unavailable (unreachable, 5xx, unset) passes to the next.
    Chain(Vec<String>),
}

impl FromDef {
    /// The sources as written, in order.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Self::One(one) => vec![one.as_str()],
            Self::Chain(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

/// Secret managers the host reads secret values from.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretStoresDef {
    /// AWS Secrets Manager, for `aws-sm:SECRET_ID[#KEY]` sources.
    #[serde(default)]
    pub aws: Option<AwsStoreDef>,
    /// HashiCorp Vault's KV v2 engine, for `vault:MOUNT/data/PATH[#KEY]` sources.
    #[serde(default)]
    pub vault: Option<VaultStoreDef>,
}

/// HashiCorp Vault: where, and how the host signs in (a token, or an AppRole), each from another source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultStoreDef {
    /// Its origin, e.g. `https://vault.internal:8200` (`http://` only on loopback).
    pub address: Loc<String>,
    /// An Enterprise namespace, sent as `X-Vault-Namespace`.
    #[serde(default)]
    pub namespace: Option<Loc<String>>,
    /// Source of a token (`env:`, `file:` or `exec:`); `env:VAULT_TOKEN` when neither this nor `approle` is given.
    #[serde(default)]
    pub token: Option<Loc<String>>,
    /// AppRole sign-in instead of a token.
    #[serde(default)]
    pub approle: Option<AppRoleDef>,
    /// PEM file of CA certificates to trust besides the system roots; relative to the pipeline file.
    #[serde(default)]
    pub ca_file: Option<Loc<String>>,
    /// Longest one request to it may take, e.g. `5s` (default 10s).
    #[serde(default)]
    pub timeout: Option<Loc<String>>,
    /// Requests made while it is unreachable, times out or answers 5xx (default 3, at most 10).
    #[serde(default)]
    pub attempts: Option<Loc<u32>>,
}

/// AppRole sign-in: the ids' sources and the method's mount.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppRoleDef {
    /// Source of the role id (`env:`, `file:` or `exec:`).
    pub role_id: Loc<String>,
    /// Source of the secret id.
    pub secret_id: Loc<String>,
    /// Where AppRole is mounted; `approle` when left out.
    #[serde(default)]
    pub mount: Option<Loc<String>>,
}

/// AWS Secrets Manager: the region, and the sources of the credentials the host signs requests with.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsStoreDef {
    /// Region, e.g. `eu-west-1`.
    pub region: Loc<String>,
    /// The service's origin; `https://secretsmanager.<region>.amazonaws.com` when left out (`http://` only on loopback).
    #[serde(default)]
    pub endpoint: Option<Loc<String>>,
    /// Source of the access key id (`env:`, `file:` or `exec:`); `env:AWS_ACCESS_KEY_ID` when left out.
    #[serde(default)]
    pub access_key_id: Option<Loc<String>>,
    /// Source of the secret access key; `env:AWS_SECRET_ACCESS_KEY` when left out.
    #[serde(default)]
    pub secret_access_key: Option<Loc<String>>,
    /// Source of a session token, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<Loc<String>>,
    /// `aws-credentials:[OPTIONS]`: the AWS SDK's credential chain instead of the three sources above.
    #[serde(default)]
    pub credentials: Option<Loc<String>>,
    /// Longest one request to it may take, e.g. `5s` (default 10s).
    #[serde(default)]
    pub timeout: Option<Loc<String>>,
    /// Requests made while it is unreachable, times out or answers 5xx (default 3, at most 10).
    #[serde(default)]
    pub attempts: Option<Loc<u32>>,
}

/// A SQL database the host connects to for the steps that list it; the password is a declared secret.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseDef {
    /// `postgres://host[:port]/database` or `mysql://host[:port]/database` (MariaDB too), without credentials.
    pub url: Loc<String>,
    /// The user the host signs in as.
    pub user: Loc<String>,
    /// Name of a declared secret bound to the database's origin (`postgres://host:port`).
    pub password: Loc<String>,
    /// `require` (default: the server's certificate verified) or `disable` (only to a database on this machine).
    #[serde(default)]
    pub tls: Option<Loc<String>>,
    /// Only reading statements, each in a read-only transaction (default false).
    #[serde(default)]
    pub readonly: bool,
    /// PEM file of CA certificates to trust besides the system roots; relative to the pipeline file.
    #[serde(default)]
    pub ca_file: Option<Loc<String>>,
}

/// How gantry signs in to one registry; the password is a declared secret, never given to a plugin.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryDef {
    /// User name, as written.
    pub username: Loc<String>,
    /// Name of a declared secret bound to the registry's origin (`https://host`, or `http://` on loopback).
    pub password: Loc<String>,
}

/// What an environment or entity changes.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Variables that override the pipeline's `env:`.
    #[serde(default)]
    pub env: BTreeMap<String, Loc<String>>,
    /// Secret sources that override the pipeline's, by secret name (one source or a chain, as `from:`).
    #[serde(default)]
    pub secrets: BTreeMap<String, Loc<FromDef>>,
    /// Plugin swaps: step id → `uses:` value.
    #[serde(default)]
    pub plugins: BTreeMap<String, Loc<String>>,
    /// Input replacing a step's `with:` (whole, not merged), usually alongside a plugin swap: step id → input.
    #[serde(default, rename = "with")]
    pub with: BTreeMap<String, Loc<Input>>,
    /// Network narrowing: step id → the only origins it keeps (must be a subset of the step's).
    #[serde(default)]
    pub network: BTreeMap<String, Vec<Loc<String>>>,
    /// Databases that replace the pipeline's, by name, whole (e.g. production's host and user).
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseDef>,
}

/// Retry policy for errors the plugin marks retryable, and for timeouts.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total attempts, including the first (≥ 1).
    pub attempts: Loc<u32>,
    /// Wait before the first retry, doubled each time, e.g. `500ms`.
    #[serde(default)]
    pub backoff: Option<Loc<String>>,
}

/// Resource caps of one step attempt; unset ones keep their defaults.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepLimits {
    /// Largest linear memory, e.g. `64MiB` (default).
    #[serde(default)]
    pub memory: Option<Loc<String>>,
    /// Most bytes of stdout/stderr kept and of outputs returned, e.g. `1MiB` (default).
    #[serde(default)]
    pub output: Option<Loc<String>>,
    /// Most HTTP requests per attempt (default 10000).
    #[serde(default)]
    pub requests: Option<Loc<u32>>,
    /// Largest HTTP response body, e.g. `16MiB` (default).
    #[serde(default)]
    pub response_size: Option<Loc<String>>,
    /// Longest one HTTP request may take, e.g. `30s` (default).
    #[serde(default)]
    pub request_timeout: Option<Loc<String>>,
    /// Most bytes a step may leave in `/artifacts`, e.g. `256MiB` (default).
    #[serde(default)]
    pub artifacts: Option<Loc<String>>,
    /// Most files and directories a step may leave in `/artifacts` (default 10000).
    #[serde(default)]
    pub artifact_files: Option<Loc<u32>>,
    /// Most rows one SQL query may return (default 10000); its bytes count against `response_size`.
    #[serde(default)]
    pub rows: Option<Loc<u32>>,
}

/// One step of a pipeline.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Unique id, referenced by `needs:` and `steps.<id>.outputs`.
    pub id: Loc<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Plugin: a crate directory, a `.wasm` file, optionally `@sha256:<hex>`.
    pub uses: Loc<String>,
    /// Input for the plugin; string values may use `${{ ... }}` expressions.
    #[serde(default, rename = "with")]
    pub with: Option<Input>,
    /// Steps that must finish first.
    #[serde(default)]
    pub needs: Vec<Loc<String>>,
    /// Run condition: `success()` (default), `failure()`, `always()`, or an expression.
    #[serde(default, rename = "if")]
    pub condition: Option<Loc<String>>,
    /// Variables for this step, overriding the pipeline's.
    #[serde(default)]
    pub env: BTreeMap<String, Loc<String>>,
    /// Origins the step may reach.
    #[serde(default)]
    pub network: Vec<Loc<String>>,
    /// Names of the pipeline secrets the step may use.
    #[serde(default)]
    pub secrets: Vec<Loc<String>>,
    /// Names of the pipeline databases the step may open; the host signs in, the plugin never sees the password.
    #[serde(default)]
    pub databases: Vec<Loc<String>>,
    /// Restricted address ranges (private, loopback, ...) that names in `network:` may resolve to, e.g. `10.0.0.0/8`.
    #[serde(default)]
    pub addresses: Vec<Loc<String>>,
    /// Directories granted read-only, relative to the pipeline file; seen in the sandbox at `/<path>`.
    #[serde(default)]
    pub files: Vec<Loc<String>>,
    /// A writable directory for what the step produces, `/artifacts` in the sandbox, kept in the run directory.
    #[serde(default)]
    pub artifacts: bool,
    /// Wall-clock limit per attempt, e.g. `30s`.
    #[serde(default)]
    pub timeout: Option<Loc<String>>,
    /// Resource caps of one attempt.
    #[serde(default)]
    pub limits: Option<StepLimits>,
    /// Retry policy.
    #[serde(default)]
    pub retry: Option<Retry>,
    /// A failure of this step does not fail the pipeline.
    #[serde(default)]
    pub continue_on_error: bool,
    /// Whether this step is undone when a later one fails (default true).
    #[serde(default = "yes")]
    pub rollback: bool,
    /// A person must approve before the step starts; the run waits, recorded, and the process may exit.
    #[serde(default)]
    pub approval: Option<ApprovalDef>,
}

/// An approval gate before a step.
///
/// Example: `approval: { timeout: 24h, approvers: [alice, bob], prevent_self_review: true, environments: [production] }`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDef {
    /// Whether the gate is on (default true).
    #[serde(default = "yes")]
    pub required: bool,
    /// How long the request stands before it counts as rejected, e.g. `24h` (default).
    #[serde(default)]
    pub timeout: Option<Loc<String>>,
    /// Who may approve (`GANTRY_USER`, else the login name); anyone when empty.
    #[serde(default)]
    pub approvers: Vec<Loc<String>>,
    /// The user who started the run may not approve it.
    #[serde(default)]
    pub prevent_self_review: bool,
    /// Environments where the gate applies; every one when empty.
    #[serde(default)]
    pub environments: Vec<Loc<String>>,
}

/// A step's `with:` mapping. Its JSON form, with YAML scalars typed, is built
/// from the parsed nodes by the loader ([`crate::pipeline::Loaded::inputs`]).
#[derive(Debug, Clone, Default)]
pub struct Input;

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Input)
    }
}

impl JsonSchema for Input {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Input".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "object", "description": "Input for the plugin, checked against its input schema."})
    }
}

fn yes() -> bool {
    true
}
