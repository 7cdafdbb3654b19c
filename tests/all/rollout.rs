//! Rolling a pipeline out to many entities: waves in order, each entity its
//! own run (lock, journal), the failure budget stopping later waves, and
//! `gantry runs` grouping the runs of one invocation.

use crate::support::*;
use std::path::Path;

/// Entities alpha, beta, gamma (beta's step fails), in waves `[alpha]`, `33%`, `rest`, budget 1.
fn pipeline(dir: &Path, server: &CountingServer) -> std::path::PathBuf {
    let misbehave = repo().join("tests/plugins/misbehave");
    let o = server.origin();
    let text = format!(
        "name: fleet\nrollout:\n  waves: [[alpha], 33%, rest]\n  failure_budget: 1\nentities:\n  alpha: {{}}\n  beta:\n    with: {{ a: {{ url: \"{o}/record\", action: fail, message: beta is broken }} }}\n  gamma: {{}}\nsteps:\n  - id: a\n    uses: {}\n    network: [\"{o}\"]\n    with: {{ url: \"{o}/record\" }}\n",
        misbehave.display()
    );
    let file = dir.join("fleet.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

fn lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn journal_of(dir: &Path, id: &str) -> Vec<serde_json::Value> {
    let out = gantry_in(dir, &["runs", "show", id, "--json"]);
    expect_code(&out, 0);
    lines(&out)
}

#[test]
fn entities_roll_out_in_waves_and_a_spent_failure_budget_stops_the_last_wave() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server);
    let out = gantry_in(dir.path(), &["run", file.to_str().unwrap(), "--entity", "all"]);
    expect_code(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 entities in 3 waves, failure budget 1"), "{stderr}");
    assert!(stderr.contains("wave 3 (gamma) not started: 1 entities failed, failure budget 1"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[beta] ") && stdout.contains("beta is broken"), "lines carry their entity: {stdout}");
    assert!(stdout.contains("gamma") && stdout.contains("not started"), "{stdout}");

    // Each entity that ran is a run of its own, recorded with the rollout; gamma never ran.
    let listed = lines(&gantry_in(dir.path(), &["runs", "--json"]));
    let entities: Vec<(&str, &str)> = listed
        .iter()
        .map(|r| (r["run"].as_str().unwrap().rsplit("entity=").next().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(entities, [("alpha", "succeeded"), ("beta", "failed")]);
    let rollout = listed[0]["rollout"].as_str().expect("the rollout is recorded");
    assert!(rollout.starts_with("rollout-") && listed[1]["rollout"] == rollout);
    assert_eq!(server.requests(), ["POST run a", "POST run a"], "alpha's step and beta's, nothing for gamma");

    // Waves in order: alpha's run had finished before beta's started.
    let (alpha, beta) = (
        journal_of(dir.path(), listed[0]["id"].as_str().unwrap()),
        journal_of(dir.path(), listed[1]["id"].as_str().unwrap()),
    );
    let finished = alpha.last().unwrap()["ts_ms"].as_f64().unwrap();
    let started = beta.first().unwrap()["ts_ms"].as_f64().unwrap();
    assert!(finished <= started, "wave 2 started at {started}, before wave 1 ended at {finished}");

    // `gantry runs` shows the rollout's runs together, under it.
    let text = String::from_utf8_lossy(&gantry_in(dir.path(), &["runs"]).stdout).into_owned();
    assert!(text.contains(&format!("{rollout}  2 runs, 1 succeeded")), "{text}");
}

#[test]
fn a_listed_selection_runs_each_entity_once_and_succeeds() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server);
    let out = gantry_in(dir.path(), &["run", file.to_str().unwrap(), "--entity", "gamma,alpha", "--json"]);
    expect_code(&out, 0);
    let printed = lines(&out);
    let summary = printed.last().unwrap();
    let ended: Vec<(&str, u64)> = summary["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["entity"].as_str().unwrap(), o["exit"].as_u64().unwrap()))
        .collect();
    // alpha is the first wave wherever it is listed; 33% of two is one more (gamma).
    assert_eq!(ended, [("alpha", 0), ("gamma", 0)]);
    assert!(
        printed.iter().any(|e| e["event"] == "step_finished" && e["entity"] == "gamma"),
        "JSON events carry their entity"
    );
    let unknown = gantry_in(dir.path(), &["run", file.to_str().unwrap(), "--entity", "alpha,delta"]);
    expect_code(&unknown, 2);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("entity `delta` is not declared"));
}

#[test]
fn a_wave_naming_an_undeclared_entity_is_refused_with_its_line() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server);
    let text = std::fs::read_to_string(&file).unwrap().replace("[[alpha], 33%, rest]", "[[alhpa], rest, 10%]");
    std::fs::write(&file, text).unwrap();
    let out = gantry_in(dir.path(), &["validate", file.to_str().unwrap()]);
    expect_code(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rollout.waves[0]: entity `alhpa` is not declared") && err.contains("did you mean `alpha`"),
        "{err}"
    );
    assert!(err.contains("rollout.waves[2]: no wave can follow `rest`"), "{err}");
}
