//! A step that misbehaves on request, so tests can prove the host contains it.

use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use std::collections::BTreeMap;

/// What to do, chosen by `with: { action: ... }`.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Input {
    #[serde(default = "default_action")]
    action: String,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    message: String,
    /// Where `record` reports run and rollback calls.
    #[serde(default)]
    url: Option<String>,
    /// `flaky` succeeds from this attempt on.
    #[serde(default)]
    succeed_on: u32,
    /// Makes `rollback` fail.
    #[serde(default)]
    rollback_fails: bool,
    /// Makes `rollback` panic.
    #[serde(default)]
    rollback_panics: bool,
    /// How long `rollback` works before it reports, in milliseconds.
    #[serde(default)]
    rollback_ms: u64,
    /// `rollback` fails, retryably, on attempts before this one.
    #[serde(default)]
    rollback_fails_until: u32,
    /// `guarded` fails after its change.
    #[serde(default)]
    then_fail: bool,
    /// `guarded` says, before its change, that the change cannot be undone (a rollback barrier).
    #[serde(default)]
    barrier: bool,
    /// Secret `http` sends as a bearer token.
    #[serde(default)]
    bearer: Option<String>,
    /// `[user, secret]` `http` sends as basic authentication.
    #[serde(default)]
    basic: Option<(String, String)>,
    /// How many requests `http` makes.
    #[serde(default)]
    times: Option<u32>,
    /// AWS service whose SigV4 signature `http` asks the host for, with the SDK's default secret names.
    #[serde(default)]
    aws_service: Option<String>,
    /// File `read` and `write` use.
    #[serde(default)]
    path: String,
    /// Size for `flood` (stdout) and `big_output`.
    #[serde(default)]
    bytes: u64,
    /// Makes `leak` fail with the message instead of returning it.
    #[serde(default)]
    fail: bool,
    /// Where `http` sends the error it saw, as an attacker would exfiltrate it.
    #[serde(default)]
    report: Option<String>,
    /// What `sql-script` does on database `path`, in order.
    #[serde(default)]
    sql: Vec<SqlOp>,
    /// Commands `redis-script` sends to Redis server `path`, in order, each its arguments.
    #[serde(default)]
    redis: Vec<Vec<String>>,
}

/// One call of `sql-script`: `query`, `execute`, `begin`, `commit` or `rollback`.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct SqlOp {
    op: String,
    #[serde(default)]
    statement: String,
}

/// A value as the plugin would re-emit it: bytes in hex, so a password read as bytes would show.
fn shown(v: &gantry_sdk::sql::Value) -> String {
    match v {
        gantry_sdk::sql::Value::Bytes(b) => format!("hex:{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        gantry_sdk::sql::Value::Null => "null".into(),
        other => other.as_text().unwrap_or_default(),
    }
}

/// Runs `sql-script`: every call's answer (`ok …` or `err …`), one a line; no call stops the rest.
fn sql_script(database: &str, ops: &[SqlOp]) -> Result<String, Error> {
    use gantry_sdk::sql::Connection;
    let conn = Connection::open(database).map_err(|e| Error::failed(format!("sql: {}", e.message())))?;
    let mut tx = None;
    let mut said = Vec::new();
    for op in ops {
        let s = op.statement.as_str();
        let answer = match (op.op.as_str(), &tx) {
            ("query", Some(t)) => gantry_sdk::sql::Transaction::query(t, s, &[]).map(|r| rows(&r)),
            ("query", None) => conn.query(s, &[]).map(|r| rows(&r)),
            ("execute", Some(t)) => gantry_sdk::sql::Transaction::execute(t, s, &[]).map(|n| format!("{n} changed")),
            ("execute", None) => conn.execute(s, &[]).map(|n| format!("{n} changed")),
            ("begin", _) => conn.begin().map(|t| {
                tx = Some(t);
                "begun".to_string()
            }),
            ("commit", _) => tx.take().map_or(Ok(()), |t| t.commit()).map(|()| "committed".to_string()),
            ("rollback", _) => tx.take().map_or(Ok(()), |t| t.rollback()).map(|()| "rolled back".to_string()),
            (other, _) => return Err(Error::failed(format!("unknown sql op {other}"))),
        };
        said.push(match answer {
            Ok(text) => format!("ok {text}"),
            Err(e) => format!("err {}", e.message()),
        });
    }
    Ok(said.join("\n"))
}

fn rows(r: &gantry_sdk::sql::Rows) -> String {
    r.rows.iter().map(|row| row.iter().map(shown).collect::<Vec<_>>().join(",")).collect::<Vec<_>>().join(";")
}

/// Tells the recording server what happened, so tests can count calls and order.
fn record(ctx: &Context, input: &Input, what: &str) -> Result<(), Error> {
    if let Some(url) = &input.url {
        ctx.http().post(url).body(format!("{what} {}", ctx.step_id())).send()?;
    }
    Ok(())
}

/// `path_symlink` of WASI preview 1, which std exposes only on nightly: `target` as written, at `link`
/// (an absolute path inside a preopened directory).
fn symlink(target: &str, link: &str) -> Result<(), String> {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn path_symlink(old: *const u8, old_len: usize, fd: i32, new: *const u8, new_len: usize) -> u16;
    }
    let path = std::path::Path::new(link);
    let (dir, name) = (path.parent().ok_or("no directory")?, path.file_name().ok_or("no name")?);
    let dir = std::fs::File::open(dir).map_err(|e| e.to_string())?;
    let name = name.to_str().ok_or("not UTF-8")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    // SAFETY: both buffers are valid for their lengths for the duration of the call.
    let errno = unsafe { path_symlink(target.as_ptr(), target.len(), fd, name.as_ptr(), name.len()) };
    if errno == 0 {
        Ok(())
    } else {
        Err(format!("errno {errno}"))
    }
}

