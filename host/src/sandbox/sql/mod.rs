//! The `sql` interface: sessions with the databases a step was granted. The
//! host resolves and checks the address, signs in with the grant's password,
//! refuses what the grant does not allow before anything is sent (by the
//! engine's grammar), opens a read-only grant's session read-only and ends
//! every one of its transactions with `ROLLBACK`, cancels a statement on the
//! server whenever its call ends early, caps rows and bytes (messages over the
//! cap below the driver), redacts every secret from what comes back, in text
//! and in bytes, and journals one line per statement.

mod capped;
mod mysql;
mod postgres;

use super::bindings::gantry::step::sql as wit;
use super::State;
use crate::capability::address::Unreachable;
use crate::capability::database::Engine;
use crate::capability::statement::refusal;
use crate::capability::{Database, DatabaseGrant, Redactor, Resolver};
use std::time::{Duration, Instant};
use wasmtime::component::Resource;

pub use wit::{Column, Rows, SqlError, Value};

/// Most connections one step call holds open at once.
pub const MAX_CONNECTIONS: usize = 4;

/// Caps on one step call's SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    /// Most rows one query returns.
    pub rows: usize,
    /// Most bytes of values one query returns.
    pub bytes: usize,
    /// Longest one statement may run before the host cancels it.
    pub statement_timeout: Duration,
}

/// Most rows one SQL query returns when the pipeline does not say.
pub const DEFAULT_ROWS: usize = 10_000;

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            rows: DEFAULT_ROWS,
            bytes: super::HttpLimits::default().max_response_bytes,
            statement_timeout: super::HttpLimits::default().request_timeout,
        }
    }
}

/// A session the host holds for the plugin.
pub struct Connection {
    grant: DatabaseGrant,
    session: Session,
    /// The rep of the open transaction, if any: statements then go through it only.
    transaction: Option<u32>,
}

/// A transaction on a connection (the connection's rep); `done` once committed or rolled back.
pub struct Transaction {
    connection: u32,
    done: bool,
}

/// One engine's session.
enum Session {
    Postgres(Box<postgres::Session>),
    Mysql(mysql::Session),
}

/// What a statement is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Rows,
    Count,
}

/// What a statement returned.
enum Answer {
    Rows(Rows),
    Count(u64),
}

impl Answer {
    fn summary(&self) -> String {
        match self {
            Answer::Rows(r) => format!("{} row{}", r.rows.len(), if r.rows.len() == 1 { "" } else { "s" }),
            Answer::Count(n) => format!("{n} changed"),
        }
    }
}

/// Counts what a query returns against the caps.
struct Budget {
    rows: usize,
    bytes: usize,
    limits: SqlLimits,
}

impl Budget {
    fn new(limits: SqlLimits) -> Self {
        Self { rows: 0, bytes: 0, limits }
    }

    /// Counts one row; errs past a cap.
    fn take(&mut self, row: &[Value]) -> Result<(), SqlError> {
        self.rows += 1;
        self.bytes += row.iter().map(value_bytes).sum::<usize>();
        if self.rows > self.limits.rows {
            return Err(SqlError::Limit(format!(
                "the query returned more than {} rows (the step's `limits.rows`)",
                self.limits.rows
            )));
        }
        if self.bytes > self.limits.bytes {
            return Err(SqlError::Limit(format!(
                "the query returned more than {} bytes (the step's `limits.response_size`)",
                self.limits.bytes
            )));
        }
        Ok(())
    }
}

impl Budget {
    /// The longest protocol message a connection takes: the byte cap, with room for the framing.
    fn message_cap(&self) -> u64 {
        message_cap(self.limits)
    }
}

/// The longest protocol message under `limits`: a row or an error at most the byte cap, plus framing.
fn message_cap(limits: SqlLimits) -> u64 {
    limits.bytes as u64 + (64 << 10)
}

/// What a session is opened with besides its grant.
pub(super) struct Opening {
    /// The server's own limit on each statement: the step's remaining time or the statement
    /// timeout, whichever is shorter, so a statement outlives no killed client by much.
    server_timeout: Duration,
    limits: SqlLimits,
}

impl Opening {
    fn message_cap(&self) -> u64 {
        message_cap(self.limits)
    }
}

/// Cancels a session's running statement from another connection.
pub(super) struct Canceller(std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>);

impl Canceller {
    fn new(cancel: impl std::future::Future<Output = Result<(), String>> + Send + 'static) -> Self {
        Self(Box::pin(cancel))
    }

    async fn run(self) -> Result<(), String> {
        self.0.await
    }
}

