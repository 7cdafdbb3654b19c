//! The structural pass: walks the parsed YAML nodes against the JSON Schema
//! derived from the model and reports every unknown field, wrong type and
//! missing field with its position. serde stops at the first error; this does not.
//! It also removes what it reported (unknown fields, values of the wrong type),
//! so the rest of the file can still be typed and checked for meaning in the
//! same pass: one run reports every problem of every step.

use super::model::Position;
use marked_yaml::types::{MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{Node, Span};
use serde_json::Value;

/// A structural problem: where, which field, what.
pub(crate) type Found = (Position, String, String);

/// Checks `node` against `schema`, pushing problems onto `out` and removing
/// the mapping entries it reported. Returns false when `node` itself does not fit.
pub(crate) fn check(node: &mut Node, schema: &Value, root: &Value, field: &str, out: &mut Vec<Found>) -> bool {
    let schema = resolve(schema, root);
    if let Some(any_of) = schema.get("anyOf").and_then(Value::as_array) {
        if is_null(node) && any_of.iter().any(|s| resolve(s, root).get("type") == Some(&Value::from("null"))) {
            return true;
        }
        let alternatives: Vec<&Value> =
            any_of.iter().filter(|s| resolve(s, root).get("type") != Some(&Value::from("null"))).collect();
        // A node that fits one alternative whole fits; otherwise the first one's problems are reported.
        if alternatives.len() > 1
            && alternatives.iter().any(|alt| {
                let mut found = Vec::new();
                check(&mut node.clone(), alt, root, field, &mut found) && found.is_empty()
            })
        {
            return true;
        }
        if let Some(first) = alternatives.first() {
            return check(node, first, root, field, out);
        }
        return true;
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return true, // `true` or no type: anything goes
    };
    if types.contains(&"null") && is_null(node) {
        return true;
    }
    let at = Position::of(node.span());
    match node {
        Node::Mapping(map) if types.contains(&"object") => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let mut remove = Vec::new();
            for (key, value) in map.iter_mut() {
                let child = if field.is_empty() { shown(key) } else { format!("{field}.{}", shown(key)) };
                let fits = match properties.and_then(|p| p.get(key.as_str())) {
                    Some(s) => check(value, s, root, &child, out),
                    None => match additional {
                        Some(Value::Bool(false)) => {
                            let known: Vec<&str> =
                                properties.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
                            out.push((Position::of(key.span()), child, unknown_field(key.as_str(), &known)));
                            false
                        }
                        Some(s @ Value::Object(_)) => check(value, s, root, &child, out),
                        _ => true,
                    },
                };
                if !fits {
                    remove.push(key.clone());
                }
            }

            // A mapping's own span starts oddly in marked-yaml; its first key is where a reader looks.
            let map_at = map.keys().next().map(|k| Position::of(k.span())).unwrap_or(at);
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if map.get_node(name).is_none() {
                    let target = if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
                    out.push((map_at, target, format!("missing required field `{name}`")));
                }
            }
            // Removed only now, so a field of the wrong type is not also reported missing.
            for key in remove {
                map.remove(&key);
            }
            // A stand-in for each required field reported, so the step still types and the
            // meaning pass reports the problems of the rest of the file in the same run.
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if map.get_node(name).is_none() {
                    if let Some(stand_in) = properties.and_then(|p| p.get(name)).and_then(|s| stand_in(s, root)) {
                        map.insert(MarkedScalarNode::new(Span::new_blank(), name.to_string()), stand_in);
                    }
                }
            }
            true
        }
        Node::Sequence(seq) if types.contains(&"array") => {
            let Some(items) = schema.get("items") else { return true };
            let mut fits = true;
            for (i, item) in seq.iter_mut().enumerate() {
                fits &= check(item, items, root, &format!("{field}[{i}]"), out);
            }
            fits
        }
        Node::Scalar(s) => {
            let text = s.as_str();
            let fits = types.iter().any(|t| match *t {
                "string" => true,
                "boolean" => s.as_bool().is_some(),
                "integer" => text.parse::<i64>().is_ok(),
                "number" => text.parse::<f64>().is_ok(),
                _ => false,
            });
            if !fits {
                out.push((at, field.to_string(), format!("expected {}, found {text:?}", describe(&types))));
            }
            fits
        }
        _ => {
            out.push((at, field.to_string(), format!("expected {}, found {}", describe(&types), kind(node))));
            false
        }
    }
}

fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => root.get("$defs").and_then(|d| d.get(name)).map(|s| resolve(s, root)).unwrap_or(schema),
        None => schema,
    }
}

/// An empty value of the type `schema` asks for, standing in for a field already reported.
fn stand_in(schema: &Value, root: &Value) -> Option<Node> {
    let schema = resolve(schema, root);
    if let Some(first) = schema.get("anyOf").and_then(Value::as_array).and_then(|a| a.first()) {
        return stand_in(first, root);
    }
    let scalar = |text: &str| Some(Node::Scalar(MarkedScalarNode::new(Span::new_blank(), text.to_string())));
    match schema.get("type")?.as_str()? {
        "string" => scalar(""),
        "integer" | "number" => scalar("1"),
        "boolean" => scalar("false"),
        "array" => Some(Node::Sequence(MarkedSequenceNode::new_empty(Span::new_blank()))),
        _ => None,
    }
}

fn is_null(node: &Node) -> bool {
    node.as_scalar().is_some_and(|s| s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a scalar",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

fn describe(types: &[&str]) -> String {
    let names: Vec<&str> = types
        .iter()
        .filter(|t| **t != "null")
        .map(|t| match *t {
            "object" => "a mapping",
            "array" => "a list",
            "string" => "a string",
            "boolean" => "true or false",
            "integer" => "a whole number",
            "number" => "a number",
            other => other,
        })
        .collect();
    names.join(" or ")
}

/// "unknown field `nedds`; did you mean `needs`? (expected one of ...)".
/// A key as a field path shows it: quoted when it is empty or would read as more than one field.
fn shown(key: &str) -> String {
    if key.is_empty() || key.contains(|c: char| c == '.' || c == '[' || c == ']' || c == '"' || c.is_whitespace()) {
        format!("{key:?}")
    } else {
        key.to_string()
    }
}

pub(crate) fn unknown_field(name: &str, known: &[&str]) -> String {
    unknown("field", name, known)
}

/// "unknown `noun` `name`; did you mean …" with the closest of `known`, else the list of them.
pub fn unknown(noun: &str, name: &str, known: &[&str]) -> String {
    // Close enough to be a typo, but not so loose that short names match anything.
    let best = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 1.max(k.len() / 3) && *d < name.len())
        .min();
    let mut known = known.to_vec();
    known.sort_unstable();
    known.dedup();
    match best {
        Some((_, k)) => format!("unknown {noun} `{name}`; did you mean `{k}`?"),
        None => format!("unknown {noun} `{name}`; expected one of: {}", known.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_come_from_the_known_fields() {
        assert_eq!(unknown_field("nedds", &["needs", "name"]), "unknown field `nedds`; did you mean `needs`?");
        assert_eq!(unknown_field("zzzzzz", &["id", "uses"]), "unknown field `zzzzzz`; expected one of: id, uses");
    }

    #[test]
    fn an_empty_or_dotted_key_is_quoted_in_the_field_path() {
        // Found by the `pipeline` fuzz target: a `"": x` line gave a problem with an empty field.
        let problems =
            crate::pipeline::load_str("p.yaml".as_ref(), "name: p\nsteps: []\n\"\": x\n\"a.b\": y\n").unwrap_err();
        let fields: Vec<&str> = problems.0.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"\"\"") && fields.contains(&"\"a.b\""), "{fields:?}");
    }
}
