//! The pipeline loader and validator on arbitrary text: no panic, and every problem points into the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    let Err(problems) = gantry_host::pipeline::load_str(Path::new("fuzz/pipeline.yaml"), text) else {
        return;
    };
    assert!(!problems.0.is_empty(), "a refusal names at least one problem");
    // YAML breaks lines at `\r` as well as `\n`; one more for a problem at the very end.
    let lines = text.bytes().filter(|b| matches!(b, b'\n' | b'\r')).count() + 2;
    for problem in &problems.0 {
        assert!(problem.at.line <= lines, "{problem} points past the end of a {lines}-line file");
        assert!(!problem.field.is_empty() && !problem.message.is_empty(), "{problem:?}");
    }
});
