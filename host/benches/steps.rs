//! What a step costs, each figure beside its baseline from the same run:
//!
//! 1. per step: a no-op plugin's `run` through the library (instantiate, call, drop) vs spawning
//!    `/bin/true` vs a native function call;
//! 2. per pipeline: `gantry run` of 1, 200 and 1,000 independent no-op steps with `--jobs 2` and
//!    `--jobs 64` (wall time and peak RSS) vs spawning as many `/bin/true`;
//! 3. start-up: `gantry plan` of the gallery pipeline (resolve, load or compile, describe every
//!    plugin) with a cold compile cache vs a warm one, from crate sources (cargo checks each is
//!    fresh) and from the built component files;
//! 4. HTTP: 10,000 requests from a plugin through the capability layer vs the same requests made
//!    with reqwest from native code, to one local keep-alive server;
//! 5. tracing: `gantry run` of 200 no-op steps with tracing off (the baseline), sending its spans
//!    to a live OTLP receiver, and to a dead one (a socket that takes the request and never answers).
//!
//! `cargo bench -p gantry-host --bench steps`. With `GANTRY_BENCH_BASELINE=<another gantry binary>`
//! (main's, built the same way) the pipelines run alternately beside that binary instead. Run without `--bench` (as `cargo test --benches`
//! does) it measures each figure once with small counts: a check that the bench works, not a figure.

mod common;
use common::time;

use gantry_host::build::{build_crate, BuildOptions};
use gantry_host::capability::NetworkPolicy;
use gantry_host::sandbox::{HttpLimits, Runtime, StepCall};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn component(crate_dir: &str) -> PathBuf {
    let options = BuildOptions { target_dir: Some(common::plugin_target_dir()), ..BuildOptions::default() };
    build_crate(&repo().join(crate_dir), &options).unwrap_or_else(|e| panic!("{crate_dir} builds: {e}")).path
}

/// Runs `cmd` to its end; wall time and the child's peak resident set (KiB). A child's peak counts
/// the memory of whatever process it was forked from (Linux carries it across `exec`), so this bench
/// (tens of MiB) would set a floor under every figure: the command is started by a fresh copy of
/// this binary (`--measure`, a few MiB), which times it and reads its peak from `wait4`.
fn measured(cmd: &mut Command) -> (Duration, u64) {
    let mut helper = Command::new(std::env::current_exe().unwrap());
    helper.arg(MEASURE).arg(cmd.get_program()).args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        helper.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => helper.env(k, v),
            None => helper.env_remove(k),
        };
    }
    let out = helper.stderr(Stdio::inherit()).output().expect("the measuring copy starts");
    assert!(out.status.success(), "{cmd:?} failed ({})", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let (nanos, kib) = text.trim().split_once(' ').expect("the measuring copy reports wall time and peak");
    (Duration::from_nanos(nanos.parse().unwrap()), kib.parse().unwrap())
}

/// The argument that makes this binary measure the command after it (see [`measured`]).
const MEASURE: &str = "--measure";

/// In the measuring copy: runs the command, prints `<wall ns> <peak KiB>`, exits with its status.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
fn measure(program: &str, args: &[String]) -> ! {
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the command starts");
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills; the pid is our own child, waited for once.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    let ok = pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    println!("{} {}", wall.as_nanos(), usage.ru_maxrss);
    std::process::exit(if ok { 0 } else { 1 })
}

/// A keep-alive HTTP/1.1 server answering every request with a small 200.
fn keep_alive_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                let mut line = String::new();
                loop {
                    let mut length = 0usize;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err()
                        || stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    origin
}

