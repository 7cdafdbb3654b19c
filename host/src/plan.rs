//! The plan: a validated pipeline resolved for one environment and entity —
//! which plugin each step runs (with its sha256), the exact capabilities it
//! gets, its limits and inputs, and the groups of steps that run in parallel.

use crate::build::{build_crate, BuildError, BuildOptions};
use crate::capability::unit::GrantLine;
use crate::capability::{DatabaseGrant, FileGrant, Grant, NetworkPolicy, SecretFrom, SecretStores};
use crate::pipeline::checked::CheckedOverlay;
use crate::pipeline::expr;
use crate::pipeline::model::Overlay;
use crate::pipeline::{
    ApprovalPolicy, Condition, Digest, Loaded, PluginRef, PluginSource, ResourceLimits, RetryPolicy,
};
use crate::registry;
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
    /// A capability's grant does not hold for this environment and entity.
    #[error("step `{step}`: {message}")]
    Grant {
        /// Step id.
        step: String,
        /// Every problem, one per line, each with its field.
        message: String,
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedSecret {
    /// Name the plugin uses.
    pub name: String,
    /// Where the value is read from (never the value): one source, or a chain.
    pub source: SecretFrom,
    /// Origins it may be sent to.
    pub bound_to: Vec<Grant>,
}

/// A database as a step receives it: the grant, and its password's secret (never the value).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedDatabase {
    /// Where, as whom, and what the grant allows.
    pub grant: DatabaseGrant,
    /// The password's source after environment and entity swaps.
    pub password: PlannedSecret,
}

/// A registered capability's grant as a step receives it: the capability's own typed value (as
/// JSON, read back by the capability) and the secrets the host signs in with (never the values).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedGrant {
    /// The grant, as the capability serialises it.
    pub grant: serde_json::Value,
    /// The secrets it needs, after environment and entity swaps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<PlannedSecret>,
    /// What it lets the step reach, as the capability describes it: kept with the plan, so a
    /// journal's review and report read the same lines without the capability registered.
    #[serde(default)]
    pub lines: Vec<GrantLine>,
}

/// One step, resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Step id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// The plugin reference after entity and environment swaps.
    pub uses: PluginRef,
    /// The component file that runs.
    pub plugin: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Steps it needs.
    pub needs: Vec<String>,
    /// Its run condition.
    pub condition: Condition,
    /// Granted origins after narrowing, and restricted address ranges.
    pub network: NetworkPolicy,
    /// Granted secrets.
    pub secrets: Vec<PlannedSecret>,
    /// Granted databases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<PlannedDatabase>,
    /// Grants of registered capabilities, by capability name (absent in plans recorded before them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, PlannedGrant>,
    /// Read-only directories: host path and sandbox path.
    pub files: Vec<FileGrant>,
    /// Whether the step gets a writable `/artifacts` directory.
    pub artifacts: bool,
    /// Resource caps of one attempt, the timeout among them.
    pub limits: ResourceLimits,
    /// Retries.
    pub retry: RetryPolicy,
    /// Failure does not fail the pipeline.
    pub continue_on_error: bool,
    /// Undone when a later step fails.
    pub rollback: bool,
    /// Input with `env`, `entity` and `environment` resolved; step outputs stay as expressions until run time.
    pub input: serde_json::Value,
    /// The approval the step waits for before it starts, when its gate applies in this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,
}

/// A pipeline resolved for one environment and entity; recorded in the journal when a run starts,
/// and read back from there by `resume` and `rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The sha256 of the pipeline file it was planned from.
    #[serde(default)]
    pub source_digest: Option<Digest>,
    /// Secret managers the steps' secret sources read from.
    #[serde(default, skip_serializing_if = "SecretStores::is_empty")]
    pub secret_stores: SecretStores,
    /// The run in another environment this run was promoted from, checked before it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<Promotion>,
    /// What the run exports when it ends, by name, with `env`, `entity` and `environment`
    /// resolved; step outputs stay as expressions until the run has them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

/// Where a promoted run comes from: a successful run of the same pipeline, plugins and grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The environment promoted from, e.g. `staging`.
    pub environment: String,
    /// Its run.
    pub run_id: String,
}

impl PlannedStep {
    /// Which kinds of grant the step holds, to compare with what its plugin declares.
    pub fn granted(&self) -> crate::capability::declared::Granted {
        crate::capability::declared::Granted {
            network: !self.network.grants().is_empty(),
            secrets: !self.secrets.is_empty(),
            databases: !self.databases.is_empty(),
            files: !self.files.is_empty(),
            artifacts: self.artifacts,
            units: self.capabilities.keys().cloned().collect(),
        }
    }
}

