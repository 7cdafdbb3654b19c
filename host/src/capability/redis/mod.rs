//! Redis, as a capability unit: servers declared once (`redis: {cache: {url, password, prefixes,
//! readonly}}`), replaced by name per environment or entity, named by a step (`redis: [cache]`).
//! The host connects, signs in and selects the database; the plugin never sees the URL or the
//! password. Every key of every command must start with a granted prefix, found where the server's
//! own key specification puts it; only an allow-list of commands goes out ([`commands`]), replies
//! are capped at the step's response limit ([`resp`]) and every command is journaled.

mod commands;
mod resp;
mod session;

use super::unit::{
    CallContext, CallState, Capability, Declarations, GrantInUse, GrantLine, Grammar, Granted, SecretBinds,
    StepFields, UnitProblem, Written,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use wasmtime::component::{HasSelf, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "redis-unit",
        imports: { default: async },
    });
}

/// The Redis capability.
pub struct Redis;

/// A Redis server as the pipeline declares it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisDef {
    /// `redis://host[:port][/db]` (6379 and database 0 when left out), without credentials.
    pub url: String,
    /// Name of a declared secret bound to `redis://host:port`: the password the host signs in with.
    #[serde(default)]
    pub password: Option<String>,
    /// An ACL user to sign in as (Redis 6+); the default user when left out.
    #[serde(default)]
    pub user: Option<String>,
    /// Literal key prefixes: every key of every command, every `SCAN` and every `PUBLISH` channel must start with one.
    pub prefixes: Vec<String>,
    /// Only reading commands (default false).
    #[serde(default)]
    pub readonly: bool,
}

/// A step's Redis grant: the servers it names, as the plan keeps them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisGrant {
    /// By declared name.
    pub servers: BTreeMap<String, Server>,
}

/// One granted server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database number.
    pub db: u32,
    /// ACL user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The password's secret name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Key prefixes.
    pub prefixes: Vec<String>,
    /// Only reading commands.
    pub readonly: bool,
}

impl Server {
    /// `redis://host:port/db`.
    pub fn origin(&self) -> String {
        format!("redis://{}:{}/{}", self.host, self.port, self.db)
    }
}

/// Characters a prefix may not hold: `SCAN MATCH prefix*` must match only keys under it.
const GLOB: &[char] = &['*', '?', '[', ']', '\\'];

impl Redis {
    /// Checks one declaration, every problem at once.
    fn server(&self, declared: Written, secrets: &dyn SecretBinds) -> Result<Server, Vec<UnitProblem>> {
        let field = declared.field;
        let def: RedisDef = serde_json::from_value(declared.value.clone())
            .map_err(|e| vec![UnitProblem::new(field, format!("not a Redis server: {e}"))])?;
        let mut problems = Vec::new();
        let location = parse_url(&def.url).map_err(|m| problems.push(UnitProblem::new(format!("{field}.url"), m)));
        if def.prefixes.is_empty() {
            problems.push(UnitProblem::new(
                format!("{field}.prefixes"),
                "name at least one key prefix, e.g. `[\"the7space:\"]`: a grant never reaches a whole server",
            ));
        }
        for (i, prefix) in def.prefixes.iter().enumerate() {
            if prefix.is_empty() || prefix.contains(GLOB) {
                problems.push(UnitProblem::new(
                    format!("{field}.prefixes[{i}]"),
                    format!("`{prefix}` is not a literal prefix: it must be non-empty and hold none of * ? [ ] \\"),
                ));
            }
        }
        if let (Some(secret), Ok((host, port, _))) = (&def.password, &location) {
            let origin = format!("redis://{host}:{port}");
            match secrets.bound_to(secret) {
                None => problems.push(UnitProblem::new(
                    format!("{field}.password"),
                    format!("secret `{secret}` is not declared in `secrets:`"),
                )),
                Some(bound) if !bound.iter().any(|b| same_origin(b, &origin)) => problems.push(UnitProblem::new(
                    format!("{field}.password"),
                    format!("secret `{secret}` is not bound to {origin}: add it to the secret's `bind:`"),
                )),
                Some(_) => {}
            }
        }
        match location {
            Ok((host, port, db)) if problems.is_empty() => Ok(Server {
                host,
                port,
                db,
                user: def.user,
                password: def.password,
                prefixes: def.prefixes,
                readonly: def.readonly,
            }),
            _ => Err(problems),
        }
    }
}

