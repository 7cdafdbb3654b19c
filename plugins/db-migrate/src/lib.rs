//! `db-migrate`: versioned SQL migrations from a granted read-only directory, applied to a granted
//! database the host connects to (the plugin never sees its URL or password).
//!
//! PostgreSQL runs each migration and its history row in one transaction. MySQL/MariaDB commit DDL
//! statement by statement, so there the history row records each statement before and after it
//! runs: a crash leaves either a known boundary or the one statement whose effect is unknown, and
//! the step says which instead of guessing.

pub mod migrations;

use gantry_sdk::sql::{split, Connection, Engine, SqlError, Value};
use gantry_sdk::{Check, Context, Describe, Error, Outputs, Step};
use migrations::{Applied, Migration, State};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The database grant to migrate (a name under the step's `databases:`).
    pub database: String,
    /// The directory of `V<n>__<words>.sql` files (and `U<n>__<words>.sql` down files), granted with `files:`.
    pub migrations: String,
    /// The history table.
    #[serde(default = "default_table")]
    pub table: String,
    /// Apply up to this version only.
    #[serde(default)]
    pub target: Option<i64>,
    /// How long to wait for another runner's migration lock, in seconds.
    #[serde(default = "default_lock_wait")]
    pub lock_wait_s: u64,
}

fn default_table() -> String {
    "gantry_schema_history".into()
}

fn default_lock_wait() -> u64 {
    60
}

/// The checkpoint recorded before migration `version` starts; its value is the up file's checksum.
fn checkpoint_key(version: i64) -> String {
    format!("migration.{version}")
}

/// A database opened for migrating: the connection, its dialect and the history table's name.
struct Db {
    conn: Connection,
    engine: Engine,
    table: String,
}

impl Db {
    /// Connects and takes the migration lock.
    fn open(ctx: &Context, input: &Input) -> Result<Self, Error> {
        let db = Db::connect(input)?;
        db.lock(ctx, input)?;
        Ok(db)
    }

