//! One call's Redis: the connections the host opened for it (signed in, database selected), and
//! every command checked against the grant before it is sent.

use super::bindings::gantry::step::redis::{Host, RedisError, Reply};
use super::commands::{self, KeySpec, Reach};
use super::resp::{self, Frame, ReadError};
use super::{RedisGrant, Server};
use crate::capability::unit::{CallContext, RequestRecord};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The state of one call.
pub struct RedisCall {
    pub(super) grant: RedisGrant,
    pub(super) passwords: BTreeMap<String, String>,
    pub(super) call: CallContext,
    pub(super) open: HashMap<String, Connection>,
    pub(super) sent: u32,
}

/// A signed-in connection and the key specifications its server gave.
pub(super) struct Connection {
    stream: BufReader<TcpStream>,
    specs: HashMap<String, KeySpec>,
}

impl Host for RedisCall {
    async fn command(&mut self, name: String, args: Vec<Vec<u8>>) -> Result<Reply, RedisError> {
        let started = Instant::now();
        let origin = self.grant.servers.get(&name).map(Server::origin).unwrap_or_else(|| format!("redis:{name}"));
        let verb = args.first().map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default();
        let (result, bytes) = self.run(&name, args).await;
        let result = result.map_err(|e| self.redacted(e));
        let reason = result.as_ref().err().map(message);
        let allowed = !matches!(result, Err(RedisError::Denied(_)));
        self.call.record(RequestRecord {
            step: self.call.step.clone(),
            method: verb.chars().take(32).collect(),
            origin,
            path: String::new(),
            status: None,
            bytes: bytes as u64,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            allowed,
            reason,
            action: None,
        });
        result
    }
}

/// An error's text, for the journal.
fn message(e: &RedisError) -> String {
    match e {
        RedisError::Denied(m) | RedisError::Limit(m) | RedisError::Server(m) | RedisError::Transport(m) => m.clone(),
    }
}

impl RedisCall {
    fn redacted(&self, e: RedisError) -> RedisError {
        let r = |m: String| self.call.redactor.redact(&m);
        match e {
            RedisError::Denied(m) => RedisError::Denied(r(m)),
            RedisError::Limit(m) => RedisError::Limit(r(m)),
            RedisError::Server(m) => RedisError::Server(r(m)),
            RedisError::Transport(m) => RedisError::Transport(r(m)),
        }
    }

    /// Checks and sends one command; the reply's size in bytes beside the result.
    async fn run(&mut self, name: &str, mut args: Vec<Vec<u8>>) -> (Result<Reply, RedisError>, usize) {
        let server = match self.grant.servers.get(name) {
            Some(server) => server.clone(),
            None => {
                let granted: Vec<&str> = self.grant.servers.keys().map(String::as_str).collect();
                let granted = if granted.is_empty() { "none: give the step `redis: [name]`".into() } else { granted.join(", ") };
                return (Err(RedisError::Denied(format!("Redis server `{name}` is not granted to the step (granted: {granted})"))), 0);
            }
        };
        let Some(verb) = args.first().map(|a| String::from_utf8_lossy(a).into_owned()) else {
            return (Err(RedisError::Denied("an empty command".into())), 0);
        };
        let Some(allowed) = commands::allowed(&verb) else {
            return (Err(RedisError::Denied(commands::refusal(&verb))), 0);
        };
        if allowed.writes && (server.readonly || self.call.reads_only) {
            let why = if server.readonly { "the grant is read-only" } else { "a pre-flight only reads" };
            return (Err(RedisError::Denied(format!("{} writes, and {why}", allowed.name))), 0);
        }
        self.sent += 1;
        if self.sent > self.call.max_requests {
            return (Err(RedisError::Limit(format!("more than {} requests in one call", self.call.max_requests))), 0);
        }
        if allowed.reach == Reach::Scan {
            if let Err(e) = confine_scan(&mut args, &server.prefixes) {
                return (Err(e), 0);
            }
        }
        let budget = self.call.request_budget();
        let outcome = tokio::time::timeout(budget, self.exchange(name, &server, allowed.reach, &args)).await;
        match outcome {
            Ok(Ok((frame, bytes))) => (reply(frame, allowed.reach, &server.prefixes), bytes),
            Ok(Err(e)) => {
                // A connection left mid-reply cannot carry the next command.
                if !matches!(e, RedisError::Denied(_) | RedisError::Server(_)) {
                    self.open.remove(name);
                }
                (Err(e), 0)
            }
            Err(_) => {
                self.open.remove(name);
                let waited = crate::units::duration(budget);
                (Err(RedisError::Limit(format!("{} on `{name}` took longer than {waited}", allowed.name))), 0)
            }
        }
    }

