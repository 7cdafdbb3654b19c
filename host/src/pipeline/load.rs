//! Reads a pipeline file through the three passes: syntax, structure, meaning.

use super::checked::Checked;
use super::model::{Pipeline, Position};
use super::units::UnitSections;
use super::{schema_walk, units, validate, Problem, Problems};
use crate::capability::Capabilities;
use marked_yaml::{LoaderOptions, Node};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A pipeline that passed every check.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file it came from.
    pub path: PathBuf,
    /// The typed model.
    pub pipeline: Pipeline,
    /// Each step's `with:` as JSON, in step order.
    pub inputs: Vec<serde_json::Value>,
    /// Each step's `with:` strings with their positions, for expression checks.
    pub(crate) input_strings: Vec<Vec<Located>>,
    /// Where each key and value of every `with:` is written, by field path (`steps[0].with.url`,
    /// `environments.production.with.shift.pause_ms`): checks of an input against its plugin's
    /// schema name the line.
    pub input_positions: BTreeMap<String, Position>,
    /// Overlay inputs as JSON: `environments.<name>` or `entities.<name>` → step id → input.
    pub overlay_inputs: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// The typed facts the meaning pass parsed: plugins, conditions, limits, grants, secret sources.
    pub checked: Checked,
    /// The capabilities it was loaded with: their fields are in `units`.
    pub capabilities: Capabilities,
    /// What registered capabilities' fields hold, with their positions.
    pub units: UnitSections,
}

/// A string found in `with:`, where it is and under which field.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub at: Position,
    pub field: String,
    pub text: String,
}

/// Loads and checks a pipeline file, with the capabilities gantry ships.
pub fn load(path: &Path) -> Result<Loaded, Problems> {
    load_with(path, &Capabilities::builtin())
}

/// Loads and checks a pipeline file whose steps may be granted `capabilities` (an embedder's own
/// among them).
pub fn load_with(path: &Path, capabilities: &Capabilities) -> Result<Loaded, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems(vec![Problem {
            file: path.to_path_buf(),
            at: Position::default(),
            field: "(file)".into(),
            message: format!("cannot read the pipeline: {e}"),
        }])
    })?;
    load_str_with(path, &text, capabilities)
}

/// Loads and checks pipeline text; `path` names it in problems and anchors relative plugin paths.
pub fn load_str(path: &Path, text: &str) -> Result<Loaded, Problems> {
    load_str_with(path, text, &Capabilities::builtin())
}

/// [`load_str`] with these capabilities.
pub fn load_str_with(path: &Path, text: &str, capabilities: &Capabilities) -> Result<Loaded, Problems> {
    let problem = |at: Position, field: &str, message: String| Problem {
        file: path.to_path_buf(),
        at,
        field: field.to_string(),
        message,
    };
    // A quoted scalar is a string, as YAML means it: `version: "1.10"` must not become 1.1.
    let options = LoaderOptions::default().error_on_duplicate_keys(true).prevent_coercion(true);
    let mut node =
        marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| Problems(vec![syntax_problem(path, &e)]))?;

    let schema = super::json_schema_with(capabilities);
    let mut found = Vec::new();
    // What does not fit is reported and removed, so the meaning pass still sees the rest.
    schema_walk::check(&mut node, &schema, &schema, "", &mut found);
    let mut problems: Vec<Problem> =
        found.into_iter().map(|(at, field, message)| problem(at, &field, message)).collect();
    // The model names no capability: their fields are taken out, and checked by each capability below.
    let mut units = units::take(&mut node, capabilities);
    units.base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let pipeline: Pipeline = match marked_yaml::from_node(&node) {
        Ok(pipeline) => pipeline,
        // A required field was missing or removed: the structural problems say why.
        Err(_) if !problems.is_empty() => return Err(Problems(problems)),
        Err(e) => {
            let (field, message) = (e.path().unwrap_or("(document)").to_string(), e.to_string());
            let at = e.into_inner().start_mark().map(|m| Position { line: m.line(), column: m.column() });
            return Err(Problems(vec![problem(at.unwrap_or_default(), &field, message)]));
        }
    };

    let steps = node.as_mapping().and_then(|m| m.get_node("steps")).and_then(Node::as_sequence);
    let mut inputs = Vec::new();
    let mut input_strings = Vec::new();
    let mut positions = BTreeMap::new();
    for i in 0..pipeline.steps.len() {
        let step = steps.and_then(|s| s.get(i)).and_then(Node::as_mapping);
        let with = step.and_then(|m| m.get_node("with"));
        // A problem of the input as a whole (a missing required key) is shown at `with:` itself.
        if let Some((key, _)) = step.and_then(|m| m.iter().find(|(k, _)| k.as_str() == "with")) {
            positions.insert(format!("steps[{i}].with"), Position::of(key.span()));
        }
        let mut strings = Vec::new();
        let json = match with {
            Some(node) => to_json(node, &format!("steps[{i}].with"), &mut strings, &mut positions),
            None => serde_json::Value::Object(Default::default()),
        };
        let json = if json.is_null() { serde_json::Value::Object(Default::default()) } else { json };
        inputs.push(json);
        input_strings.push(strings);
    }
    let mut overlay_inputs: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    let root = node.as_mapping();
    for kind in ["environments", "entities"] {
        let Some(overlays) = root.and_then(|m| m.get_node(kind)).and_then(Node::as_mapping) else { continue };
        for (name, overlay) in overlays.iter() {
            let Some(with) = overlay.as_mapping().and_then(|m| m.get_node("with")).and_then(Node::as_mapping) else {
                continue;
            };
            for (step, input) in with.iter() {
                let field = format!("{kind}.{}.with.{}", name.as_str(), step.as_str());
                let mut strings = Vec::new();
                positions.insert(field.clone(), Position::of(step.span()));
                let json = to_json(input, &field, &mut strings, &mut positions);
                // Expressions in an overlay's input are checked as the step's own.
                if let Some(i) = pipeline.steps.iter().position(|s| s.id.value == step.as_str()) {
                    input_strings[i].extend(strings);
                }
                overlay_inputs
                    .entry(format!("{kind}.{}", name.as_str()))
                    .or_default()
                    .insert(step.as_str().to_string(), json);
            }
        }
    }
    let mut loaded = Loaded {
        path: path.to_path_buf(),
        pipeline,
        inputs,
        input_strings,
        input_positions: positions,
        overlay_inputs,
        checked: Checked::default(),
        capabilities: capabilities.clone(),
        units,
    };
    let binds = loaded.secret_binds();
    for p in loaded.units.check(capabilities, &binds) {
        problems.push(problem(loaded.units.position(&p.field), &p.field, p.message));
    }
    match validate::check(&loaded) {
        Ok(checked) if problems.is_empty() => {
            loaded.checked = checked;
            Ok(loaded)
        }
        Ok(_) => {
            problems.sort_by_key(|p| p.at);
            Err(Problems(problems))
        }
        Err(found) => {
            // A field the structural pass reported holds a stand-in: its meaning is not checked.
            let reported: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
            let within = |field: &str, of: &str| {
                field == of || field.strip_prefix(of).is_some_and(|rest| rest.starts_with(['.', '[']))
            };
            problems.extend(found.into_iter().filter(|p| !reported.iter().any(|r| within(&p.field, r))));
            problems.sort_by_key(|p| p.at);
            Err(Problems(problems))
        }
    }
}

