//! The plan: a validated pipeline resolved for one environment and entity —
//! which plugin each step runs (with its sha256), the exact capabilities it
//! gets, its limits and inputs, and the groups of steps that run in parallel.

use crate::build::{build_crate, BuildError, BuildOptions};
use crate::pipeline::expr;
use crate::pipeline::model::Overlay;
use crate::pipeline::Loaded;
use crate::sandbox::cache::sha256_hex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a pipeline cannot be planned for the requested environment and entity.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The environment is not declared.
    #[error("{file}: environment `{name}` is not declared; declared: {known}")]
    UnknownEnvironment {
        /// Pipeline file.
        file: PathBuf,
        /// Requested name.
        name: String,
        /// Declared names.
        known: String,
    },
    /// The entity is not declared.
    #[error("{file}: entity `{name}` is not declared; declared: {known}")]
    UnknownEntity {
        /// Pipeline file.
        file: PathBuf,
        /// Requested name.
        name: String,
        /// Declared names.
        known: String,
    },
    /// A plugin crate did not build.
    #[error("step `{step}`: {source}")]
    Build {
        /// Step id.
        step: String,
        /// The build error.
        source: BuildError,
    },
    /// A plugin file could not be read or does not match its pin.
    #[error("step `{step}`: {message}")]
    Plugin {
        /// Step id.
        step: String,
        /// What is wrong.
        message: String,
    },
}

/// A secret as a step receives it: its name, source and the origins it may go to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlannedSecret {
    /// Name the plugin uses.
    pub name: String,
    /// `env:NAME` or `file:PATH` (never the value).
    pub source: String,
    /// Origins it may be sent to.
    pub bound_to: Vec<String>,
}

/// A directory granted read-only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedFiles {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
}

/// Resource caps of one attempt, resolved to numbers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedLimits {
    /// Memory, bytes.
    pub memory_bytes: usize,
    /// stdout/stderr and outputs, bytes.
    pub output_bytes: usize,
    /// HTTP requests.
    pub requests: u32,
    /// HTTP response body, bytes.
    pub response_bytes: usize,
    /// One HTTP request, milliseconds.
    pub request_timeout_ms: u64,
}

impl PlannedLimits {
    fn from_def(def: Option<&crate::pipeline::model::StepLimits>) -> Self {
        let (l, h) = (crate::sandbox::Limits::default(), crate::sandbox::HttpLimits::default());
        let size = |s: &Option<crate::pipeline::model::Loc<String>>, d: usize| {
            s.as_ref().and_then(|s| crate::sandbox::limits::parse_memory(s).ok()).unwrap_or(d)
        };
        let def = def.cloned().unwrap_or_default();
        Self {
            memory_bytes: size(&def.memory, l.memory_bytes),
            output_bytes: size(&def.output, l.output_bytes),
            requests: def.requests.map(|n| n.value).unwrap_or(h.max_requests),
            response_bytes: size(&def.response_size, h.max_response_bytes),
            request_timeout_ms: def
                .request_timeout
                .and_then(|t| humantime::parse_duration(&t).ok())
                .unwrap_or(h.request_timeout)
                .as_millis() as u64,
        }
    }
}

/// One step, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// Step id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// `uses:` after entity and environment swaps.
    pub uses: String,
    /// The component file that runs.
    pub plugin: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Steps it needs.
    pub needs: Vec<String>,
    /// Its run condition.
    pub condition: String,
    /// Granted origins, after narrowing.
    pub network: Vec<String>,
    /// Granted secrets.
    pub secrets: Vec<PlannedSecret>,
    /// Restricted address ranges granted names may resolve to.
    pub addresses: Vec<String>,
    /// Read-only directories: host path and sandbox path.
    pub files: Vec<PlannedFiles>,
    /// Whether the step gets a writable `/artifacts` directory.
    pub artifacts: bool,
    /// Timeout per attempt, as written.
    pub timeout: Option<String>,
    /// Resource caps.
    pub limits: PlannedLimits,
    /// Attempts in all.
    pub attempts: u32,
    /// Wait before the first retry, as written.
    pub backoff: Option<String>,
    /// Failure does not fail the pipeline.
    pub continue_on_error: bool,
    /// Undone when a later step fails.
    pub rollback: bool,
    /// Input with `env`, `entity` and `environment` resolved; step outputs stay as expressions until run time.
    pub input: serde_json::Value,
}

