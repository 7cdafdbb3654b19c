//! Database grants keep their promises against a hostile plugin: the misbehave
//! plugin's `sql-script` runs what an attacker would, through the real binary,
//! against PostgreSQL and MariaDB; every effect is read back from outside
//! (psql, mariadb), never through the plugin.

use crate::peers::{MariaDb, Postgres};
use crate::support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const PASSWORD: &str = "Sq1-grant-Passw0rd";

/// A PostgreSQL with database `app`: `settings` holds the password, `reader` may only read it (and
/// may insert into `audit`, so only the read-only grant stands between it and a write), `writer`
/// may write, `filer` reads but is a member of `pg_write_server_files`; `bump()` writes.
fn postgres() -> Postgres {
    let pg = Postgres::start();
    pg.query("CREATE DATABASE app");
    pg.query_in(
        "app",
        &format!(
            "CREATE TABLE settings (k text, v text); INSERT INTO settings VALUES ('db', '{PASSWORD}'); \
             CREATE TABLE audit (n int); \
             CREATE FUNCTION bump() RETURNS int LANGUAGE sql AS 'INSERT INTO audit VALUES (9) RETURNING n'; \
             CREATE ROLE reader LOGIN; GRANT SELECT ON settings TO reader; GRANT SELECT, INSERT ON audit TO reader; \
             CREATE ROLE writer LOGIN; GRANT ALL ON settings, audit TO writer; \
             CREATE ROLE filer LOGIN; GRANT SELECT ON settings TO filer; GRANT pg_write_server_files TO filer"
        ),
    );
    pg
}

/// A pipeline granting `app` as every role of [`postgres`], and one step running `ops` on `grant`.
fn pg_pipeline(pg: &Postgres, grant: &str, ops: Value, timeout: &str) -> String {
    let origin = format!("postgres://127.0.0.1:{}", pg.port);
    let db = |user: &str, ro: bool| {
        format!("{{ url: \"{origin}/app\", user: {user}, password: DB_PASSWORD, tls: disable, readonly: {ro} }}")
    };
    format!(
        "name: sql-grants\nsecrets:\n  DB_PASSWORD: {{ from: \"env:DB_PASSWORD\", bind: [\"{origin}\"] }}\n\
         databases:\n  ro: {}\n  rw: {}\n  su: {}\n  filer: {}\nsteps:\n{}",
        db("reader", true),
        db("writer", false),
        db("gantry", true),
        db("filer", true),
        step(grant, ops, timeout)
    )
}

fn step(grant: &str, ops: Value, timeout: &str) -> String {
    let with = json!({ "action": "sql-script", "path": grant, "sql": ops });
    format!(
        "  - id: s\n    uses: {}\n    databases: [{grant}]\n    timeout: {timeout}\n    with: {with}\n",
        repo().join("tests/plugins/misbehave").display()
    )
}

/// Runs `yaml` in a fresh directory: the exit code and everything printed and journaled, which
/// must never hold the password.
fn attempt(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    attempt_in(dir.path(), yaml)
}

