//! What TLS and DNS grants are written in: the `host:port` targets a step may shake hands with,
//! the names it may look up, and the resolver its lookups ask. `*.` is allowed only as a whole
//! left-most label and matches names below it, not the name itself.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// A host as granted: a name (lower case, no trailing dot) with an optional `*.` prefix, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NamePattern(String);

impl NamePattern {
    /// Parses `the7space.example`, `*.the7space.example`, `127.0.0.1` or `[::1]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err("the name is empty".into());
        }
        if name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok() {
            return Ok(Self(name));
        }
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        if bare.contains('*') {
            return Err("a wildcard may only be a whole left-most label, as in *.example.com".into());
        }
        if bare.is_empty() || !bare.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err("a name is letters, digits, `-`, `.` and `_` (write an international name in punycode)".into());
        }
        if bare.split('.').any(str::is_empty) {
            return Err("a name has no empty label".into());
        }
        Ok(Self(name))
    }

    /// Whether `name` (any case, a trailing dot allowed) falls under the pattern.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(suffix) => {
                name.strip_suffix(suffix).and_then(|rest| rest.strip_suffix('.')).is_some_and(|l| !l.is_empty())
            }
            None => name == self.0,
        }
    }
}

serde_as_text!(NamePattern, String);

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A TLS target as granted: `host:port` (443 when the port is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TlsTarget {
    /// The host the certificate must be for.
    pub host: NamePattern,
    /// The port.
    pub port: u16,
}

impl TlsTarget {
    /// Parses `the7space.example:443`, `*.the7space.example`, `127.0.0.1:8443`, `[::1]:8443`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains("://") {
            return Err(format!("{text:?}: a TLS target is host:port, without a scheme"));
        }
        let (host, port) = match text.rsplit_once(':') {
            // An IPv6 address without a port has colons too: only `]:` or a single colon splits.
            Some((h, p)) if h.ends_with(']') || !h.contains(':') => {
                (h, p.parse::<u16>().map_err(|_| format!("{text:?}: the port must be a number"))?)
            }
            _ => (text, 443),
        };
        let host = NamePattern::parse(host).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(Self { host, port })
    }

    /// Whether the target `host:port` a plugin asked for falls under this grant.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host.matches(host)
    }
}

serde_as_text!(TlsTarget, String);

impl fmt::Display for TlsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Splits what a plugin asked to probe into host and port (443 when left out).
pub fn split_target(text: &str) -> Result<(String, u16), String> {
    let t = TlsTarget::parse(text)?;
    Ok((t.host.to_string().trim_matches(['[', ']']).to_string(), t.port))
}

/// The certificates of a PEM file, for a CA a grant trusts besides the public roots.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))
}

/// Parses a resolver address: `127.0.0.1:5353`, `10.0.0.2` (port 53), `[::1]:53`.
pub fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.trim_matches(['[', ']']).parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{text:?}: a resolver is an IP address with an optional port, e.g. 10.0.0.2:53"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_matches_names_below_it_not_itself_nor_lookalikes() {
        let p = NamePattern::parse("*.The7Space.example.").unwrap();
        assert!(p.matches("www.the7space.example") && p.matches("a.b.the7space.example."));
        assert!(!p.matches("the7space.example") && !p.matches("evilthe7space.example"));
        assert!(NamePattern::parse("the7space.example").unwrap().matches("THE7SPACE.example."));
        for bad in ["", "a.*.example", "exa mple.com", "a..b", "ünï.example"] {
            assert!(NamePattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_take_443_by_default_and_bracket_ipv6() {
        let t = TlsTarget::parse("the7space.example").unwrap();
        assert_eq!((t.to_string(), t.port), ("the7space.example:443".to_string(), 443));
        assert!(TlsTarget::parse("127.0.0.1:8443").unwrap().allows("127.0.0.1", 8443));
        assert!(!TlsTarget::parse("127.0.0.1:8443").unwrap().allows("127.0.0.1", 443));
        assert_eq!(split_target("[::1]:8443").unwrap(), ("::1".to_string(), 8443));
        assert!(TlsTarget::parse("https://the7space.example").unwrap_err().contains("without a scheme"));
        assert!(TlsTarget::parse("host:port").unwrap_err().contains("port must be a number"));
        assert_eq!(parse_resolver("10.0.0.2").unwrap().port(), 53);
        assert_eq!(parse_resolver("127.0.0.1:5353").unwrap().port(), 5353);
    }
}
