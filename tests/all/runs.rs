//! `gantry run`: real plugins, a recording server on 127.0.0.1, the journal.

use crate::support::*;
use std::path::{Path, PathBuf};

fn recorder() -> CountingServer {
    CountingServer::start(Reply::text(200, "ok"))
}

/// Writes a pipeline whose steps use the misbehave plugin against `server`.
fn pipeline(dir: &Path, server: &CountingServer, steps: &str) -> PathBuf {
    let misbehave = repo().join("tests/plugins/misbehave");
    let text = format!(
        "name: run-test\nenv:\n  REC: {origin}/record\nsteps:\n{steps}",
        origin = server.origin(),
        steps = steps.replace("PLUGIN", &misbehave.display().to_string()).replace("ORIGIN", &server.origin())
    );
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A step recording to the server: `(id, needs, extra lines)`.
fn step(id: &str, needs: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    uses: PLUGIN\n    needs: [{needs}]\n    network: [\"ORIGIN\"]\n    with: {{ url: \"${{{{ env.REC }}}}\"{extra} }}\n"
    )
}

fn at(journal: &[serde_json::Value], event: &str, step: &str) -> f64 {
    journal.iter().find(|e| e["event"] == event && e["step"] == step).unwrap_or_else(|| panic!("no {event} for {step}"))
        ["ts_ms"]
        .as_f64()
        .unwrap()
}

fn run(dir: &Path, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    gantry_in(dir, &args)
}

#[test]
fn a_diamond_runs_its_middle_steps_in_parallel() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps =
        [step("a", "", ""), step("b", "a", ", ms: 400"), step("c", "a", ", ms: 400"), step("d", "b, c", "")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &[]);
    expect_code(&out, 0);
    let j = journal(dir.path());
    // Overlap, read from the journal: each middle step started before the other finished.
    assert!(at(&j, "step_started", "b") < at(&j, "step_finished", "c"));
    assert!(at(&j, "step_started", "c") < at(&j, "step_finished", "b"));
    assert!(at(&j, "step_finished", "a") <= at(&j, "step_started", "b"));
    assert!(at(&j, "step_finished", "b").max(at(&j, "step_finished", "c")) <= at(&j, "step_started", "d"));
    let mut calls = server.requests();
    calls.sort();
    assert_eq!(calls, ["POST run a", "POST run b", "POST run c", "POST run d"]);
    assert_eq!(j.last().unwrap()["status"], "succeeded");
    // The run starts by naming itself (before any secret is read), then records the resolved plan
    // and every plugin's hash.
    assert_eq!(j[0]["event"], "reading_secrets");
    assert_eq!(j[1]["event"], "run_started");
    assert_eq!(j[1]["plan"]["groups"], serde_json::json!([["a"], ["b", "c"], ["d"]]));
    assert_eq!(j[1]["plugins"]["a"].as_str().unwrap().len(), 64);
}

#[test]
fn a_failing_step_rolls_back_completed_steps_in_reverse_order() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps =
        [step("a", "", ""), step("b", "a", ""), step("c", "b", ", action: fail, message: \"deploy refused\"")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(server.requests(), ["POST run a", "POST run b", "POST run c", "POST rollback b", "POST rollback a"]);
    let j = journal(dir.path());
    let failed = j.iter().find(|e| e["event"] == "step_failed").unwrap();
    assert_eq!(failed["step"], "c");
    assert!(failed["error"].as_str().unwrap().contains("deploy refused"));
    let rolled: Vec<&str> =
        j.iter().filter(|e| e["event"] == "rolled_back").map(|e| e["step"].as_str().unwrap()).collect();
    assert_eq!(rolled, ["b", "a"]);
    assert_eq!(j.last().unwrap()["status"], "failed");
}

#[test]
fn a_failed_rollback_exits_3() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [step("a", "", ", rollback_fails: true"), step("b", "a", ", action: fail")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(3));
    let j = journal(dir.path());
    assert!(j.iter().any(|e| e["event"] == "rollback_failed" && e["step"] == "a"));
    assert_eq!(j.last().unwrap()["status"], "rollback-failed");
}

#[test]
fn a_retryable_error_succeeds_on_the_second_attempt() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = step("flaky", "", ", action: flaky, succeed_on: 2") + "    retry: { attempts: 3, backoff: 10ms }\n";
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(server.requests(), ["POST attempt flaky", "POST attempt flaky"]);
    let j = journal(dir.path());
    assert_eq!(j.iter().filter(|e| e["event"] == "step_retrying").count(), 1);
    let finished = j.iter().find(|e| e["event"] == "step_finished").unwrap();
    assert_eq!(finished["outputs"]["attempt"], "2");
    // --json prints the same events, one per line.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.lines().count(), j.len());
}

