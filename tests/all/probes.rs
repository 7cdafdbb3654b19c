//! The `tls` and `dns` capabilities end to end: `tls-check` against TLS servers with certificates
//! the test makes (good, expired, for another name, self-signed, TLS 1.0 only) and PostgreSQL's
//! STARTTLS; `dns-check` against dnsmasq serving a local zone, a change that lands while the step
//! retries, and the attacks: a target or name not granted, and a name that rebinds to the
//! metadata address.

use crate::certs::Ca;
use crate::peers::{Dnsmasq, TlsServers};
use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// The JSON events a `--json` run printed.
fn events(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The outputs of step `id`, or its error.
fn result(out: &Output, id: &str) -> Result<Value, String> {
    let all = events(out);
    let of = |name: &str| all.iter().find(|e| e["event"] == name && e["step"] == id);
    match (of("step_finished"), of("step_failed")) {
        (Some(done), _) => Ok(done["outputs"].clone()),
        (None, Some(failed)) => Err(failed["error"].as_str().unwrap_or_default().to_string()),
        (None, None) => panic!("step {id} neither finished nor failed:\n{}", String::from_utf8_lossy(&out.stdout)),
    }
}

/// A self-signed leaf (no CA: its own issuer) for `name`.
fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join(format!("{name}-self.pem")), dir.join(format!("{name}-self.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={name}"), "-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

const SITE: &str = "the7space.example";

fn tls_step(id: &str, port: u16, with: &str) -> String {
    format!(
        r#"  - id: {id}
    uses: {plugin}
    tls: ["{SITE}:{port}"]
    tls_ca: ca.pem
    addresses: [127.0.0.0/8]
    continue_on_error: true
    with: {{ targets: ["{SITE}:{port}"]{with} }}
"#,
        plugin = repo().join("plugins/tls-check").display()
    )
}

#[test]
fn tls_check_passes_a_good_certificate_and_names_what_is_wrong_with_each_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let good = ca.issue(SITE, &[SITE], 200);
    let soon = ca.issue("soon", &[SITE], 20);
    let expired = ca.issue("expired", &[SITE], -1);
    let other = ca.issue("other", &["other.example"], 200);
    let (self_cert, self_key) = self_signed(dir.path(), SITE);
    let servers = TlsServers::start(&[
        ("good", &good.cert, &good.key, &[]),
        ("soon", &soon.cert, &soon.key, &[]),
        ("expired", &expired.cert, &expired.key, &[]),
        ("other", &other.cert, &other.key, &[]),
        ("self", &self_cert, &self_key, &[]),
        ("old", &good.cert, &good.key, &["tls1.0"]),
        ("tls12", &good.cert, &good.key, &["tls1.2"]),
        ("good-page", &good.cert, &good.key, &["plain"]),
        ("weak-page", &good.cert, &good.key, &["plain", "weak-headers"]),
    ]);
    let port = |name: &str| servers.ports[name];
    // The headers come over plain HTTP here: the step's HTTP trusts public roots only.
    let headers = |name: &str| format!(r#", headers: {{ url: "http://127.0.0.1:{}/" }}"#, port(name));
    let mut yaml = "name: tls\nsteps:\n".to_string();
    yaml += &tls_step("good", port("good"), &headers("good-page"));
    yaml += &tls_step("soon", port("soon"), "");
    yaml += &tls_step("expired", port("expired"), "");
    yaml += &tls_step("other", port("other"), "");
    yaml += &tls_step("self", port("self"), "");
    yaml += &tls_step("old", port("old"), "");
    yaml += &tls_step("weak", port("good"), &headers("weak-page"));
    yaml += &tls_step("strict", port("tls12"), ", min_version: \"1.3\", warn_days: 400, fail_days: 300");
    for (step, page) in [("good", "good-page"), ("weak", "weak-page")] {
        let id = format!("  - id: {step}\n");
        yaml = yaml.replacen(&id, &format!("{id}    network: [\"http://127.0.0.1:{}\"]\n", port(page)), 1);
    }
    let resolve = format!("{SITE}=127.0.0.1");
    let out = run_pipeline(dir.path(), &yaml, &[], &["--resolve", &resolve]);

    let ok = result(&out, "good").unwrap_or_else(|e| panic!("good: {e}"));
    assert_eq!(ok["protocol"], "TLSv1.3");
    assert!(ok["issuer"].as_str().unwrap().contains("gantry test CA"), "{ok}");
    let days: i64 = ok["days_left"].as_str().unwrap().parse().unwrap();
    assert!((198..=200).contains(&days), "{ok}");

    let soon = result(&out, "soon").unwrap();
    assert!(soon["days_left"].as_str().unwrap().parse::<i64>().unwrap() < 30, "{soon}");
    let journal = journal(dir.path());
    let of_soon: Vec<&Value> = journal.iter().filter(|e| e["step"] == "soon").collect();
    let warned = of_soon.iter().any(|e| {
        e["message"].as_str().is_some_and(|m| m.contains("expires in 20 days"))
    });
    assert!(warned, "a warning for the certificate about to expire: {of_soon:?}");

    let fails = |id: &str, words: &str| {
        let e = result(&out, id).expect_err(id);
        assert!(e.contains(words), "{id}: {e}");
    };
    fails("expired", "does not verify: expired");
    fails("other", "does not verify: not issued for this name");
    fails("self", "issued by no trusted CA");
    fails("old", "no TLS 1.2 or later handshake (minimum TLS 1.2)");
    fails("weak", "Strict-Transport-Security max-age=300 is below 15768000");
    fails("weak", "no Content-Security-Policy header");
    fails("strict", "below the minimum TLS 1.3");
    fails("strict", "fail under 300");

    // Every handshake is journaled with its verdict.
    let lines: Vec<&str> =
        journal.iter().filter_map(|e| e["message"].as_str()).filter(|m| m.starts_with("tls ")).collect();
    assert!(lines.iter().any(|l| l.contains("verified (granted CA)")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("not verified: invalid peer certificate")), "{lines:?}");
}

#[test]
fn a_tls_probe_to_a_target_or_address_not_granted_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let good = ca.issue(SITE, &[SITE], 200);
    let servers = TlsServers::start(&[("good", &good.cert, &good.key, &[])]);
    let port = servers.ports["good"];
    let plugin = repo().join("plugins/tls-check");
    // Granted port+1, asks for the real port; granted the port but not the loopback range.
    let yaml = format!(
        r#"name: tls-attacks
steps:
  - id: other-port
    uses: {plugin}
    tls: ["{SITE}:{other}"]
    addresses: [127.0.0.0/8]
    continue_on_error: true
    with: {{ targets: ["{SITE}:{port}"] }}
  - id: loopback
    uses: {plugin}
    tls: ["{SITE}:{port}"]
    continue_on_error: true
    with: {{ targets: ["{SITE}:{port}"] }}
"#,
        plugin = plugin.display(),
        other = port + 1
    );
    let resolve = format!("{SITE}=127.0.0.1");
    let out = run_pipeline(dir.path(), &yaml, &[], &["--resolve", &resolve]);
    let e = result(&out, "other-port").unwrap_err();
    assert!(
        e.contains(&format!("{SITE}:{port} is not granted to step `other-port`: add it to the step's `tls:`")),
        "{e}"
    );
    let e = result(&out, "loopback").unwrap_err();
    assert!(e.contains("resolved to 127.0.0.1, a loopback address: refused"), "{e}");
}

#[test]
fn postgres_starttls_is_probed_on_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let leaf = ca.issue("db", &["127.0.0.1"], 200);
    let pg = crate::peers::Postgres::start_with_tls(&leaf.cert, &leaf.key);
    let yaml = format!(
        r#"name: pg-tls
steps:
  - id: db-tls
    uses: {plugin}
    tls: ["127.0.0.1:{port}"]
    tls_ca: ca.pem
    with: {{ targets: ["127.0.0.1:{port}"], starttls: postgres }}
"#,
        plugin = repo().join("plugins/tls-check").display(),
        port = pg.port
    );
    let receiver = crate::peers::otlp();
    let out = run_pipeline(dir.path(), &yaml, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.origin)], &[]);
    expect_code(&out, 0);
    let o = result(&out, "db-tls").unwrap();
    assert_eq!(o["subject"], "CN=db");
    assert!(o["protocol"].as_str().unwrap().starts_with("TLSv1."), "{o}");
    // The handshake is a span of the step's attempt in the run's trace.
    let (spans, _) = crate::peers::otlp_received(&receiver);
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no {name}: {spans:#?}")).clone();
    let handshake = named(&format!("HANDSHAKE tls://127.0.0.1:{}", pg.port));
    assert_eq!(handshake["parent_span_id"], named("step db-tls")["span_id"]);
    assert_eq!(handshake["status"]["code"], 0, "a handshake that happened is no error");
}