impl Plan {
    /// A plan as a journal recorded it, by this version or an earlier one: a grant recorded before
    /// its capability became a unit (`probes`) is read into the unit's grant, so the run resumes,
    /// rolls back and reports as it would have.
    pub fn read(mut recorded: serde_json::Value) -> Result<Plan, serde_json::Error> {
        let steps = recorded.get_mut("steps").and_then(serde_json::Value::as_array_mut);
        for step in steps.into_iter().flatten() {
            for unit in crate::capability::Capabilities::builtin().iter() {
                let name = unit.name();
                if step.pointer(&format!("/capabilities/{name}")).is_some() {
                    continue;
                }
                if let Some(grant) = unit.recorded_before(step) {
                    let lines = unit.describe(&grant);
                    step["capabilities"][name] = serde_json::json!({ "grant": grant, "lines": lines });
                }
            }
        }
        serde_json::from_value(recorded)
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&PlannedStep> {
        self.steps.iter().find(|s| s.id == id)
    }
}

fn overlay<'a>(
    map: &'a BTreeMap<String, CheckedOverlay>,
    name: &str,
    file: &Path,
    entity: bool,
) -> Result<Option<&'a CheckedOverlay>, PlanError> {
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
    let (p, checked) = (&loaded.pipeline, &loaded.checked);
    let env_overlay = overlay(&checked.environments, environment, &loaded.path, false)?;
    let entity_overlay = overlay(&checked.entities, entity, &loaded.path, true)?;
    let layers: Vec<&CheckedOverlay> = [env_overlay, entity_overlay].into_iter().flatten().collect();
    let env_layers: Vec<&Overlay> =
        [p.environments.get(environment), p.entities.get(entity)].into_iter().flatten().collect();

    let mut vars: BTreeMap<String, String> = p.env.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
    for layer in &env_layers {
        vars.extend(layer.env.iter().map(|(k, v)| (k.clone(), v.value.clone())));
    }
    if p.process_env {
        for value in vars.values_mut() {
            *value = expand_process_env(value, |name| std::env::var(name).ok());
        }
    }

    // Registry credentials, with the secret sources this environment and entity swap in.
    let credentials: Credentials = checked
        .registries
        .iter()
        .map(|(host, r)| {
            let source = layers
                .iter()
                .rev()
                .find_map(|l| l.secrets.get(&r.password_secret))
                .or_else(|| checked.secrets.get(&r.password_secret).map(|s| &s.source));
            (host.clone(), (r.username.clone(), source.cloned()))
        })
        .collect();

    let unit_layers = [format!("environments.{environment}"), format!("entities.{entity}")];
    let binds = loaded.secret_binds();
    let planned_secret = |name: &str| {
        let d = checked.secrets.get(name)?;
        let source = layers.iter().rev().find_map(|l| l.secrets.get(name)).unwrap_or(&d.source).clone();
        Some(PlannedSecret { name: name.to_string(), source, bound_to: d.bind.clone() })
    };
    let mut steps = Vec::new();
    // A plugin used by many steps is built, pulled and hashed once.
    let mut resolved: Vec<(PluginRef, (PathBuf, String))> = Vec::new();
    for (i, (def, facts)) in p.steps.iter().zip(&checked.steps).enumerate() {
        let id = def.id.value.clone();
        let uses = layers.iter().rev().find_map(|l| l.plugins.get(&id)).unwrap_or(&facts.uses).clone();
        let (plugin, sha256) = match resolved.iter().find(|(r, _)| *r == uses) {
            Some((_, done)) => done.clone(),
            None => {
                let done = resolve_plugin(&uses, build, &credentials).map_err(|e| match e {
                    Resolve::Build(source) => PlanError::Build { step: id.clone(), source },
                    Resolve::Other(message) => PlanError::Plugin { step: id.clone(), message },
                })?;
                resolved.push((uses.clone(), done.clone()));
                done
            }
        };
        let mut origins = facts.network.clone();
        for layer in &layers {
            if let Some(narrowed) = layer.network.get(&id) {
                origins.retain(|o| narrowed.contains(o));
            }
        }
        let secrets = def
            .secrets
            .iter()
            .filter_map(|name| checked.secrets.get(name.as_str()).map(|d| (name, d)))
            .map(|(name, d)| PlannedSecret {
                name: name.value.clone(),
                source: layers.iter().rev().find_map(|l| l.secrets.get(name.as_str())).unwrap_or(&d.source).clone(),
                bound_to: d.bind.clone(),
            })
            .collect();
        let databases = facts
            .databases
            .iter()
            .filter_map(|name| layers.iter().rev().find_map(|l| l.databases.get(name)).or(checked.databases.get(name)))
            .filter_map(|grant| {
                let secret = checked.secrets.get(&grant.password_secret)?;
                let source = layers.iter().rev().find_map(|l| l.secrets.get(&grant.password_secret));
                let password = PlannedSecret {
                    name: grant.password_secret.clone(),
                    source: source.unwrap_or(&secret.source).clone(),
                    bound_to: secret.bind.clone(),
                };
                Some(PlannedDatabase { grant: grant.clone(), password })
            })
            .collect();
        let granted = loaded.units.grants(&loaded.capabilities, i, &unit_layers, &binds).map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect();
            PlanError::Grant { step: id.clone(), message: lines.join("\n") }
        })?;
        let capabilities = granted
            .into_iter()
            .map(|(name, g)| {
                let secrets = g.secrets.iter().filter_map(|s| planned_secret(s)).collect();
                let lines = loaded.capabilities.get(&name).map(|unit| unit.describe(&g.grant)).unwrap_or_default();
                (name, PlannedGrant { grant: g.grant, secrets, lines })
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
            condition: facts.condition.clone(),
            network: NetworkPolicy::new(origins).with_addresses(facts.addresses.clone()),
            secrets,
            databases,
            capabilities,
            files: facts.files.clone(),
            artifacts: def.artifacts,
            limits: facts.limits,
            retry: facts.retry,
            continue_on_error: def.continue_on_error,
            rollback: def.rollback,
            input,
            approval: facts.approval.clone().filter(|a| a.applies_in(environment)),
        });
    }
    let groups = waves(&steps);
    let exported: BTreeMap<String, serde_json::Value> =
        p.outputs.iter().map(|(name, v)| (name.clone(), v.value.clone().into())).collect();
    let outputs = render(&serde_json::json!(exported), &vars, environment, entity);
    let outputs = serde_json::from_value(outputs).unwrap_or_default();
    Ok(Plan {
        pipeline: p.name.value.clone(),
        environment: environment.into(),
        entity: entity.into(),
        steps,
        groups,
        source_digest: std::fs::read(&loaded.path).ok().map(|bytes| Digest::of(&bytes)),
        secret_stores: checked.secret_stores.clone(),
        promoted_from: None,
        outputs,
    })
}