fn default_action() -> String {
    "record".into()
}

struct Misbehave;

fn recurse(depth: u64) -> u64 {
    // black_box keeps the frames from being optimised into a loop.
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))) + 1
}

impl Step for Misbehave {
    fn describe() -> Describe {
        Describe::new("misbehave", env!("CARGO_PKG_VERSION")).input::<Input>()
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        match input.action.as_str() {
            // Checkpoints `message` as the state before its change, makes the change (a record),
            // then works for `ms` and fails when asked.
            "guarded" => {
                ctx.checkpoint("before", &input.message)?;
                if input.barrier {
                    ctx.barrier("the guarded change cannot be undone", &input.message)?;
                }
                record(ctx, &input, "run")?;
                if input.ms > 0 {
                    gantry_sdk::sleep_ms(input.ms);
                }
                if input.then_fail {
                    return Err(Error::failed("guarded step failed after its change"));
                }
                Ok(Outputs::new().with("attempt", ctx.attempt()))
            }
            // Changes something without a checkpoint first, then works on: what the contract forbids.
            "unguarded" => {
                record(ctx, &input, "run")?;
                gantry_sdk::sleep_ms(input.ms);
                Ok(Outputs::new())
            }
            "inconclusive" => {
                ctx.checkpoint("before", &input.message)?;
                record(ctx, &input, "run")?;
                Err(Error::inconclusive(format!("cannot tell: {}", input.message)))
            }
            "record" => {
                if input.ms > 0 {
                    gantry_sdk::sleep_ms(input.ms);
                }
                record(ctx, &input, "run")?;
                Ok(Outputs::new().with("step", ctx.step_id()).with("attempt", ctx.attempt()))
            }
            "flaky" if ctx.attempt() < input.succeed_on => {
                record(ctx, &input, "attempt")?;
                Err(Error::retryable(format!("flaky: attempt {} of {}", ctx.attempt(), input.succeed_on)))
            }
            "flaky" => {
                record(ctx, &input, "attempt")?;
                Ok(Outputs::new().with("attempt", ctx.attempt()))
            }
            "ok" => {
                let mut out = Outputs::new().with("attempt", ctx.attempt()).with("entity", ctx.entity());
                for (k, v) in input.outputs {
                    out.set(k, v);
                }
                Ok(out)
            }
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => Ok(Outputs::new().with("depth", recurse(0))),
            "panic" => panic!("deliberate panic: {}", input.message),
            "sleep" => {
                gantry_sdk::sleep_ms(input.ms);
                Ok(Outputs::new().with("slept_ms", input.ms))
            }
            "print" => {
                println!("stdout: {}", input.message);
                eprintln!("stderr: {}", input.message);
                gantry_sdk::info!("log: {}", input.message);
                Ok(Outputs::new())
            }
            "fail" => {
                record(ctx, &input, "run")?;
                Err(Error::failed(input.message))
            }
            "retryable" => Err(Error::retryable(input.message)),
            "http" => {
                let url = input.url.as_deref().unwrap_or_default();
                let mut last = None;
                for _ in 0..input.times.unwrap_or(1) {
                    let mut req = ctx.http().get(url);
                    if let Some(secret) = &input.bearer {
                        req = req.bearer_secret(secret);
                    }
                    if let Some((user, secret)) = &input.basic {
                        req = req.basic_secret(user, secret);
                    }
                    if let Some(service) = &input.aws_service {
                        let (key, secret) = (gantry_sdk::aws::access_key_secret(), gantry_sdk::aws::secret_key_secret());
                        req = req.aws_sigv4(gantry_sdk::Sigv4::aws(service, "us-east-1", &key, &secret, None));
                    }
                    match req.send() {
                        Ok(r) => last = Some(r),
                        Err(e) => {
                            if let Some(to) = &input.report {
                                ctx.http().post(to).body(e.to_string()).send()?;
                            }
                            return Err(Error::failed(format!("request failed: {e}")));
                        }
                    }
                }
                let resp = last.ok_or_else(|| Error::failed("no request made"))?;
                Ok(Outputs::new().with("status", resp.status()).with("body", resp.text()))
            }
            "read" => std::fs::read_to_string(&input.path)
                .map(|text| Outputs::new().with("content", text))
                .map_err(|e| Error::failed(format!("cannot read {}: {e}", input.path))),
            "write" => std::fs::write(&input.path, input.message.as_bytes())
                .map(|()| Outputs::new().with("written", &input.path))
                .map_err(|e| Error::failed(format!("cannot write {}: {e}", input.path))),
            "env" => Ok(Outputs::new()
                .with("vars", std::env::vars().count())
                .with("args", std::env::args().count())
                .with("home", std::env::var("HOME").unwrap_or_default())),
            // Runs `message` on database `path` and reports what came back, or the error, as `sql`.
            "sql" => {
                let answer = gantry_sdk::sql::Connection::open(&input.path).and_then(|c| c.query(&input.message, &[]));
                match answer {
                    Ok(rows) => Ok(Outputs::new().with("sql", format!("{} rows", rows.rows.len()))),
                    Err(e) => Err(Error::failed(format!("sql: {}", e.message()))),
                }
            }
            // Sends `redis` to Redis server `path` and reports every answer or error as `redis`, one a line.
            "redis-script" => {
                let server = gantry_sdk::redis::server(&input.path);
                let lines: Vec<String> = input
                    .redis
                    .iter()
                    .map(|args| match server.command(args) {
                        Ok(gantry_sdk::redis::Reply::Bulk(b)) => format!("ok Bulk {}", String::from_utf8_lossy(&b)),
                        Ok(gantry_sdk::redis::Reply::Array(items)) => {
                            let items: Vec<String> =
                                items.iter().map(|i| String::from_utf8_lossy(i.as_deref().unwrap_or_default()).into_owned()).collect();
                            format!("ok Array {}", items.join(","))
                        }
                        Ok(reply) => format!("ok {reply:?}"),
                        Err(e) => format!("error {}", e.message()),
                    })
                    .collect();
                Ok(Outputs::new().with("redis", lines.join("\n")))
            }
            // Runs `sql` on database `path` and reports every answer as `sql`, one a line.
            "sql-script" => Ok(Outputs::new().with("sql", sql_script(&input.path, &input.sql)?)),
            // Leaks `message`, or the text of the file at `path` (a secret the plugin found there).
            "leak" => {
                let mut input = input;
                if !input.path.is_empty() {
                    input.message = std::fs::read_to_string(&input.path).map_err(|e| Error::failed(e.to_string()))?;
                }
                gantry_sdk::info!("leaking {}", input.message);
                println!("stdout leak {}", input.message);
                if input.fail {
                    return Err(Error::failed(format!("failed with {}", input.message)));
                }
                Ok(Outputs::new().with("leak", &input.message))
            }
            // `bytes` of log lines through the host's `log` import, 1 KiB each.
            "log_flood" => {
                let line = "y".repeat(1024);
                for _ in 0..input.bytes / 1024 {
                    gantry_sdk::info!("{line}");
                }
                Ok(Outputs::new().with("logged", input.bytes))
            }
            // Writes `bytes` to `path` in 1 MiB chunks, as a plugin filling the disk would.
            "fill" => {
                use std::io::Write;
                let mut file = std::fs::File::create(&input.path)
                    .map_err(|e| Error::failed(format!("cannot create {}: {e}", input.path)))?;
                let chunk = vec![b'z'; 1 << 20];
                let mut written = 0u64;
                while written < input.bytes {
                    file.write_all(&chunk).map_err(|e| Error::failed(format!("write: {e}")))?;
                    written += chunk.len() as u64;
                }
                Ok(Outputs::new().with("written", written))
            }
            // Leaves a link at `path` pointing at `message`, for a process reading artifacts later to follow.
            "link" => symlink(&input.message, &input.path)
                .map(|()| Outputs::new().with("linked", &input.path))
                .map_err(|e| Error::failed(format!("cannot link {}: {e}", input.path))),
            "flood" => {
                use std::io::Write;
                let chunk = vec![b'x'; 64 << 10];
                let mut written = 0u64;
                let mut out = std::io::stdout();
                while written < input.bytes {
                    out.write_all(&chunk).map_err(|e| Error::failed(format!("stdout: {e}")))?;
                    written += chunk.len() as u64;
                }
                Ok(Outputs::new().with("written", written))
            }
            "big_output" => Ok(Outputs::new().with("big", "x".repeat(input.bytes as usize))),
            other => Err(Error::failed(format!("unknown action {other:?}"))),
        }
    }

    fn rollback(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        if input.rollback_ms > 0 {
            gantry_sdk::sleep_ms(input.rollback_ms);
        }
        if ctx.attempt() < input.rollback_fails_until {
            record(ctx, &input, "rollback-attempt")?;
            return Err(Error::retryable(format!("rollback attempt {} refused", ctx.attempt())));
        }
        match ctx.checkpointed("before") {
            Some(before) => record(ctx, &input, &format!("rollback-to-{before}"))?,
            None => record(ctx, &input, "rollback")?,
        }
        if input.rollback_panics {
            panic!("deliberate panic in rollback");
        }
        if input.rollback_fails {
            return Err(Error::failed("rollback refused on purpose"));
        }
        Ok(Outputs::new())
    }
}

gantry_sdk::export_step!(Misbehave);
