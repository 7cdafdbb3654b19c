//! An embedder's own capability, end to end: `examples/change-ticket` (a program on gantry-host
//! that registers a `tickets` capability with its own WIT package) runs a pipeline whose step,
//! built from source with the SDK and that package, opens a ticket on a local ticket server.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOKEN: &str = "itsm-token-5c1e";

/// The example's binary, built beside `gantry` by `cargo build --workspace`.
fn example_bin() -> PathBuf {
    gantry_bin().with_file_name("change-ticket")
}

fn run_example(dir: &Path, yaml: &str) -> Output {
    std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
    Command::new(example_bin())
        .arg(dir.join("pipeline.yaml"))
        .env("ITSM_TOKEN", TOKEN)
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .env("GANTRY_CACHE_DIR", shared_cache())
        .output()
        .unwrap()
}

fn pipeline(origin: &str, systems: &str) -> String {
    format!(
        r#"name: release-with-ticket
secrets:
  ITSM_TOKEN: {{ from: "env:ITSM_TOKEN", bind: ["{origin}"] }}
tickets:
  itsm: {{ url: "{origin}", token: ITSM_TOKEN, project: CHG }}
steps:
  - id: ticket
    uses: {plugin}
    tickets: {systems}
    with: {{ system: itsm, title: "Release gallery 2026.12" }}
  - id: after
    uses: {misbehave}
    needs: [ticket]
    with: {{ action: ok, outputs: {{ ticket: "${{{{ steps.ticket.outputs.ticket }}}}" }} }}
"#,
        plugin = repo().join("examples/change-ticket/plugin").display(),
        misbehave = repo().join("tests/plugins/misbehave").display(),
    )
}

#[test]
fn an_embedders_capability_opens_a_ticket_with_a_token_the_plugin_never_holds() {
    let server = CountingServer::start(Reply::text(201, r#"{"id":"CHG-1042"}"#));
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(dir.path(), &pipeline(&server.origin(), "[itsm]"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", String::from_utf8_lossy(&out.stdout));

    // The ticket server saw one request, signed by the host with the token.
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
    assert!(server.requests()[0].starts_with("POST "), "{:?}", server.requests());
    assert!(server.requests()[0].contains(r#""project":"CHG""#) && server.requests()[0].contains("Release gallery 2026.12"));
    assert!(server.headers()[0].to_ascii_lowercase().contains(&format!("authorization: bearer {TOKEN}")));

    // The journal: the ticket's id is the step's output and the next step read it; the request is
    // recorded; the token is nowhere in what the run wrote.
    let journal = journal(dir.path());
    let finished = |id: &str| journal.iter().find(|e| e["event"] == "step_finished" && e["step"] == id).cloned();
    assert_eq!(finished("ticket").unwrap()["outputs"]["ticket"], "CHG-1042");
    assert_eq!(finished("after").unwrap()["outputs"]["ticket"], "CHG-1042");
    let request = journal.iter().find(|e| e["event"] == "request").unwrap();
    assert_eq!((request["action"].as_str(), request["status"].as_u64()), (Some("OpenTicket"), Some(201)));
    let plan = journal.iter().find(|e| e["event"] == "run_started").map(|e| e["plan"].clone()).unwrap();
    let grant = &plan["steps"][0]["capabilities"]["tickets"];
    assert_eq!(grant["lines"][0]["review"], format!("itsm = {}, project CHG", server.origin()));
    assert_eq!(grant["secrets"][0]["name"], "ITSM_TOKEN");
    let text = std::fs::read_to_string(dir.path().join(".gantry/runs").join(run_id(dir.path())).join("journal.jsonl")).unwrap();
    assert!(!text.contains(TOKEN));
}

#[test]
fn the_embedders_grammar_is_checked_before_anything_runs_and_plain_gantry_does_not_know_it() {
    let server = CountingServer::start(Reply::text(201, r#"{"id":"CHG-1"}"#));
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(dir.path(), &pipeline(&server.origin(), "[itsm, change_board]"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = dir.path().join("pipeline.yaml");
    assert!(
        stderr.contains(&format!("{}:9:", file.display()))
            && stderr.contains("steps[0].tickets[1]: ticket system `change_board` is not declared in `tickets:` (declared: itsm)"),
        "{stderr}"
    );
    assert_eq!(server.hits(), 0, "nothing ran");

    // The stock binary has no `tickets` capability: the same file is refused, by field.
    let out = gantry(&["validate", "--offline", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tickets"), "{stderr}");
}
