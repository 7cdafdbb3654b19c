//! Plugins through a real OCI registry (Debian's docker-registry, the CNCF distribution registry):
//! push, inspect, pull by tag and by digest, pipelines that use `oci://` pinned and unpinned, a
//! tampered blob and a wrong pin refused, and two runs filling one cold store at once.

use crate::faults::{Fault, FaultProxy};
use crate::peers::Registry;
use crate::support::*;
use gantry_host::pipeline::Digest;
use std::path::Path;

/// Pushes the http-check component to `reference`; returns its digest.
fn push_http_check(cache: &Path, reference: &str) -> Digest {
    let file = plugin("plugins/http-check");
    let out = gantry_with_cache(cache, &["plugin", "push", file.to_str().unwrap(), reference]);
    expect_code(&out, 0);
    let digest = Digest::of(&std::fs::read(&file).unwrap());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(&format!("{reference}@{digest}")), "{printed}");
    digest
}

fn health_pipeline(uses: &str, origin: &str) -> String {
    format!(
        "name: oci-health\nsteps:\n  - id: health\n    uses: {uses}\n    with:\n      url: {origin}/v2/\n    network: [\"{origin}\"]\n"
    )
}

#[test]
fn a_pushed_plugin_is_inspected_without_running_and_pulled_by_tag_and_by_digest() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    let reference = registry.oci("gantry/http-check:1.0");
    let digest = push_http_check(cache.path(), &reference);

    let out = gantry_with_cache(cache.path(), &["plugin", "inspect", &reference, "--json"]);
    expect_code(&out, 0);
    let published = stdout_json(&out);
    assert_eq!(published["digest"], digest.to_string());
    let annotations = &published["annotations"];
    assert_eq!(annotations["org.opencontainers.image.title"], "http-check");
    assert_eq!(annotations["dev.gantry.contract"], format!("gantry:step@{}", gantry_host::sandbox::CONTRACT_VERSION));
    assert_eq!(annotations["dev.gantry.capabilities"], "network");
    let schema: serde_json::Value =
        serde_json::from_str(annotations["dev.gantry.input-schema"].as_str().unwrap()).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["url"]));

    let original = std::fs::read(plugin("plugins/http-check")).unwrap();
    for pull in [reference.clone(), registry.oci(&format!("gantry/http-check@{digest}"))] {
        let fresh = tempfile::tempdir().unwrap();
        let out = gantry_with_cache(fresh.path(), &["plugin", "pull", &pull]);
        expect_code(&out, 0);
        let path = String::from_utf8_lossy(&out.stdout).lines().next().unwrap().to_string();
        assert_eq!(std::fs::read(&path).unwrap(), original, "{pull} pulled other bytes");
        // Pulled, and compiled ahead: the first run of it loads from the cache.
        assert!(String::from_utf8_lossy(&out.stdout).contains("compiled into the cache"), "{}", String::from_utf8_lossy(&out.stdout));
        let listed = stdout_json(&gantry_with_cache(fresh.path(), &["cache", "ls", "--json"]));
        let kinds: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
        assert!(kinds.contains(&"pulled") && kinds.contains(&"compiled"), "{listed}");
        let pulled_entry = listed.as_array().unwrap().iter().find(|e| e["kind"] == "pulled").unwrap();
        assert_eq!(pulled_entry["digest"], digest.hex());
        let inspected = stdout_json(&gantry_with_cache(fresh.path(), &["plugin", "inspect", &path, "--json"]));
        assert_eq!(inspected["cache"], "hit", "{inspected}");
        expect_code(&gantry_with_cache(fresh.path(), &["cache", "clean"]), 0);
        assert!(!Path::new(&path).exists(), "cache clean removed the pulled component");
    }
}

