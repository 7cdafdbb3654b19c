//! The import check: no top-level module of `host/src` imports one that imports it back, so the
//! layers docs/architecture.md draws stay true. It reads the sources (`crate::x` paths, grouped
//! `crate::{x, y}` imports included) and fails naming every import that closes a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Importer → imported → where (`file:line`).
type Imports = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The top-level modules: each `.rs` file and directory of `src` but the crate roots.
fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().trim_end_matches(".rs").to_string())
        .filter(|m| m != "lib" && m != "main")
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The module names a text after `crate::` starts with: one, or each of a `{…}` group's.
fn named(after: &str) -> Vec<String> {
    let word = |s: &str| s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>();
    match after.strip_prefix('{') {
        Some(group) => {
            // Only the group's top level: `{a::{b, c}, d}` names a and d.
            let mut depth = 0;
            let mut names = vec![word(group.trim_start())];
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => names.push(word(group[i + 1..].trim_start())),
                    _ => {}
                }
            }
            names.retain(|n| !n.is_empty());
            names
        }
        None => vec![word(after)],
    }
}

fn imports(src: &Path) -> Imports {
    let modules = modules(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut imports = Imports::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let from = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if !modules.contains(&from) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Comments dropped, lines kept: a grouped import may span lines.
        let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("").to_string() + "\n").collect();
        for (at, _) in code.match_indices("crate::") {
            let place = format!("{}:{}", relative.display(), code[..at].matches('\n').count() + 1);
            for to in named(&code[at + "crate::".len()..]) {
                if to != from && modules.contains(&to) {
                    imports.entry(from.clone()).or_default().entry(to).or_default().push(place.clone());
                }
            }
        }
    }
    imports
}

/// Whether `to` reaches `from` through `imports`.
fn reaches(imports: &Imports, to: &str, from: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![to.to_string()];
    while let Some(m) = todo.pop() {
        if m == from {
            return true;
        }
        if seen.insert(m.clone()) {
            todo.extend(imports.get(&m).into_iter().flat_map(|i| i.keys().cloned()));
        }
    }
    false
}

/// Every import that lies on a cycle, with where it is written.
fn cycles(imports: &Imports) -> Vec<String> {
    let mut found = Vec::new();
    for (from, tos) in imports {
        for (to, places) in tos {
            if reaches(imports, to, from) {
                found.push(format!("{from} -> {to} ({})", places.join(", ")));
            }
        }
    }
    found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let imports = imports(&src);
    assert!(imports.contains_key("run") && imports["run"].contains_key("sandbox"), "the check reads the imports");
    let found = cycles(&imports);
    assert!(
        found.is_empty(),
        "imports that close a cycle between host modules (move the shared type down a layer, see \
         docs/architecture.md):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_check_finds_a_cycle_and_reads_grouped_imports() {
    assert_eq!(named("{run::Event, plan::{Plan, X}, units}"), ["run", "plan", "units"]);
    assert_eq!(named("sandbox::Outputs"), ["sandbox"]);
    assert_eq!(named("{\n    capability::Grants,\n    report,\n};"), ["capability", "report"]);
    let mut imports = Imports::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        imports.entry(from.into()).or_default().insert(to.into(), vec![format!("{from}.rs:1")]);
    }
    assert_eq!(cycles(&imports), ["a -> b (a.rs:1)", "b -> c (b.rs:1)", "c -> a (c.rs:1)"]);
}
