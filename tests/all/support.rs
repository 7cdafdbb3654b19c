//! Test helpers: the gantry binary, plugin builds, and local peers that stop on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `gantry` binary of this build (same profile as the test binary).
pub fn gantry_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("gantry");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (scripts/test does)",
        bin.display()
    );
    bin
}

/// A shared compile cache for tests that do not test the cache itself.
pub fn shared_cache() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path().to_path_buf()
}

/// A `gantry` command using `cache` and the shared plugin target dir.
pub fn command(cache: &Path) -> Command {
    let mut cmd = Command::new(gantry_bin());
    cmd.env("GANTRY_CACHE_DIR", cache).env("CARGO_TARGET_DIR", plugin_target_dir()).env("GANTRY_LOG", "info");
    // The AWS SDK's chain would ask the instance metadata address, which nothing here may reach.
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// `gantry <args>` with a given cache dir; returns the finished process.
pub fn gantry_with_cache(cache: &Path, args: &[&str]) -> Output {
    command(cache).args(args).output().expect("gantry runs")
}

/// `gantry <args>` run in `dir` (where `.gantry/runs` is written).
pub fn gantry_in(dir: &Path, args: &[&str]) -> Output {
    gantry_in_with_cache(dir, &shared_cache(), args)
}

/// `gantry <args>` run in `dir` with a given cache dir.
pub fn gantry_in_with_cache(dir: &Path, cache: &Path, args: &[&str]) -> Output {
    command(cache).args(args).current_dir(dir).output().expect("gantry runs")
}

/// `gantry <args>` with the shared cache.
pub fn gantry(args: &[&str]) -> Output {
    gantry_with_cache(&shared_cache(), args)
}

/// Parses the JSON document gantry printed on stdout.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    })
}

/// One target dir for all plugin builds, so std is built for wasm only once: `target/plugins`, or
/// `GANTRY_PLUGIN_TARGET_DIR` (the test command keeps it under the user's cache directory).
pub fn plugin_target_dir() -> PathBuf {
    std::env::var_os(PLUGIN_TARGET_ENV).map(PathBuf::from).unwrap_or_else(|| repo().join("target").join("plugins"))
}

/// Where the test command puts plugin builds when not in `target/plugins`.
pub const PLUGIN_TARGET_ENV: &str = "GANTRY_PLUGIN_TARGET_DIR";

/// Builds a plugin crate (relative to the repo) once per test run; returns the component path.
pub fn plugin(crate_dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(crate_dir) {
        return path.clone();
    }
    let dir = repo().join(crate_dir);
    let target = plugin_target_dir();
    let out = gantry(&["plugin", "build", dir.to_str().unwrap(), "--target-dir", target.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "building {crate_dir} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let path = PathBuf::from(stdout_json(&out)["path"].as_str().unwrap());
    built.insert(crate_dir.to_string(), path.clone());
    path
}

/// A canned HTTP answer.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// Answer with the request's headers as the body instead.
    pub echo_headers: bool,
    /// `Location` header, for redirects.
    pub location: Option<String>,
    /// Answer with the request's headers as this function encodes them (a JSON encoder's style, hex).
    pub echo_encoded: Option<fn(&str) -> String>,
}

impl Reply {
    /// `status` with a text body.
    pub fn text(status: u16, body: &str) -> Self {
        Self { status, body: body.into(), ..Self::default() }
    }
}

/// A one-purpose HTTP server on 127.0.0.1 that counts requests; stops on drop.
pub struct CountingServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    headers: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CountingServer {
    /// Answers every request with `reply`.
    pub fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (h, s, r, hd) = (hits.clone(), stop.clone(), requests.clone(), headers.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let _ = answer(stream, &reply, |line, head| {
                    r.lock().unwrap().push(line);
                    hd.lock().unwrap().push(head);
                });
            }
        });
        Self { addr, hits, requests, headers, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The header lines of each request so far, in arrival order.
    pub fn headers(&self) -> Vec<String> {
        self.headers.lock().unwrap().clone()
    }

    /// Each request so far as `METHOD body`, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request as read off a socket.
pub struct RawRequest {
    /// `METHOD target HTTP/1.1`, with its line end.
    pub line: String,
    /// Header lines, each with its line end.
    pub headers: Vec<String>,
    /// The body, `Content-Length` bytes.
    pub body: Vec<u8>,
}

/// Reads one request (head, then a `Content-Length` body); `None` when the peer closed first.
pub fn read_request(stream: &TcpStream) -> std::io::Result<Option<RawRequest>> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let (mut headers, mut content_length) = (Vec::new(), 0usize);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        headers.push(header);
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    Ok(Some(RawRequest { line, headers, body }))
}

