//! `ecs-deploy` against moto's ECS with signatures on: the blue-green swap of
//! two services, its rollback after a later failure, and `gantry rollback`
//! after `kill -9` mid-release — each time the services read back with boto3.

use crate::peers::Aws;
use crate::support::*;
use serde_json::Value;
use std::path::Path;

/// deploy-green (web:2 × 2) → [hold] → scale-blue-down (× 0) → [smoke, failing].
fn release(aws: &Aws, hold_ms: Option<u64>, failing_smoke: bool) -> String {
    let moto = &aws.moto.origin;
    let ecs = |id: &str, needs: &str, with: &str| {
        format!(
            "  - id: {id}\n    uses: {plugin}\n    needs: [{needs}]\n    network: [\"{moto}\"]\n    secrets: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]\n    with: {{ endpoint: \"{moto}/\", cluster: prod, poll_ms: 100, {with} }}\n",
            plugin = repo().join("plugins/ecs-deploy").display()
        )
    };
    let misbehave = repo().join("tests/plugins/misbehave");
    let mut yaml = format!(
        "name: blue-green\nsecrets:\n  AWS_ACCESS_KEY_ID: {{ from: \"env:TEST_AWS_KEY\", bind: [\"{moto}\"] }}\n  AWS_SECRET_ACCESS_KEY: {{ from: \"env:TEST_AWS_SECRET\", bind: [\"{moto}\"] }}\nsteps:\n"
    );
    yaml += &ecs("deploy-green", "", "service: web-green, image: \"web:2\", desired_count: 2");
    let mut last = "deploy-green";
    if let Some(ms) = hold_ms {
        yaml += &format!("  - id: hold\n    uses: {}\n    needs: [deploy-green]\n    timeout: 2m\n    with: {{ action: sleep, ms: {ms} }}\n", misbehave.display());
        last = "hold";
    }
    yaml += &ecs("scale-blue-down", last, "service: web-blue, desired_count: 0");
    if failing_smoke {
        yaml += &format!("  - id: smoke\n    uses: {}\n    needs: [scale-blue-down]\n    with: {{ action: fail, message: smoke test failed }}\n", misbehave.display());
    }
    yaml
}

fn env(aws: &Aws) -> [(String, String); 2] {
    [("TEST_AWS_KEY".into(), aws.get("access_key")), ("TEST_AWS_SECRET".into(), aws.get("secret_key"))]
}

fn run(dir: &Path, aws: &Aws, yaml: &str) -> std::process::Output {
    let env = env(aws);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run_pipeline(dir, yaml, &env, &[])
}

/// `(image, desired, running)` of a service, read with boto3.
fn service(state: &Value, name: &str) -> (String, u64, u64) {
    let s = &state[name];
    (s["image"].as_str().unwrap().to_string(), s["desired"].as_u64().unwrap(), s["running"].as_u64().unwrap())
}

fn start() -> (Aws, Value) {
    let aws = Aws::start();
    let setup = aws.boto3("ecs-setup");
    let before = aws.boto3("ecs-state");
    assert_eq!(service(&before, "web-blue"), ("web:1".into(), 2, 2));
    assert_eq!(service(&before, "web-green"), ("web:1".into(), 0, 0));
    (aws, setup)
}

