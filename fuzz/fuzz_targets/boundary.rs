//! The WIT boundary as the host sees it: arbitrary `log`, `checkpoint` and `http` records into the
//! host import handlers of one step call, with real requests to a local server that echoes each
//! request back (plainly, in base64 or JSON-escaped, by path). Whatever the plugin sends, no secret
//! value, and no part of a URL that came from a secret, reaches it, its log lines or the request
//! records.
#![no_main]

use base64::Engine as _;
use gantry_host::capability::{Grant, NetworkPolicy, Secret, Secrets};
use gantry_host::sandbox::bindings::gantry::step::types as wit;
use gantry_host::sandbox::imports::Imports;
use gantry_host::sandbox::{HttpLimits, LineLog, RequestLog, Runtime, StepCall};
use libfuzzer_sys::{arbitrary, fuzz_target};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const TOKEN: &str = "fuzz-T0ken/with+odd&chars";
const HOOK_PATH: &str = "hook-b3cr3tpath";

#[derive(arbitrary::Arbitrary, Debug)]
enum Target {
    /// Under the granted prefix; the path picks how the server echoes.
    Granted(String),
    /// The webhook URL that is itself a secret, with a suffix.
    Hook(String),
    /// Anything.
    Raw(String),
}

#[derive(arbitrary::Arbitrary, Debug)]
enum Use {
    Bearer(String),
    Header(String, String, String),
    Basic(String, String),
    Hmac(String, String, String),
    Sigv4(String, String, String, String, Option<String>),
}

#[derive(arbitrary::Arbitrary, Debug)]
enum Call {
    Log(u8, String),
    Checkpoint(String, String),
    Http {
        method: u8,
        target: Target,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        uses: Vec<Use>,
        timeout_ms: Option<u16>,
    },
}

struct World {
    runtime: Runtime,
    tokio: tokio::runtime::Runtime,
    /// The granted origin and prefix, `http://127.0.0.1:<port>/api`.
    granted: String,
    secrets: Secrets,
}

/// One echo server and runtime for the whole fuzzing process.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let granted = format!("http://{}/api", listener.local_addr().expect("bound"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = echo(stream);
            }
        });
        let runtime = Runtime::builder().no_cache().build().expect("a runtime");
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        // Built once: a redactor is a compiled pattern.
        let mut secrets = Secrets::default();
        secrets.insert("TOKEN", Secret::new(TOKEN, vec![Grant::parse(&granted).expect("a grant")]));
        let hook = format!("{granted}/{HOOK_PATH}");
        secrets.insert("HOOK", Secret::new(hook, vec![Grant::parse(&granted).expect("a grant")]));
        World { runtime, tokio, granted, secrets }
    })
}

/// Answers one request with the request itself, encoded as its path asks.
fn echo(stream: std::net::TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (mut head, mut line, mut length) = (String::new(), String::new(), 0usize);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let request = [head.as_bytes(), &body].concat();
    let first = head.lines().next().unwrap_or_default().to_string();
    let answer = if first.contains("b64") {
        base64::engine::general_purpose::STANDARD.encode(&request).into_bytes()
    } else if first.contains("json") {
        serde_json::to_string(&String::from_utf8_lossy(&request)).expect("a string").replace('/', "\\/").into_bytes()
    } else {
        request
    };
    // One write with Nagle off: a head and body written apart wait out the peer's delayed ACK.
    let mut stream = stream;
    stream.set_nodelay(true)?;
    let head =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\nx-echo: {first}\r\n\r\n", answer.len());
    stream.write_all(&[head.as_bytes(), &answer].concat())
}

fn name(text: &str) -> String {
    match text.len() % 3 {
        0 => "TOKEN".into(),
        1 => "HOOK".into(),
        _ => text.to_string(),
    }
}

