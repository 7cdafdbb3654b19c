//! Pipeline files: a corpus of broken files, each reporting exactly the
//! problems listed in `tests/pipelines/broken/expected.txt`.

use crate::support::*;
use std::collections::BTreeMap;

#[test]
fn every_broken_pipeline_reports_its_exact_problems() {
    let dir = repo().join("tests/pipelines/broken");
    let expected_text = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in expected_text.lines().filter(|l| !l.trim().is_empty()) {
        let file = line.split(':').next().unwrap().to_string();
        expected.entry(file).or_default().push(line.to_string());
    }
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    assert!(files.len() >= 30, "the corpus has {} files", files.len());
    for file in files {
        // Plugins are built into the suite's shared target dir: a file that loads is checked against its plugins' inputs.
        let out = command(&shared_cache())
            .args(["validate", "--json", &file])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{file} must be refused");
        let report = stdout_json(&out);
        assert_eq!(report["ok"], false);
        let got: Vec<String> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}:{}:{}: {}: {}",
                    p["file"].as_str().unwrap(),
                    p["line"],
                    p["column"],
                    p["field"].as_str().unwrap(),
                    p["message"].as_str().unwrap()
                )
            })
            .collect();
        let want = expected.get(&file).unwrap_or_else(|| panic!("no expectation for {file}"));
        assert_eq!(&got, want, "problems of {file}");
    }
}

#[test]
fn a_mistyped_input_stops_plan_and_run_before_any_step_and_a_rendered_number_reaches_the_plugin_as_one() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let yaml = |probes: &str| {
        format!(
            "name: inputs\nenv:\n  PROBES: \"{probes}\"\nsteps:\n  - id: first\n    uses: {p}\n    with: {{ url: \"{o}/\" }}\n    \
             network: [\"{o}\"]\n  - id: second\n    uses: {p}\n    needs: [first]\n    with:\n      url: \"{o}/\"\n      \
             probes: ${{{{ env.PROBES }}}}\n      expect_statuz: 200\n    network: [\"{o}\"]\n",
            p = repo().join("plugins/http-check").display(),
            o = server.origin(),
        )
    };
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml("two")).unwrap();
    let path = file.to_str().unwrap();
    for args in [vec!["plan", path], vec!["run", path]] {
        let out = gantry_in(dir.path(), &args);
        expect_code(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{path}:15:7: steps[1].with.expect_statuz: unknown input `expect_statuz`; did you mean `expect_status`?")), "{err}");
        assert!(err.contains(&format!("{path}:14:7: steps[1].with.probes: \"two\" is not of type \"integer\"")), "{err}");
    }
    assert_eq!(server.hits(), 0, "no step ran, not even the first, valid one");
    assert!(!dir.path().join(".gantry/runs").exists() || journal(dir.path()).is_empty(), "no run was recorded");

    // Rendered from `env`, "3" is the integer the plugin's schema wants: the plugin probes three times.
    let out = run_pipeline(dir.path(), &yaml("3").replace("      expect_statuz: 200\n", ""), &[], &[]);
    expect_code(&out, 0);
    assert_eq!(server.hits(), 1 + 3);
}

