//! Network grants: `scheme://host[:port][/path-prefix]`, with `*.` allowed
//! only as a whole left-most label. Scheme, host and port must all match.

use std::fmt;
use url::Url;

/// One granted origin, optionally narrowed to a path prefix; serialised as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Grant {
    scheme: String,
    host: String,
    port: u16,
    path_prefix: String,
}

/// A grant that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network grant {grant:?}: {reason}")]
pub struct GrantError {
    /// The text as written.
    pub grant: String,
    /// What is wrong with it.
    pub reason: String,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        // A database's origin, for binding its password secret (`postgres://db.internal:5432`).
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        _ => None,
    }
}

/// One spelling per scheme: `postgresql://` is `postgres://`, `mariadb://` is `mysql://`.
fn canonical_scheme(scheme: &str) -> String {
    match scheme.to_ascii_lowercase().as_str() {
        "postgresql" => "postgres".into(),
        "mariadb" => "mysql".into(),
        other => other.into(),
    }
}

impl Grant {
    /// Parses `https://api.notion.com`, `https://*.example.com:8443`, `http://127.0.0.1:5055/api`.
    pub fn parse(text: &str) -> Result<Self, GrantError> {
        Self::parse_with(text, &[])
    }

    /// [`Grant::parse`], also taking the schemes `units` names with their default ports: the
    /// origins registered capabilities bind secrets to (`redis://cache.internal:6379`).
    pub fn parse_with(text: &str, units: &[(&str, u16)]) -> Result<Self, GrantError> {
        let err = |reason: &str| GrantError { grant: text.to_string(), reason: reason.to_string() };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| err("expected scheme://host[:port]"))?;
        let scheme = canonical_scheme(scheme);
        let unit = units.iter().find(|(s, _)| *s == scheme).map(|(_, port)| *port);
        let default = default_port(&scheme).or(unit).ok_or_else(|| {
            let mut known = vec!["http", "https", "postgres", "mysql"];
            known.extend(units.iter().map(|(s, _)| *s));
            err(&format!("scheme must be one of {}", known.join(", ")))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if text.contains(|c: char| c.is_control() || c.is_whitespace()) {
            return Err(err("a grant has no spaces or control characters"));
        }
        let port = |p: &str| p.parse::<u16>().map_err(|_| err("port must be a number"));
        // An IPv6 address is bracketed and full of colons: the port, if any, follows the `]`.
        let (host, port) = match authority.strip_prefix('[').map(|r| r.split_once(']')) {
            Some(None) => return Err(err("an IPv6 address needs its closing `]`")),
            Some(Some((inside, ""))) => (format!("[{inside}]"), default),
            Some(Some((inside, after))) => {
                let p = after.strip_prefix(':').ok_or_else(|| err("expected `:port` after `]`"))?;
                (format!("[{inside}]"), port(p)?)
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), port(p)?),
                None => (authority.to_string(), default),
            },
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(err("host is empty"));
        }
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.contains('*') {
            return Err(err("a wildcard may only be a whole left-most label, as in https://*.example.com"));
        }
        if authority.contains('@') {
            return Err(err("user info is not allowed"));
        }
        match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inside) if inside.parse::<std::net::Ipv6Addr>().is_err() => {
                return Err(err("not an IPv6 address between `[` and `]`"))
            }
            None if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*')) => {
                return Err(err(
                    "a host is letters, digits, `-`, `.` and `_` (write an international name in punycode)",
                ))
            }
            _ => {}
        }
        Ok(Self { scheme, host, port, path_prefix: path.trim_end_matches('/').to_string() })
    }

    /// Whether the grant is for HTTP (`http` or `https`), not a database's origin.
    pub fn is_http(&self) -> bool {
        matches!(self.scheme.as_str(), "http" | "https")
    }

    /// Whether a URL falls under this grant.
    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty()),
            None => host == self.host,
        };
        // Under a path prefix, an encoded `/` or `\` is refused: a server that decodes it before resolving
        // `..` would read `/api/..%2Fadmin` as `/admin`.
        let path = url.path();
        let lower = path.to_ascii_lowercase();
        let path_ok = self.path_prefix.is_empty()
            || (!lower.contains("%2f") && !lower.contains("%5c"))
                && (path == self.path_prefix || path.starts_with(&format!("{}/", self.path_prefix)));
        url.scheme() == self.scheme && host_ok && url.port_or_known_default() == Some(self.port) && path_ok
    }
}

