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

/// `text` with the password of any `user:password@` in it replaced by `***`, whether or not it parses as a URL.
pub fn masked(text: &str) -> String {
    let Some(scheme_end) = text.find("://").map(|i| i + 3) else { return text.to_string() };
    let rest = &text[scheme_end..];
    // The last `@` ends the user part even when the password holds a `/` (a path rarely holds `@`).
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else { return text.to_string() };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &text[..scheme_end], &rest[..colon], &rest[at..]),
        None => text.to_string(),
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
        let url = url::Url::parse(text).map_err(|e| format!("`{}` is not a URL: {e}", masked(text)))?;
        // Every message shows the URL with its password masked: it ends up in CI logs.
        let text = masked(text);
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

#[cfg(test)]
impl DatabaseGrant {
    /// Grant `app` of `url` as `deploy` with secret `DB_PASSWORD`, over TLS, for unit tests.
    pub(crate) fn for_test(url: &str, readonly: bool) -> Self {
        DatabaseGrant {
            name: "app".into(),
            location: Location::parse(url).unwrap(),
            user: "deploy".into(),
            password_secret: "DB_PASSWORD".into(),
            tls: TlsMode::Require,
            readonly,
            ca_file: None,
        }
    }
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
    /// A pre-flight's read-only view of a writable grant: its statements run in read-only
    /// transactions, but its role's powers are not refused, since the same plugin is given the
    /// writable grant next (the read-only mode keeps a pre-flight from writing by mistake).
    pub preflight_of_writable: bool,
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

    /// The same databases, each to be opened read-only.
    pub fn read_only(&self) -> Databases {
        let mut by_name = self.by_name.clone();
        for d in by_name.values_mut() {
            d.preflight_of_writable = !d.grant.readonly;
            d.grant.readonly = true;
        }
        Databases { by_name }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = Location::parse("postgres://deploy:hunter2@db/app").unwrap_err();
        assert!(e.contains("carries credentials") && e.contains("deploy:***@db") && !e.contains("hunter2"), "{e}");
        let e = Location::parse("postgres://deploy:hun/ter2@db/app").unwrap_err();
        assert!(!e.contains("hun/ter2") && !e.contains("ter2"), "{e}");
        assert_eq!(masked("mysql://u:p%40ss@h:3306/d"), "mysql://u:***@h:3306/d");
        assert_eq!(masked("postgres://h/d"), "postgres://h/d");
        assert!(Location::parse("postgres://db").unwrap_err().contains("names no database"));
        assert!(Location::parse("redis://db/0").unwrap_err().contains("postgres:// or mysql://"));
        assert!(Location::parse("postgres://db/app?sslmode=disable").unwrap_err().contains("no query"));
    }
}
