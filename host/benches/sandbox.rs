//! Sandbox benchmark: compile vs cache-hit load of a component; one warm `run`
//! call of http-check against a local server; the same call through a granted
//! name that the host resolves and checks; and redaction of a response body
//! with five secrets — each against its baseline in the same run.
//! `cargo bench -p gantry-host --bench sandbox`.

mod common;
use common::time;

use gantry_host::build::{build_crate, BuildOptions};
use gantry_host::capability::{NetworkPolicy, Redactor};
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
    let options = BuildOptions { target_dir: Some(repo.join("target/plugins")), ..BuildOptions::default() };
    build_crate(&repo.join("plugins/http-check"), &options).expect("http-check builds").path
}

fn main() {
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
}