fn secret_use(u: &Use) -> wit::SecretUse {
    match u {
        Use::Bearer(n) => wit::SecretUse::Bearer(name(n)),
        Use::Header(h, n, p) => {
            wit::SecretUse::Header(wit::HeaderSecret { header: h.clone(), secret: name(n), prefix: p.clone() })
        }
        Use::Basic(user, n) => {
            wit::SecretUse::Basic(wit::BasicSecret { username: username(user), password_secret: name(n) })
        }
        Use::Hmac(h, n, p) => {
            wit::SecretUse::HmacSha256(wit::HmacSecret { header: h.clone(), secret: name(n), prefix: p.clone() })
        }
        Use::Sigv4(service, region, key, secret, token) => wit::SecretUse::AwsSigv4(wit::Sigv4Secret {
            service: service.clone(),
            region: region.clone(),
            access_key_id_secret: name(key),
            secret_access_key_secret: name(secret),
            session_token_secret: token.as_deref().map(name),
        }),
    }
}

/// A user name of each length modulo 3 (what decides how the secret aligns in the token's base64),
/// plain or with characters that need escaping. With arbitrary names nearly every input compiled a
/// pattern for its derived token (milliseconds, over half of each input's time); the redaction
/// target covers secrets inside arbitrary text.
fn username(text: &str) -> String {
    ["", "a", "ad", "adm", "a d/m\\i\"n", "ü:sér", "admin", "root@x.example"][text.len() % 8].to_string()
}

/// Whether `text` holds the token or the webhook's path. (Fragments the plugin may have guessed, such
/// as the last segment alone, are its own text: only whole values and the URL's path are secret.)
fn leaks(text: &str) -> bool {
    text.contains(TOKEN) || text.contains(&format!("/api/{HOOK_PATH}"))
}

fuzz_target!(|calls: Vec<Call>| {
    let world = world();
    let granted = &world.granted;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut call = StepCall::default();
    call.context.step_id = "fuzz".into();
    call.grants.network = NetworkPolicy::parse(&[granted])
        .expect("a policy")
        .with_addresses(vec!["127.0.0.0/8".parse().expect("a range")]);
    call.grants.secrets = world.secrets.clone();
    call.http = HttpLimits { request_timeout: Duration::from_secs(2), max_requests: 8, ..HttpLimits::default() };
    let (logs, records) = (seen.clone(), seen.clone());
    call.logs = Some(LineLog(Arc::new(move |_, line| logs.lock().unwrap().push(line))));
    call.requests = Some(RequestLog(Arc::new(move |r| records.lock().unwrap().push(format!("{r:?}")))));
    let mut imports = Imports::new(&world.runtime, &call).expect("the host side of a call");
    world.tokio.block_on(async {
        for c in calls.into_iter().take(6) {
            match c {
                Call::Log(level, message) => {
                    let level =
                        [wit::Level::Trace, wit::Level::Debug, wit::Level::Info, wit::Level::Warn, wit::Level::Error]
                            [usize::from(level) % 5];
                    imports.log(level, message).await;
                }
                Call::Checkpoint(key, value) => {
                    if let Err(e) = imports.checkpoint(key, value).await {
                        assert!(!leaks(&e), "{e}");
                    }
                }
                Call::Http { method, target, headers, body, uses, timeout_ms } => {
                    let url = match target {
                        Target::Granted(path) => format!("{granted}/{path}"),
                        Target::Hook(suffix) => format!("{{{{secret:HOOK}}}}{suffix}"),
                        Target::Raw(url) => url,
                    };
                    let method =
                        ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"][usize::from(method) % 8];
                    let req = wit::Request {
                        method: method.into(),
                        url,
                        headers,
                        body,
                        secrets: uses.iter().map(secret_use).collect(),
                        timeout_ms: timeout_ms.map(u32::from),
                    };
                    match imports.http(req).await {
                        Ok(response) => {
                            let shown = format!("{:?} {}", response.headers, String::from_utf8_lossy(&response.body));
                            assert!(!leaks(&shown), "a secret reached the plugin: {shown}");
                            let decoded =
                                base64::engine::general_purpose::STANDARD.decode(&response.body).unwrap_or_default();
                            assert!(
                                !leaks(&String::from_utf8_lossy(&decoded)),
                                "a secret reached the plugin in base64"
                            );
                        }
                        Err(e) => assert!(!leaks(&format!("{e:?}")), "a secret in an error: {e:?}"),
                    }
                }
            }
        }
    });
    for line in seen.lock().unwrap().iter() {
        assert!(!leaks(line), "a secret in a log line or request record: {line}");
    }
});
