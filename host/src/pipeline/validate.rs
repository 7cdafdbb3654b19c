//! The meaning pass: ids, the `needs` graph, expressions, secrets, grants,
//! limits and plugin paths. Every problem is collected, none stops the pass.

use super::checked::{
    ApprovalPolicy, Checked, CheckedOverlay, CheckedRegistry, CheckedSecret, CheckedStep, ResourceLimits, RetryPolicy,
};
use super::condition::Condition;
use super::expr::{self, Expr, STATUS_FUNCTIONS};
use super::load::{Loaded, Located};
use super::model::FromDef;
use super::model::{ApprovalDef, DatabaseDef, Loc, Overlay, Pipeline, Position, Retry, StepDef, WaveDef};
use super::schema_walk::unknown_field;
use super::source::PluginRef;
use super::Problem;
use crate::capability::database::{Location, TlsMode};
use crate::capability::network::origin_of;
use crate::capability::{
    address, AwsSecretStore, DatabaseGrant, FileGrant, Grant, Patience, SecretFrom, SecretSource, SecretStores, Store,
    VaultAuth, VaultStore,
};
use crate::rollout::{Rollout, Wave};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Checker<'a> {
    file: &'a Path,
    pipeline: &'a Pipeline,
    ids: HashMap<&'a str, usize>,
    problems: Vec<Problem>,
    /// Schemes (with default ports) of the origins registered capabilities bind secrets to.
    schemes: Vec<(&'static str, u16)>,
}

/// Checks a structurally valid pipeline; returns its typed facts, or every problem found.
pub(crate) fn check(loaded: &Loaded) -> Result<Checked, Vec<Problem>> {
    let pipeline = &loaded.pipeline;
    let schemes = loaded.capabilities.iter().flat_map(|unit| unit.grammar().origins).collect();
    let mut c = Checker { file: &loaded.path, pipeline, ids: HashMap::new(), problems: Vec::new(), schemes };
    if pipeline.steps.is_empty() {
        c.push(pipeline.steps.at, "steps", "a pipeline needs at least one step: add one under `steps:`".into());
    }
    c.ids_and_needs();
    c.cycles();
    let secrets = c.secrets();
    let registries = c.registries(&secrets);
    let databases = c.databases(&pipeline.databases, &secrets, "databases");
    let secret_stores = c.secret_stores();
    let rollout = c.rollout();
    let steps: Vec<Option<CheckedStep>> =
        pipeline.steps.iter().enumerate().map(|(i, step)| c.step(i, step, loaded)).collect();
    for (name, value) in &pipeline.env {
        c.template(&located(value, &format!("env.{name}")), None, false);
    }
    for (name, value) in &pipeline.outputs {
        c.exported(name, value);
    }
    let mut overlays = [BTreeMap::new(), BTreeMap::new()];
    for (k, (kind, defs)) in
        [("environments", &pipeline.environments), ("entities", &pipeline.entities)].into_iter().enumerate()
    {
        for (name, overlay) in defs {
            let checked = c.overlay(overlay, &secrets, &format!("{kind}.{name}"));
            overlays[k].insert(name.clone(), checked);
        }
    }
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let [environments, entities] = overlays;
    // No problem was found, so every part parsed.
    let steps = steps.into_iter().flatten().collect();
    Ok(Checked { steps, secrets, registries, databases, secret_stores, rollout, environments, entities })
}

fn located(value: &Loc<String>, field: &str) -> Located {
    Located { at: value.at, field: field.to_string(), text: value.value.clone() }
}

/// "no step has the id `x`; did you mean `y`?".
fn unknown_step(id: &str, known: &[&str]) -> String {
    unknown_field(id, known).replace("unknown field", "no step has the id")
}

fn undeclared_database(name: &str, known: &[&str]) -> String {
    let hint = if known.is_empty() {
        "declare it under the pipeline's `databases:`".to_string()
    } else {
        unknown_field(name, known).replace("unknown field", "declared databases do not include")
    };
    format!("database `{name}` is not declared: {hint}")
}

/// A password that names an AWS credential set.
fn not_a_value(name: &str) -> String {
    format!("secret `{name}` is an AWS credential set (`aws-credentials:`), which only signs AWS requests: a password needs a secret with a value")
}

fn undeclared_secret(name: &str, known: &[&str]) -> String {
    let hint = if known.is_empty() {
        "declare it under the pipeline's `secrets:`".to_string()
    } else {
        unknown_field(name, known).replace("unknown field", "declared secrets do not include")
    };
    format!("secret `{name}` is not declared: {hint}")
}

impl<'a> Checker<'a> {
    fn push(&mut self, at: Position, field: &str, message: String) {
        self.problems.push(Problem { file: self.file.to_path_buf(), at, field: field.to_string(), message });
    }