#[test]
fn a_blue_green_swap_lands_exactly_and_a_second_run_changes_nothing() {
    let (aws, _) = start();
    let dir = tempfile::tempdir().unwrap();
    let yaml = release(&aws, None, false);
    let out = run(dir.path(), &aws, &yaml);
    expect_code(&out, 0);
    let after = aws.boto3("ecs-state");
    assert_eq!(service(&after, "web-green"), ("web:2".into(), 2, 2));
    assert_eq!(service(&after, "web-blue"), ("web:1".into(), 0, 0));
    let green_td = after["web-green"]["task_definition"].clone();

    let dir = tempfile::tempdir().unwrap();
    let again = run(dir.path(), &aws, &yaml);
    expect_code(&again, 0);
    let events: Vec<Value> =
        String::from_utf8_lossy(&again.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let changed: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .map(|e| e["outputs"]["changed"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["false", "false"], "nothing left to do");
    assert_eq!(aws.boto3("ecs-state")["web-green"]["task_definition"], green_td, "no new revision either");
}

#[test]
fn a_failure_after_the_swap_restores_both_services_from_their_checkpoints() {
    let (aws, setup) = start();
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &aws, &release(&aws, None, true));
    expect_code(&out, 1);
    let after = aws.boto3("ecs-state");
    assert_eq!(service(&after, "web-blue"), ("web:1".into(), 2, 2));
    assert_eq!(service(&after, "web-green"), ("web:1".into(), 0, 0));
    assert_eq!(after["web-green"]["task_definition"], setup["task_definition"], "the exact revision it ran before");
    let j = journal(dir.path());
    let undone: Vec<&str> =
        j.iter().filter(|e| e["event"] == "rolled_back").map(|e| e["step"].as_str().unwrap()).collect();
    assert_eq!(undone, ["scale-blue-down", "deploy-green"]);
}

#[test]
fn kill_9_mid_release_then_rollback_restores_what_ran_before() {
    let (aws, setup) = start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, release(&aws, Some(60_000), false)).unwrap();
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir.path()).args(["run", file.to_str().unwrap()]);
    for (k, v) in env(&aws) {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = spawn_until(&mut cmd, "the hold after deploy-green", || {
        journal(dir.path()).iter().any(|e| e["event"] == "step_started" && e["step"] == "hold")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let mid = aws.boto3("ecs-state");
    assert_eq!(service(&mid, "web-green"), ("web:2".into(), 2, 2), "killed after green was deployed");
    assert_eq!(service(&mid, "web-blue"), ("web:1".into(), 2, 2), "and before blue was scaled down");

    let mut rollback = command(&shared_cache());
    rollback.current_dir(dir.path()).args(["rollback", &run_id(dir.path())]);
    for (k, v) in env(&aws) {
        rollback.env(k, v);
    }
    let out = rollback.output().unwrap();
    expect_code(&out, 0);
    let after = aws.boto3("ecs-state");
    assert_eq!(service(&after, "web-green"), ("web:1".into(), 0, 0));
    assert_eq!(after["web-green"]["task_definition"], setup["task_definition"]);
    assert_eq!(service(&after, "web-blue"), ("web:1".into(), 2, 2), "blue was never touched");
    assert_eq!(journal(dir.path()).last().unwrap()["status"], "rolled-back");
}

/// deploy-green (web:2 × 2) watched for 600 ms by green's CPU in CloudWatch (under 70 %), then
/// scale-blue-down.
fn baked_release(aws: &Aws) -> String {
    let moto = &aws.moto.origin;
    let cpu = format!(
        "[{{ name: cpu, source: {{ provider: cloudwatch, endpoint: \"{moto}/\", region: us-east-1, namespace: AWS/ECS, metric: CPUUtilization, dimensions: {{ ClusterName: prod, ServiceName: web-green }} }}, rules: {{ success: {{ op: \"<\", value: 70 }} }} }}]"
    );
    release(aws, None, false).replacen(
        "desired_count: 2 }",
        &format!("desired_count: 2, analysis: {cpu}, analysis_ms: 600, analysis_interval_ms: 200 }}"),
        1,
    )
}

fn cpu_readings(dir: &Path) -> Vec<f64> {
    journal(dir)
        .iter()
        .filter_map(|e| e["message"].as_str()?.strip_prefix("reading ").map(|j| serde_json::from_str::<Value>(j).unwrap()))
        .filter_map(|r| r["judged"]["reading"]["value"].as_f64())
        .collect()
}

#[test]
fn a_deploy_whose_bake_time_analysis_fails_restores_the_service_and_the_run_rolls_back() {
    let (aws, setup) = start();
    aws.boto3_with("put-metrics", &["--cpu", "85", "--memory", "40"]);
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &aws, &baked_release(&aws));
    expect_code(&out, 1);
    let after = aws.boto3("ecs-state");
    assert_eq!(service(&after, "web-green"), ("web:1".into(), 0, 0), "green restored by the step itself");
    assert_eq!(after["web-green"]["task_definition"], setup["task_definition"]);
    assert_eq!(service(&after, "web-blue"), ("web:1".into(), 2, 2), "blue never scaled down");
    assert_eq!(cpu_readings(dir.path()), [85.0], "the first reading decided");
    let failed = journal(dir.path()).into_iter().find(|e| e["event"] == "step_failed").unwrap().to_string();
    assert!(failed.contains("analysis failed: cpu: 85, success < 70: not met") && failed.contains("restored web-green"), "{failed}");
}

#[test]
fn a_bake_time_without_data_pauses_with_green_deployed_and_resume_reads_again_and_goes_on() {
    let (aws, _) = start();
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &aws, &baked_release(&aws));
    expect_code(&out, 4);
    let paused = aws.boto3("ecs-state");
    assert_eq!(service(&paused, "web-green"), ("web:2".into(), 2, 2), "green stays deployed for a person to decide");
    assert_eq!(service(&paused, "web-blue"), ("web:1".into(), 2, 2));

    // The data arrives; the person resumes: the deploy has nothing to change, its bake time reads again.
    aws.boto3_with("put-metrics", &["--cpu", "35", "--memory", "40"]);
    let mut resume = command(&shared_cache());
    resume.current_dir(dir.path()).args(["resume", &run_id(dir.path())]);
    for (k, v) in env(&aws) {
        resume.env(k, v);
    }
    expect_code(&resume.output().unwrap(), 0);
    let after = aws.boto3("ecs-state");
    assert_eq!(service(&after, "web-green"), ("web:2".into(), 2, 2));
    assert_eq!(service(&after, "web-blue"), ("web:1".into(), 0, 0));
    let values = cpu_readings(dir.path());
    assert!(values.len() >= 3 && values.iter().all(|v| *v == 35.0), "read through the 600 ms bake time: {values:?}");
}

