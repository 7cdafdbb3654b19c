//! `db-migrate` end to end against PostgreSQL and MariaDB from Debian, started by the test: the
//! host owns the connection and the password, the schema is read back with `psql` and `mariadb`.

use crate::peers::{MariaDb, Postgres};
use crate::support::*;
use std::path::Path;

/// Writes `files` into `dir/migrations`.
fn migrations(dir: &Path, files: &[(&str, &str)]) {
    let m = dir.join("migrations");
    std::fs::create_dir_all(&m).unwrap();
    for (name, text) in files {
        std::fs::write(m.join(name), text).unwrap();
    }
}

/// A pipeline migrating database `url` as `user`, and a failing step after it when `fail`.
fn pipeline(url: &str, user: &str, origin: &str, tls: &str, fail: bool) -> String {
    let mut yaml = format!(
        r#"name: migrate
secrets:
  DB_PASSWORD: {{ from: "env:DB_PASSWORD", bind: ["{origin}"] }}
databases:
  app: {{ url: "{url}", user: {user}, password: DB_PASSWORD, tls: {tls} }}
steps:
  - id: migrate
    uses: {plugin}
    databases: [app]
    files: [migrations]
    with: {{ database: app, migrations: /migrations }}
"#,
        plugin = repo().join("plugins/db-migrate").display()
    );
    if fail {
        yaml += &failing_step("smoke", "migrate", "the smoke test failed");
    }
    yaml
}

const V1: (&str, &str) = ("V1__bookings.sql", "CREATE TABLE bookings (id INT PRIMARY KEY, guest VARCHAR(80));\n");
const U1: (&str, &str) = ("U1__bookings.sql", "DROP TABLE bookings;\n");
const V2: (&str, &str) = (
    "V2__rooms.sql",
    "-- rooms; and their bookings\nCREATE TABLE rooms (id INT PRIMARY KEY, name VARCHAR(40) DEFAULT 'a;b');\n\
     ALTER TABLE bookings ADD COLUMN room INT;\nINSERT INTO rooms (id, name) VALUES (1, 'north');\n",
);
const U2: (&str, &str) = ("U2__rooms.sql", "ALTER TABLE bookings DROP COLUMN room;\nDROP TABLE rooms;\n");

