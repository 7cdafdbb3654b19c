//! gantry against Extism, in one process and one run: the same no-op and the same 1 KiB JSON
//! echo, per call with a fresh instance and with a reused one. Each figure is the median of
//! alternating rounds, gantry and Extism side by side.
//!
//! `scripts/bench-extism` builds both plugins and runs it (`--quick` for one small round).

// The timing helpers gantry's own benches use.
#[path = "../../../host/benches/common/mod.rs"]
#[allow(dead_code)] // not every helper is used here
mod common;

use gantry_host::build::{build_crate, BuildOptions, Toolchain};
use gantry_host::sandbox::{Runtime, StepCall};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn target() -> PathBuf {
    repo().join("target/plugins")
}

/// The Extism plugin's core module, built by the toolchain that builds gantry plugins.
fn extism_module() -> Vec<u8> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin/Cargo.toml");
    let status = Toolchain::detect()
        .expect("a wasm32-wasip1 toolchain")
        .cargo_build()
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target())
        .status()
        .expect("cargo starts");
    assert!(status.success(), "the Extism plugin builds");
    std::fs::read(target().join("wasm32-wasip1/release/extism_echo.wasm")).unwrap()
}

/// gantry's time over the peer's.
fn ratio(gantry: Duration, peer: Duration) -> f64 {
    gantry.as_secs_f64() / peer.as_secs_f64()
}

/// The median time per call of `calls` calls of `f`, over `rounds` rounds.
fn per_call(rounds: usize, calls: u32, mut f: impl FnMut()) -> Duration {
    common::time(rounds, || (0..calls).for_each(|_| f())) / calls
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, calls) = if quick { (1, 3) } else { (7, 2_000) };
    let options = BuildOptions { target_dir: Some(target()), ..BuildOptions::default() };
    let misbehave = build_crate(&repo().join("tests/plugins/misbehave"), &options).expect("misbehave builds").path;
    let module = extism_module();

    // gantry as `gantry run` configures it: compile cache, pooled instances.
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder().cache_dir(cache.path()).pooled(4, 64 << 20).build().unwrap();
    let plugin = runtime.load(&misbehave).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // Extism as its docs build a plugin: compiled once, WASI on (the plugin targets wasip1).
    let compiled = extism::PluginBuilder::new(extism::Manifest::new([extism::Wasm::data(module)]))
        .with_wasi(true)
        .compile()
        .unwrap();

    // 1 KiB of JSON: an object of text fields (gantry outputs are text).
    let json: serde_json::Map<String, serde_json::Value> =
        (0..16).map(|i| (format!("field_{i:02}"), format!("{i:02}-{}", "v".repeat(47)).into())).collect();
    let json_text = serde_json::Value::Object(json.clone()).to_string();
    let mut noop = StepCall::default();
    noop.context.step_id = "bench".into();
    noop.context.input = serde_json::json!({"action": "ok"});
    let mut echo = noop.clone();
    echo.context.input = serde_json::json!({"action": "ok", "outputs": json});

    let gantry_fresh = |call: &StepCall| {
        let out = tokio.block_on(plugin.run(call)).unwrap();
        std::hint::black_box(out);
    };
    let extism_fresh = |name: &str, input: &str| {
        let mut p = extism::Plugin::new_from_compiled(&compiled).unwrap();
        let out: Vec<u8> = p.call(name, input).unwrap();
        std::hint::black_box(out);
    };
    let mut reused = extism::Plugin::new_from_compiled(&compiled).unwrap();

    println!("mode: {}", if quick { "quick (one small round)" } else { "full" });
    println!("echo input: {} bytes of JSON", json_text.len());
    let g_noop = per_call(rounds, calls, || gantry_fresh(&noop));
    let e = per_call(rounds, calls, || extism_fresh("noop", ""));
    println!("no-op, fresh instance: gantry {g_noop:?} vs Extism {e:?} ({:.2}x)", ratio(g_noop, e));
    let g_echo = per_call(rounds, calls, || gantry_fresh(&echo));
    let e = per_call(rounds, calls, || extism_fresh("echo", &json_text));
    println!("1 KiB JSON echo, fresh instance: gantry {g_echo:?} vs Extism {e:?} ({:.2}x)", ratio(g_echo, e));
    // gantry gives every call a fresh instance (one step's memory never reaches the next call), so
    // its figure beside Extism's reused instance is its fresh one.
    let e = per_call(rounds, calls * 10, || {
        let out: Vec<u8> = reused.call("noop", "").unwrap();
        std::hint::black_box(out);
    });
    println!("no-op, reused instance: Extism {e:?} vs gantry (always fresh) {g_noop:?} ({:.2}x)", ratio(g_noop, e));
    let e = per_call(rounds, calls * 10, || {
        let out: Vec<u8> = reused.call("echo", json_text.as_str()).unwrap();
        std::hint::black_box(out);
    });
    println!("1 KiB JSON echo, reused instance: Extism {e:?} vs gantry (always fresh) {g_echo:?} ({:.2}x)", ratio(g_echo, e));
}
