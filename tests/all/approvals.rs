//! Approval gates end to end, against the file store and PostgreSQL: a run
//! waits before a gated step and the process exits; `approve` (by someone
//! allowed) continues it in another process, `reject` rolls it back, and a
//! request past its timeout counts as rejected.

use crate::peers::Postgres;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// a → b (gated: alice or bob, not the one who started the run) → c, each recording to `server`.
fn pipeline(dir: &Path, server: &CountingServer, timeout: &str) -> PathBuf {
    let misbehave = repo().join("tests/plugins/misbehave");
    let step = |id: &str, needs: &str, extra: &str| {
        format!(
            "  - id: {id}\n    uses: {}\n    needs: [{needs}]\n    network: [\"{o}\"]\n    with: {{ url: \"{o}/record\" }}\n{extra}",
            misbehave.display(),
            o = server.origin()
        )
    };
    let gate = format!(
        "    approval: {{ timeout: {timeout}, approvers: [alice, bob], prevent_self_review: true, environments: [production] }}\n"
    );
    let text = format!(
        "name: gated\nenvironments: {{ staging: {{}}, production: {{}} }}\nsteps:\n{}{}{}",
        step("a", "", ""),
        step("b", "a", &gate),
        step("c", "b", "")
    );
    let file = dir.join("gated.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// `gantry <args>` in `dir` as `user`, against `state` (the file store when `None`).
fn as_user(dir: &Path, state: Option<&str>, user: &str, args: &[&str]) -> Output {
    let mut cmd = command(&shared_cache());
    cmd.args(args).current_dir(dir).env("GANTRY_USER", user);
    match state {
        Some(url) => cmd.env("GANTRY_STATE", url),
        None => cmd.env_remove("GANTRY_STATE"),
    };
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The newest run's id and journal, read back through `gantry runs` from the store.
fn newest(dir: &Path, state: Option<&str>) -> (String, Vec<serde_json::Value>) {
    let out = as_user(dir, state, "ci", &["runs", "--json"]);
    expect_code(&out, 0);
    let listed: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let id = listed.last().expect("a run")["id"].as_str().unwrap().to_string();
    let out = as_user(dir, state, "ci", &["runs", "show", &id, "--json"]);
    expect_code(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    (id, text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

fn kinds(journal: &[serde_json::Value]) -> Vec<String> {
    journal.iter().map(|e| e["event"].as_str().unwrap().to_string()).collect()
}

/// Starts a production run as alice; it stops before `b`, with exit 5 and the request journaled.
fn start_gated(dir: &Path, state: Option<&str>, file: &Path, server: &CountingServer) -> String {
    let out = as_user(dir, state, "alice", &["run", file.to_str().unwrap(), "--env", "production"]);
    expect_code(&out, 5);
    assert_eq!(server.requests(), ["POST run a"], "nothing past the gate ran");
    let (id, journal) = newest(dir, state);
    let request = journal.iter().find(|e| e["event"] == "approval_requested").expect("the request is journaled");
    assert_eq!(request["step"], "b");
    assert_eq!(request["requested_by"], "alice");
    assert_eq!(request["approvers"], serde_json::json!(["alice", "bob"]));
    assert_eq!(journal.last().unwrap()["status"], "awaiting-approval");
    id
}

fn approve_reject_and_timeout(state: Option<&str>) {
    // Approved by bob after alice (who started it) and mallory are refused: the run ends as planned.
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, "1h");
    let id = start_gated(dir.path(), state, &file, &server);
    let listed = as_user(dir.path(), state, "bob", &["approvals"]);
    expect_code(&listed, 0);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&format!("{id}  gated environment=production")));
    let own = as_user(dir.path(), state, "alice", &["approve", &id]);
    expect_code(&own, 2);
    assert!(stderr(&own).contains("alice started this run and step `b` has prevent_self_review"), "{}", stderr(&own));
    let stranger = as_user(dir.path(), state, "mallory", &["approve", &id, "--step", "b"]);
    expect_code(&stranger, 2);
    assert!(stderr(&stranger).contains("mallory may not approve step `b`: its approvers are alice, bob"));
    assert_eq!(server.requests(), ["POST run a"], "a refused approval changes nothing");
    let approved = as_user(dir.path(), state, "bob", &["approve", &id, "--step", "b", "--comment", "ship it"]);
    expect_code(&approved, 0);
    assert_eq!(server.requests(), ["POST run a", "POST run b", "POST run c"]);
    let (_, journal) = newest(dir.path(), state);
    let decision = journal.iter().find(|e| e["event"] == "approved").expect("the approval is journaled");
    assert_eq!((decision["by"].as_str(), decision["comment"].as_str()), (Some("bob"), Some("ship it")));
    assert_eq!(journal.last().unwrap()["status"], "succeeded");
    let again = as_user(dir.path(), state, "bob", &["approve", &id]);
    expect_code(&again, 2);
    assert!(stderr(&again).contains("is not awaiting an approval (succeeded)"), "{}", stderr(&again));

    // Staging has no gate: the same pipeline runs through.
    let staging = as_user(dir.path(), state, "alice", &["run", file.to_str().unwrap(), "--env", "staging"]);
    expect_code(&staging, 0);

    // Rejected by bob: what ran before the gate is rolled back; b and c never run.
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, "1h");
    let id = start_gated(dir.path(), state, &file, &server);
    let rejected = as_user(dir.path(), state, "bob", &["reject", &id, "--comment", "not on a Friday"]);
    expect_code(&rejected, 0);
    assert_eq!(server.requests(), ["POST run a", "POST rollback a"]);
    let (_, journal) = newest(dir.path(), state);
    let decision = journal.iter().find(|e| e["event"] == "rejected").expect("the rejection is journaled");
    assert_eq!(
        (decision["by"].as_str(), decision["reason"].as_str(), decision["comment"].as_str()),
        (Some("bob"), Some("rejected"), Some("not on a Friday"))
    );
    let k = kinds(&journal);
    let at = |kind: &str| k.iter().position(|e| e == kind).unwrap_or_else(|| panic!("no {kind}: {k:?}"));
    assert!(at("approval_requested") < at("rejected") && at("rejected") < at("rolled_back"), "{k:?}");
    assert_eq!(journal.last().unwrap()["status"], "rolled-back");

    // Nobody decides within the timeout: `gantry approvals` rejects and rolls back; a late approval is refused.
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, "1s");
    let id = start_gated(dir.path(), state, &file, &server);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let swept = as_user(dir.path(), state, "ci", &["approvals"]);
    expect_code(&swept, 0);
    assert!(String::from_utf8_lossy(&swept.stdout).contains("LAPSED"), "{swept:?}");
    assert_eq!(server.requests(), ["POST run a", "POST rollback a"]);
    let (_, journal) = newest(dir.path(), state);
    let decision = journal.iter().find(|e| e["event"] == "rejected").expect("the lapse is journaled");
    assert_eq!(decision["by"], "gantry");
    assert!(decision["reason"].as_str().unwrap().starts_with("timed out"), "{decision}");
    let late = as_user(dir.path(), state, "bob", &["approve", &id]);
    expect_code(&late, 2);
    assert_eq!(server.requests(), ["POST run a", "POST rollback a"], "a late approval runs nothing");

    // The same lapse seen by `approve` itself: recorded as rejected, rolled back, exit 1.
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, "1s");
    let id = start_gated(dir.path(), state, &file, &server);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let late = as_user(dir.path(), state, "bob", &["approve", &id]);
    expect_code(&late, 1);
    assert!(stderr(&late).contains("the approval of step `b` lapsed"), "{}", stderr(&late));
    assert_eq!(server.requests(), ["POST run a", "POST rollback a"]);
}

#[test]
fn approval_gates_with_the_file_store() {
    approve_reject_and_timeout(None);
}

#[test]
fn approval_gates_with_postgres() {
    let pg = Postgres::start();
    approve_reject_and_timeout(Some(&pg.url()));
}

#[test]
fn an_approval_for_an_undeclared_environment_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = CountingServer::start(Reply::text(200, "ok"));
    let file = pipeline(dir.path(), &server, "1h");
    let text = std::fs::read_to_string(&file).unwrap().replace("environments: [production]", "environments: [prod]");
    std::fs::write(&file, text).unwrap();
    let out = gantry_in(dir.path(), &["validate", file.to_str().unwrap()]);
    expect_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains(":14:") && err.contains("steps[1].approval.environments[0]"), "{err}");
    assert!(err.contains("environment `prod` is not declared"), "{err}");
}