#[test]
fn kill_9_during_the_bake_time_then_resume_watches_again_or_killed_again_then_rollback_restores() {
    for then in ["resume", "rollback"] {
        let (aws, setup) = start();
        aws.boto3_with("put-metrics", &["--cpu", "35", "--memory", "40"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.yaml");
        std::fs::write(&file, baked_release(&aws).replace("analysis_ms: 600", "analysis_ms: 5000")).unwrap();
        let gantry = |args: &[&str]| {
            let mut cmd = command(&shared_cache());
            cmd.current_dir(dir.path()).args(args);
            for (k, v) in env(&aws) {
                cmd.env(k, v);
            }
            cmd
        };
        let kill_at = |cmd: &mut std::process::Command, readings: usize| {
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            let mut child = spawn_until(cmd, "bake-time readings", || cpu_readings(dir.path()).len() >= readings);
            child.kill().unwrap();
            child.wait().unwrap();
        };
        kill_at(&mut gantry(&["run", file.to_str().unwrap()]), 2);
        assert_eq!(service(&aws.boto3("ecs-state"), "web-green"), ("web:2".into(), 2, 2), "{then}: killed while baking");
        let id = run_id(dir.path());
        if then == "resume" {
            // The interrupted deploy is undone from its checkpoint, deployed again and baked its 5 s again.
            expect_code(&gantry(&["resume", &id]).output().unwrap(), 0);
            let after = aws.boto3("ecs-state");
            assert_eq!(service(&after, "web-green"), ("web:2".into(), 2, 2));
            assert_eq!(service(&after, "web-blue"), ("web:1".into(), 0, 0), "the release went on");
            assert!(cpu_readings(dir.path()).len() >= 10, "the resumed deploy watched again");
        } else {
            // The resume is killed in its own bake time; the rollback that follows restores green.
            let before = cpu_readings(dir.path()).len();
            kill_at(&mut gantry(&["resume", &id]), before + 2);
            expect_code(&gantry(&["rollback", &id]).output().unwrap(), 0);
            let after = aws.boto3("ecs-state");
            assert_eq!(service(&after, "web-green"), ("web:1".into(), 0, 0));
            assert_eq!(after["web-green"]["task_definition"], setup["task_definition"], "the exact revision it ran");
            assert_eq!(service(&after, "web-blue"), ("web:1".into(), 2, 2), "blue never touched");
        }
    }
}