#[test]
fn postgres_migrations_apply_once_drift_is_refused_and_a_later_failure_runs_the_down_files() {
    let pg = Postgres::start();
    pg.query("CREATE DATABASE app");
    let origin = format!("postgres://127.0.0.1:{}", pg.port);
    let url = format!("{origin}/app");
    let dir = tempfile::tempdir().unwrap();
    let env = [("DB_PASSWORD", "not-used-by-trust-auth")];
    let app = |sql: &str| {
        let out = std::process::Command::new(pg_psql(&pg))
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "gantry", "-d", "app", "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect::<Vec<_>>()
    };

    // V1 lands and is recorded with its checksum; a second run applies nothing.
    migrations(dir.path(), &[V1, U1]);
    let yaml = pipeline(&url, "gantry", &origin, "disable", false);
    let out = run_pipeline(dir.path(), &yaml, &env, &[]);
    expect_code(&out, 0);
    assert_eq!(
        app("SELECT version, state, applied_by FROM gantry_schema_history"),
        ["1|applied|migrate/development/default step migrate"]
    );
    let out = run_pipeline(dir.path(), &yaml, &env, &[]);
    expect_code(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""applied":"""#),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // V2 applies, then a later step fails: V2's down file runs in one transaction, V1 stays.
    migrations(dir.path(), &[V2, U2]);
    let out = run_pipeline(dir.path(), &pipeline(&url, "gantry", &origin, "disable", true), &env, &[]);
    expect_code(&out, 1);
    assert_eq!(app("SELECT version FROM gantry_schema_history ORDER BY version"), ["1"]);
    assert_eq!(app("SELECT count(*) FROM information_schema.tables WHERE table_name = 'rooms'"), ["0"]);
    assert_eq!(
        app("SELECT count(*) FROM information_schema.columns WHERE table_name = 'bookings' AND column_name = 'room'"),
        ["0"]
    );

    // Another runner holds the migration lock: the pre-flight names its session, nothing runs.
    let mut holder = std::process::Command::new(pg_psql(&pg))
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "gantry", "-d", "app", "-q"])
        .env("PGAPPNAME", "the other runner")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    let take = "SELECT pg_advisory_lock(1734438516, hashtext('gantry:gantry_schema_history'));\n";
    holder.stdin.as_mut().unwrap().write_all(take.as_bytes()).unwrap();
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted";
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app(held) != ["1"] {
        assert!(std::time::Instant::now() < until, "psql never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = run_pipeline(dir.path(), &yaml, &env, &[]);
    expect_code(&out, 7);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("migrate: lock: held by session") && stderr.contains("(the other runner from"), "{stderr}");
    drop(holder.stdin.take());
    holder.wait().unwrap();

    // V1's file changed after it was applied: the pre-flight finds it before anything runs, V2
    // stays unapplied.
    migrations(dir.path(), &[("V1__bookings.sql", "CREATE TABLE bookings (id BIGINT PRIMARY KEY);\n")]);
    let out = run_pipeline(dir.path(), &yaml, &env, &[]);
    expect_code(&out, 7);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("V1__bookings.sql changed after it was applied"), "{stdout}");
    assert!(!stdout.contains(r#""event":"step_started""#), "{stdout}");
    assert_eq!(app("SELECT version FROM gantry_schema_history ORDER BY version"), ["1"]);
    assert_eq!(app("SELECT count(*) FROM information_schema.tables WHERE table_name = 'rooms'"), ["0"]);
    // With the pre-flight skipped, the step itself still refuses the drift.
    let out = run_pipeline(dir.path(), &yaml, &env, &["--skip-preflight"]);
    expect_code(&out, 1);
    assert!(String::from_utf8_lossy(&out.stdout).contains("V1__bookings.sql changed after it was applied"));
}

#[test]
fn postgres_migration_killed_mid_transaction_leaves_nothing_of_it_and_rollback_undoes_what_committed() {
    let pg = Postgres::start();
    pg.query("CREATE DATABASE app");
    let origin = format!("postgres://127.0.0.1:{}", pg.port);
    let url = format!("{origin}/app");
    let dir = tempfile::tempdir().unwrap();
    migrations(
        dir.path(),
        &[
            V1,
            U1,
            ("V2__slow.sql", "CREATE TABLE slow (id INT);\nSELECT pg_sleep(20);\n"),
            ("U2__slow.sql", "DROP TABLE slow;\n"),
        ],
    );
    let file = dir.path().join("pipeline.yaml");
    let mut yaml = pipeline(&url, "gantry", &origin, "disable", false);
    yaml = yaml.replace("    with: {", "    timeout: 60s\n    limits: { request_timeout: 40s }\n    with: {");
    std::fs::write(&file, &yaml).unwrap();
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir.path()).env("DB_PASSWORD", "kill-test-password").args(["run", file.to_str().unwrap()]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let sleeping = || {
        pg.query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'")
            == ["1"]
    };
    let mut child = spawn_until(&mut cmd, "V2's pg_sleep", sleeping);
    child.kill().unwrap();
    child.wait().unwrap();
    let app = |sql: &str| {
        let out = std::process::Command::new(pg_psql(&pg))
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "gantry", "-d", "app", "-At", "-c", sql])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect::<Vec<_>>()
    };
    // The server ends the killed session's transaction: V1 committed, V2 never did.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'") != ["0"] {
        assert!(std::time::Instant::now() < deadline, "the killed session's statement is still running");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(app("SELECT version FROM gantry_schema_history ORDER BY version"), ["1"]);
    assert_eq!(app("SELECT count(*) FROM information_schema.tables WHERE table_name = 'slow'"), ["0"]);

    // Rollback undoes what the run committed (V1) and nothing it did not (V2).
    let id = run_id(dir.path());
    let out = command(&shared_cache())
        .current_dir(dir.path())
        .env("DB_PASSWORD", "kill-test-password")
        .args(["rollback", &id])
        .output()
        .unwrap();
    expect_code(&out, 0);
    assert_eq!(app("SELECT count(*) FROM gantry_schema_history"), ["0"]);
    assert_eq!(app("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('bookings', 'slow')"), ["0"]);
}

#[test]
fn mariadb_migrations_run_statement_by_statement_with_the_password_only_the_host_sees_and_roll_back() {
    let password = "s3cret-Maria-pw";
    let db = MariaDb::start(password);
    let origin = format!("mysql://127.0.0.1:{}", db.port);
    let url = format!("{origin}/app");
    let dir = tempfile::tempdir().unwrap();
    migrations(dir.path(), &[V1, U1, V2, U2]);
    let env = [("DB_PASSWORD", password)];

    // A wrong password is the server's refusal, and the password given is not in what is printed.
    let out = run_pipeline(
        dir.path(),
        &pipeline(&url, "deploy", &origin, "disable", false),
        &[("DB_PASSWORD", "wrong-pw-123")],
        &[],
    );
    expect_code(&out, 7);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("Access denied"), "{printed}");
    assert!(!printed.contains("wrong-pw-123"));
    std::fs::remove_dir_all(dir.path().join(".gantry")).unwrap();

    let out = run_pipeline(dir.path(), &pipeline(&url, "deploy", &origin, "disable", false), &env, &[]);
    expect_code(&out, 0);
    assert_eq!(
        db.query("SELECT version, state, statements_done, statement_running IS NULL FROM app.gantry_schema_history ORDER BY version"),
        ["1\tapplied\t0\t1", "2\tapplied\t0\t1"]
    );
    assert_eq!(db.query("SELECT name FROM app.rooms"), ["north"]);
    let journal =
        std::fs::read_to_string(dir.path().join(".gantry/runs").join(run_id(dir.path())).join("journal.jsonl"))
            .unwrap();
    assert!(!journal.contains(password), "the password reached the journal");

    // A third migration, then a failure: V3's down file runs statement by statement, V1 and V2 stay.
    migrations(
        dir.path(),
        &[
            ("V3__notes.sql", "ALTER TABLE rooms ADD COLUMN notes TEXT;\n"),
            ("U3__notes.sql", "ALTER TABLE rooms DROP COLUMN notes;\n"),
        ],
    );
    std::fs::remove_dir_all(dir.path().join(".gantry")).unwrap();
    let out = run_pipeline(dir.path(), &pipeline(&url, "deploy", &origin, "disable", true), &env, &[]);
    expect_code(&out, 1);
    assert_eq!(db.query("SELECT version FROM app.gantry_schema_history ORDER BY version"), ["1", "2"]);
    assert_eq!(
        db.query(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'app' AND column_name = 'notes'"
        ),
        ["0"]
    );
}