    /// Opens the connection if needed, checks the keys, sends and reads.
    async fn exchange(
        &mut self,
        name: &str,
        server: &Server,
        reach: Reach,
        args: &[Vec<u8>],
    ) -> Result<(Frame, usize), RedisError> {
        if !self.open.contains_key(name) {
            let password = server.password.as_ref().and_then(|secret| self.passwords.get(secret));
            let connection = Connection::open(server, password.map(String::as_str), &self.call).await?;
            self.open.insert(name.to_string(), connection);
        }
        let limit = self.call.response_bytes;
        let connection = self.open.get_mut(name).ok_or_else(|| RedisError::Transport("no connection".into()))?;
        let keys: Vec<&[u8]> = match reach {
            Reach::Keys => connection.keys(args).await?,
            Reach::Channel => args.get(1).map(|c| vec![c.as_slice()]).unwrap_or_default(),
            Reach::Scan | Reach::Nothing => Vec::new(),
        };
        if let Some(outside) = keys.iter().find(|k| !under(k, &server.prefixes)) {
            let what = if reach == Reach::Channel { "channel" } else { "key" };
            return Err(RedisError::Denied(format!(
                "{what} `{}` is outside the grant's prefixes ({})",
                String::from_utf8_lossy(outside),
                server.prefixes.join(", ")
            )));
        }
        connection.send(args, limit).await
    }
}

impl Connection {
    /// Connects, signs in, selects the database and asks the server where the allowed commands' keys are.
    async fn open(server: &Server, password: Option<&str>, call: &CallContext) -> Result<Connection, RedisError> {
        let ips = call.resolver.connectable(&server.host).await.map_err(|e| match e {
            crate::capability::address::Unreachable::Denied(d) => RedisError::Denied(format!(
                "{d} (write the address itself in the server's `url:`, or allow its range in the step's `addresses:`)"
            )),
            crate::capability::address::Unreachable::Lookup(m) => RedisError::Transport(m),
        })?;
        let stream = TcpStream::connect((ips[0], server.port))
            .await
            .map_err(|e| RedisError::Transport(format!("cannot connect to {}: {e}", server.origin())))?;
        let mut connection = Connection { stream: BufReader::new(stream), specs: HashMap::new() };
        let limit = call.response_bytes;
        if let Some(password) = password {
            let mut auth = vec![b"AUTH".to_vec()];
            auth.extend(server.user.iter().map(|u| u.as_bytes().to_vec()));
            auth.push(password.as_bytes().to_vec());
            connection.ok(&auth, limit, "sign in").await?;
        }
        if server.db != 0 {
            connection.ok(&[b"SELECT".to_vec(), server.db.to_string().into_bytes()], limit, "select the database").await?;
        }
        let mut info = vec![b"COMMAND".to_vec(), b"INFO".to_vec()];
        info.extend(commands::ALLOWED.iter().map(|a| a.name.as_bytes().to_vec()));
        let (frame, _) = connection.send(&info, limit.max(1 << 20)).await?;
        let Frame::Array(entries) = frame else {
            return Err(RedisError::Transport("COMMAND INFO gave no list".into()));
        };
        for entry in entries {
            if let Some((name, spec)) = key_spec(&entry) {
                connection.specs.insert(name, spec);
            }
        }
        Ok(connection)
    }

    /// Sends a command whose only good answer is `+OK`.
    async fn ok(&mut self, args: &[Vec<u8>], limit: usize, what: &str) -> Result<(), RedisError> {
        match self.send(args, limit).await? {
            (Frame::Status(_), _) => Ok(()),
            (Frame::Error(e), _) => Err(RedisError::Denied(format!("the server refused to {what}: {e}"))),
            (other, _) => Err(RedisError::Transport(format!("unexpected answer to {what}: {other:?}"))),
        }
    }

    /// The keys of a command, by the server's key specification of it.
    async fn keys<'a>(&mut self, args: &'a [Vec<u8>]) -> Result<Vec<&'a [u8]>, RedisError> {
        let verb = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let Some(spec) = self.specs.get(&verb).copied() else {
            return Err(RedisError::Denied(format!("the server does not know {}", verb.to_ascii_uppercase())));
        };
        if !spec.movable {
            return Ok(spec.positions(args.len()).into_iter().filter_map(|i| args.get(i).map(Vec::as_slice)).collect());
        }
        let mut ask = vec![b"COMMAND".to_vec(), b"GETKEYS".to_vec()];
        ask.extend(args.iter().cloned());
        match self.send(&ask, 1 << 20).await? {
            (Frame::Array(keys), _) => {
                let named: Vec<Vec<u8>> =
                    keys.into_iter().filter_map(|k| if let Frame::Bulk(b) = k { Some(b) } else { None }).collect();
                Ok(args.iter().skip(1).filter(|a| named.contains(a)).map(Vec::as_slice).collect())
            }
            (Frame::Error(e), _) => Err(RedisError::Server(e)),
            _ => Ok(Vec::new()),
        }
    }

    /// Writes a command and reads its reply under `limit` bytes.
    async fn send(&mut self, args: &[Vec<u8>], limit: usize) -> Result<(Frame, usize), RedisError> {
        let io = |e: std::io::Error| RedisError::Transport(format!("the connection broke: {e}"));
        self.stream.get_mut().write_all(&resp::encode(args)).await.map_err(io)?;
        let mut budget = limit;
        let frame = resp::read(&mut self.stream, &mut budget).await.map_err(|e| match e {
            ReadError::TooLarge(_) => RedisError::Limit(format!("the reply is larger than the step's response limit of {limit} bytes")),
            ReadError::Protocol(m) | ReadError::Io(m) => RedisError::Transport(m),
        })?;
        Ok((frame, limit - budget))
    }
}

