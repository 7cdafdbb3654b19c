//! The meaning pass: ids, the `needs` graph, expressions, secrets, grants,
//! limits and plugin paths. Every problem is collected, none stops the pass.

use super::expr::{self, Expr, STATUS_FUNCTIONS};
use super::load::{Loaded, Located};
use super::model::{Loc, Overlay, Pipeline, Position};
use super::schema_walk::unknown_field;
use super::Problem;
use crate::capability::Grant;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

struct Checker<'a> {
    file: &'a Path,
    pipeline: &'a Pipeline,
    ids: HashMap<&'a str, usize>,
    problems: Vec<Problem>,
}

/// Checks a structurally valid pipeline; returns every problem found.
pub(crate) fn check(loaded: &Loaded) -> Vec<Problem> {
    let pipeline = &loaded.pipeline;
    let mut c = Checker { file: &loaded.path, pipeline, ids: HashMap::new(), problems: Vec::new() };
    c.ids_and_needs();
    c.cycles();
    c.secrets();
    for (i, step) in pipeline.steps.iter().enumerate() {
        let field = format!("steps[{i}]");
        for origin in &step.network {
            c.grant(origin, &format!("{field}.network"));
        }
        for name in &step.secrets {
            if !pipeline.secrets.contains_key(name.as_str()) {
                let known: Vec<&str> = pipeline.secrets.keys().map(String::as_str).collect();
                c.push(name.at, &format!("{field}.secrets"), undeclared_secret(name, &known));
            }
        }
        for range in &step.addresses {
            if let Err(e) = crate::capability::address::parse_range(range) {
                c.push(range.at, &format!("{field}.addresses"), e);
            }
        }
        for dir in &step.files {
            if let Err(e) = crate::capability::files::guest_path(dir) {
                c.push(dir.at, &format!("{field}.files"), e);
            }
        }
        if let Some(timeout) = &step.timeout {
            c.duration(timeout, &format!("{field}.timeout"));
        }
        if let Some(limits) = &step.limits {
            for (name, size) in
                [("memory", &limits.memory), ("output", &limits.output), ("response_size", &limits.response_size)]
            {
                if let Some(size) = size {
                    if let Err(e) = crate::sandbox::limits::parse_memory(size) {
                        c.push(size.at, &format!("{field}.limits.{name}"), e);
                    }
                }
            }
            if let Some(t) = &limits.request_timeout {
                c.duration(t, &format!("{field}.limits.request_timeout"));
            }
            if let Some(n) = limits.requests.as_ref().filter(|n| n.value == 0) {
                c.push(n.at, &format!("{field}.limits.requests"), "must be at least 1".into());
            }
        }
        if let Some(retry) = &step.retry {
            if retry.attempts.value == 0 {
                c.push(retry.attempts.at, &format!("{field}.retry.attempts"), "must be at least 1".into());
            }
            if let Some(backoff) = &retry.backoff {
                c.duration(backoff, &format!("{field}.retry.backoff"));
            }
        }
        c.uses(&step.uses, &format!("{field}.uses"));
        for s in &loaded.input_strings[i] {
            c.template(s, Some(i), false);
        }
        for (name, value) in &step.env {
            c.template(&located(value, &format!("{field}.env.{name}")), Some(i), false);
        }
        if let Some(cond) = &step.condition {
            c.condition(cond, i, &format!("{field}.if"));
        }
    }
    for (name, value) in &pipeline.env {
        c.template(&located(value, &format!("env.{name}")), None, false);
    }
    for (kind, overlays) in [("environments", &pipeline.environments), ("entities", &pipeline.entities)] {
        for (name, overlay) in overlays {
            c.overlay(overlay, &format!("{kind}.{name}"));
        }
    }
    c.problems
}

fn located(value: &Loc<String>, field: &str) -> Located {
    Located { at: value.at, field: field.to_string(), text: value.value.clone() }
}

/// "no step has the id `x`; did you mean `y`?".
fn unknown_step(id: &str, known: &[&str]) -> String {
    unknown_field(id, known).replace("unknown field", "no step has the id")
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

    fn secrets(&mut self) {
        for (name, def) in &self.pipeline.secrets {
            self.source(&def.from, &format!("secrets.{name}.from"));
            if def.bind.is_empty() {
                self.push(
                    def.from.at,
                    &format!("secrets.{name}.bind"),
                    "bind the secret to at least one origin".into(),
                );
            }
            for origin in &def.bind {
                self.grant(origin, &format!("secrets.{name}.bind"));
            }
        }
    }

    fn source(&mut self, source: &Loc<String>, field: &str) {
        let ok = source.strip_prefix("env:").or_else(|| source.strip_prefix("file:")).is_some_and(|s| !s.is_empty());
        if !ok {
            self.push(source.at, field, format!("secret source `{}` must be `env:NAME` or `file:PATH`", source.value));
        }
    }

    fn grant(&mut self, origin: &Loc<String>, field: &str) {
        if let Err(e) = Grant::parse(origin) {
            self.push(origin.at, field, e.to_string());
        }
    }

    fn duration(&mut self, text: &Loc<String>, field: &str) {
        if let Err(e) = humantime::parse_duration(text) {
            self.push(text.at, field, format!("invalid duration `{}` ({e}): write e.g. 30s, 500ms, 2m", text.value));
        }
    }

    fn uses(&mut self, uses: &Loc<String>, field: &str) {
        let (path, pin) = match uses.split_once("@sha256:") {
            Some((p, h)) => (p, Some(h)),
            None => (uses.as_str(), None),
        };
        if let Some(hash) = pin {
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                self.push(uses.at, field, format!("`@sha256:` needs 64 hex digits, got `{hash}`"));
            }
        }
        let base = self.file.parent().unwrap_or(Path::new("."));
        let resolved = base.join(path);
        let found = if resolved.is_dir() { resolved.join("Cargo.toml").is_file() } else { resolved.is_file() };
        if !found {
            self.push(
                uses.at,
                field,
                format!(
                    "plugin `{path}` not found (looked for {}): give a plugin crate directory or a .wasm file",
                    resolved.display()
                ),
            );
        }
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

    fn condition(&mut self, cond: &Loc<String>, step: usize, field: &str) {
        let text = cond.trim();
        let inner = text.strip_prefix("${{").and_then(|t| t.strip_suffix("}}")).unwrap_or(text);
        match expr::parse(inner) {
            Ok(e) => self.expression(&e, Some(step), cond.at, field, true),
            Err(message) => self.push(cond.at, field, format!("invalid condition: {message}")),
        }
    }

    fn overlay(&mut self, overlay: &Overlay, field: &str) {
        let steps: BTreeMap<&str, usize> = self.ids.iter().map(|(k, v)| (*k, *v)).collect();
        let known: Vec<&str> = steps.keys().copied().collect();
        for (name, source) in &overlay.secrets {
            if !self.pipeline.secrets.contains_key(name) {
                self.push(source.at, &format!("{field}.secrets.{name}"), undeclared_secret(name, &[]));
            }
            self.source(source, &format!("{field}.secrets.{name}"));
        }
        for (id, uses) in &overlay.plugins {
            if steps.contains_key(id.as_str()) {
                self.uses(uses, &format!("{field}.plugins.{id}"));
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
            for origin in origins {
                self.grant(origin, &format!("{field}.network.{id}"));
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
    }
}
