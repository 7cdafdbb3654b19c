//! `compliance-audit` end to end: realistic good and bad configuration
//! directories granted read-only through `files:`, reports written to the
//! step's artifacts directory, through `gantry run` in each environment.

use crate::support::*;
use serde_json::Value;
use std::path::Path;

/// Runs a one-step audit pipeline over `fixture` for `env`; returns the output and the run directory.
fn audit(dir: &Path, fixture: &str, env: &str) -> (std::process::Output, std::path::PathBuf) {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let src = repo().join("tests/fixtures/compliance").join(fixture);
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), config.join(entry.file_name())).unwrap();
    }
    let yaml = format!(
        r#"name: audit
environments:
  development: {{}}
  production: {{}}
steps:
  - id: audit
    uses: {plugin}
    files: [config]
    artifacts: true
    with:
      paths: [/config]
      rules:
        - {{ id: ORG-PORT, path: server.port, op: equals, value: 8443, severity: medium, controls: ["SOC2 CC6.6"] }}
"#,
        plugin = repo().join("plugins/compliance-audit").display()
    );
    let file = dir.join("audit.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = gantry_in(dir, &["run", file.to_str().unwrap(), "--env", env, "--json"]);
    let runs = dir.join(".gantry/runs");
    let mut all: Vec<_> = std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().path()).collect();
    all.sort();
    (out, all.pop().unwrap())
}

fn events(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_bad_production_config_fails_with_located_findings_and_sarif_and_junit_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (out, run) = audit(dir.path(), "bad", "production");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let failed = events(&out).into_iter().find(|e| e["event"] == "step_failed").unwrap();
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("/config/.env: AWS_ACCESS_KEY_ID: holds an AWS access key id in plain text"), "{error}");

    let sarif: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("artifacts/audit/compliance.sarif")).unwrap()).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    let mut found: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["ruleId"].as_str().unwrap(),
                r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"].as_str().unwrap()
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "GA-AUDIT-LOG logging.audit.enabled",
            "GA-BACKUP database.backup.retention_days",
            "GA-CORS cors.allowed_origins",
            "GA-DEBUG DEBUG",
            "GA-DEBUG logging.level",
            "GA-ENC-REST database.encrypted",
            "GA-ENC-TRANSIT database.ssl_mode",
            "GA-ENC-TRANSIT server.tls.enabled",
            "GA-INGRESS security_groups[0].ingress[0].cidr",
            "GA-JWT-EXPIRY auth.jwt.expires_in",
            "GA-RATE-LIMIT api.rate_limit.enabled",
            "GA-SECRETS AWS_ACCESS_KEY_ID",
            "GA-SECRETS STRIPE_SECRET",
            "GA-SECRETS database.password",
            "ORG-PORT server.port",
        ]
    );
    let rules = sarif["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap();
    let backup = rules.iter().find(|r| r["id"] == "GA-BACKUP").unwrap();
    assert!(backup["properties"]["tags"].as_array().unwrap().contains(&Value::from("HIPAA 164.308(a)(7)(ii)(A)")));
    let junit = std::fs::read_to_string(run.join("artifacts/audit/compliance-junit.xml")).unwrap();
    assert!(junit.contains("tests=\"11\" failures=\"11\""), "{junit}");
    // The plugin saw the files read-only: the fixture is unchanged and nothing else was written next to it.
    assert_eq!(std::fs::read_dir(dir.path().join("config")).unwrap().count(), 3);
}

#[test]
fn production_only_rules_wait_for_production_and_a_good_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = audit(dir.path(), "bad", "development");
    assert_eq!(out.status.code(), Some(1));
    let error =
        events(&out).into_iter().find(|e| e["event"] == "step_failed").unwrap()["error"].as_str().unwrap().to_string();
    assert!(!error.contains("GA-CORS") && !error.contains("GA-INGRESS") && !error.contains("GA-DEBUG"), "{error}");

    let dir = tempfile::tempdir().unwrap();
    let (out, run) = audit(dir.path(), "good", "production");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let finished = events(&out).into_iter().find(|e| e["event"] == "step_finished").unwrap();
    assert_eq!(finished["outputs"]["findings"], "0");
    assert_eq!(finished["outputs"]["summary"], "3 files, 11 rules, 0 findings (0 critical, 0 high, 0 medium, 0 low)");
    assert!(run.join("artifacts/audit/compliance.sarif").exists());
}
