//! `aws-credentials:` end to end: the AWS SDK's chain read by the real binary, credentials that
//! expire during a canary renewed before they do, and a rollback signed with fresh ones. moto's STS
//! mints the credentials (a stand-in serves them as ECS's and IMDSv2's endpoints do) and revokes
//! each at its expiry, so a host that signed with expired ones would be refused; the weights are
//! read back with boto3.

use crate::peers::{get, spawn, venv, Aws, Peer};
use crate::support::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How long each credential the stand-in serves lives, in seconds.
const LIFE: u64 = 6;

/// The stand-in credential endpoint in front of `aws`'s moto, minting credentials that live `life` s.
fn credentials(aws: &Aws, life: u64) -> Peer {
    let make = |port: u16| {
        let mut cmd = Command::new(venv("python"));
        cmd.arg(repo().join("tests/peers/aws.py")).arg("credentials");
        cmd.args(["--endpoint", &aws.moto.origin, "--key", &aws.get("access_key"), "--secret", &aws.get("secret_key")]);
        cmd.args(["--life", &life.to_string(), "--port", &port.to_string()]);
        cmd
    };
    spawn(make, "/served", |status, body| status == 200 && body.contains("revoked"))
}

/// What the stand-in served so far: how many credentials, how many revoked.
fn served(creds: &Peer) -> (u64, u64) {
    let (_, body) = get(&creds.origin, "/served").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (v["n"].as_u64().unwrap(), v["revoked"].as_u64().unwrap())
}

/// A `gantry` command whose only AWS credentials are what the chain finds through `env`.
fn gantry_chain(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = command(&shared_cache());
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN"] {
        cmd.env_remove(var);
    }
    let (config, credentials) = (dir.join("aws-config-empty"), dir.join("aws-credentials-empty"));
    std::fs::write(&config, "").unwrap();
    std::fs::write(&credentials, "").unwrap();
    cmd.current_dir(dir)
        .env("AWS_CONFIG_FILE", config)
        .env("AWS_SHARED_CREDENTIALS_FILE", credentials)
        .envs(env.iter().copied())
        .args(args);
    cmd
}

/// The ECS container endpoint the chain reads credentials from.
fn ecs_uri(creds: &Peer) -> String {
    format!("{}/creds", creds.origin)
}

/// A canary of `stages`, `pause_ms` each, signed with `source`'s credential set, and `after` steps.
fn canary(aws: &Aws, moto: &str, source: &str, stages: &str, pause_ms: u64, after: &str) -> String {
    format!(
        r#"name: canary-credentials
secrets:
  AWS: {{ from: "{source}", bind: ["{moto}"] }}
steps:
  - id: shift
    uses: {plugin}
    network: ["{moto}"]
    secrets: [AWS]
    timeout: 2m
    with:
      endpoint: "{moto}/"
      listener_arn: "{listener}"
      blue_target_group_arn: "{blue}"
      green_target_group_arn: "{green}"
      stages: {stages}
      pause_ms: {pause_ms}
      target_health: false
{after}"#,
        plugin = plugin("plugins/alb-shift").display(),
        listener = aws.get("listener"),
        blue = aws.get("blue"),
        green = aws.get("green"),
    )
}

fn write(dir: &Path, yaml: &str) -> String {
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    file.to_string_lossy().into_owned()
}

fn weights(aws: &Aws, blue: u64, green: u64) -> Vec<(String, u64)> {
    vec![(aws.get("blue"), blue), (aws.get("green"), green)]
}