/// A `COMMAND INFO` entry's name and legacy key positions (`[name, arity, flags, first, last, step, …]`).
fn key_spec(entry: &Frame) -> Option<(String, KeySpec)> {
    let Frame::Array(fields) = entry else { return None };
    let text = |f: &Frame| match f {
        Frame::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Frame::Status(s) => Some(s.clone()),
        _ => None,
    };
    let int = |f: Option<&Frame>| match f {
        Some(Frame::Integer(i)) => Some(*i),
        _ => None,
    };
    let name = text(fields.first()?)?.to_ascii_lowercase();
    let movable = matches!(fields.get(2), Some(Frame::Array(flags)) if flags.iter().any(|f| text(f).as_deref() == Some("movablekeys")));
    Some((name, KeySpec { first: int(fields.get(3))?, last: int(fields.get(4))?, step: int(fields.get(5))?, movable }))
}

fn under(key: &[u8], prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| key.starts_with(p.as_bytes()))
}

/// Holds `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]` to the prefixes: a pattern must start with
/// one (prefixes hold no glob characters, so every match then does); without one, the only prefix is matched.
fn confine_scan(args: &mut Vec<Vec<u8>>, prefixes: &[String]) -> Result<(), RedisError> {
    let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"MATCH"));
    match at.and_then(|i| args.get(i + 1)) {
        Some(pattern) if under(pattern, prefixes) => Ok(()),
        Some(pattern) => Err(RedisError::Denied(format!(
            "SCAN MATCH `{}` does not start with one of the grant's prefixes ({})",
            String::from_utf8_lossy(pattern),
            prefixes.join(", ")
        ))),
        None if prefixes.len() == 1 => {
            args.extend([b"MATCH".to_vec(), format!("{}*", prefixes[0]).into_bytes()]);
            Ok(())
        }
        None => Err(RedisError::Denied(format!("SCAN needs MATCH with one of the grant's prefixes ({})", prefixes.join(", ")))),
    }
}

/// A reply as the plugin gets it: arrays flattened to bulk strings (a cursor's reply to the cursor
/// followed by its items); the keys a SCAN returns filtered by the prefixes once more.
fn reply(frame: Frame, reach: Reach, prefixes: &[String]) -> Result<Reply, RedisError> {
    fn flat(frame: Frame, out: &mut Vec<Option<Vec<u8>>>) {
        match frame {
            Frame::Nil => out.push(None),
            Frame::Status(s) | Frame::Error(s) => out.push(Some(s.into_bytes())),
            Frame::Integer(i) => out.push(Some(i.to_string().into_bytes())),
            Frame::Bulk(b) => out.push(Some(b)),
            Frame::Array(items) => items.into_iter().for_each(|f| flat(f, out)),
        }
    }
    Ok(match frame {
        Frame::Nil => Reply::Nil,
        Frame::Status(s) => Reply::Status(s),
        Frame::Error(e) => return Err(RedisError::Server(e)),
        Frame::Integer(i) => Reply::Integer(i),
        Frame::Bulk(b) => Reply::Bulk(b),
        Frame::Array(items) => {
            let mut out = Vec::new();
            items.into_iter().for_each(|f| flat(f, &mut out));
            if reach == Reach::Scan {
                let cursor = out.first().cloned().flatten();
                out = std::iter::once(cursor)
                    .chain(out.into_iter().skip(1).filter(|k| k.as_deref().is_some_and(|k| under(k, prefixes))))
                    .collect();
            }
            Reply::Array(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_is_confined_to_the_prefix() {
        let prefixes = vec!["the7space:".to_string()];
        let mut args = vec![b"SCAN".to_vec(), b"0".to_vec()];
        confine_scan(&mut args, &prefixes).unwrap();
        assert_eq!(args[2..], [b"MATCH".to_vec(), b"the7space:*".to_vec()]);
        let mut wide = vec![b"SCAN".to_vec(), b"0".to_vec(), b"match".to_vec(), b"*".to_vec()];
        assert!(matches!(confine_scan(&mut wide, &prefixes), Err(RedisError::Denied(_))));
        let two = vec!["a:".to_string(), "b:".to_string()];
        assert!(matches!(confine_scan(&mut vec![b"SCAN".to_vec(), b"0".to_vec()], &two), Err(RedisError::Denied(_))));
    }

    #[test]
    fn a_scan_reply_is_flattened_and_filtered_once_more() {
        let frame = Frame::Array(vec![
            Frame::Bulk(b"17".to_vec()),
            Frame::Array(vec![Frame::Bulk(b"the7space:a".to_vec()), Frame::Bulk(b"other:b".to_vec())]),
        ]);
        let prefixes = vec!["the7space:".to_string()];
        let Ok(Reply::Array(items)) = reply(frame, Reach::Scan, &prefixes) else { panic!("not an array") };
        assert_eq!(items, [Some(b"17".to_vec()), Some(b"the7space:a".to_vec())]);
    }
}
