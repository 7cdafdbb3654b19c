//! The attack suite: a plugin whose only purpose is to misbehave tries to
//! reach what it was not granted. Each attempt must fail with the exact error
//! kind, nothing forbidden may reach a listening server, and the host keeps
//! running the next call. (Loops, unbounded allocation and stack overflow are
//! in `sandbox.rs`.)

use crate::support::*;
use gantry_host::capability::{FileGrant, Files, Grant, NetworkPolicy, Secret, Secrets};
use gantry_host::sandbox::{CallError, Outputs, RequestLog, RequestRecord, Runtime, StepCall};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const MISBEHAVE: &str = "tests/plugins/misbehave";

/// A secret value the plugin must never see or leak.
const TOKEN: &str = "tok-9f2c-very-secret";

fn runtime_resolving(name: &str, ip: &str) -> Runtime {
    Runtime::builder().cache_dir(shared_cache()).resolve(name, vec![ip.parse().unwrap()]).build().unwrap()
}

fn runtime() -> Runtime {
    Runtime::builder().cache_dir(shared_cache()).build().unwrap()
}

/// A call of the attacker with `input`, granted `network`; requests are collected.
fn attack(input: Value, network: &[String]) -> (StepCall, Arc<Mutex<Vec<RequestRecord>>>) {
    let records: Arc<Mutex<Vec<RequestRecord>>> = Arc::default();
    let sink = records.clone();
    let mut call =
        StepCall { requests: Some(RequestLog(Arc::new(move |r| sink.lock().unwrap().push(r)))), ..Default::default() };
    call.context.step_id = "attacker".into();
    call.context.input = input;
    call.grants.network = NetworkPolicy::parse(network).unwrap();
    (call, records)
}

async fn run(runtime: &Runtime, call: &StepCall) -> Result<Outputs, CallError> {
    runtime.load(&plugin(MISBEHAVE)).unwrap().run(call).await
}

/// The call failed with `kind` and a message containing `needle`.
fn assert_refused(result: Result<Outputs, CallError>, kind: &str, needle: &str) -> String {
    let err = result.expect_err("the attack must fail");
    assert_eq!(err.kind(), kind, "{err}");
    let message = err.to_string();
    assert!(message.contains(needle), "expected {needle:?} in: {message}");
    message
}

#[tokio::test]
async fn a_request_to_a_non_granted_origin_is_denied_and_recorded() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let (call, records) = attack(json!({"action": "http", "url": format!("{}/", server.origin())}), &[]);
    let message = assert_refused(run(&runtime(), &call).await, "network-denied", "network access to");
    assert!(message.contains(&server.origin()), "{message}");
    assert_eq!(server.hits(), 0);
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 1);
    assert!(!records[0].allowed);
    assert_eq!(records[0].origin, server.origin());
    assert!(records[0].reason.as_deref().unwrap().contains("denied"));
}

#[tokio::test]
async fn cloud_metadata_is_unreachable_by_address_or_by_a_name_that_resolves_to_it() {
    let (call, _) = attack(json!({"action": "http", "url": "http://169.254.169.254/latest/meta-data/"}), &[]);
    assert_refused(run(&runtime(), &call).await, "network-denied", "http://169.254.169.254");
    let grant = "http://metadata.test".to_string();
    let (call, records) = attack(json!({"action": "http", "url": "http://metadata.test/latest/meta-data/"}), &[grant]);
    let runtime = runtime_resolving("metadata.test", "169.254.169.254");
    assert_refused(
        run(&runtime, &call).await,
        "network-denied",
        "metadata.test resolved to 169.254.169.254, a link-local (cloud metadata) address: refused",
    );
    assert!(!records.lock().unwrap()[0].allowed);
}