#[test]
fn an_earlier_steps_output_is_converted_to_the_type_an_input_wants_or_fails_the_step_at_its_line_before_it_runs() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let yaml = |field: &str, output: &str| {
        format!(
            "name: outputs\nsteps:\n  - id: first\n    uses: {p}\n    with: {{ url: \"{o}/\" }}\n    network: [\"{o}\"]\n  \
             - id: second\n    uses: {p}\n    needs: [first]\n    with:\n      url: \"{o}/\"\n      \
             {field}: ${{{{ steps.first.outputs.{output} }}}}\n    network: [\"{o}\"]\n",
            p = repo().join("plugins/http-check").display(),
            o = server.origin(),
        )
    };
    // `status` is the text "200": the integer `expect_status` wants.
    let out = run_pipeline(dir.path(), &yaml("expect_status", "status"), &[], &[]);
    expect_code(&out, 0);
    assert_eq!(server.hits(), 2);

    // "0.042" is no whole number of probes: the second step fails at its line, before its plugin sends anything.
    let dir = tempfile::tempdir().unwrap();
    let out = run_pipeline(dir.path(), &yaml("probes", "latency_ms_p50"), &[], &[]);
    expect_code(&out, 1);
    assert_eq!(server.hits(), 2 + 1, "only the first step probed");
    let failed = journal(dir.path()).into_iter().find(|e| e["event"] == "step_failed").expect("a step failed");
    assert_eq!(failed["step"], "second");
    let error = failed["error"].as_str().unwrap();
    let file = dir.path().join("pipeline.yaml").canonicalize().unwrap();
    assert!(error.contains(&format!("{}:12:7: steps[1].with.probes: \"", file.display())), "{error}");
    assert!(error.contains("is not of type \"integer\"") && error.contains("plugin `http-check`"), "{error}");
}