/// Answers one request, recording it first as `METHOD body` with its header lines: a client that
/// has its answer finds its request recorded. A connection closed before its request line (a
/// client killed between connecting and sending) made no request.
fn answer(stream: TcpStream, reply: &Reply, record: impl FnOnce(String, String)) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let Some(RawRequest { line, headers, body }) = read_request(&stream)? else {
        return Ok(());
    };
    let method = line.split(' ').next().unwrap_or_default().to_string();
    let headers = headers.concat();
    record(format!("{method} {}", String::from_utf8_lossy(&body)).trim_end().to_string(), headers.clone());
    let mut stream = stream;
    let encoded = reply.echo_encoded.map(|encode| encode(&headers));
    let answer = match (&encoded, reply.echo_headers) {
        (Some(encoded), _) => encoded,
        (None, true) => &headers,
        (None, false) => &reply.body,
    };
    let location = reply.location.as_ref().map(|l| format!("location: {l}\r\n")).unwrap_or_default();
    write!(
        stream,
        "HTTP/1.1 {} X\r\ncontent-type: text/plain\r\n{location}content-length: {}\r\nconnection: close\r\n\r\n{}",
        reply.status,
        answer.len(),
        answer
    )?;
    stream.flush()
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread sees the flag and ends; this
        // wake-up connection is not counted because the flag is checked first.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asserts the exit code, printing stdout and stderr when it differs.
pub fn expect_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every error path a test reaches is checked: a context is added once.
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if let Some(repeated) = repeated_fragment(line) {
            panic!("a message says `{repeated}` twice:\n{line}");
        }
    }
}

/// A run of whole words, [`FRAGMENT`] characters or more, that an `error:` or `warning:` line
/// says twice. Whole words, because two different digests or ids may share a prefix by chance.
pub fn repeated_fragment(line: &str) -> Option<String> {
    let message = line.strip_prefix("error: ").or_else(|| line.strip_prefix("warning: "))?;
    let words: Vec<&str> = message.split_whitespace().collect();
    for i in 0..words.len() {
        for j in i + 1..words.len() {
            let same = words[i..j].iter().zip(&words[j..]).take_while(|(a, b)| a == b).count();
            let run = words[i..i + same].join(" ");
            if run.len() >= FRAGMENT {
                return Some(run);
            }
        }
    }
    None
}

/// How long a run of words must be for saying it twice to count as repetition.
const FRAGMENT: usize = 10;

#[test]
fn a_repeated_context_is_found_and_a_clean_message_passes() {
    assert_eq!(
        repeated_fragment("error: closing the run: closing the run: disk full").as_deref(),
        Some("closing the run:")
    );
    // Two digests with a common prefix are two different words.
    let pin = "error: has sha256:f43a66 but the pin says sha256:f41f3f";
    assert_eq!(repeated_fragment(pin), None);
    assert_eq!(repeated_fragment("error: step `a`: cargo build of plugins/a failed"), None);
    assert_eq!(repeated_fragment("  not an error line, repeated repeated repeated"), None);
}

/// Writes `yaml` as `dir/pipeline.yaml` and runs `gantry run <it> --json <extra..>` in `dir` with `env`.
pub fn run_pipeline(dir: &Path, yaml: &str, env: &[(&str, &str)], extra: &[&str]) -> Output {
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir).envs(env.iter().copied()).args(["run", file.to_str().unwrap(), "--json"]).args(extra);
    cmd.output().unwrap()
}

/// The id of the one run recorded under `dir/.gantry/runs`.
pub fn run_id(dir: &Path) -> String {
    let entry = std::fs::read_dir(dir.join(".gantry/runs")).unwrap().next().expect("a run directory").unwrap();
    entry.file_name().to_string_lossy().into_owned()
}

/// The events of the one run under `dir/.gantry/runs`, as JSON; empty until the run has a journal.
pub fn journal(dir: &Path) -> Vec<serde_json::Value> {
    let Some(Ok(run)) = std::fs::read_dir(dir.join(".gantry/runs")).ok().and_then(|mut d| d.next()) else {
        return Vec::new();
    };
    journal_of(dir, &run.file_name().to_string_lossy())
}

/// The events of run `id` under `dir/.gantry/runs`, as JSON; empty until it has a journal.
pub fn journal_of(dir: &Path, id: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(".gantry/runs").join(id).join("journal.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Spawns `cmd` and polls `reached` until it holds (5 minutes at most), for a test that then signals or kills
/// the child at that point of its run; a child that never gets there is killed and the test fails.
// Five minutes, not one: the run may first build its plugins from source while other tests hold the shared
// target dir's cargo lock, and on a two-core runner that wait alone has passed a minute.
// The child is handed to the caller, who signals and waits on it.
#[allow(clippy::zombie_processes)]
pub fn spawn_until(cmd: &mut Command, what: &str, reached: impl Fn() -> bool) -> std::process::Child {
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !reached() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before it reached {what}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the run never reached {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A pipeline step that fails with `message` once `needs` are done, for rollback tests.
pub fn failing_step(id: &str, needs: &str, message: &str) -> String {
    format!(
        "  - id: {id}\n    uses: {}\n    needs: [{needs}]\n    with: {{ action: fail, message: \"{message}\" }}\n",
        repo().join("tests/plugins/misbehave").display()
    )
}

/// Markdown as GitHub renders it: GitHub's own cmark-gfm (PyPI `cmarkgfm`), raw HTML let through
/// so that anything the summary failed to escape would show as a tag.
pub fn github_html(markdown: &str) -> String {
    let script = "import sys, cmarkgfm\nfrom cmarkgfm.cmark import Options\nsys.stdout.write(cmarkgfm.github_flavored_markdown_to_html(sys.stdin.read(), options=Options.CMARK_OPT_UNSAFE))";
    let mut child = std::process::Command::new(crate::peers::venv("python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(markdown.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}