/// `redis://host[:port][/db]` → host, port, database.
fn parse_url(text: &str) -> Result<(String, u16, u32), String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "redis" => {}
        "rediss" => return Err("TLS to Redis (`rediss://`) is not supported yet: reach the server over a private network or a TLS tunnel on this machine".into()),
        other => return Err(format!("`{other}://` is not Redis: write `redis://host[:port][/db]`")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URL: name a secret in `password:` (and `user:`)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL takes no query or fragment".into());
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("the URL names no host")?.to_string();
    let db = match url.path().trim_start_matches('/') {
        "" => 0,
        number => number.parse::<u32>().map_err(|_| format!("`/{number}` is not a database number"))?,
    };
    Ok((host, url.port().unwrap_or(6379), db))
}

/// Whether a secret's `bind:` entry names `origin` (`redis://host:port`), the port 6379 when left out.
fn same_origin(bind: &str, origin: &str) -> bool {
    match parse_url(bind.trim_end_matches('/')) {
        Ok((host, port, _)) => format!("redis://{host}:{port}") == origin,
        Err(_) => false,
    }
}

impl Capability for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn grammar(&self) -> Grammar {
        Grammar {
            step: serde_json::json!({
                "type": "array",
                "items": {"type": "string"},
                "description": "Names of the pipeline's Redis servers the step may use; the host signs in, the plugin never sees the URL or password. Example: `redis: [cache]`"
            }),
            declaration: Some(Grammar::schema_of::<RedisDef>()),
            also: vec![],
            about: "Redis servers steps may use, each with the key prefixes it grants",
            origins: vec![("redis", 6379)],
        }
    }

    fn grant(&self, step: &StepFields, declared: &Declarations, secrets: &dyn SecretBinds) -> Result<Granted, Vec<UnitProblem>> {
        let field = step.field("redis");
        let written = step.get("redis").map(|w| w.value.clone()).unwrap_or_default();
        let names: Vec<String> = serde_json::from_value(written)
            .map_err(|_| vec![UnitProblem::new(&field, "a list of declared Redis server names, e.g. `[cache]`")])?;
        let mut grant = RedisGrant::default();
        let mut problems = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match declared.get(name) {
                None => problems.push(UnitProblem::new(
                    format!("{field}[{i}]"),
                    format!("Redis server `{name}` is not declared in `redis:` (declared: {})", declared.names()),
                )),
                Some(written) => match self.server(written, secrets) {
                    Ok(server) => {
                        grant.servers.insert(name.clone(), server);
                    }
                    Err(found) => problems.extend(found),
                },
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let secrets = grant.servers.values().filter_map(|s| s.password.clone()).collect();
        let grant = serde_json::to_value(&grant).map_err(|e| vec![UnitProblem::new(&field, e.to_string())])?;
        Ok(Granted { grant, secrets })
    }

    fn widening(&self, declared: &Written, replacement: &Written) -> Vec<UnitProblem> {
        let parse = |w: &Written| serde_json::from_value::<RedisDef>(w.value.clone()).ok();
        let (Some(own), Some(new)) = (parse(declared), parse(replacement)) else { return Vec::new() };
        let mut problems: Vec<UnitProblem> = new
            .prefixes
            .iter()
            .enumerate()
            .filter(|(_, p)| !own.prefixes.iter().any(|o| p.starts_with(o.as_str())))
            .map(|(i, p)| {
                UnitProblem::new(
                    format!("{}.prefixes[{i}]", replacement.field),
                    format!(
                        "`{p}` reaches keys the pipeline's `{}` does not ({}): an environment or entity narrows a grant, never widens it",
                        declared.field,
                        own.prefixes.join(", ")
                    ),
                )
            })
            .collect();
        if own.readonly && !new.readonly {
            problems.push(UnitProblem::new(
                format!("{}.readonly", replacement.field),
                format!("the pipeline's `{}` is read-only: an environment or entity cannot make it writable", declared.field),
            ));
        }
        problems
    }

    fn describe(&self, grant: &Value) -> Vec<GrantLine> {
        let grant: RedisGrant = serde_json::from_value(grant.clone()).unwrap_or_default();
        grant
            .servers
            .iter()
            .map(|(name, s)| {
                let access = if s.readonly { "read-only" } else { "read-write" };
                let keys = format!("keys under {}", s.prefixes.join(", "));
                let user = s.user.as_ref().map(|u| format!(" as {u}")).unwrap_or_default();
                GrantLine {
                    review: format!("{name} = {}{user}, {keys}, {access}", s.origin()),
                    promotion: format!("{name} {keys}, {access}"),
                }
            })
            .collect()
    }

    fn link(&self, linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
        bindings::RedisUnit::add_to_linker::<CallState, HasSelf<session::RedisCall>>(linker, |s| s.slot())
    }

    fn prepare(&self, grant: Option<&GrantInUse>, call: &CallContext, state: &mut CallState) -> Result<(), String> {
        let (grant, passwords) = match grant {
            Some(g) => (
                serde_json::from_value(g.grant.clone()).map_err(|e| format!("the plan's Redis grant does not read: {e}"))?,
                g.secrets.clone(),
            ),
            None => (RedisGrant::default(), BTreeMap::new()),
        };
        state.insert(session::RedisCall { grant, passwords, call: call.clone(), open: Default::default(), sent: 0 });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared(value: Value) -> Declarations {
        Declarations { by_name: BTreeMap::from([("cache".to_string(), ("redis.cache".to_string(), value))]) }
    }

    fn naming(step: usize, names: Value) -> StepFields {
        StepFields::new(format!("steps[{step}]"), ".", BTreeMap::from([("redis".to_string(), names)]))
    }

    fn binds(origin: &str) -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([("CACHE_PASSWORD".to_string(), vec![origin.to_string()])])
    }

    #[test]
    fn a_grant_names_declared_servers_and_keeps_the_password_by_name() {
        let d = declared(json!({"url": "redis://127.0.0.1:18092/2", "password": "CACHE_PASSWORD", "prefixes": ["the7space:"]}));
        let step = json!(["cache"]);
        let g = Redis.grant(&naming(0, step), &d, &binds("redis://127.0.0.1:18092")).unwrap();
        assert_eq!(g.secrets, ["CACHE_PASSWORD"]);
        assert_eq!(g.grant["servers"]["cache"]["db"], 2);
        let lines = Redis.describe(&g.grant);
        assert_eq!(lines[0].review, "cache = redis://127.0.0.1:18092/2, keys under the7space:, read-write");
        assert_eq!(lines[0].promotion, "cache keys under the7space:, read-write");
    }

    #[test]
    fn an_overlay_narrows_prefixes_and_never_lifts_read_only() {
        let own = json!({"url": "redis://h", "prefixes": ["gallery:"], "readonly": true});
        let written = |v: &'static str, value: &Value| Redis.widening(&Written { field: "redis.cache", value: &own }, &Written { field: v, value });
        let narrower = json!({"url": "redis://prod", "prefixes": ["gallery:the_7_space:"], "readonly": true});
        assert!(written("environments.production.redis.cache", &narrower).is_empty());
        let wider = json!({"url": "redis://prod", "prefixes": ["gallery:", "sessions:"]});
        let found = written("environments.production.redis.cache", &wider);
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["environments.production.redis.cache.prefixes[1]", "environments.production.redis.cache.readonly"]);
        assert!(found[0].message.contains("never widens"), "{found:?}");
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let d = declared(json!({"url": "redis://u:p@h", "password": "CACHE_PASSWORD", "prefixes": ["a*", ""]}));
        let step = json!(["cache", "sessions"]);
        let found = Redis.grant(&naming(1, step), &d, &binds("redis://h:6379")).unwrap_err();
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["redis.cache.url", "redis.cache.prefixes[0]", "redis.cache.prefixes[1]", "steps[1].redis[1]"], "{found:?}");
        let d = declared(json!({"url": "redis://h", "password": "CACHE_PASSWORD", "prefixes": ["a:"]}));
        let found = Redis.grant(&naming(0, json!(["cache"])), &d, &binds("redis://other:6379")).unwrap_err();
        assert!(found[0].message.contains("not bound to redis://h:6379"), "{found:?}");
        let ok = Redis.grant(&naming(0, json!(["cache"])), &d, &binds("redis://h"));
        assert!(ok.is_ok(), "a bind without a port means 6379");
    }
}