#[test]
fn smtp_starttls_is_spoken_before_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let leaf = ca.issue("mail", &["127.0.0.1"], 90);
    let servers =
        TlsServers::start(&[("smtp", &leaf.cert, &leaf.key, &["smtp"]), ("plain-tls", &leaf.cert, &leaf.key, &[])]);
    let step = |id: &str, port: u16| {
        format!(
            "  - id: {id}\n    uses: {plugin}\n    tls: [\"127.0.0.1:{port}\"]\n    tls_ca: ca.pem\n    limits: {{ request_timeout: 2s }}\n    continue_on_error: true\n    with: {{ targets: [\"127.0.0.1:{port}\"], starttls: smtp }}\n",
            plugin = repo().join("plugins/tls-check").display()
        )
    };
    let yaml = format!(
        "name: smtp\nsteps:\n{}{}",
        step("submission", servers.ports["smtp"]),
        step("not-smtp", servers.ports["plain-tls"])
    );
    let out = run_pipeline(dir.path(), &yaml, &[], &[]);
    let o = result(&out, "submission").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o["subject"], "CN=mail");
    // 90 days from the second the certificate was made, counted to the nearest day.
    assert_eq!(o["days_left"].as_str(), Some("90"), "{o}");
    // A server that speaks TLS at once sends no greeting: the wait for it ends at the step's request timeout.
    let e = result(&out, "not-smtp").unwrap_err();
    assert!(e.contains("the handshake with 127.0.0.1:") && e.contains("took longer than 2s"), "{e}");
}