#[tokio::test]
async fn loopback_by_address_needs_the_address_granted_not_a_hostname() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let port = server.origin().rsplit(':').next().unwrap().to_string();
    let (call, _) =
        attack(json!({"action": "http", "url": format!("{}/", server.origin())}), &[format!("http://app.test:{port}")]);
    assert_refused(run(&runtime(), &call).await, "network-denied", "network access to http://127.0.0.1");
    // IPv4-mapped IPv6 spelling of the same address is another origin, also not granted.
    let (call, _) = attack(
        json!({"action": "http", "url": format!("http://[::ffff:127.0.0.1]:{port}/")}),
        &[format!("http://app.test:{port}")],
    );
    assert_refused(run(&runtime(), &call).await, "network-denied", "denied");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn a_granted_name_resolving_to_loopback_is_refused_after_resolution() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let port = server.origin().rsplit(':').next().unwrap().to_string();
    let grant = format!("http://app.test:{port}");
    let input = json!({"action": "http", "url": format!("{grant}/")});
    for ip in ["127.0.0.1", "::ffff:127.0.0.1"] {
        let (call, _) = attack(input.clone(), std::slice::from_ref(&grant));
        let expected = format!("app.test resolved to {ip}, a loopback address: refused");
        assert_refused(run(&runtime_resolving("app.test", ip), &call).await, "network-denied", &expected);
    }
    assert_eq!(server.hits(), 0, "nothing reached the server");
    // Granting the range is what lets the same request through.
    let (mut call, records) = attack(input, &[grant]);
    call.grants.network = call.grants.network.with_addresses(vec!["127.0.0.0/8".parse().unwrap()]);
    let outputs = run(&runtime_resolving("app.test", "127.0.0.1"), &call).await.unwrap();
    assert_eq!(outputs["status"], "200");
    assert_eq!(server.hits(), 1);
    let r = &records.lock().unwrap()[0];
    assert!(r.allowed && r.status == Some(200) && r.bytes == 2, "{r:?}");
}

#[tokio::test]
async fn a_redirect_to_a_non_granted_origin_is_refused() {
    let elsewhere = CountingServer::start(Reply::text(200, "internal"));
    let granted = CountingServer::start(Reply {
        status: 302,
        location: Some(format!("{}/admin", elsewhere.origin())),
        ..Reply::default()
    });
    let (call, records) =
        attack(json!({"action": "http", "url": format!("{}/", granted.origin())}), &[granted.origin()]);
    assert_refused(run(&runtime(), &call).await, "network-denied", &elsewhere.origin());
    assert_eq!(granted.hits(), 1);
    assert_eq!(elsewhere.hits(), 0, "the redirect target was not contacted");
    let records = records.lock().unwrap();
    assert_eq!((records[0].status, records[0].allowed), (Some(302), true));
    assert_eq!((records[1].path.as_str(), records[1].allowed), ("/admin", false));
}

fn token_bound_to(origin: &str) -> Secrets {
    let mut secrets = Secrets::default();
    secrets.insert("TOKEN", Secret::new(TOKEN, vec![Grant::parse(origin).unwrap()]));
    secrets
}

#[tokio::test]
async fn a_secret_is_not_sent_to_an_origin_it_is_not_bound_to() {
    let api = CountingServer::start(Reply::text(200, "ok"));
    let other = CountingServer::start(Reply::text(200, "ok"));
    let input = json!({"action": "http", "url": format!("{}/", other.origin()), "bearer": "TOKEN"});
    let (mut call, _) = attack(input, &[api.origin(), other.origin()]);
    call.grants.secrets = token_bound_to(&api.origin());
    let message = assert_refused(run(&runtime(), &call).await, "secret-denied", "secret `TOKEN` is not bound to");
    assert!(message.contains(&other.origin()), "{message}");
    assert_eq!(other.hits(), 0);
    // An ungranted name is refused the same way.
    let input = json!({"action": "http", "url": format!("{}/", api.origin()), "bearer": "ADMIN"});
    let (mut call, _) = attack(input, &[api.origin()]);
    call.grants.secrets = token_bound_to(&api.origin());
    assert_refused(run(&runtime(), &call).await, "secret-denied", "secret `ADMIN` is not granted");
    assert_eq!(api.hits(), 0);
}

