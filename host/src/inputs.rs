//! A step's input against the JSON Schema its plugin describes, before anything runs: every
//! problem at once, each at the line of the pipeline that wrote it. Values rendered from
//! expressions at plan time that read as the number or boolean the schema wants are converted,
//! as a person writing `pause_ms: ${{ env.PAUSE_MS }}` means; an output of an earlier step is
//! known only when the run gets there, so a value still holding `${{` is not judged here.

use crate::pipeline::{Loaded, Position, Problem};
use crate::plan::Plan;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What a plugin says its input is, by step id: its name and its schema.
pub type Schemas = BTreeMap<String, (String, Value)>;

/// Checks every step's planned input against its plugin's schema, converting rendered strings
/// the schema wants as numbers or booleans; the problems name the file, line and field.
pub fn check(loaded: &Loaded, plan: &mut Plan, schemas: &Schemas) -> Vec<Problem> {
    let mut problems = Vec::new();
    for step in &mut plan.steps {
        let Some((plugin, schema)) = schemas.get(&step.id) else { continue };
        for (suffix, message) in judge(schema, &mut step.input) {
            let Some((field, at)) = locate(loaded, &plan.environment, &plan.entity, &step.id, &suffix) else { continue };
            problems.push(Problem {
                file: loaded.path.clone(),
                at,
                message: format!("{message} (input of plugin `{plugin}`)"),
                field,
            });
        }
    }
    problems
}

/// Where a field of `step`'s input (`suffix`: `.probes`) is written for `environment` and
/// `entity`: its field path and position. The entity's replacement input wins over the
/// environment's, which wins over the step's own.
pub fn locate(loaded: &Loaded, environment: &str, entity: &str, step: &str, suffix: &str) -> Option<(String, Position)> {
    let i = loaded.pipeline.steps.iter().position(|s| s.id.value == step)?;
    let source = [format!("entities.{entity}"), format!("environments.{environment}")]
        .into_iter()
        .find(|key| loaded.overlay_inputs.get(key).is_some_and(|m| m.contains_key(step)))
        .map(|key| format!("{key}.with.{step}"))
        .unwrap_or_else(|| format!("steps[{i}].with"));
    let field = format!("{source}{suffix}");
    let at = position(&loaded.input_positions, &field, &source, loaded.pipeline.steps[i].id.at);
    Some((field, at))
}

/// The outputs each step's plugin declares, by step id: the plugin's name and the output names.
/// A step whose plugin declares none is absent, and references to it are not checked.
pub type Declared = BTreeMap<String, (String, Vec<String>)>;

/// Every `${{ steps.X.outputs.Y }}` in an input or `if:` of this plan's environment and entity
/// that names an output X's plugin does not declare, at its line with the closest declared name.
pub fn unknown_outputs(loaded: &Loaded, plan: &Plan, declared: &Declared) -> Vec<Problem> {
    let overlays = [format!("entities.{}.", plan.entity), format!("environments.{}.", plan.environment)];
    let inputs = loaded.input_strings.iter().flatten().filter(|s| {
        s.field.starts_with("steps[") || overlays.iter().any(|o| s.field.starts_with(o.as_str()))
    });
    let written = inputs.filter_map(|s| {
        let exprs = crate::pipeline::expr::template(&s.text).ok()?.into_iter().map(|(_, e)| e).collect();
        Some((s.field.clone(), s.at, exprs))
    });
    let conditions = loaded.pipeline.steps.iter().enumerate().filter_map(|(i, step)| {
        let condition = step.condition.as_ref()?;
        let parsed = crate::pipeline::Condition::parse(&condition.value).ok()?;
        Some((format!("steps[{i}].if"), condition.at, vec![parsed.expr().clone()]))
    });
    let mut problems = Vec::new();
    for (field, at, exprs) in written.chain(conditions) {
        for expr in &exprs {
            for path in crate::pipeline::expr::refs(expr) {
                let [steps, step, outputs, name @ ..] = path else { continue };
                if steps != "steps" || outputs != "outputs" || name.is_empty() {
                    continue;
                }
                let Some((plugin, names)) = declared.get(step) else { continue };
                if names.iter().any(|declared| output_matches(declared, name)) {
                    continue;
                }
                let known: Vec<&str> = names.iter().map(String::as_str).collect();
                let message = crate::pipeline::unknown("output", &name.join("."), &known);
                problems.push(Problem {
                    file: loaded.path.clone(),
                    at,
                    field: field.clone(),
                    message: format!("{message} (step `{step}` runs plugin `{plugin}`)"),
                });
            }
        }
    }
    problems
}

