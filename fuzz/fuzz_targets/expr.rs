//! The expression parser and evaluator on arbitrary text: `if:` conditions, `${{ }}` templates and
//! substitution never panic, and a parsed condition evaluates under every combination of run facts.
#![no_main]

use gantry_host::pipeline::condition::{Condition, Facts};
use gantry_host::pipeline::expr;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|text: &str| {
    let outputs = BTreeMap::from([(
        "build".to_string(),
        BTreeMap::from([("version".to_string(), "1.2.3".to_string()), ("count".to_string(), "7".to_string())]),
    )]);
    if let Ok(condition) = Condition::parse(text) {
        for bits in 0..8u8 {
            let facts = Facts {
                failed: bits & 1 != 0,
                needs_ok: bits & 2 != 0,
                cancelled: bits & 4 != 0,
                environment: "production",
                entity: "the_7_space",
                outputs: &outputs,
            };
            let _ = condition.eval(&facts);
        }
        let _ = (expr::refs(condition.expr()), expr::calls(condition.expr()));
    }
    if let Ok(found) = expr::template(text) {
        for (offset, _) in found {
            assert!(text[offset..].starts_with("${{"), "offset {offset} is not where the expression starts");
        }
    }
    let value = serde_json::json!({"a": text, "b": [text, {"c": text}]});
    let lookup = |path: &[&str]| (path.first() == Some(&"env")).then(|| path.join("."));
    let _ = expr::substitute(&value, &lookup);
});
