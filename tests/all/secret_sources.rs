//! Secret sources beyond `env:` and `file:`: AWS Secrets Manager (moto's
//! server with signature checking on, the secret created with boto3) and a
//! command's output. Each value is read once per run, before the first step,
//! reaches only its bound origin, and is in no journal or output; a source
//! that fails stops the run before any step, naming the secret and source.

use crate::peers::Aws;
use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const DB_PASSWORD: &str = "sm-pw-4b1d9e";
const TOKEN: &str = "exec-tok-77c2a1";

/// A credential helper: counts its calls in `calls`, prints the token, or fails with the token in its stderr.
fn helper(dir: &Path, fail: bool) -> String {
    let path = dir.join(if fail { "broken-helper" } else { "helper" });
    let body = if fail {
        format!("echo 'vault: permission denied near {TOKEN}' >&2\nexit 7\n")
    } else {
        format!("printf '%s\\n' {TOKEN}\n")
    };
    std::fs::write(&path, format!("#!/bin/sh\necho \"$@\" >> {}/calls\n{body}", dir.display())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn pipeline(dir: &Path, aws: &Aws, server: &CountingServer, token_from: &str) -> String {
    let misbehave = repo().join("tests/plugins/misbehave");
    let step = |id: &str, secret: &str, needs: &str| {
        format!(
            "  - id: {id}\n    uses: {}\n    needs: [{needs}]\n    network: [\"{o}\"]\n    secrets: [{secret}]\n    with: {{ action: http, url: \"{o}/{id}\", bearer: {secret} }}\n",
            misbehave.display(),
            o = server.origin()
        )
    };
    std::fs::write(dir.join("aws-secret-key"), aws.get("secret_key")).unwrap();
    format!(
        "name: sourced\nsecret_stores:\n  aws:\n    region: us-east-1\n    endpoint: \"{endpoint}\"\n    access_key_id: \"env:SM_ACCESS_KEY\"\n    secret_access_key: \"file:{dir}/aws-secret-key\"\nsecrets:\n  DB: {{ from: \"aws-sm:prod/db#password\", bind: [\"{o}\"] }}\n  TOKEN: {{ from: \"{token_from}\", bind: [\"{o}\"] }}\nsteps:\n{}{}{}",
        step("a", "DB", ""),
        step("b", "TOKEN", ""),
        step("c", "TOKEN", "a"),
        endpoint = aws.moto.origin,
        dir = dir.display(),
        o = server.origin()
    )
}

fn everything(dir: &Path, out: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for entry in walk(&dir.join(".gantry")) {
        text += &String::from_utf8_lossy(&std::fs::read(entry).unwrap());
    }
    text
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

#[test]
fn aws_secrets_manager_and_exec_sources_are_read_once_and_reach_only_their_origin() {
    let aws = Aws::start();
    aws.put_secret("prod/db", &format!(r#"{{"username":"app","password":"{DB_PASSWORD}"}}"#));
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let token_from = format!("exec:{} kv get -field=token secret/deploy", helper(dir.path(), false));
    let yaml = pipeline(dir.path(), &aws, &server, &token_from);
    let out = run_pipeline(dir.path(), &yaml, &[("SM_ACCESS_KEY", &aws.get("access_key"))], &[]);
    expect_code(&out, 0);
    let headers = server.headers().join("\n").to_ascii_lowercase();
    assert!(headers.contains(&format!("authorization: bearer {DB_PASSWORD}")), "{headers}");
    assert_eq!(headers.matches(&format!("authorization: bearer {TOKEN}")).count(), 2, "{headers}");
    // Two steps use the command's value; it ran once, with its arguments as given (no shell).
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(calls, "kv get -field=token secret/deploy\n");
    let all = everything(dir.path(), &out);
    assert!(!all.contains(DB_PASSWORD) && !all.contains(TOKEN), "a value leaked into the output or the run store");
}

#[test]
fn a_failing_source_stops_the_run_before_the_first_step_naming_secret_and_source() {
    let aws = Aws::start();
    aws.put_secret("prod/db", &format!(r#"{{"password":"{DB_PASSWORD}"}}"#));
    let server = CountingServer::start(Reply::text(200, "ok"));

    // A wrong secret access key: moto refuses the signature.
    let dir = tempfile::tempdir().unwrap();
    let token_from = format!("exec:{}", helper(dir.path(), false));
    let yaml = pipeline(dir.path(), &aws, &server, &token_from);
    std::fs::write(dir.path().join("pipeline.yaml"), &yaml).unwrap();
    std::fs::write(dir.path().join("aws-secret-key"), "not-the-key").unwrap();
    let mut cmd = command(&shared_cache());
    let file = dir.path().join("pipeline.yaml");
    cmd.current_dir(dir.path()).env("SM_ACCESS_KEY", aws.get("access_key")).args(["run", file.to_str().unwrap()]);
    let out = cmd.output().unwrap();
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret `DB`: aws-sm:prod/db#password: GetSecretValue answered 403"), "{stderr}");
    assert_eq!(server.hits(), 0, "no step ran");
    assert!(!journal(dir.path()).iter().any(|e| e["event"] == "step_started"));

    // A key the secret does not have.
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline(dir.path(), &aws, &server, &token_from).replace("#password", "#pasword");
    let out = run_pipeline(dir.path(), &yaml, &[("SM_ACCESS_KEY", &aws.get("access_key"))], &[]);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the secret's JSON has no key `pasword`"), "{out:?}");

    // A helper that fails: its stderr is shown, redacted of what it printed; nothing ran.
    let dir = tempfile::tempdir().unwrap();
    let broken = format!("exec:{}", helper(dir.path(), true));
    let yaml = pipeline(dir.path(), &aws, &server, &broken);
    let out = run_pipeline(dir.path(), &yaml, &[("SM_ACCESS_KEY", &aws.get("access_key"))], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("secret `TOKEN`: {broken}: it failed (exit status: 7)")), "{stderr}");
    assert!(stderr.contains("vault: permission denied"), "{stderr}");
    assert_eq!(server.hits(), 0, "no step ran");

    // An aws-sm: source without a store is refused at validation, with its line.
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline(dir.path(), &aws, &server, &token_from);
    let start = yaml.find("secret_stores:").unwrap();
    let end = yaml.find("secrets:\n").unwrap();
    let out = run_pipeline(dir.path(), &(yaml[..start].to_string() + &yaml[end..]), &[], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pipeline.yaml:3:") && stderr.contains("secrets.DB.from"), "{stderr}");
    assert!(stderr.contains("needs `secret_stores.aws`"), "{stderr}");
}

/// The journal records the plan redacted, so a plan that carries a secret's value (here in a step's
/// input) would resume and roll back as a different plan: the run is refused before the first step.
#[test]
fn a_secret_value_written_into_the_pipeline_is_refused_before_the_first_step() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let misbehave = repo().join("tests/plugins/misbehave");
    let yaml = format!(
        "name: literal\nsecrets:\n  TOKEN: {{ from: \"env:TOKEN\", bind: [\"{o}\"] }}\nsteps:\n  - id: a\n    uses: {}\n    network: [\"{o}\"]\n    secrets: [TOKEN]\n    with: {{ action: http, url: \"{o}/{TOKEN}\", bearer: TOKEN }}\n",
        misbehave.display(),
        o = server.origin()
    );
    let out = run_pipeline(dir.path(), &yaml, &[("TOKEN", TOKEN)], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret `TOKEN`: its value appears in the plan"), "{stderr}");
    assert_eq!(server.hits(), 0, "no step ran");
    assert!(!journal(dir.path()).iter().any(|e| e["event"] == "step_started"));
    assert!(!everything(dir.path(), &out).contains(TOKEN), "the value leaked into the output or the run store");
}
