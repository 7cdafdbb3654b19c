//! `wordpress-check` end to end against a real WordPress (Debian packages,
//! MariaDB on a socket, PHP's built-in server) with a must-use plugin whose
//! webhook verifies HMAC-SHA256 signatures.

use crate::peers::WordPress;
use crate::support::*;
use std::process::Output;

const HOOK_SECRET: &str = "whsec_gallery_9c1d77e2";

fn check(wp: &WordPress, password: &str, hook_secret: &str, extra: &[&str]) -> Output {
    let wasm = plugin("plugins/wordpress-check");
    let mut cmd = command(&shared_cache());
    cmd.env("TEST_WP_PASSWORD", password).env("TEST_WP_HOOK", hook_secret);
    cmd.args(["step", "run", wasm.to_str().unwrap(), "--json", "--id", "wordpress"]);
    cmd.args(["--with", &format!("site_url={}", wp.origin), "--with", "username=admin"]);
    cmd.args(["--with", r#"webhook={"path": "/wp-json/gantry/v1/webhook"}"#, "--allow-net", &wp.origin]);
    cmd.args(["--secret", &format!("WP_APP_PASSWORD=env:TEST_WP_PASSWORD@{}", wp.origin)]);
    cmd.args(["--secret", &format!("WP_WEBHOOK_SECRET=env:TEST_WP_HOOK@{}", wp.origin)]);
    for e in extra {
        cmd.args(["--with", e]);
    }
    cmd.output().unwrap()
}

fn message(out: &Output) -> String {
    expect_code(out, 1);
    stdout_json(out)["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn a_healthy_site_answers_authenticates_accepts_the_signed_webhook_and_is_fast() {
    let wp = WordPress::start(HOOK_SECRET);
    let out = check(&wp, &wp.app_password, HOOK_SECRET, &["probes=5"]);
    expect_code(&out, 0);
    let o = &stdout_json(&out)["outputs"];
    assert_eq!((o["user"].as_str(), o["webhook_status"].as_str()), (Some("admin"), Some("200")));
    assert_eq!(o["site_name"], "The 7 Space");
    assert!(o["wp_version"].as_str().unwrap().starts_with("6."), "{o}");
    let p50: f64 = o["latency_ms_p50"].as_str().unwrap().parse().unwrap();
    let p95: f64 = o["latency_ms_p95"].as_str().unwrap().parse().unwrap();
    assert!(0.0 < p50 && p50 <= p95, "{o}");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains(&wp.app_password) && !text.contains(HOOK_SECRET), "no secret in the output");
}

#[test]
fn a_wrong_password_a_wrong_signature_and_slow_probes_fail_with_their_reason() {
    let wp = WordPress::start(HOOK_SECRET);
    let m = message(&check(&wp, "abcd efgh ijkl mnop qrst uvwx", HOOK_SECRET, &[]));
    assert!(m.contains("authenticated call as admin answered 401: rest_not_logged_in"), "{m}");
    let m = message(&check(&wp, &wp.app_password, "not-the-webhook-secret", &[]));
    assert!(m.contains("refused the signed test payload: 401") && m.contains("bad_signature"), "{m}");
    let slow = check(&wp, &wp.app_password, HOOK_SECRET, &["max_latency_ms=0.001"]);
    let m = message(&slow);
    assert!(m.contains("over max_latency_ms 0.001"), "{m}");
    assert_eq!(stdout_json(&slow)["error"]["retryable"], true);
}
