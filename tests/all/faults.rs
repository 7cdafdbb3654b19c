//! A fault-injecting HTTP proxy on 127.0.0.1 in front of the real peers (moto,
//! the Notion stand-in, WordPress): connection resets, slow answers, 429
//! bursts, 5xx, truncated bodies and garbled answers at chosen requests. Each
//! plugin must succeed after bounded retries or fail cleanly, and what it
//! changed must end exactly as intended or exactly as before, read back from
//! the peer, not through the plugin.

use crate::peers::{notion, Aws, WordPress};
use crate::support::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Reads the request and closes the connection without an answer.
    Reset,
    /// Forwards it, answering after this long.
    Slow(Duration),
    /// Answers this status itself (`Retry-After: 1` on 429), without forwarding.
    Status(u16),
    /// Forwards it and passes on the head and half the body, then closes.
    Truncate,
    /// Answers `200` with a body that is neither JSON nor XML, without forwarding.
    Garbage,
    /// Forwards it; an answer of over 64 KiB stops after the head and half the body and the
    /// connection stays open for 30 s (recorded as injected only then); a smaller one passes whole.
    Stall,
}

/// The proxy: requests are numbered from 1 in arrival order; `faults` says which go wrong.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    seen: Arc<AtomicUsize>,
    injected: Arc<Mutex<Vec<(usize, Fault)>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, faults: BTreeMap<usize, Fault>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let (seen, injected, stop) = (Arc::new(AtomicUsize::new(0)), Arc::default(), Arc::new(AtomicBool::new(false)));
        let faults = Arc::new(faults);
        listener.set_nonblocking(true).unwrap();
        let (s, i, st) = (seen.clone(), Arc::clone(&injected), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (s, i, f, up) = (s.clone(), Arc::clone(&i), faults.clone(), upstream.clone());
                        std::thread::spawn(move || {
                            let _ = serve(client, &up, &s, &f, &i);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { origin, seen, injected, stop }
    }

    /// Requests seen so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }

    /// The faults injected, by request number.
    pub fn injected(&self) -> Vec<(usize, Fault)> {
        self.injected.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request per connection: read it, apply its fault or forward it, answer with `Connection: close`.
fn serve(
    client: TcpStream,
    upstream: &str,
    seen: &AtomicUsize,
    faults: &BTreeMap<usize, Fault>,
    injected: &Mutex<Vec<(usize, Fault)>>,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some(request) = read_request(&client)? else { return Ok(()) };
    // Each connection carries one request: the proxy's own `Connection: close` replaces the client's.
    let mut head = request.line.into_bytes();
    for header in request.headers.iter().filter(|h| !h.to_ascii_lowercase().starts_with("connection:")) {
        head.extend_from_slice(header.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let body = request.body;
    let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
    let fault = faults.get(&n).copied();
    if let Some(f) = fault.filter(|f| *f != Fault::Stall) {
        injected.lock().unwrap().push((n, f));
    }
    let mut client = client;
    let reply = |client: &mut TcpStream, status: u16, extra: &str, body: &str| {
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Some(Fault::Reset) => return Ok(()),
        Some(Fault::Status(429)) => return reply(&mut client, 429, "Retry-After: 1\r\n", r#"{"message":"slow down"}"#),
        Some(Fault::Status(code)) => return reply(&mut client, code, "", r#"{"message":"injected"}"#),
        Some(Fault::Garbage) => return reply(&mut client, 200, "", "<html>502 Bad Gateway</ht"),
        Some(Fault::Slow(d)) => std::thread::sleep(d),
        Some(Fault::Truncate | Fault::Stall) | None => {}
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |p| p + 4);
    let (answer_head, answer_body) = answer.split_at(split);
    // The answer's own `Connection` header goes: each connection carries one request.
    let text = String::from_utf8_lossy(answer_head);
    let mut lines: Vec<&str> =
        text.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    lines.retain(|l| !l.is_empty());
    let answer_head = format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n"));
    client.write_all(answer_head.as_bytes())?;
    let stall = fault == Some(Fault::Stall) && answer_body.len() > 64 << 10;
    let body =
        if fault == Some(Fault::Truncate) || stall { &answer_body[..answer_body.len() / 2] } else { answer_body };
    client.write_all(body)?;
    if stall {
        client.flush()?;
        injected.lock().unwrap().push((n, Fault::Stall));
        std::thread::sleep(Duration::from_secs(30));
    }
    Ok(())
}

/// Every fault kind, at the given request numbers.
fn every_kind(at: [usize; 6]) -> BTreeMap<usize, Fault> {
    let kinds = [
        Fault::Reset,
        Fault::Slow(Duration::from_millis(1500)),
        Fault::Status(429),
        Fault::Status(503),
        Fault::Truncate,
        Fault::Garbage,
    ];
    at.into_iter().zip(kinds).collect()
}

#[test]
fn the_canary_goes_through_every_fault_kind_in_front_of_moto_and_a_long_outage_rolls_back() {
    // The ELBv2 calls of a 4-stage canary with target health: the pre-flight's three reads (the
    // listener, both target groups), describe, then per stage a modify and a health read, then a
    // final describe (13); faults land on modifies and reads alike.
    let aws = Aws::start();
    let proxy = FaultProxy::start(&aws.moto.origin, every_kind([5, 6, 8, 11, 13, 15]));
    let dir = tempfile::tempdir().unwrap();
    let out = canary_through(&aws, &proxy, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(proxy.injected().len(), 6, "every fault was injected: {:?}", proxy.injected());
    assert_eq!(aws.weights(), vec![(aws.get("blue"), 0), (aws.get("green"), 100)], "read back with boto3");

    // An outage longer than the plugin's retries (4 tries) and the step's (2 attempts): from the
    // second stage's modify on, 503 for 10 requests. The step fails cleanly and the rollback, once
    // the outage is over, restores the original weights.
    let aws = Aws::start();
    let outage: BTreeMap<usize, Fault> = (7..17).map(|n| (n, Fault::Status(503))).collect();
    let proxy = FaultProxy::start(&aws.moto.origin, outage);
    let dir = tempfile::tempdir().unwrap();
    let out = canary_through(&aws, &proxy, dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let j = journal(dir.path());
    let failed = j.iter().find(|e| e["event"] == "step_failed").unwrap();
    assert!(failed["error"].as_str().unwrap().contains("answered 503"), "{failed}");
    assert!(j.iter().any(|e| e["event"] == "rolled_back" && e["step"] == "shift"));
    assert_eq!(aws.weights(), vec![(aws.get("blue"), 100), (aws.get("green"), 0)], "exactly the original");
}

/// Runs the canary pipeline (target health on, no pause) with its ELBv2 endpoint behind `proxy`, and
/// two attempts per step.
fn canary_through(aws: &Aws, proxy: &FaultProxy, dir: &std::path::Path) -> std::process::Output {
    let yaml = crate::alb::canary_yaml_at(aws, &proxy.origin, "pause_ms: 0", &[])
        .replace("timeout: 2m", "timeout: 2m\n    retry: { attempts: 2, backoff: 100ms }");
    let (key, secret) = (aws.get("access_key"), aws.get("secret_key"));
    run_pipeline(dir, &yaml, &[("TEST_AWS_KEY", &key), ("TEST_AWS_SECRET", &secret)], &[])
}

#[test]
fn the_notion_sync_goes_through_every_fault_kind_and_writes_each_segment_once() {
    use crate::notion::{crm_pipeline, DS, TOKEN};
    let clean = notion(TOKEN, DS, &[]);
    let peer = notion(TOKEN, DS, &[]);
    // Requests 1-2 query the 191 contacts; the rest are PATCHes.
    let proxy = FaultProxy::start(&peer.origin, every_kind([2, 5, 20, 40, 60, 80]));
    let sync = |origin: &str, dir: &std::path::Path| {
        run_pipeline(dir, &crm_pipeline(origin), &[("TEST_NOTION_TOKEN", TOKEN)], &[])
    };
    let dir = tempfile::tempdir().unwrap();
    let out = sync(&proxy.origin, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(proxy.injected().len(), 6, "{:?}", proxy.injected());
    // The same end state as a sync without faults, read from the stand-ins themselves.
    let dir = tempfile::tempdir().unwrap();
    expect_code(&sync(&clean.origin, dir.path()), 0);
    let state = |p: &crate::peers::Peer| crate::peers::get(&p.origin, "/_state").unwrap().1;
    let pages = |p: &crate::peers::Peer| serde_json::from_str::<serde_json::Value>(&state(p)).unwrap()["pages"].clone();
    assert_eq!(pages(&peer), pages(&clean));
}

#[test]
fn the_wordpress_check_goes_through_every_fault_kind_with_step_retries() {
    let wp = WordPress::start("whsec_faults");
    // wordpress-check is read-only: a fault fails the attempt, and the step's retry policy carries it.
    let proxy = FaultProxy::start(&wp.origin, every_kind([1, 3, 5, 7, 9, 11]));
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"name: site-faults
steps:
  - id: site
    uses: {plugin}
    network: ["{origin}", "{site}"]
    timeout: 2m
    retry: {{ attempts: 8, backoff: 100ms }}
    with: {{ site_url: "{origin}", probes: 2 }}
"#,
        plugin = repo().join("plugins/wordpress-check").display(),
        origin = proxy.origin,
        // WordPress redirects its front page to its canonical origin, as it would behind any proxy.
        site = wp.origin,
    );
    let out = run_pipeline(dir.path(), &yaml, &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let j = journal(dir.path());
    let retries = j.iter().filter(|e| e["event"] == "step_retrying").count();
    assert!((1..8).contains(&retries), "bounded retries: {retries}");
    assert!(proxy.injected().len() >= 5, "{:?} of {} requests", proxy.injected(), proxy.seen());
}
