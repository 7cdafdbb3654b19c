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
        _ => None,
    }
}

impl Grant {
    /// Parses `https://api.notion.com`, `https://*.example.com:8443`, `http://127.0.0.1:5055/api`.
    pub fn parse(text: &str) -> Result<Self, GrantError> {
        let err = |reason: &str| GrantError { grant: text.to_string(), reason: reason.to_string() };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| err("expected scheme://host[:port]"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default = default_port(&scheme).ok_or_else(|| err("scheme must be http or https"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') && h.ends_with(']') => {
                (h, p.parse::<u16>().map_err(|_| err("port must be a number"))?)
            }
            _ => (authority, default),
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
        Ok(Self { scheme, host, port, path_prefix: path.trim_end_matches('/').to_string() })
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

serde_as_text!(Grant, GrantError);

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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(Grant::parse("ftp://x").unwrap_err().reason.contains("http or https"));
        assert!(Grant::parse("127.0.0.1:80").unwrap_err().reason.contains("scheme://"));
        assert!(Grant::parse("http://u@h").unwrap_err().reason.contains("user info"));
    }
}
