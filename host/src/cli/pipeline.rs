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

/// Loads, validates and plans a pipeline; prints the plan.
pub(crate) fn plan(file: PathBuf, environment: String, entity: String, json: bool) -> anyhow::Result<u8> {
    let loaded = match pipeline::load(&file) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            return Ok(super::EXIT_USAGE);
        }
    };
    let plan = crate::plan::plan(&loaded, &environment, &entity, &crate::build::BuildOptions::default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(0);
    }
    println!("plan: {}  environment={}  entity={}", plan.pipeline, plan.environment, plan.entity);
    for (i, group) in plan.groups.iter().enumerate() {
        println!("  wave {}: {}", i + 1, group.join(", "));
    }
    let or_none = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
    for step in &plan.steps {
        println!();
        println!("step {}{}", step.id, step.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default());
        println!("  plugin    {} sha256:{}", step.uses, step.sha256);
        println!("  needs     {}", or_none(&step.needs));
        println!("  if        {}", step.condition);
        println!("  network   {}", or_none(&step.network));
        let secrets: Vec<String> =
            step.secrets.iter().map(|s| format!("{} ({}) -> {}", s.name, s.source, s.bound_to.join(" "))).collect();
        println!("  secrets   {}", or_none(&secrets));
        println!("  files     {}", or_none(&step.files));
        let retry = match &step.backoff {
            Some(b) => format!("{} attempts, backoff {b}", step.attempts),
            None => format!("{} attempts", step.attempts),
        };
        println!("  limits    timeout {}, {retry}", step.timeout.as_deref().unwrap_or("30s"));
        println!("  input     {}", step.input);
    }
    Ok(0)
}
