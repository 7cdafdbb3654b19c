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
    let text = std::fs::read_to_string(repo().join("sdk/README.md")).unwrap();
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

/// `cargo package` of one crate of the workspace into `target_dir`, without building it; gives
/// back the files it packaged.
/// Packages `name` with the workspace crates it depends on (`gantry-analysis`, packaged first, as
/// crates.io would need it published first) and lists the packaged files of both.
fn package(name: &str, target_dir: &std::path::Path) -> Vec<String> {
    let cargo = || {
        let mut cmd = std::process::Command::new("cargo");
        cmd.args(["package", "-p", "gantry-analysis", "-p", name, "--allow-dirty", "--no-verify", "--target-dir"]);
        cmd.arg(target_dir);
        cmd.current_dir(repo());
        cmd
    };
    let out = cargo().arg("--list").output().unwrap();
    assert!(out.status.success(), "cargo package --list -p {name}: {}", String::from_utf8_lossy(&out.stderr));
    let out = cargo().arg("--quiet").output().unwrap();
    assert!(out.status.success(), "cargo package -p {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&cargo().arg("--list").output().unwrap().stdout).lines().map(String::from).collect()
}

#[test]
fn the_sdk_and_the_host_package_as_they_stand_and_a_plugin_builds_on_the_packaged_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let host = package("gantry-host", &target);
    assert!(host.contains(&"wit/step.wit".to_string()), "the host packages its contract: {host:?}");
    let sdk = package("gantry-sdk", &target);
    assert!(sdk.contains(&"README.md".to_string()) && sdk.contains(&"wit/step.wit".to_string()), "{sdk:?}");

    // The packaged SDK as crates.io would serve it: unpacked, nothing else of this repository beside it.
    let version_of = |manifest: &str| {
        let text = std::fs::read_to_string(repo().join(manifest)).unwrap();
        let line = text.lines().find(|l| l.starts_with("version = ")).unwrap().to_string();
        line.trim_start_matches("version = ").trim_matches('"').to_string()
    };
    // `plugin new` without a checkout depends on the SDK of the host's own version.
    let version = version_of("sdk/Cargo.toml");
    assert_eq!(version, version_of("Cargo.toml"), "the SDK and the host are released at one version");
    assert_eq!(version, version_of("analysis/Cargo.toml"), "the SDK and its analysis rules are released at one version");
    for name in ["gantry-sdk", "gantry-analysis"] {
        let crate_file = target.join(format!("package/{name}-{version}.crate"));
        let unpacked = std::process::Command::new("tar").arg("xzf").arg(&crate_file).current_dir(dir.path()).status();
        assert!(unpacked.unwrap().success(), "{name}");
    }
    let out = gantry_in(dir.path(), &["plugin", "new", "hello-published", "--sdk-version", &format!("={version}")]);
    expect_code(&out, 0);
    let manifest = dir.path().join("hello-published/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(&format!("gantry-sdk = \"={version}\"")), "{text}");
    let [sdk_dir, analysis_dir] = ["gantry-sdk", "gantry-analysis"].map(|n| dir.path().join(format!("{n}-{version}")));
    let patch = format!("[patch.crates-io]\ngantry-sdk = {{ path = {sdk_dir:?} }}\ngantry-analysis = {{ path = {analysis_dir:?} }}\n");
    std::fs::write(&manifest, format!("{text}\n{patch}")).unwrap();

    let server = CountingServer::start(Reply::text(200, "ok"));
    let origin = server.origin();
    let url = format!("url={origin}/health");
    let crate_dir = dir.path().join("hello-published");
    let out = gantry(&["step", "run", crate_dir.to_str().unwrap(), "--with", &url, "--allow-net", &origin, "--json"]);
    expect_code(&out, 0);
    assert_eq!(stdout_json(&out)["outputs"]["status"], "200");

    let out = gantry_in(dir.path(), &["plugin", "new", "bad", "--sdk-version", "0.1; rm -rf"]);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("version requirement"));
}

#[test]
fn a_plugin_that_does_not_compile_is_reported_once_with_the_compilers_error_and_its_log() {
    let dir = tempfile::tempdir().unwrap();
    expect_code(&gantry_in(dir.path(), &["plugin", "new", "broken-step"]), 0);
    let lib = dir.path().join("broken-step/src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, format!("{text}\nfn broken() -> u32 {{ \"not a number\" }}\n")).unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), "name: broken\nsteps:\n  - id: audit\n    uses: ./broken-step\n")
        .unwrap();
    let out = gantry_in(dir.path(), &["plan", "pipeline.yaml"]);
    // expect_code also checks that no context is said twice.
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("cargo build of").count(), 1, "{stderr}");
    assert!(stderr.contains("step `audit`: cargo build of"), "{stderr}");
    assert!(stderr.contains("error[E0308]: mismatched types"), "the compiler's error is shown: {stderr}");
    assert!(!stderr.contains("Compiling"), "cargo's progress stays in the log: {stderr}");
    let log = stderr.split("cargo's whole output: ").nth(1).and_then(|rest| rest.split(')').next()).unwrap();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("error[E0308]"), "the log holds cargo's whole output: {log}");
}