/// A pipeline resolved for one environment and entity.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Pipeline name.
    pub pipeline: String,
    /// Environment.
    pub environment: String,
    /// Entity.
    pub entity: String,
    /// Steps in file order.
    pub steps: Vec<PlannedStep>,
    /// Step ids by wave: each wave needs only earlier ones, so its steps may run in parallel.
    pub groups: Vec<Vec<String>>,
}

fn overlay<'a>(
    map: &'a BTreeMap<String, Overlay>,
    name: &str,
    file: &Path,
    entity: bool,
) -> Result<Option<&'a Overlay>, PlanError> {
    if map.is_empty() {
        return Ok(None);
    }
    match map.get(name) {
        Some(o) => Ok(Some(o)),
        None => {
            let (file, name, known) =
                (file.to_path_buf(), name.to_string(), map.keys().cloned().collect::<Vec<_>>().join(", "));
            Err(if entity {
                PlanError::UnknownEntity { file, name, known }
            } else {
                PlanError::UnknownEnvironment { file, name, known }
            })
        }
    }
}

/// Resolves a loaded pipeline for `environment` and `entity`, building plugin crates as needed.
pub fn plan(loaded: &Loaded, environment: &str, entity: &str, build: &BuildOptions) -> Result<Plan, PlanError> {
    let p = &loaded.pipeline;
    let env_overlay = overlay(&p.environments, environment, &loaded.path, false)?;
    let entity_overlay = overlay(&p.entities, entity, &loaded.path, true)?;
    let layers: Vec<&Overlay> = [env_overlay, entity_overlay].into_iter().flatten().collect();
    let base = loaded.path.parent().unwrap_or(Path::new("."));

    let mut vars: BTreeMap<String, String> = p.env.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
    for layer in &layers {
        vars.extend(layer.env.iter().map(|(k, v)| (k.clone(), v.value.clone())));
    }
    if p.process_env {
        for value in vars.values_mut() {
            *value = expand_process_env(value, |name| std::env::var(name).ok());
        }
    }

    let mut steps = Vec::new();
    for (i, def) in p.steps.iter().enumerate() {
        let id = def.id.value.clone();
        let uses = layers.iter().rev().find_map(|l| l.plugins.get(&id)).unwrap_or(&def.uses).value.clone();
        let (plugin, sha256) = resolve_plugin(base, &uses, build).map_err(|e| match e {
            Resolve::Build(source) => PlanError::Build { step: id.clone(), source },
            Resolve::Other(message) => PlanError::Plugin { step: id.clone(), message },
        })?;
        let mut network: Vec<String> = def.network.iter().map(|o| o.value.clone()).collect();
        for layer in &layers {
            if let Some(narrowed) = layer.network.get(&id) {
                network.retain(|o| narrowed.iter().any(|n| n.value == *o));
            }
        }
        let secrets = def
            .secrets
            .iter()
            .filter_map(|name| p.secrets.get(name.as_str()).map(|d| (name, d)))
            .map(|(name, d)| PlannedSecret {
                name: name.value.clone(),
                source: layers.iter().rev().find_map(|l| l.secrets.get(name.as_str())).unwrap_or(&d.from).value.clone(),
                bound_to: d.bind.iter().map(|o| o.value.clone()).collect(),
            })
            .collect();
        let mut step_vars = vars.clone();
        step_vars.extend(def.env.iter().map(|(k, v)| (k.clone(), v.value.clone())));
        // The entity's input wins over the environment's, which wins over the step's own.
        let source = [format!("entities.{entity}"), format!("environments.{environment}")]
            .iter()
            .find_map(|key| loaded.overlay_inputs.get(key).and_then(|m| m.get(&id)))
            .unwrap_or(&loaded.inputs[i]);
        let input = render(source, &step_vars, environment, entity);
        steps.push(PlannedStep {
            id,
            name: def.name.clone(),
            uses,
            plugin,
            sha256,
            needs: def.needs.iter().map(|n| n.value.clone()).collect(),
            condition: def.condition.as_ref().map(|c| c.value.clone()).unwrap_or_else(|| "success()".into()),
            network,
            secrets,
            addresses: def.addresses.iter().map(|a| a.value.clone()).collect(),
            files: def
                .files
                .iter()
                .filter_map(|f| crate::capability::FileGrant::new(f, base).ok())
                .map(|g| PlannedFiles { host: g.host, guest: g.guest })
                .collect(),
            artifacts: def.artifacts,
            timeout: def.timeout.as_ref().map(|t| t.value.clone()),
            limits: PlannedLimits::from_def(def.limits.as_ref()),
            attempts: def.retry.as_ref().map(|r| r.attempts.value).unwrap_or(1),
            backoff: def.retry.as_ref().and_then(|r| r.backoff.as_ref()).map(|b| b.value.clone()),
            continue_on_error: def.continue_on_error,
            rollback: def.rollback,
            input,
        });
    }
    let groups = waves(&steps);
    Ok(Plan { pipeline: p.name.value.clone(), environment: environment.into(), entity: entity.into(), steps, groups })
}