#[test]
fn a_valid_pipeline_passes_and_problems_print_as_file_line_column() {
    let out = gantry(&["validate", repo().join("pipelines/health.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 steps)"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, "name: p\nsteps:\n  - id: a\n    uses: ./nowhere\n    needs: [b]\n").unwrap();
    let out = gantry(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = file.display();
    assert!(stderr.contains(&format!("{path}:4:11: steps[0].uses: plugin `./nowhere` not found")), "{stderr}");
    assert!(stderr.contains(&format!("{path}:5:13: steps[0].needs[0]: unknown step in `needs`")), "{stderr}");
    assert!(stderr.contains("2 problems in"), "{stderr}");
}

#[test]
fn schema_describes_every_step_field() {
    let out = gantry(&["schema"]);
    assert!(out.status.success());
    let schema = stdout_json(&out);
    let step = &schema["$defs"]["StepDef"];
    for field in [
        "id",
        "uses",
        "with",
        "needs",
        "if",
        "env",
        "network",
        "secrets",
        "files",
        "timeout",
        "retry",
        "continue_on_error",
        "rollback",
    ] {
        assert!(step["properties"][field].is_object(), "schema lacks steps[].{field}");
    }
    assert_eq!(step["additionalProperties"], false);
    assert_eq!(schema["required"], serde_json::json!(["name", "steps"]));
}

#[test]
fn plan_resolves_environment_entity_swaps_grants_and_parallel_waves() {
    let http_check = repo().join("plugins/http-check");
    let misbehave = repo().join("tests/plugins/misbehave");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("release.yaml");
    let text = format!(
        r#"name: release
env:
  SITE: http://127.0.0.1:8080
secrets:
  CRM_TOKEN: {{ from: "env:CRM_TOKEN", bind: ["https://api.notion.com"] }}
environments:
  staging: {{}}
  production:
    env: {{ SITE: "https://the7space.example" }}
    network: {{ audit: ["https://the7space.example"] }}
entities:
  the_7_space: {{}}
  am_consulting:
    plugins: {{ sync: {misbehave} }}
    secrets: {{ CRM_TOKEN: "env:AM_CRM_TOKEN" }}
steps:
  - id: audit
    uses: {http_check}
    with: {{ url: "${{{{ env.SITE }}}}/health", probes: 2 }}
    network: ["http://127.0.0.1:8080", "https://the7space.example"]
  - id: sync
    uses: {http_check}
    needs: [audit]
    network: ["http://127.0.0.1:8080"]
    secrets: [CRM_TOKEN]
    with: {{ url: "${{{{ env.SITE }}}}/${{{{ entity }}}}", expect_body: "${{{{ steps.audit.outputs.status }}}}" }}
  - id: check
    uses: {http_check}
    needs: [audit]
    network: ["http://127.0.0.1:8080"]
    files: [config]
    artifacts: true
    addresses: ["10.0.0.0/8"]
    limits: {{ memory: 32MiB, requests: 5, response_size: 1MiB, request_timeout: 2s }}
    with: {{ url: "http://127.0.0.1:8080/check" }}
  - id: notify
    uses: {http_check}
    needs: [sync, check]
    network: ["http://127.0.0.1:8080"]
    if: failure()
    with: {{ url: "http://127.0.0.1:8080/notify" }}
"#,
        misbehave = misbehave.display(),
        http_check = http_check.display()
    );
    std::fs::write(&file, text).unwrap();
    let out = gantry(&["plan", file.to_str().unwrap(), "--env", "production", "--entity", "am_consulting", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = stdout_json(&out);
    assert_eq!(plan["groups"], serde_json::json!([["audit"], ["sync", "check"], ["notify"]]));
    let steps = plan["steps"].as_array().unwrap();
    let step = |id: &str| steps.iter().find(|s| s["id"] == id).unwrap().clone();
    assert_eq!(
        step("audit")["network"]["origins"],
        serde_json::json!(["https://the7space.example"]),
        "production narrows"
    );
    assert_eq!(step("audit")["input"], serde_json::json!({"url": "https://the7space.example/health", "probes": 2}));
    assert_eq!(
        step("sync")["uses"]["source"],
        serde_json::json!({"kind": "crate", "path": misbehave.display().to_string()}),
        "the entity swaps the plugin"
    );
    assert_ne!(step("sync")["sha256"], step("audit")["sha256"]);
    assert_eq!(
        step("sync")["secrets"],
        serde_json::json!([{"name": "CRM_TOKEN", "source": "env:AM_CRM_TOKEN", "bound_to": ["https://api.notion.com"]}])
    );
    assert_eq!(step("sync")["input"]["url"], "https://the7space.example/am_consulting", "entity and env are resolved");
    assert_eq!(step("sync")["input"]["expect_body"], "${{ steps.audit.outputs.status }}", "outputs wait for run time");
    assert_eq!(step("notify")["condition"], "failure()");
    let check = step("check");
    assert_eq!(check["files"][0]["guest"], "/config");
    assert_eq!(check["files"][0]["host"], dir.path().join("config").display().to_string());
    let addresses = check["network"]["addresses"][0].as_str();
    assert_eq!((check["artifacts"].as_bool(), addresses), (Some(true), Some("10.0.0.0/8")));
    assert_eq!(
        check["limits"],
        serde_json::json!({"timeout": "30s", "memory_bytes": 32 << 20, "output_bytes": 1 << 20, "requests": 5, "response_bytes": 1 << 20, "request_timeout": "2s", "artifacts_bytes": 256 << 20, "artifact_files": 10_000, "rows": 10_000})
    );
    // The text plan shows the whole attack surface of each step.
    let text = gantry(&["plan", file.to_str().unwrap(), "--env", "production", "--entity", "am_consulting"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("secrets   CRM_TOKEN (env:AM_CRM_TOKEN) -> https://api.notion.com"), "{text}");
    assert!(text.contains("(read-only, as /config)") && text.contains("addresses 10.0.0.0/8"), "{text}");
    assert!(text.contains("artifacts /artifacts") && text.contains("5 requests"), "{text}");

    let other = gantry(&["plan", file.to_str().unwrap(), "--env", "staging", "--entity", "the_7_space", "--json"]);
    let plan = stdout_json(&other);
    let sync = plan["steps"].as_array().unwrap().iter().find(|s| s["id"] == "sync").unwrap().clone();
    assert!(
        sync["uses"]["source"]["path"].as_str().unwrap().ends_with("plugins/http-check"),
        "no swap for this entity"
    );
    assert_eq!(sync["input"]["url"], "http://127.0.0.1:8080/the_7_space");

    let unknown = gantry(&["plan", file.to_str().unwrap(), "--env", "prod"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr)
        .contains("environment `prod` is not declared; declared: production, staging"));
}

#[test]
fn plan_and_run_refuse_a_step_without_what_its_plugin_needs_and_warn_of_grants_it_never_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let http_check = plugin("plugins/http-check");
    let pipeline = |grants: &str| {
        format!(
            "name: declared\nsteps:\n  - id: probe\n    uses: {}\n    with: {{ url: \"http://127.0.0.1:9/\" }}\n{grants}",
            http_check.display()
        )
    };
    std::fs::write(dir.path().join("p.yaml"), pipeline("")).unwrap();
    for command in ["plan", "run"] {
        let out = gantry_in(dir.path(), &[command, "p.yaml"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        expect_code(&out, 2);
        assert!(
            stderr.contains("step `probe`: error: plugin `http-check` needs network and the step grants none"),
            "{command}: {stderr}"
        );
    }
    assert!(!dir.path().join(".gantry/runs").exists(), "nothing ran");

    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("p.yaml"), pipeline("    network: [\"http://127.0.0.1:9\"]\n    files: [config]\n"))
        .unwrap();
    let out = gantry_in(dir.path(), &["plan", "p.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    expect_code(&out, 0);
    assert!(
        stderr.contains("step `probe`: warning: the step grants `files:` that plugin `http-check` does not declare"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_pipelines_validate_and_plan_for_every_environment_and_entity() {
    let dir = repo().join("pipelines");
    for name in ["health.yaml", "gallery-release.yaml", "canary-release.yaml", "gallery-registry.yaml"] {
        // The registry's plugins cannot be pulled here: that pipeline is checked as a file alone.
        let offline = if name == "gallery-registry.yaml" { "--offline" } else { "--json" };
        let out = gantry(&["validate", offline, dir.join(name).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let gallery = dir.join("gallery-release.yaml");
    for env in ["development", "staging", "production"] {
        for entity in ["the_7_space", "am_consulting", "higherself_core"] {
            let out = gantry(&["plan", gallery.to_str().unwrap(), "--env", env, "--entity", entity, "--json"]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{env}/{entity}: {stderr}");
            // Each plugin is granted what it declares; the one entity that swaps the CRM step for a
            // health check keeps the step's Notion token, which the health check never asks for.
            let mismatches: Vec<&str> = stderr.lines().filter(|l| l.contains(": warning: ")).collect();
            match entity {
                "am_consulting" => assert!(
                    mismatches.len() == 1
                        && mismatches[0].contains("step `crm`")
                        && mismatches[0].contains("`secrets:`"),
                    "{stderr}"
                ),
                _ => assert!(mismatches.is_empty(), "{env}/{entity}: {stderr}"),
            }
            let plan = stdout_json(&out);
            let crm = plan["steps"].as_array().unwrap().iter().find(|s| s["id"] == "crm").unwrap().clone();
            let token = crm["secrets"][0]["source"].as_str().unwrap().to_string();
            let uses = crm["uses"]["source"]["path"].as_str().unwrap();
            let uses = &uses[uses.rfind("/plugins/").expect("a plugin crate") + 1..];
            match entity {
                "am_consulting" => {
                    // The entity swaps the plugin and its input together.
                    assert_eq!(uses, "plugins/http-check");
                    assert_eq!(
                        crm["input"],
                        serde_json::json!({"url": "https://crm.amconsulting.example/health", "probes": 3, "max_latency_ms": 1000})
                    );
                }
                "the_7_space" => assert_eq!((uses, token.as_str()), ("plugins/notion-sync", "env:NOTION_TOKEN")),
                _ => assert_eq!((uses, token.as_str()), ("plugins/notion-sync", "env:HIGHERSELF_NOTION_TOKEN")),
            }
            if env == "production" {
                let narrowed = serde_json::json!(["https://api.notion.com", "https://crm.amconsulting.example"]);
                assert_eq!(crm["network"]["origins"], narrowed, "production narrows");
                if entity != "am_consulting" {
                    assert_eq!(crm["input"]["api_url"], "https://api.notion.com");
                }
            }
        }
    }
}