#[tokio::test]
async fn a_response_echoing_the_authorization_header_is_redacted_before_the_plugin_sees_it() {
    let echo = CountingServer::start(Reply { status: 200, echo_headers: true, ..Reply::default() });
    let (mut call, _) =
        attack(json!({"action": "http", "url": format!("{}/", echo.origin()), "bearer": "TOKEN"}), &[echo.origin()]);
    call.grants.secrets = token_bound_to(&echo.origin());
    let outputs = run(&runtime(), &call).await.unwrap();
    assert!(echo.headers()[0].contains(&format!("Bearer {TOKEN}")), "the server got the real token");
    let body = &outputs["body"];
    assert!(body.to_ascii_lowercase().contains("authorization: bearer ***"), "{body}");
    assert!(!body.contains(TOKEN), "{body}");
}

/// A secret with the characters encoders escape: `/` (PHP writes `\/`), `&`, `<`, `>` (Go writes `\u0026`...).
const AWS_LIKE: &str = "wJalrXUtnFEMI/K7MDENG+bPx&RfiCY<EXAMPLE>KEY";

/// The request headers as PHP's `json_encode` writes them.
fn php_json(headers: &str) -> String {
    format!("{{\"headers\":{}}}", serde_json::to_string(headers).unwrap().replace('/', "\\/"))
}

/// The request headers as Go's `encoding/json` writes them.
fn go_json(headers: &str) -> String {
    let escaped = serde_json::to_string(headers).unwrap();
    format!("{{\"headers\":{}}}", escaped.replace('&', "\\u0026").replace('<', "\\u003c").replace('>', "\\u003e"))
}

