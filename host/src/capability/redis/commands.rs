//! Which commands a step may send, whether each writes, and where its keys are: the positions
//! come from the server's own key specifications (`COMMAND INFO`, and `COMMAND GETKEYS` for a
//! command whose keys move), never from a table of ours.

/// How the host finds what a command touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Keys, at the positions the server's key specification gives.
    Keys,
    /// `SCAN`: confined to the grant's prefixes through `MATCH`.
    Scan,
    /// `PUBLISH channel message`: the channel must lie under a prefix.
    Channel,
    /// Touches nothing (`PING`).
    Nothing,
}

/// A command a step may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Upper-case name.
    pub name: &'static str,
    /// Whether it may change data: refused under a read-only grant and in a pre-flight.
    pub writes: bool,
    /// What it touches.
    pub reach: Reach,
}

const fn r(name: &'static str) -> Allowed {
    Allowed { name, writes: false, reach: Reach::Keys }
}

const fn w(name: &'static str) -> Allowed {
    Allowed { name, writes: true, reach: Reach::Keys }
}

/// Strings, hashes, lists, sets and TTLs, by key; `SCAN`, `PUBLISH`, `PING`. Nothing that spans
/// databases or servers, runs code, blocks, or reaches every key.
pub const ALLOWED: &[Allowed] = &[
    // Strings.
    r("GET"), r("MGET"), r("STRLEN"), r("GETRANGE"), w("SET"), w("SETNX"), w("SETEX"), w("PSETEX"), w("MSET"),
    w("MSETNX"), w("GETSET"), w("GETDEL"), w("GETEX"), w("APPEND"), w("SETRANGE"), w("INCR"), w("INCRBY"),
    w("INCRBYFLOAT"), w("DECR"), w("DECRBY"),
    // Keys and TTLs.
    r("EXISTS"), r("TYPE"), r("TTL"), r("PTTL"), r("EXPIRETIME"), r("PEXPIRETIME"), r("TOUCH"), w("DEL"), w("UNLINK"),
    w("EXPIRE"), w("PEXPIRE"), w("EXPIREAT"), w("PEXPIREAT"), w("PERSIST"), w("RENAME"), w("RENAMENX"),
    // Hashes.
    r("HGET"), r("HMGET"), r("HGETALL"), r("HKEYS"), r("HVALS"), r("HLEN"), r("HEXISTS"), r("HSTRLEN"), r("HSCAN"),
    w("HSET"), w("HSETNX"), w("HMSET"), w("HDEL"), w("HINCRBY"), w("HINCRBYFLOAT"),
    // Lists.
    r("LRANGE"), r("LLEN"), r("LINDEX"), r("LPOS"), w("LPUSH"), w("RPUSH"), w("LPUSHX"), w("RPUSHX"), w("LPOP"),
    w("RPOP"), w("LSET"), w("LREM"), w("LTRIM"), w("LINSERT"), w("LMOVE"), w("RPOPLPUSH"),
    // Sets.
    r("SMEMBERS"), r("SISMEMBER"), r("SMISMEMBER"), r("SCARD"), r("SRANDMEMBER"), r("SINTER"), r("SUNION"), r("SDIFF"),
    r("SSCAN"), w("SADD"), w("SREM"), w("SPOP"), w("SMOVE"), w("SINTERSTORE"), w("SUNIONSTORE"), w("SDIFFSTORE"),
    Allowed { name: "SCAN", writes: false, reach: Reach::Scan },
    Allowed { name: "PUBLISH", writes: true, reach: Reach::Channel },
    Allowed { name: "PING", writes: false, reach: Reach::Nothing },
];

/// The allowed command called `name` (any case).
pub fn allowed(name: &str) -> Option<Allowed> {
    ALLOWED.iter().copied().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// Why a command is refused, for the commands a person might reach for.
pub fn refusal(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    let why = match upper.as_str() {
        "KEYS" => "it walks every key of the server: use SCAN, which the host confines to the grant's prefixes",
        "FLUSHDB" | "FLUSHALL" => "it deletes every key, granted or not: SCAN the prefix and DEL what it finds",
        "SELECT" | "SWAPDB" | "MOVE" | "COPY" | "MIGRATE" => "it reaches past the granted database",
        "AUTH" | "HELLO" => "the host signs in: the plugin never holds the password",
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" | "FUNCTION" | "SCRIPT" => {
            "a script's keys are whatever it computes, past any grant"
        }
        "CONFIG" | "DEBUG" | "MODULE" | "ACL" | "SHUTDOWN" | "REPLICAOF" | "SLAVEOF" | "CLIENT" | "MONITOR" => {
            "it administers the server"
        }
        "SORT" | "SORT_RO" => "its BY and GET patterns read keys outside its arguments",
        "SUBSCRIBE" | "PSUBSCRIBE" | "BLPOP" | "BRPOP" | "BLMOVE" | "BZPOPMIN" | "BZPOPMAX" | "WAIT" => {
            "it blocks the connection"
        }
        _ => "it is not among the commands a step may send",
    };
    format!("command {upper} is not allowed: {why} (allowed: strings, hashes, lists, sets, TTLs, SCAN, PUBLISH, PING)")
}

/// A command's key positions as the server's `COMMAND INFO` gives them (first key, last key, step;
/// `movable` when they depend on the arguments and `COMMAND GETKEYS` must be asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// First key's index in the arguments (the command is 0); 0 when it takes none.
    pub first: i64,
    /// Last key's index; negative counts from the end (-1: the last argument).
    pub last: i64,
    /// Distance between keys (2 for `MSET key value key value`).
    pub step: i64,
    /// The keys' positions depend on the arguments.
    pub movable: bool,
}

impl KeySpec {
    /// The indices of the keys in a command of `argc` arguments.
    pub fn positions(&self, argc: usize) -> Vec<usize> {
        if self.first <= 0 || self.step <= 0 {
            return Vec::new();
        }
        let last = if self.last < 0 { argc as i64 + self.last } else { self.last.min(argc as i64 - 1) };
        (self.first..=last).step_by(self.step as usize).map(|i| i as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_positions_follow_the_spec() {
        let mset = KeySpec { first: 1, last: -1, step: 2, movable: false };
        assert_eq!(mset.positions(5), [1, 3]);
        let get = KeySpec { first: 1, last: 1, step: 1, movable: false };
        assert_eq!(get.positions(2), [1]);
        let ping = KeySpec { first: 0, last: 0, step: 0, movable: false };
        assert!(ping.positions(1).is_empty());
    }

    #[test]
    fn the_dangerous_commands_are_refused_by_name() {
        for name in ["keys", "FLUSHALL", "flushdb", "CONFIG", "EVAL", "EVALSHA", "FUNCTION", "MODULE", "DEBUG", "MIGRATE", "SELECT", "SWAPDB", "HELLO", "AUTH", "SORT", "COPY"] {
            assert!(allowed(name).is_none(), "{name}");
            assert!(refusal(name).contains("is not allowed"), "{name}");
        }
        assert_eq!(allowed("get").map(|a| a.writes), Some(false));
        assert_eq!(allowed("DEL").map(|a| a.writes), Some(true));
    }
}
