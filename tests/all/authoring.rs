//! A plugin author's first minutes: `gantry plugin new` creates a crate that builds, passes its own
//! unit test and runs in the real host as created, outside this repository.

use crate::support::*;

#[test]
fn a_scaffolded_plugin_builds_passes_its_test_and_runs_as_created() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("hello-step");
    let out = gantry_in(dir.path(), &["plugin", "new", "hello-step"]);
    expect_code(&out, 0);
    for file in ["Cargo.toml", "src/lib.rs", "README.md"] {
        assert!(crate_dir.join(file).is_file(), "{file} was created");
    }

    let server = CountingServer::start(Reply::text(200, "ok"));
    let origin = server.origin();
    let url = format!("url={origin}/health");
    let out = gantry(&["step", "run", crate_dir.to_str().unwrap(), "--with", &url, "--allow-net", &origin, "--json"]);
    expect_code(&out, 0);
    assert_eq!(stdout_json(&out)["outputs"]["status"], "200");
    assert_eq!(server.hits(), 1);

    // Its own unit test, natively, in the shared plugin target dir.
    let test = std::process::Command::new("cargo")
        .args(["test", "--quiet", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success() && printed.contains("1 passed"),
        "{printed}{}",
        String::from_utf8_lossy(&test.stderr)
    );

    let out = gantry_in(dir.path(), &["plugin", "new", "Bad_Name"]);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("lower-case letters"));
    let out = gantry_in(dir.path(), &["plugin", "new", "hello-step"]);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

/// The fenced blocks of `lang` in the plugin guide, in order.
fn guide_blocks(lang: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("docs/plugin-guide.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, fence) if fence == format!("```{lang}") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_plugin_guide_runs_as_written() {
    // Its Rust blocks are doctests of gantry-sdk; here its shell blocks run in order and its
    // pipelines validate.
    let registry = crate::peers::Registry::start();
    let site = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let shell = guide_blocks("sh");
    assert!(shell.len() >= 2, "the guide has its shell steps");
    let bin_dir = gantry_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{}", shell.join("\n")))
        .current_dir(dir.path())
        .env("PATH", path)
        .env("SITE", site.origin())
        .env("REGISTRY", format!("oci://{}", registry.peer.origin.trim_start_matches("http://")))
        .env("GANTRY_CACHE_DIR", shared_cache())
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .output()
        .unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("status = 200") && printed.contains("name:         my-step"), "{printed}");
    assert!(site.hits() >= 1);

    let pipelines = guide_blocks("yaml");
    assert!(pipelines.len() >= 2, "the guide has its pipelines");
    for (i, yaml) in pipelines.iter().enumerate() {
        let file = dir.path().join(format!("guide-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        expect_code(&gantry_in(dir.path(), &["validate", file.to_str().unwrap()]), 0);
    }
}
