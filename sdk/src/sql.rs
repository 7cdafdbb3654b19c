//! SQL databases the pipeline granted the step, opened by grant name: the host holds the URL and
//! the password, connects, enforces a read-only grant and the step's statement timeout and caps.

use crate::__private::bindings::gantry::step::sql as wit;
use crate::Error;

pub use wit::{Column, Engine, Rows, ServerError, SqlError, Value};

/// A session with one granted database; closed when dropped.
pub struct Connection(wit::Connection);

impl Connection {
    /// Opens the database granted to the step as `name` (a name under its `databases:`).
    pub fn open(name: &str) -> Result<Self, SqlError> {
        wit::Connection::open(name).map(Self)
    }

    /// The engine, for plugins that speak both dialects.
    pub fn engine(&self) -> Engine {
        self.0.engine()
    }

    /// Runs one statement that returns rows; parameters are `$1`, `$2` (postgres) or `?` (mysql).
    pub fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
        self.0.query(statement, params)
    }

    /// Runs one statement and returns the number of rows it changed.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
        self.0.execute(statement, params)
    }

    /// Starts a transaction; until it ends, the connection itself refuses statements.
    pub fn begin(&self) -> Result<Transaction, SqlError> {
        self.0.begin().map(Transaction)
    }
}

/// A transaction; dropped before [`Transaction::commit`], it is rolled back.
pub struct Transaction(wit::Transaction);

impl Transaction {
    /// As [`Connection::query`], inside the transaction.
    pub fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
        self.0.query(statement, params)
    }

    /// As [`Connection::execute`], inside the transaction.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
        self.0.execute(statement, params)
    }

    /// Makes the transaction's changes durable.
    pub fn commit(self) -> Result<(), SqlError> {
        self.0.commit()
    }

    /// Undoes the transaction's changes.
    pub fn rollback(self) -> Result<(), SqlError> {
        self.0.rollback()
    }
}

impl Rows {
    /// The index of the column called `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

impl Value {
    /// The value as text: text itself, numbers and booleans written out; `None` for null and bytes.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Null | Value::Bytes(_) => None,
            Value::Boolean(b) => Some(b.to_string()),
            Value::Integer(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Text(s) => Some(s.clone()),
        }
    }

    /// The value as an integer, where it is one (MySQL gives some as text).
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            Value::Boolean(b) => Some(i64::from(*b)),
            Value::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl SqlError {
    /// The error for a person (the generated `Display` is the debug form).
    pub fn message(&self) -> String {
        match self {
            SqlError::Denied(m) => format!("denied: {m}"),
            SqlError::Server(e) => format!("the server refused it ({}): {}", e.code, e.message),
            SqlError::Timeout(m) => format!("timed out: {m}"),
            SqlError::Limit(m) => format!("over a limit: {m}"),
            SqlError::Transport(m) => format!("connection: {m}"),
            SqlError::Invalid(m) => format!("invalid call: {m}"),
        }
    }

    /// Whether another attempt may help: a broken connection or a timeout may; a refusal will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, SqlError::Transport(_) | SqlError::Timeout(_))
            || matches!(self, SqlError::Server(e) if e.code == "40001" || e.code == "40P01" || e.code == "1213")
    }
}

impl From<SqlError> for Error {
    fn from(e: SqlError) -> Self {
        match e.is_transient() {
            true => Error::retryable(e.message()),
            false => Error::failed(e.message()),
        }
    }
}

/// Splits a SQL script into its statements at `;`, outside quotes (`'…'`, `"…"`, `` `…` ``),
/// dollar quotes (`$tag$…$tag$`) and
/// comments (`-- …`, `/* … */`); statements are trimmed and empty ones dropped.
pub fn split(script: &str) -> Vec<String> {
    let bytes = script.as_bytes();
    let (mut statements, mut start, mut i) = (Vec::new(), 0, 0);
    let push = |from: usize, to: usize, out: &mut Vec<String>| {
        let statement = script[from..to].trim();
        if !statement.chars().all(|c| c.is_whitespace()) && !only_comments(statement) {
            out.push(statement.to_string());
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'\\' && quote != b'`' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == quote {
                        // A doubled quote is an escaped one.
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = script[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = script[i + 2..].find("*/").map_or(bytes.len(), |n| i + 2 + n + 2);
            }
            b'$' => match dollar_tag(&script[i..]) {
                Some(tag) => {
                    let body = i + tag.len();
                    i = script[body..].find(tag).map_or(bytes.len(), |n| body + n + tag.len());
                }
                None => i += 1,
            },
            b';' => {
                push(start, i, &mut statements);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push(start, bytes.len(), &mut statements);
    statements
}

/// `$tag$` or `$$` at the start of `text`; `$1` (a parameter) is not one.
fn dollar_tag(text: &str) -> Option<&str> {
    let end = text[1..].find('$')? + 1;
    let tag = &text[1..end];
    let starts_well = tag.chars().next().is_none_or(|c| c.is_alphabetic() || c == '_');
    (starts_well && tag.chars().all(|c| c.is_alphanumeric() || c == '_')).then(|| &text[..=end])
}

/// Whether `statement` holds nothing but comments.
fn only_comments(statement: &str) -> bool {
    let mut rest = statement.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.find('\n').map_or("", |n| &after[n + 1..]).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |n| &after[n + 2..]).trim_start();
        } else {
            return rest.is_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_script_splits_at_semicolons_outside_quotes_comments_and_dollar_quotes() {
        let script = "-- create\nCREATE TABLE t (a text default ';');\n\
            /* ; */ INSERT INTO t VALUES ('it''s; fine'), (\"x;y\");\n\
            CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n\
            SELECT $1::int; -- trailing ; comment\n";
        assert_eq!(
            split(script),
            [
                "-- create\nCREATE TABLE t (a text default ';')",
                "/* ; */ INSERT INTO t VALUES ('it''s; fine'), (\"x;y\")",
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                "SELECT $1::int",
            ]
        );
    }

    #[test]
    fn an_empty_or_comment_only_script_has_no_statements() {
        assert!(split("").is_empty());
        assert!(split(" ;; -- nothing\n /* at all */ ").is_empty());
    }
}