/// The request headers in lower-case hex.
fn hex_dump(headers: &str) -> String {
    headers.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The misbehave plugin's `http` action with `auth` (its `bearer` or `basic` input naming secret `KEY`,
/// whose value is `value`) against a server answering as `reply` says: the request headers the server
/// got, and the body the plugin saw.
async fn echoed(reply: Reply, value: &str, auth: Value) -> (String, String) {
    let echo = CountingServer::start(reply);
    let mut input = json!({"action": "http", "url": format!("{}/", echo.origin())});
    input.as_object_mut().unwrap().extend(auth.as_object().unwrap().clone());
    let (mut call, _) = attack(input, &[echo.origin()]);
    let mut secrets = Secrets::default();
    secrets.insert("KEY", Secret::new(value, vec![Grant::parse(&echo.origin()).unwrap()]));
    call.grants.secrets = secrets;
    let outputs = run(&runtime(), &call).await.unwrap();
    (echo.headers()[0].clone(), outputs["body"].clone())
}

#[tokio::test]
async fn an_echoed_secret_escaped_as_php_or_go_write_json_or_in_hex_is_redacted_before_the_plugin_sees_it() {
    for encode in [php_json as fn(&str) -> String, go_json, hex_dump] {
        let reply = Reply { status: 200, echo_encoded: Some(encode), ..Reply::default() };
        let (headers, body) = echoed(reply, AWS_LIKE, json!({"bearer": "KEY"})).await;
        assert!(headers.contains(AWS_LIKE), "the server got the real key");
        let as_echoed = encode(AWS_LIKE);
        let as_echoed = as_echoed.trim_start_matches("{\"headers\":\"").trim_end_matches("\"}");
        assert!(!body.contains(as_echoed) && !body.contains(AWS_LIKE), "the key reached the plugin: {body}");
        assert!(body.contains("***"), "{body}");
    }
}

/// The request headers as JavaScript's `encodeURIComponent` writes them: `-_.!~*'()` left as they are.
fn js_uri(headers: &str) -> String {
    const KEPT: &[u8] = b"-_.!~*'()";
    headers
        .bytes()
        .map(
            |b| {
                if b.is_ascii_alphanumeric() || KEPT.contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            },
        )
        .collect()
}

/// The request headers as Python's `quote(safe="")` writes them, in a JSON string: `-_.~` kept.
fn python_quote_json(headers: &str) -> String {
    let quoted: String = headers
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect();
    serde_json::to_string(&quoted).unwrap()
}

#[tokio::test]
async fn an_echoed_secret_url_encoded_by_an_encoder_that_keeps_unreserved_characters_is_redacted() {
    // A GitHub-style token with the characters encoders disagree about.
    const TOKEN_LIKE: &str = "ghp_9aB-c.D~e/F+g&h";
    for encode in [js_uri as fn(&str) -> String, python_quote_json] {
        let reply = Reply { status: 200, echo_encoded: Some(encode), ..Reply::default() };
        let (_, body) = echoed(reply, TOKEN_LIKE, json!({"bearer": "KEY"})).await;
        let as_echoed = encode(TOKEN_LIKE);
        assert!(!body.contains(as_echoed.trim_matches('"')), "the token reached the plugin: {body}");
        assert!(body.contains("***"), "{body}");
    }
}

#[tokio::test]
async fn an_echoed_basic_credential_is_redacted_whatever_user_name_shifts_the_base64() {
    // base64("user:secret") carries the secret's own base64 only when the user name and colon are a
    // multiple of 3 bytes long; the plugin chooses the name, then decodes what the server echoes.
    for user in ["ab", "abc", "abcd"] {
        let reply = Reply { status: 200, echo_headers: true, ..Reply::default() };
        let (headers, body) = echoed(reply, AWS_LIKE, json!({"basic": [user, "KEY"]})).await;
        let sent = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{AWS_LIKE}"));
        assert!(headers.contains(&sent), "the server got the real credential");
        assert!(!body.contains(&sent), "user {user}: the credential reached the plugin: {body}");
        assert!(body.to_ascii_lowercase().contains("authorization: basic ***"), "{body}");
    }
}

#[tokio::test]
async fn a_transport_error_shows_the_plugin_the_origin_not_a_url_that_came_from_a_secret() {
    let report = CountingServer::start(Reply::text(200, "ok"));
    let closed = format!("http://127.0.0.1:{}", crate::peers::free_port());
    let hook = format!("{closed}/services/T0GALLERY/B0RELEASE/xoxHOOKsecret");
    let input = json!({"action": "http", "url": "{{secret:HOOK}}", "report": format!("{}/", report.origin())});
    let (mut call, _) = attack(input, &[closed.clone(), report.origin()]);
    let mut secrets = Secrets::default();
    secrets.insert("HOOK", Secret::new(hook.as_str(), vec![Grant::parse(&closed).unwrap()]));
    call.grants.secrets = secrets;
    let error = run(&runtime(), &call).await.unwrap_err().to_string();
    // What the plugin saw is what it sent out: the origin and the cause, never the path.
    let seen = report.requests().pop().expect("the plugin reported the error it saw");
    assert!(seen.contains(&closed) && seen.to_lowercase().contains("connect"), "{seen}");
    assert!(!seen.contains("xoxHOOKsecret") && !seen.contains("/services/"), "the plugin saw the URL: {seen}");
    assert!(!error.contains("xoxHOOKsecret"), "{error}");
}

#[tokio::test]
async fn caps_on_requests_and_response_size_fail_the_call_not_the_host() {
    let server = CountingServer::start(Reply::text(200, &"x".repeat(4096)));
    let (mut call, _) =
        attack(json!({"action": "http", "url": format!("{}/", server.origin()), "times": 5}), &[server.origin()]);
    call.http.max_requests = 3;
    assert_refused(run(&runtime(), &call).await, "http-limit", "made more than 3 requests");
    assert_eq!(server.hits(), 3);
    let (mut call, _) = attack(json!({"action": "http", "url": format!("{}/", server.origin())}), &[server.origin()]);
    call.http.max_response_bytes = 1000;
    assert_refused(run(&runtime(), &call).await, "http-limit", "larger than 1000 bytes");
}

#[tokio::test]
async fn files_outside_the_granted_directory_do_not_exist_and_granted_ones_are_read_only() {
    let root = tempfile::tempdir().unwrap();
    let granted = root.path().join("config");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(granted.join("app.yaml"), "debug: false\n").unwrap();
    std::fs::write(root.path().join("outside.txt"), "private").unwrap();
    let artifacts = root.path().join("artifacts");
    let files =
        Files { read: vec![FileGrant::new("config", root.path()).unwrap()], artifacts: Some(artifacts.clone()) };
    let runtime = runtime();
    let call_with = |input: Value| {
        let (mut call, _) = attack(input, &[]);
        call.grants.files = files.clone();
        call
    };
    let read = |path: &str| call_with(json!({"action": "read", "path": path}));

    let ok = run(&runtime, &read("/config/app.yaml")).await.unwrap();
    assert_eq!(ok["content"], "debug: false\n");
    for path in ["/etc/passwd", "/config/../outside.txt", "../outside.txt", "/config/../../etc/passwd"] {
        let err = run(&runtime, &read(path)).await.unwrap_err();
        assert_eq!(err.kind(), "failed", "{path}: {err}");
        assert!(err.to_string().contains(&format!("cannot read {path}")), "{err}");
    }
    let write = call_with(json!({"action": "write", "path": "/config/app.yaml", "message": "debug: true"}));
    assert_eq!(run(&runtime, &write).await.unwrap_err().kind(), "failed");
    assert_eq!(std::fs::read_to_string(granted.join("app.yaml")).unwrap(), "debug: false\n", "unchanged");
    let report = call_with(json!({"action": "write", "path": "/artifacts/report.txt", "message": "audit ok"}));
    run(&runtime, &report).await.unwrap();
    assert_eq!(std::fs::read_to_string(artifacts.join("report.txt")).unwrap(), "audit ok");
}

#[tokio::test]
async fn artifacts_are_capped_while_the_step_runs_and_links_left_behind_are_removed() {
    let root = tempfile::tempdir().unwrap();
    let artifacts = root.path().join("artifacts");
    let runtime = runtime();
    let call_with = |input: Value| {
        let (mut call, logs) = attack(input, &[]);
        call.grants.files = Files { read: vec![], artifacts: Some(artifacts.clone()) };
        call.limits.artifacts_bytes = 8 << 20;
        (call, logs)
    };
    // 512 MiB asked for: the watcher stops the call soon after 8 MiB, and nothing is left behind.
    let (fill, _) = call_with(json!({"action": "fill", "path": "/artifacts/disk.bin", "bytes": 512u64 << 20}));
    let err = run(&runtime, &fill).await.unwrap_err();
    assert_eq!(err.kind(), "artifacts-limit", "{err}");
    assert!(err.to_string().contains("exceeded its artifacts limit of 8388608 bytes"), "{err}");
    assert_eq!(gantry_host::sandbox::artifacts::usage(&artifacts).bytes, 0, "emptied");

    // Links pointing outside, however made, are removed when the step ends; regular files stay.
    let (call, _) = call_with(json!({"action": "link", "message": "../../../../etc", "path": "/artifacts/up"}));
    run(&runtime, &call).await.expect("WASI lets a plugin make a relative link that points outside");
    assert!(!artifacts.join("up").exists() && artifacts.join("up").symlink_metadata().is_err(), "and it is gone");
    // An absolute target is refused by WASI itself; were it made, it would be removed the same way.
    let (call, _) = call_with(json!({"action": "link", "message": "/etc/passwd", "path": "/artifacts/passwd"}));
    let _ = run(&runtime, &call).await;
    let (report, _) = call_with(json!({"action": "write", "path": "/artifacts/report.txt", "message": "ok"}));
    run(&runtime, &report).await.unwrap();
    let left: Vec<String> =
        std::fs::read_dir(&artifacts).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["report.txt"], "only the regular file stays");
}