#[test]
fn pipelines_run_plugins_from_the_registry_pinned_or_not_and_a_wrong_pin_is_refused_naming_both_digests() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    let reference = registry.oci("gantry/http-check:1.0");
    let digest = push_http_check(cache.path(), &reference);
    let wrong = Digest::of(b"something else");
    for (uses, ok) in [
        (reference.clone(), true),
        (format!("{reference}@{digest}"), true),
        (registry.oci(&format!("gantry/http-check@{digest}")), true),
        (format!("{reference}@{wrong}"), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), health_pipeline(&uses, &registry.peer.origin)).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let out = gantry_in_with_cache(dir.path(), fresh.path(), &["run", "p.yaml", "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if ok {
            expect_code(&out, 0);
            let events = journal(dir.path());
            let done = events.iter().find(|e| e["event"] == "step_finished").expect("the step finished");
            assert_eq!(done["outputs"]["status"], "200", "{uses}");
        } else {
            expect_code(&out, 2);
            assert!(stderr.contains(&digest.to_string()) && stderr.contains(&wrong.to_string()), "{stderr}");
            assert!(!dir.path().join(".gantry/runs").exists(), "nothing ran");
        }
    }
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_is_stored() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    let reference = registry.oci("gantry/http-check:1.0");
    let digest = push_http_check(cache.path(), &reference);
    let blob = registry.blob_file(digest.hex());
    let mut bytes = std::fs::read(&blob).expect("the registry keeps the blob here");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    for pull in [reference.clone(), registry.oci(&format!("gantry/http-check@{digest}"))] {
        let out = gantry_with_cache(fresh.path(), &["plugin", "pull", &pull]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("refused (a tampered or wrongly pinned plugin)"), "{stderr}");
        assert!(stderr.contains(&digest.to_string()), "{stderr}");
    }
    let stored = fresh.path().join("pulled");
    let left: Vec<_> =
        std::fs::read_dir(&stored).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "nothing stored: {left:?}");
}

#[test]
fn two_runs_filling_one_cold_store_at_once_both_succeed_with_one_verified_file() {
    let registry = Registry::start();
    let setup = tempfile::tempdir().unwrap();
    let reference = registry.oci("gantry/http-check:1.0");
    let digest = push_http_check(setup.path(), &reference);
    let cache = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let children: Vec<_> = dirs
        .iter()
        .map(|dir| {
            std::fs::write(dir.path().join("p.yaml"), health_pipeline(&reference, &registry.peer.origin)).unwrap();
            command(cache.path()).current_dir(dir.path()).args(["run", "p.yaml"]).spawn().unwrap()
        })
        .collect();
    for child in children {
        assert!(child.wait_with_output().unwrap().status.success());
    }
    let names: Vec<String> = std::fs::read_dir(cache.path().join("pulled"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![format!("{}.wasm", digest.hex())], "one file, no temporary left");
    let bytes = std::fs::read(cache.path().join("pulled").join(&names[0])).unwrap();
    assert_eq!(Digest::of(&bytes), digest);
}

/// A pipeline of two environments and two entities whose step runs `uses`.
fn locked_pipeline(uses: &str, origin: &str, extra_step: bool) -> String {
    let mut yaml = format!(
        "name: locked\nenvironments:\n  staging: {{}}\n  production: {{}}\nentities:\n  acme: {{}}\n  globex: {{}}\nsteps:\n  - id: health\n    uses: {uses}\n    with:\n      url: {origin}/v2/\n    network: [\"{origin}\"]\n"
    );
    if extra_step {
        yaml.push_str(&format!(
            "  - id: again\n    uses: {uses}\n    with:\n      url: {origin}/v2/\n    network: [\"{origin}\"]\n"
        ));
    }
    yaml
}

#[test]
fn the_lock_records_every_environment_and_entity_and_a_moved_tag_or_an_unlocked_step_is_refused() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    let reference = registry.oci("gantry/check:1.0");
    let digest = push_http_check(cache.path(), &reference);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(&pipeline, locked_pipeline(&reference, &registry.peer.origin, false)).unwrap();
    let gantry_here = |args: &[&str]| gantry_in_with_cache(dir.path(), cache.path(), args);

    expect_code(&gantry_here(&["lock", "p.yaml"]), 0);
    let text = std::fs::read_to_string(dir.path().join("gantry.lock")).unwrap();
    let lock: toml::Value = toml::from_str(&text).unwrap();
    let entries = lock["plugin"].as_array().unwrap();
    let keys: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["environment"].as_str().unwrap(), e["entity"].as_str().unwrap())).collect();
    assert_eq!(keys, [("production", "acme"), ("production", "globex"), ("staging", "acme"), ("staging", "globex")]);
    assert!(entries
        .iter()
        .all(|e| e["digest"].as_str() == Some(&digest.to_string()) && e["source"].as_str() == Some(&reference)));
    expect_code(&gantry_here(&["lock", "p.yaml", "--check"]), 0);
    expect_code(&gantry_here(&["run", "p.yaml", "--env", "production", "--entity", "acme", "--locked"]), 0);

    // Someone pushes other code under the same tag: the lock refuses it, naming both digests.
    let other = plugin("tests/plugins/misbehave");
    let out = gantry_with_cache(cache.path(), &["plugin", "push", other.to_str().unwrap(), &reference]);
    expect_code(&out, 0);
    let moved = Digest::of(&std::fs::read(&other).unwrap());
    let out = gantry_here(&["run", "p.yaml", "--env", "production", "--entity", "globex"]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&moved.to_string()) && stderr.contains(&digest.to_string()), "{stderr}");
    assert!(stderr.contains("gantry.lock") && stderr.contains("`health` (production/globex)"), "{stderr}");
    let out = gantry_here(&["lock", "p.yaml", "--check"]);
    expect_code(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("+ staging/acme health: {reference} {moved}")));

    // A step the lock does not know runs without --locked and is refused with it.
    std::fs::write(&pipeline, locked_pipeline(&format!("{reference}@{moved}"), &registry.peer.origin, true)).unwrap();
    expect_code(&gantry_here(&["lock", "p.yaml"]), 0);
    std::fs::write(
        dir.path().join("gantry.lock"),
        std::fs::read_to_string(dir.path().join("gantry.lock"))
            .unwrap()
            .replace("step = \"again\"", "step = \"renamed\""),
    )
    .unwrap();
    let out = gantry_here(&["plan", "p.yaml", "--env", "staging", "--entity", "acme", "--locked"]);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no entry for step `again` (staging/acme)"));
    expect_code(&gantry_here(&["plan", "p.yaml", "--env", "staging", "--entity", "acme"]), 0);
}

