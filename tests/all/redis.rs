//! The `redis` capability end to end, against Debian's `redis-server` read back with `redis-cli`:
//! `cache-purge` deleting only what lies under the granted prefix (a dry run first), commands and
//! keys the host refuses before they reach the server, a read-only grant, the password never
//! crossing into the plugin, the journal or the report, and a purge killed with SIGKILL mid-way,
//! then resumed.

use crate::peers::Redis;
use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;

const PASSWORD: &str = "redis-pw-7f3a9c";

/// The outputs of step `id` in a `--json` run, or its error.
fn outputs(out: &std::process::Output, id: &str) -> Result<Value, String> {
    let events: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let of = |name: &str| events.iter().find(|e| e["event"] == name && e["step"] == id).cloned();
    match (of("step_finished"), of("step_failed")) {
        (Some(done), _) => Ok(done["outputs"].clone()),
        (None, Some(failed)) => Err(failed["error"].as_str().unwrap_or_default().to_string()),
        (None, None) => panic!(
            "step {id} neither finished nor failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A pipeline declaring `cache` (and a read-only `ro` view of the same server) with `steps`.
fn pipeline(redis: &Redis, steps: &str) -> String {
    format!(
        r#"name: cache
secrets:
  CACHE_PASSWORD: {{ from: "env:CACHE_PASSWORD", bind: ["{origin}"] }}
redis:
  cache: {{ url: "redis://127.0.0.1:{port}/0", password: CACHE_PASSWORD, prefixes: ["the7space:"] }}
  ro: {{ url: "redis://127.0.0.1:{port}/0", password: CACHE_PASSWORD, prefixes: ["the7space:"], readonly: true }}
steps:
{steps}"#,
        origin = redis.origin(),
        port = redis.port
    )
}

fn purge_step(extra: &str) -> String {
    format!(
        "  - id: purge\n    uses: {}\n    redis: [cache]\n    with: {{ server: cache, prefix: \"the7space:page:\"{extra} }}\n",
        repo().join("plugins/cache-purge").display()
    )
}

/// Seeds `n` pages under the prefix and three keys the grant does not reach.
fn seed(redis: &Redis, n: usize) {
    let mut commands = String::new();
    for i in 0..n {
        commands.push_str(&format!("SET the7space:page:{i} cached-{i}\n"));
    }
    commands.push_str("SET other:keep 1\nSET the7space:session:a 1\nSET the7space 1\n");
    redis.pipe(&commands);
}

fn no_password_under(dir: &Path) {
    for entry in walk(dir) {
        let text = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&text).contains(PASSWORD),
            "the password is in {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_purge_deletes_only_under_its_prefix_after_a_dry_run_and_the_plan_shows_the_grant() {
    let redis = Redis::start(PASSWORD);
    seed(&redis, 1200);
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline(&redis, &purge_step(", batch: 200"));
    let env = [("CACHE_PASSWORD", PASSWORD)];

    std::fs::write(dir.path().join("pipeline.yaml"), &yaml).unwrap();
    let plan = gantry_in(dir.path(), &["plan", "pipeline.yaml"]);
    let shown = String::from_utf8_lossy(&plan.stdout);
    let grant = format!("redis     cache = redis://127.0.0.1:{}/0, keys under the7space:, read-write", redis.port);
    assert!(shown.contains(&grant), "{shown}");
    assert!(shown.contains("redis     signs in with CACHE_PASSWORD (env:CACHE_PASSWORD)"), "{shown}");

    let dry = run_pipeline(dir.path(), &yaml, &env, &["--dry-run"]);
    let found = outputs(&dry, "purge").unwrap();
    assert_eq!(found["would_delete"], "1200", "{found}");
    assert_eq!(found["sample"].as_str().unwrap().split(',').count(), 10);
    assert_eq!(redis.cli(&["DBSIZE"]), "1203", "a dry run deletes nothing");

    let out = run_pipeline(dir.path(), &yaml, &env, &[]);
    expect_code(&out, 0);
    assert_eq!(outputs(&out, "purge").unwrap()["deleted"], "1200");
    // Read back with redis-cli: every page gone, every key outside the purged prefix still there.
    assert_eq!(redis.cli(&["DBSIZE"]), "3");
    assert_eq!(redis.cli(&["GET", "other:keep"]), "1");
    assert_eq!(redis.cli(&["EXISTS", "the7space:session:a", "the7space"]), "2");

    // Every run's journal (the dry run's and the run's): each command recorded, none refused.
    let runs = std::fs::read_dir(dir.path().join(".gantry/runs")).unwrap();
    let journal: Vec<Value> =
        runs.flatten().flat_map(|r| journal_of(dir.path(), &r.file_name().to_string_lossy())).collect();
    let requests: Vec<&Value> = journal.iter().filter(|e| e["event"] == "request").collect();
    assert!(requests.iter().any(|r| r["method"] == "UNLINK" && r["origin"] == format!("redis://127.0.0.1:{}/0", redis.port)));
    assert!(requests.iter().all(|r| r["allowed"] == true), "{requests:?}");
    // The run report's grants table and plan --diff read the same lines.
    let id = requests[0]["run_id"].as_str().map(String::from);
    let id = id.unwrap_or_else(|| {
        let runs = std::fs::read_dir(dir.path().join(".gantry/runs")).unwrap();
        let ids: Vec<String> = runs.flatten().map(|r| r.file_name().to_string_lossy().into_owned()).collect();
        ids.into_iter().max().unwrap()
    });
    let html = dir.path().join("report.html");
    let report = gantry_in(dir.path(), &["report", &id, "--html", html.to_str().unwrap()]);
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains(&format!("redis cache = redis://127.0.0.1:{}/0, keys under the7space:, read-write", redis.port)));
    std::fs::write(dir.path().join("pipeline.yaml"), yaml.replace("prefixes: [\"the7space:\"] }", "prefixes: [\"the7space:page:\"] }")).unwrap();
    let diff = gantry_in(dir.path(), &["plan", "pipeline.yaml", "--diff", &id]);
    let diff = String::from_utf8_lossy(&diff.stdout);
    assert!(diff.contains(&format!("+ purge: redis cache = redis://127.0.0.1:{}/0, keys under the7space:page:, read-write", redis.port)), "{diff}");
    assert!(diff.contains("- purge: redis cache = "), "{diff}");
    no_password_under(dir.path());
}

#[test]
fn commands_and_keys_outside_the_grant_never_reach_the_server() {
    let redis = Redis::start(PASSWORD);
    redis.cli(&["SET", "other:keep", "1"]);
    // Another application stored the password under the prefix: a plugin reading it gets it redacted.
    redis.cli(&["SET", "the7space:leak", PASSWORD]);
    let dir = tempfile::tempdir().unwrap();
    let script = r#"[["SET", "the7space:a", "1"], ["SET", "other:b", "1"], ["KEYS", "*"], ["FLUSHALL"],
        ["CONFIG", "GET", "requirepass"], ["EVAL", "return redis.call('del', 'other:keep')", "0"],
        ["SCAN", "0", "MATCH", "*"], ["MSET", "the7space:x", "1", "other:y", "2"], ["SELECT", "1"],
        ["DEL", "the7space:a", "other:keep"], ["PUBLISH", "other:news", "hi"], ["GET", "the7space:leak"],
        ["SCAN", "0", "COUNT", "1000"]]"#;
    let misbehave = repo().join("tests/plugins/misbehave");
    let steps = format!(
        "  - id: script\n    uses: {m}\n    redis: [cache]\n    with: {{ action: redis-script, path: cache, redis: {script} }}\n\
         \x20 - id: readonly\n    uses: {m}\n    redis: [ro]\n    with: {{ action: redis-script, path: ro, redis: [[\"GET\", \"the7space:a\"], [\"SET\", \"the7space:b\", \"1\"]] }}\n\
         \x20 - id: ungranted\n    uses: {m}\n    with: {{ action: redis-script, path: cache, redis: [[\"PING\"]] }}\n",
        m = misbehave.display(),
        script = script.replace('\n', " ")
    );
    let out = run_pipeline(dir.path(), &pipeline(&redis, &steps), &[("CACHE_PASSWORD", PASSWORD)], &[]);
    let lines: Vec<String> =
        outputs(&out, "script").unwrap()["redis"].as_str().unwrap().lines().map(String::from).collect();
    assert_eq!(lines.len(), 13, "{lines:#?}");
    assert!(lines[0].contains("Status(\"OK\")"), "{}", lines[0]);
    assert!(lines[1].contains("key `other:b` is outside the grant's prefixes (the7space:)"), "{}", lines[1]);
    assert!(lines[2].contains("command KEYS is not allowed"), "{}", lines[2]);
    for (i, command) in [(3, "FLUSHALL"), (4, "CONFIG"), (5, "EVAL"), (8, "SELECT")] {
        assert!(lines[i].contains(&format!("command {command} is not allowed")), "{}", lines[i]);
    }
    assert!(lines[6].contains("SCAN MATCH `*` does not start with one of the grant's prefixes"), "{}", lines[6]);
    assert!(lines[7].contains("key `other:y` is outside"), "a command with one key outside sends nothing: {}", lines[7]);
    assert!(lines[9].contains("key `other:keep` is outside"), "{}", lines[9]);
    assert!(lines[10].contains("channel `other:news` is outside"), "{}", lines[10]);
    assert!(!lines[11].contains(PASSWORD) && lines[11].contains("ok Bulk"), "{}", lines[11]);
    assert!(lines[12].contains("the7space:a") && !lines[12].contains("other:keep"), "SCAN without MATCH keeps to the prefix: {}", lines[12]);

    let ro: Vec<String> = outputs(&out, "readonly").unwrap()["redis"].as_str().unwrap().lines().map(String::from).collect();
    assert!(ro[0].starts_with("ok"), "a read-only grant reads: {ro:?}");
    assert!(ro[1].contains("SET writes, and the grant is read-only"), "{ro:?}");
    let ungranted = outputs(&out, "ungranted").unwrap()["redis"].as_str().unwrap().to_string();
    assert!(ungranted.contains("Redis server `cache` is not granted to the step (granted: none"), "{ungranted}");

    // Read back with redis-cli: only the granted write landed; nothing refused reached the server.
    assert_eq!(redis.cli(&["GET", "the7space:a"]), "1");
    assert_eq!(redis.cli(&["EXISTS", "other:b", "other:y", "the7space:x", "the7space:b"]), "0");
    assert_eq!(redis.cli(&["GET", "other:keep"]), "1");
    let stats = redis.cli(&["INFO", "commandstats"]);
    for refused in ["cmdstat_keys", "cmdstat_flushall", "cmdstat_config", "cmdstat_eval", "cmdstat_select", "cmdstat_mset", "cmdstat_del", "cmdstat_publish"] {
        assert!(!stats.contains(&format!("{refused}:")), "{refused} reached the server:\n{stats}");
    }
    no_password_under(dir.path());
}

#[test]
fn a_purge_killed_mid_way_resumes_and_deletes_what_was_left() {
    let redis = Redis::start(PASSWORD);
    seed(&redis, 3000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, pipeline(&redis, &purge_step(", batch: 100, pause_ms: 40"))).unwrap();
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir.path()).env("CACHE_PASSWORD", PASSWORD).args(["run", "pipeline.yaml"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let checkpoints = || journal(dir.path()).iter().filter(|e| e["event"] == "checkpoint").count();
    let mut child = spawn_until(&mut cmd, "the fifth batch", || checkpoints() >= 5);
    child.kill().unwrap();
    child.wait().unwrap();
    redis.settle();
    let left: usize = redis.cli(&["DBSIZE"]).parse().unwrap();
    assert!(left > 3 && left < 3003, "killed mid-purge: {left} keys left");

    let id = run_id(dir.path());
    let out = command(&shared_cache())
        .current_dir(dir.path())
        .env("CACHE_PASSWORD", PASSWORD)
        .args(["resume", &id])
        .output()
        .unwrap();
    expect_code(&out, 0);
    assert_eq!(redis.cli(&["DBSIZE"]), "3", "every page gone after the resume");
    assert_eq!(redis.cli(&["GET", "other:keep"]), "1");
    let journal = journal(dir.path());
    // The killed attempt's batches are in the journal (checkpointed before each was deleted); the
    // resume rolled it back (a purge undoes nothing) and ran it again over what was left.
    let begun: u64 = journal
        .iter()
        .filter(|e| e["event"] == "checkpoint" && e["session"] == 1)
        .map(|e| e["value"].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0))
        .sum();
    assert!(begun >= 500, "{begun}");
    assert!(journal.iter().any(|e| e["event"] == "rolled_back" && e["step"] == "purge"));
    let finished = journal.iter().rev().find(|e| e["event"] == "step_finished" && e["step"] == "purge").unwrap();
    assert_eq!(finished["outputs"]["deleted"], (left - 3).to_string(), "{finished}");
    no_password_under(dir.path());
}

#[test]
fn an_environment_moves_a_server_and_narrows_it_but_never_widens_it() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"name: cache
secrets:
  CACHE_PASSWORD: {{ from: "env:CACHE_PASSWORD", bind: ["redis://127.0.0.1:6379", "redis://cache.prod"] }}
redis:
  cache: {{ url: "redis://127.0.0.1/0", password: CACHE_PASSWORD, prefixes: ["gallery:"], readonly: true }}
environments:
  staging:
    redis:
      cache: {{ url: "redis://cache.prod/1", password: CACHE_PASSWORD, prefixes: ["gallery:staging:"], readonly: true }}
  production:
    redis:
      cache: {{ url: "redis://cache.prod/0", password: CACHE_PASSWORD, prefixes: ["gallery:", "sessions:"] }}
      sessions: {{ url: "redis://cache.prod/2", password: CACHE_PASSWORD, prefixes: ["s:"] }}
steps:
{}"#,
        purge_step("")
    );
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = gantry(&["validate", "--offline", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("pipeline.yaml:")).collect();
    assert_eq!(problems.len(), 3, "{stderr}");
    // In file order: the read-only lifted (shown at the server, which does not write the field), then the wider prefix.
    assert!(problems[0].contains(":12:") && problems[0].contains("environments.production.redis.cache.readonly: the pipeline's `redis.cache` is read-only"), "{stderr}");
    assert!(problems[1].contains(":12:") && problems[1].contains("environments.production.redis.cache.prefixes[1]: `sessions:` reaches keys the pipeline's `redis.cache` does not"), "{stderr}");
    assert!(problems[2].contains(":13:") && problems[2].contains("replaces `sessions`, which the pipeline's `redis:` does not declare"), "{stderr}");
}

#[test]
fn a_wrong_password_is_refused_by_the_server_and_named_nowhere() {
    let redis = Redis::start(PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-password-93b1";
    let out = run_pipeline(dir.path(), &pipeline(&redis, &purge_step("")), &[("CACHE_PASSWORD", wrong)], &[]);
    let error = outputs(&out, "purge").unwrap_err();
    assert!(error.contains("the server refused to sign in: WRONGPASS"), "{error}");
    assert!(!error.contains(wrong));
    for entry in walk(dir.path()) {
        let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap_or_default()).into_owned();
        assert!(!text.contains(wrong), "the password is in {}", entry.display());
    }
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
}