#[tokio::test]
async fn the_plugin_sees_no_environment_and_no_arguments() {
    assert!(std::env::vars().count() > 0);
    let (call, _) = attack(json!({"action": "env"}), &[]);
    let outputs = run(&runtime(), &call).await.unwrap();
    assert_eq!((outputs["vars"].as_str(), outputs["args"].as_str(), outputs["home"].as_str()), ("0", "0", ""));
}

#[tokio::test]
async fn a_gigabyte_of_output_is_cut_off_and_the_next_call_runs() {
    let runtime = runtime();
    let (call, _) = attack(json!({"action": "flood", "bytes": 1u64 << 30}), &[]);
    assert_refused(run(&runtime, &call).await, "output-limit", "output limit of 1048576 bytes (stdout/stderr)");
    let (call, _) = attack(json!({"action": "big_output", "bytes": 2 << 20}), &[]);
    assert_refused(run(&runtime, &call).await, "output-limit", "outputs of");
    let (call, _) = attack(json!({"action": "ok"}), &[]);
    run(&runtime, &call).await.expect("the host keeps working");
}

#[test]
fn a_plugin_logging_in_a_loop_is_cut_off_at_the_output_limit_with_one_line_saying_so() {
    let wasm = plugin(MISBEHAVE);
    let mut cmd = command(&shared_cache());
    cmd.args(["step", "run", wasm.to_str().unwrap(), "--json", "--output", "64KiB"]);
    cmd.args(["--with", "action=log_flood", "--with", &format!("bytes={}", 64u64 << 20)]);
    let out = cmd.output().unwrap();
    expect_code(&out, 1);
    let error = &stdout_json(&out)["error"];
    assert_eq!(error["kind"], "output-limit", "{error}");
    assert!(error["message"].as_str().unwrap().contains("(log: 65472 lines (67043328 bytes) dropped)"), "{error}");
    // 64 MiB logged, at most the limit (plus the host's own lines) printed.
    assert!(out.stderr.len() < 256 << 10, "{} bytes reached stderr", out.stderr.len());
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.matches("dropped 65472 lines").count(), 1, "one line says how much was dropped");
}

