//! Configuration files read into flat `key.path → value` entries: YAML, JSON
//! and `.env`. Keys are kept as written; rules match them case-insensitively.

use serde_json::Value;
use std::path::Path;

/// One leaf of a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// File it came from.
    pub file: String,
    /// Dotted key path, with `[i]` for list items.
    pub path: String,
    /// The value.
    pub value: Value,
}

/// Reads and flattens one file by its extension.
pub fn parse(file: &str, text: &str) -> Result<Vec<Entry>, String> {
    let name = Path::new(file).file_name().and_then(|n| n.to_str()).unwrap_or(file);
    let ext = Path::new(file).extension().and_then(|e| e.to_str()).unwrap_or("");
    let value: Value = if name == ".env" || name.starts_with(".env.") || ext == "env" {
        parse_env(text)
    } else if ext == "json" {
        serde_json::from_str(text).map_err(|e| format!("{file}: invalid JSON: {e}"))?
    } else if ext == "yaml" || ext == "yml" {
        serde_yaml::from_str(text).map_err(|e| format!("{file}: invalid YAML: {e}"))?
    } else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    flatten(file, "", &value, &mut out);
    Ok(out)
}

/// Whether a file name is one the audit reads.
pub fn is_config(file: &str) -> bool {
    let name = Path::new(file).file_name().and_then(|n| n.to_str()).unwrap_or(file);
    name == ".env" || name.starts_with(".env.") || [".yaml", ".yml", ".json", ".env"].iter().any(|e| name.ends_with(e))
}

/// `KEY=value` lines; quotes stripped, `export` and comments ignored, values typed like YAML scalars.
fn parse_env(text: &str) -> Value {
    let mut map = serde_json::Map::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            let typed = match v {
                "true" | "TRUE" | "True" => Value::Bool(true),
                "false" | "FALSE" | "False" => Value::Bool(false),
                _ => v
                    .parse::<f64>()
                    .ok()
                    .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number))
                    .unwrap_or_else(|| Value::String(v.into())),
            };
            map.insert(k.trim().to_string(), typed);
        }
    }
    Value::Object(map)
}

fn flatten(file: &str, prefix: &str, value: &Value, out: &mut Vec<Entry>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(file, &path, v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(file, &format!("{prefix}[{i}]"), v, out);
            }
        }
        leaf => out.push(Entry { file: file.to_string(), path: prefix.to_string(), value: leaf.clone() }),
    }
}

/// Reads every configuration file under `root` (a file or a directory, recursively).
pub fn read_tree(root: &str) -> Result<Vec<(String, String)>, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("cannot read {root}: {e} (grant it with `files:`)"))?;
    if meta.is_file() {
        let text = std::fs::read_to_string(root).map_err(|e| format!("cannot read {root}: {e}"))?;
        return Ok(vec![(root.to_string(), text)]);
    }
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| format!("cannot list {root}: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    for path in entries {
        if std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            files.extend(read_tree(&path)?);
        } else if is_config(&path) {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
            files.push((path, text));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_json_and_env_flatten_to_paths() {
        let y = parse("/c/app.yaml", "db:\n  encrypted: true\ncors:\n  origins: ['*']\n").unwrap();
        assert_eq!(y[0].path, "cors.origins[0]");
        assert_eq!(y[1], Entry { file: "/c/app.yaml".into(), path: "db.encrypted".into(), value: Value::Bool(true) });
        let j = parse("/c/a.json", r#"{"jwt": {"ttl": 3600}}"#).unwrap();
        assert_eq!(j[0].path, "jwt.ttl");
        let e = parse("/c/.env", "# x\nexport DEBUG=true\nAPI_KEY='abc'\n").unwrap();
        assert_eq!(e.len(), 2);
        assert!(e.iter().any(|x| x.path == "DEBUG" && x.value == Value::Bool(true)));
        assert!(parse("/c/bad.yaml", "a: [").unwrap_err().contains("invalid YAML"));
        assert!(parse("/c/readme.md", "# hi").unwrap().is_empty());
    }
}