fn no_op_pipeline(dir: &Path, misbehave: &Path, steps: usize) -> PathBuf {
    let mut text = String::from("name: no-ops\nsteps:\n");
    for i in 0..steps {
        text.push_str(&format!("  - id: s{i}\n    uses: {}\n    with: {{ action: ok }}\n", misbehave.display()));
    }
    let file = dir.join(format!("no-ops-{steps}.yaml"));
    std::fs::write(&file, text).unwrap();
    file
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == MEASURE) {
        measure(&args[at + 1], &args[at + 2..]);
    }
    let full = args.iter().any(|a| a == "--bench");
    let n = |full_count: usize, quick: usize| if full { full_count } else { quick };
    let gantry = PathBuf::from(env!("CARGO_BIN_EXE_gantry"));
    let misbehave = component("tests/plugins/misbehave");
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder().cache_dir(cache.path()).build().unwrap();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    println!("mode: {}", if full { "full" } else { "quick (one pass, small counts)" });

    // 1. Per step.
    let plugin = runtime.load(&misbehave).unwrap();
    let mut call = StepCall::default();
    call.context.step_id = "bench".into();
    call.context.input = serde_json::json!({"action": "ok"});
    tokio.block_on(plugin.run(&call)).unwrap();
    let step = time(n(500, 3), || tokio.block_on(plugin.run(&call)).unwrap());
    let pooled = Runtime::builder().cache_dir(cache.path()).pooled(4, 64 << 20).build().unwrap();
    let pooled_plugin = pooled.load(&misbehave).unwrap();
    tokio.block_on(pooled_plugin.run(&call)).unwrap();
    let pooled_step = time(n(500, 3), || tokio.block_on(pooled_plugin.run(&call)).unwrap());
    let spawn = time(n(500, 3), || Command::new("/bin/true").status().unwrap());
    let native = time(n(100_000, 3), || std::hint::black_box(|x: u64| x + 1)(std::hint::black_box(1)));
    println!(
        "per step: no-op plugin run {step:?}, with pooled instances {pooled_step:?} vs spawn /bin/true {spawn:?} (baseline, {:.1}x, pooled {:.1}x) vs native call {native:?}",
        spawn.as_secs_f64() / step.as_secs_f64(),
        spawn.as_secs_f64() / pooled_step.as_secs_f64()
    );

    // 2. Per pipeline, through the binary; beside another build of gantry (`GANTRY_BENCH_BASELINE`,
    // e.g. main's) when one is given, instead of beside /bin/true.
    let baseline = std::env::var_os("GANTRY_BENCH_BASELINE").map(PathBuf::from);
    let work = tempfile::tempdir().unwrap();
    for steps in if full { vec![1, 200, 1000] } else { vec![1, 20] } {
        let file = no_op_pipeline(work.path(), &misbehave, steps);
        let spawns = {
            let started = Instant::now();
            for _ in 0..steps {
                Command::new("/bin/true").status().unwrap();
            }
            started.elapsed()
        };
        for jobs in ["2", "64"] {
            let run = |binary: &Path| {
                let mut cmd = Command::new(binary);
                cmd.current_dir(work.path())
                    .env("GANTRY_CACHE_DIR", cache.path())
                    .env("GANTRY_LOG", "warn")
                    .args(["run", file.to_str().unwrap(), "--jobs", jobs]);
                measured(&mut cmd)
            };
            run(&gantry);
            let Some(before) = &baseline else {
                let (wall, rss) = (0..n(3, 1)).map(|_| run(&gantry)).min().unwrap();
                println!(
                    "pipeline of {steps} no-op steps, --jobs {jobs}: {wall:?}, peak RSS {} MiB vs {steps} spawns of /bin/true {spawns:?} (baseline, {:.2}x)",
                    rss / 1024,
                    wall.as_secs_f64() / spawns.as_secs_f64()
                );
                continue;
            };
            // Alternating, so both binaries see the same machine load.
            run(before);
            let (mut now, mut then) = (Vec::new(), Vec::new());
            for _ in 0..n(9, 1) {
                now.push(run(&gantry));
                then.push(run(before));
            }
            let (now, then) = (now.into_iter().min().unwrap(), then.into_iter().min().unwrap());
            println!(
                "pipeline of {steps} no-op steps, --jobs {jobs}: {:?}, peak RSS {} MiB vs the baseline binary {:?}, {} MiB ({:.2}x)",
                now.0,
                now.1 / 1024,
                then.0,
                then.1 / 1024,
                now.0.as_secs_f64() / then.0.as_secs_f64()
            );
        }
    }

    // 3. Start-up of the gallery pipeline: every plugin resolved, loaded (or compiled) and described.
    let gallery = repo().join("pipelines/gallery-release.yaml");
    // The same pipeline naming the built component files: what a start costs without cargo's checks.
    let mut from_files = std::fs::read_to_string(&gallery).unwrap();
    for crate_dir in ["compliance-audit", "wordpress-check", "cache-purge", "notion-sync", "notify", "http-check"] {
        let file = component(&format!("plugins/{crate_dir}"));
        from_files = from_files.replace(&format!("../plugins/{crate_dir}"), file.to_str().unwrap());
    }
    let gallery_files = work.path().join("gallery-files.yaml");
    std::fs::write(&gallery_files, from_files).unwrap();
    let plan = |cache: &Path, pipeline: &Path| {
        let mut cmd = Command::new(&gantry);
        cmd.env("GANTRY_CACHE_DIR", cache)
            .env("CARGO_TARGET_DIR", common::plugin_target_dir())
            .env("GANTRY_LOG", "warn")
            .args(["plan", pipeline.to_str().unwrap(), "--entity", "am_consulting"]);
        measured(&mut cmd).0
    };
    for (what, pipeline) in [("crate sources", &gallery), ("component files", &gallery_files)] {
        let cold_cache = tempfile::tempdir().unwrap();
        let cold = plan(cold_cache.path(), pipeline);
        let warm = time(n(9, 1), || plan(cold_cache.path(), pipeline));
        println!(
            "start-up, gallery plan (5 plugins) from {what}: cold compile cache {cold:?} (baseline) vs warm {warm:?}, {:.0}x faster",
            cold.as_secs_f64() / warm.as_secs_f64()
        );
    }

    // 4. HTTP through the capability layer vs reqwest from native code.
    let origin = keep_alive_server();
    let requests = n(10_000, 20);
    let mut http = StepCall::default();
    http.context.step_id = "bench-http".into();
    http.context.input = serde_json::json!({"action": "http", "url": format!("{origin}/"), "times": requests});
    http.grants.network = NetworkPolicy::parse(&[origin.as_str()]).unwrap();
    http.http = HttpLimits { max_requests: requests as u32 + 1, ..HttpLimits::default() };
    let client = reqwest::Client::new();
    let url = format!("{origin}/");
    // Alternating rounds, the median of each side: this machine's noise is larger than the gap.
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..n(5, 1) {
        let started = Instant::now();
        tokio.block_on(plugin.run(&http)).unwrap();
        through.push(started.elapsed());
        let started = Instant::now();
        tokio.block_on(async {
            for _ in 0..requests {
                client.get(&url).send().await.unwrap().bytes().await.unwrap();
            }
        });
        direct.push(started.elapsed());
    }
    let (through, direct) = (common::median(through), common::median(direct));
    println!(
        "{requests} HTTP requests: through the capability layer {through:?} ({:?} each) vs reqwest {direct:?} (baseline, {:?} each), {:.2}x",
        through / requests as u32,
        direct / requests as u32,
        through.as_secs_f64() / direct.as_secs_f64()
    );

    // 5. Tracing: off, to a live receiver, to a dead one; alternating, the fastest of each.
    let steps = n(200, 20);
    let file = no_op_pipeline(work.path(), &misbehave, steps);
    let live = keep_alive_server();
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", dead.local_addr().unwrap());
    let traced = |endpoint: Option<&str>| {
        let mut cmd = Command::new(&gantry);
        cmd.current_dir(work.path()).env("GANTRY_CACHE_DIR", cache.path()).env("GANTRY_LOG", "warn");
        if let Some(endpoint) = endpoint {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        cmd.args(["run", file.to_str().unwrap(), "--jobs", "64"]);
        measured(&mut cmd).0
    };
    let (mut off, mut to_live, mut to_dead) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n(5, 1) {
        off.push(traced(None));
        to_live.push(traced(Some(&live)));
        to_dead.push(traced(Some(&dead)));
    }
    let (off, to_live, to_dead) = (common::median(off), common::median(to_live), common::median(to_dead));
    println!(
        "tracing, pipeline of {steps} no-op steps: off {off:?} (baseline), to a live OTLP receiver {to_live:?} (+{:?}), to a dead one {to_dead:?} (+{:?}; the export gives up after {:?})",
        to_live.saturating_sub(off),
        to_dead.saturating_sub(off),
        gantry_host::report::trace::DEFAULT_TIMEOUT
    );
}
