//! `alb-shift` end to end: the plugin built from source, run by the real
//! binary against moto's ELBv2 with signature checking on, Prometheus scraping
//! a metrics endpoint whose error rate follows the canary's weight.

use crate::peers::{prometheus, wait_for_data, Aws};
use crate::support::*;
use std::process::Output;
use std::time::{Duration, Instant};

const ALB_SHIFT: &str = "plugins/alb-shift";
const ERROR_RATE: &str = r#"sum(rate(http_requests_total{status="500"}[3s])) / sum(rate(http_requests_total[3s]))"#;

/// `gantry step run alb-shift` with the keys from `aws` (or `secret_key` instead) and `extra` input.
fn shift(aws: &Aws, secret_key: &str, grants: &[&str], extra: &[String]) -> Output {
    let wasm = plugin(ALB_SHIFT);
    let moto = &aws.moto.origin;
    let mut cmd = command(&shared_cache());
    cmd.env("TEST_AWS_KEY", aws.get("access_key")).env("TEST_AWS_SECRET", secret_key);
    cmd.args(["step", "run", wasm.to_str().unwrap(), "--id", "shift", "--json", "--timeout", "60s"]);
    for (k, v) in [
        ("endpoint", format!("{moto}/")),
        ("listener_arn", aws.get("listener")),
        ("blue_target_group_arn", aws.get("blue")),
        ("green_target_group_arn", aws.get("green")),
    ] {
        cmd.args(["--with", &format!("{k}={v}")]);
    }
    for e in extra {
        cmd.args(["--with", e]);
    }
    cmd.args(["--secret", &format!("AWS_ACCESS_KEY_ID=env:TEST_AWS_KEY@{moto}")]);
    cmd.args(["--secret", &format!("AWS_SECRET_ACCESS_KEY=env:TEST_AWS_SECRET@{moto}")]);
    cmd.args(["--allow-net", moto]);
    for g in grants {
        cmd.args(["--allow-net", g]);
    }
    cmd.output().unwrap()
}

fn weights_of(aws: &Aws, blue: u64, green: u64) -> Vec<(String, u64)> {
    vec![(aws.get("blue"), blue), (aws.get("green"), green)]
}

fn gate(prom: &str) -> String {
    serde_json::json!({"url": prom, "query": ERROR_RATE, "max": 0.1}).to_string()
}

#[test]
fn a_canary_rolls_out_through_every_gate_and_a_second_run_changes_nothing() {
    let aws = Aws::start();
    let metrics = aws.metrics(false);
    let dir = tempfile::tempdir().unwrap();
    let prom = prometheus(&metrics, dir.path());
    wait_for_data(&prom.origin, ERROR_RATE);
    let health = format!("{}/health", metrics.origin);
    let extra = [
        format!("prometheus={}", gate(&prom.origin)),
        format!("health_url={health}"),
        "pause_ms=1000".to_string(),
        r#"window={"samples": 2, "interval_ms": 300}"#.to_string(),
    ];
    let out = shift(&aws, &aws.get("secret_key"), &[&prom.origin, &metrics.origin], &extra);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let result = stdout_json(&out);
    assert_eq!(result["outputs"]["stages_completed"], "4");
    assert_eq!(aws.weights(), weights_of(&aws, 0, 100), "all traffic on green");
    let requests = result["requests"].as_array().unwrap();
    let to = |origin: &str| requests.iter().filter(|r| r["origin"] == origin && r["status"] == 200).count();
    assert_eq!(to(&prom.origin), 8, "two Prometheus samples per stage");
    assert_eq!(to(&metrics.origin), 8, "two health samples per stage");
    // 1 describe + 4 × (modify + 2 target health samples) + 1 final describe, all signed and accepted.
    assert_eq!(to(&aws.moto.origin), 14);
    // Every verdict is in the outputs: stage, sample, gate, what was observed, against what.
    let verdicts: Vec<serde_json::Value> = serde_json::from_str(result["outputs"]["gates"].as_str().unwrap()).unwrap();
    assert_eq!(verdicts.len(), 4 * 2 * 3);
    assert!(verdicts.iter().all(|v| v["verdict"] == "pass"), "{verdicts:?}");
    let health = verdicts.iter().find(|v| v["gate"] == "target-health" && v["stage"] == 50).unwrap();
    assert_eq!(health["observed"], "2 of 2 targets healthy");
    let prom_at_25 =
        verdicts.iter().find(|v| v["gate"] == "prometheus" && v["stage"] == 25 && v["sample"] == 2).unwrap();
    assert!(prom_at_25["observed"].as_str().unwrap().contains(" = 0"), "{prom_at_25}");
    assert_eq!(prom_at_25["threshold"], "<= 0.1, no data: fail");

    let again = shift(&aws, &aws.get("secret_key"), &[], &["pause_ms=0".to_string()]);
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
    let again = stdout_json(&again);
    assert_eq!(
        (again["outputs"]["changed"].as_str(), again["outputs"]["stages_completed"].as_str()),
        (Some("false"), Some("0"))
    );
    assert_eq!(again["requests"].as_array().unwrap().len(), 1, "only the describe: nothing to change");
}