#[test]
fn a_step_that_times_out_is_retried_then_fails() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = step("slow", "", ", action: loop") + "    timeout: 300ms\n    retry: { attempts: 2, backoff: 10ms }\n";
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(1));
    let j = journal(dir.path());
    assert_eq!(j.iter().filter(|e| e["event"] == "step_started").count(), 2);
    let failed = j.iter().find(|e| e["event"] == "step_failed").unwrap();
    assert_eq!(failed["kind"], "timeout");
}

#[test]
fn a_failure_notifier_runs_only_on_failure() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [
        step("deploy", "", ", action: fail"),
        step("verify", "deploy", ""),
        step("notify", "deploy", "") + "    if: failure()\n",
        step("celebrate", "deploy", "") + "    if: success()\n",
    ]
    .concat();
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(server.requests(), ["POST run deploy", "POST run notify"]);
    let j = journal(dir.path());
    for skipped in ["verify", "celebrate"] {
        assert!(j.iter().any(|e| e["event"] == "step_skipped" && e["step"] == skipped), "{skipped} is skipped");
    }
}

#[test]
fn an_entity_swap_runs_the_other_plugin() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let http_check = repo().join("plugins/http-check");
    let text = format!(
        "entities:\n  the_7_space: {{}}\n  am_consulting:\n    plugins: {{ sync: {} }}\n",
        http_check.display()
    );
    let file = pipeline(dir.path(), &server, &step("sync", "", ""));
    let body = std::fs::read_to_string(&file).unwrap().replace("steps:\n", &format!("{text}steps:\n"));
    std::fs::write(&file, body).unwrap();

    let out = run(dir.path(), &file, &["--entity", "the_7_space"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(dir.path(), &file, &["--entity", "am_consulting"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // misbehave POSTs its step id; http-check GETs the URL.
    assert_eq!(server.requests(), ["POST run sync", "GET"]);
}

#[test]
fn a_second_run_of_the_same_pipeline_environment_and_entity_is_refused() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, &step("a", "", ""));
    let locks = dir.path().join(".gantry/locks");
    std::fs::create_dir_all(&locks).unwrap();
    // A live holder: this test process holds the flock and says who it is.
    let path = locks.join("run-test.production.the_7_space.lock");
    let held = std::fs::File::create(&path).unwrap();
    held.try_lock().unwrap();
    let holder = serde_json::json!({"run_id": "holder-run", "pid": 4242, "host": "ci-7", "since_ms": 0.0});
    std::fs::write(&path, holder.to_string()).unwrap();
    let out = run(dir.path(), &file, &["--env", "production", "--entity", "the_7_space"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run-test/production/the_7_space is already running (run holder-run, pid 4242 on ci-7, since 1970-01-01T00:00:00Z)"),
        "{stderr}"
    );
    assert_eq!(server.hits(), 0, "nothing ran");
    // Another entity is not blocked.
    let out = run(dir.path(), &file, &["--env", "production", "--entity", "am_consulting"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    held.unlock().unwrap();
    let out = run(dir.path(), &file, &["--env", "production", "--entity", "the_7_space"]);
    assert_eq!(out.status.code(), Some(0), "free once the holder lets go");
}

#[test]
fn runs_lists_runs_and_shows_a_journal() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [step("a", "", ""), step("b", "a", ", action: fail, message: \"boom\"")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    assert_eq!(run(dir.path(), &file, &["--env", "staging"]).status.code(), Some(1));
    let list = gantry_in(dir.path(), &["runs"]);
    let text = String::from_utf8_lossy(&list.stdout);
    let line = text.lines().next().expect("one run listed");
    assert!(line.contains("failed") && line.contains("run-test environment=staging entity=default"), "{line}");
    let id = line.split_whitespace().next().unwrap();
    let show = gantry_in(dir.path(), &["runs", "show", id]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("a: succeeded"), "{shown}");
    assert!(shown.contains("b: failed: step `b` failed: boom"), "{shown}");
    assert!(shown.contains("a: rolled back"), "{shown}");
    assert!(shown.trim_end().ends_with("run finished: failed"), "{shown}");
    let missing = gantry_in(dir.path(), &["runs", "show", "nope"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn resume_after_kill_9_runs_every_step_exactly_once_and_rollback_undoes_the_run() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    // Step c runs a copy of the component, so the test can change it under the run.
    let component = dir.path().join("c.wasm");
    std::fs::copy(plugin("tests/plugins/misbehave"), &component).unwrap();
    let c = step("c", "b", "").replace("PLUGIN", component.to_str().unwrap());
    let steps = [step("a", "", ""), step("b", "a", ", ms: 4000"), c].concat();
    let file = pipeline(dir.path(), &server, &steps);
    // Wait until `a` is done and `b` is under way, then kill the runner outright.
    let mut child = run_until(dir.path(), &file, "step_started", Some("b"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(server.requests(), ["POST run a"]);
    let id = &run_id(dir.path());

    // A changed plugin is refused: resume runs exactly the plugins the run started with.
    let original = std::fs::read(&component).unwrap();
    std::fs::copy(plugin("plugins/http-check"), &component).unwrap();
    let refused = gantry_in(dir.path(), &["resume", id]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("the plugin of step `c` changed since the run was planned"), "{stderr}");
    std::fs::write(&component, original).unwrap();
    // The pipeline file is not read again: resume works from the plan in the journal even when it is gone.
    std::fs::remove_file(&file).unwrap();

    let resumed = gantry_in(dir.path(), &["resume", id]);
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&resumed.stdout),
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(server.requests(), ["POST run a", "POST run b", "POST run c"], "every step ran exactly once");
    assert_eq!(journal(dir.path()).last().unwrap()["status"], "succeeded");
    let again = gantry_in(dir.path(), &["resume", id]);
    assert_eq!(again.status.code(), Some(2), "a finished run is not resumed");

    let undone = gantry_in(dir.path(), &["rollback", id]);
    assert_eq!(undone.status.code(), Some(0), "{}", String::from_utf8_lossy(&undone.stderr));
    assert_eq!(
        server.requests()[3..],
        ["POST rollback c", "POST rollback b", "POST rollback a"],
        "undone newest first"
    );
    assert_eq!(journal(dir.path()).last().unwrap()["status"], "rolled-back");
}

#[test]
fn reports_for_ci_junit_json_and_github_annotations() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps =
        [step("a", "", ""), step("b", "a", ", action: fail, message: \"smoke test failed\""), step("c", "b", "")]
            .concat();
    let file = pipeline(dir.path(), &server, &steps);
    let junit = dir.path().join("junit.xml");
    let json = dir.path().join("report.json");
    let out = command(&shared_cache())
        .args(["run", file.to_str().unwrap(), "--report"])
        .arg(format!("junit={}", junit.display()))
        .arg("--report")
        .arg(format!("json={}", json.display()))
        .current_dir(dir.path())
        .env("GITHUB_ACTIONS", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l == "::error title=gantry step b::step `b` failed%3A smoke test failed"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"tests="3" failures="1" skipped="1""#), "{xml}");
    assert!(xml.contains(r#"<testcase name="b" classname="run-test""#), "{xml}");
    assert!(xml.contains("smoke test failed</failure>"), "{xml}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["status"], "failed");
    let statuses: Vec<&str> =
        report["steps"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["rolled-back", "failed", "skipped"]);
}

#[test]
fn a_github_job_gets_its_summary_and_outputs_and_a_gitlab_job_its_sections() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let message = "<script>alert(1)</script> | *smoke* failed";
    let steps = [step("a", "", ""), step("b", "a", &format!(", action: fail, message: \"{message}\"")), step("c", "b", "")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    let (summary, outputs, html) = (dir.path().join("summary.md"), dir.path().join("outputs"), dir.path().join("report.html"));
    std::fs::write(&summary, "## an earlier step's summary\n").unwrap();
    let out = command(&shared_cache())
        .args(["run", file.to_str().unwrap(), "--report"])
        .arg(format!("html={}", html.display()))
        .current_dir(dir.path())
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("GITHUB_OUTPUT", &outputs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let id = run_id(dir.path());
    let markdown = std::fs::read_to_string(&summary).unwrap();
    assert!(markdown.starts_with("## an earlier step's summary\n### gantry: run"), "appended: {markdown}");
    let page = github_html(&markdown);
    for shown in [
        "<h3>gantry: run-test · development · default: failed</h3>",
        "<td>a</td>\n<td>rolled-back</td>",
        "<td>b</td>\n<td>failed</td>",
        "<td>c</td>\n<td>skipped</td>",
        "&lt;script&gt;alert(1)&lt;/script&gt; | *smoke* failed",
        "<h4>Rolled back</h4>",
        &format!("{}", html.display()),
    ] {
        assert!(page.contains(shown), "{shown} not in {page}");
    }
    assert!(!page.contains("<script") && !page.contains("<em>"), "the step's message became markup: {page}");
    assert!(std::fs::read_to_string(&html).unwrap().contains("<html"), "the HTML report it points at");
    let written = std::fs::read_to_string(&outputs).unwrap();
    assert_eq!(written, format!("run-id={id}\nstatus=failed\n"));

    let out = command(&shared_cache())
        .args(["run", file.to_str().unwrap()])
        .current_dir(dir.path())
        .env("GITLAB_CI", "true")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = log.lines().collect();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle} not in {log}"));
    assert!(at("section_start:") < at("a: started"), "{log}");
    assert!(lines[at("a: started") - 1].ends_with(":gantry_a[collapsed=true]\r\u{1b}[0Kstep a"), "{log}");
    assert!(at("a: succeeded") < at("section_end:") && lines[at("section_end:")].contains(":gantry_a\r"), "{log}");
    assert!(lines[at("b: failed") + 1].contains("section_end:") && lines[at("b: failed") + 1].contains(":gantry_b\r"), "{log}");
    assert!(!log.contains(":gantry_c"), "a skipped step never started: {log}");

    // The pipeline's `outputs:` reach later jobs; one whose step did not run is left out.
    let misbehave = repo().join("tests/plugins/misbehave");
    let exporting = format!(
        "name: exporting\noutputs:\n  site_url: \"${{{{ steps.x.outputs.url }}}}\"\n  where: \"${{{{ environment }}}}/${{{{ entity }}}}\"\n  never: \"${{{{ steps.y.outputs.url }}}}\"\nsteps:\n  - id: x\n    uses: {m}\n    with: {{ action: ok, outputs: {{ url: \"https://the7space.example/\" }} }}\n  - id: y\n    uses: {m}\n    needs: [x]\n    if: failure()\n    with: {{ action: ok }}\n",
        m = misbehave.display()
    );
    let file = dir.path().join("exporting.yaml");
    std::fs::write(&file, &exporting).unwrap();
    let outputs = dir.path().join("outputs-2");
    let out = command(&shared_cache())
        .args(["run", file.to_str().unwrap(), "--env", "staging"])
        .current_dir(dir.path())
        .env("GITHUB_OUTPUT", &outputs)
        .output()
        .unwrap();
    expect_code(&out, 0);
    let written = std::fs::read_to_string(&outputs).unwrap();
    assert!(written.ends_with("status=succeeded\nsite_url=https://the7space.example/\nwhere=staging/default\n"), "{written}");
    std::fs::write(&file, exporting.replace("steps.x.outputs.url", "steps.nowhere.outputs.url")).unwrap();
    let out = gantry_in(dir.path(), &["validate", file.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && said.contains("exporting.yaml:3:") && said.contains("unknown step `nowhere`"), "{said}");
}

#[test]
fn a_collector_that_never_answers_is_said_and_changes_nothing_of_the_run() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, &step("a", "", ""));
    // Takes the connection (the kernel's backlog) and never reads nor answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = command(&shared_cache())
        .args(["run", file.to_str().unwrap()])
        .current_dir(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", silent.local_addr().unwrap()))
        .output()
        .unwrap();
    expect_code(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the trace was not sent: ") && stderr.contains("/v1/traces did not answer in 500 ms"), "{stderr}");
    assert_eq!(journal(dir.path()).iter().filter(|e| e["event"] == "run_finished").count(), 1);
}

#[test]
fn the_github_action_fits_the_action_metadata_schema_and_runs_gantry_as_it_is() {
    let validate = |file: &Path| {
        std::process::Command::new(crate::peers::venv("check-jsonschema"))
            .args(["--builtin-schema", "vendor.github-actions"])
            .arg(file)
            .output()
            .unwrap()
    };
    let action = repo().join("action.yml");
    let out = validate(&action);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // The validator is live: a misspelt key and an unknown runner are refused.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&action).unwrap();
    let broken = dir.path().join("action.yml");
    std::fs::write(&broken, text.replacen("description:", "descripton:", 1).replace("using: composite", "using: compost")).unwrap();
    let out = validate(&broken);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && said.contains("'descripton' was unexpected"), "{said}");
    // Every flag the action passes is one `gantry run` takes.
    let help = String::from_utf8_lossy(&gantry_in(dir.path(), &["run", "--help"]).stdout).into_owned();
    for flag in ["--env <", "--entity <", "--report <"] {
        assert!(text.contains(flag.trim_end_matches(" <")) && help.contains(flag), "{flag}");
    }
    assert!(text.contains("\"html=$RUNNER_TEMP/gantry-report.html\""), "the report the artifact uploads");
}

#[test]
fn a_terminal_gets_a_live_view_and_a_pipe_gets_timestamped_lines() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, &[step("first", "", ""), step("second", "first", ", ms: 300")].concat());
    // `script` gives the runner a pseudo-terminal, as an operator's shell would.
    let gantry = format!("{} run {}", gantry_bin().display(), file.display());
    let out = std::process::Command::new("script")
        .args(["-qec", &gantry, "/dev/null"])
        .current_dir(dir.path())
        .env("GANTRY_CACHE_DIR", shared_cache())
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .env("GANTRY_LOG", "warn")
        .output()
        .expect("script (util-linux) runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("\u{1b}["), "the live view redraws with terminal escapes");
    assert!(screen.contains("second               running (attempt 1)"), "{screen}");
    assert!(screen.contains("second               succeeded"), "{screen}");
    assert!(!screen.contains("Z second: started"), "no log lines on a terminal");

    let piped = gantry_in(dir.path(), &["run", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&piped.stdout);
    let started = text.lines().find(|l| l.ends_with("second: started (attempt 1)")).expect("a line per event");
    assert!(humantime::parse_rfc3339(started.split(' ').next().unwrap()).is_ok(), "{started}");
    assert!(!text.contains("\u{1b}["), "no escapes in a CI log");
}

#[test]
fn a_failure_cancels_what_is_still_running() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [step("slow", "", ", ms: 20000"), step("broken", "", ", action: fail")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(1));
    let j = journal(dir.path());
    let slow = j.iter().find(|e| e["event"] == "step_failed" && e["step"] == "slow").expect("slow is reported");
    assert_eq!(slow["kind"], "cancelled");
    assert_eq!(slow["error"], "cancelled because `broken` failed");
    // Cancelled inside its 20 s sleep: it never reached its request, and is not rolled back.
    assert_eq!(server.requests(), ["POST run broken"]);
    assert!(!j.iter().any(|e| e["event"] == "rolled_back"));
}

#[test]
fn success_in_any_spelling_skips_a_step_whose_need_was_skipped() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [
        step("gate", "", "") + "    if: environment == 'production'\n",
        step("wrapped", "gate", "") + "    if: ${{ success() }}\n",
        step("combined", "gate", "") + "    if: success() && entity == 'default'\n",
        step("always", "gate", "") + "    if: always()\n",
    ]
    .concat();
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &["--env", "staging"]);
    expect_code(&out, 0);
    assert_eq!(server.requests(), ["POST run always"], "only always() runs after a skipped need");
    let j = journal(dir.path());
    for id in ["wrapped", "combined"] {
        let skipped = j.iter().find(|e| e["event"] == "step_skipped" && e["step"] == id).expect("skipped");
        assert_eq!(skipped["reason"], "a needed step did not succeed");
    }
}

#[test]
fn rollback_works_from_the_recorded_plan_after_a_step_left_the_pipeline_file() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, &[step("a", "", ""), step("b", "a", "")].concat());
    expect_code(&run(dir.path(), &file, &[]), 0);
    let id = run_id(dir.path());
    // Step b is removed from the file; the run still knows it ran and how to undo it.
    pipeline(dir.path(), &server, &step("a", "", ""));
    let undone = gantry_in(dir.path(), &["rollback", &id]);
    assert_eq!(undone.status.code(), Some(0), "{}", String::from_utf8_lossy(&undone.stderr));
    assert_eq!(server.requests(), ["POST run a", "POST run b", "POST rollback b", "POST rollback a"]);
}

#[test]
fn a_bad_report_argument_is_refused_before_the_first_step() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, &step("a", "", ""));
    for bad in ["junt=out.xml", "junit", "json=no/such/dir/run.json"] {
        let out = run(dir.path(), &file, &["--report", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--report"), "{bad}");
    }
    assert_eq!(server.hits(), 0, "nothing ran");
    assert!(!dir.path().join(".gantry/runs").exists(), "no run was recorded");
}

/// Starts `gantry run` in `dir` and waits until the journal shows `event` (for `step`, when given).
fn run_until(dir: &Path, file: &Path, event: &str, step: Option<&str>) -> std::process::Child {
    let mut cmd = command(&shared_cache());
    cmd.args(["run", file.to_str().unwrap()])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    spawn_until(&mut cmd, &format!("{event} {step:?}"), || {
        journal(dir).iter().any(|e| e["event"] == event && step.is_none_or(|s| e["step"] == s))
    })
}

fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill").args(["-s", name, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn sigint_or_sigterm_mid_run_cancels_rolls_back_and_ends_the_journal() {
    for sig in ["INT", "TERM"] {
        let server = recorder();
        let dir = tempfile::tempdir().unwrap();
        let steps = [
            step("a", "", ""),
            step("b", "a", ", ms: 20000"),
            step("c", "b", ""),
            // Would run after a failure; after a signal nothing starts.
            step("cleanup", "b", "") + "    if: always()\n",
        ]
        .concat();
        let file = pipeline(dir.path(), &server, &steps);
        let child = run_until(dir.path(), &file, "step_started", Some("b"));
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "SIG{sig}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(server.requests(), ["POST run a", "POST rollback a"], "SIG{sig}: a is undone, c never starts");
        let j = journal(dir.path());
        let interrupted = j.iter().find(|e| e["event"] == "interrupted").expect("the signal is journaled");
        assert_eq!(interrupted["signal"], format!("SIG{sig}"));
        let b = j.iter().find(|e| e["event"] == "step_failed" && e["step"] == "b").unwrap();
        assert_eq!(b["kind"], "cancelled");
        for id in ["c", "cleanup"] {
            let skipped = j.iter().find(|e| e["event"] == "step_skipped" && e["step"] == id).expect("skipped");
            assert_eq!(skipped["reason"], format!("the run was interrupted by SIG{sig}"));
        }
        assert_eq!(j.last().unwrap()["event"], "run_finished");
        assert_eq!(j.last().unwrap()["status"], "interrupted");
    }
}

#[test]
fn a_second_signal_exits_at_once_and_leaves_the_run_to_a_person_then_rollback_finishes_it() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [step("a", "", ", rollback_ms: 5000"), step("b", "a", ", ms: 20000")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    let child = run_until(dir.path(), &file, "step_started", Some("b"));
    signal(&child, "TERM");
    let child_id = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !journal(dir.path()).iter().any(|e| e["event"] == "interrupted") {
        assert!(std::time::Instant::now() < deadline, "run {child_id} never recorded the first signal");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500)); // inside a's 5 s rollback
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NEEDS A PERSON"));
    assert_eq!(server.requests(), ["POST run a"], "a's rollback was cut off before its change");
    let j = journal(dir.path());
    assert_eq!(j.last().unwrap()["event"], "abandoned");
    assert_eq!(j.last().unwrap()["signal"], "SIGINT");
    let list = String::from_utf8_lossy(&gantry_in(dir.path(), &["runs"]).stdout).to_string();
    assert!(list.contains("needs-a-person"), "{list}");
    let id = list.split_whitespace().next().unwrap().to_string();

    let finished = gantry_in(dir.path(), &["rollback", &id]);
    assert_eq!(finished.status.code(), Some(0), "{}", String::from_utf8_lossy(&finished.stderr));
    assert_eq!(server.requests(), ["POST run a", "POST rollback a"]);
    assert_eq!(journal(dir.path()).last().unwrap()["status"], "rolled-back");
}

#[test]
fn resume_after_a_crash_during_rollback_goes_on_rolling_back() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [step("a", "", ", rollback_ms: 4000"), step("b", "a", ", action: fail")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    let mut child = run_until(dir.path(), &file, "step_failed", Some("b"));
    std::thread::sleep(std::time::Duration::from_millis(500)); // inside a's rollback
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(server.requests(), ["POST run a", "POST run b"]);
    let resumed = gantry_in(dir.path(), &["resume", &run_id(dir.path())]);
    assert_eq!(resumed.status.code(), Some(0), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("was rolling back when it stopped"));
    assert_eq!(server.requests(), ["POST run a", "POST run b", "POST rollback a"], "never rolled forward");
    assert_eq!(journal(dir.path()).last().unwrap()["status"], "rolled-back");
}

#[test]
fn rollback_gets_the_step_timeout_and_retry_policy() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [
        // Longer than the 30 s default, under the step's own 5 minutes.
        step("slow", "", ", rollback_ms: 31000") + "    timeout: 5m\n",
        step("flaky", "slow", ", rollback_fails_until: 3") + "    retry: { attempts: 3, backoff: 10ms }\n",
        step("broken", "flaky", ", action: fail"),
    ]
    .concat();
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        server.requests()[3..],
        ["POST rollback-attempt flaky", "POST rollback-attempt flaky", "POST rollback flaky", "POST rollback slow"]
    );
    let j = journal(dir.path());
    let rolled: Vec<&str> =
        j.iter().filter(|e| e["event"] == "rolled_back").map(|e| e["step"].as_str().unwrap()).collect();
    assert_eq!(rolled, ["flaky", "slow"]);
}

#[test]
fn a_step_that_fails_after_a_checkpoint_is_rolled_back_from_it_before_the_completed_ones() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [
        step("a", "", ""),
        step("b", "a", ", action: guarded, message: blue100, then_fail: true"),
        step("plain", "b", ", action: fail"),
    ]
    .concat();
    let file = pipeline(dir.path(), &server, &steps);
    let out = run(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // b changed something and failed: it is undone from its checkpoint, then a; `plain` never ran.
    assert_eq!(server.requests(), ["POST run a", "POST run b", "POST rollback-to-blue100 b", "POST rollback a"]);
    let j = journal(dir.path());
    let cp = j.iter().position(|e| e["event"] == "checkpoint" && e["step"] == "b").expect("journaled");
    let change = j.iter().position(|e| e["event"] == "request" && e["step"] == "b").unwrap();
    assert!(cp < change, "the checkpoint is in the journal before the change");
    assert_eq!(j[cp]["key"], "before");
    assert_eq!(j[cp]["value"], "blue100");
}

/// Runs a → b (checkpoints `original`, changes, works on) → c and kills the run with `kill -9` after b's change.
fn killed_after_b_changed() -> (CountingServer, tempfile::TempDir) {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps =
        [step("a", "", ""), step("b", "a", ", action: guarded, message: original, ms: 3000"), step("c", "b", "")]
            .concat();
    let file = pipeline(dir.path(), &server, &steps);
    let mut child = run_until(dir.path(), &file, "request", Some("b"));
    child.kill().unwrap();
    child.wait().unwrap();
    (server, dir)
}

#[test]
fn kill_9_after_a_checkpoint_then_resume_undoes_the_half_change_first_and_rollback_finds_it_too() {
    for then in ["resume", "rollback"] {
        let (server, dir) = killed_after_b_changed();
        assert_eq!(server.requests(), ["POST run a", "POST run b"], "killed after b's change");
        let id = &run_id(dir.path());
        if then == "resume" {
            // A resume never runs b again on top of its half-change: b is undone first, then run from the start.
            let resumed = command(&shared_cache())
                .args(["resume", id])
                .current_dir(dir.path())
                .env("GANTRY_LOG", "warn")
                .output()
                .unwrap();
            assert_eq!(resumed.status.code(), Some(0), "{}", String::from_utf8_lossy(&resumed.stderr));
            assert_eq!(
                server.requests(),
                ["POST run a", "POST run b", "POST rollback-to-original b", "POST run b", "POST run c"]
            );
        } else {
            let undone = gantry_in(dir.path(), &["rollback", id]);
            assert_eq!(undone.status.code(), Some(0), "{}", String::from_utf8_lossy(&undone.stderr));
            assert_eq!(
                server.requests(),
                ["POST run a", "POST run b", "POST rollback-to-original b", "POST rollback a"]
            );
        }
    }
}

#[test]
fn an_inconclusive_step_pauses_the_run_without_rolling_back_for_a_person_to_resume_or_roll_back() {
    for then in ["resume", "rollback"] {
        let server = recorder();
        let dir = tempfile::tempdir().unwrap();
        let steps = [
            step("a", "", ""),
            step("b", "a", ", action: inconclusive, message: original"),
            step("c", "b", ""),
            step("notify", "b", "") + "    if: failure()\n",
        ]
        .concat();
        let file = pipeline(dir.path(), &server, &steps);
        let out = run(dir.path(), &file, &[]);
        assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
        // Nothing is undone: the person deciding sees the target as b left it; the notifier tells them.
        assert_eq!(server.requests(), ["POST run a", "POST run b", "POST run notify"]);
        let j = journal(dir.path());
        let paused = j.iter().find(|e| e["event"] == "paused").expect("the pause is journaled");
        assert_eq!((paused["step"].as_str(), paused["reason"].as_str()), (Some("b"), Some("cannot tell: original")));
        assert!(j.iter().any(|e| e["event"] == "step_skipped" && e["step"] == "c"));
        assert_eq!(j.last().unwrap()["status"], "paused");
        let listed = gantry_in(dir.path(), &["runs"]);
        assert!(String::from_utf8_lossy(&listed.stdout).contains("paused"), "{listed:?}");
        let id = &run_id(dir.path());
        let decided = gantry_in(dir.path(), &[then, id]);
        let after = &server.requests()[3..];
        if then == "resume" {
            // b is undone from its checkpoint and runs again (still inconclusive here: paused again); a stays.
            assert_eq!(decided.status.code(), Some(4), "{}", String::from_utf8_lossy(&decided.stderr));
            assert_eq!(after, ["POST rollback-to-original b", "POST run b", "POST run notify"]);
        } else {
            assert_eq!(decided.status.code(), Some(0), "{}", String::from_utf8_lossy(&decided.stderr));
            assert_eq!(after, ["POST rollback-to-original b", "POST rollback a"]);
        }
    }
}

#[test]
fn a_step_cut_off_after_a_change_without_checkpoints_is_not_run_again_unless_asked() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [step("a", "", ""), step("b", "a", ", action: unguarded, ms: 3000"), step("c", "b", "")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    let mut child = run_until(dir.path(), &file, "request", Some("b"));
    child.kill().unwrap();
    child.wait().unwrap();
    let id = &run_id(dir.path());
    let refused = gantry_in(dir.path(), &["resume", id]);
    assert_ne!(refused.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "step `b` (after POST {}/record) was cut off after a change and left no checkpoints",
            server.origin()
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("`gantry resume {id} --rerun STEP`")), "{stderr}");
    assert_eq!(server.requests(), ["POST run a", "POST run b"], "nothing ran again");
    let resumed = gantry_in(dir.path(), &["resume", id, "--rerun", "b"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(server.requests(), ["POST run a", "POST run b", "POST run b", "POST run c"]);
}

#[test]
fn a_journal_ending_in_half_a_line_is_reported_and_resume_and_rollback_still_work() {
    for then in ["resume", "rollback"] {
        let (server, dir) = killed_after_b_changed();
        // The crash came mid-write: the journal ends in half a JSON line.
        let id = &run_id(dir.path());
        let path = dir.path().join(".gantry/runs").join(id).join("journal.jsonl");
        let mut journal_file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut journal_file, br#"{"seq":99,"ts_ms":1.0,"event":"step_fini"#).unwrap();
        let out = command(&shared_cache()).args([then, id]).current_dir(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{then}: {stderr}");
        assert!(stderr.contains("journal line(s) cut off by a crash"), "{then} reports the torn line: {stderr}");
        let after = &server.requests()[2..];
        match then {
            "resume" => assert_eq!(after, ["POST rollback-to-original b", "POST run b", "POST run c"]),
            _ => assert_eq!(after, ["POST rollback-to-original b", "POST rollback a"]),
        }
        // The next event went on a line of its own: the journal reads back whole after the torn line.
        let last = journal(dir.path()).last().cloned().unwrap();
        assert_eq!(last["status"], if then == "resume" { "succeeded" } else { "rolled-back" });
    }
}

#[test]
fn a_reader_that_goes_away_stops_the_output_never_the_run() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let steps = [step("a", "", ""), step("b", "a", ", ms: 300"), step("c", "b", "")].concat();
    let file = pipeline(dir.path(), &server, &steps);
    // As `gantry run p.yaml | head -0`: the reader closes the pipe before the first line.
    let mut child = command(&shared_cache())
        .args(["run", file.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(server.requests(), ["POST run a", "POST run b", "POST run c"], "the run went to its end");
    assert_eq!(journal(dir.path()).last().unwrap()["status"], "succeeded");
    // A listing read by nobody ends as quietly.
    let mut child = command(&shared_cache())
        .args(["runs"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn logs_captured_to_a_file_carry_no_colour_codes_unless_asked() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &server, &step("a", "", ""));
    let logged = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = command(&shared_cache());
        cmd.args(["run", file.to_str().unwrap()]).args(extra).current_dir(dir.path()).env("GANTRY_LOG", "debug");
        let out = cmd.envs(env.iter().copied()).output().unwrap();
        expect_code(&out, 0);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = logged(&[], &[]);
    assert!(plain.contains("plugin loaded"), "{plain}");
    assert!(!plain.contains('\x1b'), "escape codes in a log written to a pipe: {plain:?}");
    assert!(!logged(&["--color", "never"], &[]).contains('\x1b'));
    assert!(!logged(&["--color", "auto"], &[("NO_COLOR", "1")]).contains('\x1b'));
    assert!(logged(&["--color", "always"], &[]).contains("\x1b["), "--color always colours");
    // Times as a person reads them, not `ms=0.6721579999999999`.
    let time = plain.lines().find(|l| l.contains("plugin loaded")).unwrap();
    assert!(!time.contains("ms="), "{time}");
    assert!(time.contains(" ms") || time.contains(" us") || time.contains(" s"), "{time}");
}