#[test]
fn plan_diff_shows_a_reviewer_the_new_plugin_digest_and_the_added_origin_since_a_recorded_run() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    let reference = registry.oci("gantry/check:1.0");
    let before = push_http_check(cache.path(), &reference);
    let dir = tempfile::tempdir().unwrap();
    let gantry_here = |args: &[&str]| gantry_in_with_cache(dir.path(), cache.path(), args);
    std::fs::write(dir.path().join("p.yaml"), health_pipeline(&reference, &registry.peer.origin)).unwrap();
    expect_code(&gantry_here(&["run", "p.yaml"]), 0);
    let id = run_id(dir.path());
    let out = gantry_here(&["plan", "p.yaml", "--diff", &id]);
    expect_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("none"), "{}", String::from_utf8_lossy(&out.stdout));

    let other = plugin("tests/plugins/misbehave");
    expect_code(&gantry_with_cache(cache.path(), &["plugin", "push", other.to_str().unwrap(), &reference]), 0);
    let after = Digest::of(&std::fs::read(&other).unwrap());
    let widened = health_pipeline(&reference, &registry.peer.origin).replace(
        &format!("[\"{}\"]", registry.peer.origin),
        &format!("[\"{}\", \"https://exfil.example\"]", registry.peer.origin),
    );
    std::fs::write(dir.path().join("p.yaml"), widened).unwrap();
    let out = gantry_here(&["plan", "p.yaml", "--diff", &id, "--json"]);
    expect_code(&out, 0);
    let changes = stdout_json(&out);
    let find = |aspect: &str, sign: &str| {
        changes.as_array().unwrap().iter().find(|c| c["aspect"] == aspect && c["sign"] == sign).cloned()
    };
    let plugin_change = find("plugin", "changed").expect("the plugin changed");
    let detail = plugin_change["detail"].as_str().unwrap();
    assert!(detail.contains(before.hex()) && detail.contains(after.hex()), "{detail}");
    assert_eq!(find("origin", "added").expect("an origin was added")["detail"], "https://exfil.example");
}