/// `psql` next to the server's binaries.
fn pg_psql(pg: &Postgres) -> std::path::PathBuf {
    pg.bin().join("psql")
}

/// One step of the misbehave plugin running `statement` on database `name`, granted `granted`.
fn sql_step(id: &str, granted: &str, name: &str, statement: &str) -> String {
    format!(
        "  - id: {id}\n    uses: {}\n    databases: [{granted}]\n    with: {{ action: sql, path: {name}, message: \"{statement}\" }}\n",
        repo().join("tests/plugins/misbehave").display()
    )
}

#[test]
fn a_plugin_cannot_reach_a_database_it_was_not_granted_write_through_a_readonly_grant_or_read_the_password() {
    let password = "pg-Passw0rd-in-a-row";
    let pg = Postgres::start();
    pg.query("CREATE DATABASE app");
    let origin = format!("postgres://127.0.0.1:{}", pg.port);
    let psql = |sql: &str| {
        let out = std::process::Command::new(pg_psql(&pg))
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "gantry", "-d", "app", "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect::<Vec<_>>()
    };
    psql(&format!(
        "CREATE TABLE settings (k text, v text); INSERT INTO settings VALUES ('db', '{password}'); \
         CREATE ROLE reader LOGIN; GRANT SELECT ON settings TO reader"
    ));
    let head = format!(
        "name: attacks\nsecrets:\n  DB_PASSWORD: {{ from: \"env:DB_PASSWORD\", bind: [\"{origin}\"] }}\n\
         databases:\n  app: {{ url: \"{origin}/app\", user: gantry, password: DB_PASSWORD, tls: disable }}\n\
         \x20 ro: {{ url: \"{origin}/app\", user: reader, password: DB_PASSWORD, tls: disable, readonly: true }}\nsteps:\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let attempt = |step: String| {
        let _ = std::fs::remove_dir_all(dir.path().join(".gantry"));
        let out = run_pipeline(dir.path(), &format!("{head}{step}"), &[("DB_PASSWORD", password)], &[]);
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let journal =
            std::fs::read_to_string(dir.path().join(".gantry/runs").join(run_id(dir.path())).join("journal.jsonl"))
                .unwrap();
        assert!(
            !printed.contains(password) && !journal.contains(password),
            "the password leaked:\n{printed}\n{journal}"
        );
        (out.status.code(), printed)
    };

    // A database declared in the pipeline but not granted to the step.
    let (code, printed) = attempt(sql_step("s", "ro", "app", "DELETE FROM settings"));
    assert_eq!(code, Some(1));
    assert!(printed.contains("denied") && printed.contains("app"), "{printed}");

    // Writes through the read-only grant: refused by the host, or by the read-only transaction.
    for write in [
        "DELETE FROM settings",
        "WITH d AS (DELETE FROM settings RETURNING *) SELECT * FROM d",
        "SELECT 1; DELETE FROM settings",
    ] {
        let (code, printed) = attempt(sql_step("s", "ro", "ro", write));
        assert_eq!(code, Some(1), "{write}: {printed}");
    }
    assert_eq!(psql("SELECT count(*) FROM settings"), ["1"], "a write went through the read-only grant");

    // The server echoes the password in an error, and a row holds it: the plugin sees neither.
    let (code, printed) = attempt(sql_step("s", "app", "app", "SELECT v::int FROM settings"));
    assert_eq!(code, Some(1));
    assert!(printed.contains("invalid input syntax"), "{printed}");
    let (code, printed) = attempt(sql_step("s", "ro", "ro", "SELECT v FROM settings"));
    assert_eq!(code, Some(0), "{printed}");
}
