//! Database grants: a SQL database a step may use, named by the pipeline
//! (`databases: { app: { url: "postgres://db.internal:5432/app", ... } }`).
//! The host signs in with a declared secret bound to the database and owns
//! the connection; the plugin names the grant and never sees the password.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The engine a grant's URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://`, `mariadb://`).
    Mysql,
}

impl Engine {
    /// The port a URL of this engine means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
        }
    }

    /// The scheme origins of this engine are written with.
    pub fn scheme(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }

    fn of_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "postgres" | "postgresql" => Some(Engine::Postgres),
            "mysql" | "mariadb" => Some(Engine::Mysql),
            _ => None,
        }
    }
}

/// Whether the connection is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS, the server's certificate verified against the system roots or the grant's CA file (default).
    #[default]
    Require,
    /// Plain TCP: only to a database on this machine.
    Disable,
}

impl TlsMode {
    /// Parses `require` or `disable`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "require" => Ok(TlsMode::Require),
            "disable" => Ok(TlsMode::Disable),
            other => Err(format!("tls is `require` or `disable`, not `{other}`")),
        }
    }
}

/// Where a grant's database is: engine, host, port and database name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The engine.
    pub engine: Engine,
    /// Host name or address, as written (an IPv6 address without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database (schema, in MySQL's words) the session opens.
    pub database: String,
}

impl Location {
    /// Parses `postgres://host[:port]/database` or `mysql://host[:port]/database`: no user, no password
    /// (those are the grant's `user` and `password`), no query.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let engine = Engine::of_scheme(url.scheme())
            .ok_or_else(|| format!("`{text}`: a database URL starts with postgres:// or mysql://"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "`{text}` carries credentials: write the user under `user:` and name a secret under `password:`"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("`{text}`: a database URL has no query or fragment; use the grant's fields"));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("`{text}` names no host")),
        };
        let database = url.path().trim_start_matches('/').to_string();
        if database.is_empty() || database.contains('/') {
            return Err(format!("`{text}` names no database: end it with `/<database>`"));
        }
        Ok(Self { engine, host, port: url.port().unwrap_or(engine.default_port()), database })
    }

    /// `postgres://host:port`, the origin a password secret is bound to.
    pub fn origin(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{}://{host}:{}", self.engine.scheme(), self.port)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.origin(), self.database)
    }
}

/// One database grant as planned: where, as whom, with which secret, and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseGrant {
    /// The name steps use (`databases: [app]`).
    pub name: String,
    /// Where the database is.
    pub location: Location,
    /// The user the host signs in as.
    pub user: String,
    /// The declared secret holding the password.
    pub password_secret: String,
    /// Encryption.
    pub tls: TlsMode,
    /// Every statement runs in a read-only transaction, and only reading statements are sent.
    pub readonly: bool,
    /// PEM file of CA certificates trusted besides the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl fmt::Display for DatabaseGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as {}", self.location, self.user)?;
        if self.readonly {
            f.write_str(", read-only")?;
        }
        if self.tls == TlsMode::Disable {
            f.write_str(", without TLS")?;
        }
        Ok(())
    }
}

/// A granted database with the password the host signs in with.
#[derive(Clone)]
pub struct Database {
    /// The grant.
    pub grant: DatabaseGrant,
    /// The password: used by the host, never handed to the plugin.
    pub password: String,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database").field("grant", &self.grant).field("password", &"***").finish()
    }
}

/// The databases granted to one step, by name.
#[derive(Debug, Clone, Default)]
pub struct Databases {
    by_name: BTreeMap<String, Database>,
}

impl Databases {
    /// Grants a database under its grant's name.
    pub fn insert(&mut self, database: Database) {
        self.by_name.insert(database.grant.name.clone(), database);
    }

    /// The database granted as `name`.
    pub fn get(&self, name: &str) -> Option<&Database> {
        self.by_name.get(name)
    }

    /// The granted names, for messages.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Every password, for the run's redactor.
    pub fn passwords(&self) -> impl Iterator<Item = &str> {
        self.by_name.values().map(|d| d.password.as_str())
    }
}

/// What a statement does, by its first keyword: what a grant lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// Reads only: `SELECT`, `WITH`, `SHOW`, `EXPLAIN`, `VALUES`, `TABLE`, `DESCRIBE`.
    Read,
    /// Begins or ends a transaction: only through the transaction resource, so the host knows its state.
    Transaction,
    /// Changes the session (`SET`, `RESET`, `USE`, `DISCARD`): refused on read-only grants; `USE` on every grant.
    Session,
    /// Anything else: changes data or schema.
    Write,
}