impl TryFrom<String> for Grant {
    type Error = GrantError;

    /// A grant as a plan records it: checked when planned, so a registered capability's scheme
    /// (written with its port, which has no default here) reads back without the registry.
    fn try_from(text: String) -> Result<Self, GrantError> {
        let scheme = text.split_once("://").map(|(s, _)| canonical_scheme(s)).unwrap_or_default();
        match default_port(&scheme) {
            Some(_) => Self::parse(&text),
            None => Self::parse_with(&text, &[(scheme.as_str(), 0)]),
        }
    }
}

impl From<Grant> for String {
    fn from(value: Grant) -> String {
        value.to_string()
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if default_port(&self.scheme) != Some(self.port) {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path_prefix)
    }
}

/// The origin of a URL as `scheme://host[:port]`, for messages.
pub fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The set of origins a step may reach; empty means no network at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkPolicy {
    /// Granted origins.
    #[serde(rename = "origins")]
    grants: Vec<Grant>,
    /// Restricted ranges granted names may resolve into.
    #[serde(default)]
    addresses: Vec<ipnet::IpNet>,
}

impl NetworkPolicy {
    /// A policy from grants.
    pub fn new(grants: Vec<Grant>) -> Self {
        Self { grants, addresses: Vec::new() }
    }

    /// Also lets granted names resolve into these restricted ranges (private, loopback, ...).
    pub fn with_addresses(mut self, ranges: Vec<ipnet::IpNet>) -> Self {
        self.addresses = ranges;
        self
    }

    /// Restricted ranges granted names may resolve into.
    pub fn addresses(&self) -> &[ipnet::IpNet] {
        &self.addresses
    }

    /// Parses each grant text.
    pub fn parse<S: AsRef<str>>(grants: &[S]) -> Result<Self, GrantError> {
        grants.iter().map(|g| Grant::parse(g.as_ref())).collect::<Result<_, _>>().map(Self::new)
    }

    /// The grants.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Whether the URL is covered by some grant.
    pub fn allows(&self, url: &Url) -> bool {
        self.grants.iter().any(|g| g.allows(url))
    }
}