/// The journal's `aws_credentials` events.
fn credential_events(dir: &Path) -> Vec<serde_json::Value> {
    journal(dir).into_iter().filter(|e| e["event"] == "aws_credentials").collect()
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_canary_that_outlives_its_credentials_renews_them_and_completes() {
    let aws = Aws::start();
    let creds = credentials(&aws, LIFE);
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), &canary(&aws, &aws.moto.origin, "aws-credentials:", "[25, 50, 100]", 3000, ""));
    let uri = ecs_uri(&creds);
    let env = [("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str())];
    let out = gantry_chain(dir.path(), &env, &["run", &file]).output().unwrap();
    ok(&out);
    assert_eq!(aws.weights(), weights(&aws, 0, 100), "read back with boto3: all traffic on green");
    let (minted, revoked) = served(&creds);
    assert!(minted >= 2 && revoked >= 1, "the first credentials expired during the canary: {minted} served, {revoked} revoked");
    let events = credential_events(dir.path());
    assert_eq!(events[0]["provider"], "EcsContainer", "{events:?}");
    assert!(events[0]["step"].is_null() && events[0]["expires"].is_string(), "read before the first step: {events:?}");
    let renewals: Vec<_> = events.iter().filter(|e| e["step"] == "shift").collect();
    assert!(!renewals.is_empty(), "renewed during the shift: {events:?}");
    assert!(renewals.iter().all(|e| e["provider"] == "EcsContainer" && e["expires"].is_string()));
    let shown = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(shown.contains("shift: AWS credentials `AWS` renewed from EcsContainer, valid until"), "{shown}");
}

#[test]
fn a_failure_after_the_credentials_expired_rolls_back_with_fresh_ones() {
    let aws = Aws::start();
    let creds = credentials(&aws, LIFE);
    let dir = tempfile::tempdir().unwrap();
    let misbehave = repo().join("tests/plugins/misbehave");
    let after = format!(
        "  - id: soak\n    uses: {}\n    needs: [shift]\n    with: {{ action: sleep, ms: {} }}\n{}",
        misbehave.display(),
        LIFE * 1000 + 1500,
        failing_step("smoke", "soak", "post-release check failed")
    );
    let file = write(dir.path(), &canary(&aws, &aws.moto.origin, "aws-credentials:", "[50, 100]", 300, &after));
    let uri = ecs_uri(&creds);
    let env = [("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str())];
    let out = gantry_chain(dir.path(), &env, &["run", &file, "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(aws.weights(), weights(&aws, 100, 0), "the rollback restored the weights, signed with fresh credentials");
    let (_, revoked) = served(&creds);
    assert!(revoked >= 1, "the credentials the shift used had expired and were refused by then");
    let events = journal(dir.path());
    let failed = events.iter().position(|e| e["event"] == "step_failed" && e["step"] == "smoke").unwrap();
    let renewed = events.iter().position(|e| e["event"] == "aws_credentials" && e["step"] == "shift").unwrap();
    let undone = events.iter().position(|e| e["event"] == "rolled_back" && e["step"] == "shift").unwrap();
    assert!(failed < renewed && renewed < undone, "renewed for the rollback, after the failure: {events:?}");
}

#[test]
fn kill_9_mid_canary_then_rollback_after_the_credentials_expired_signs_with_new_ones() {
    let aws = Aws::start();
    let creds = credentials(&aws, LIFE);
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), &canary(&aws, &aws.moto.origin, "aws-credentials:", "[25, 100]", 60_000, ""));
    let uri = ecs_uri(&creds);
    let env = [("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str())];
    let mut cmd = gantry_chain(dir.path(), &env, &["run", &file]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawn_until(&mut cmd, "the 25 % stage", || aws.weights() == weights(&aws, 75, 25));
    child.kill().unwrap();
    child.wait().unwrap();
    // Every credential the killed run held is revoked before the rollback starts.
    let (minted, _) = served(&creds);
    let until = std::time::Instant::now() + Duration::from_secs(LIFE * 3);
    while served(&creds).1 < minted {
        assert!(std::time::Instant::now() < until, "the stand-in revokes at expiry");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = gantry_chain(dir.path(), &env, &["rollback", &run_id(dir.path())]).output().unwrap();
    ok(&out);
    assert_eq!(aws.weights(), weights(&aws, 100, 0), "read back with boto3: the original weights");
    assert!(served(&creds).0 > minted, "the rollback read credentials of its own");
    let last = journal(dir.path()).last().cloned().unwrap();
    assert_eq!(last["status"], "rolled-back");
}

#[test]
fn web_identity_then_a_short_role_session_renews_and_imds_and_ecs_answer_step_run() {
    // moto checks no signature here: with checking on it cannot answer the unsigned
    // AssumeRoleWithWebIdentity. The assumed role's sessions last 4 s, so the canary renews them.
    let moto = Aws::unchecked_moto();
    let aws = Aws::setup_at(moto);
    let role = aws.boto3("roles")["role"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("oidc-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmdhbnRyeSJ9.c2lnbmF0dXJl").unwrap();
    let source = format!("aws-credentials:role={role},duration=4");
    let file = write(dir.path(), &canary(&aws, &aws.moto.origin, &source, "[50, 100]", 3000, ""));
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
        ("AWS_ROLE_ARN", role.as_str()),
        ("AWS_ROLE_SESSION_NAME", "ci"),
        ("AWS_ENDPOINT_URL_STS", aws.moto.origin.as_str()),
    ];
    let out = gantry_chain(dir.path(), &env, &["run", &file]).output().unwrap();
    ok(&out);
    assert_eq!(aws.weights(), weights(&aws, 0, 100));
    let events = credential_events(dir.path());
    assert_eq!(events[0]["provider"], "AssumeRole", "{events:?}");
    assert!(events.iter().any(|e| e["step"] == "shift"), "the 4 s sessions were renewed: {events:?}");
    // Without the token file the chain has nothing, and the run stops before any step, naming why.
    std::fs::remove_file(&token).unwrap();
    let out = gantry_chain(dir.path(), &env, &["run", &file]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret `AWS`") && stderr.contains("WebIdentityToken"), "{stderr}");

    // `gantry step run` reads the same chain: the ECS endpoint, then IMDSv2, each a stand-in on
    // 127.0.0.1 minting credentials that checked moto accepts.
    let checked = Aws::start();
    let creds = credentials(&checked, 60);
    let step = |env: &[(&str, &str)], metadata: bool| {
        let mut cmd = gantry_chain(dir.path(), env, &[]);
        if metadata {
            cmd.env_remove("AWS_EC2_METADATA_DISABLED");
        }
        cmd.args(["step", "run", plugin("plugins/alb-shift").to_str().unwrap(), "--id", "shift", "--json"]);
        for (k, v) in [
            ("endpoint", format!("{}/", checked.moto.origin)),
            ("listener_arn", checked.get("listener")),
            ("blue_target_group_arn", checked.get("blue")),
            ("green_target_group_arn", checked.get("green")),
            ("stages", "[100]".into()),
            ("pause_ms", "0".into()),
            ("target_health", "false".into()),
        ] {
            cmd.args(["--with", &format!("{k}={v}")]);
        }
        cmd.args(["--secret", &format!("AWS=aws-credentials:@{}", checked.moto.origin), "--allow-net", &checked.moto.origin]);
        cmd.output().unwrap()
    };
    let ecs = ecs_uri(&creds);
    ok(&step(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &ecs)], false));
    assert_eq!(checked.weights(), weights(&checked, 0, 100));
    let before = served(&creds).0;
    let out = step(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &creds.origin)], true);
    ok(&out);
    assert_eq!(served(&creds).0, before + 1, "IMDSv2 answered");
    assert_eq!(stdout_json(&out)["outputs"]["changed"], "false", "already at 100 %, read with IMDS credentials");
}

/// A profile whose `credential_process` mints new keys that expire 4 s later, each logged to `minted`.
fn minting_profile(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("mint.sh");
    let minted = dir.join("minted");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
n=$(( $(wc -l < "{minted}" 2>/dev/null || echo 0) + 1 ))
rand=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
key="ASIAMINTED$(printf %06d $n)"; secret="minted-secret-$n-$rand"; token="minted-token-$n-$rand"
echo "$key $secret $token" >> "{minted}"
printf '{{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s","SessionToken":"%s","Expiration":"%s"}}' \
  "$key" "$secret" "$token" "$(date -u -d '+4 seconds' +%Y-%m-%dT%H:%M:%SZ)"
"#,
            minted = minted.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.join("aws-config");
    std::fs::write(&config, format!("[profile ci]\ncredential_process = {}\n", script.display())).unwrap();
    config
}

#[test]
fn a_renewed_key_echoed_by_a_server_is_redacted_in_output_journal_and_report() {
    let echo = CountingServer::start(Reply { status: 200, echo_headers: true, ..Reply::default() });
    let dir = tempfile::tempdir().unwrap();
    let config = minting_profile(dir.path());
    let misbehave = repo().join("tests/plugins/misbehave");
    let call = |id: &str, needs: &str| {
        format!(
            "  - id: {id}\n    uses: {}\n    needs: [{needs}]\n    network: [\"{origin}\"]\n    secrets: [AWS]\n    with: {{ action: http, url: \"{origin}/echo\", aws_service: sts }}\n",
            misbehave.display(),
            origin = echo.origin()
        )
    };
    let yaml = format!(
        "name: echo\nsecrets:\n  AWS: {{ from: \"aws-credentials:profile=ci\", bind: [\"{origin}\"] }}\nsteps:\n{first}  - id: wait\n    uses: {m}\n    needs: [first]\n    with: {{ action: sleep, ms: 3500 }}\n{second}",
        origin = echo.origin(),
        first = call("first", "").replace("    needs: []\n", ""),
        m = misbehave.display(),
        second = call("second", "wait"),
    );
    let file = write(dir.path(), &yaml);
    let config = config.to_string_lossy().into_owned();
    // At `debug`, every crate logs what it does: none may show a credential.
    let env = [("AWS_CONFIG_FILE", config.as_str()), ("GANTRY_LOG", "debug")];
    let out = gantry_chain(dir.path(), &env, &["run", &file, "--json"]).output().unwrap();
    ok(&out);
    let minted: Vec<Vec<String>> = std::fs::read_to_string(dir.path().join("minted"))
        .unwrap()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect();
    assert!(minted.len() >= 2, "renewed once at least: {minted:?}");
    // The second call was signed with the renewed key (the server saw it), and echoed it back.
    let heads = echo.headers();
    let renewed = &minted[minted.len() - 1];
    assert!(heads.last().unwrap().contains(&format!("Credential={}/", renewed[0])), "{heads:?}");
    assert!(heads.last().unwrap().contains(&renewed[2]), "the session token is sent");
    let id = run_id(dir.path());
    let report = dir.path().join("report.html");
    ok(&gantry_chain(dir.path(), &[], &["report", &id, "--html", report.to_str().unwrap()]).output().unwrap());
    let journal_text = std::fs::read_to_string(dir.path().join(".gantry/runs").join(&id).join("journal.jsonl")).unwrap();
    let texts = [
        ("output", String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)),
        ("journal", journal_text.clone()),
        ("report", std::fs::read_to_string(&report).unwrap()),
    ];
    for (what, text) in &texts {
        for value in minted.iter().flatten() {
            assert!(!text.contains(value.as_str()), "{what} shows {value}: {}", text.lines().filter(|l| l.contains(value.as_str())).collect::<Vec<_>>().join("\n"));
        }
    }
    let second = journal(dir.path()).into_iter().find(|e| e["event"] == "step_finished" && e["step"] == "second").unwrap();
    let body = second["outputs"]["body"].as_str().unwrap();
    assert!(body.contains("Credential=***/") && body.contains("x-amz-security-token: ***"), "{body}");
    assert!(journal_text.contains("\"provider\":\"Profile\""), "the profile's credential_process answered");
}

#[test]
fn the_secrets_manager_store_reads_with_the_chains_credentials() {
    let aws = Aws::start();
    aws.put_secret("prod/db", r#"{"password":"pw-from-secrets-manager"}"#);
    let creds = credentials(&aws, 60);
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: store\nsecret_stores:\n  aws: {{ region: us-east-1, endpoint: \"{moto}\", credentials: \"aws-credentials:\" }}\nsecrets:\n  DB: {{ from: \"aws-sm:prod/db#password\", bind: [\"{o}\"] }}\nsteps:\n  - id: use\n    uses: {m}\n    network: [\"{o}\"]\n    secrets: [DB]\n    with: {{ action: http, url: \"{o}/\", bearer: DB }}\n",
        moto = aws.moto.origin,
        o = server.origin(),
        m = repo().join("tests/plugins/misbehave").display(),
    );
    let file = write(dir.path(), &yaml);
    let uri = ecs_uri(&creds);
    let env = [("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str())];
    ok(&gantry_chain(dir.path(), &env, &["run", &file]).output().unwrap());
    assert!(server.headers().join("\n").to_ascii_lowercase().contains("authorization: bearer pw-from-secrets-manager"));
    assert_eq!(served(&creds).0, 1, "the store signed with credentials from the ECS endpoint");
    // Keys and a credential set together are refused, with the line.
    let both = yaml.replace("credentials: \"aws-credentials:\"", "credentials: \"aws-credentials:\", access_key_id: \"env:X\"");
    let out = gantry_chain(dir.path(), &[], &["validate", &write(dir.path(), &both)]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret_stores.aws.credentials: give `credentials` or the key sources"), "{stderr}");
}