/// Cancels the statement on the server when its call ends before it did: the step's timeout,
/// cancellation or a signal drop the call's future, and with it this guard.
struct CancelOnDrop(Option<Canceller>);

impl CancelOnDrop {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = cancel.run().await {
                        tracing::warn!("cannot cancel a statement whose call ended: {e}");
                    }
                });
            }
        }
    }
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Text(t) => t.len(),
        Value::Bytes(b) => b.len(),
        _ => 8,
    }
}

/// The per-call SQL state kept in the store.
pub(crate) struct Sql {
    pub(crate) databases: crate::capability::Databases,
    pub(crate) limits: SqlLimits,
    pub(crate) open: usize,
}

async fn connect(
    db: &Database,
    resolver: &Resolver,
    timeout: Duration,
    opening: &Opening,
) -> Result<Session, SqlError> {
    let ips = resolver.connectable(&db.grant.location.host).await.map_err(|e| match e {
        Unreachable::Denied(d) => SqlError::Denied(d.for_database()),
        Unreachable::Lookup(m) => SqlError::Transport(m),
    })?;
    let ip = ips[0];
    let connecting = async {
        match db.grant.location.engine {
            Engine::Postgres => {
                postgres::Session::connect(db, ip, opening).await.map(|s| Session::Postgres(Box::new(s)))
            }
            Engine::Mysql => mysql::Session::connect(db, ip, opening).await.map(Session::Mysql),
        }
    };
    tokio::time::timeout(timeout, connecting).await.unwrap_or_else(|_| {
        Err(SqlError::Timeout(format!(
            "connecting to {} took longer than {}",
            db.grant.location,
            humantime::format_duration(timeout)
        )))
    })
}

/// Refuses a call whose parameters do not match the prepared statement's placeholders.
fn arity(takes: usize, given: usize) -> Result<(), SqlError> {
    match takes == given {
        true => Ok(()),
        false => Err(SqlError::Invalid(format!("the statement takes {takes} parameters and {given} were given"))),
    }
}

impl Session {
    async fn run(
        &mut self,
        statement: &str,
        params: &[Value],
        want: Want,
        budget: &mut Budget,
    ) -> Result<Answer, SqlError> {
        match self {
            Session::Postgres(s) => s.run(statement, params, want, budget).await,
            Session::Mysql(s) => s.run(statement, params, want, budget).await,
        }
    }

    /// Sends a transaction statement of the host's own (`BEGIN READ ONLY`, `COMMIT`, ...).
    async fn control(&mut self, statement: &str) -> Result<(), SqlError> {
        match self {
            Session::Postgres(s) => s.control(statement).await,
            Session::Mysql(s) => s.control(statement).await,
        }
    }

    /// Asks the server to stop the statement running on this session.
    async fn cancel(&mut self) {
        match self {
            Session::Postgres(s) => s.cancel().await,
            Session::Mysql(s) => s.cancel().await,
        }
    }

    /// Ends a read-only grant's transaction with `ROLLBACK`, releasing locks that outlive it.
    async fn end_readonly(&mut self) -> Result<(), SqlError> {
        match self {
            Session::Postgres(s) => s.end_readonly().await,
            Session::Mysql(s) => s.end_readonly().await,
        }
    }

    fn canceller(&self) -> Canceller {
        match self {
            Session::Postgres(s) => s.canceller(),
            Session::Mysql(s) => s.canceller(),
        }
    }

    fn begin_statement(&self, readonly: bool) -> &'static str {
        match (self, readonly) {
            (Session::Postgres(_), true) => "BEGIN READ ONLY",
            (Session::Postgres(_), false) => "BEGIN",
            (Session::Mysql(_), true) => "START TRANSACTION READ ONLY",
            (Session::Mysql(_), false) => "START TRANSACTION",
        }
    }
}

/// One statement under the grant's rules: refused before sending, wrapped read-only, timed, capped.
async fn statement(
    conn: &mut Connection,
    in_transaction: bool,
    statement: &str,
    params: &[Value],
    want: Want,
    limits: SqlLimits,
    deadline: Instant,
) -> Result<Answer, SqlError> {
    if let Some(why) = refusal(&conn.grant, statement) {
        return Err(SqlError::Denied(why));
    }
    let timeout = limits.statement_timeout.min(deadline.saturating_duration_since(Instant::now()));
    // A read-only grant's statement outside a transaction gets one of its own, always rolled back.
    let wrap = conn.grant.readonly && !in_transaction;
    if wrap {
        let begin = conn.session.begin_statement(true);
        conn.session.control(begin).await?;
    }
    let mut budget = Budget::new(limits);
    let guard = CancelOnDrop(Some(conn.session.canceller()));
    let answer = match tokio::time::timeout(timeout, conn.session.run(statement, params, want, &mut budget)).await {
        Ok(answer) => answer,
        Err(_) => {
            conn.session.cancel().await;
            Err(SqlError::Timeout(format!(
                "the statement ran longer than {} and was cancelled",
                humantime::format_duration(timeout)
            )))
        }
    };
    guard.done();
    if wrap {
        // The statement's own error says more than the rollback's on a connection it broke.
        let ended = conn.session.end_readonly().await;
        if answer.is_ok() {
            ended?;
        }
    }
    answer
}

