//! The JSON Schema an editor reads for one pipeline (`gantry schema --pipeline FILE`): the pipeline
//! grammar as draft-07, the draft yaml-language-server 1.x validates, with each step's `with:` and
//! each entity's and environment's replacement input held to the input schema of the plugin it
//! feeds, so an editor completes plugin inputs and underlines typos as `gantry validate` would.

use crate::pipeline::model::Pipeline;
use crate::sandbox::PluginInfo;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The plugin each place of a pipeline feeds.
#[derive(Debug, Default)]
pub struct Fed<'a> {
    /// Each step's own `with:`, in file order; `None` where the plugin could not be described.
    pub steps: Vec<Option<&'a PluginInfo>>,
    /// Each entity's replacement inputs: entity → step id → plugin.
    pub entities: BTreeMap<String, BTreeMap<String, &'a PluginInfo>>,
    /// Each environment's replacement inputs: environment → step id → plugin.
    pub environments: BTreeMap<String, BTreeMap<String, &'a PluginInfo>>,
    /// The capabilities whose fields the grammar has.
    pub capabilities: crate::capability::Capabilities,
}

/// What a string holding an expression looks like: such a value is rendered before it is checked
/// (`pause_ms: ${{ env.PAUSE_MS }}` feeds an integer), so the editor lets it stand anywhere.
const EXPRESSION: &str = r"\$\{\{";

/// The pipeline grammar, draft-07, with every place in `fed` held to its plugin's input schema.
pub fn schema(fed: &Fed) -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut root = serde_json::to_value(generator.into_root_schema_for::<Pipeline>()).unwrap_or_default();
    crate::pipeline::units::extend_schema(&mut root, "definitions", &fed.capabilities);
    let mut moved = Map::new();
    let step = json!({"$ref": "#/definitions/StepDef"});
    let items: Vec<Value> = fed
        .steps
        .iter()
        .map(|info| match info {
            Some(info) => json!({
                "allOf": [step],
                "properties": {"with": input(info, &mut moved)},
                "description": about(info),
            }),
            None => step.clone(),
        })
        .collect();
    root["properties"]["steps"] = json!({"type": "array", "items": items, "additionalItems": step});
    for (key, overlays) in [("entities", &fed.entities), ("environments", &fed.environments)] {
        let named: Map<String, Value> = overlays
            .iter()
            .map(|(name, by_step)| {
                let with: Map<String, Value> =
                    by_step.iter().map(|(id, info)| (id.clone(), input(info, &mut moved))).collect();
                (name.clone(), json!({"allOf": [{"$ref": "#/definitions/Overlay"}], "properties": {"with": {"properties": with}}}))
            })
            .collect();
        root["properties"][key]["properties"] = Value::Object(named);
    }
    if let Some(definitions) = root.get_mut("definitions").and_then(Value::as_object_mut) {
        definitions.extend(moved);
    }
    root
}

/// A plugin's input schema to embed: its definitions moved into the root's `definitions` under the
/// plugin's name and version (so two plugins' `Input` do not meet), every `$ref` pointed there,
/// and an expression allowed wherever a value is.
fn input(info: &PluginInfo, moved: &mut Map<String, Value>) -> Value {
    let prefix = format!("{}@{}.", info.name, info.version);
    let mut schema = info.input_schema.clone();
    let Some(object) = schema.as_object_mut() else { return json!({}) };
    object.remove("$schema");
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(defs)) = object.remove(key) {
            for (name, mut def) in defs {
                repoint(&mut def, &prefix);
                allow_expressions(&mut def);
                moved.insert(format!("{prefix}{name}"), def);
            }
        }
    }
    repoint(&mut schema, &prefix);
    allow_expressions(&mut schema);
    schema
}

/// Points `#/$defs/X` and `#/definitions/X` at the moved `#/definitions/<prefix>X`.
fn repoint(value: &mut Value, prefix: &str) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(target)) = object.get_mut("$ref") {
                let name = target.strip_prefix("#/$defs/").or_else(|| target.strip_prefix("#/definitions/"));
                if let Some(name) = name {
                    *target = format!("#/definitions/{prefix}{name}");
                }
            }
            object.values_mut().for_each(|v| repoint(v, prefix));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| repoint(v, prefix)),
        _ => {}
    }
}

/// Lets each value the schema describes (properties, map values, list items) be an expression too.
fn allow_expressions(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else { return };
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(children)) = object.get_mut(key) {
            children.values_mut().for_each(or_expression);
        }
    }
    for key in ["additionalProperties", "items"] {
        match object.get_mut(key) {
            Some(child @ Value::Object(_)) => or_expression(child),
            Some(Value::Array(children)) => children.iter_mut().for_each(or_expression),
            _ => {}
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(children)) = object.get_mut(key) {
            children.iter_mut().for_each(allow_expressions);
        }
    }
}