/// `gantry step run misbehave --with action=leak ...` with TOKEN granted.
fn leak(message: &str, fail: bool) -> std::process::Output {
    let wasm = plugin(MISBEHAVE);
    let mut cmd = command(&shared_cache());
    cmd.env("ATTACK_TOKEN", TOKEN).args(["step", "run", wasm.to_str().unwrap(), "--json"]);
    cmd.args(["--secret", "TOKEN=env:ATTACK_TOKEN@http://127.0.0.1:9", "--with", "action=leak"]);
    cmd.args(["--with", &format!("message={message}"), "--with", &format!("fail={fail}")]);
    cmd.output().unwrap()
}

#[test]
fn a_secret_in_logs_outputs_and_errors_is_redacted_in_every_form() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(TOKEN);
    let url = url::form_urlencoded::byte_serialize(format!("{TOKEN}!").as_bytes()).collect::<String>();
    for form in [TOKEN.to_string(), b64.clone(), url] {
        let out = leak(&format!("x{form}y"), false);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        for text in [&stdout, &stderr] {
            assert!(!text.contains(TOKEN) && !text.contains(&b64), "leaked: {text}");
        }
        assert!(stdout_json(&out)["outputs"]["leak"].as_str().unwrap().starts_with("x***"), "{stdout}");
        assert!(stderr.contains("leaking x***") && stderr.contains("stdout leak x***"), "{stderr}");
    }
    let out = leak(TOKEN, true);
    let error = &stdout_json(&out)["error"];
    assert_eq!(error["message"], "step `step` failed: failed with ***");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(TOKEN));
}