/// TLS that verifies the server against the system roots (Mozilla's, as reqwest's) and the grant's CA file.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, SqlError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        roots.add_parsable_certificates(crate::capability::probe::read_ca_file(path).map_err(SqlError::Invalid)?);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SqlError::Invalid(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Shortens a statement for the journal: one line, at most 200 characters.
fn shown(statement: &str) -> String {
    let line: String = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

fn redacted(redactor: &Redactor, error: SqlError) -> SqlError {
    match error {
        SqlError::Server(e) => {
            SqlError::Server(wit::ServerError { code: e.code, message: redactor.redact(&e.message) })
        }
        SqlError::Denied(m) => SqlError::Denied(redactor.redact(&m)),
        SqlError::Timeout(m) => SqlError::Timeout(redactor.redact(&m)),
        SqlError::Limit(m) => SqlError::Limit(redactor.redact(&m)),
        SqlError::Transport(m) => SqlError::Transport(redactor.redact(&m)),
        SqlError::Invalid(m) => SqlError::Invalid(redactor.redact(&m)),
    }
}

/// What an error says in one line, for the journal.
pub(crate) fn describe(error: &SqlError) -> String {
    match error {
        SqlError::Server(e) => format!("the server refused it ({}): {}", e.code, e.message),
        SqlError::Denied(m) => format!("refused: {m}"),
        SqlError::Timeout(m) | SqlError::Limit(m) | SqlError::Transport(m) | SqlError::Invalid(m) => m.clone(),
    }
}

impl State {
    /// Journals what a capability call did (a statement, a handshake, a lookup) as a log line of the step.
    pub(super) fn capability_line(&self, message: String) {
        let step = self.outbound.step.as_str();
        tracing::info!(target: "gantry::capability", step, "{message}");
        if let Some(sink) = &self.logs {
            (sink.0)(super::Level::Info, message);
        }
    }

    /// Runs a statement on connection `rep`, inside its transaction or not, and journals it.
    async fn sql_statement(
        &mut self,
        rep: u32,
        in_transaction: bool,
        text: String,
        params: Vec<Value>,
        want: Want,
    ) -> Result<Answer, SqlError> {
        let redactor = self.outbound.grants.secrets.redactor().clone();
        let (limits, deadline) = (self.sql.limits, self.tracker.deadline);
        let started = Instant::now();
        let conn = self
            .table
            .get_mut(&Resource::<Connection>::new_borrow(rep))
            .map_err(|e| SqlError::Invalid(format!("no such connection: {e}")))?;
        let name = conn.grant.name.clone();
        let answer = match (conn.transaction.is_some(), in_transaction) {
            (true, false) => Err(SqlError::Invalid(
                "a transaction is open on this connection: run the statement through it, or end it first".into(),
            )),
            _ => statement(conn, in_transaction, &text, &params, want, limits, deadline).await,
        };
        let answer = answer.map_err(|e| redacted(&redactor, e));
        let took = format!("{:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
        let what = redactor.redact(&shown(&text));
        match &answer {
            Ok(a) => self.capability_line(format!("sql {name}: {what} -> {} ({took})", a.summary())),
            Err(e) => self.capability_line(format!("sql {name}: {what} -> {} ({took})", describe(e))),
        }
        // A record per statement, for traces and the report's requests: the verb, never the text.
        if let Some(log) = &self.outbound.log {
            let verb: String = text.trim_start().chars().take_while(char::is_ascii_alphabetic).take(16).collect();
            let verb = verb.to_ascii_uppercase();
            let denied = matches!(&answer, Err(SqlError::Denied(_)));
            (log.0)(crate::capability::unit::RequestRecord {
                step: self.outbound.step.clone(),
                method: format!("SQL {verb}"),
                origin: format!("sql://{name}"),
                path: String::new(),
                status: None,
                bytes: 0,
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
                allowed: !denied,
                reason: answer.as_ref().err().map(describe),
                action: None,
            });
        }
        match answer {
            Ok(Answer::Rows(mut rows)) => {
                // A value the database holds may be a secret of the run: it never reaches the plugin.
                for row in &mut rows.rows {
                    for v in row.iter_mut() {
                        match v {
                            Value::Text(t) => *t = redactor.redact(t),
                            // A binary column (bytea, BINARY) holds a secret's bytes as well as text does.
                            Value::Bytes(b) => {
                                let replaced = match redactor.redact_bytes(b) {
                                    std::borrow::Cow::Owned(r) => Some(r),
                                    std::borrow::Cow::Borrowed(_) => None,
                                };
                                if let Some(r) = replaced {
                                    *b = r;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Ok(Answer::Rows(rows))
            }
            other => other,
        }
    }

    async fn sql_end(&mut self, tx: &Resource<Transaction>, commit: bool) -> Result<(), SqlError> {
        let t = self.table.get_mut(tx).map_err(|e| SqlError::Invalid(format!("no such transaction: {e}")))?;
        if t.done {
            return Err(SqlError::Invalid("the transaction has already ended".into()));
        }
        t.done = true;
        let rep = t.connection;
        let conn = self
            .table
            .get_mut(&Resource::<Connection>::new_borrow(rep))
            .map_err(|e| SqlError::Invalid(format!("no such connection: {e}")))?;
        conn.transaction = None;
        let name = conn.grant.name.clone();
        // A read-only grant's transaction is always rolled back: what a function did inside it
        // that the read-only mode allows (a large object, a notification) must not persist.
        let (statement, done) = match (commit, conn.grant.readonly) {
            (true, false) => ("COMMIT", conn.session.control("COMMIT").await),
            (false, false) => ("ROLLBACK", conn.session.control("ROLLBACK").await),
            (_, true) => ("ROLLBACK (read-only grant)", conn.session.end_readonly().await),
        };
        let redactor = self.outbound.grants.secrets.redactor().clone();
        let done = done.map_err(|e| redacted(&redactor, e));
        let said = match &done {
            Ok(()) => "done".to_string(),
            Err(e) => describe(e),
        };
        self.capability_line(format!("sql {name}: {statement} -> {said}"));
        done
    }
}

impl wit::Host for State {}

impl wit::HostConnection for State {
    async fn open(&mut self, database: String) -> Result<Resource<Connection>, SqlError> {
        let Some(db) = self.sql.databases.get(&database).cloned() else {
            let granted: Vec<&str> = self.sql.databases.names().collect();
            let granted = if granted.is_empty() { "none".to_string() } else { granted.join(", ") };
            let why = format!("database `{database}` is not granted to this step (granted: {granted})");
            self.outbound.refusal.get_or_insert(super::outbound::Refusal::Network(why.clone()));
            self.capability_line(format!("sql {database}: open -> refused: {why}"));
            return Err(SqlError::Denied(why));
        };
        if self.sql.open >= MAX_CONNECTIONS {
            return Err(SqlError::Limit(format!("a step holds at most {MAX_CONNECTIONS} connections at once")));
        }
        let timeout =
            self.sql.limits.statement_timeout.min(self.tracker.deadline.saturating_duration_since(Instant::now()));
        let redactor = self.outbound.grants.secrets.redactor().clone();
        let remaining = self.tracker.deadline.saturating_duration_since(Instant::now());
        let opening =
            Opening { server_timeout: self.sql.limits.statement_timeout.min(remaining), limits: self.sql.limits };
        let session = connect(&db, &self.resolver, timeout, &opening).await.map_err(|e| redacted(&redactor, e));
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                self.capability_line(format!("sql {database}: open {} -> {}", db.grant.location, describe(&e)));
                return Err(e);
            }
        };
        self.capability_line(format!("sql {database}: opened {}", db.grant));
        self.sql.open += 1;
        let conn = Connection { grant: db.grant, session, transaction: None };
        self.table.push(conn).map_err(|e| SqlError::Limit(format!("cannot hold another connection: {e}")))
    }

    async fn engine(&mut self, conn: Resource<Connection>) -> wit::Engine {
        match self.table.get(&conn).map(|c| c.grant.location.engine) {
            Ok(Engine::Mysql) => wit::Engine::Mysql,
            _ => wit::Engine::Postgres,
        }
    }

    async fn query(
        &mut self,
        conn: Resource<Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> Result<Rows, SqlError> {
        match self.sql_statement(conn.rep(), false, statement, params, Want::Rows).await? {
            Answer::Rows(rows) => Ok(rows),
            Answer::Count(_) => Ok(Rows { columns: Vec::new(), rows: Vec::new() }),
        }
    }

    async fn execute(
        &mut self,
        conn: Resource<Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> Result<u64, SqlError> {
        match self.sql_statement(conn.rep(), false, statement, params, Want::Count).await? {
            Answer::Count(n) => Ok(n),
            Answer::Rows(rows) => Ok(rows.rows.len() as u64),
        }
    }

    async fn begin(&mut self, conn: Resource<Connection>) -> Result<Resource<Transaction>, SqlError> {
        let rep = conn.rep();
        let c = self.table.get_mut(&conn).map_err(|e| SqlError::Invalid(format!("no such connection: {e}")))?;
        if c.transaction.is_some() {
            return Err(SqlError::Invalid("a transaction is already open on this connection".into()));
        }
        let begin = c.session.begin_statement(c.grant.readonly);
        let name = c.grant.name.clone();
        let redactor = self.outbound.grants.secrets.redactor().clone();
        let begun = c.session.control(begin).await.map_err(|e| redacted(&redactor, e));
        if let Err(e) = &begun {
            self.capability_line(format!("sql {name}: {begin} -> {}", describe(e)));
        }
        begun?;
        let tx = self
            .table
            .push_child(Transaction { connection: rep, done: false }, &conn)
            .map_err(|e| SqlError::Invalid(format!("cannot open a transaction: {e}")))?;
        if let Ok(c) = self.table.get_mut(&conn) {
            c.transaction = Some(tx.rep());
        }
        self.capability_line(format!("sql {name}: {begin} -> done"));
        Ok(tx)
    }

    async fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        self.sql.open = self.sql.open.saturating_sub(1);
        Ok(())
    }
}

impl wit::HostTransaction for State {
    async fn query(
        &mut self,
        tx: Resource<Transaction>,
        statement: String,
        params: Vec<Value>,
    ) -> Result<Rows, SqlError> {
        let rep = self.open_transaction(&tx)?;
        match self.sql_statement(rep, true, statement, params, Want::Rows).await? {
            Answer::Rows(rows) => Ok(rows),
            Answer::Count(_) => Ok(Rows { columns: Vec::new(), rows: Vec::new() }),
        }
    }

    async fn execute(
        &mut self,
        tx: Resource<Transaction>,
        statement: String,
        params: Vec<Value>,
    ) -> Result<u64, SqlError> {
        let rep = self.open_transaction(&tx)?;
        match self.sql_statement(rep, true, statement, params, Want::Count).await? {
            Answer::Count(n) => Ok(n),
            Answer::Rows(rows) => Ok(rows.rows.len() as u64),
        }
    }

    async fn commit(&mut self, tx: Resource<Transaction>) -> Result<(), SqlError> {
        self.sql_end(&tx, true).await
    }

    async fn rollback(&mut self, tx: Resource<Transaction>) -> Result<(), SqlError> {
        self.sql_end(&tx, false).await
    }

    async fn drop(&mut self, tx: Resource<Transaction>) -> wasmtime::Result<()> {
        // Dropped before its end: rolled back, as the contract says.
        if self.table.get(&tx).is_ok_and(|t| !t.done) {
            let _ = self.sql_end(&tx, false).await;
        }
        self.table.delete(tx)?;
        Ok(())
    }
}

impl State {
    /// The connection rep of an open transaction.
    fn open_transaction(&self, tx: &Resource<Transaction>) -> Result<u32, SqlError> {
        let t = self.table.get(tx).map_err(|e| SqlError::Invalid(format!("no such transaction: {e}")))?;
        if t.done {
            return Err(SqlError::Invalid("the transaction has already ended".into()));
        }
        Ok(t.connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_shown_on_one_line_and_cut() {
        assert_eq!(shown("SELECT 1\n  FROM t"), "SELECT 1 FROM t");
        let long = "x".repeat(300);
        assert_eq!(shown(&long).chars().count(), 201);
    }

    #[test]
    fn the_budget_stops_past_rows_or_bytes() {
        let mut b = Budget::new(SqlLimits { rows: 2, bytes: 10, statement_timeout: Duration::from_secs(1) });
        assert!(b.take(&[Value::Integer(1)]).is_ok());
        assert!(matches!(b.take(&[Value::Text("abc".into())]), Err(SqlError::Limit(m)) if m.contains("bytes")));
        let mut b = Budget::new(SqlLimits { rows: 1, bytes: 100, statement_timeout: Duration::from_secs(1) });
        assert!(b.take(&[Value::Null]).is_ok());
        assert!(matches!(b.take(&[Value::Null]), Err(SqlError::Limit(m)) if m.contains("rows")));
    }
}
