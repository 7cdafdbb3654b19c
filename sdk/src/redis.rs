//! Redis through the host, on the servers the pipeline granted the step (`redis: [cache]`): the
//! host connects and signs in, so the plugin names a server and never holds its URL or password.
//! Every key must start with one of the grant's prefixes; `SCAN` is held to them.
//!
//! ```no_run
//! let cache = gantry_sdk::redis::server("cache");
//! cache.set("the7space:greeting", "hello")?;
//! let keys = cache.scan_page("0", "the7space:*", 100)?;
//! # Ok::<(), gantry_sdk::redis::RedisError>(())
//! ```

use crate::__private::bindings::gantry::step::redis as wit;

pub use wit::{RedisError, Reply};

/// A granted Redis server, by the name the pipeline declares it under.
#[derive(Debug, Clone)]
pub struct Server {
    name: String,
}

/// The granted server called `name`.
pub fn server(name: &str) -> Server {
    Server { name: name.to_string() }
}

/// One page of a `SCAN`: the cursor to ask with next (`"0"` when done) and the keys found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The next cursor; `"0"` when the scan is complete.
    pub cursor: String,
    /// Keys of this page (a key may show on more than one page, as Redis's `SCAN` promises).
    pub keys: Vec<String>,
}

impl Server {
    /// Runs a command: its name, then its arguments.
    pub fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Reply, RedisError> {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_ref().to_vec()).collect();
        wit::command(&self.name, &args)
    }

    /// `GET key`: the value, `None` when the key does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        match self.command(&["GET".as_bytes(), key.as_bytes()])? {
            Reply::Bulk(value) => Ok(Some(value)),
            _ => Ok(None),
        }
    }

    /// `SET key value`.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), RedisError> {
        self.command(&["SET".as_bytes(), key.as_bytes(), value.as_ref()]).map(drop)
    }

    /// `UNLINK key…` (deleting in the server's background): how many of the keys existed.
    pub fn unlink<K: AsRef<str>>(&self, keys: &[K]) -> Result<i64, RedisError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut args = vec!["UNLINK".as_bytes()];
        args.extend(keys.iter().map(|k| k.as_ref().as_bytes()));
        match self.command(&args)? {
            Reply::Integer(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// One page of `SCAN cursor MATCH pattern COUNT count`; `pattern` starts with a granted prefix.
    pub fn scan_page(&self, cursor: &str, pattern: &str, count: u32) -> Result<Page, RedisError> {
        let count = count.to_string();
        let reply = self.command(&["SCAN", cursor, "MATCH", pattern, "COUNT", &count])?;
        let Reply::Array(items) = reply else {
            return Err(RedisError::Transport("SCAN did not answer with a list".into()));
        };
        let mut items = items.into_iter().map(|i| String::from_utf8_lossy(&i.unwrap_or_default()).into_owned());
        let cursor = items.next().unwrap_or_else(|| "0".into());
        Ok(Page { cursor, keys: items.collect() })
    }
}

impl RedisError {
    /// The error for a person (the generated `Display` is the debug form).
    pub fn message(&self) -> String {
        match self {
            RedisError::Denied(m) => format!("denied: {m}"),
            RedisError::Limit(m) => format!("limit: {m}"),
            RedisError::Server(m) => format!("the server said: {m}"),
            RedisError::Transport(m) => m.clone(),
        }
    }
}

impl From<RedisError> for crate::Error {
    fn from(e: RedisError) -> Self {
        match e {
            RedisError::Transport(_) | RedisError::Limit(_) => crate::Error::retryable(e.message()),
            _ => crate::Error::failed(e.message()),
        }
    }
}
