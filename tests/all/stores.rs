//! Run stores end to end: the file store and PostgreSQL (a real server from
//! Debian's package), the run lock between processes and runners, and a
//! journal that stops accepting events in the middle of a run.

use crate::peers::Postgres;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn recorder() -> CountingServer {
    CountingServer::start(Reply::text(200, "ok"))
}

/// Writes `name: run-test` with one misbehave step `a` sleeping `ms` into `dir/<file>`.
fn pipeline(dir: &Path, file: &str, server: &CountingServer, steps: &[(&str, &str, u64)]) -> PathBuf {
    let misbehave = repo().join("tests/plugins/misbehave");
    let mut text = String::from("name: run-test\nsteps:\n");
    for (id, needs, ms) in steps {
        text += &format!(
            "  - id: {id}\n    uses: {}\n    needs: [{needs}]\n    network: [\"{o}\"]\n    timeout: 60s\n    with: {{ url: \"{o}/record\", ms: {ms} }}\n",
            misbehave.display(),
            o = server.origin()
        );
    }
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// `gantry <args>` in `dir`, with `GANTRY_STATE` set when `state` is given.
fn gantry_cmd(dir: &Path, state: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = command(&shared_cache());
    cmd.args(args).current_dir(dir);
    match state {
        Some(url) => cmd.env("GANTRY_STATE", url),
        None => cmd.env_remove("GANTRY_STATE"),
    };
    cmd
}

fn spawn(dir: &Path, state: Option<&str>, args: &[&str]) -> Child {
    gantry_cmd(dir, state, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn output(dir: &Path, state: Option<&str>, args: &[&str]) -> Output {
    gantry_cmd(dir, state, args).output().unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `gantry runs --json` parsed.
fn runs(dir: &Path, state: Option<&str>) -> Vec<serde_json::Value> {
    let out = output(dir, state, &["runs", "--json"]);
    expect_code(&out, 0);
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn started(dir: &Path, state: Option<&str>, step: &str) -> bool {
    runs(dir, state).iter().any(|r| {
        let id = r["id"].as_str().unwrap();
        let out = output(dir, state, &["runs", "show", id]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("{step}: started"))
    })
}

#[test]
fn file_store_two_runs_started_at_once_against_a_stale_lock_exactly_one_runs() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), "p.yaml", &server, &[("a", "", 1500)]);
    // A lock file left by a runner that died: its content says who, but nobody holds the flock.
    let locks = dir.path().join(".gantry/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let stale = serde_json::json!({"run_id": "dead-run", "pid": 4194304, "host": "gone", "since_ms": 0.0});
    std::fs::write(locks.join("run-test.development.default.lock"), stale.to_string()).unwrap();

    let args = ["run", file.to_str().unwrap()];
    let (first, second) = (spawn(dir.path(), None, &args), spawn(dir.path(), None, &args));
    let outs = [first.wait_with_output().unwrap(), second.wait_with_output().unwrap()];
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    assert!(codes == [Some(0), Some(2)] || codes == [Some(2), Some(0)], "exactly one runs: {codes:?}");
    let refused = outs.iter().find(|o| o.status.code() == Some(2)).unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("run-test/development/default is already running (run "), "{stderr}");
    assert!(!stderr.contains("dead-run"), "the stale holder is not the one named: {stderr}");
    assert_eq!(server.requests(), ["POST run a"]);
}

#[test]
fn postgres_store_one_lock_for_two_runners_released_by_kill_9_and_entities_in_parallel() {
    let pg = Postgres::start();
    let url = pg.url();
    let state = Some(url.as_str());
    let server = recorder();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let slow = pipeline(one.path(), "p.yaml", &server, &[("a", "", 30_000)]);
    let fast = pipeline(two.path(), "p.yaml", &server, &[("a", "", 0)]);

    let mut holder = spawn(one.path(), state, &["run", slow.to_str().unwrap()]);
    wait_until("the first runner's step", || started(one.path(), state, "a"));
    let refused = output(two.path(), state, &["run", fast.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let holder_id = runs(two.path(), state)[0]["id"].as_str().unwrap().to_string();
    assert!(
        stderr.contains(&format!(
            "run-test/development/default is already running (run {holder_id}, pid {} on ",
            holder.id()
        )),
        "{stderr}"
    );
    assert_eq!(server.hits(), 0, "the holder is still in its step and the refused runner changed nothing");

    // The holder dies without a word; the database ends its session and with it the lock.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let next = output(two.path(), state, &["run", fast.to_str().unwrap()]);
    assert_eq!(next.status.code(), Some(0), "{}", String::from_utf8_lossy(&next.stderr));
    assert_eq!(server.requests(), ["POST run a"], "only the runner after the kill reached the peer");

    // Different entities hold different locks: both runners run at once.
    let both = pipeline(one.path(), "both.yaml", &server, &[("a", "", 1500)]);
    let both = both.to_str().unwrap();
    let e1 = spawn(one.path(), state, &["run", both, "--entity", "the_7_space"]);
    let e2 = spawn(two.path(), state, &["run", both, "--entity", "am_consulting"]);
    let (o1, o2) = (e1.wait_with_output().unwrap(), e2.wait_with_output().unwrap());
    expect_code(&o1, 0);
    expect_code(&o2, 0);
    // Read back from the database itself, not through gantry: overlapping runs of the two entities.
    let rows = pg.query(
        "select r.entity, min((e.body::json->>'ts_ms')::float8), max((e.body::json->>'ts_ms')::float8)
         from gantry_runs r join gantry_events e on e.run_id = r.id
         where r.entity in ('the_7_space', 'am_consulting') group by r.entity order by r.entity",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    let span = |row: &str| {
        let f: Vec<f64> = row.split('|').skip(1).map(|v| v.parse().unwrap()).collect();
        (f[0], f[1])
    };
    let ((s1, e1), (s2, e2)) = (span(&rows[0]), span(&rows[1]));
    assert!(s1 < e2 && s2 < e1, "the entity runs overlapped: {rows:?}");
    let statuses = pg.query("select status, count(*) from gantry_runs group by status order by status");
    assert_eq!(statuses, ["incomplete|1", "succeeded|3"], "the killed run has no end; the others finished");
}

/// Normalises what differs between two recordings of the same run: ids, times, request durations.
fn normalised(text: &str, id: &str, origin: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let line = line.replace(id, "<run>").replace(origin, "<peer>");
            let line = match line.split_once(' ') {
                Some((first, rest)) if humantime::parse_rfc3339(first).is_ok() => rest.to_string(),
                _ => line,
            };
            let line = match line.split_once(" -> 200 (") {
                Some((request, _)) => format!("{request} -> 200"),
                None => line,
            };
            // `resume: pid 4242 on host took the run up`
            match line.split_once(": pid ") {
                Some((command, rest)) => format!("{command}: pid <pid>{}", &rest[rest.find(' ').unwrap_or(0)..]),
                None => line,
            }
        })
        .collect()
}

/// A run killed in its second step, then listed, shown, resumed and rolled back, as each store records it.
fn killed_then_resumed_and_rolled_back(state: Option<&str>) -> Vec<String> {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), "p.yaml", &server, &[("a", "", 0), ("b", "a", 3000), ("c", "b", 0)]);
    let mut child = spawn(dir.path(), state, &["run", file.to_str().unwrap()]);
    wait_until("step b", || started(dir.path(), state, "b"));
    child.kill().unwrap();
    child.wait().unwrap();
    let id = runs(dir.path(), state)[0]["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let mut record = |label: &str, out: Output| {
        seen.push(format!("{label}: exit {:?}", out.status.code()));
        seen.extend(normalised(&String::from_utf8_lossy(&out.stdout), &id, &server.origin()));
    };
    record("runs", output(dir.path(), state, &["runs"]));
    record("show", output(dir.path(), state, &["runs", "show", &id]));
    record("resume", output(dir.path(), state, &["resume", &id]));
    record("rollback", output(dir.path(), state, &["rollback", &id]));
    record("runs", output(dir.path(), state, &["runs"]));
    record("show", output(dir.path(), state, &["runs", "show", &id]));
    seen.push(format!("requests: {:?}", server.requests()));
    seen
}

