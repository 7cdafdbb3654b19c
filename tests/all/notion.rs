//! `notion-sync` end to end against the Notion stand-in (`tests/peers/notion.py`,
//! Notion's published request and response shapes): 191 generated contacts,
//! pagination, a 429 burst with Retry-After, a 500, the legacy endpoint,
//! dry runs, idempotence and rollback.

use crate::peers::{get, notion, Peer};
use crate::support::*;
use serde_json::Value;
use std::process::Output;

pub(crate) const TOKEN: &str = "secret_ntn_5kQ2xYzzzExampleToken";
pub(crate) const DS: &str = "2a8f1c3e-0000-4000-8000-000000000191";
const SEGMENTS: [&str; 4] = ["artists/gallery", "wellness clients", "business partners", "general visitors"];

fn state(peer: &Peer) -> Value {
    serde_json::from_str(&get(&peer.origin, "/_state").unwrap().1).unwrap()
}

fn segments(peer: &Peer) -> Vec<(String, Value)> {
    state(peer)["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p["properties"]["Segment"]["select"]["name"].clone()))
        .collect()
}

fn patches(peer: &Peer) -> usize {
    state(peer)["log"].as_array().unwrap().iter().filter(|l| l.as_str().unwrap().starts_with("PATCH")).count()
}

fn sync(peer: &Peer, token: &str, extra: &[&str]) -> Output {
    let wasm = plugin("plugins/notion-sync");
    let mut cmd = command(&shared_cache());
    cmd.env("TEST_NOTION_TOKEN", token);
    cmd.args(["step", "run", wasm.to_str().unwrap(), "--id", "sync", "--json", "--timeout", "60s"]);
    cmd.args(["--with", &format!("api_url={}", peer.origin), "--with", &format!("data_source_id={DS}")]);
    cmd.args(["--secret", &format!("NOTION_TOKEN=env:TEST_NOTION_TOKEN@{}", peer.origin), "--allow-net", &peer.origin]);
    for e in extra {
        if e.starts_with("--") {
            cmd.arg(e);
        } else {
            cmd.args(["--with", e]);
        }
    }
    cmd.output().unwrap()
}

fn outputs(out: &Output) -> Value {
    expect_code(out, 0);
    stdout_json(out)["outputs"].clone()
}

#[test]
fn contacts_are_validated_segmented_and_written_once_through_rate_limits_and_errors() {
    let peer = notion(TOKEN, DS, &["--rate-limit-burst", "2", "--retry-after", "1", "--fail-once"]);
    let out = sync(&peer, TOKEN, &["page_size=50"]);
    let o = outputs(&out);
    assert_eq!(
        (o["contacts"].as_str(), o["valid"].as_str(), o["invalid"].as_str(), o["duplicates"].as_str()),
        (Some("191"), Some("182"), Some("9"), Some("3"))
    );
    let updated: usize = o["updated"].as_str().unwrap().parse().unwrap();
    assert!(updated > 100, "most contacts had no segment yet: {updated}");
    assert_eq!(patches(&peer), updated, "one PATCH per change");
    let per_segment: usize = SEGMENTS
        .iter()
        .map(|s| o[format!("segment.{}", s.replace(['/', ' '], "_"))].as_str().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(per_segment, 182);
    let log = state(&peer)["log"].clone();
    let queries = log.as_array().unwrap().iter().filter(|l| l.as_str().unwrap().starts_with("POST")).count();
    assert_eq!(queries, 4 + 2 + 1, "4 pages of 50, after 2 rate-limited tries and one 500");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("429 rate_limited") && stderr.contains("waiting 1000 ms"), "{stderr}");
    assert!(stderr.contains("500 internal_server_error"), "{stderr}");
    assert!(!stderr.contains(TOKEN) && !String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    for (_, segment) in segments(&peer).iter().filter(|(_, s)| !s.is_null()) {
        assert!(SEGMENTS.contains(&segment.as_str().unwrap()), "{segment}");
    }

    let again = outputs(&sync(&peer, TOKEN, &[]));
    assert_eq!((again["changes"].as_str(), again["updated"].as_str()), (Some("0"), Some("0")));
    assert_eq!(patches(&peer), updated, "a second run writes nothing");
}

#[test]
fn a_dry_run_reports_changes_and_the_legacy_endpoint_answers_the_same() {
    let peer = notion(TOKEN, DS, &[]);
    let before = segments(&peer);
    let dry = outputs(&sync(&peer, TOKEN, &["--dry-run"]));
    let dry_changes = dry["changes"].as_str().unwrap().to_string();
    let out = {
        let wasm = plugin("plugins/notion-sync");
        let mut cmd = command(&shared_cache());
        cmd.env("TEST_NOTION_TOKEN", TOKEN).args(["step", "run", wasm.to_str().unwrap(), "--dry-run", "--json"]);
        cmd.args([
            "--with",
            &format!("api_url={}", peer.origin),
            "--with",
            &format!("database_id={DS}"),
            "--with",
            "notion_version=2022-06-28",
        ]);
        cmd.args([
            "--secret",
            &format!("NOTION_TOKEN=env:TEST_NOTION_TOKEN@{}", peer.origin),
            "--allow-net",
            &peer.origin,
        ]);
        cmd.output().unwrap()
    };
    let legacy = outputs(&out);
    assert_ne!(dry_changes, "0");
    assert_eq!((legacy["changes"].as_str(), legacy["updated"].as_str()), (Some(dry_changes.as_str()), Some("0")));
    assert!(state(&peer)["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().unwrap().starts_with(&format!("POST /v1/databases/{DS}/query"))));
    assert_eq!(patches(&peer), 0);
    assert_eq!(segments(&peer), before);
}

#[test]
fn notion_errors_are_surfaced_and_a_later_failure_restores_every_segment() {
    let peer = notion(TOKEN, DS, &[]);
    let bad = sync(&peer, "wrong-token", &[]);
    assert_eq!(bad.status.code(), Some(1));
    let message = stdout_json(&bad)["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("401 unauthorized: API token is invalid. (request_id "), "{message}");

    let before = segments(&peer);
    let dir = tempfile::tempdir().unwrap();
    let yaml = crm_pipeline(&peer.origin) + &failing_step("verify", "sync", "site check failed");
    let out = run_pipeline(dir.path(), &yaml, &[("TEST_NOTION_TOKEN", TOKEN)], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let written = patches(&peer);
    assert!(written > 200, "run wrote, then rollback wrote each change back: {written}");
    assert_eq!(segments(&peer), before, "every segment is as it was");
}

/// A pipeline whose one step syncs the CRM at `origin`.
pub(crate) fn crm_pipeline(origin: &str) -> String {
    format!(
        r#"name: crm
secrets:
  NOTION_TOKEN: {{ from: "env:TEST_NOTION_TOKEN", bind: ["{origin}"] }}
steps:
  - id: sync
    uses: {plugin}
    network: ["{origin}"]
    secrets: [NOTION_TOKEN]
    timeout: 2m
    with: {{ api_url: "{origin}", data_source_id: "{DS}" }}
"#,
        plugin = repo().join("plugins/notion-sync").display(),
    )
}

/// The segments a clean sync of a fresh stand-in ends with: what a completed run intends.
fn intended() -> Vec<(String, Value)> {
    let peer = notion(TOKEN, DS, &[]);
    outputs(&sync(&peer, TOKEN, &[]));
    segments(&peer)
}

#[test]
fn a_write_refused_mid_sync_is_undone_from_the_checkpoints() {
    let peer = notion(TOKEN, DS, &["--refuse-patch", "70"]);
    let before = segments(&peer);
    let dir = tempfile::tempdir().unwrap();
    let out = run_pipeline(dir.path(), &crm_pipeline(&peer.origin), &[("TEST_NOTION_TOKEN", TOKEN)], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let j = journal(dir.path());
    let failed = j.iter().find(|e| e["event"] == "step_failed").unwrap();
    assert!(failed["error"].as_str().unwrap().contains("Can't edit block that is archived"), "{failed}");
    // Two batches were announced before their writes (the refusal came in the second); the failed step
    // is rolled back from them.
    let batches: Vec<&str> =
        j.iter().filter(|e| e["event"] == "checkpoint").map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(batches, ["batch 00000", "batch 00001"]);
    let first_write = j.iter().position(|e| e["event"] == "request" && e["method"] == "PATCH").unwrap();
    let first_checkpoint = j.iter().position(|e| e["event"] == "checkpoint").unwrap();
    assert!(first_checkpoint < first_write, "journaled before the first write");
    assert!(j.iter().any(|e| e["event"] == "rolled_back" && e["step"] == "sync"));
    assert_eq!(segments(&peer), before, "every segment is as it was, read from the stand-in");
}

#[test]
fn kill_9_mid_sync_then_rollback_or_resume_leaves_every_segment_as_before_or_as_intended() {
    let intended = intended();
    for then in ["rollback", "resume"] {
        let peer = notion(TOKEN, DS, &["--patch-delay-ms", "15"]);
        let before = segments(&peer);
        assert_ne!(before, intended);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.yaml");
        std::fs::write(&file, crm_pipeline(&peer.origin)).unwrap();
        let mut cmd = command(&shared_cache());
        cmd.args(["run", file.to_str().unwrap()]).current_dir(dir.path()).env("TEST_NOTION_TOKEN", TOKEN);
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = spawn_until(&mut cmd, "60 pages written", || patches(&peer) >= 60);
        child.kill().unwrap(); // mid-way through the second batch
        child.wait().unwrap();
        let half = segments(&peer);
        assert!(half != before && half != intended, "killed half-way");
        let mut cmd = command(&shared_cache());
        let out = cmd.args([then, &run_id(dir.path())]).current_dir(dir.path()).env("TEST_NOTION_TOKEN", TOKEN);
        let out = out.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{then}: {}", String::from_utf8_lossy(&out.stderr));
        let expected = if then == "rollback" { &before } else { &intended };
        assert!(segments(&peer) == *expected, "{then} after kill -9 mid-sync: exactly as before or as intended");
    }
}