/// Whether a declared output name covers the path read: each dot-separated part equal, or a
/// `<placeholder>` part standing for any one name the input chooses (`<metric>.phase`).
fn output_matches(declared: &str, read: &[String]) -> bool {
    let parts: Vec<&str> = declared.split('.').collect();
    parts.len() == read.len()
        && parts.iter().zip(read).all(|(part, name)| *part == name || (part.starts_with('<') && part.ends_with('>')))
}

/// Whether an input still holds an expression to render at run time (an earlier step's output).
pub fn holds_expression(input: &Value) -> bool {
    match input {
        Value::String(text) => text.contains("${{"),
        Value::Array(items) => items.iter().any(holds_expression),
        Value::Object(map) => map.values().any(holds_expression),
        _ => false,
    }
}

/// The problems of `input` under `schema`, as `(field suffix, message)`: `.expect_statuz`,
/// `.window.samples`. Converts in place what it can; values holding `${{` are not judged.
pub fn judge(schema: &Value, input: &mut Value) -> Vec<(String, String)> {
    let validator = match jsonschema::options().build(schema) {
        Ok(v) => v,
        Err(e) => return vec![(String::new(), format!("the plugin's input schema cannot be used: {e}"))],
    };
    let mut kept = BTreeSet::new();
    // Each pass converts (or gives up on) one string a type error names; an input has few such fields.
    for _ in 0..64 {
        let mut next = None;
        for error in validator.iter_errors(input) {
            let ValidationErrorKind::Type { kind } = error.kind() else { continue };
            let pointer = error.instance_path().as_str().to_string();
            let Value::String(text) = error.instance().as_ref() else { continue };
            if !kept.contains(&pointer) {
                next = Some((pointer, read_as(text, kind)));
                break;
            }
        }
        match next {
            None => break,
            Some((pointer, Some(value))) => match input.pointer_mut(&pointer) {
                Some(slot) => *slot = value,
                None => {
                    kept.insert(pointer);
                }
            },
            Some((pointer, None)) => {
                kept.insert(pointer);
            }
        }
    }
    let known = names(schema);
    let mut found = Vec::new();
    for error in validator.iter_errors(input) {
        if error.instance().as_ref().as_str().is_some_and(|s| s.contains("${{")) {
            continue;
        }
        let path: String = error
            .instance_path()
            .iter()
            .map(|segment| match segment {
                LocationSegment::Property(p) => format!(".{p}"),
                LocationSegment::Index(i) => format!("[{i}]"),
            })
            .collect();
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    let known = if path.is_empty() { &known.0 } else { &known.1 };
                    let message = crate::pipeline::unknown("input", name, &known.iter().map(String::as_str).collect::<Vec<_>>());
                    found.push((format!("{path}.{name}"), message));
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().map(String::from).unwrap_or_else(|| property.to_string());
                found.push((path, format!("missing required input `{name}`")));
            }
            ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. } => {
                let message = match choices(schema, error.schema_path().as_str()) {
                    Some(allowed) => format!("{} is not one of {}", error.instance(), allowed.join(", ")),
                    None => error.to_string(),
                };
                found.push((path, message));
            }
            _ => found.push((path, error.to_string())),
        }
    }
    found
}

/// The values a `oneOf`/`anyOf` at `schema_path` allows, when every alternative is a `const` or an
/// `enum` (how schemars writes a Rust enum whose variants carry doc comments).
fn choices(schema: &Value, schema_path: &str) -> Option<Vec<String>> {
    let mut node = schema;
    for segment in schema_path.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        node = match (segment.as_str(), node) {
            ("$ref", _) => schema.pointer(node.get("$ref")?.as_str()?.strip_prefix('#')?)?,
            (_, Value::Array(items)) => items.get(segment.parse::<usize>().ok()?)?,
            (_, _) => node.get(&segment)?,
        };
    }
    let mut allowed = Vec::new();
    for alternative in node.as_array()? {
        match (alternative.get("const"), alternative.get("enum").and_then(Value::as_array)) {
            (Some(one), _) => allowed.push(one.to_string()),
            (None, Some(many)) => allowed.extend(many.iter().map(Value::to_string)),
            (None, None) => return None,
        }
    }
    Some(allowed)
}

/// A rendered string as the JSON type the schema wants, when it reads as one.
fn read_as(text: &str, kind: &TypeKind) -> Option<Value> {
    use jsonschema::JsonType;
    let wants = |t: JsonType| match kind {
        TypeKind::Single(one) => *one == t,
        TypeKind::Multiple(set) => set.contains(t),
    };
    let trimmed = text.trim();
    if wants(JsonType::Integer) {
        if let Ok(n) = trimmed.parse::<i64>() {
            return Some(Value::from(n));
        }
    }
    if wants(JsonType::Number) {
        if let Some(n) = trimmed.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return Some(Value::Number(n));
        }
    }
    if wants(JsonType::Boolean) {
        return match trimmed {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        };
    }
    None
}