enum Resolve {
    Build(BuildError),
    Other(String),
}

/// The component file of a plugin reference and its sha256, checked against the pin.
/// User name and password source by registry host.
type Credentials = BTreeMap<String, (String, Option<SecretFrom>)>;

fn resolve_plugin(
    uses: &PluginRef,
    build: &BuildOptions,
    credentials: &Credentials,
) -> Result<(PathBuf, String), Resolve> {
    let file = match &uses.source {
        PluginSource::Crate { path } => build_crate(path, build).map_err(Resolve::Build)?.path,
        PluginSource::Component { path } => path.clone(),
        PluginSource::Registry { reference } => {
            pull(reference, uses.pin.as_ref(), build, credentials).map_err(Resolve::Other)?
        }
    };
    let bytes = std::fs::read(&file).map_err(|e| Resolve::Other(format!("cannot read {}: {e}", file.display())))?;
    let digest = Digest::of(&bytes);
    if let Some(pin) = &uses.pin {
        if *pin != digest {
            return Err(Resolve::Other(format!(
                "{} has {digest}, but the pipeline pins {pin}: update the pin if the change is intended",
                file.display()
            )));
        }
    }
    Ok((file, digest.hex().to_string()))
}

/// Fetches a registry plugin into the store (or finds it there, pinned) and names its file.
fn pull(
    reference: &str,
    pin: Option<&Digest>,
    build: &BuildOptions,
    credentials: &Credentials,
) -> Result<PathBuf, String> {
    let mut options = match &build.registry {
        Some(options) => options.clone(),
        None => registry::RegistryOptions::new(
            registry::RegistryOptions::default_store()
                .ok_or("no cache directory for plugins from registries: set GANTRY_CACHE_DIR")?,
        ),
    };
    let oci = registry::OciRef::parse(reference).map_err(|e| e.to_string())?;
    // A pinned component already in the store needs no sign-in: a password that cannot be read
    // only matters once the registry refuses the anonymous pull.
    let mut unread = None;
    if let Some((username, Some(source))) = credentials.get(oci.registry()) {
        match source.read() {
            Ok(password) => options.auth = Some((username.clone(), password)),
            Err(e) => unread = Some(format!("the password for {} ({source}) was not read: {e}", oci.registry())),
        }
    }
    // Planning is synchronous and may itself run inside a runtime: the pull gets a thread of its own.
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(registry::pull(&oci, pin, &options)).map(|p| p.path).map_err(|e| match &unread {
                Some(why) => format!("{e} ({why})"),
                None => e.to_string(),
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the registry pull panicked".into()))
    })
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
