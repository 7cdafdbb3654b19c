//! The origin matcher and URL checks: a grant reads back as written, and a URL it allows has the
//! grant's scheme, host and port and stays under its path prefix, however the URL was spelled.
#![no_main]

use gantry_host::capability::{address, Grant, NetworkPolicy};
use libfuzzer_sys::fuzz_target;
use url::Url;

// The grant on the first line, the URL on the second.
fuzz_target!(|text: &str| {
    let Some((grant, url)) = text.split_once('\n') else { return };
    let Ok(url) = Url::parse(url) else { return };
    if let Some(url::Host::Ipv4(ip)) = url.host() {
        let _ = address::restricted(ip.into());
    }
    if let Some(url::Host::Ipv6(ip)) = url.host() {
        let _ = address::restricted(ip.into());
    }
    let Ok(grant) = Grant::parse(grant) else { return };
    let shown = grant.to_string();
    assert_eq!(Grant::parse(&shown).as_ref(), Ok(&grant), "{shown} does not read back as the grant it shows");
    let policy = NetworkPolicy::new(vec![grant.clone()]);
    assert_eq!(policy.allows(&url), grant.allows(&url));
    if !grant.allows(&url) {
        return;
    }
    let (scheme, rest) = shown.split_once("://").expect("a grant shows its scheme");
    assert_eq!(url.scheme(), scheme, "{url} allowed by {shown}");
    let (authority, prefix) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    let default = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().expect("a shown port is a number")),
        _ => (authority, default),
    };
    assert_eq!(url.port_or_known_default(), Some(port), "{url} allowed by {shown}");
    let url_host = url.host_str().expect("an allowed URL has a host").to_ascii_lowercase();
    match host.strip_prefix("*.") {
        Some(suffix) => assert!(url_host.ends_with(&format!(".{suffix}")), "{url} allowed by {shown}"),
        None => assert_eq!(url_host, host, "{url} allowed by {shown}"),
    }
    if !prefix.is_empty() {
        let path = url.path();
        assert!(path == prefix || path.starts_with(&format!("{prefix}/")), "{url} left {shown}");
        let lower = path.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !path.contains('\\'), "{url} under {shown}");
        assert!(!path.split('/').any(|s| s == ".." || s == "."), "{url} under {shown}");
    }
});