#[test]
fn runs_show_resume_and_rollback_say_the_same_against_both_stores() {
    let pg = Postgres::start();
    let url = pg.url();
    let files = killed_then_resumed_and_rolled_back(None);
    let postgres = killed_then_resumed_and_rolled_back(Some(&url));
    assert_eq!(files, postgres);
    // And what they say is the whole story: b was cut off, resumed to the end, then undone newest first.
    assert!(files.contains(&"resume: exit Some(0)".to_string()), "{files:#?}");
    assert!(files.contains(&"rollback: exit Some(0)".to_string()), "{files:#?}");
    let requests = files.last().unwrap();
    assert_eq!(
        requests,
        r#"requests: ["POST run a", "POST run b", "POST run c", "POST rollback c", "POST rollback b", "POST rollback a"]"#
    );
    assert_eq!(
        pg.query("select version from gantry_schema"),
        ["2"],
        "the schema is versioned (runs gained their rollout)"
    );
}

/// A file store whose disk fills up when the journal records the start of one step.
struct DiskFullAt {
    inner: gantry_host::run::store::file::FileStore,
    step: &'static str,
}

#[async_trait::async_trait]
impl RunStore for DiskFullAt {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn create(&self, run_id: &str) -> Result<(), StoreError> {
        self.inner.create(run_id).await
    }
    async fn append(&self, run_id: &str, records: &[Record]) -> Result<(), StoreError> {
        let full = records.iter().any(|r| matches!(&r.event, Event::StepStarted { step, .. } if step == self.step));
        if full {
            let source = std::io::Error::from_raw_os_error(28); // ENOSPC
            return Err(StoreError::Io { what: format!("writing the journal of run {run_id}"), source });
        }
        self.inner.append(run_id, records).await
    }
    async fn read(&self, run_id: &str) -> Result<StoredJournal, StoreError> {
        self.inner.read(run_id).await
    }
    async fn list(&self) -> Result<Vec<RunInfo>, StoreError> {
        self.inner.list().await
    }
    async fn lock(&self, key: &LockKey, holder: &Holder) -> Result<std::sync::Arc<dyn RunLock>, StoreError> {
        self.inner.lock(key, holder).await
    }
    fn artifacts(&self, run_id: &str) -> PathBuf {
        self.inner.artifacts(run_id)
    }
}