fn attempt_in(dir: &Path, yaml: &str) -> (Option<i32>, String) {
    let out = run_pipeline(dir, yaml, &[("DB_PASSWORD", PASSWORD)], &[]);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let journal =
        std::fs::read_to_string(dir.join(".gantry/runs").join(run_id(dir)).join("journal.jsonl")).unwrap_or_default();
    let all = format!("{printed}\n{journal}");
    assert!(!all.contains(PASSWORD), "the password leaked:\n{all}");
    assert!(!all.contains(&hex(PASSWORD.as_bytes())), "the password leaked as bytes:\n{all}");
    (out.status.code(), all)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn op(op: &str, statement: &str) -> Value {
    json!({ "op": op, "statement": statement })
}

#[test]
fn a_nested_comment_cannot_turn_a_read_only_grant_read_write_nor_commit_it() {
    let pg = postgres();
    // PostgreSQL nests comments: a scan that does not took these for SELECTs.
    for ops in [
        json!([
            op("begin", ""),
            op("query", "/* /* */ SELECT */ SET TRANSACTION READ WRITE"),
            op("execute", "INSERT INTO audit VALUES (1)"),
            op("commit", "")
        ]),
        json!([
            op("begin", ""),
            op("query", "/* /* */ SELECT */ COMMIT"),
            op("execute", "INSERT INTO audit VALUES (2)")
        ]),
        json!([
            op("query", "/* /* */ SELECT */ SET default_transaction_read_only = off"),
            op("execute", "INSERT INTO audit VALUES (3)")
        ]),
        json!([op("execute", "WITH d AS (DELETE FROM settings RETURNING *) SELECT * FROM d")]),
        json!([op("execute", "SELECT 1; DELETE FROM settings")]),
        // A function the check cannot see into: the server's read-only transaction refuses its write.
        json!([op("query", "SELECT bump()")]),
        json!([op("begin", ""), op("query", "SELECT bump()"), op("commit", "")]),
    ] {
        let (code, out) = attempt(&pg_pipeline(&pg, "ro", ops.clone(), "60s"));
        assert_eq!(code, Some(0), "{out}");
        assert!(!out.contains("ok 1 changed"), "{ops}: a write went through:\n{out}");
        assert!(out.contains("err "), "{ops}: nothing was refused:\n{out}");
    }
    assert_eq!(pg.query_in("app", "SELECT count(*) FROM audit"), ["0"]);
    assert_eq!(pg.query_in("app", "SELECT count(*) FROM settings"), ["1"]);
}

#[test]
fn a_read_only_transaction_is_rolled_back_and_functions_that_outlive_it_are_refused() {
    let pg = postgres();
    let before = pg.query_in("app", "SELECT count(*) FROM pg_largeobject_metadata");
    let ops = json!([
        op("begin", ""),
        op("query", "SELECT lo_create(0)"),
        op("query", "SELECT pg_notify('deploys', 'x')"),
        op("query", "SELECT pg_advisory_lock(42)"),
        op("query", "SELECT count(*) FROM settings"),
        op("commit", ""),
        op("query", "SELECT * FROM pg_create_logical_replication_slot('s', 'test_decoding')"),
        op("query", "SELECT query_to_xml('SELECT lo_create(0)', true, true, '')"),
    ]);
    let (code, out) = attempt(&pg_pipeline(&pg, "ro", ops, "60s"));
    assert_eq!(code, Some(0), "{out}");
    for f in ["lo_create", "pg_notify", "pg_advisory_lock", "pg_create_logical_replication_slot", "query_to_xml"] {
        assert!(out.contains(&format!("`{f}()` is refused")), "{f}:\n{out}");
    }
    assert!(out.contains("ok 1"), "the read itself ran:\n{out}");
    // The plugin's commit ends a read-only transaction with ROLLBACK, and the journal says so.
    assert!(out.contains("ROLLBACK (read-only grant) -> done"), "{out}");
    assert_eq!(pg.query_in("app", "SELECT count(*) FROM pg_largeobject_metadata"), before);
    assert_eq!(pg.query_in("app", "SELECT count(*) FROM pg_replication_slots"), ["0"]);
    assert_eq!(pg.query_in("app", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), ["0"]);
}

#[test]
fn a_read_only_grant_refuses_roles_no_transaction_confines() {
    let pg = postgres();
    for (grant, said) in [("su", "is a superuser"), ("filer", "a member of pg_write_server_files")] {
        let ops = json!([op("query", "COPY settings TO PROGRAM 'touch /tmp/gantry-owned'")]);
        let (code, out) = attempt(&pg_pipeline(&pg, grant, ops, "60s"));
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(said) && out.contains("granted read-only"), "{grant}:\n{out}");
    }
    // The same role is fine on a read-write grant, where nothing is promised beyond its privileges.
    let (code, out) = attempt(&pg_pipeline(&pg, "rw", json!([op("query", "SELECT count(*) FROM settings")]), "60s"));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn a_password_read_as_bytes_json_or_arrays_never_reaches_the_plugin() {
    let pg = postgres();
    let ops = json!([
        op("query", "SELECT convert_to(v, 'UTF8') FROM settings"),
        op("query", "SELECT decode(encode(convert_to(v, 'UTF8'), 'hex'), 'hex') FROM settings"),
        op("query", "SELECT json_build_object('v', v)::text FROM settings"),
        op("query", "SELECT ARRAY[v]::text FROM settings"),
        op("query", "SELECT v::int FROM settings"),
    ]);
    let yaml = pg_pipeline(&pg, "ro", ops, "60s");
    let (code, out) = attempt(&yaml);
    assert_eq!(code, Some(0), "{out}");
    // The bytes came back redacted: `***` in hex.
    assert!(out.contains("ok hex:2a2a2a"), "{out}");
    // Each statement is a span of the step's trace, named by its verb; the password is in no byte sent.
    let receiver = crate::peers::otlp();
    let dir = tempfile::tempdir().unwrap();
    let out = run_pipeline(dir.path(), &yaml, &[("DB_PASSWORD", PASSWORD), ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.origin)], &[]);
    expect_code(&out, 0);
    let (spans, raw) = crate::peers::otlp_received(&receiver);
    assert!(raw.iter().all(|body| !body.contains(&hex(PASSWORD.as_bytes()))), "the password reached the collector");
    let statements: Vec<&Value> = spans.iter().filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("SQL SELECT sql://"))).collect();
    assert_eq!(statements.len(), 5, "{spans:#?}");
    let step = spans.iter().find(|s| s["name"].as_str().is_some_and(|n| n.starts_with("step "))).unwrap();
    assert!(statements.iter().all(|s| s["parent_span_id"] == step["span_id"]), "{spans:#?}");
}

