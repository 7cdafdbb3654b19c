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