#[test]
fn production_runs_only_what_succeeded_in_staging_and_records_where_it_was_promoted_from() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    let reference = registry.oci("gantry/check:1.0");
    push_http_check(cache.path(), &reference);
    let dir = tempfile::tempdir().unwrap();
    let origin = registry.peer.origin.clone();
    std::fs::write(dir.path().join("p.yaml"), locked_pipeline(&reference, &origin, false)).unwrap();
    let gantry_here = |args: &[&str]| gantry_in_with_cache(dir.path(), cache.path(), args);
    let promote = ["run", "p.yaml", "--env", "production", "--entity", "acme", "--promoted-from", "staging", "--json"];

    let out = gantry_here(&promote);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no successful run of `locked` for entity `acme` in staging"));
    assert!(
        !dir.path().join(".gantry/runs").exists()
            || std::fs::read_dir(dir.path().join(".gantry/runs")).unwrap().count() == 0
    );

    let out = gantry_here(&["run", "p.yaml", "--env", "staging", "--entity", "acme", "--json"]);
    expect_code(&out, 0);
    let started = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["event"] == "run_started")
            .expect("a run_started event")
    };
    let staging_id = started(&out)["run_id"].as_str().unwrap().to_string();
    let out = gantry_here(&promote);
    expect_code(&out, 0);
    let promoted = &started(&out)["plan"]["promoted_from"];
    assert_eq!(promoted, &serde_json::json!({"environment": "staging", "run_id": staging_id}));

    // Other code under the tag, and a wider grant: production refuses, naming both.
    let other = plugin("tests/plugins/misbehave");
    expect_code(&gantry_with_cache(cache.path(), &["plugin", "push", other.to_str().unwrap(), &reference]), 0);
    let widened = locked_pipeline(&reference, &origin, false)
        .replace(&format!("[\"{origin}\"]"), &format!("[\"{origin}\", \"https://exfil.example\"]"));
    std::fs::write(dir.path().join("p.yaml"), widened).unwrap();
    let out = gantry_here(&promote);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let moved = Digest::of(&std::fs::read(&other).unwrap());
    assert!(stderr.contains(&format!("the newest ({staging_id}) differs")), "{stderr}");
    assert!(stderr.contains("~ health: plugin") && stderr.contains(moved.hex()), "{stderr}");
    assert!(
        stderr.contains("+ health: origin https://exfil.example") && stderr.contains("~ (pipeline): pipeline"),
        "{stderr}"
    );
}

