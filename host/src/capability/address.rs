//! Which IP addresses a step may connect to. Loopback, private, link-local
//! (cloud metadata at 169.254.169.254), shared, unspecified, multicast and
//! their IPv6 and IPv4-mapped forms are refused unless granted: by naming the
//! address itself in `network:`, or a range in `addresses:`. The check runs on
//! the addresses a name resolves to, which are the only ones the host then
//! connects to, so a granted name that resolves somewhere internal is refused.

use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why an address is not reachable without an explicit grant, or `None` when it is public.
pub fn restricted(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => {
            // ::ffff:a.b.c.d, ::a.b.c.d and the NAT64 prefix 64:ff9b::/96 all reach IPv4.
            if let Some(v4) = embedded_v4(v6) {
                return restricted_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xffc0 == 0xfec0 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = v6.segments();
    let tail = || Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
    if seg[..6] == [0, 0, 0, 0, 0, 0] && !(seg[6] == 0 && seg[7] <= 1) {
        return Some(tail());
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    None
}

/// An address a resolved name may not be connected to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} resolved to {ip}, a {reason} address: refused")]
pub struct AddressDenied {
    /// The name that was resolved.
    pub host: String,
    /// The address it resolved to.
    pub ip: IpAddr,
    /// Which restricted range it is in.
    pub reason: &'static str,
}

impl AddressDenied {
    /// The refusal with the way out for a request (HTTP, a TLS probe): name the address in `network:`.
    pub fn for_request(&self) -> String {
        format!("{self} (grant the address itself in `network:`, or its range in `addresses:`)")
    }

    /// The refusal with the way out for a database grant: its URL names the address itself.
    pub fn for_database(&self) -> String {
        format!("{self} (write the address itself in the database's `url:`, or allow its range in `addresses:`)")
    }
}

/// Why a host cannot be connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    /// Every address it resolved to is restricted and not granted.
    Denied(AddressDenied),
    /// The name did not resolve.
    Lookup(String),
}

/// Resolves names for outgoing requests and refuses restricted addresses.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    overrides: Arc<BTreeMap<String, Vec<IpAddr>>>,
    allowed: Arc<Vec<IpNet>>,
}

impl Resolver {
    /// A resolver that answers `overrides` itself (as curl's `--resolve` does) and asks the system for the rest.
    pub fn new(overrides: BTreeMap<String, Vec<IpAddr>>) -> Self {
        let overrides = overrides.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        Self { overrides: Arc::new(overrides), allowed: Arc::default() }
    }

    /// The same resolver, also accepting restricted addresses inside `ranges`.
    pub fn allowing(&self, ranges: Vec<IpNet>) -> Self {
        Self { overrides: self.overrides.clone(), allowed: Arc::new(ranges) }
    }

    /// The addresses `--resolve` gave for `host`, if any.
    pub fn overridden(&self, host: &str) -> Option<Vec<IpAddr>> {
        self.overrides.get(&host.to_ascii_lowercase()).cloned()
    }

    /// The addresses to connect to for a granted host: a literal as written (the grant named that
    /// address), a name through `--resolve` or the system's resolver, checked by [`Resolver::filter`].
    pub async fn connectable(&self, host: &str) -> Result<Vec<IpAddr>, Unreachable> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let answers = match self.overridden(host) {
            Some(addrs) => addrs,
            None => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| Unreachable::Lookup(format!("cannot resolve {host}: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        self.filter(host, answers).map_err(Unreachable::Denied)
    }

    /// Whether the step may reach `ip` as an address of `host`: a restricted one only inside an allowed range.
    pub fn admits(&self, host: &str, ip: IpAddr) -> Result<(), AddressDenied> {
        match restricted(ip) {
            Some(reason) if !self.allowed.iter().any(|net| net.contains(&ip)) => {
                Err(AddressDenied { host: host.to_string(), ip, reason })
            }
            _ => Ok(()),
        }
    }

    /// Keeps the addresses the step may reach; fails when none is left.
    pub fn filter(&self, host: &str, addrs: Vec<IpAddr>) -> Result<Vec<IpAddr>, AddressDenied> {
        let mut refused = None;
        let mut kept = Vec::new();
        for ip in addrs {
            match self.admits(host, ip) {
                Err(denied) => {
                    refused.get_or_insert(denied);
                }
                Ok(()) => kept.push(ip),
            }
        }
        match (kept.is_empty(), refused) {
            (true, Some(denied)) => Err(denied),
            _ => Ok(kept),
        }
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let addrs = match this.overrides.get(&host) {
                Some(addrs) => addrs.clone(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect(),
            };
            let kept = this.filter(&host, addrs)?;
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Parses `NAME=IP[,IP...]` as given to `--resolve`.
pub fn parse_override(text: &str) -> Result<(String, Vec<IpAddr>), String> {
    let (name, ips) = text.split_once('=').ok_or_else(|| format!("--resolve {text:?}: expected NAME=IP"))?;
    let ips = ips
        .split(',')
        .map(|ip| ip.trim().parse::<IpAddr>().map_err(|_| format!("--resolve {text:?}: {ip:?} is not an IP address")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), ips))
}

/// Parses an address range such as `10.0.0.0/8`, `fd00::/8` or a single address.
pub fn parse_range(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid address range {text:?}: expected e.g. 10.0.0.0/8 or fd00::/8"))
}

/// Whether a URL host (`localhost`, `127.0.0.1`, `[::1]`) is this machine: the only place plain HTTP is used.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn restricted_ranges_are_named() {
        assert_eq!(restricted(ip("127.0.0.1")), Some("loopback"));
        assert_eq!(restricted(ip("10.1.2.3")), Some("private"));
        assert_eq!(restricted(ip("172.16.0.1")), Some("private"));
        assert_eq!(restricted(ip("192.168.1.1")), Some("private"));
        assert_eq!(restricted(ip("169.254.169.254")), Some("link-local (cloud metadata)"));
        assert_eq!(restricted(ip("0.0.0.0")), Some("unspecified"));
        assert_eq!(restricted(ip("100.64.0.1")), Some("shared (carrier-grade NAT)"));
        assert_eq!(restricted(ip("::1")), Some("loopback"));
        assert_eq!(restricted(ip("fd00::1")), Some("private (unique local)"));
        assert_eq!(restricted(ip("fe80::1")), Some("link-local"));
        assert_eq!(restricted(ip("::ffff:127.0.0.1")), Some("loopback"));
        assert_eq!(restricted(ip("::ffff:169.254.169.254")), Some("link-local (cloud metadata)"));
        assert_eq!(restricted(ip("64:ff9b::a9fe:a9fe")), Some("link-local (cloud metadata)"));
        assert_eq!(restricted(ip("93.184.216.34")), None);
        assert_eq!(restricted(ip("2606:4700::1111")), None);
        assert_eq!(restricted(ip("100.128.0.1")), None);
    }

    #[test]
    fn filter_keeps_public_and_allowed_addresses() {
        let r = Resolver::default();
        assert_eq!(r.filter("a.test", vec![ip("127.0.0.1"), ip("93.184.216.34")]).unwrap(), vec![ip("93.184.216.34")]);
        let err = r.filter("a.test", vec![ip("127.0.0.1")]).unwrap_err();
        assert_eq!(err.reason, "loopback");
        assert!(err.to_string().starts_with("a.test resolved to 127.0.0.1, a loopback address: refused"));
        let r = r.allowing(vec![parse_range("127.0.0.0/8").unwrap()]);
        assert_eq!(r.filter("a.test", vec![ip("127.0.0.1")]).unwrap(), vec![ip("127.0.0.1")]);
        assert!(r.filter("a.test", vec![ip("10.0.0.1")]).is_err());
    }

    #[test]
    fn overrides_and_ranges_parse() {
        assert_eq!(parse_override("db.test=127.0.0.1,::1").unwrap().1, vec![ip("127.0.0.1"), ip("::1")]);
        assert!(parse_override("db.test").unwrap_err().contains("NAME=IP"));
        assert!(parse_override("db.test=nope").unwrap_err().contains("not an IP"));
        assert_eq!(parse_range("10.0.0.5").unwrap().to_string(), "10.0.0.5/32");
        assert!(parse_range("10.0.0.0/33").is_err());
    }
}
