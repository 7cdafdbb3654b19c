//! Rollback barriers: a migration without a down file stops the rollback at its step, which waits
//! for a person. Against PostgreSQL (read back with psql) and a recording server (what each
//! guarded step did and undid), through the real binary.

use crate::peers::Postgres;
use crate::support::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const PASSWORD: &str = "barrier-pw-Q7";

/// `before` → `migrate` (V1, V2 without a down file, V3) → `after` → `gate`, and `beside` on a
/// branch of its own that `gate` also needs. `gate` fails until `fix/ok` exists.
fn pipeline(pg: &Postgres, server: &CountingServer, after_ms: u64, before_rollback_ms: u64) -> String {
    let origin = format!("postgres://127.0.0.1:{}", pg.port);
    let plugin = repo().join("tests/plugins/misbehave");
    let guarded = |id: &str, needs: &str, ms: u64, rollback_ms: u64| {
        format!(
            "  - id: {id}\n    uses: {}\n    needs: [{needs}]\n    network: [\"{}\"]\n    \
             with: {{ url: \"{}/record\", action: guarded, message: v, ms: {ms}, rollback_ms: {rollback_ms} }}\n",
            plugin.display(),
            server.origin(),
            server.origin()
        )
    };
    format!(
        "name: barriers\nsecrets:\n  DB_PASSWORD: {{ from: \"env:DB_PASSWORD\", bind: [\"{origin}\"] }}\n\
         databases:\n  app: {{ url: \"{origin}/app\", user: gantry, password: DB_PASSWORD, tls: disable }}\nsteps:\n\
         {before}  - id: migrate\n    uses: {migrate}\n    needs: [before]\n    databases: [app]\n    files: [migrations]\n    \
         with: {{ database: app, migrations: /migrations }}\n{beside}{after}  - id: gate\n    uses: {plugin}\n    \
         needs: [after, beside]\n    files: [fix]\n    with: {{ action: read, path: /fix/ok }}\n",
        before = guarded("before", "", 0, before_rollback_ms),
        beside = guarded("beside", "", 0, 0),
        after = guarded("after", "migrate", after_ms, 0),
        migrate = repo().join("plugins/db-migrate").display(),
        plugin = plugin.display(),
    )
}

fn setup(dir: &Path) -> Postgres {
    let pg = Postgres::start();
    pg.query("CREATE DATABASE app");
    let m = dir.join("migrations");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(dir.join("fix")).unwrap();
    for (name, sql) in [
        ("V1__bookings.sql", "CREATE TABLE bookings (id INT PRIMARY KEY);\n"),
        ("U1__bookings.sql", "DROP TABLE bookings;\n"),
        ("V2__drop_legacy.sql", "CREATE TABLE rooms (id INT PRIMARY KEY);\n"),
        ("V3__invoices.sql", "CREATE TABLE invoices (id INT PRIMARY KEY);\n"),
        ("U3__invoices.sql", "DROP TABLE invoices;\n"),
    ] {
        std::fs::write(m.join(name), sql).unwrap();
    }
    pg
}

fn run(dir: &Path, yaml: &str) -> std::process::Output {
    run_pipeline(dir, yaml, &[("DB_PASSWORD", PASSWORD)], &[])
}