/// A pipeline of one dns-check step with `with`, `dns:` names and the resolver.
fn dns_pipeline(resolver: &str, names: &str, with: &str, extra: &str) -> String {
    format!(
        r#"name: dns
steps:
  - id: check
    uses: {plugin}
    dns: [{names}]
    resolver: "{resolver}"
{extra}    with: {with}
"#,
        plugin = repo().join("plugins/dns-check").display()
    )
}

fn zone() -> Dnsmasq {
    Dnsmasq::start(
        SITE,
        &[
            format!("--host-record=www.{SITE},127.0.0.1"),
            format!("--cname=shop.{SITE},www.{SITE}"),
            format!("--txt-record={SITE},v=spf1 -all"),
            format!("--mx-host={SITE},mail.{SITE},10"),
            // CAA 0 issue "letsencrypt.org", as RFC 3597 data.
            format!("--dns-rr={SITE},257,000569737375656c657473656e63727970742e6f7267"),
            format!("--host-record=meta.{SITE},169.254.169.254"),
        ],
        "",
    )
}

#[test]
fn dns_check_reads_each_record_type_from_a_real_resolver() {
    let dns = zone();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (format!(r#"{{ name: "www.{SITE}", equals: ["127.0.0.1"], attempts: 1 }}"#), "127.0.0.1"),
        (
            format!(r#"{{ name: "shop.{SITE}", type: CNAME, equals: ["www.{SITE}."], attempts: 1 }}"#),
            "www.the7space.example",
        ),
        (format!(r#"{{ name: "{SITE}", type: TXT, contains: ["v=spf1 -all"], attempts: 1 }}"#), "v=spf1 -all"),
        (
            format!(r#"{{ name: "{SITE}", type: MX, equals: ["10 mail.{SITE}"], attempts: 1 }}"#),
            "10 mail.the7space.example",
        ),
        (
            format!(r#"{{ name: "{SITE}", type: CAA, equals: ["0 issue \"letsencrypt.org\""], attempts: 1 }}"#),
            "0 issue \"letsencrypt.org\"",
        ),
        (format!(r#"{{ name: "gone.{SITE}", absent: true, attempts: 1 }}"#), ""),
    ];
    for (with, values) in cases {
        let yaml =
            dns_pipeline(&dns.resolver(), &format!("\"*.{SITE}\", {SITE}"), &with, "    addresses: [127.0.0.0/8]\n");
        let out = run_pipeline(dir.path(), &yaml, &[], &[]);
        let o = result(&out, "check").unwrap_or_else(|e| panic!("{with}: {e}"));
        assert_eq!(o["values"], values, "{with}");
        std::fs::remove_dir_all(dir.path().join(".gantry")).unwrap();
    }
    // A wrong expectation fails with what the resolver said.
    let with = format!(r#"{{ name: "www.{SITE}", equals: ["127.0.0.9"], attempts: 2, interval_ms: 100 }}"#);
    let out = run_pipeline(
        dir.path(),
        &dns_pipeline(&dns.resolver(), &format!("www.{SITE}"), &with, "    addresses: [127.0.0.0/8]\n"),
        &[],
        &[],
    );
    let e = result(&out, "check").unwrap_err();
    assert!(e.contains("after 2 lookups: expected exactly [127.0.0.9], found [127.0.0.1]"), "{e}");
}

#[test]
fn dns_check_waits_for_a_change_to_propagate() {
    let dns = zone();
    let dir = tempfile::tempdir().unwrap();
    let with = format!(r#"{{ name: "green.{SITE}", equals: ["127.0.0.2"], attempts: 40, interval_ms: 250 }}"#);
    let yaml = dns_pipeline(&dns.resolver(), &format!("green.{SITE}"), &with, "    addresses: [127.0.0.0/8]\n");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir.path()).args(["run", file.to_str().unwrap(), "--json"]);
    let child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    // The record lands once the step has looked and not found it.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !journal(dir.path()).iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("attempt 1 of 40"))) {
        assert!(std::time::Instant::now() < until, "the step never looked");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    dns.set_hosts(&format!("127.0.0.2 green.{SITE}\n"));
    let out = child.wait_with_output().unwrap();
    expect_code(&out, 0);
    let o = result(&out, "check").unwrap();
    assert_eq!(o["values"], "127.0.0.2");
    assert!(o["attempts"].as_str().unwrap().parse::<u32>().unwrap() >= 2, "{o}");
}

#[test]
fn lookups_of_names_not_granted_or_rebinding_to_internal_addresses_are_refused() {
    let dns = zone();
    let dir = tempfile::tempdir().unwrap();
    // Not granted: the name is outside `dns:`.
    let with = format!(r#"{{ name: "www.{SITE}", attempts: 1 }}"#);
    let receiver = crate::peers::otlp();
    let traced = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.origin.as_str())];
    let out = run_pipeline(dir.path(), &dns_pipeline(&dns.resolver(), "other.example", &with, ""), &traced, &[]);
    let e = result(&out, "check").unwrap_err();
    assert!(
        e.contains(&format!("looking up www.{SITE} is not granted to step `check`: add it to the step's `dns:`")),
        "{e}"
    );
    // The refused lookup is an error span of the step in the run's trace.
    let (spans, _) = crate::peers::otlp_received(&receiver);
    let lookup = spans.iter().find(|s| s["name"] == format!("LOOKUP A dns://www.{SITE}")).expect("a span per lookup");
    assert_eq!(lookup["status"]["code"], 2);
    assert!(lookup["attributes"]["gantry.request.denied"].as_str().unwrap().contains("is not granted"), "{lookup}");
    std::fs::remove_dir_all(dir.path().join(".gantry")).unwrap();
    // Granted, but it answers the metadata address: refused, and no address reaches the plugin.
    let with = format!(r#"{{ name: "meta.{SITE}", attempts: 1 }}"#);
    let out = run_pipeline(dir.path(), &dns_pipeline(&dns.resolver(), &format!("\"*.{SITE}\""), &with, ""), &[], &[]);
    let e = result(&out, "check").unwrap_err();
    assert!(
        e.contains(&format!("meta.{SITE} resolved to 169.254.169.254, a link-local (cloud metadata) address: refused")),
        "{e}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("\"values\""), "no answer was handed out: {text}");
    // A loopback answer without `addresses:` is refused the same way.
    std::fs::remove_dir_all(dir.path().join(".gantry")).unwrap();
    let with = format!(r#"{{ name: "www.{SITE}", attempts: 1 }}"#);
    let out = run_pipeline(dir.path(), &dns_pipeline(&dns.resolver(), &format!("www.{SITE}"), &with, ""), &[], &[]);
    assert!(result(&out, "check").unwrap_err().contains("a loopback address: refused"));
}

#[test]
fn probe_grants_are_validated_with_their_lines_and_shown_in_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "").unwrap();
    let plugin = repo().join("plugins/dns-check");
    let bad = format!(
        "name: p\nsteps:\n  - id: a\n    uses: {}\n    tls: [\"https://x.example\"]\n    dns: [\"a.*.example\"]\n    resolver: \"nowhere\"\n    tls_ca: missing.pem\n",
        plugin.display()
    );
    std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
    let out = gantry_in(dir.path(), &["validate", "bad.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.yaml:5:") && err.contains("steps[0].tls") && err.contains("without a scheme"), "{err}");
    assert!(err.contains("bad.yaml:6:") && err.contains("whole left-most label"), "{err}");
    assert!(err.contains("bad.yaml:7:") && err.contains("a resolver is an IP address"), "{err}");
    assert!(err.contains("bad.yaml:8:") && err.contains("missing.pem is not a file"), "{err}");

    let good = format!(
        "name: p\nsteps:\n  - id: a\n    uses: {}\n    dns: [\"*.the7space.example\"]\n    resolver: \"127.0.0.1:5353\"\n    with: {{ name: www.the7space.example }}\n",
        plugin.display()
    );
    std::fs::write(dir.path().join("good.yaml"), good).unwrap();
    let out = gantry_in(dir.path(), &["plan", "good.yaml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("  dns       *.the7space.example\n  dns       asking 127.0.0.1:5353\n"), "{text}");
}