/// The queries running on the server whose text contains `needle`, read with psql.
fn pg_running(pg: &Postgres, needle: &str) -> usize {
    pg.query(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{needle}%' AND pid <> pg_backend_pid()"
    ))[0]
        .parse()
        .unwrap()
}

#[test]
fn a_step_timeout_cancels_the_statement_on_the_server() {
    let pg = postgres();
    let started = Instant::now();
    let (code, out) = attempt(&pg_pipeline(&pg, "ro", json!([op("query", "SELECT pg_sleep(60)")]), "3s"));
    assert_ne!(code, Some(0), "{out}");
    let ended = Instant::now();
    let mut gone = None;
    while ended.elapsed() < Duration::from_secs(10) {
        if pg_running(&pg, "pg_sleep(60)") == 0 {
            gone = Some(ended.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = gone.expect("the statement was still running on the server 10 s after the step ended");
    eprintln!("cancel latency after the step ended: {gone:?} (step took {:?})", ended - started);
}

/// Runs `yaml` in `dir` and samples the process's peak resident memory (`VmHWM`, KiB) until it ends.
fn peak_kib(dir: &Path, yaml: &str) -> (String, u64) {
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir).env("DB_PASSWORD", PASSWORD).args(["run", file.to_str().unwrap(), "--json"]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiter = {
        let done = done.clone();
        std::thread::spawn(move || {
            let out = child.wait_with_output().unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            out
        })
    };
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let hwm = std::fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()));
        peak = peak.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = waiter.join().unwrap();
    let journal =
        std::fs::read_to_string(dir.join(".gantry/runs").join(run_id(dir)).join("journal.jsonl")).unwrap_or_default();
    (format!("{}{}\n{journal}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)), peak)
}

#[test]
fn a_huge_row_or_error_is_refused_before_it_is_held() {
    let pg = postgres();
    let with_cap = |ops: Value| {
        pg_pipeline(&pg, "ro", ops, "60s")
            .replace("    timeout: 60s", "    timeout: 60s\n    limits: { response_size: 1MiB }")
    };
    // The same run with a small row is the baseline the huge ones are measured against.
    let runs = [
        ("a 100-byte row", json!([op("query", "SELECT repeat('x', 100)")])),
        ("a 200 MB row", json!([op("query", "SELECT repeat('x', 200000000)")])),
        ("a 100 MB error", json!([op("query", "SELECT repeat('x', 100000000)::int")])),
    ];
    let mut peaks = Vec::new();
    for (what, ops) in runs {
        let dir = tempfile::tempdir().unwrap();
        let (out, peak) = peak_kib(dir.path(), &with_cap(ops));
        assert!(!out.contains(PASSWORD), "{out}");
        if what != "a 100-byte row" {
            assert!(out.contains("err ") && out.contains("over the") && out.contains("response_size"), "{what}: {out}");
        }
        eprintln!("peak resident memory of gantry with {what}: {} MiB", peak / 1024);
        peaks.push(peak);
    }
    // The cap acts before the message is held: a huge row or error costs no more than a few read
    // buffers over the baseline, never its own size.
    for peak in &peaks[1..] {
        assert!(peak.saturating_sub(peaks[0]) < 32 * 1024, "peaks {peaks:?} KiB: a huge message was held");
    }
}

#[test]
fn execute_returns_the_count_of_a_void_or_record_result() {
    let pg = postgres();
    let ops = json!([
        op("execute", "SELECT pg_sleep(0.01)"),
        op("execute", "SELECT (1, 'a')"),
        op("query", "SELECT pg_sleep(0.01)"),
    ]);
    let (code, out) = attempt(&pg_pipeline(&pg, "rw", ops, "60s"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok 1 changed\\nok 1 changed\\nok null"), "{out}");
}

#[test]
fn a_url_with_a_password_is_refused_with_the_password_masked() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: p\nsecrets:\n  DB_PASSWORD: { from: \"env:DB_PASSWORD\", bind: [\"postgres://db.internal:5432\"] }\n\
                databases:\n  app: { url: \"postgres://deploy:Hunter2-secret@db.internal/app\", user: deploy, password: DB_PASSWORD }\n\
                steps:\n  - id: s\n    uses: ./nothing\n";
    std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
    let out = gantry_in(dir.path(), &["validate", "p.yaml"]);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{printed}");
    assert!(printed.contains("p.yaml:5") && printed.contains("deploy:***@db.internal"), "{printed}");
    assert!(!printed.contains("Hunter2"), "{printed}");
}

#[test]
fn a_database_name_resolving_to_loopback_points_at_the_url() {
    let pg = postgres();
    let yaml = pg_pipeline(&pg, "ro", json!([op("query", "SELECT 1")]), "60s")
        .replace(&format!("postgres://127.0.0.1:{}/app", pg.port), &format!("postgres://localhost:{}/app", pg.port))
        .replace(
            &format!("bind: [\"postgres://127.0.0.1:{}\"]", pg.port),
            &format!("bind: [\"postgres://localhost:{}\"]", pg.port),
        );
    let (code, out) = attempt(&yaml);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("write the address itself in the database's `url:`"), "{out}");
    assert!(!out.contains("in `network:`"), "{out}");
}

/// A MariaDB whose `app.settings` holds the password; `deploy` may do anything in `app`, `reader`
/// only read, `filer` read and holds FILE.
fn mariadb() -> MariaDb {
    let db = MariaDb::start(PASSWORD);
    db.query(&format!(
        "CREATE TABLE app.settings (k text, v text); INSERT INTO app.settings VALUES ('db', '{PASSWORD}'); \
         CREATE TABLE app.audit (n int); \
         CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; GRANT SELECT ON app.* TO 'reader'@'127.0.0.1'; \
         CREATE USER 'filer'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; GRANT SELECT ON app.* TO 'filer'@'127.0.0.1'; \
         GRANT FILE ON *.* TO 'filer'@'127.0.0.1'"
    ));
    db
}

fn maria_pipeline(db: &MariaDb, grant: &str, ops: Value, timeout: &str) -> String {
    let origin = format!("mysql://127.0.0.1:{}", db.port);
    let grant_of = |user: &str, ro: bool| {
        format!("{{ url: \"{origin}/app\", user: {user}, password: DB_PASSWORD, tls: disable, readonly: {ro} }}")
    };
    format!(
        "name: sql-grants\nsecrets:\n  DB_PASSWORD: {{ from: \"env:DB_PASSWORD\", bind: [\"{origin}\"] }}\n\
         databases:\n  ro: {}\n  rw: {}\n  filer: {}\nsteps:\n{}",
        grant_of("reader", true),
        grant_of("deploy", false),
        grant_of("filer", true),
        step(grant, ops, timeout)
    )
}

#[test]
fn mariadb_read_only_grants_hold_against_executable_comments_files_locks_and_binary_columns() {
    let db = mariadb();
    let outfile = tempfile::tempdir().unwrap().path().join("owned.txt");
    let ops = json!([
        op("execute", "/*! DELETE FROM settings */"),
        op("query", "SELECT 1 /*!, GET_LOCK('deploy', 0) */"),
        op("query", &format!("SELECT v FROM settings INTO OUTFILE '{}'", outfile.display())),
        op("begin", ""),
        op("execute", "/*!50001 COMMIT */"),
        op("execute", "INSERT INTO audit VALUES (1)"),
        op("commit", ""),
        op("query", "SELECT CAST(v AS BINARY) FROM settings"),
    ]);
    let (code, out) = attempt(&maria_pipeline(&db, "ro", ops, "60s"));
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("ok 1 changed"), "{out}");
    assert!(out.contains("ok hex:2a2a2a"), "the binary column was not redacted:\n{out}");
    assert_eq!(db.query("SELECT count(*) FROM app.settings"), ["1"]);
    assert_eq!(db.query("SELECT count(*) FROM app.audit"), ["0"]);
    assert_eq!(db.query("SELECT IS_USED_LOCK('deploy') IS NULL"), ["1"]);
    assert!(!outfile.exists());
    let (code, out) = attempt(&maria_pipeline(&db, "filer", json!([op("query", "SELECT 1")]), "60s"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("holds FILE"), "{out}");
}

#[test]
fn mariadb_a_step_timeout_kills_the_query_on_the_server() {
    let db = mariadb();
    let (code, out) = attempt(&maria_pipeline(&db, "ro", json!([op("query", "SELECT SLEEP(60)")]), "3s"));
    assert_ne!(code, Some(0), "{out}");
    let ended = Instant::now();
    let running =
        || db.query("SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(60)%'");
    while running() != ["0"] {
        assert!(ended.elapsed() < Duration::from_secs(10), "SLEEP(60) still runs 10 s after the step ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("cancel latency after the step ended: {:?}", ended.elapsed());
}