/// The first keyword of a statement, upper-cased, past whitespace and comments.
pub fn first_keyword(statement: &str) -> String {
    let mut rest = statement;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--").or_else(|| rest.strip_prefix('#')) {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    rest.trim_start_matches('(')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic() || *c == '_')
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Sorts a statement by its first keyword.
pub fn kind_of(statement: &str) -> StatementKind {
    match first_keyword(statement).as_str() {
        "SELECT" | "WITH" | "SHOW" | "EXPLAIN" | "VALUES" | "TABLE" | "DESCRIBE" | "DESC" => StatementKind::Read,
        "BEGIN" | "START" | "COMMIT" | "ROLLBACK" | "END" | "ABORT" | "SAVEPOINT" | "RELEASE" | "XA" | "PREPARE" => {
            StatementKind::Transaction
        }
        "SET" | "RESET" | "USE" | "DISCARD" => StatementKind::Session,
        _ => StatementKind::Write,
    }
}

/// Why a grant refuses a statement before it is sent, or `None` when it may go.
pub fn refusal(grant: &DatabaseGrant, statement: &str) -> Option<String> {
    let name = &grant.name;
    match kind_of(statement) {
        StatementKind::Read => None,
        StatementKind::Transaction => Some(format!(
            "`{}` is not sent on database `{name}`: begin a transaction with `connection.begin()` and end it with its `commit` or `rollback`",
            first_keyword(statement)
        )),
        StatementKind::Session if first_keyword(statement) == "USE" => Some(format!(
            "`USE` is not sent on database `{name}`: a grant opens one database ({})",
            grant.location.database
        )),
        StatementKind::Session | StatementKind::Write if grant.readonly => Some(format!(
            "database `{name}` is granted read-only: `{}` is not sent (only SELECT, WITH, SHOW, EXPLAIN, VALUES, TABLE, DESCRIBE)",
            first_keyword(statement)
        )),
        StatementKind::Session | StatementKind::Write => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(readonly: bool) -> DatabaseGrant {
        DatabaseGrant {
            name: "app".into(),
            location: Location::parse("postgres://db.internal/app").unwrap(),
            user: "deploy".into(),
            password_secret: "DB_PASSWORD".into(),
            tls: TlsMode::Require,
            readonly,
            ca_file: None,
        }
    }

    #[test]
    fn urls_parse_into_locations_and_refuse_credentials() {
        let l = Location::parse("postgres://db.internal/app").unwrap();
        assert_eq!(
            (l.engine, l.host.as_str(), l.port, l.database.as_str()),
            (Engine::Postgres, "db.internal", 5432, "app")
        );
        assert_eq!(l.origin(), "postgres://db.internal:5432");
        let m = Location::parse("mariadb://[::1]:3307/shop").unwrap();
        assert_eq!((m.engine, m.host.as_str(), m.origin()), (Engine::Mysql, "::1", "mysql://[::1]:3307".to_string()));
        assert!(Location::parse("postgres://deploy:hunter2@db/app").unwrap_err().contains("carries credentials"));
        assert!(Location::parse("postgres://db").unwrap_err().contains("names no database"));
        assert!(Location::parse("redis://db/0").unwrap_err().contains("postgres:// or mysql://"));
        assert!(Location::parse("postgres://db/app?sslmode=disable").unwrap_err().contains("no query"));
    }

    #[test]
    fn statements_are_sorted_past_comments_and_refused_by_the_grant() {
        assert_eq!(first_keyword("  -- why\n/* how */ select 1"), "SELECT");
        assert_eq!(kind_of("(SELECT 1) UNION (SELECT 2)"), StatementKind::Read);
        assert_eq!(kind_of("commit"), StatementKind::Transaction);
        assert_eq!(kind_of("SET default_transaction_read_only = off"), StatementKind::Session);
        assert_eq!(kind_of("insert into t values (1)"), StatementKind::Write);
        assert_eq!(refusal(&grant(false), "insert into t values (1)"), None);
        assert_eq!(refusal(&grant(false), "SET search_path = app"), None);
        assert!(refusal(&grant(false), "BEGIN").unwrap().contains("connection.begin()"));
        assert!(refusal(&grant(false), "use other").unwrap().contains("opens one database (app)"));
        assert!(refusal(&grant(true), "delete from t").unwrap().contains("granted read-only: `DELETE`"));
        assert!(refusal(&grant(true), "set transaction read write").unwrap().contains("read-only: `SET`"));
        assert_eq!(refusal(&grant(true), "WITH x AS (SELECT 1) SELECT * FROM x"), None);
    }
}