/// A pipeline around the attacker: a denied request (the pipeline carries on),
/// a step that outputs another step's secret (found in a file it was granted), a later failure, and a rollback
/// that panics. Everything is contained and recorded, and the secret is in no
/// event, journal line or report.
#[test]
fn in_a_pipeline_the_attacker_is_contained_recorded_and_redacted() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = repo().join(MISBEHAVE);
    let origin = server.origin();
    let yaml = format!(
        r#"name: attack
secrets:
  TOKEN: {{ from: "env:ATTACK_TOKEN", bind: ["{origin}"] }}
steps:
  - id: setup
    uses: {p}
    with: {{ action: ok, rollback_panics: true }}
  - id: user
    uses: {p}
    needs: [setup]
    secrets: [TOKEN]
    network: ["{origin}"]
    with: {{ action: http, url: "{origin}/", bearer: TOKEN }}
  - id: attacker
    uses: {p}
    needs: [user]
    continue_on_error: true
    with: {{ action: http, url: "http://169.254.169.254/latest/meta-data/" }}
  - id: leaker
    uses: {p}
    needs: [attacker]
    files: [found]
    with: {{ action: leak, path: /found/token }}
  - id: breaks
    uses: {p}
    needs: [leaker]
    with: {{ action: fail, message: "deploy failed" }}
"#,
        p = plugin_dir.display()
    );
    std::fs::create_dir(dir.path().join("found")).unwrap();
    std::fs::write(dir.path().join("found/token"), TOKEN).unwrap();
    let report = dir.path().join("report.json");
    let receiver = crate::peers::otlp();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let out = run_pipeline(
        dir.path(),
        &yaml,
        &[("ATTACK_TOKEN", TOKEN), ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.origin), ("TRACEPARENT", parent)],
        &["--report", &format!("json={}", report.display())],
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "a rollback failed, so exit 3\n{stdout}\n{stderr}");
    // Only the granted step reached the server: its run, then its rollback.
    assert_eq!(server.requests(), ["GET", "POST rollback user"]);
    assert!(server.headers()[0].contains(TOKEN), "the granted step's request carried the token");

    let events: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |event: &str, step: &str| events.iter().find(|e| e["event"] == event && e["step"] == step).cloned();
    let failed = find("step_failed", "attacker").expect("the attacker failed");
    assert_eq!(failed["kind"], "network-denied");
    assert_eq!(failed["continue_on_error"], true);
    assert!(find("step_finished", "leaker").is_some(), "the pipeline carried on after the attacker");
    assert_eq!(find("step_finished", "leaker").unwrap()["outputs"]["leak"], "***");
    let denied = events.iter().find(|e| e["event"] == "request" && e["step"] == "attacker").unwrap();
    assert_eq!((denied["allowed"].as_bool(), denied["origin"].as_str()), (Some(false), Some("http://169.254.169.254")));
    let allowed = events.iter().find(|e| e["event"] == "request" && e["step"] == "user").unwrap();
    assert_eq!((allowed["allowed"].as_bool(), allowed["status"].as_u64()), (Some(true), Some(200)));
    let rollback = find("rollback_failed", "setup").expect("setup's rollback panicked");
    assert!(rollback["error"].as_str().unwrap().contains("deliberate panic in rollback"), "{rollback}");
    assert!(find("rolled_back", "user").is_some(), "the other steps were still rolled back");

    let run_dir = std::fs::read_dir(dir.path().join(".gantry/runs")).unwrap().next().unwrap().unwrap().path();
    let journal = std::fs::read_to_string(run_dir.join("journal.jsonl")).unwrap();
    let report = std::fs::read_to_string(&report).unwrap();
    for (what, text) in [("events", &*stdout), ("logs", &*stderr), ("journal", &journal), ("report", &report)] {
        assert!(!text.contains(TOKEN), "the secret leaked into the {what}");
    }
    let summary: Value = serde_json::from_str(&report).unwrap();
    let attacker = summary["steps"].as_array().unwrap().iter().find(|s| s["id"] == "attacker").unwrap();
    assert_eq!((attacker["requests"].as_u64(), attacker["denied"].as_u64()), (Some(0), Some(1)));

    // The run's trace, decoded by OpenTelemetry's own protobuf definitions: under the CI's
    // TRACEPARENT, a span per step attempt, host call and rollback, and the secret in none of it.
    let (spans, raw) = crate::peers::otlp_received(&receiver);
    let token_hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!raw.is_empty() && raw.iter().all(|body| !body.contains(&token_hex)), "the secret reached the collector");
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no span {name}: {spans:#?}"));
    let run = named("gantry run attack");
    assert!(spans.iter().all(|s| s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"), "one trace, the CI's");
    assert_eq!(run["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(run["attributes"]["cicd.pipeline.name"], "attack");
    assert_eq!(run["attributes"]["cicd.pipeline.run.id"], run_dir.file_name().unwrap().to_str().unwrap());
    assert_eq!(run["attributes"]["cicd.pipeline.result"], "failure");
    assert_eq!(run["resource"]["service.name"], "gantry");
    for step in ["setup", "user", "attacker", "leaker", "breaks"] {
        let attempt = named(&format!("step {step}"));
        assert_eq!(attempt["parent_span_id"], run["span_id"], "{step}");
        assert_eq!(attempt["attributes"]["cicd.pipeline.task.name"], step);
        assert_eq!(attempt["attributes"]["gantry.plugin.sha256"].as_str().map(str::len), Some(64), "{step}");
    }
    assert_eq!(named("step breaks")["status"]["message"], "step `breaks` failed: deploy failed");
    let get = named(&format!("GET {origin}"));
    assert_eq!((get["parent_span_id"].clone(), get["attributes"]["http.response.status_code"].as_i64()), (named("step user")["span_id"].clone(), Some(200)));
    let denied = named("GET http://169.254.169.254");
    assert_eq!(denied["parent_span_id"], named("step attacker")["span_id"]);
    assert_eq!(denied["status"]["code"], 2, "a refused request is an error span");
    for step in ["user", "setup"] {
        assert_eq!(named(&format!("rollback {step}"))["parent_span_id"], run["span_id"], "rollback {step}");
    }
    assert!(named("rollback setup")["status"]["message"].as_str().unwrap().contains("deliberate panic in rollback"));
    let leaked = &named("step leaker")["events"];
    assert!(leaked.as_array().is_some_and(|e| !e.is_empty()), "the step's log lines are its span's events");
}

#[tokio::test]
async fn an_error_quoting_what_the_plugin_sent_is_redacted_too() {
    // Found by the `boundary` fuzz target: an invalid header name holding a secret came back verbatim.
    use gantry_host::sandbox::bindings::gantry::step::types::{HttpError, Request};
    let api = CountingServer::start(Reply::text(200, "ok"));
    let mut call = StepCall::default();
    call.context.step_id = "attacker".into();
    call.grants.network = NetworkPolicy::parse(&[api.origin()]).unwrap();
    call.grants.secrets = token_bound_to(&api.origin());
    let mut imports = gantry_host::sandbox::imports::Imports::new(&runtime(), &call).unwrap();
    let req = Request {
        method: "GET".into(),
        url: format!("{}/", api.origin()),
        headers: vec![(format!("x-{TOKEN}\u{1}"), "v".into())],
        body: vec![],
        secrets: vec![],
        timeout_ms: None,
    };
    match imports.http(req).await {
        Err(HttpError::Invalid(message)) => {
            assert!(!message.contains(TOKEN) && message.contains("***"), "{message}");
        }
        other => panic!("expected an invalid-header error, got {other:?}"),
    }
    assert_eq!(api.hits(), 0);
}