#[test]
fn a_private_registry_gets_its_password_from_the_pipelines_secret_source_and_no_plugin_does() {
    let (user, password) = ("ci-bot", "reg-Pa55/word+1");
    let registry = Registry::start_with_password(user, password);
    let origin = &registry.peer.origin;
    let setup = tempfile::tempdir().unwrap();
    let reference = registry.oci("team/http-check:1.0");
    let file = plugin("plugins/http-check");
    let file = file.to_str().unwrap();

    let anonymous = gantry_with_cache(setup.path(), &["plugin", "push", file, &reference]);
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert_ne!(anonymous.status.code(), Some(0), "an anonymous push is refused: {stderr}");
    let signed_in = ["--username", user, "--password-from", "env:REG_PASSWORD"];
    let out = command(setup.path())
        .env("REG_PASSWORD", password)
        .args(["plugin", "push", file, &reference])
        .args(signed_in)
        .output()
        .unwrap();
    expect_code(&out, 0);

    let host = origin.trim_start_matches("http://");
    let pipeline = |bind: &str| {
        format!(
            "name: private\nsecrets:\n  REG_PASSWORD:\n    from: env:REG_PASSWORD\n    bind: [\"{bind}\"]\n\
             registries:\n  \"{host}\":\n    username: {user}\n    password: REG_PASSWORD\n\
             steps:\n  - id: health\n    uses: {reference}\n    with:\n      url: {origin}/v2/\n    network: [\"{origin}\"]\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), pipeline(origin)).unwrap();
    let plan = |env: &[(&str, &str)]| {
        let fresh = tempfile::tempdir().unwrap();
        command(fresh.path())
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .args(["plan", "p.yaml", "--json"])
            .output()
            .unwrap()
    };

    let unset = plan(&[]);
    let stderr = String::from_utf8_lossy(&unset.stderr);
    assert_ne!(unset.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("env:REG_PASSWORD") && stderr.contains("REG_PASSWORD is not set"), "{stderr}");

    let out = plan(&[("REG_PASSWORD", password)]);
    expect_code(&out, 0);
    let planned = stdout_json(&out);
    assert_eq!(planned["steps"][0]["secrets"], serde_json::json!([]), "the plugin is given no secret");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(password)
            && !String::from_utf8_lossy(&out.stderr).contains(password)
    );

    std::fs::write(dir.path().join("p.yaml"), pipeline("https://elsewhere.example")).unwrap();
    let out = gantry_in(dir.path(), &["validate", "p.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    expect_code(&out, 2);
    assert!(
        stderr.contains(&format!("registries.{host}.password")) && stderr.contains("not bound to the registry"),
        "{stderr}"
    );
}

/// A proxy in front of `registry` applying `fault` to every request, and `reference`'s path through it.
fn through_proxy(registry: &Registry, fault: Fault, path: &str) -> (FaultProxy, String) {
    let proxy = FaultProxy::start(&registry.peer.origin, (1..=50).map(|n| (n, fault)).collect());
    let reference = format!("oci://{}/{path}", proxy.origin.trim_start_matches("http://"));
    (proxy, reference)
}

#[test]
fn a_run_killed_while_its_plugin_downloads_records_nothing_stores_nothing_and_the_next_run_pulls_cleanly() {
    let registry = Registry::start();
    let setup = tempfile::tempdir().unwrap();
    let digest = push_http_check(setup.path(), &registry.oci("gantry/http-check:1.0"));
    let (proxy, slow) = through_proxy(&registry, Fault::Stall, &format!("gantry/http-check@{digest}"));
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), health_pipeline(&slow, &registry.peer.origin)).unwrap();
    let mut child = spawn_until(
        command(cache.path()).current_dir(dir.path()).args(["run", "p.yaml"]),
        "half of the component on its way",
        || proxy.injected().iter().any(|(_, f)| *f == Fault::Stall),
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert!(!dir.path().join(".gantry/runs").exists(), "no run was started, so there is nothing to resume or undo");
    let stored: Vec<_> = std::fs::read_dir(cache.path().join("pulled"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(stored.is_empty(), "nothing of the cut-off download is in the store: {stored:?}");

    let direct = registry.oci(&format!("gantry/http-check@{digest}"));
    std::fs::write(dir.path().join("p.yaml"), health_pipeline(&direct, &registry.peer.origin)).unwrap();
    let out = gantry_in_with_cache(dir.path(), cache.path(), &["run", "p.yaml"]);
    expect_code(&out, 0);
    let file = cache.path().join(format!("pulled/{}.wasm", digest.hex()));
    assert_eq!(Digest::of(&std::fs::read(file).unwrap()), digest, "the stored component is the pushed one");
}

#[test]
fn a_push_killed_before_its_manifest_leaves_the_tag_on_the_plugin_it_named() {
    let registry = Registry::start();
    let setup = tempfile::tempdir().unwrap();
    let before = push_http_check(setup.path(), &registry.oci("gantry/step:1.0"));
    let (proxy, slow) = through_proxy(&registry, Fault::Slow(std::time::Duration::from_millis(700)), "gantry/step:1.0");
    let other = plugin("plugins/notify");
    let mut child = spawn_until(
        command(setup.path()).args(["plugin", "push", other.to_str().unwrap(), &slow]),
        "the upload under way",
        || proxy.seen() >= 2,
    );
    child.kill().unwrap(); // SIGKILL, several requests before the manifest
    child.wait().unwrap();

    let out = gantry_with_cache(setup.path(), &["plugin", "inspect", &registry.oci("gantry/step:1.0"), "--json"]);
    expect_code(&out, 0);
    assert_eq!(stdout_json(&out)["digest"], before.to_string(), "the tag still names the plugin pushed before");
    let fresh = tempfile::tempdir().unwrap();
    let out = gantry_with_cache(fresh.path(), &["plugin", "pull", &registry.oci("gantry/step:1.0")]);
    expect_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&before.to_string()));
}
