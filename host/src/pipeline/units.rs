//! The fields registered capabilities own in a pipeline file: taken out of the parsed YAML before
//! the model is typed (the model names no capability), kept as JSON with every position, and
//! handed to each capability to check and grant.

use super::model::Position;
use crate::capability::unit::{Declarations, Granted, StepFields, UnitProblem, Written};
use crate::capability::Capabilities;
use marked_yaml::Node;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// What the capabilities' fields hold in one file.
#[derive(Debug, Clone, Default)]
pub struct UnitSections {
    /// Top-level declarations: capability → declared name → value.
    pub declared: BTreeMap<String, BTreeMap<String, Value>>,
    /// An overlay's replacements, by `environments.<name>` or `entities.<name>`: capability → name → value.
    pub overlays: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>,
    /// Each step's capability fields, in step order: field name → value.
    pub steps: Vec<BTreeMap<String, Value>>,
    /// The pipeline file's directory, which relative paths in grants are relative to.
    pub base: std::path::PathBuf,
    /// Where each key and value was written, by field path (`redis.cache.url`, `steps[2].redis[0]`).
    pub positions: BTreeMap<String, Position>,
}

/// Adds every capability's fields to the pipeline grammar's JSON Schema: a step's `<name>:`, the
/// top-level and overlay `<name>:` declarations. `defs` is where the schema keeps its definitions
/// (`$defs`, or `definitions` in draft-07).
pub fn extend_schema(schema: &mut Value, defs: &str, capabilities: &Capabilities) {
    for unit in capabilities.iter() {
        let grammar = unit.grammar();
        let name = unit.name();
        let mut step = grammar.step.clone();
        if let Some(object) = step.as_object_mut() {
            object.entry("description").or_insert_with(|| json!(format!("Grants the step `{name}`: {}", grammar.about)));
        }
        if let Some(props) = schema.pointer_mut(&format!("/{defs}/StepDef/properties")).and_then(Value::as_object_mut) {
            props.insert(name.to_string(), step);
            for (field, also) in &grammar.also {
                props.insert(field.to_string(), also.clone());
            }
        }
        let Some(declaration) = grammar.declaration else { continue };
        let block = |about: String| json!({"type": "object", "description": about, "additionalProperties": declaration});
        if let Some(props) = schema.pointer_mut("/properties").and_then(Value::as_object_mut) {
            props.insert(name.to_string(), block(format!("{}, by name.", grammar.about)));
        }
        if let Some(props) = schema.pointer_mut(&format!("/{defs}/Overlay/properties")).and_then(Value::as_object_mut) {
            props.insert(name.to_string(), block(format!("{} that replace the pipeline's, by name, whole.", grammar.about)));
        }
    }
}

/// Takes every capability's fields out of the parsed file (after the structural pass checked them).
pub(crate) fn take(node: &mut Node, capabilities: &Capabilities) -> UnitSections {
    let mut sections = UnitSections::default();
    let Some(root) = node.as_mapping_mut() else { return sections };
    for unit in capabilities.iter() {
        let name = unit.name();
        if let Some(value) = remove(root, name) {
            let json = to_json(&value, name, &mut sections.positions);
            if let Value::Object(map) = json {
                sections.declared.insert(name.into(), map.into_iter().collect());
            }
        }
    }
    for kind in ["environments", "entities"] {
        let Some(overlays) = child(root, kind).and_then(Node::as_mapping_mut) else { continue };
        for (overlay, body) in overlays.iter_mut() {
            let Some(body) = body.as_mapping_mut() else { continue };
            let key = format!("{kind}.{}", overlay.as_str());
            for unit in capabilities.iter() {
                let name = unit.name();
                if let Some(value) = remove(body, name) {
                    let json = to_json(&value, &format!("{key}.{name}"), &mut sections.positions);
                    if let Value::Object(map) = json {
                        sections.overlays.entry(key.clone()).or_default().insert(name.into(), map.into_iter().collect());
                    }
                }
            }
        }
    }
    if let Some(steps) = child(root, "steps").and_then(Node::as_sequence_mut) {
        for (i, step) in steps.iter_mut().enumerate() {
            let mut fields = BTreeMap::new();
            if let Some(step) = step.as_mapping_mut() {
                for field in capabilities.iter().flat_map(|unit| unit.fields()) {
                    if let Some(value) = remove(step, field) {
                        fields.insert(field.to_string(), to_json(&value, &format!("steps[{i}].{field}"), &mut sections.positions));
                    }
                }
            }
            sections.steps.push(fields);
        }
    }
    sections
}

fn child<'a>(map: &'a mut marked_yaml::types::MarkedMappingNode, name: &str) -> Option<&'a mut Node> {
    map.iter_mut().find(|(k, _)| k.as_str() == name).map(|(_, v)| v)
}

fn remove(map: &mut marked_yaml::types::MarkedMappingNode, name: &str) -> Option<Node> {
    let key = map.keys().find(|k| k.as_str() == name)?.clone();
    map.remove(&key)
}