use gantry_host::run::journal::Record;
use gantry_host::run::store::{Holder, LockKey, RunInfo, RunLock, RunStore, StoreError, StoredJournal};
use gantry_host::run::Event;

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_that_fails_mid_run_stops_the_run_rolls_back_and_asks_for_a_person() {
    let server = recorder();
    let dir = tempfile::tempdir().unwrap();
    let component = plugin("tests/plugins/misbehave");
    let mut text = String::from("name: disk-full\nsteps:\n");
    for (id, needs) in [("a", ""), ("b", "a"), ("c", "b")] {
        text += &format!(
            "  - id: {id}\n    uses: {}\n    needs: [{needs}]\n    network: [\"{o}\"]\n    with: {{ url: \"{o}/record\" }}\n",
            component.display(),
            o = server.origin()
        );
    }
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, text).unwrap();
    let loaded = gantry_host::pipeline::load(&file).unwrap();
    let plan = gantry_host::plan::plan(&loaded, "production", "default", &Default::default()).unwrap();
    let inner = gantry_host::run::store::file::FileStore::new(dir.path().join(".gantry"));
    let store = std::sync::Arc::new(DiskFullAt { inner, step: "b" });
    let session = gantry_host::run::Session::start(store.clone(), &plan).await.unwrap();
    let runtime = gantry_host::sandbox::Runtime::builder().cache_dir(shared_cache()).build().unwrap();
    let options = gantry_host::run::RunOptions { jobs: 2, ..Default::default() };
    let result = gantry_host::run::run(&runtime, &plan, &session, &options, None).await.unwrap();
    let id = session.run_id().to_string();
    let _ = session.close().await;

    // b was never started (its start could not be recorded), a was undone, and the exit code asks for a person.
    assert_eq!(server.requests(), ["POST run a", "POST rollback a"]);
    assert_eq!(result.rolled_back, ["a"]);
    assert!(result.journal_error.as_deref().unwrap().contains("os error 28"), "{:?}", result.journal_error);
    assert_eq!(result.exit_code(), 3, "not 2: something ran");
    // What the journal kept ends where the disk filled: a's run, never b's start.
    let kept = store.inner.read(&id).await.unwrap();
    let events: Vec<String> = kept
        .records
        .iter()
        .map(|r| serde_json::to_value(&r.event).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    let preflight = ["phase", "preflight_checked", "preflight_checked", "preflight_checked"];
    let started = ["reading_secrets", "run_started", "opened"].into_iter().chain(preflight);
    let ran = ["phase", "step_started", "request", "step_finished"];
    assert_eq!(events, started.chain(ran).collect::<Vec<_>>());
    let seqs: Vec<u64> = kept.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<u64>>(), "events carry their sequence numbers");
    assert!(kept.records.iter().all(|r| r.session == 1), "and the session that wrote them");
}