fn gantry_env(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir).env("DB_PASSWORD", PASSWORD).env("GANTRY_USER", "ops-jane").args(args);
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn printed(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn tables(pg: &Postgres) -> Vec<String> {
    pg.query_in(
        "app",
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'gantry_schema_history'",
    )
}

fn history(pg: &Postgres) -> Vec<String> {
    pg.query_in("app", "SELECT string_agg(version::text, ',' ORDER BY version) FROM gantry_schema_history")
}

/// What the recording server saw, in order: `run <step>`, `rollback-to-v <step>`.
fn seen(server: &CountingServer) -> Vec<String> {
    // Each request reads `POST run before`.
    server.requests().iter().map(|r| r.split_once(' ').map_or(r.as_str(), |(_, rest)| rest).to_string()).collect()
}

fn count(seen: &[String], line: &str) -> usize {
    seen.iter().filter(|l| *l == line).count()
}

#[test]
fn a_dry_run_names_the_step_that_would_become_a_barrier_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pg = setup(dir.path());
    let server = CountingServer::start(Reply::text(200, "ok"));
    let report = dir.path().join("report.json");
    let extra = ["--dry-run", "--report", &format!("json={}", report.display())];
    let out = run_pipeline(dir.path(), &pipeline(&pg, &server, 0, 0), &[("DB_PASSWORD", PASSWORD)], &extra);
    let id = run_id(dir.path());
    let shown = printed(&gantry_env(dir.path(), &["runs", "show", &id]));
    assert!(
        shown.contains("migrate: dry run: WOULD BECOME A ROLLBACK BARRIER: V2 has no down file"),
        "{}\n{shown}",
        printed(&out)
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let ahead = &report["barriers_ahead"];
    assert_eq!(ahead[0]["step"], "migrate", "{report}");
    assert_eq!(ahead[0]["changed"], "V2__drop_legacy.sql", "{report}");
    // Nothing was applied, and no barrier is recorded that a later rollback would stop at.
    assert_eq!(tables(&pg), [""]);
    let journal = std::fs::read_to_string(dir.path().join(".gantry/runs").join(&id).join("journal.jsonl")).unwrap();
    assert!(!journal.contains("gantry.barrier") && !journal.contains("at_barrier"), "{journal}");
}

/// The first run: `gate` fails, the rollback undoes `after` and `beside`, then stops at `migrate`.
fn stopped_at_barrier(dir: &Path, pg: &Postgres, server: &CountingServer, yaml: &str) -> String {
    let out = run(dir, yaml);
    let text = printed(&out);
    assert_eq!(out.status.code(), Some(6), "{text}");
    let id = run_id(dir);
    let s = seen(server);
    assert_eq!(count(&s, "rollback-to-v after"), 1, "{s:?}");
    assert_eq!(count(&s, "rollback-to-v beside"), 1, "{s:?}");
    assert_eq!(count(&s, "rollback-to-v before"), 0, "a step older than the barrier was undone: {s:?}");
    assert_eq!(history(pg), ["1,2,3"]);
    assert_eq!(tables(pg), ["bookings,invoices,rooms"]);
    let runs = printed(&gantry_env(dir, &["runs"]));
    assert!(runs.contains("stopped-at-barrier"), "{runs}");
    let journal = std::fs::read_to_string(dir.join(".gantry/runs").join(&id).join("journal.jsonl")).unwrap();
    assert!(journal.contains("\"phase\":\"at_barrier\"") && journal.contains("V2 has no down file"), "{journal}");
    id
}

#[test]
fn a_migration_without_a_down_file_stops_the_rollback_at_its_step_and_resume_goes_forward() {
    let dir = tempfile::tempdir().unwrap();
    let pg = setup(dir.path());
    let server = CountingServer::start(Reply::text(200, "ok"));
    let yaml = pipeline(&pg, &server, 0, 0);
    let id = stopped_at_barrier(dir.path(), &pg, &server, &yaml);

    // The report shows the barrier, its reason and what is still in place.
    let html = dir.path().join("report.html");
    let out = gantry_env(dir.path(), &["report", &id, "--html", html.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", printed(&out));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("Rollback barrier") && page.contains("V2 has no down file"), "{page}");
    assert!(page.contains("Still in place: <b>before, migrate</b>"), "{page}");

    // A plain rollback again undoes nothing more: the barrier still holds.
    let out = gantry_env(dir.path(), &["rollback", &id]);
    assert_eq!(out.status.code(), Some(6), "{}", printed(&out));
    assert_eq!(count(&seen(&server), "rollback-to-v before"), 0);

    // The cause fixed, resume goes forward from the barrier: the undone steps run again, the barrier's
    // step and what it needs do not.
    std::fs::write(dir.path().join("fix/ok"), "fixed").unwrap();
    let out = gantry_env(dir.path(), &["resume", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", printed(&out));
    let s = seen(&server);
    assert_eq!((count(&s, "run before"), count(&s, "run after"), count(&s, "run beside")), (1, 2, 2), "{s:?}");
    assert_eq!(history(&pg), ["1,2,3"]);
    let runs = printed(&gantry_env(dir.path(), &["runs"]));
    assert!(runs.contains("succeeded"), "{runs}");
}

#[test]
fn rollback_past_the_barrier_undoes_what_the_step_still_can_and_everything_older_after_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let pg = setup(dir.path());
    let server = CountingServer::start(Reply::text(200, "ok"));
    let yaml = pipeline(&pg, &server, 0, 0);
    let id = stopped_at_barrier(dir.path(), &pg, &server, &yaml);

    // Without a terminal to confirm on and without --yes, nothing happens.
    let out = gantry_env(dir.path(), &["rollback", &id, "--past-barrier"]);
    assert_ne!(out.status.code(), Some(0), "{}", printed(&out));
    assert!(printed(&out).contains("--yes"), "{}", printed(&out));
    assert_eq!(history(&pg), ["1,2,3"]);

    let out = gantry_env(dir.path(), &["rollback", &id, "--past-barrier", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", printed(&out));
    // V3 had a down file and is undone; V2 has none and stays, and V1 under it.
    assert_eq!(history(&pg), ["1,2"]);
    assert_eq!(tables(&pg), ["bookings,rooms"]);
    assert_eq!(count(&seen(&server), "rollback-to-v before"), 1);
    let journal = std::fs::read_to_string(dir.path().join(".gantry/runs").join(&id).join("journal.jsonl")).unwrap();
    assert!(journal.contains("\"past_barrier\"") && journal.contains("ops-jane"), "{journal}");
}

#[test]
fn settle_records_who_accepted_the_state_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let pg = setup(dir.path());
    let server = CountingServer::start(Reply::text(200, "ok"));
    let yaml = pipeline(&pg, &server, 0, 0);
    let id = stopped_at_barrier(dir.path(), &pg, &server, &yaml);
    let out = gantry_env(dir.path(), &["settle", &id, "--reason", "V2 is compatible; the gate is fixed next release"]);
    assert_eq!(out.status.code(), Some(0), "{}", printed(&out));
    assert!(printed(&out).contains("before, migrate"), "{}", printed(&out));
    let runs = printed(&gantry_env(dir.path(), &["runs"]));
    assert!(runs.contains("settled"), "{runs}");
    let journal = std::fs::read_to_string(dir.path().join(".gantry/runs").join(&id).join("journal.jsonl")).unwrap();
    assert!(journal.contains("\"settled\"") && journal.contains("ops-jane") && journal.contains("compatible"));
    assert_eq!(history(&pg), ["1,2,3"]);
    // Settled is final: neither resume nor a second settle acts on it.
    let before = seen(&server);
    let resumed = gantry_env(dir.path(), &["resume", &id]);
    assert_ne!(resumed.status.code(), Some(0), "{}", printed(&resumed));
    assert!(printed(&resumed).contains("was settled"), "{}", printed(&resumed));
    assert_eq!(seen(&server), before, "a resume of a settled run called a plugin");
    assert_ne!(gantry_env(dir.path(), &["settle", &id, "--reason", "again"]).status.code(), Some(0));
    assert_eq!(history(&pg), ["1,2,3"]);
}

/// Starts `gantry <args>` in `dir` and kills it with SIGKILL once the server has seen `line` once more.
fn kill_when(dir: &Path, server: &CountingServer, args: &[&str], line: &str) {
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir).env("DB_PASSWORD", PASSWORD).env("GANTRY_USER", "ops-jane").args(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let before = count(&seen(server), line);
    let mut child = spawn_until(&mut cmd, line, || count(&seen(server), line) > before);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_crash_during_resume_or_rollback_past_the_barrier_is_recovered() {
    // Killed while going forward from the barrier (inside `after`), then resumed again.
    let dir = tempfile::tempdir().unwrap();
    let pg = setup(dir.path());
    let server = CountingServer::start(Reply::text(200, "ok"));
    let yaml = pipeline(&pg, &server, 3000, 0);
    // `after` works 3 s after its change, in the run and in every resume (they follow the recorded plan).
    let out = run(dir.path(), &yaml);
    assert_eq!(out.status.code(), Some(6), "{}", printed(&out));
    let id = run_id(dir.path());
    std::fs::write(dir.path().join("fix/ok"), "fixed").unwrap();
    let runs_before = count(&seen(&server), "run after");
    kill_when(dir.path(), &server, &["resume", &id], "run after");
    assert_eq!(count(&seen(&server), "run after"), runs_before + 1);
    let out = gantry_env(dir.path(), &["resume", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", printed(&out));
    assert_eq!(history(&pg), ["1,2,3"]);
    assert_eq!(count(&seen(&server), "run before"), 1);

    // Killed while a barrier's own step undoes what it can, after the person chose to go past it;
    // then a plain rollback: the choice is in the journal, so it goes on past the barrier.
    let dir = tempfile::tempdir().unwrap();
    let server = CountingServer::start(Reply::text(200, "ok"));
    let plugin = repo().join("tests/plugins/misbehave");
    let yaml = format!(
        "name: barrier-kill\nsteps:\n  - id: b\n    uses: {p}\n    network: [\"{o}\"]\n    \
         with: {{ url: \"{o}/record\", action: guarded, message: v, barrier: true, rollback_ms: 4000 }}\n{f}",
        p = plugin.display(),
        o = server.origin(),
        f = failing_step("f", "b", "the smoke test failed")
    );
    let out = run_pipeline(dir.path(), &yaml, &[], &[]);
    assert_eq!(out.status.code(), Some(6), "{}", printed(&out));
    let id = run_id(dir.path());
    let journal = dir.path().join(".gantry/runs").join(&id).join("journal.jsonl");
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir.path()).args(["rollback", &id, "--past-barrier", "--yes"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawn_until(&mut cmd, "the choice to go past the barrier", || {
        std::fs::read_to_string(&journal).unwrap_or_default().contains("\"past_barrier\"")
    });
    std::thread::sleep(Duration::from_millis(1000));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(count(&seen(&server), "rollback-to-v b"), 0, "killed before b's rollback reported");
    let out = gantry_env(dir.path(), &["rollback", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", printed(&out));
    assert_eq!(count(&seen(&server), "rollback-to-v b"), 1);
}
