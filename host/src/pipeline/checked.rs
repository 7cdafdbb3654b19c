//! What the meaning pass turns a pipeline's text into: plugin references,
//! conditions, durations, sizes, grants and secret sources as types. The
//! planner picks from these; nothing downstream parses pipeline text again.
//! Every default of a step lives here, in the `Default` impls.

use super::condition::Condition;
use super::source::PluginRef;
use crate::capability::{DatabaseGrant, FileGrant, Grant, SecretFrom, SecretStores};
use crate::sandbox::{HttpLimits, Limits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Retry policy of a step: attempts in all, and the wait before the first retry (doubled each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub attempts: u32,
    /// Wait before the first retry.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 1, backoff: Duration::from_millis(500) }
    }
}

/// An approval gate: who may approve a step before it starts, and how long the request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    /// After this long without a decision the request counts as rejected.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Who may approve; anyone when empty.
    pub approvers: Vec<String>,
    /// The user who started the run may not approve it.
    pub prevent_self_review: bool,
    /// Environments where the gate applies; every one when empty.
    pub environments: Vec<String>,
}

impl ApprovalPolicy {
    /// How long a request stands when the pipeline does not say.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

    /// Whether the gate applies to a run in `environment`.
    pub fn applies_in(&self, environment: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|e| e == environment)
    }
}

/// Resource caps of one step attempt, resolved to numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Wall-clock limit of an attempt, host calls included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest linear memory, bytes.
    pub memory_bytes: usize,
    /// stdout/stderr kept and outputs returned, bytes.
    pub output_bytes: usize,
    /// HTTP requests per attempt.
    pub requests: u32,
    /// Largest HTTP response body, bytes.
    pub response_bytes: usize,
    /// Longest one HTTP request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most bytes left in `/artifacts`.
    #[serde(default = "default_artifacts_bytes")]
    pub artifacts_bytes: usize,
    /// Most files and directories left in `/artifacts`.
    #[serde(default = "default_artifact_files")]
    pub artifact_files: usize,
    /// Most rows one SQL query returns.
    #[serde(default = "default_rows")]
    pub rows: usize,
}

fn default_rows() -> usize {
    crate::sandbox::SqlLimits::default().rows
}

fn default_artifacts_bytes() -> usize {
    Limits::default().artifacts_bytes
}

fn default_artifact_files() -> usize {
    Limits::default().artifact_files
}

impl Default for ResourceLimits {
    fn default() -> Self {
        let (l, h) = (Limits::default(), HttpLimits::default());
        Self {
            timeout: l.timeout,
            memory_bytes: l.memory_bytes,
            output_bytes: l.output_bytes,
            requests: h.max_requests,
            response_bytes: h.max_response_bytes,
            request_timeout: h.request_timeout,
            artifacts_bytes: l.artifacts_bytes,
            artifact_files: l.artifact_files,
            rows: default_rows(),
        }
    }
}

impl ResourceLimits {
    /// The sandbox's limits of one call.
    pub fn sandbox(&self) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes,
            timeout: self.timeout,
            output_bytes: self.output_bytes,
            artifacts_bytes: self.artifacts_bytes,
            artifact_files: self.artifact_files,
        }
    }

    /// The SQL caps of one call: rows, bytes as the HTTP response cap, the statement timeout as the request timeout.
    pub fn sql(&self) -> crate::sandbox::SqlLimits {
        crate::sandbox::SqlLimits {
            rows: self.rows,
            bytes: self.response_bytes,
            statement_timeout: self.request_timeout,
        }
    }

    /// The HTTP caps of one call.
    pub fn http(&self) -> HttpLimits {
        HttpLimits {
            max_requests: self.requests,
            max_response_bytes: self.response_bytes,
            request_timeout: self.request_timeout,
            ..HttpLimits::default()
        }
    }
}

/// One step's typed facts.
#[derive(Debug, Clone)]
pub struct CheckedStep {
    /// Its plugin.
    pub uses: PluginRef,
    /// Its run condition.
    pub condition: Condition,
    /// Retries.
    pub retry: RetryPolicy,
    /// Resource caps.
    pub limits: ResourceLimits,
    /// Granted origins.
    pub network: Vec<Grant>,
    /// Restricted address ranges granted names may resolve into.
    pub addresses: Vec<ipnet::IpNet>,
    /// Read-only directories.
    pub files: Vec<FileGrant>,
    /// Names of the databases it may open.
    pub databases: Vec<String>,
    /// Its approval gate, when required.
    pub approval: Option<ApprovalPolicy>,
}

/// A declared secret, typed.
#[derive(Debug, Clone)]
pub struct CheckedSecret {
    /// Where its value comes from.
    pub source: SecretFrom,
    /// Origins it may be sent to.
    pub bind: Vec<Grant>,
}

/// Credentials for one registry, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRegistry {
    /// User name.
    pub username: String,
    /// The declared secret holding the password.
    pub password_secret: String,
}

/// An environment's or entity's changes, typed.
#[derive(Debug, Clone, Default)]
pub struct CheckedOverlay {
    /// Plugin swaps by step id.
    pub plugins: BTreeMap<String, PluginRef>,
    /// Secret sources by secret name.
    pub secrets: BTreeMap<String, SecretFrom>,
    /// Network narrowing by step id.
    pub network: BTreeMap<String, Vec<Grant>>,
    /// Databases replaced, by name.
    pub databases: BTreeMap<String, DatabaseGrant>,
}

/// A whole pipeline's typed facts, beside the model they came from.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Per step, in file order.
    pub steps: Vec<CheckedStep>,
    /// Declared secrets by name.
    pub secrets: BTreeMap<String, CheckedSecret>,
    /// Registry credentials by registry host.
    pub registries: BTreeMap<String, CheckedRegistry>,
    /// Declared databases by name.
    pub databases: BTreeMap<String, DatabaseGrant>,
    /// Secret managers sources read from.
    pub secret_stores: SecretStores,
    /// Waves for runs of many entities.
    pub rollout: crate::rollout::Rollout,
    /// Environments by name.
    pub environments: BTreeMap<String, CheckedOverlay>,
    /// Entities by name.
    pub entities: BTreeMap<String, CheckedOverlay>,
}
