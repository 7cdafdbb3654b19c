//! The `dns` interface: lookups of the names a step was granted under `dns:`, asked of the step's
//! granted resolver or the system's, one query each with no cache (a propagation check must see
//! the resolver's answer now, not the host's memory of it) and no `/etc/hosts`. Addresses in an
//! answer pass the same rules as HTTP's: a restricted one (loopback, private, link-local, ...)
//! refuses the whole answer unless the step's `addresses:` grant it, so a lookup cannot be used to
//! map the inside of the network, nor a rebinding name to smuggle an internal address to a plugin.

use super::bindings::gantry::step::dns as wit;
use super::DnsGrant;
use crate::capability::unit::CallContext;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use wit::{Answer, LookupError};

/// Most answers one lookup returns to the plugin.
const MAX_ANSWERS: usize = 100;

fn record_type(kind: wit::RecordType) -> RecordType {
    match kind {
        wit::RecordType::A => RecordType::A,
        wit::RecordType::Aaaa => RecordType::AAAA,
        wit::RecordType::Cname => RecordType::CNAME,
        wit::RecordType::Txt => RecordType::TXT,
        wit::RecordType::Mx => RecordType::MX,
        wit::RecordType::Caa => RecordType::CAA,
    }
}

/// A resolver asking `server` (the system's when `None`), remembering nothing between lookups.
fn resolver(server: Option<SocketAddr>, timeout: Duration) -> Result<TokioResolver, LookupError> {
    let failed =
        |e: hickory_resolver::net::NetError| LookupError::Transport(format!("cannot set up the resolver: {e}"));
    let mut builder = match server {
        Some(addr) => {
            let connection = |mut c: ConnectionConfig| {
                c.port = addr.port();
                c
            };
            let server = NameServerConfig::new(
                addr.ip(),
                true,
                vec![connection(ConnectionConfig::udp()), connection(ConnectionConfig::tcp())],
            );
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(failed)?,
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = timeout;
    options.attempts = 1;
    options.ndots = 0;
    builder.build().map_err(failed)
}

/// A record's data as the contract's text.
fn value(data: &RData) -> Option<String> {
    let name = |n: &hickory_resolver::proto::rr::Name| n.to_ascii().trim_end_matches('.').to_string();
    Some(match data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::CNAME(c) => name(&c.0),
        RData::TXT(t) => t.to_string(),
        RData::MX(mx) => format!("{} {}", mx.preference, name(&mx.exchange)),
        RData::CAA(caa) => caa.to_string(),
        _ => return None,
    })
}

/// The address a record carries, for the address rules.
fn address(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// A lookup's result in one line, for the journal.
fn summary(name: &str, kind: wit::RecordType, result: &Result<Vec<Answer>, LookupError>) -> String {
    let kind = format!("{:?}", record_type(kind));
    match result {
        Ok(answers) if answers.is_empty() => format!("dns {name} {kind}: no record"),
        Ok(answers) => {
            let values: Vec<&str> = answers.iter().map(|a| a.value.as_str()).collect();
            format!("dns {name} {kind}: {}", values.join(", "))
        }
        Err(LookupError::Denied(m)) => format!("dns {name} {kind}: refused: {m}"),
        Err(LookupError::Timeout(m) | LookupError::Transport(m) | LookupError::Invalid(m)) => {
            format!("dns {name} {kind}: {m}")
        }
    }
}

/// The DNS state of one call: the step's grant and the call's context.
pub(super) struct DnsCall {
    pub(super) grant: DnsGrant,
    pub(super) call: CallContext,
}

impl wit::Host for DnsCall {
    async fn lookup(&mut self, name: String, kind: wit::RecordType) -> Result<Vec<Answer>, LookupError> {
        let started = std::time::Instant::now();
        let result = self.lookup(&name, kind).await;
        self.call.line(&summary(&name, kind, &result));
        let (denied, failed) = match &result {
            Ok(_) => (None, None),
            Err(LookupError::Denied(m)) => (Some(m.as_str()), None),
            Err(LookupError::Timeout(m) | LookupError::Transport(m) | LookupError::Invalid(m)) => (None, Some(m.as_str())),
        };
        let asked = format!("dns://{}", name.trim_end_matches('.').to_ascii_lowercase());
        self.call.record_call(format!("LOOKUP {:?}", record_type(kind)), asked, started, denied, failed);
        result
    }
}

impl DnsCall {
    async fn lookup(&mut self, name: &str, kind: wit::RecordType) -> Result<Vec<Answer>, LookupError> {
        let step = &self.call.step;
        let asked = crate::capability::probe::NamePattern::parse(name)
            .map_err(|e| LookupError::Invalid(format!("`{name}`: {e}")))?;
        if !self.grant.names.iter().any(|p| p.matches(&asked.to_string())) {
            return Err(LookupError::Denied(format!(
                "looking up {asked} is not granted to step `{step}`: add it to the step's `dns:`"
            )));
        }
        let timeout = self.call.request_budget();
        let resolver = resolver(self.grant.resolver, timeout)?;
        let asking = format!("{asked}.");
        let lookup = match tokio::time::timeout(timeout, resolver.lookup(asking.as_str(), record_type(kind))).await {
            Err(_) => return Err(LookupError::Timeout(format!("the resolver did not answer for {asked} in time"))),
            Ok(Err(e)) if e.is_no_records_found() => return Ok(Vec::new()),
            Ok(Err(e)) => return Err(LookupError::Transport(format!("looking up {asked}: {e}"))),
            Ok(Ok(lookup)) => lookup,
        };
        let wanted = record_type(kind);
        let mut answers = Vec::new();
        for record in lookup.answers().iter().filter(|r| r.record_type() == wanted).take(MAX_ANSWERS) {
            if let Some(ip) = address(&record.data) {
                // One restricted address refuses the whole answer: a lookup maps nothing inside.
                self.call.resolver.admits(&asked.to_string(), ip).map_err(|d| LookupError::Denied(d.for_request()))?;
            }
            if let Some(value) = value(&record.data) {
                let owner = record.name.to_ascii().trim_end_matches('.').to_string();
                answers.push(Answer { name: owner, ttl: record.ttl, value });
            }
        }
        Ok(answers)
    }
}