impl UnitSections {
    /// The declarations of `capability` in force for a target: the top-level ones, replaced by name
    /// by each overlay in `layers` (`environments.<name>`, then `entities.<name>`).
    pub fn declarations(&self, capability: &str, layers: &[String]) -> Declarations {
        let mut by_name: BTreeMap<String, (String, Value)> = BTreeMap::new();
        for (name, value) in self.declared.get(capability).into_iter().flatten() {
            by_name.insert(name.clone(), (format!("{capability}.{name}"), value.clone()));
        }
        for layer in layers {
            let replaced = self.overlays.get(layer).and_then(|o| o.get(capability));
            for (name, value) in replaced.into_iter().flatten() {
                by_name.insert(name.clone(), (format!("{layer}.{capability}.{name}"), value.clone()));
            }
        }
        Declarations { by_name }
    }

    /// The grants of step `index` for a target, by capability name: what each capability made of
    /// what the step wrote, or every problem.
    pub fn grants(
        &self,
        capabilities: &Capabilities,
        index: usize,
        layers: &[String],
        secrets: &BTreeMap<String, Vec<String>>,
    ) -> Result<BTreeMap<String, Granted>, Vec<UnitProblem>> {
        let mut granted = BTreeMap::new();
        let mut problems = Vec::new();
        let written = self.steps.get(index);
        for unit in capabilities.iter() {
            let fields: BTreeMap<String, Value> = unit
                .fields()
                .into_iter()
                .filter_map(|f| Some((f.to_string(), written?.get(f)?.clone())))
                .collect();
            if fields.is_empty() {
                continue;
            }
            let name = unit.name();
            let step = StepFields::new(format!("steps[{index}]"), &self.base, fields);
            match unit.grant(&step, &self.declarations(name, layers), secrets) {
                Ok(grant) if grant.is_nothing() => {}
                Ok(grant) => {
                    granted.insert(name.to_string(), grant);
                }
                Err(found) => problems.extend(found),
            }
        }
        if problems.is_empty() {
            Ok(granted)
        } else {
            Err(problems)
        }
    }

    /// Every problem of every step's grants, against the top-level declarations and against each
    /// environment's and entity's on their own; and every overlay replacing a name not declared.
    pub fn check(
        &self,
        capabilities: &Capabilities,
        secrets: &BTreeMap<String, Vec<String>>,
    ) -> Vec<UnitProblem> {
        let mut problems = Vec::new();
        for (layer, by_capability) in &self.overlays {
            for (capability, replaced) in by_capability {
                let declared = self.declared.get(capability);
                for (name, value) in replaced {
                    let field = format!("{layer}.{capability}.{name}");
                    match declared.and_then(|d| d.get(name)) {
                        None => problems.push(UnitProblem::new(
                            field,
                            format!("replaces `{name}`, which the pipeline's `{capability}:` does not declare: declare it there first"),
                        )),
                        Some(own) => {
                            let Some(unit) = capabilities.get(capability) else { continue };
                            let own_field = format!("{capability}.{name}");
                            let own = Written { field: &own_field, value: own };
                            problems.extend(unit.widening(&own, &Written { field: &field, value }));
                        }
                    }
                }
            }
        }
        let mut targets: Vec<Vec<String>> = vec![vec![]];
        targets.extend(self.overlays.keys().map(|layer| vec![layer.clone()]));
        for i in 0..self.steps.len() {
            for layers in &targets {
                if let Err(found) = self.grants(capabilities, i, layers, secrets) {
                    problems.extend(found);
                }
            }
        }
        // A problem of one declaration is found once per target that uses it.
        let mut seen = std::collections::BTreeSet::new();
        problems.retain(|p| seen.insert((p.field.clone(), p.message.clone())));
        problems
    }

    /// Where `field` was written: the field itself, else the nearest enclosing field.
    pub fn position(&self, field: &str) -> Position {
        let mut field = field;
        loop {
            if let Some(at) = self.positions.get(field) {
                return *at;
            }
            match field.rfind(['.', '[']) {
                Some(cut) => field = &field[..cut],
                None => return Position::default(),
            }
        }
    }
}

/// YAML → JSON for a capability's field: the loader's typing of scalars, with every position.
fn to_json(node: &Node, field: &str, positions: &mut BTreeMap<String, Position>) -> Value {
    let mut strings = Vec::new();
    super::load::to_json(node, field, &mut strings, positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_replace_declarations_by_name_in_order() {
        let mut sections = UnitSections::default();
        sections.declared.insert("redis".into(), BTreeMap::from([("cache".into(), json!({"url": "a"})), ("s".into(), json!(1))]));
        let layer = |url: &str| BTreeMap::from([("redis".to_string(), BTreeMap::from([("cache".to_string(), json!({"url": url}))]))]);
        sections.overlays.insert("environments.production".into(), layer("b"));
        sections.overlays.insert("entities.e".into(), layer("c"));
        let d = sections.declarations("redis", &[]);
        assert_eq!(d.get("cache").unwrap().value["url"], "a");
        let d = sections.declarations("redis", &["environments.production".into()]);
        assert_eq!(d.get("cache").unwrap().field, "environments.production.redis.cache");
        let d = sections.declarations("redis", &["environments.production".into(), "entities.e".into()]);
        assert_eq!(d.get("cache").unwrap().value["url"], "c");
        assert_eq!(d.get("s").unwrap().field, "redis.s");
    }

    #[test]
    fn a_position_falls_back_to_the_enclosing_field() {
        let mut sections = UnitSections::default();
        sections.positions.insert("steps[1].redis".into(), Position { line: 9, column: 5 });
        assert_eq!(sections.position("steps[1].redis[0]").line, 9);
        assert_eq!(sections.position("nowhere.at.all"), Position::default());
    }
}