impl Loaded {
    /// The declared secrets and the origins each is bound to, as written: what a capability's
    /// grant check reads.
    pub fn secret_binds(&self) -> BTreeMap<String, Vec<String>> {
        let secrets = &self.pipeline.secrets;
        secrets.iter().map(|(name, d)| (name.clone(), d.bind.iter().map(|b| b.value.clone()).collect())).collect()
    }
}

fn syntax_problem(path: &Path, e: &marked_yaml::LoadError) -> Problem {
    use marked_yaml::LoadError::*;
    let marker = match e {
        TopLevelMustBeMapping(m)
        | TopLevelMustBeSequence(m)
        | UnexpectedAnchor(m)
        | MappingKeyMustBeScalar(m)
        | UnexpectedTag(m)
        | ScanError(m, _) => Some(*m),
        DuplicateKey(inner) => inner.key.span().start().copied(),
    };
    let at = marker.map(|m| Position { line: m.line(), column: m.column() }).unwrap_or_default();
    let message = match e {
        ScanError(_, scan) => format!("invalid YAML: {scan}"),
        TopLevelMustBeMapping(_) => "a pipeline file must be a mapping with `name:` and `steps:`".into(),
        UnexpectedAnchor(_) => "YAML anchors and aliases are not supported in pipeline files".into(),
        DuplicateKey(inner) => format!("duplicate key `{}`", inner.key.as_str()),
        other => format!("invalid YAML: {other}"),
    };
    Problem { file: path.to_path_buf(), at, field: "(syntax)".into(), message }
}

/// YAML node → JSON, typing plain scalars as YAML 1.2's core schema does.
/// Every key's position (else its value's) goes to `positions` under its field path.
pub(super) fn to_json(
    node: &Node,
    field: &str,
    strings: &mut Vec<Located>,
    positions: &mut BTreeMap<String, Position>,
) -> serde_json::Value {
    use serde_json::Value;
    positions.entry(field.to_string()).or_insert_with(|| Position::of(node.span()));
    match node {
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let child = format!("{field}.{}", k.as_str());
                    positions.insert(child.clone(), Position::of(k.span()));
                    (k.to_string(), to_json(v, &child, strings, positions))
                })
                .collect(),
        ),
        Node::Sequence(seq) => Value::Array(
            seq.iter().enumerate().map(|(i, v)| to_json(v, &format!("{field}[{i}]"), strings, positions)).collect(),
        ),
        Node::Scalar(s) => {
            let text = s.as_str();
            if s.may_coerce() {
                if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
                    return Value::Null;
                }
                if let Some(b) = s.as_bool() {
                    return Value::Bool(b);
                }
                if let Ok(i) = text.parse::<i64>() {
                    return Value::from(i);
                }
                if let Some(f) = text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    return Value::Number(f);
                }
            }
            strings.push(Located { at: Position::of(s.span()), field: field.to_string(), text: text.to_string() });
            Value::String(text.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_scalars_stay_strings_and_plain_ones_are_typed() {
        let text = "name: q\nsteps:\n  - id: a\n    uses: ./p.wasm\n    with: { v: \"1.10\", n: 1.5, yes: 'true', on: true }\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"").unwrap();
        let loaded = load_str(&dir.path().join("q.yaml"), text).unwrap();
        let input = &loaded.inputs[0];
        assert_eq!(input["v"], "1.10");
        assert_eq!(input["n"], 1.5);
        assert_eq!(input["yes"], "true");
        assert_eq!(input["on"], true);
    }
}