/// The input's own property names (following a root `$ref`), and every property name the schema
/// knows anywhere: what a misspelt input is most likely meant to be.
fn names(schema: &Value) -> (Vec<String>, Vec<String>) {
    let root = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference.strip_prefix('#').and_then(|p| schema.pointer(p)).unwrap_or(schema),
        None => schema,
    };
    let own = |s: &Value| s.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect());
    let top: Vec<String> = own(root).unwrap_or_default();
    let mut all = BTreeSet::new();
    let mut stack = vec![schema];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    all.extend(props.keys().cloned());
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    (top, all.into_iter().collect())
}

/// Where `field` is written: its own position, else its nearest written ancestor's, else the step's.
fn position(positions: &BTreeMap<String, Position>, field: &str, source: &str, step: Position) -> Position {
    let mut field = field.to_string();
    loop {
        if let Some(at) = positions.get(&field) {
            return *at;
        }
        match field.rfind(['.', '[']) {
            Some(cut) if field.len() > source.len() => field.truncate(cut),
            _ => return positions.get(source).copied().unwrap_or(step),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["url"],
            "properties": {
                "url": {"type": "string"},
                "expect_status": {"type": "integer"},
                "max_latency_ms": {"type": "integer", "minimum": 1},
                "probes": {"type": "integer"},
                "mode": {"enum": ["fast", "slow"]},
                "strict": {"type": "boolean"}
            }
        })
    }

    #[test]
    fn a_placeholder_part_of_a_declared_output_covers_any_one_name() {
        let read = |text: &str| text.split('.').map(String::from).collect::<Vec<_>>();
        assert!(output_matches("status", &read("status")));
        assert!(output_matches("<metric>.phase", &read("error-rate.phase")));
        assert!(output_matches("segment.<name>", &read("segment.vip")));
        assert!(!output_matches("<metric>.phase", &read("error-rate.phaze")));
        assert!(!output_matches("<metric>.phase", &read("phase")));
        assert!(!output_matches("segment.<name>", &read("segment.a.b")));
        assert!(!output_matches("status", &read("statuz")));
    }

    #[test]
    fn every_problem_is_named_with_its_field_and_a_suggestion() {
        let mut input = json!({"expect_statuz": 404, "max_latency_mz": 1, "probes": "three", "mode": "medium"});
        let mut found = judge(&schema(), &mut input);
        found.sort();
        let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["", ".expect_statuz", ".max_latency_mz", ".mode", ".probes"], "{found:?}");
        assert_eq!(found[0].1, "missing required input `url`");
        assert_eq!(found[1].1, "unknown input `expect_statuz`; did you mean `expect_status`?");
        assert_eq!(found[2].1, "unknown input `max_latency_mz`; did you mean `max_latency_ms`?");
        assert!(found[4].1.contains("\"three\""), "{}", found[4].1);
    }

    #[test]
    fn a_value_outside_documented_variants_names_them() {
        let schema = json!({
            "type": "object",
            "properties": {"method": {"$ref": "#/$defs/Method"}},
            "$defs": {"Method": {"oneOf": [{"const": "GET", "description": "…"}, {"const": "HEAD"}]}}
        });
        let found = judge(&schema, &mut json!({"method": "POST"}));
        assert_eq!(found, [(".method".to_string(), r#""POST" is not one of "GET", "HEAD""#.to_string())]);
    }

    #[test]
    fn rendered_numbers_and_booleans_are_converted_and_outputs_are_left_for_the_run() {
        let mut input = json!({"url": "${{ steps.a.outputs.url }}", "probes": "3", "strict": "true", "max_latency_ms": "1.5"});
        let found = judge(&schema(), &mut input);
        assert_eq!(input["probes"], 3);
        assert_eq!(input["strict"], true);
        assert_eq!(input["max_latency_ms"], "1.5", "not an integer: kept and reported");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, ".max_latency_ms");
    }

    #[test]
    fn a_field_is_found_at_its_own_line_or_its_nearest_ancestor() {
        let at = |line| Position { line, column: 5 };
        let positions: BTreeMap<String, Position> =
            [("steps[0].with".to_string(), at(3)), ("steps[0].with.window".to_string(), at(4))].into();
        assert_eq!(position(&positions, "steps[0].with.window.samples", "steps[0].with", at(1)), at(4));
        assert_eq!(position(&positions, "steps[0].with", "steps[0].with", at(1)), at(3));
        assert_eq!(position(&BTreeMap::new(), "steps[0].with.url", "steps[0].with", at(1)), at(1));
    }
}