#[test]
fn a_failed_gate_at_25_percent_restores_the_original_weights() {
    let aws = Aws::start();
    let metrics = aws.metrics(true);
    let dir = tempfile::tempdir().unwrap();
    let prom = prometheus(&metrics, dir.path());
    wait_for_data(&prom.origin, ERROR_RATE);
    let out = shift(
        &aws,
        &aws.get("secret_key"),
        &[&prom.origin],
        &[format!("prometheus={}", gate(&prom.origin)), "pause_ms=2000".into()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let message = stdout_json(&out)["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("gate failed at 25%: sample 1: prometheus gate: `"), "{message}");
    assert!(message.contains("(threshold <= 0.1, no data: fail): Fail; restored the original weights"), "{message}");
    assert_eq!(aws.weights(), weights_of(&aws, 100, 0), "back to where it started");
}

#[test]
fn a_wrong_secret_key_is_refused_by_the_signature_check() {
    let aws = Aws::start();
    let out = shift(&aws, "not-the-key", &[], &["pause_ms=0".to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let message = stdout_json(&out)["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("DescribeListeners answered 403: SignatureDoesNotMatch"), "{message}");
    assert!(!message.contains("not-the-key") && !String::from_utf8_lossy(&out.stderr).contains("not-the-key"));
    assert_eq!(aws.weights(), weights_of(&aws, 100, 0));
}

#[test]
fn a_later_failure_rolls_the_shift_back_from_the_recorded_weights() {
    let aws = Aws::start();
    let dir = tempfile::tempdir().unwrap();
    let yaml = canary_yaml(&aws, 0) + &failing_step("smoke", "shift", "post-release check failed");
    let (key, secret) = (aws.get("access_key"), aws.get("secret_key"));
    let out = run_pipeline(dir.path(), &yaml, &[("TEST_AWS_KEY", &key), ("TEST_AWS_SECRET", &secret)], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let finished = events.iter().find(|e| e["event"] == "step_finished" && e["step"] == "shift").unwrap();
    assert_eq!(finished["outputs"]["stages_completed"], "4", "the shift completed before the failure");
    assert!(events.iter().any(|e| e["event"] == "rolled_back" && e["step"] == "shift"));
    assert_eq!(aws.weights(), weights_of(&aws, 100, 0), "rollback restored the recorded weights");
}

/// The canary pipeline (shift only, 4 stages, `pause_ms` between them, no gates) for `aws`, written into `dir`.
fn canary(dir: &std::path::Path, aws: &Aws, pause_ms: u64) -> std::path::PathBuf {
    let file = dir.join("canary.yaml");
    std::fs::write(&file, canary_yaml(aws, pause_ms)).unwrap();
    file
}

/// The canary pipeline's text.
fn canary_yaml(aws: &Aws, pause_ms: u64) -> String {
    canary_yaml_with(aws, &format!("pause_ms: {pause_ms}\n      target_health: false"), &[])
}

/// The canary pipeline with `with` lines added to the shift's input and `origins` granted to it.
fn canary_yaml_with(aws: &Aws, with: &str, origins: &[&str]) -> String {
    canary_yaml_at(aws, &aws.moto.origin, with, origins)
}

/// The canary pipeline calling ELBv2 at `moto` (moto itself, or a proxy in front of it).
pub(crate) fn canary_yaml_at(aws: &Aws, moto: &str, with: &str, origins: &[&str]) -> String {
    let network: Vec<String> =
        std::iter::once(moto).chain(origins.iter().copied()).map(|o| format!("\"{o}\"")).collect();
    format!(
        r#"name: canary-kill
secrets:
  AWS_ACCESS_KEY_ID: {{ from: "env:TEST_AWS_KEY", bind: ["{moto}"] }}
  AWS_SECRET_ACCESS_KEY: {{ from: "env:TEST_AWS_SECRET", bind: ["{moto}"] }}
steps:
  - id: shift
    uses: {plugin}
    network: [{network}]
    secrets: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]
    timeout: 2m
    with:
      endpoint: "{moto}/"
      listener_arn: "{listener}"
      blue_target_group_arn: "{blue}"
      green_target_group_arn: "{green}"
      {with}
"#,
        network = network.join(", "),
        plugin = plugin(ALB_SHIFT).display(),
        listener = aws.get("listener"),
        blue = aws.get("blue"),
        green = aws.get("green"),
    )
}

/// Requests `shift` made after its checkpoint: with no gates, the n-th is the n-th ModifyListener.
fn modifies_after_checkpoint(journal: &[serde_json::Value]) -> usize {
    let Some(cp) = journal.iter().position(|e| e["event"] == "checkpoint") else { return 0 };
    journal[cp..].iter().filter(|e| e["event"] == "request" && e["step"] == "shift").count()
}

fn gantry_aws(dir: &std::path::Path, aws: &Aws, args: &[&str]) -> std::process::Command {
    let mut cmd = command(&shared_cache());
    cmd.args(args)
        .current_dir(dir)
        .env("TEST_AWS_KEY", aws.get("access_key"))
        .env("TEST_AWS_SECRET", aws.get("secret_key"));
    cmd
}

/// Where a `kill -9` lands in the canary pipeline (audit → shift with gates → smoke).
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// At the step boundary before the shift: while `audit` runs.
    BeforeShift,
    /// During the pause after the stage's `ModifyListener`.
    Pause(u64),
    /// During the stage's gate window, between its two samples.
    Gate(u64),
    /// At the step boundary after the shift: while `smoke` runs.
    AfterShift,
}

impl KillPoint {
    /// Whether the journal shows the run has reached this point.
    fn reached(self, journal: &[serde_json::Value]) -> bool {
        let logged = |prefix: &str| {
            journal.iter().any(|e| e["event"] == "log" && e["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
        };
        let started = |step: &str| journal.iter().any(|e| e["event"] == "step_started" && e["step"] == step);
        match self {
            KillPoint::BeforeShift => started("audit"),
            KillPoint::Pause(p) => logged(&format!("stage {p}%: green weight")),
            KillPoint::Gate(p) => logged(&format!("stage {p}% sample 1/2: health-url gate")),
            KillPoint::AfterShift => started("smoke"),
        }
    }

    /// Percent on green when the kill lands.
    fn green(self) -> u64 {
        match self {
            KillPoint::BeforeShift => 0,
            KillPoint::Pause(p) | KillPoint::Gate(p) => p,
            KillPoint::AfterShift => 100,
        }
    }
}

#[test]
fn kill_9_at_every_step_boundary_stage_pause_and_gate_then_resume_or_rollback_leaves_exact_weights() {
    let mut points = vec![KillPoint::BeforeShift];
    for p in [5, 25, 50, 100] {
        points.extend([KillPoint::Pause(p), KillPoint::Gate(p)]);
    }
    points.push(KillPoint::AfterShift);
    let cases: Vec<(KillPoint, &str)> =
        points.into_iter().flat_map(|p| [(p, "rollback"), (p, "resume")]).collect();
    // Two lanes, each with its own moto and metrics, taking the cases in turn: a case waits on its
    // pauses, so two overlap well on two cores. Between cases a lane's listener is set back to blue.
    let lanes: Vec<Vec<String>> = std::thread::scope(|scope| {
        let lanes: Vec<_> = cases
            .chunks(cases.len().div_ceil(2))
            .map(|lane| scope.spawn(move || kill_cases(lane)))
            .collect();
        lanes.into_iter().map(|l| l.join().unwrap()).collect()
    });
    let table: Vec<String> = lanes.into_iter().flatten().collect();
    assert_eq!(table.len(), 20, "kill points tested: {table:?}");
}

/// Runs each case against one moto and metrics server: kill -9 at the point, then `resume` or
/// `rollback`, the weights read back with boto3 after each.
fn kill_cases(cases: &[(KillPoint, &str)]) -> Vec<String> {
    let aws = Aws::start();
    let metrics = aws.metrics(false);
    let misbehave = repo().join("tests/plugins/misbehave");
    let mut table = Vec::new();
    for &(point, then) in cases {
        aws.set_weights(100, 0);
        let dir = tempfile::tempdir().unwrap();
        let with = format!(
            "pause_ms: 300\n      health_url: \"{}/health\"\n      window: {{ samples: 2, interval_ms: 300 }}\n    needs: [audit]",
            metrics.origin
        );
        let yaml = canary_yaml_with(&aws, &with, &[&metrics.origin]).replace(
            "steps:\n",
            &format!("steps:\n  - id: audit\n    uses: {}\n    with: {{ action: sleep, ms: 1000 }}\n", misbehave.display()),
        ) + &format!(
            "  - id: smoke\n    uses: {}\n    needs: [shift]\n    with: {{ action: sleep, ms: 1000 }}\n",
            misbehave.display()
        );
        let file = dir.path().join("canary.yaml");
        std::fs::write(&file, yaml).unwrap();
        let mut cmd = gantry_aws(dir.path(), &aws, &["run", file.to_str().unwrap()]);
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = spawn_until(&mut cmd, &format!("{point:?}"), || point.reached(&journal(dir.path())));
        child.kill().unwrap();
        child.wait().unwrap();
        let green = point.green();
        assert_eq!(aws.weights(), weights_of(&aws, 100 - green, green), "killed at {point:?}");
        let out = gantry_aws(dir.path(), &aws, &[then, &run_id(dir.path())]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{then} after {point:?}: {}", String::from_utf8_lossy(&out.stderr));
        // Read back by boto3, not through the plugin: exactly the original, or exactly the target.
        let expected = if then == "rollback" { weights_of(&aws, 100, 0) } else { weights_of(&aws, 0, 100) };
        assert_eq!(aws.weights(), expected, "{then} after a kill at {point:?}");
        let last = journal(dir.path()).last().cloned().unwrap();
        let status = if then == "rollback" { "rolled-back" } else { "succeeded" };
        assert_eq!(last["status"], status, "the journal says which");
        table.push(format!("{point:?} + {then}"));
    }
    table
}

#[test]
fn sigint_and_sigterm_during_the_canary_restore_the_original_weights() {
    for sig in ["INT", "TERM"] {
        let aws = Aws::start();
        let dir = tempfile::tempdir().unwrap();
        // The pause outlasts the poll and boto3's read of the weights below on a loaded runner
        // (at 1.5 s the canary once moved on to 50 % in between).
        let file = canary(dir.path(), &aws, 4000);
        let mut cmd = gantry_aws(dir.path(), &aws, &["run", file.to_str().unwrap()]);
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let child = spawn_until(&mut cmd, "25 %", || modifies_after_checkpoint(&journal(dir.path())) >= 2);
        assert_eq!(aws.weights(), weights_of(&aws, 75, 25));
        let status = std::process::Command::new("kill").args(["-s", sig, &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "SIG{sig}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(aws.weights(), weights_of(&aws, 100, 0), "SIG{sig} at 25 % restores the original");
        let journal = journal(dir.path());
        assert_eq!(journal.last().unwrap()["status"], "interrupted");
        assert!(journal.iter().any(|e| e["event"] == "rolled_back" && e["step"] == "shift"));
    }
}

#[test]
fn gates_that_fail_restore_the_original_weights_and_say_why() {
    // (what breaks, how the AWS peer is set up, the verdict the error must carry)
    let cases: [(&str, &[&str], &str); 3] = [
        ("empty green group", &["--no-green-targets"], "target-health gate: no targets are registered"),
        ("an unhealthy green target", &[], "target-health gate: not healthy: i-"),
        ("health URL answering 503", &[], "health-url gate: http://127.0.0.1:"),
    ];
    for (what, setup, verdict) in cases {
        let aws = Aws::start_with(setup);
        let metrics = aws.metrics(false);
        let dir = tempfile::tempdir().unwrap();
        match what {
            "an unhealthy green target" => aws.stop_green_instance(),
            "health URL answering 503" => {
                assert_eq!(
                    crate::peers::request(&metrics.origin, "POST", "/control?health=503").map(|r| r.0),
                    Some(204)
                )
            }
            _ => {}
        }
        let with = format!("pause_ms: 0\n      health_url: \"{}/health\"", metrics.origin);
        let yaml = canary_yaml_with(&aws, &with, &[&metrics.origin]);
        let (key, secret) = (aws.get("access_key"), aws.get("secret_key"));
        let out = run_pipeline(dir.path(), &yaml, &[("TEST_AWS_KEY", &key), ("TEST_AWS_SECRET", &secret)], &[]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(aws.weights(), weights_of(&aws, 100, 0), "{what}: back to the original");
        let journal = journal(dir.path());
        let failed = journal.iter().find(|e| e["event"] == "step_failed").unwrap();
        let error = failed["error"].as_str().unwrap();
        assert!(error.contains("gate failed at 5%: sample 1: ") && error.contains(verdict), "{what}: {error}");
        if what == "health URL answering 503" {
            assert!(error.contains("/health answered 503"), "{error}");
        }
        // Every reading is in the journal as the plugin logged it, the failing one included.
        let logged = journal.iter().filter(|e| e["event"] == "log" && e["step"] == "shift").count();
        assert!(
            journal.iter().any(|e| e["event"] == "log" && e["message"].as_str().unwrap().contains(verdict)),
            "{what}: {logged} log lines, none with the verdict"
        );
    }
}

#[test]
fn a_gate_without_data_pauses_the_canary_for_a_person_then_resume_or_rollback_decides() {
    for then in ["resume", "rollback"] {
        let aws = Aws::start();
        let metrics = aws.metrics(false);
        let dir = tempfile::tempdir().unwrap();
        let prom = prometheus(&metrics, dir.path());
        let query = "sum(rate(canary_checks_total[3s]))";
        let gate = serde_json::json!({"url": prom.origin, "query": query, "max": 1000, "no_data": "inconclusive"});
        let with = format!(
            "pause_ms: 0\n      target_health: false\n      prometheus: {gate}\n      window: {{ samples: 2, interval_ms: 200 }}"
        );
        let yaml = canary_yaml_with(&aws, &with, &[&prom.origin]);
        let (key, secret) = (aws.get("access_key"), aws.get("secret_key"));
        let env = [("TEST_AWS_KEY", key.as_str()), ("TEST_AWS_SECRET", secret.as_str())];
        let out = run_pipeline(dir.path(), &yaml, &env, &[]);
        assert_eq!(out.status.code(), Some(4), "paused: {}", String::from_utf8_lossy(&out.stderr));
        // Nothing was rolled back: traffic stays at the first stage for the person to see.
        assert_eq!(aws.weights(), weights_of(&aws, 95, 5));
        let j = journal(dir.path());
        let paused = j.iter().find(|e| e["event"] == "paused").expect("journaled");
        let reason = paused["reason"].as_str().unwrap();
        assert!(reason.contains("gate inconclusive at 5%: sample 1: prometheus gate: `sum(rate(canary_checks_total[3s]))` returned no data"), "{reason}");
        assert_eq!(j.last().unwrap()["status"], "paused");
        let id = run_id(dir.path());
        if then == "resume" {
            // The data arrives; the person resumes: the step is undone from its checkpoint and runs again.
            assert_eq!(crate::peers::request(&metrics.origin, "POST", "/control?checks=1").map(|r| r.0), Some(204));
            wait_for_data(&prom.origin, query);
            let out = gantry_aws(dir.path(), &aws, &["resume", &id]).output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(aws.weights(), weights_of(&aws, 0, 100));
            assert_eq!(journal(dir.path()).last().unwrap()["status"], "succeeded");
        } else {
            let out = gantry_aws(dir.path(), &aws, &["rollback", &id]).output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(aws.weights(), weights_of(&aws, 100, 0));
            assert_eq!(journal(dir.path()).last().unwrap()["status"], "rolled-back");
        }
    }
}

#[test]
fn a_canary_paused_for_approval_at_25_percent_keeps_its_traffic_then_goes_on_or_back() {
    for decision in ["approve", "reject"] {
        let aws = Aws::start();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("canary.yaml");
        std::fs::write(
            &file,
            canary_yaml_with(&aws, "pause_ms: 0\n      target_health: false\n      approve_after: [25]", &[]),
        )
        .unwrap();
        let out = gantry_aws(dir.path(), &aws, &["run", file.to_str().unwrap()])
            .env("GANTRY_USER", "alice")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(aws.weights(), weights_of(&aws, 75, 25), "traffic stays at the stage while it waits");
        let j = journal(dir.path());
        let request = j.iter().find(|e| e["event"] == "approval_requested").expect("the request is journaled");
        assert_eq!((request["step"].as_str(), request["gate"].as_str()), (Some("shift"), Some("stage 25%")));
        assert!(!j.iter().any(|e| e["event"] == "rolled_back"), "nothing undone while waiting");

        let out =
            gantry_aws(dir.path(), &aws, &[decision, &run_id(dir.path())]).env("GANTRY_USER", "bob").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let j = journal(dir.path());
        let modifies = j
            .iter()
            .filter(|e| e["event"] == "log" && e["message"].as_str().is_some_and(|m| m.contains(": green weight")))
            .count();
        if decision == "approve" {
            assert_eq!(aws.weights(), weights_of(&aws, 0, 100), "went on from 25 %");
            // 5 and 25 before the pause; 25 (idempotent, its gates again), 50 and 100 after: never back to 5.
            assert_eq!(modifies, 5);
            let approved = j.iter().find(|e| e["event"] == "approved").unwrap();
            assert_eq!((approved["by"].as_str(), approved["gate"].as_str()), (Some("bob"), Some("stage 25%")));
            assert_eq!(j.last().unwrap()["status"], "succeeded");
        } else {
            assert_eq!(aws.weights(), weights_of(&aws, 100, 0), "rejected: the original weights");
            assert!(j.iter().any(|e| e["event"] == "rolled_back" && e["step"] == "shift"));
            assert_eq!(j.last().unwrap()["status"], "rolled-back");
        }
    }
}

#[test]
fn a_canary_killed_again_during_its_resume_is_resumed_or_rolled_back_to_exact_weights() {
    // Where the second kill lands in the resume (session 2): right after it restored the weights
    // the first attempt left, or mid-canary again.
    let stage_logged = |p: u64| {
        move |j: &[serde_json::Value]| {
            j.iter().any(|e| {
                e["session"] == 2
                    && e["event"] == "log"
                    && e["message"].as_str().is_some_and(|m| m.starts_with(&format!("stage {p}%: green weight")))
            })
        }
    };
    let restored = |j: &[serde_json::Value]| j.iter().any(|e| e["session"] == 2 && e["event"] == "rolled_back");
    type Reached = Box<dyn Fn(&[serde_json::Value]) -> bool>;
    let seconds: [(&str, Reached); 2] = [("restored", Box::new(restored)), ("stage 50", Box::new(stage_logged(50)))];
    for (second, reached) in &seconds {
        for then in ["resume", "rollback"] {
            let aws = Aws::start();
            let dir = tempfile::tempdir().unwrap();
            let file = canary(dir.path(), &aws, 700);
            let quiet = |mut cmd: std::process::Command| {
                cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
                cmd
            };
            let mut cmd = quiet(gantry_aws(dir.path(), &aws, &["run", file.to_str().unwrap()]));
            let mut child = spawn_until(&mut cmd, "stage 25", || KillPoint::Pause(25).reached(&journal(dir.path())));
            child.kill().unwrap();
            child.wait().unwrap();
            assert_eq!(aws.weights(), weights_of(&aws, 75, 25), "first kill at 25 %");
            let id = run_id(dir.path());
            let mut cmd = quiet(gantry_aws(dir.path(), &aws, &["resume", &id]));
            let mut child = spawn_until(&mut cmd, second, || reached(&journal(dir.path())));
            child.kill().unwrap();
            child.wait().unwrap();
            let out = gantry_aws(dir.path(), &aws, &[then, &id]).output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{then} after {second}: {}", String::from_utf8_lossy(&out.stderr));
            // Read back by boto3: exactly the target or exactly the original, never a mix.
            let expected = if then == "resume" { weights_of(&aws, 0, 100) } else { weights_of(&aws, 100, 0) };
            assert_eq!(aws.weights(), expected, "{then} after a second kill at {second}");
            let last = journal(dir.path()).last().cloned().unwrap();
            assert_eq!(last["status"], if then == "resume" { "succeeded" } else { "rolled-back" });
            assert_eq!(last["session"], 3, "the third process ended it");
        }
    }
}

/// A JSON endpoint whose `error_rate` the test sets while a canary reads it; stopped on drop.
struct ErrorRate {
    origin: String,
    value: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ErrorRate {
    fn start() -> Self {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let value = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0f64.to_bits()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (v, s) = (value.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = read_request(&stream);
                let body = format!("{{\"error_rate\": {}}}", f64::from_bits(v.load(Ordering::SeqCst)));
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { origin, value, stop }
    }

    fn set(&self, rate: f64) {
        self.value.store(rate.to_bits(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for ErrorRate {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.origin.trim_start_matches("http://"));
    }
}

/// Shifts through 50 and 100 % with 6 s pauses, `error-rate` read from Prometheus (the exporter's
/// `canary_error_ratio`, scraped every 500 ms) every 200 ms as a background metric, failing above
/// 1 % held for 2 s; `during` runs once traffic stands at 50/50, with the exporter to drive.
fn canary_with_background_analysis(aws: &Aws, during: impl FnOnce(&dyn Fn(u32))) -> Output {
    let metrics = aws.metrics(false);
    let dir = tempfile::tempdir().unwrap();
    let prom = prometheus(&metrics, dir.path());
    wait_for_data(&prom.origin, "canary_error_ratio");
    let metric = serde_json::json!([{
        "name": "error-rate",
        "source": {"provider": "prometheus", "address": prom.origin, "query": "canary_error_ratio"},
        "rules": {"failure": {"op": ">", "value": 0.01}, "for": "2s"},
        "background": true
    }]);
    let extra = [
        "stages=[50, 100]".to_string(),
        "pause_ms=6000".to_string(),
        "analysis_interval_ms=200".to_string(),
        format!("analysis={metric}"),
    ];
    let set = |permille: u32| {
        let path = format!("/control?error_permille={permille}");
        assert_eq!(crate::peers::request(&metrics.origin, "POST", &path).map(|r| r.0), Some(204));
    };
    let (aws2, origin, extra2) = (aws, prom.origin.clone(), extra.clone());
    std::thread::scope(|scope| {
        let run = scope.spawn(move || shift(aws2, &aws2.get("secret_key"), &[&origin], &extra2));
        let until = Instant::now() + Duration::from_secs(300);
        while aws.weights() != weights_of(aws, 50, 50) {
            assert!(Instant::now() < until, "the canary never reached 50 %");
            assert!(!run.is_finished(), "the canary ended before 50 %");
            std::thread::sleep(Duration::from_millis(50));
        }
        during(&set);
        run.join().unwrap()
    })
}

#[test]
fn a_spike_shorter_than_its_window_during_a_pause_does_not_stop_the_canary() {
    let aws = Aws::start();
    // Longer than a scrape (500 ms), so Prometheus sees it; shorter than the trigger's 2 s.
    let out = canary_with_background_analysis(&aws, |set| {
        set(200);
        std::thread::sleep(Duration::from_millis(600));
        set(0);
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(aws.weights(), weights_of(&aws, 0, 100), "the canary went on to 100 %");
    let spiked = stderr.lines().filter(|l| l.contains(r#""value":0.2},"outcome":"failed","counted":false"#)).count();
    assert!(spiked >= 1, "the spike was read, and not counted: {stderr}");
}

#[test]
fn a_sustained_spike_during_a_pause_stops_the_canary_at_once_and_restores_the_weights() {
    let aws = Aws::start();
    let out = canary_with_background_analysis(&aws, |set| set(200));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(aws.weights(), weights_of(&aws, 100, 0), "the original weights, read back with boto3");
    let result = stdout_json(&out);
    let message = result["error"]["message"].as_str().unwrap();
    // Stopped by the background metric inside the pause, once the spike had held 2 s, not at the gates.
    let why = "gate failed at 50%: background analysis during the pause: error-rate: 0.2, failure > 0.01: met for ";
    assert!(message.contains(why) && message.contains(" of 2s [failed 1 of limit 0"), "{message}");
}

#[test]
fn an_analysis_gate_tolerates_its_failure_limit_then_fails_the_stage_and_restores_the_weights() {
    let aws = Aws::start();
    let rate = ErrorRate::start();
    rate.set(0.2);
    let metric = serde_json::json!([{
        "name": "error-rate",
        "source": {"provider": "web", "url": format!("{}/", rate.origin), "json_path": "error_rate"},
        "rules": {"failure": {"op": ">", "value": 0.01}, "failure_limit": 1}
    }]);
    let extra = [
        "stages=[50, 100]".to_string(),
        "pause_ms=0".to_string(),
        r#"window={"samples": 3, "interval_ms": 100}"#.to_string(),
        format!("analysis={metric}"),
    ];
    let out = shift(&aws, &aws.get("secret_key"), &[&rate.origin], &extra);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(aws.weights(), weights_of(&aws, 100, 0), "the original weights, read back with boto3");
    let message = stdout_json(&out)["error"]["message"].as_str().unwrap().to_string();
    // The first failed sample is within failure_limit 1; the second fails the stage.
    assert!(message.contains("gate failed at 50%: sample 2: error-rate gate: 0.2 ("), "{message}");
    assert!(message.contains("[failed 2 of limit 1"), "{message}");
}

#[test]
fn a_replay_with_a_stricter_threshold_names_the_stage_it_would_have_stopped_at_and_the_report_draws_every_reading() {
    let aws = Aws::start();
    let rate = ErrorRate::start();
    rate.set(0.001);
    let dir = tempfile::tempdir().unwrap();
    // A background error rate under its 1 % trigger all through: 0.1 % at 25 %, 0.4 % from 50 %.
    let with = format!(
        "stages: [25, 50, 100]\n      pause_ms: 3000\n      analysis_interval_ms: 250\n      target_health: false\n      \
         analysis: [{{ name: error-rate, source: {{ provider: web, url: \"{}/\", json_path: error_rate }}, \
         rules: {{ failure: {{ op: \">\", value: 0.01 }}, for: 1s }}, background: true }}]",
        rate.origin
    );
    std::fs::write(dir.path().join("canary.yaml"), canary_yaml_with(&aws, &with, &[&rate.origin])).unwrap();
    let out = std::thread::scope(|scope| {
        let run = scope.spawn(|| gantry_aws(dir.path(), &aws, &["run", "canary.yaml", "--json"]).output().unwrap());
        let at_50 = |j: &[serde_json::Value]| j.iter().any(|e| e["message"] == "stage 50%: green weight 50, blue 50");
        let until = Instant::now() + Duration::from_secs(300);
        while !at_50(&journal(dir.path())) {
            assert!(Instant::now() < until && !run.is_finished(), "the canary never reached 50 %");
            std::thread::sleep(Duration::from_millis(20));
        }
        rate.set(0.004);
        run.join().unwrap()
    });
    expect_code(&out, 0);
    assert_eq!(aws.weights(), weights_of(&aws, 0, 100), "the canary went on to 100 %");
    let id = run_id(dir.path());
    let readings = journal(dir.path())
        .iter()
        .filter(|e| e["event"] == "log" && e["message"].as_str().is_some_and(|m| m.starts_with("reading {")))
        .count();
    assert!(readings >= 3 * 3, "every pause read the metric every 250 ms: {readings}");

    // As recorded, nothing decides; a 0.3 % trigger would have stopped the canary at 50 %.
    let replay = |args: &[&str]| {
        let out = gantry_aws(dir.path(), &aws, &[&["analysis", "replay", &id][..], args].concat()).output().unwrap();
        expect_code(&out, 0);
        out
    };
    let same = stdout_json(&replay(&["--json"]));
    assert!(same["replay"]["replayed"].is_null() && same["replay"]["recorded"].is_null(), "{same}");
    let stricter_spec = "rules:\n  error-rate:\n    failure: { op: \">\", value: 0.003 }\n";
    std::fs::write(dir.path().join("stricter.yaml"), stricter_spec).unwrap();
    let stricter = stdout_json(&replay(&["--spec", "stricter.yaml", "--json"]));
    let first = &stricter["replay"]["replayed"];
    assert_eq!((&first["step"], &first["metric"]), (&"shift".into(), &"error-rate".into()), "{stricter}");
    assert_eq!((&first["phase"], &first["stage"], &first["value"]), (&"failed".into(), &50.into(), &0.004.into()));
    assert_eq!(stricter["replay"]["watches"][0]["readings"], readings, "one background watch read them all");
    let text = String::from_utf8_lossy(&replay(&["--spec", "stricter.yaml"]).stdout).into_owned();
    assert!(text.contains("the first decision would have been: shift/error-rate failed at stage 50% (reading "), "{text}");
    std::fs::write(dir.path().join("typo.yaml"), stricter_spec.replace("error-rate", "eror-rate")).unwrap();
    let out = gantry_aws(dir.path(), &aws, &["analysis", "replay", &id, "--spec", "typo.yaml"]).output().unwrap();
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("metric `eror-rate` is not in this run (it has: error-rate)"));

    // The report draws the metric's every reading against its 1 % threshold.
    let out = gantry_aws(dir.path(), &aws, &["report", &id, "--html", "report.html"]).output().unwrap();
    expect_code(&out, 0);
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg class=\"metric\" data-step=\"shift\" data-metric=\"error-rate\""), "{html}");
    assert!(html.contains("class=\"threshold failure\" data-value=\"0.01\""), "{html}");
    assert_eq!(html.matches("<circle class=\"reading o-successful\"").count(), readings, "{html}");
    // Loaded in Chromium: no console message, the chart in the page it built.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("report.html").display());
    let loaded = crate::report::chromium(profile.path(), &url, &["--dump-dom"]);
    assert_eq!(crate::report::console(&loaded), Vec::<String>::new(), "console messages while loading the report");
    let dom = String::from_utf8_lossy(&loaded.stdout);
    assert!(dom.contains("data-ready=\"true\"") && dom.contains("data-metric=\"error-rate\""), "{dom}");
}

/// The pre-flight against moto and Prometheus: a background metric that cannot be read stops the
/// run with exit 7 before any `ModifyListener` (weights read back with boto3); a run killed while
/// a metric hangs reads again when resumed; with Prometheus up it passes and the canary runs;
/// `--skip-preflight` is journaled with who asked.
#[test]
fn a_metric_that_cannot_be_read_stops_the_canary_in_its_preflight_before_any_weight_changes() {
    use serde_json::Value;
    let aws = Aws::start();
    let original = weights_of(&aws, 100, 0);
    assert_eq!(aws.weights(), original);
    let modifies = |j: &[Value]| j.iter().filter(|e| e["event"] == "request" && e["action"] == "ModifyListener").count();
    let write = |dir: &std::path::Path, metrics_at: &str| {
        let with = format!(
            "pause_ms: 0\n      target_health: false\n      analysis: [{{ name: error-rate, background: true, \
             source: {{ provider: prometheus, address: \"{metrics_at}\", query: canary_error_ratio }} }}]"
        );
        let file = dir.join("canary.yaml");
        std::fs::write(&file, canary_yaml_with(&aws, &with, &[metrics_at])).unwrap();
        file.to_str().unwrap().to_string()
    };
    let checks = |j: &[Value]| -> Vec<Value> {
        j.iter().filter(|e| e["event"] == "preflight_checked").flat_map(|e| e["checks"].as_array().cloned().unwrap()).collect()
    };

    // Prometheus down: nothing listens on its port.
    let down = format!("http://127.0.0.1:{}", crate::peers::free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), &down);
    let out = gantry_aws(dir.path(), &aws, &["run", &file]).output().unwrap();
    expect_code(&out, 7);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the pre-flight found") && stderr.contains("shift: background metric error-rate: "), "{stderr}");
    assert_eq!(aws.weights(), original, "no weight changed");
    let j = journal(dir.path());
    assert_eq!(modifies(&j), 0);
    assert!(!j.iter().any(|e| e["event"] == "step_started"), "no step ran");
    assert!(j.iter().any(|e| e["event"] == "phase" && e["phase"] == "preflight"));
    let found = checks(&j);
    let named = |name: &str| found.iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| panic!("{name}: {found:?}"));
    assert_eq!(named("listener")["passed"], true, "DescribeListeners read through POST in the pre-flight");
    assert_eq!(named("green target group")["passed"], true);
    assert_eq!(named("background metric error-rate")["passed"], false);
    assert_eq!(j.last().unwrap()["status"], "preflight-failed");
    let id = run_id(dir.path());
    let listed = String::from_utf8_lossy(&gantry_in(dir.path(), &["runs"]).stdout).to_string();
    assert!(listed.contains("preflight-failed"), "{listed}");
    let out = gantry_aws(dir.path(), &aws, &["resume", &id]).output().unwrap();
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped at its pre-flight and changed nothing"));

    // Prometheus hung (takes connections, never answers): killed while the pre-flight waits, the
    // run is resumed once Prometheus is gone, reads again, and still changes nothing.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_at = format!("http://127.0.0.1:{}", hung.local_addr().unwrap().port());
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), &hung_at);
    let mut cmd = gantry_aws(dir.path(), &aws, &["run", &file]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let reading = || journal(dir.path()).iter().any(|e| e["event"] == "phase" && e["phase"] == "preflight");
    let mut child = spawn_until(&mut cmd, "the pre-flight", reading);
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(hung);
    let id = run_id(dir.path());
    let out = gantry_aws(dir.path(), &aws, &["resume", &id]).output().unwrap();
    expect_code(&out, 7);
    let j = journal(dir.path());
    assert!(j.iter().any(|e| e["event"] == "preflight_checked" && e["session"] == 2), "the resume read again");
    assert_eq!(modifies(&j), 0);
    assert_eq!(aws.weights(), original);

    // Prometheus up: every read answers, the pre-flight passes and the canary runs to 100 %.
    let metrics = aws.metrics(false);
    let dir = tempfile::tempdir().unwrap();
    let prom = prometheus(&metrics, dir.path());
    wait_for_data(&prom.origin, "canary_error_ratio");
    let file = write(dir.path(), &prom.origin);
    let out = gantry_aws(dir.path(), &aws, &["run", &file]).output().unwrap();
    expect_code(&out, 0);
    let j = journal(dir.path());
    let found = checks(&j);
    assert!(found.iter().all(|c| c["passed"] == true) && found.len() == 4, "{found:?}");
    assert!(found.iter().any(|c| c["name"] == "background metric error-rate" && c["answer"].as_str().unwrap().starts_with("reads ")));
    assert_eq!(modifies(&j), 4, "one per stage, none in the pre-flight");
    assert_eq!(aws.weights(), weights_of(&aws, 0, 100));

    // --skip-preflight, Prometheus down again: nothing is read first, and the journal says who chose it.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), &down);
    let out = gantry_aws(dir.path(), &aws, &["run", &file, "--skip-preflight"]).env("GANTRY_USER", "ana").output().unwrap();
    expect_code(&out, 0);
    let j = journal(dir.path());
    let skipped = j.iter().find(|e| e["event"] == "preflight_skipped").expect("journaled");
    assert_eq!(skipped["reason"], "--skip-preflight by ana");
    assert!(checks(&j).is_empty() && !j.iter().any(|e| e["phase"] == "preflight"));
}
