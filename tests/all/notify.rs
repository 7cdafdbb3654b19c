//! `notify` end to end: a failing pipeline triggers PagerDuty and posts to a
//! Slack-compatible webhook whose URL, like the routing key, is a secret the
//! host fills in; a later successful run resolves the incident.

use crate::support::*;
use serde_json::Value;

const ROUTING_KEY: &str = "R0UTINGKEY0123456789abcdef";

/// How the deploy goes.
#[derive(Clone, Copy, PartialEq)]
enum Deploy {
    Succeeds,
    Fails,
    /// Fails, and undoing `audit` fails too.
    FailsAndRollbackFails,
}

fn pipeline(
    dir: &std::path::Path,
    slack: &CountingServer,
    pd: &CountingServer,
    deploy: Deploy,
) -> std::process::Output {
    let misbehave = repo().join("tests/plugins/misbehave");
    let audit = format!("{{ action: ok, rollback_fails: {} }}", deploy == Deploy::FailsAndRollbackFails);
    let deploy = match deploy {
        Deploy::Succeeds => "{ action: ok }",
        _ => "{ action: fail, message: \"deploy failed: 502 from upstream\" }",
    };
    let yaml = format!(
        r#"name: gallery-release
secrets:
  SLACK_WEBHOOK: {{ from: "env:TEST_SLACK_WEBHOOK", bind: ["{slack}"] }}
  PD_KEY: {{ from: "env:TEST_PD_KEY", bind: ["{pd}"] }}
steps:
  - id: audit
    uses: {misbehave}
    with: {audit}
  - id: deploy
    uses: {misbehave}
    needs: [audit]
    with: {deploy}
  - id: notify
    uses: {notify}
    needs: [deploy]
    if: always()
    network: ["{slack}", "{pd}"]
    secrets: [SLACK_WEBHOOK, PD_KEY]
    with:
      webhook_secret: SLACK_WEBHOOK
      pagerduty: {{ routing_key_secret: PD_KEY, events_url: "{pd}/v2/enqueue" }}
      report_url: https://ci.example/runs/42
"#,
        slack = slack.origin(),
        pd = pd.origin(),
        misbehave = misbehave.display(),
        notify = repo().join("plugins/notify").display(),
    );
    let hook = format!("{}/services/T0GALLERY/B0RELEASE/xoxHOOKsecret", slack.origin());
    run_pipeline(dir, &yaml, &[("TEST_SLACK_WEBHOOK", &hook), ("TEST_PD_KEY", ROUTING_KEY)], &[])
}

fn body(server: &CountingServer, i: usize) -> Value {
    serde_json::from_str(server.requests()[i].strip_prefix("POST ").unwrap()).unwrap()
}

#[test]
fn a_failed_run_triggers_pagerduty_and_posts_to_the_webhook_and_a_success_resolves() {
    let slack = CountingServer::start(Reply::text(200, "ok"));
    let pd = CountingServer::start(Reply::text(202, r#"{"status":"success","message":"Event processed"}"#));
    let dir = tempfile::tempdir().unwrap();
    let out = pipeline(dir.path(), &slack, &pd, Deploy::Fails);
    expect_code(&out, 1);
    // The notifier runs once the rollback is done, so "Rolled back" is what was undone.
    let events: Vec<String> = journal(dir.path()).iter().map(|e| format!("{} {}", e["event"], e["step"])).collect();
    let undone = events.iter().position(|e| e == "\"rolled_back\" \"audit\"").expect("audit rolled back");
    let notified = events.iter().position(|e| e == "\"step_started\" \"notify\"").expect("notify ran");
    assert!(undone < notified, "{events:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for secret in [ROUTING_KEY, "xoxHOOKsecret", "T0GALLERY"] {
        assert!(!stdout.contains(secret) && !String::from_utf8_lossy(&out.stderr).contains(secret), "{secret} leaked");
    }

    let message = body(&slack, 0);
    assert_eq!(message["text"], "gallery-release failed in development for default at step `deploy`");
    let blocks = message["blocks"].to_string();
    assert!(
        blocks.contains("deploy failed: 502 from upstream") && blocks.contains("*Rolled back*\\naudit"),
        "{blocks}"
    );
    assert!(blocks.contains("<https://ci.example/runs/42|Run report>"), "{blocks}");

    let trigger = body(&pd, 0);
    assert_eq!(trigger["routing_key"], ROUTING_KEY, "the host filled in the routing key");
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], "gantry/gallery-release/development/default");
    assert_eq!(trigger["payload"]["component"], "deploy");
    assert_eq!(trigger["payload"]["severity"], "error");
    assert_eq!(trigger["links"][0]["href"], "https://ci.example/runs/42");
    let events: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let hook = events.iter().find(|e| e["event"] == "request" && e["origin"] == slack.origin()).unwrap();
    assert_eq!(hook["path"], "/***", "the webhook's path is part of the secret");

    let dir = tempfile::tempdir().unwrap();
    let ok = pipeline(dir.path(), &slack, &pd, Deploy::Succeeds);
    expect_code(&ok, 0);
    let resolve = body(&pd, 1);
    assert_eq!(
        (resolve["event_action"].as_str(), resolve["dedup_key"].clone()),
        (Some("resolve"), trigger["dedup_key"].clone())
    );
    assert_eq!(body(&slack, 1)["text"], "gallery-release succeeded in development for default");
}

#[test]
fn a_failed_rollback_is_reported_as_critical_and_needing_a_person() {
    let slack = CountingServer::start(Reply::text(200, "ok"));
    let pd = CountingServer::start(Reply::text(202, r#"{"status":"success"}"#));
    let dir = tempfile::tempdir().unwrap();
    let out = pipeline(dir.path(), &slack, &pd, Deploy::FailsAndRollbackFails);
    expect_code(&out, 3);
    let message = body(&slack, 0);
    assert_eq!(
        message["text"],
        "gallery-release failed in development for default at step `deploy`; ROLLBACK FAILED for audit: needs a person"
    );
    assert!(message["blocks"].to_string().contains("*Rollback failed*\\naudit"), "{}", message["blocks"]);
    let trigger = body(&pd, 0);
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["custom_details"]["status"], "rollback-failed");
    assert_eq!(trigger["payload"]["custom_details"]["rollback_failed"][0], "audit");
}

#[test]
fn a_webhook_secret_is_not_sent_where_it_is_not_bound() {
    let slack = CountingServer::start(Reply::text(200, "ok"));
    let other = CountingServer::start(Reply::text(200, "ok"));
    let wasm = plugin("plugins/notify");
    let mut cmd = command(&shared_cache());
    cmd.env("HOOK", format!("{}/services/x", other.origin()));
    cmd.args(["step", "run", wasm.to_str().unwrap(), "--json", "--with", "webhook_secret=HOOK"]);
    cmd.args(["--secret", &format!("HOOK=env:HOOK@{}", slack.origin()), "--allow-net", &other.origin()]);
    let out = cmd.output().unwrap();
    expect_code(&out, 1);
    let error = &stdout_json(&out)["error"];
    assert_eq!(error["kind"], "secret-denied");
    assert!(error["message"].as_str().unwrap().contains(&format!("secret `HOOK` is not bound to {}", other.origin())));
    assert_eq!(other.hits() + slack.hits(), 0);
}
