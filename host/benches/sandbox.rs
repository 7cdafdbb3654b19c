//! Sandbox benchmark: compile vs cache-hit load of a component; one warm `run`
//! call of http-check against a local server; the same call through a granted
//! name that the host resolves and checks; redaction of a response body
//! with five secrets; and SigV4 signing with an `aws-credentials:` set (its
//! held keys looked up at each request) against static keys — each against
//! its baseline in the same run.
//! `cargo bench -p gantry-host --bench sandbox`.

mod common;
use common::time;

use gantry_host::build::{build_crate, BuildOptions};
use gantry_host::capability::aws_credentials::{AwsCredentialSpec, AwsCredentials};
use gantry_host::capability::secrets::{SigV4Use, SignedRequest};
use gantry_host::capability::{Grant, NetworkPolicy, Redactor, Secret, Secrets};
use gantry_host::sandbox::{Runtime, StepCall};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Answers every connection with a tiny 200, so the call measures the host, not a server.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    origin
}

fn component() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let options = BuildOptions { target_dir: Some(common::plugin_target_dir()), ..BuildOptions::default() };
    build_crate(&repo.join("plugins/http-check"), &options).expect("http-check builds").path
}

fn main() {
    // The credential set's chain answers from the environment: set before any thread starts.
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDBENCHEXAMPLE");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench-secret-access-key");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let wasm = component();
    let bytes = std::fs::read(&wasm).unwrap();
    println!("http-check component: {} bytes", bytes.len());

    // A runtime shares what it loaded once, so each load is made by a new runtime (as a new
    // process would); building one alone is measured and taken off.
    let cache = tempfile::tempdir().unwrap();
    let cached = || Runtime::builder().cache_dir(cache.path()).build().unwrap();
    cached().load(&wasm).unwrap();
    let build = time(50, cached);
    let compile = time(5, || Runtime::builder().no_cache().build().unwrap().load(&wasm).unwrap()).saturating_sub(build);
    let hit = time(50, || cached().load(&wasm).unwrap()).saturating_sub(build);
    println!(
        "load: compile {compile:?} (baseline), cache hit {hit:?}, {:.0}x faster (building a runtime, {build:?}, taken off both)",
        compile.as_secs_f64() / hit.as_secs_f64()
    );
    let cached = cached();

    let origin = serve();
    let plugin = cached.load(&wasm).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut call = StepCall::default();
    call.context.step_id = "bench".into();
    call.context.input = serde_json::json!({"url": format!("{origin}/")});
    call.grants.network = NetworkPolicy::parse(&[origin.as_str()]).unwrap();
    rt.block_on(plugin.run(&call)).unwrap();
    let client = reqwest::Client::new();
    let url = format!("{origin}/");
    let direct = time(200, || rt.block_on(async { client.get(&url).send().await.unwrap().bytes().await.unwrap() }));
    let step = time(200, || rt.block_on(plugin.run(&call)).unwrap());
    println!(
        "warm call: direct reqwest GET {direct:?} (baseline), http-check step run {step:?}, sandbox overhead {:?}",
        step.saturating_sub(direct)
    );

    // The same call to a granted name: the host resolves it and checks the address before connecting.
    let port = origin.rsplit(':').next().unwrap();
    let named = format!("http://bench.test:{port}");
    let resolving =
        Runtime::builder().cache_dir(cache.path()).resolve("bench.test", vec!["127.0.0.1".parse().unwrap()]);
    let resolving = resolving.build().unwrap();
    let named_plugin = resolving.load(&wasm).unwrap();
    let mut named_call = call.clone();
    named_call.context.input = serde_json::json!({"url": format!("{named}/")});
    named_call.grants.network =
        NetworkPolicy::parse(&[named.as_str()]).unwrap().with_addresses(vec!["127.0.0.0/8".parse().unwrap()]);
    rt.block_on(named_plugin.run(&named_call)).unwrap();
    let checked = time(200, || rt.block_on(named_plugin.run(&named_call)).unwrap());
    println!(
        "warm call by granted name (resolved + address check): {checked:?} vs by address {step:?} (baseline), {:?} more",
        checked.saturating_sub(step)
    );

    // Redaction of a 16 KiB body with five secrets (every encoded form, JSON escapes per character) vs copying it.
    let secrets = [
        "tok-9f2c-very-secret",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "p@ss word",
        "xoxb-1234",
    ];
    let redactor = Redactor::new(secrets);
    let body: String = (0..600).map(|i| format!("line {i}: status ok, latency 12 ms\n")).collect::<String>();
    let body = &body[..16 << 10];
    let copy = time(2000, || body.to_string());
    let redacted = time(2000, || redactor.redact(body));
    println!(
        "redact 16 KiB with 5 secrets: {redacted:?} vs copy {copy:?} (baseline), {:.0} MB/s",
        body.len() as f64 / redacted.as_secs_f64() / 1e6
    );
    // The same size of body echoing every secret ten times, as PHP's json_encode writes it.
    let echoed: String = (0..10)
        .flat_map(|_| secrets.iter().map(|v| serde_json::to_string(v).unwrap().replace('/', "\\/")))
        .collect::<Vec<_>>()
        .join(",");
    let echoing = format!("{echoed}{}", &body[..body.len() - echoed.len()]);
    let redacted = time(2000, || redactor.redact(&echoing));
    println!(
        "redact 16 KiB echoing 5 secrets 10 times each: {redacted:?} vs copy {copy:?} (baseline), {:.0} MB/s",
        echoing.len() as f64 / redacted.as_secs_f64() / 1e6
    );

    // SigV4 of a 1 KiB ELBv2 call: static keys (before) vs the credential set's held keys (after).
    let url = url::Url::parse("https://elasticloadbalancing.us-east-1.amazonaws.com/").unwrap();
    let bound = vec![Grant::parse("https://elasticloadbalancing.us-east-1.amazonaws.com").unwrap()];
    let sign = SigV4Use {
        service: "elasticloadbalancing",
        region: "us-east-1",
        access_key_id_secret: "AWS_ACCESS_KEY_ID",
        secret_access_key_secret: "AWS_SECRET_ACCESS_KEY",
        session_token_secret: None,
    };
    let form = "Action=DescribeListeners&Version=2015-12-01&".repeat(24);
    let headers = vec![("content-type".to_string(), "application/x-www-form-urlencoded".to_string())];
    let req = SignedRequest { method: "POST", url: &url, headers: &headers, body: form.as_bytes() };
    let mut with_keys = Secrets::default();
    with_keys.insert("AWS_ACCESS_KEY_ID", Secret::new("AKIDBENCHEXAMPLE", bound.clone()));
    with_keys.insert("AWS_SECRET_ACCESS_KEY", Secret::new("bench-secret-access-key", bound.clone()));
    let spec = AwsCredentialSpec::default();
    let set = rt.block_on(AwsCredentials::read("AWS", &spec)).expect("the environment has keys");
    let mut with_set = Secrets::default();
    with_set.insert_aws(set, bound);
    let keys_static = time(2000, || with_keys.aws_sigv4(&sign, None, &req).unwrap());
    let keys_set = time(2000, || {
        let set = with_set.aws_set_for(&sign, &url).unwrap().unwrap();
        let keys = rt.block_on(set.current("bench")).unwrap();
        with_set.aws_sigv4(&sign, Some(&keys), &req).unwrap()
    });
    println!(
        "SigV4 of a 1 KiB request: static keys {keys_static:?} (baseline) vs an aws-credentials: set {keys_set:?}, {:?} more",
        keys_set.saturating_sub(keys_static)
    );
}