    fn ids_and_needs(&mut self) {
        let steps = &self.pipeline.steps;
        for (i, step) in steps.iter().enumerate() {
            let id = step.id.as_str();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                self.push(
                    step.id.at,
                    &format!("steps[{i}].id"),
                    format!("invalid step id `{id}`: use letters, digits, `_` and `-`"),
                );
            }
            if let Some(&first) = self.ids.get(id) {
                let line = steps[first].id.at.line;
                self.push(
                    step.id.at,
                    &format!("steps[{i}].id"),
                    format!("duplicate step id `{id}` (first defined on line {line})"),
                );
            } else {
                self.ids.insert(id, i);
            }
        }
        let known: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
        for (i, step) in steps.iter().enumerate() {
            for (j, need) in step.needs.iter().enumerate() {
                let field = format!("steps[{i}].needs[{j}]");
                if need.value == step.id.value {
                    self.push(need.at, &field, format!("step `{}` cannot need itself", need.value));
                } else if !self.ids.contains_key(need.as_str()) {
                    let hint = unknown_step(need, &known);
                    self.push(need.at, &field, format!("unknown step in `needs`: {hint}"));
                }
            }
        }
    }

    /// Reports each cycle once, at the step where it was entered, as `a → b → a`.
    fn cycles(&mut self) {
        let steps = &self.pipeline.steps;
        let mut state = vec![0u8; steps.len()]; // 0 new, 1 on stack, 2 done
        let mut stack = Vec::new();
        let mut found = Vec::new();
        fn visit(
            i: usize,
            steps: &[super::model::StepDef],
            ids: &HashMap<&str, usize>,
            state: &mut [u8],
            stack: &mut Vec<usize>,
            found: &mut Vec<Vec<usize>>,
        ) {
            state[i] = 1;
            stack.push(i);
            for need in &steps[i].needs {
                // A step needing itself is reported as such, not as a cycle.
                let Some(&j) = ids.get(need.as_str()).filter(|&&j| j != i) else { continue };
                if state[j] == 1 {
                    let from = stack.iter().position(|&k| k == j).unwrap_or(0);
                    found.push(stack[from..].to_vec());
                } else if state[j] == 0 {
                    visit(j, steps, ids, state, stack, found);
                }
            }
            stack.pop();
            state[i] = 2;
        }
        for i in 0..steps.len() {
            if state[i] == 0 {
                visit(i, steps, &self.ids, &mut state, &mut stack, &mut found);
            }
        }
        for cycle in found {
            let mut names: Vec<&str> = cycle.iter().rev().map(|&k| steps[k].id.as_str()).collect();
            names.push(names[0]);
            let first = cycle[cycle.len() - 1];
            let at = steps[first].needs.iter().find(|n| n.value == steps[cycle[0]].id.value).map(|n| n.at);
            let at = at.unwrap_or(steps[first].id.at);
            self.push(at, &format!("steps[{first}].needs"), format!("dependency cycle: {}", names.join(" → ")));
        }
    }

    /// Parses one step's facts; `None` when any part has a problem (each is reported).
    fn step(&mut self, i: usize, step: &StepDef, loaded: &Loaded) -> Option<CheckedStep> {
        let field = format!("steps[{i}]");
        let base = self.base();
        let network = self.http_grants(&step.network, &format!("{field}.network"));
        for name in &step.databases {
            if !self.pipeline.databases.contains_key(name.as_str()) {
                let known: Vec<&str> = self.pipeline.databases.keys().map(String::as_str).collect();
                self.push(name.at, &format!("{field}.databases"), undeclared_database(name, &known));
            }
        }
        for name in &step.secrets {
            if !self.pipeline.secrets.contains_key(name.as_str()) {
                let known: Vec<&str> = self.pipeline.secrets.keys().map(String::as_str).collect();
                self.push(name.at, &format!("{field}.secrets"), undeclared_secret(name, &known));
            }
        }
        let addresses = self.all(&step.addresses, &format!("{field}.addresses"), address::parse_range);
        let files = self.all(&step.files, &format!("{field}.files"), |dir| FileGrant::new(dir, &base));
        let limits = self.limits(step, &field);
        let retry = self.retry(step.retry.as_ref(), &field);
        let uses = self.uses(&step.uses, &format!("{field}.uses"));
        let approval = match &step.approval {
            Some(def) => self.approval(def, &format!("{field}.approval")),
            None => Some(None),
        };
        for s in &loaded.input_strings[i] {
            self.template(s, Some(i), false);
        }
        for (name, value) in &step.env {
            self.template(&located(value, &format!("{field}.env.{name}")), Some(i), false);
        }
        let condition = match &step.condition {
            Some(cond) => self.condition(cond, i, &format!("{field}.if")),
            None => Some(Condition::default()),
        };
        Some(CheckedStep {
            uses: uses?,
            condition: condition?,
            retry: retry?,
            limits: limits?,
            network: network?,
            addresses: addresses?,
            files: files?,
            databases: step.databases.iter().map(|d| d.value.clone()).collect(),
            approval: approval?,
        })
    }

    /// A CA file relative to the pipeline file; reported when it is not a file.
    fn ca_file(&mut self, file: &Loc<String>, field: &str) -> Option<PathBuf> {
        let path = self.base().join(&file.value);
        if !path.is_file() {
            self.push(file.at, field, format!("{} is not a file", path.display()));
            return None;
        }
        Some(path)
    }

    /// An approval gate: its timeout parses, its approvers are names, its environments are declared.
    fn approval(&mut self, def: &ApprovalDef, field: &str) -> Option<Option<ApprovalPolicy>> {
        let mut ok = true;
        let timeout = match &def.timeout {
            Some(t) => {
                let parsed = self.duration(t, &format!("{field}.timeout"));
                ok &= parsed.is_some_and(|d| !d.is_zero());
                if parsed.is_some_and(|d| d.is_zero()) {
                    self.push(t.at, &format!("{field}.timeout"), "must be longer than 0s".into());
                }
                parsed.unwrap_or_default()
            }
            None => ApprovalPolicy::DEFAULT_TIMEOUT,
        };
        for (j, who) in def.approvers.iter().enumerate() {
            if who.trim().is_empty() || who.chars().any(char::is_whitespace) {
                self.push(who.at, &format!("{field}.approvers[{j}]"), format!("`{}` is not a user name", who.value));
                ok = false;
            }
        }
        let declared = &self.pipeline.environments;
        for (j, env) in def.environments.iter().enumerate() {
            if !declared.is_empty() && !declared.contains_key(env.as_str()) {
                let known: Vec<&str> = declared.keys().map(String::as_str).collect();
                let hint = unknown_field(env, &known).replace("unknown field", "declared environments do not include");
                self.push(
                    env.at,
                    &format!("{field}.environments[{j}]"),
                    format!("environment `{}` is not declared: {hint}", env.value),
                );
                ok = false;
            }
        }
        let policy = ApprovalPolicy {
            timeout,
            approvers: def.approvers.iter().map(|a| a.value.clone()).collect(),
            prevent_self_review: def.prevent_self_review,
            environments: def.environments.iter().map(|e| e.value.clone()).collect(),
        };
        ok.then_some(def.required.then_some(policy))
    }

    /// The directory relative paths in the file are taken from.
    fn base(&self) -> PathBuf {
        self.file.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    /// Keeps `parsed`'s value, or reports its error at `at`.
    fn parsed<T>(&mut self, parsed: Result<T, String>, at: Position, field: &str) -> Option<T> {
        parsed.map_err(|message| self.push(at, field, message)).ok()
    }

    /// Parses every item, reporting each one that fails; `None` when any did.
    fn all<T>(
        &mut self,
        items: &[Loc<String>],
        field: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let parsed: Vec<Option<T>> = items.iter().map(|item| self.parsed(parse(item), item.at, field)).collect();
        parsed.into_iter().collect()
    }

    /// Origins secrets are bound to: HTTP, databases', and those of registered capabilities.
    fn grants(&mut self, origins: &[Loc<String>], field: &str) -> Option<Vec<Grant>> {
        let schemes = self.schemes.clone();
        self.all(origins, field, |o| Grant::parse_with(o, &schemes).map_err(|e| e.to_string()))
    }

    /// Origins a step sends HTTP requests to: a database's origin is granted under `databases:` instead.
    fn http_grants(&mut self, origins: &[Loc<String>], field: &str) -> Option<Vec<Grant>> {
        self.all(origins, field, |o| match Grant::parse(o) {
            Ok(g) if g.is_http() => Ok(g),
            Ok(_) => Err(format!("`{o}` is a database origin: declare the database under `databases:` and list it in the step's `databases:`")),
            Err(e) => Err(e.to_string()),
        })
    }

    /// Declared databases (or an overlay's replacements): each URL parses, its password is a declared
    /// secret bound to its origin, plain TCP only to this machine, and the CA file exists.
    fn databases(
        &mut self,
        defs: &BTreeMap<String, DatabaseDef>,
        secrets: &BTreeMap<String, CheckedSecret>,
        field: &str,
    ) -> BTreeMap<String, DatabaseGrant> {
        let mut checked = BTreeMap::new();
        for (name, def) in defs {
            if let Some(grant) = self.database(name, def, secrets, &format!("{field}.{name}")) {
                checked.insert(name.clone(), grant);
            }
        }
        checked
    }

    fn database(
        &mut self,
        name: &str,
        def: &DatabaseDef,
        secrets: &BTreeMap<String, CheckedSecret>,
        field: &str,
    ) -> Option<DatabaseGrant> {
        let location = self.parsed(Location::parse(&def.url), def.url.at, &format!("{field}.url"));
        let tls = match &def.tls {
            Some(t) => self.parsed(TlsMode::parse(t), t.at, &format!("{field}.tls")),
            None => Some(TlsMode::default()),
        };
        if def.user.trim().is_empty() {
            self.push(def.user.at, &format!("{field}.user"), "name the user the host signs in as".into());
        }
        let password = def.password.value.as_str();
        let secret = secrets.get(password);
        if secret.is_none() && !self.pipeline.secrets.contains_key(password) {
            let known: Vec<&str> = self.pipeline.secrets.keys().map(String::as_str).collect();
            self.push(def.password.at, &format!("{field}.password"), undeclared_secret(password, &known));
        }
        if secret.is_some_and(|s| s.source.aws_credentials().is_some()) {
            self.push(def.password.at, &format!("{field}.password"), not_a_value(password));
        }
        let ca_file = def.ca_file.as_ref().and_then(|file| self.ca_file(file, &format!("{field}.ca_file")));
        let (location, tls, secret) = (location?, tls?, secret?);
        let origin = location.origin();
        let bound = url::Url::parse(&origin).is_ok_and(|u| secret.bind.iter().any(|g| g.allows(&u)));
        if !bound {
            self.push(
                def.password.at,
                &format!("{field}.password"),
                format!(
                    "secret `{password}` is not bound to the database: add \"{origin}\" to `secrets.{password}.bind`"
                ),
            );
        }
        if tls == TlsMode::Disable && !address::is_loopback_host(&location.host) {
            let at = def.tls.as_ref().map_or(def.url.at, |t| t.at);
            self.push(
                at,
                &format!("{field}.tls"),
                format!(
                    "`tls: disable` sends the password in clear: only to a database on this machine, not {}",
                    location.host
                ),
            );
            return None;
        }
        if def.user.trim().is_empty() || !bound || (def.ca_file.is_some() && ca_file.is_none()) {
            return None;
        }
        Some(DatabaseGrant {
            name: name.to_string(),
            location,
            user: def.user.value.clone(),
            password_secret: password.to_string(),
            tls,
            readonly: def.readonly,
            ca_file,
        })
    }

    fn duration(&mut self, text: &Loc<String>, field: &str) -> Option<Duration> {
        let parsed = humantime::parse_duration(text)
            .map_err(|e| format!("invalid duration `{}` ({e}): write e.g. 30s, 500ms, 2m", text.value));
        self.parsed(parsed, text.at, field)
    }

    fn size(&mut self, text: &Loc<String>, field: &str) -> Option<usize> {
        self.parsed(crate::sandbox::limits::parse_memory(text), text.at, field)
    }

    fn limits(&mut self, step: &StepDef, field: &str) -> Option<ResourceLimits> {
        let mut limits = ResourceLimits::default();
        let mut ok = true;
        if let Some(t) = &step.timeout {
            ok &= self.duration(t, &format!("{field}.timeout")).map(|t| limits.timeout = t).is_some();
        }
        let Some(def) = &step.limits else { return ok.then_some(limits) };
        for (name, size, target) in [
            ("memory", &def.memory, &mut limits.memory_bytes),
            ("output", &def.output, &mut limits.output_bytes),
            ("response_size", &def.response_size, &mut limits.response_bytes),
            ("artifacts", &def.artifacts, &mut limits.artifacts_bytes),
        ] {
            if let Some(size) = size {
                ok &= self.size(size, &format!("{field}.limits.{name}")).map(|n| *target = n).is_some();
            }
        }
        if let Some(t) = &def.request_timeout {
            let parsed = self.duration(t, &format!("{field}.limits.request_timeout"));
            ok &= parsed.map(|t| limits.request_timeout = t).is_some();
        }
        if let Some(n) = &def.artifact_files {
            limits.artifact_files = n.value as usize;
        }
        if let Some(n) = &def.rows {
            limits.rows = n.value as usize;
        }
        if let Some(n) = &def.requests {
            if n.value == 0 {
                self.push(n.at, &format!("{field}.limits.requests"), "must be at least 1".into());
                ok = false;
            }
            limits.requests = n.value;
        }
        ok.then_some(limits)
    }

    fn retry(&mut self, retry: Option<&Retry>, field: &str) -> Option<RetryPolicy> {
        let mut policy = RetryPolicy::default();
        let Some(retry) = retry else { return Some(policy) };
        let mut ok = true;
        if retry.attempts.value == 0 {
            self.push(retry.attempts.at, &format!("{field}.retry.attempts"), "must be at least 1".into());
            ok = false;
        }
        policy.attempts = retry.attempts.value;
        if let Some(backoff) = &retry.backoff {
            ok &= self.duration(backoff, &format!("{field}.retry.backoff")).map(|b| policy.backoff = b).is_some();
        }
        ok.then_some(policy)
    }

    fn secrets(&mut self) -> BTreeMap<String, CheckedSecret> {
        let mut checked = BTreeMap::new();
        for (name, def) in &self.pipeline.secrets {
            let source = self.source(&def.from, &format!("secrets.{name}.from"));
            if def.bind.is_empty() {
                self.push(
                    def.from.at,
                    &format!("secrets.{name}.bind"),
                    "bind the secret to at least one origin".into(),
                );
            }
            let bind = self.grants(&def.bind, &format!("secrets.{name}.bind"));
            if let (Some(source), Some(bind)) = (source, bind) {
                checked.insert(name.clone(), CheckedSecret { source, bind });
            }
        }
        checked
    }

    /// Each registry's password names a declared secret that may be sent to that registry.
    fn registries(&mut self, secrets: &BTreeMap<String, CheckedSecret>) -> BTreeMap<String, CheckedRegistry> {
        let mut checked = BTreeMap::new();
        for (host, def) in &self.pipeline.registries {
            let field = format!("registries.{host}");
            let origin = match crate::registry::origin(host) {
                Ok(origin) => origin,
                Err(e) => {
                    self.push(def.username.at, &field, e.to_string());
                    continue;
                }
            };
            let name = def.password.value.as_str();
            let Some(secret) = secrets.get(name) else {
                if !self.pipeline.secrets.contains_key(name) {
                    let known: Vec<&str> = self.pipeline.secrets.keys().map(String::as_str).collect();
                    self.push(def.password.at, &format!("{field}.password"), undeclared_secret(name, &known));
                }
                continue;
            };
            if secret.source.aws_credentials().is_some() {
                self.push(def.password.at, &format!("{field}.password"), not_a_value(name));
                continue;
            }
            if !secret.bind.iter().any(|g| g.allows(&origin)) {
                self.push(
                    def.password.at,
                    &format!("{field}.password"),
                    format!(
                        "secret `{name}` is not bound to the registry: add \"{}\" to `secrets.{name}.bind`",
                        origin_of(&origin)
                    ),
                );
                continue;
            }
            let registry = CheckedRegistry { username: def.username.value.clone(), password_secret: name.to_string() };
            checked.insert(host.clone(), registry);
        }
        checked
    }

    /// A secret's source or chain: each parses, and the stores they read are configured.
    fn source(&mut self, from: &Loc<FromDef>, field: &str) -> Option<SecretFrom> {
        let texts = from.texts();
        let chain = matches!(from.value, FromDef::Chain(_));
        let mut sources = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let field = if chain { format!("{field}[{i}]") } else { field.to_string() };
            let stores = &self.pipeline.secret_stores;
            let configured = |store: Store| match store {
                Store::Aws => stores.aws.is_some(),
                Store::Vault => stores.vault.is_some(),
            };
            let parsed = SecretSource::parse(text).and_then(|s| match s.store() {
                Some(store) if !configured(store) => {
                    Err(format!("`{text}` needs `{}` ({})", store.field(), store.needs()))
                }
                _ => Ok(s),
            });
            sources.push(self.parsed(parsed, from.at, &field));
        }
        let sources: Option<Vec<SecretSource>> = sources.into_iter().collect();
        self.parsed(SecretFrom::chain(sources?), from.at, field)
    }

    /// Rollout waves: declared entities, shares of 1-100 %, `rest` last; a budget of at least 1.
    fn rollout(&mut self) -> Rollout {
        let Some(def) = &self.pipeline.rollout else { return Rollout::default() };
        let mut waves = Vec::new();
        for (i, wave) in def.waves.iter().enumerate() {
            let field = format!("rollout.waves[{i}]");
            if waves.last() == Some(&Wave::Rest) {
                self.push(wave.at, &field, "no wave can follow `rest`: it takes every entity left".into());
            }
            match &wave.value {
                WaveDef::Share(text) => {
                    if let Some(w) = self.parsed(Wave::parse(text), wave.at, &field) {
                        waves.push(w);
                    }
                }
                WaveDef::Entities(names) => {
                    let declared: Vec<&str> = self.pipeline.entities.keys().map(String::as_str).collect();
                    for name in names.iter().filter(|n| !declared.contains(&n.as_str())) {
                        let hint =
                            unknown_field(name, &declared).replace("unknown field", "declared entities do not include");
                        self.push(wave.at, &field, format!("entity `{name}` is not declared: {hint}"));
                    }
                    waves.push(Wave::Entities(names.clone()));
                }
            }
        }
        if waves.is_empty() {
            self.push(Position::default(), "rollout.waves", "give at least one wave, e.g. `[rest]`".into());
        }
        let failure_budget = match &def.failure_budget {
            Some(n) if n.value == 0 => {
                self.push(
                    n.at,
                    "rollout.failure_budget",
                    "must be at least 1 (1: the first failure stops the rollout)".into(),
                );
                0
            }
            Some(n) => n.value,
            None => Rollout::DEFAULT_FAILURE_BUDGET,
        };
        Rollout { waves, failure_budget }
    }

    /// The secret stores: where each is (an origin the host may reach), credentials from sources
    /// that need no store.
    fn secret_stores(&mut self) -> SecretStores {
        SecretStores { aws: self.aws_store(), vault: self.vault_store() }
    }

    /// A store's origin: `https://`, or `http://` on loopback, with no path.
    fn store_origin(&mut self, text: &Loc<String>, field: &str) -> String {
        let origin = url::Url::parse(text).ok().filter(|u| {
            let local = u.host_str().is_some_and(address::is_loopback_host);
            (u.scheme() == "https" || (u.scheme() == "http" && local)) && matches!(u.path(), "" | "/")
        });
        let origin = origin.map(|u| origin_of(&u));
        if origin.is_none() {
            self.push(
                text.at,
                field,
                format!("`{}` must be an https:// origin (http:// only on loopback)", text.value),
            );
        }
        origin.unwrap_or_default()
    }

    /// A store's credential: a source that needs no store, or `default` (`env:NAME`) when left out.
    fn credential(&mut self, def: &Option<Loc<String>>, field: &str, default: Option<&str>) -> Option<SecretSource> {
        match def {
            Some(text) => {
                let parsed = SecretSource::parse(text).and_then(|s| match s.needs_store() {
                    true => Err(format!("`{}`: credentials come from env:, file: or exec:", text.value)),
                    false => Ok(s),
                });
                self.parsed(parsed, text.at, field)
            }
            None => default.map(|d| SecretSource::Env(d.to_string())),
        }
    }

    /// A store's patience: `timeout` and `attempts`, each checked with its line, else the defaults.
    fn patience(&mut self, timeout: &Option<Loc<String>>, attempts: &Option<Loc<u32>>, field: &str) -> Patience {
        let mut patience = Patience::default();
        if let Some(text) = timeout {
            let field = format!("{field}.timeout");
            match self.duration(text, &field) {
                Some(t) if t < Duration::from_millis(100) || t > Duration::from_secs(600) => {
                    self.push(text.at, &field, format!("`{}` is outside 100ms..10m", text.value))
                }
                Some(t) => patience.timeout_ms = t.as_millis() as u64,
                None => {}
            }
        }
        if let Some(n) = attempts {
            match n.value {
                1..=Patience::MAX_ATTEMPTS => patience.attempts = n.value,
                _ => self.push(n.at, &format!("{field}.attempts"), format!("{} is outside 1..={}", n.value, Patience::MAX_ATTEMPTS)),
            }
        }
        patience
    }

    fn aws_store(&mut self) -> Option<AwsSecretStore> {
        let aws = self.pipeline.secret_stores.aws.as_ref()?;
        let field = "secret_stores.aws";
        let region = aws.region.value.trim().to_string();
        if region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            self.push(aws.region.at, &format!("{field}.region"), format!("`{}` is not a region", aws.region.value));
        }
        let endpoint = match &aws.endpoint {
            None => AwsSecretStore::default_endpoint(&region),
            Some(e) => self.store_origin(e, &format!("{field}.endpoint")),
        };
        let access_key_id =
            self.credential(&aws.access_key_id, &format!("{field}.access_key_id"), Some("AWS_ACCESS_KEY_ID"));
        let secret_access_key = self.credential(
            &aws.secret_access_key,
            &format!("{field}.secret_access_key"),
            Some("AWS_SECRET_ACCESS_KEY"),
        );
        let session_token = self.credential(&aws.session_token, &format!("{field}.session_token"), None);
        let credentials = aws.credentials.as_ref().and_then(|text| {
            let keys = aws.access_key_id.is_some() || aws.secret_access_key.is_some() || aws.session_token.is_some();
            let parsed = SecretSource::parse(text).and_then(|s| match s {
                SecretSource::AwsCredentials(_) if keys => {
                    Err("give `credentials` or the key sources (`access_key_id`, …), not both".into())
                }
                SecretSource::AwsCredentials(_) => Ok(s),
                _ => Err(format!("`{}` is not an `aws-credentials:` source", text.value)),
            });
            self.parsed(parsed, text.at, &format!("{field}.credentials"))
        });
        Some(AwsSecretStore {
            region,
            endpoint,
            access_key_id: access_key_id?,
            secret_access_key: secret_access_key?,
            session_token,
            credentials,
            patience: self.patience(&aws.timeout, &aws.attempts, field),
        })
    }

    fn vault_store(&mut self) -> Option<VaultStore> {
        let vault = self.pipeline.secret_stores.vault.as_ref()?;
        let field = "secret_stores.vault";
        let address = self.store_origin(&vault.address, &format!("{field}.address"));
        let namespace = vault.namespace.as_ref().map(|ns| ns.value.trim_matches('/').to_string());
        let auth = match (&vault.token, &vault.approle) {
            (Some(token), Some(_)) => {
                self.push(token.at, &format!("{field}.token"), "give `token` or `approle`, not both".into());
                None
            }
            (token, None) => self
                .credential(token, &format!("{field}.token"), Some("VAULT_TOKEN"))
                .map(|token| VaultAuth::Token { token }),
            (None, Some(approle)) => {
                let role_id =
                    self.credential(&Some(approle.role_id.clone()), &format!("{field}.approle.role_id"), None);
                let secret_id =
                    self.credential(&Some(approle.secret_id.clone()), &format!("{field}.approle.secret_id"), None);
                let mount = approle.mount.as_ref().map(|m| m.value.trim_matches('/').to_string());
                let mount = mount.filter(|m| !m.is_empty()).unwrap_or_else(|| VaultAuth::APPROLE_MOUNT.to_string());
                Some(VaultAuth::AppRole { mount, role_id: role_id?, secret_id: secret_id? })
            }
        };
        let ca_file = vault.ca_file.as_ref().and_then(|file| self.ca_file(file, &format!("{field}.ca_file")));
        if vault.ca_file.is_some() && ca_file.is_none() {
            return None;
        }
        let patience = self.patience(&vault.timeout, &vault.attempts, field);
        Some(VaultStore { address, namespace, auth: auth?, ca_file, patience })
    }

    fn uses(&mut self, uses: &Loc<String>, field: &str) -> Option<PluginRef> {
        let base = self.base();
        self.parsed(PluginRef::parse(uses, &base), uses.at, field)
    }

    /// Steps whose outputs step `i` may read: everything it transitively needs.
    fn upstream_of(&self, i: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![i];
        while let Some(k) = todo.pop() {
            for need in &self.pipeline.steps[k].needs {
                if let Some(&j) = self.ids.get(need.as_str()) {
                    if seen.insert(j) {
                        todo.push(j);
                    }
                }
            }
        }
        seen
    }

    fn known_env(&self, step: Option<usize>) -> BTreeSet<&'a str> {
        let p = self.pipeline;
        let overlays = p.environments.values().chain(p.entities.values());
        p.env
            .keys()
            .chain(overlays.flat_map(|o: &Overlay| o.env.keys()))
            .chain(step.into_iter().flat_map(|i| p.steps[i].env.keys()))
            .map(String::as_str)
            .collect()
    }

    fn reference(&mut self, path: &[String], step: Option<usize>, at: Position, field: &str) {
        let head = path.first().map(String::as_str).unwrap_or_default();
        let message = match (head, path.len()) {
            ("entity" | "environment", 1) => return,
            ("env", 2) => {
                if self.known_env(step).contains(path[1].as_str()) {
                    return;
                }
                format!("unknown variable `env.{}`: define it under `env:`", path[1])
            }
            ("steps", 4) if path[2] == "outputs" => {
                let target = path[1].as_str();
                match (self.ids.get(target), step) {
                    (None, _) => format!("unknown step `{target}` in `steps.{target}.outputs.{}`", path[3]),
                    (Some(_), None) => "step outputs can only be used inside a step".to_string(),
                    (Some(&j), Some(i)) if !self.upstream_of(i).contains(&j) => format!(
                        "step `{}` uses outputs of `{target}` but does not depend on it: add `{target}` to its `needs:`",
                        self.pipeline.steps[i].id.value
                    ),
                    _ => return,
                }
            }
            ("secrets", 2) => format!(
                "`secrets.{}` cannot be interpolated into text a plugin sees: list the secret under the step's `secrets:` and let the plugin use it by name",
                path[1]
            ),
            _ => format!(
                "unknown reference `{}`: expected env.NAME, steps.ID.outputs.NAME, entity or environment",
                path.join(".")
            ),
        };
        self.push(at, field, message);
    }

    /// A value the run exports: a name CI accepts, referring to any step's outputs, `env`, `entity`
    /// or `environment`.
    fn exported(&mut self, name: &str, value: &Loc<String>) {
        let field = format!("outputs.{name}");
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
            self.push(value.at, &field, format!("`{name}` is not an output name: letters, digits, `_` and `-`, starting with a letter or `_`"));
        }
        match expr::template(&value.value) {
            Err((_, message)) => self.push(value.at, &field, format!("invalid expression: {message}")),
            Ok(found) => {
                for (_, e) in found {
                    if !expr::calls(&e).is_empty() {
                        self.push(value.at, &field, "functions are only allowed in `if:`".into());
                    }
                    for path in expr::refs(&e) {
                        match path {
                            [steps, id, outputs, _] if steps == "steps" && outputs == "outputs" => {
                                if !self.ids.contains_key(id.as_str()) {
                                    self.push(value.at, &field, format!("unknown step `{id}` in `{}`", path.join(".")));
                                }
                            }
                            _ => self.reference(path, None, value.at, &field),
                        }
                    }
                }
            }
        }
    }

    fn template(&mut self, s: &Located, step: Option<usize>, allow_status: bool) {
        match expr::template(&s.text) {
            Ok(found) => {
                for (_, e) in found {
                    self.expression(&e, step, s.at, &s.field, allow_status);
                }
            }
            Err((_, message)) => self.push(s.at, &s.field, format!("invalid expression: {message}")),
        }
    }

    fn expression(&mut self, e: &Expr, step: Option<usize>, at: Position, field: &str, allow_status: bool) {
        for path in expr::refs(e) {
            self.reference(path, step, at, field);
        }
        for call in expr::calls(e) {
            if !allow_status || !STATUS_FUNCTIONS.contains(&call) {
                let allowed = if allow_status {
                    format!("use one of {}", STATUS_FUNCTIONS.join("(), ")) + "()"
                } else {
                    "functions are only allowed in `if:`".into()
                };
                self.push(at, field, format!("unknown function `{call}()`: {allowed}"));
            }
        }
    }

    fn condition(&mut self, cond: &Loc<String>, step: usize, field: &str) -> Option<Condition> {
        let parsed = Condition::parse(cond).map_err(|message| format!("invalid condition: {message}"));
        let condition = self.parsed(parsed, cond.at, field)?;
        let before = self.problems.len();
        self.expression(condition.expr(), Some(step), cond.at, field, true);
        (self.problems.len() == before).then_some(condition)
    }

    fn overlay(&mut self, overlay: &Overlay, secrets: &BTreeMap<String, CheckedSecret>, field: &str) -> CheckedOverlay {
        let mut checked = CheckedOverlay::default();
        for (name, def) in &overlay.databases {
            if !self.pipeline.databases.contains_key(name) {
                let known: Vec<&str> = self.pipeline.databases.keys().map(String::as_str).collect();
                self.push(def.url.at, &format!("{field}.databases.{name}"), undeclared_database(name, &known));
            }
        }
        checked.databases = self.databases(&overlay.databases, secrets, &format!("{field}.databases"));
        let steps: BTreeMap<&str, usize> = self.ids.iter().map(|(k, v)| (*k, *v)).collect();
        let known: Vec<&str> = steps.keys().copied().collect();
        for (name, source) in &overlay.secrets {
            if !self.pipeline.secrets.contains_key(name) {
                self.push(source.at, &format!("{field}.secrets.{name}"), undeclared_secret(name, &[]));
            }
            if let Some(source) = self.source(source, &format!("{field}.secrets.{name}")) {
                checked.secrets.insert(name.clone(), source);
            }
        }
        for (id, uses) in &overlay.plugins {
            if steps.contains_key(id.as_str()) {
                if let Some(plugin) = self.uses(uses, &format!("{field}.plugins.{id}")) {
                    checked.plugins.insert(id.clone(), plugin);
                }
            } else {
                let hint = unknown_step(id, &known);
                self.push(uses.at, &format!("{field}.plugins.{id}"), hint);
            }
        }
        for (id, input) in &overlay.with {
            if !steps.contains_key(id.as_str()) {
                let hint = unknown_step(id, &known);
                self.push(input.at, &format!("{field}.with.{id}"), hint);
            }
        }
        for (id, origins) in &overlay.network {
            let Some(&i) = steps.get(id.as_str()) else {
                let at = origins.first().map(|o| o.at).unwrap_or_default();
                let hint = unknown_step(id, &known);
                self.push(at, &format!("{field}.network.{id}"), hint);
                continue;
            };
            if let Some(grants) = self.http_grants(origins, &format!("{field}.network.{id}")) {
                checked.network.insert(id.clone(), grants);
            }
            for origin in origins {
                if !self.pipeline.steps[i].network.iter().any(|g| g.value == origin.value) {
                    self.push(
                        origin.at,
                        &format!("{field}.network.{id}"),
                        format!(
                            "`{}` is not granted to step `{id}`: an overlay can only narrow a step's network",
                            origin.value
                        ),
                    );
                }
            }
        }
        for (name, value) in &overlay.env {
            self.template(&located(value, &format!("{field}.env.{name}")), None, false);
        }
        checked
    }
}
