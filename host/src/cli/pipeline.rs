//! `gantry validate` and `gantry schema`.

use crate::pipeline;
use std::path::PathBuf;

/// Checks a pipeline file and prints every problem; exit 2 when there is any.
pub(crate) fn validate(file: PathBuf, json: bool) -> u8 {
    match pipeline::load(&file) {
        Ok(loaded) => {
            if json {
                println!("{}", serde_json::json!({"ok": true, "file": file, "steps": loaded.pipeline.steps.len()}));
            } else {
                println!("{}: ok ({} steps)", file.display(), loaded.pipeline.steps.len());
            }
            0
        }
        Err(problems) => {
            if json {
                let list: Vec<_> = problems
                    .0
                    .iter()
                    .map(|p| {
                        serde_json::json!({"file": p.file, "line": p.at.line, "column": p.at.column, "field": p.field, "message": p.message})
                    })
                    .collect();
                println!("{}", serde_json::json!({"ok": false, "problems": list}));
            } else {
                eprintln!("{problems}");
                let n = problems.0.len();
                eprintln!("{n} problem{} in {}", if n == 1 { "" } else { "s" }, file.display());
            }
            super::EXIT_USAGE
        }
    }
}

/// Prints the JSON Schema of pipeline files.
pub(crate) fn schema() -> u8 {
    println!("{}", serde_json::to_string_pretty(&pipeline::json_schema()).unwrap_or_default());
    0
}