    /// Connects, taking no lock: what a pre-flight may do.
    fn connect(input: &Input) -> Result<Self, Error> {
        let valid = input.table.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && input.table.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::failed(format!("table {:?}: lower-case letters, digits and _ only", input.table)));
        }
        let conn = Connection::open(&input.database).map_err(|e| sql(&input.database, e))?;
        let engine = conn.engine();
        Ok(Db { conn, engine, table: input.table.clone() })
    }

    /// Whether another session holds the migration lock now: its holder, or `None`. Reads only.
    fn lock_holder(&self) -> Result<Option<String>, Error> {
        let name = format!("gantry:{}", self.table);
        let (statement, params): (&str, Vec<Value>) = match self.engine {
            Engine::Postgres => (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid::bigint = 1734438516 \
                 AND objid::bigint = (hashtext($1)::bigint & 4294967295)",
                vec![name.as_str().into()],
            ),
            Engine::Mysql => ("SELECT IS_USED_LOCK(?) IS NOT NULL", vec![name.as_str().into()]),
        };
        let rows = self.conn.query(statement, &params)?;
        let held = rows.rows.first().and_then(|r| r.first()).and_then(Value::as_integer).unwrap_or(0) > 0;
        if !held {
            return Ok(None);
        }
        self.holder(&name).map(Some)
    }

    /// The `n`th placeholder in this dialect.
    fn p(&self, n: usize) -> String {
        match self.engine {
            Engine::Postgres => format!("${n}"),
            Engine::Mysql => "?".into(),
        }
    }

    /// Takes the migration lock, waiting up to `lock_wait_s`; refused, it names the holder.
    fn lock(&self, ctx: &Context, input: &Input) -> Result<(), Error> {
        let holder = format!(
            "gantry db-migrate {}/{}/{} step {}",
            ctx.pipeline(),
            ctx.environment(),
            ctx.entity(),
            ctx.step_id()
        );
        let name = format!("gantry:{}", self.table);
        let take = match self.engine {
            Engine::Postgres => {
                self.conn.query("SELECT set_config('application_name', $1, false)", &[holder.as_str().into()])?;
                "SELECT pg_try_advisory_lock(1734438516, hashtext($1))::int"
            }
            Engine::Mysql => "SELECT GET_LOCK(?, 0)",
        };
        let deadline = gantry_sdk::now_ms() + input.lock_wait_s * 1000;
        loop {
            let rows = self.conn.query(take, &[name.as_str().into()])?;
            if rows.rows.first().and_then(|r| r.first()).and_then(Value::as_integer) == Some(1) {
                return Ok(());
            }
            if gantry_sdk::now_ms() >= deadline {
                return Err(Error::retryable(format!(
                    "the migration lock of {}.{} is held by {}; waited {} s",
                    input.database,
                    self.table,
                    self.holder(&name)?,
                    input.lock_wait_s
                )));
            }
            gantry_sdk::sleep_ms(1000);
        }
    }

    /// Who holds the lock, as the server knows them.
    fn holder(&self, name: &str) -> Result<String, Error> {
        let (statement, params): (&str, Vec<Value>) = match self.engine {
            Engine::Postgres => (
                "SELECT a.pid::bigint, a.application_name, coalesce(a.client_addr::text, 'local'), \
                 extract(epoch FROM now() - a.backend_start)::bigint FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = 1734438516 \
                 AND l.objid::bigint = (hashtext($1)::bigint & 4294967295)",
                vec![name.into()],
            ),
            Engine::Mysql => (
                "SELECT p.ID, p.USER, p.HOST, p.TIME FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK(?)",
                vec![name.into()],
            ),
        };
        let rows = self.conn.query(statement, &params)?;
        let Some(row) = rows.rows.first() else { return Ok("a session that just ended".into()) };
        let text = |i: usize| row.get(i).and_then(Value::as_text).unwrap_or_default();
        Ok(format!("session {} ({} from {}), connected {} s", text(0), text(1), text(2), text(3)))
    }

    fn ensure_history(&self) -> Result<(), Error> {
        let text = match self.engine {
            Engine::Postgres => "TEXT",
            Engine::Mysql => "VARCHAR(255)",
        };
        self.conn.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (version BIGINT PRIMARY KEY, description {text} NOT NULL, \
                 checksum {text} NOT NULL, state {text} NOT NULL, statements_done BIGINT NOT NULL, \
                 statement_running BIGINT NULL, applied_by {text} NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
                self.table
            ),
            &[],
        )?;
        Ok(())
    }

    /// The history table's rows; none when it does not exist yet.
    fn history(&self) -> Result<Vec<Applied>, Error> {
        let statement = format!(
            "SELECT version, checksum, state, statements_done, statement_running FROM {} ORDER BY version",
            self.table
        );
        let rows = match self.conn.query(&statement, &[]) {
            Ok(rows) => rows,
            // 42P01 (postgres) and 42S02 (mysql): no such table, so nothing applied yet.
            Err(SqlError::Server(e)) if e.code == "42P01" || e.code == "42S02" => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        rows.rows
            .iter()
            .map(|r| {
                let int = |i: usize| r.get(i).and_then(Value::as_integer);
                let text = |i: usize| r.get(i).and_then(Value::as_text).unwrap_or_default();
                let state = State::parse(&text(2)).ok_or_else(|| {
                    Error::failed(format!("{}: version {:?} has state {:?}", self.table, int(0), text(2)))
                })?;
                Ok(Applied {
                    version: int(0).unwrap_or(0),
                    checksum: text(1),
                    state,
                    done: int(3).unwrap_or(0),
                    running: int(4),
                })
            })
            .collect()
    }

    /// Applies `m` and records it.
    fn apply(&self, ctx: &Context, m: &Migration) -> Result<(), Error> {
        let statements = split(&m.up);
        let by = format!("{}/{}/{} step {}", ctx.pipeline(), ctx.environment(), ctx.entity(), ctx.step_id());
        let insert = format!(
            "INSERT INTO {} (version, description, checksum, state, statements_done, applied_by) VALUES ({}, {}, {}, {}, {}, {})",
            self.table,
            self.p(1),
            self.p(2),
            self.p(3),
            self.p(4),
            self.p(5),
            self.p(6)
        );
        match self.engine {
            Engine::Postgres => {
                let tx = self.conn.begin()?;
                for (k, statement) in statements.iter().enumerate() {
                    tx.execute(statement, &[]).map_err(|e| in_statement(m, k + 1, statement, e))?;
                }
                let n = statements.len() as i64;
                let state = State::Applied.as_str();
                tx.execute(
                    &insert,
                    &[
                        m.version.into(),
                        m.description.as_str().into(),
                        m.checksum.as_str().into(),
                        state.into(),
                        n.into(),
                        by.into(),
                    ],
                )?;
                tx.commit()?;
            }
            Engine::Mysql => {
                let state = State::Applying.as_str();
                self.conn.execute(
                    &insert,
                    &[
                        m.version.into(),
                        m.description.as_str().into(),
                        m.checksum.as_str().into(),
                        state.into(),
                        0i64.into(),
                        by.into(),
                    ],
                )?;
                self.statements(m.version, &statements, 0, m)?;
                self.set_state(m.version, State::Applied)?;
            }
        }
        Ok(())
    }

    /// Runs `statements` after the first `done` one by one, recording each in the history row
    /// before (`statement_running`) and after (`statements_done`) it runs.
    fn statements(&self, version: i64, statements: &[String], done: usize, m: &Migration) -> Result<(), Error> {
        let mark = |set: &str, params: Vec<Value>| -> Result<(), Error> {
            self.conn.execute(&format!("UPDATE {} SET {set} WHERE version = ?", self.table), &params)?;
            Ok(())
        };
        for (k, statement) in statements.iter().enumerate().skip(done) {
            let k = k as i64 + 1;
            mark("statement_running = ?", vec![k.into(), version.into()])?;
            self.conn.execute(statement, &[]).map_err(|e| in_statement(m, k as usize, statement, e))?;
            mark("statements_done = ?, statement_running = NULL", vec![k.into(), version.into()])?;
        }
        Ok(())
    }

    fn set_state(&self, version: i64, state: State) -> Result<(), Error> {
        let statement = format!(
            "UPDATE {} SET state = {}, statements_done = 0 WHERE version = {}",
            self.table,
            self.p(1),
            self.p(2)
        );
        self.conn.execute(&statement, &[state.as_str().into(), version.into()])?;
        Ok(())
    }

    /// Runs `m`'s down file and removes its history row; `row` is where it stands now.
    fn undo(&self, m: &Migration, row: &Applied) -> Result<(), Error> {
        let Some(down) = &m.down else {
            return Err(Error::failed(format!(
                "V{} has no down file (U{}__….sql): it stays applied; the run stopped its rollback at this step \
                 (a rollback barrier), and what ran before it is left as it is",
                m.version, m.version
            )));
        };
        let statements = split(down);
        let delete = format!("DELETE FROM {} WHERE version = {}", self.table, self.p(1));
        match self.engine {
            Engine::Postgres => {
                let tx = self.conn.begin()?;
                for (k, statement) in statements.iter().enumerate() {
                    tx.execute(statement, &[]).map_err(|e| in_statement(m, k + 1, statement, e))?;
                }
                tx.execute(&delete, &[m.version.into()])?;
                tx.commit()?;
            }
            Engine::Mysql => {
                let done = match row.state {
                    State::Undoing => row.done as usize,
                    _ => {
                        self.set_state(m.version, State::Undoing)?;
                        0
                    }
                };
                self.statements(m.version, &statements, done, m)?;
                self.conn.execute(&delete, &[m.version.into()])?;
            }
        }
        Ok(())
    }
}

