//! A plugin built with the SDK runs sandboxed in the host: outputs, denied
//! network, limits, compile cache and refused binaries.

use crate::support::*;
use gantry_host::capability::NetworkPolicy;
use gantry_host::sandbox::{CacheStatus, CallError, Limits, Runtime, StepCall};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const HTTP_CHECK: &str = "plugins/http-check";
const MISBEHAVE: &str = "tests/plugins/misbehave";

fn ok_server() -> CountingServer {
    CountingServer::start(Reply::text(200, "gallery is open"))
}

/// `gantry step run <plugin> --with url=<server>/ <extra..> --allow-net <grant> --json`.
fn check(plugin_path: &Path, server: &CountingServer, grant: &str, extra: &[&str]) -> Output {
    let url = format!("url={}/", server.origin());
    let mut args = vec!["step", "run", plugin_path.to_str().unwrap(), "--with", &url];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--allow-net", grant, "--json"]);
    gantry(&args)
}

#[test]
fn http_check_reports_status_and_latency_of_a_local_site() {
    let server = ok_server();
    let out =
        check(&plugin(HTTP_CHECK), &server, &server.origin(), &["--with", "probes=3", "--with", "expect_body=open"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let outputs = &stdout_json(&out)["outputs"];
    assert_eq!(outputs["status"], "200");
    let p50: f64 = outputs["latency_ms_p50"].as_str().unwrap().parse().unwrap();
    let max: f64 = outputs["latency_ms_max"].as_str().unwrap().parse().unwrap();
    assert!(p50 > 0.0 && p50 <= max, "p50 {p50} max {max}");
    assert_eq!(server.hits(), 3, "one request per probe");
}

#[test]
fn http_check_fails_on_a_status_mismatch_with_a_clear_message() {
    let server = CountingServer::start(Reply::text(404, "gone"));
    let out = check(&plugin(HTTP_CHECK), &server, &server.origin(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let error = &stdout_json(&out)["error"];
    assert_eq!(error["kind"], "failed");
    let expected = format!("step `step` failed: expected status 200 from {}/, got 404", server.origin());
    assert_eq!(error["message"], expected);
    assert_eq!(error["retryable"], false);
}

#[test]
fn http_check_body_and_latency_expectations_fail_the_step() {
    let server = ok_server();
    let wasm = plugin(HTTP_CHECK);
    let body = check(&wasm, &server, &server.origin(), &["--with", "expect_body=closed"]);
    assert_eq!(body.status.code(), Some(1));
    assert!(stdout_json(&body)["error"]["message"].as_str().unwrap().contains("does not contain \"closed\""));
    let slow = check(&wasm, &server, &server.origin(), &["--with", "max_latency_ms=0"]);
    assert_eq!(slow.status.code(), Some(1));
    let error = &stdout_json(&slow)["error"];
    assert!(error["message"].as_str().unwrap().contains("over max_latency_ms 0"), "{error}");
    assert_eq!(error["retryable"], true);
}

#[test]
fn network_is_denied_without_a_grant_and_nothing_reaches_the_server() {
    let server = ok_server();
    // A grant for another port of the same host does not count.
    let out = check(&plugin(HTTP_CHECK), &server, "http://127.0.0.1:9", &[]);
    assert_eq!(out.status.code(), Some(1));
    let message = stdout_json(&out)["error"]["message"].as_str().unwrap().to_string();
    let denied = format!("network access to {} denied for step `step`", server.origin());
    assert!(message.contains(&denied), "{message}");
    assert!(message.contains("add it to `network:`"), "the error gives the remedy: {message}");
    assert_eq!(server.hits(), 0, "a denied request must not reach the server");
}

#[test]
fn plugin_inspect_prints_describe_contract_and_sha256() {
    let wasm = plugin(HTTP_CHECK);
    let out = gantry(&["plugin", "inspect", wasm.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = stdout_json(&out);
    assert_eq!(info["plugin"]["name"], "http-check");
    assert_eq!(info["contract"], "gantry:step@0.3.5");
    assert_eq!(info["sha256"].as_str().unwrap().len(), 64);
    let schema = &info["plugin"]["input_schema"];
    assert_eq!(schema["required"], serde_json::json!(["url"]));
    assert!(schema["properties"]["probes"].is_object());
    assert_eq!(info["plugin"]["capabilities"], serde_json::json!(["network"]));
    let outputs: Vec<&str> =
        info["plugin"]["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(outputs, ["status", "latency_ms_p50", "latency_ms_max"]);
}

fn call(action: &str, limits: Limits) -> StepCall {
    let mut call = StepCall { limits, ..Default::default() };
    call.context.step_id = action.to_string();
    call.context.input = serde_json::json!({"action": action});
    call
}

fn runtime() -> Runtime {
    Runtime::builder().cache_dir(shared_cache()).build().unwrap()
}

#[tokio::test]
async fn a_loop_is_stopped_by_the_timeout_and_the_host_runs_the_next_step() {
    let runtime = runtime();
    let plugin = runtime.load(&plugin(MISBEHAVE)).unwrap();
    let limits = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
    let err = plugin.run(&call("loop", limits)).await.unwrap_err();
    assert_eq!(err, CallError::Timeout { step: "loop".into(), after: Duration::from_millis(300) });
    assert!(err.is_retryable());
    let outputs = plugin.run(&call("ok", Limits::default())).await.expect("the next call runs");
    assert_eq!(outputs["attempt"], "1");
}

#[tokio::test]
async fn a_host_sleep_past_the_deadline_times_out() {
    let plugin = runtime().load(&plugin(MISBEHAVE)).unwrap();
    let mut c = call("sleep", Limits { timeout: Duration::from_millis(200), ..Limits::default() });
    c.context.input = serde_json::json!({"action": "sleep", "ms": 60_000});
    let err = plugin.run(&c).await.unwrap_err();
    assert_eq!(err.kind(), "timeout");
}

#[tokio::test]
async fn allocation_past_the_memory_limit_fails_and_the_host_runs_the_next_step() {
    let runtime = runtime();
    let plugin = runtime.load(&plugin(MISBEHAVE)).unwrap();
    let limits = Limits { memory_bytes: 32 << 20, ..Limits::default() };
    match plugin.run(&call("alloc", limits)).await.unwrap_err() {
        CallError::MemoryLimit { step, limit, requested } => {
            assert_eq!(step, "alloc");
            assert_eq!(limit, 32 << 20);
            assert!(requested > limit);
        }
        other => panic!("expected a memory limit error, got {other:?}"),
    }
    plugin.run(&call("ok", Limits::default())).await.expect("the next call runs");
}

#[tokio::test]
async fn a_pooled_runtime_keeps_every_limit_and_reuses_its_slots() {
    // As `gantry run` builds it: slots for two calls at once, each memory up to the largest limit.
    let runtime = Runtime::builder().cache_dir(shared_cache()).pooled(2, 64 << 20).build().unwrap();
    let plugin = runtime.load(&plugin(MISBEHAVE)).unwrap();
    let limits = Limits { memory_bytes: 32 << 20, ..Limits::default() };
    let err = plugin.run(&call("alloc", limits)).await.unwrap_err();
    assert!(matches!(err, CallError::MemoryLimit { limit, .. } if limit == 32 << 20), "{err:?}");
    let limits = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
    assert_eq!(plugin.run(&call("loop", limits)).await.unwrap_err().kind(), "timeout");
    assert_eq!(
        plugin.run(&call("recurse", Limits::default())).await.unwrap_err(),
        CallError::Trap { step: "recurse".into(), message: "stack overflow".into() }
    );
    // Far more calls than slots, one after another and two at a time: each call frees its slot.
    let ok = call("ok", Limits::default());
    for _ in 0..20 {
        let (a, b) = tokio::join!(plugin.run(&ok), plugin.run(&ok));
        a.expect("a pooled call runs");
        b.expect("a pooled call runs");
    }
}

#[tokio::test]
async fn stack_overflow_and_panic_are_traps_that_name_the_cause() {
    let plugin = runtime().load(&plugin(MISBEHAVE)).unwrap();
    let err = plugin.run(&call("recurse", Limits::default())).await.unwrap_err();
    assert_eq!(err, CallError::Trap { step: "recurse".into(), message: "stack overflow".into() });
    let mut c = call("panic", Limits::default());
    c.context.input = serde_json::json!({"action": "panic", "message": "boom"});
    let err = plugin.run(&c).await.unwrap_err();
    assert_eq!(err.kind(), "trap");
    assert!(err.to_string().contains("deliberate panic: boom"), "{err}");
}

#[tokio::test]
async fn plugin_errors_keep_their_retryable_flag() {
    let plugin = runtime().load(&plugin(MISBEHAVE)).unwrap();
    let mut c = call("retryable", Limits::default());
    c.context.input = serde_json::json!({"action": "retryable", "message": "503 from upstream"});
    let err = plugin.run(&c).await.unwrap_err();
    assert_eq!(
        err,
        CallError::Failed { step: "retryable".into(), message: "503 from upstream".into(), retryable: true }
    );
    c.context.input = serde_json::json!({"action": "fail", "message": "bad input"});
    assert!(!plugin.run(&c).await.unwrap_err().is_retryable());
}

#[tokio::test]
async fn the_wasi_sandbox_grants_no_network_by_default() {
    let server = ok_server();
    let plugin = runtime().load(&plugin(HTTP_CHECK)).unwrap();
    let mut c = StepCall::default();
    c.context.step_id = "check".into();
    c.context.input = serde_json::json!({"url": format!("{}/", server.origin())});
    let err = plugin.run(&c).await.unwrap_err();
    assert!(err.to_string().contains("denied"), "{err}");
    c.grants.network = NetworkPolicy::parse(&[server.origin()]).unwrap();
    assert_eq!(plugin.run(&c).await.unwrap()["status"], "200");
    assert_eq!(server.hits(), 1);
}

#[test]
fn second_load_hits_the_cache_and_a_corrupt_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = plugin(MISBEHAVE);
    let load = || Runtime::builder().cache_dir(cache.path()).build().unwrap().load(&wasm).unwrap();
    assert_eq!(load().cache_status(), CacheStatus::Miss);
    assert_eq!(load().cache_status(), CacheStatus::Hit);

    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a cache entry was written");
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    assert_eq!(load().cache_status(), CacheStatus::Recompiled);
    assert_eq!(load().cache_status(), CacheStatus::Hit, "the recompiled entry is trusted again");
    // A crash mid-write cannot leave this (entries are renamed into place), but a full disk or a copy can.
    let whole = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &whole[..whole.len() - 4096]).unwrap();
    assert_eq!(load().cache_status(), CacheStatus::Recompiled, "a truncated entry is not trusted");

    // Through the binary: the CLI reports the cache outcome too.
    let out =
        gantry_with_cache(cache.path(), &["step", "run", wasm.to_str().unwrap(), "--with", "action=ok", "--json"]);
    assert_eq!(stdout_json(&out)["plugin"]["cache"], "hit");
}

#[test]
fn a_core_module_is_refused_with_a_remedy() {
    let component = plugin(HTTP_CHECK);
    let core = component.with_file_name("http_check.wasm");
    let out = gantry(&["step", "run", core.to_str().unwrap(), "--with", "url=http://127.0.0.1:9/"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a core WebAssembly module, not a component"), "{stderr}");
    assert!(stderr.contains("gantry plugin build"), "{stderr}");
}

fn write_component(dir: &std::path::Path, name: &str, export: &str) -> std::path::PathBuf {
    let text = format!(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $inst (export "describe" (func $f)))
            (export "{export}" (instance $inst)))"#
    );
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(&text).unwrap()).unwrap();
    path
}

#[test]
fn a_component_importing_what_the_sandbox_does_not_provide_is_refused_naming_it_and_what_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let importing = |import: &str| {
        let text = format!(
            r#"(component
                (import "{import}" (instance (export "handle" (func))))
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (instance $inst (export "describe" (func $f)))
                (export "gantry:step/plugin@0.3.5" (instance $inst)))"#
        );
        let path = dir.path().join("importing.wasm");
        std::fs::write(&path, wat::parse_str(&text).unwrap()).unwrap();
        let out = gantry(&["plugin", "inspect", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // What componentize-js builds with its default features.
    let http = importing("wasi:http/types@0.2.10");
    assert!(http.contains("imports `wasi:http/types@0.2.10`, which the sandbox does not provide: a step sends HTTP through the host, under its `network:` grant"), "{http}");
    assert!(http.contains("`http` and `fetch-event` features disabled"), "{http}");
    // A plugin made for an embedder's capability, run by the stock binary.
    let tickets = importing("acme:tickets/api@0.1.0");
    assert!(tickets.contains("imports `acme:tickets/api@0.1.0`, which this host does not provide: it comes from a host that registers that capability"), "{tickets}");
    assert!(tickets.contains("the capabilities tls, dns, redis"), "{tickets}");
}

#[test]
fn a_component_of_another_world_or_contract_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = write_component(dir.path(), "other.wasm", "example:greeter/api");
    let out = gantry(&["plugin", "inspect", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "is not a gantry step: it does not export `gantry:step/plugin@0.3.5` (it exports: example:greeter/api)"
        ),
        "{stderr}"
    );

    // 0.2 added the checkpoint import and 0.3 the failure kinds: older plugins are refused with the
    // remedy, as is a newer one.
    for version in ["0.1.0", "0.2.0", "0.4.0"] {
        let other = write_component(dir.path(), "other.wasm", &format!("gantry:step/plugin@{version}"));
        let out = gantry(&["plugin", "inspect", other.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "was built for contract gantry:step@{version}, but this host speaks gantry:step@0.3.5: rebuild it with a matching gantry-sdk"
            )),
            "{stderr}"
        );
    }

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "#!/bin/sh\necho hi\n").unwrap();
    let out = gantry(&["plugin", "inspect", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a WebAssembly component"));
}

#[test]
fn step_run_builds_a_crate_directory_first() {
    let server = ok_server();
    let dir = repo().join(HTTP_CHECK);
    let out = gantry(&[
        "step",
        "run",
        dir.to_str().unwrap(),
        "--with",
        &format!("url={}/", server.origin()),
        "--allow-net",
        &server.origin(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let result = stdout_json(&out);
    assert!(result["plugin"]["path"].as_str().unwrap().ends_with("http_check.component.wasm"));
    assert_eq!(result["outputs"]["status"], "200");
}

#[test]
fn bad_usage_exits_2() {
    let out = gantry(&["step", "run", "/nonexistent.wasm", "--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid memory"));
    let out = gantry(&["step", "run", "/nonexistent.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read plugin /nonexistent.wasm"));
}