/// Whether a request may change something: any method but GET, HEAD and OPTIONS, unless it names an
/// API action that by its provider's convention only reads (AWS APIs read through `POST` with
/// `Describe…`, `Get…`, `List…`, `BatchGet…`).
pub fn may_change(method: &str, action: Option<&str>) -> bool {
    const READS: [&str; 4] = ["Describe", "Get", "List", "BatchGet"];
    let read_action = |a: &str| {
        READS.iter().any(|r| a.strip_prefix(r).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())))
    };
    !matches!(method, "GET" | "HEAD" | "OPTIONS") && !action.is_some_and(read_action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_scheme_is_bound_where_registered_and_reads_back_from_a_plan() {
        assert!(Grant::parse("redis://cache.internal").is_err());
        let g = Grant::parse_with("redis://cache.internal", &[("redis", 6379)]).unwrap();
        assert!(!g.is_http());
        let text = serde_json::to_string(&g).unwrap();
        assert_eq!(text, "\"redis://cache.internal:6379\"");
        assert_eq!(serde_json::from_str::<Grant>(&text).unwrap(), g);
    }

    #[test]
    fn a_path_prefix_holds_against_dot_segments_and_encoded_separators() {
        let grant = Grant::parse("http://127.0.0.1:5055/api").unwrap();
        let allows = |u: &str| grant.allows(&Url::parse(u).unwrap());
        assert!(allows("http://127.0.0.1:5055/api") && allows("http://127.0.0.1:5055/api/v1/x"));
        for outside in [
            "http://127.0.0.1:5055/apix",
            "http://127.0.0.1:5055/api/../admin",
            "http://127.0.0.1:5055/api/%2e%2e/admin",
            "http://127.0.0.1:5055/api/..%2fadmin",
            "http://127.0.0.1:5055/api/..%2Fadmin",
            "http://127.0.0.1:5055/api/..%5cadmin",
            "http://127.0.0.1:5055/api\\..\\admin",
            "http://127.0.0.1:5055/API/x",
        ] {
            assert!(!allows(outside), "{outside} is outside /api");
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn scheme_host_and_port_must_all_match() {
        let g = Grant::parse("http://127.0.0.1:5055").unwrap();
        assert!(g.allows(&url("http://127.0.0.1:5055/health")));
        assert!(!g.allows(&url("https://127.0.0.1:5055/health")));
        assert!(!g.allows(&url("http://127.0.0.1:5056/health")));
        assert!(!g.allows(&url("http://localhost:5055/health")));
    }

    #[test]
    fn default_ports_are_implied() {
        let g = Grant::parse("https://api.notion.com").unwrap();
        assert!(g.allows(&url("https://api.notion.com:443/v1/users")));
        assert!(!g.allows(&url("https://api.notion.com:8443/v1/users")));
        assert_eq!(g.to_string(), "https://api.notion.com");
    }

    #[test]
    fn wildcard_is_one_or_more_whole_labels() {
        let g = Grant::parse("https://*.example.com").unwrap();
        assert!(g.allows(&url("https://a.example.com/")));
        assert!(g.allows(&url("https://a.b.example.com/")));
        assert!(!g.allows(&url("https://example.com/")));
        assert!(!g.allows(&url("https://evilexample.com/")));
        assert!(Grant::parse("https://a*.example.com").is_err());
        assert!(Grant::parse("https://api.*.com").is_err());
    }

    #[test]
    fn path_prefix_matches_whole_segments() {
        let g = Grant::parse("http://127.0.0.1:80/api").unwrap();
        assert!(g.allows(&url("http://127.0.0.1/api/x")));
        assert!(g.allows(&url("http://127.0.0.1/api")));
        assert!(!g.allows(&url("http://127.0.0.1/apix")));
    }

    #[test]
    fn bad_grants_say_why() {
        assert!(Grant::parse("ftp://x").unwrap_err().reason.contains("one of http, https, postgres, mysql"));
        assert!(Grant::parse("127.0.0.1:80").unwrap_err().reason.contains("scheme://"));
        assert!(Grant::parse("http://u@h").unwrap_err().reason.contains("user info"));
        assert!(Grant::parse("http://h/a b").unwrap_err().reason.contains("no spaces"));
        assert!(Grant::parse("http://[::1").unwrap_err().reason.contains("closing `]`"));
        // Found by the `origin` fuzz target: `https://*.example.com::443` kept a `:` in the host.
        assert!(Grant::parse("https://*.example.com::443").unwrap_err().reason.contains("a host is"));
        assert!(Grant::parse("http://[zz]").unwrap_err().reason.contains("IPv6"));
    }

    #[test]
    fn an_ipv6_grant_without_a_port_parses_and_reads_back() {
        // Found by the `origin` fuzz target: `http://[::1]:80/x` showed as `http://[::1]/x`, which did not parse.
        for text in ["http://[::1]", "http://[::1]:80/x", "https://[2001:db8::1]:8443/api"] {
            let g = Grant::parse(text).unwrap();
            assert_eq!(Grant::parse(&g.to_string()), Ok(g.clone()), "{text}");
        }
        assert!(Grant::parse("http://[::1]").unwrap().allows(&url("http://[::1]/health")));
        assert!(!Grant::parse("http://[::1]").unwrap().allows(&url("http://[::1]:8080/health")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn label() -> impl Strategy<Value = String> {
            "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?"
        }

        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::collection::vec(label(), 1..4).prop_map(|l| l.join(".")),
                any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
                any::<u128>().prop_map(|a| format!("[{}]", std::net::Ipv6Addr::from(a))),
            ]
        }

        /// Path segments with the spellings that try to leave a prefix.
        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => label(),
                1 => Just("..".to_string()),
                1 => Just(".".to_string()),
                1 => Just("%2e%2e".to_string()),
                1 => Just("..%2F".to_string()),
                1 => Just("%5c..".to_string()),
                1 => Just("a\\..".to_string()),
                1 => Just("".to_string()),
            ]
        }

        fn grant() -> impl Strategy<Value = String> {
            (
                prop_oneof![Just("http"), Just("https"), Just("HTTPS")],
                any::<bool>(),
                host(),
                prop::option::of(1u16..),
                prop::collection::vec(label(), 0..3),
            )
                .prop_map(|(scheme, wild, host, port, path)| {
                    let host = if wild && !host.starts_with('[') { format!("*.{host}") } else { host };
                    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                    let path: String = path.iter().map(|s| format!("/{s}")).collect();
                    format!("{scheme}://{host}{port}{path}")
                })
        }

        /// A URL near the grant: its host or a subdomain or another, its port or another, its
        /// prefix followed by segments that may climb out.
        fn near(grant: &str) -> impl Strategy<Value = String> {
            let grant = grant.to_string();
            (
                prop_oneof![Just("http"), Just("https")],
                0..3u8,
                prop::option::of(prop_oneof![Just(80u16), Just(443u16), 1u16..]),
                prop::collection::vec(segment(), 0..5),
                any::<bool>(),
            )
                .prop_map(move |(scheme, host_choice, port, segments, keep_prefix)| {
                    let g = Grant::parse(&grant).unwrap();
                    let bare = g.host.trim_start_matches("*.");
                    let host = match host_choice {
                        0 => bare.to_string(),
                        1 if !bare.starts_with('[') => format!("sub.{}", bare.to_ascii_uppercase()),
                        _ => "other.example".to_string(),
                    };
                    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                    let prefix = if keep_prefix { g.path_prefix.clone() } else { String::new() };
                    let rest: String = segments.iter().map(|s| format!("/{s}")).collect();
                    format!("{scheme}://{host}{port}{prefix}{rest}")
                })
        }

        proptest! {
            #[test]
            fn a_grant_reads_back_as_it_shows(text in grant()) {
                let g = Grant::parse(&text).unwrap();
                prop_assert_eq!(Grant::parse(&g.to_string()), Ok(g));
            }

            #[test]
            fn an_allowed_url_has_the_grants_origin_and_stays_under_its_prefix(
                (text, candidate) in grant().prop_flat_map(|g| (Just(g.clone()), near(&g)))
            ) {
                let g = Grant::parse(&text).unwrap();
                let Ok(url) = Url::parse(&candidate) else { return Ok(()) };
                if g.allows(&url) {
                    prop_assert_eq!(url.scheme(), g.scheme.as_str());
                    prop_assert_eq!(url.port_or_known_default(), Some(g.port));
                    let host = url.host_str().unwrap().to_ascii_lowercase();
                    match g.host.strip_prefix("*.") {
                        Some(suffix) => {
                            let dotted = format!(".{suffix}");
                            prop_assert!(host.ends_with(&dotted));
                        }
                        None => prop_assert_eq!(&host, &g.host),
                    }
                    let path = url.path();
                    if !g.path_prefix.is_empty() {
                        let under = format!("{}/", g.path_prefix);
                        prop_assert!(path == g.path_prefix || path.starts_with(&under));
                        prop_assert!(!path.to_ascii_lowercase().contains("%2f") && !path.to_ascii_lowercase().contains("%5c"));
                        prop_assert!(!path.split('/').any(|s| s == ".." || s == "."));
                    }
                }
            }

            #[test]
            fn a_path_of_plain_segments_under_the_prefix_is_allowed_and_a_sibling_is_not(
                prefix in prop::collection::vec(label(), 1..3),
                rest in prop::collection::vec(label(), 0..4),
                sibling in label(),
            ) {
                let prefix: String = prefix.iter().map(|s| format!("/{s}")).collect();
                let g = Grant::parse(&format!("https://api.example.com{prefix}")).unwrap();
                let rest: String = rest.iter().map(|s| format!("/{s}")).collect();
                let inside = format!("https://api.example.com{prefix}{rest}");
                prop_assert!(g.allows(&url(&inside)));
                let beside = format!("https://api.example.com{prefix}{sibling}");
                prop_assert!(!g.allows(&url(&beside)), "{} is beside {}", beside, prefix);
                let last = prefix.rsplit('/').next().unwrap_or_default();
                let climbed = format!("https://api.example.com{prefix}/../{sibling}");
                prop_assert!(sibling == last || !g.allows(&url(&climbed)), "{} left {}", climbed, prefix);
            }
        }
    }
}