/// A statement's failure, naming the migration and the statement.
fn in_statement(m: &Migration, k: usize, statement: &str, e: SqlError) -> Error {
    let first_line =
        statement.lines().find(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--")).unwrap_or(statement);
    let error: Error = e.into();
    let message = format!("{} statement {k} ({}): {}", m.file, first_line.trim(), error.message());
    match error.is_retryable() {
        true => Error::retryable(message),
        false => Error::failed(message),
    }
}

fn sql(database: &str, e: SqlError) -> Error {
    let error: Error = e.into();
    let message = format!("database {database}: {}", error.message());
    match error.is_retryable() {
        true => Error::retryable(message),
        false => Error::failed(message),
    }
}

/// Reads the migration directory's files.
fn read(dir: &str) -> Result<Vec<Migration>, Error> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::failed(format!("cannot read {dir}: {e} (grant it with `files:`)")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::failed(format!("cannot read {dir}: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sql") {
            let text = std::fs::read_to_string(entry.path())
                .map_err(|e| Error::failed(format!("cannot read {dir}/{name}: {e}")))?;
            files.push((name, text));
        }
    }
    migrations::parse(&files).map_err(|e| Error::failed(format!("{dir}/{e}")))
}

fn list(ms: &[&Migration]) -> String {
    ms.iter().map(|m| m.version.to_string()).collect::<Vec<_>>().join(",")
}

/// Records a rollback barrier for `m` when it has no down file: once applied it cannot be undone.
fn barrier_if_irreversible(ctx: &Context, m: &Migration) -> Result<(), Error> {
    if m.down.is_some() {
        return Ok(());
    }
    let reason = format!("V{} has no down file (U{}__….sql): once applied it cannot be undone", m.version, m.version);
    ctx.barrier(&reason, &m.file)
}

/// The plugin.
pub struct DbMigrate;

impl Step for DbMigrate {
    fn describe() -> Describe {
        Describe::new("db-migrate", env!("CARGO_PKG_VERSION"))
            .description(
                "Versioned SQL migrations with a checksummed history, an advisory lock and down files for rollback",
            )
            .input::<Input>()
            .capability("databases")
            .capability("files")
            .output("version", "the schema version after the step")
            .output("previous_version", "the schema version before it")
            .output("applied", "the migrations it applied, comma-separated")
            .output("pending", "the migrations that were pending, comma-separated")
            .output("undone", "the migrations its rollback undid, comma-separated")
    }

    /// Reads the migration files, connects (read-only, as the host opens every database in a
    /// pre-flight), asks who holds the migration lock and reads the history table: drift, a gap or
    /// an unfinished migration found here stops the run before any step changes anything.
    fn preflight(ctx: &Context) -> Result<Vec<Check>, Error> {
        let input: Input = ctx.input()?;
        let all = match read(&input.migrations) {
            Ok(all) => all,
            Err(e) => return Ok(vec![Check::failed("migrations", e.message())]),
        };
        let mut checks = vec![Check::passed("migrations", format!("{} files in {}", all.len(), input.migrations))];
        let db = match Db::connect(&input) {
            Ok(db) => db,
            Err(e) => return Ok([checks, vec![Check::failed("database", e.message())]].concat()),
        };
        checks.push(match db.lock_holder() {
            Ok(None) => Check::passed("lock", "free"),
            Ok(Some(holder)) => Check::failed("lock", format!("held by {holder}: another migration is under way")),
            Err(e) => Check::failed("lock", e.message()),
        });
        let history = db.history().and_then(|history| {
            let todo = migrations::pending(&all, &history, input.target).map_err(Error::failed)?;
            let current = history.iter().map(|r| r.version).max().unwrap_or(0);
            Ok(match todo.is_empty() {
                true => format!("{}: at version {current}, nothing to apply", input.table),
                false => format!("{}: at version {current}, to apply: {}", input.table, list(&todo)),
            })
        });
        checks.push(Check::of("history", history));
        Ok(checks)
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let all = read(&input.migrations)?;
        let db = Db::open(ctx, &input)?;
        let history = db.history()?;
        let todo = migrations::pending(&all, &history, input.target).map_err(Error::failed)?;
        let current = history.iter().map(|r| r.version).max().unwrap_or(0);
        let outputs = Outputs::new().with("pending", list(&todo)).with("previous_version", current);
        if ctx.dry_run() || todo.is_empty() {
            for m in &todo {
                gantry_sdk::info!("dry run: would apply {} ({} statements)", m.file, split(&m.up).len());
                // The host shows it as a barrier ahead: an operator learns it before the real run.
                barrier_if_irreversible(ctx, m)?;
            }
            if todo.is_empty() {
                gantry_sdk::info!("{} is at version {current}: nothing to apply", input.database);
            }
            return Ok(outputs.with("applied", "").with("version", current));
        }
        db.ensure_history()?;
        if db.engine == Engine::Mysql {
            gantry_sdk::warn!(
                "MySQL commits DDL statement by statement: each statement is recorded before and after it runs"
            );
        }
        for m in &todo {
            ctx.checkpoint(&checkpoint_key(m.version), &m.checksum)?;
            // Before the change: a crash between applying it and saying so must not let a
            // rollback walk past a migration nothing can undo.
            barrier_if_irreversible(ctx, m)?;
            db.apply(ctx, m)?;
            gantry_sdk::info!("applied {}", m.file);
        }
        let version = todo.last().map_or(current, |m| m.version);
        Ok(outputs.with("applied", list(&todo)).with("version", version))
    }

    /// Undoes, newest first, the migrations this run started (its checkpoints); a migration whose
    /// statements stopped part-way is left for a person, named with the statement.
    fn rollback(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let mut started: Vec<(i64, String)> = ctx
            .checkpoints()
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("migration.")?.parse().ok()?, v)))
            .collect();
        // By version, not by key: `migration.10` sorts before `migration.9` as text.
        started.sort_by_key(|(version, _)| *version);
        if started.is_empty() {
            return Ok(Outputs::new().with("undone", ""));
        }
        let all = read(&input.migrations)?;
        let db = Db::open(ctx, &input)?;
        let history = db.history()?;
        let mut undone = Vec::new();
        for (version, checksum) in started.iter().rev() {
            let Some(row) = history.iter().find(|r| r.version == *version) else {
                gantry_sdk::info!("V{version} never committed: nothing to undo");
                continue;
            };
            let m = all.iter().find(|m| m.version == *version).ok_or_else(|| {
                Error::failed(format!("V{version} is applied but its file is gone: its down file cannot be found"))
            })?;
            if row.checksum != *checksum || m.checksum != *checksum {
                return Err(Error::failed(format!(
                    "{}: the file or its history row changed since this run applied it",
                    m.file
                )));
            }
            if let Some(k) = row.running {
                let statements =
                    if row.state == State::Undoing { split(m.down.as_deref().unwrap_or("")) } else { split(&m.up) };
                let statement = statements.get(k as usize - 1).map(String::as_str).unwrap_or("?");
                return Err(Error::inconclusive(format!(
                    "V{version} was {} statement {k} ({statement}) when the run stopped: the engine commits it on its own, \
                     so whether it took effect is unknown; check the schema, set statements_done and clear statement_running \
                     in {} to match, then roll back again",
                    if row.state == State::Undoing { "undoing" } else { "applying" },
                    db.table
                )));
            }
            if m.down.is_none() && row.state == State::Applied {
                // Only a rollback past the barrier gets here (the host stops before this step
                // otherwise): what can be undone was, the rest stays, older migrations with it.
                gantry_sdk::warn!(
                    "V{version} has no down file: it stays applied, and so does what this step applied before it"
                );
                break;
            }
            let total = split(&m.up).len() as i64;
            match row.state {
                State::Applying if row.done == 0 => {
                    let delete = format!("DELETE FROM {} WHERE version = {}", db.table, db.p(1));
                    db.conn.execute(&delete, &[(*version).into()])?;
                }
                State::Applying if row.done < total => {
                    return Err(Error::inconclusive(format!(
                        "V{version} stopped after statement {} of {total}: its down file undoes the whole migration; \
                         undo statements 1-{} by hand and delete its row from {}, then roll back again",
                        row.done, row.done, db.table
                    )));
                }
                _ => db.undo(m, row)?,
            }
            gantry_sdk::info!("undid {}", m.file);
            undone.push(version.to_string());
        }
        Ok(Outputs::new().with("undone", undone.join(",")))
    }
}

gantry_sdk::export_step!(DbMigrate);