enum Resolve {
    Build(BuildError),
    Other(String),
}

fn resolve_plugin(base: &Path, uses: &str, build: &BuildOptions) -> Result<(PathBuf, String), Resolve> {
    let (path, pin) = match uses.split_once("@sha256:") {
        Some((p, h)) => (p, Some(h)),
        None => (uses, None),
    };
    let path = base.join(path);
    let file = if path.is_dir() { build_crate(&path, build).map_err(Resolve::Build)?.path } else { path };
    let bytes = std::fs::read(&file).map_err(|e| Resolve::Other(format!("cannot read {}: {e}", file.display())))?;
    let sha256 = sha256_hex(&bytes);
    if let Some(pin) = pin {
        if !pin.eq_ignore_ascii_case(&sha256) {
            return Err(Resolve::Other(format!(
                "{} has sha256 {sha256}, but the pipeline pins {pin}: update the pin if the change is intended",
                file.display()
            )));
        }
    }
    Ok((file, sha256))
}

/// Topological waves: a step joins the wave after the last of its needs.
fn waves(steps: &[PlannedStep]) -> Vec<Vec<String>> {
    let index: BTreeMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let mut level = vec![None::<usize>; steps.len()];
    fn depth(i: usize, steps: &[PlannedStep], index: &BTreeMap<&str, usize>, level: &mut [Option<usize>]) -> usize {
        if let Some(l) = level[i] {
            return l;
        }
        let l = steps[i]
            .needs
            .iter()
            .filter_map(|n| index.get(n.as_str()))
            .map(|&j| depth(j, steps, index, level) + 1)
            .max()
            .unwrap_or(0);
        level[i] = Some(l);
        l
    }
    let mut groups: Vec<Vec<String>> = Vec::new();
    for i in 0..steps.len() {
        let l = depth(i, steps, &index, &mut level);
        if groups.len() <= l {
            groups.resize(l + 1, Vec::new());
        }
        groups[l].push(steps[i].id.clone());
    }
    groups
}

/// Expands `${VAR}` and `${VAR:-default}` (not `${{`), for files that opt in with `process_env: true`.
fn expand_process_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        if after.starts_with('{') {
            out.push_str(&rest[..start + 3]);
            rest = &rest[start + 3..];
            continue;
        }
        let Some(end) = after.find('}') else { break };
        let (name, default) = match after[..end].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&after[..end], None),
        };
        out.push_str(&rest[..start]);
        out.push_str(&lookup(name).or_else(|| default.map(str::to_string)).unwrap_or_default());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Renders `env`, `entity` and `environment` in every string of an input; leaves step outputs for run time.
fn render(
    value: &serde_json::Value,
    vars: &BTreeMap<String, String>,
    environment: &str,
    entity: &str,
) -> serde_json::Value {
    expr::substitute(value, &|path: &[&str]| match path {
        ["env", name] => vars.get(*name).cloned(),
        ["environment"] => Some(environment.to_string()),
        ["entity"] => Some(entity.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_env_expands_with_defaults_and_leaves_expressions() {
        let lookup = |name: &str| (name == "REGION").then(|| "eu-west-1".to_string());
        assert_eq!(
            expand_process_env("${REGION}/${ZONE:-a}/${MISSING}/${{ env.X }}", lookup),
            "eu-west-1/a//${{ env.X }}"
        );
    }

    #[test]
    fn rendering_keeps_step_outputs_for_run_time() {
        let vars = BTreeMap::from([("SITE".to_string(), "https://x.example".to_string())]);
        let input =
            serde_json::json!({"u": "${{ env.SITE }}/${{entity}}/${{ environment }}?id=${{ steps.a.outputs.id }}"});
        assert_eq!(
            render(&input, &vars, "prod", "e1"),
            serde_json::json!({"u": "https://x.example/e1/prod?id=${{ steps.a.outputs.id }}"})
        );
    }
}