/// `value`, or a string holding an expression. A plain string already admits one.
fn or_expression(value: &mut Value) {
    allow_expressions(value);
    let plain_string = value.get("type") == Some(&json!("string"))
        && ["enum", "const", "pattern", "format", "maxLength"].iter().all(|k| value.get(k).is_none());
    if plain_string || !value.is_object() {
        return;
    }
    let description = value.get("description").cloned();
    let mut either = json!({"anyOf": [value.take(), {"type": "string", "pattern": EXPRESSION}]});
    if let Some(description) = description {
        either["description"] = description;
    }
    *value = either;
}

/// What an editor shows on a step: its plugin and the outputs later steps may read.
fn about(info: &PluginInfo) -> String {
    let outputs = match &info.outputs {
        Some(list) if !list.is_empty() => {
            let names: Vec<String> = list.iter().map(|o| format!("`{}` ({})", o.name, o.description)).collect();
            format!(" Outputs: {}.", names.join(", "))
        }
        Some(_) => " Declares no outputs.".to_string(),
        None => String::new(),
    };
    format!("Plugin `{}` {}: {}.{outputs}", info.name, info.version, info.description.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::DeclaredOutput;

    fn check(url_schema: Value) -> PluginInfo {
        PluginInfo {
            name: "http-check".into(),
            version: "0.1.0".into(),
            description: "Checks a URL".into(),
            input_schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "additionalProperties": false,
                "required": ["url"],
                "properties": {
                    "url": url_schema,
                    "probes": {"type": "integer", "minimum": 1},
                    "method": {"$ref": "#/$defs/Method"},
                },
                "$defs": {"Method": {"oneOf": [{"const": "GET"}, {"const": "HEAD"}]}},
            }),
            capabilities: vec!["network".into()],
            outputs: Some(vec![DeclaredOutput { name: "status".into(), description: "the status".into() }]),
        }
    }

    fn validator(schema: &Value) -> jsonschema::Validator {
        jsonschema::draft7::new(schema).expect("the editor schema is valid draft-07")
    }

    #[test]
    fn a_step_input_is_held_to_its_plugin_schema_and_expressions_stand_anywhere() {
        let info = check(json!({"type": "string"}));
        let schema = schema(&Fed { steps: vec![Some(&info), None], ..Fed::default() });
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        let v = validator(&schema);
        let pipeline = |with: Value| {
            json!({"name": "p", "steps": [
                {"id": "h", "uses": "./plugins/http-check", "with": with},
                {"id": "other", "uses": "./plugins/x", "with": {"anything": 1}},
            ]})
        };
        assert!(v.is_valid(&pipeline(json!({"url": "https://a.example", "probes": 3, "method": "HEAD"}))));
        assert!(v.is_valid(&pipeline(json!({"url": "https://a.example", "probes": "${{ env.PROBES }}"}))));
        for wrong in [
            json!({"url": "https://a.example", "probez": 3}),
            json!({"url": "https://a.example", "probes": "three"}),
            json!({"url": "https://a.example", "probes": 0}),
            json!({"url": "https://a.example", "method": "POST"}),
            json!({"probes": 3}),
        ] {
            assert!(!v.is_valid(&pipeline(wrong.clone())), "{wrong} should not fit");
        }
        let about = schema["properties"]["steps"]["items"][0]["description"].as_str().unwrap();
        assert!(about.contains("http-check") && about.contains("`status`"), "{about}");
        assert_eq!(schema["definitions"]["http-check@0.1.0.Method"]["oneOf"][1]["const"], "HEAD");
    }

    #[test]
    fn an_overlay_replacement_input_is_held_to_the_plugin_it_feeds() {
        let info = check(json!({"type": "string", "format": "uri"}));
        let fed = Fed {
            steps: vec![Some(&info)],
            entities: BTreeMap::from([("the_7_space".into(), BTreeMap::from([("h".into(), &info)]))]),
            environments: BTreeMap::from([("production".into(), BTreeMap::from([("h".into(), &info)]))]),
            ..Fed::default()
        };
        let v = validator(&schema(&fed));
        let base = json!({"id": "h", "uses": "./plugins/http-check", "with": {"url": "https://a.example"}});
        for key in ["entities", "environments"] {
            let name = if key == "entities" { "the_7_space" } else { "production" };
            let with = |input: Value| json!({"name": "p", "steps": [base], key: {name: {"with": {"h": input}}}});
            assert!(v.is_valid(&with(json!({"url": "https://b.example"}))), "{key}");
            assert!(!v.is_valid(&with(json!({"url": "https://b.example", "expect_statuz": 1}))), "{key}");
        }
    }
}
