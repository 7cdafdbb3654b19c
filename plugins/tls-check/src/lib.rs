//! `tls-check`: shakes hands with each target through the host's `tls` capability and fails
//! unless the chain verifies for the name, the protocol is new enough and the certificate is not
//! about to expire; optionally checks a page's security headers through the `network` capability.
//!
//! The judgement is pure ([`judge`], [`check_headers`]) and unit-tested natively; only the probe
//! and the request go through the host.

use gantry_sdk::tls::{self, Handshake, ProbeError, Starttls, Trust, VerifyFailure};
use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Targets to probe, `host:port` (443 when left out); each must be granted in the step's `tls:`.
    pub targets: Vec<String>,
    /// Speak this protocol in the clear first: `none` (default), `smtp` or `postgres`.
    #[serde(default)]
    pub starttls: StartTls,
    /// Warn when a certificate expires within this many days.
    #[serde(default = "default_warn_days")]
    pub warn_days: u32,
    /// Fail when a certificate expires within this many days.
    #[serde(default = "default_fail_days")]
    pub fail_days: u32,
    /// Lowest acceptable protocol, `1.2` (default) or `1.3`.
    #[serde(default = "default_min_version")]
    pub min_version: String,
    /// Fail when the server staples no OCSP response.
    #[serde(default)]
    pub require_ocsp: bool,
    /// Also check the security headers of this page (its origin granted in `network:`).
    #[serde(default)]
    pub headers: Option<HeadersCheck>,
}

/// The security-headers check of a page, as a blue-green release checks them after a switch.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersCheck {
    /// Page to fetch, e.g. `https://the7space.example/`.
    pub url: String,
    /// Shortest acceptable HSTS `max-age`, in seconds (default 15768000, six months).
    #[serde(default = "default_hsts_min_age")]
    pub hsts_min_age: u64,
    /// Headers to require, of `hsts`, `csp`, `nosniff`, `frame` (default all four).
    #[serde(default = "all_headers")]
    pub require: Vec<Header>,
}

/// A security header the check can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Header {
    /// `Strict-Transport-Security` with a long enough `max-age`.
    Hsts,
    /// `Content-Security-Policy`.
    Csp,
    /// `X-Content-Type-Options: nosniff`.
    Nosniff,
    /// `X-Frame-Options: DENY|SAMEORIGIN`, or a CSP with `frame-ancestors`.
    Frame,
}

/// The clear-text protocol before the handshake.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// TLS from the first byte.
    #[default]
    None,
    /// SMTP `STARTTLS`.
    Smtp,
    /// PostgreSQL `SSLRequest`.
    Postgres,
}

fn default_warn_days() -> u32 {
    30
}
fn default_fail_days() -> u32 {
    7
}
fn default_min_version() -> String {
    "1.2".into()
}
fn default_hsts_min_age() -> u64 {
    15_768_000
}
fn all_headers() -> Vec<Header> {
    vec![Header::Hsts, Header::Csp, Header::Nosniff, Header::Frame]
}

/// What a target's handshake says against the input: failures and warnings, each a sentence.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Reasons to fail the step.
    pub failures: Vec<String>,
    /// Reasons to warn.
    pub warnings: Vec<String>,
    /// Whole days until the server's certificate expires (negative once expired).
    pub days_left: Option<i64>,
}

const DAY: i64 = 86_400;

/// Days from `now` to `not_after` as a person counts them, to the nearest whole day: a certificate
/// made for 5 days and read a second later has 5 left, not 4; negative once it has expired.
fn days_left(not_after: i64, now: i64) -> i64 {
    let secs = not_after.saturating_sub(now);
    (secs.saturating_add(secs.signum() * (DAY / 2))) / DAY
}

/// `n days`, or `a day`.
fn days(n: i64) -> String {
    match n {
        1 => "a day".into(),
        n => format!("{n} days"),
    }
}

/// Judges one target's handshake at `now` (seconds since the Unix epoch).
pub fn judge(input: &Input, min_version: u8, target: &str, h: &Handshake, now: i64) -> Findings {
    let mut f = Findings::default();
    match (&h.trusted_by, &h.failure) {
        (Some(_), _) => {}
        (None, Some((kind, why))) => {
            f.failures.push(format!("{target}: the certificate does not verify: {} ({why})", failure_words(*kind)))
        }
        (None, None) => f.failures.push(format!("{target}: the certificate does not verify")),
    }
    if h.version() < min_version {
        f.failures.push(format!(
            "{target}: the server negotiated {}, below the minimum TLS 1.{}",
            h.protocol,
            min_version - 10
        ));
    }
    if let Some(leaf) = h.leaf() {
        let left = days_left(leaf.not_after, now);
        f.days_left = Some(left);
        if leaf.not_after <= now {
            f.failures.push(match -left {
                0 => format!("{target}: the certificate expired today"),
                1 => format!("{target}: the certificate expired a day ago"),
                ago => format!("{target}: the certificate expired {ago} days ago"),
            });
        } else if left < i64::from(input.fail_days) {
            f.failures
                .push(format!("{target}: the certificate expires in {} (fail under {})", days(left), input.fail_days));
        } else if left < i64::from(input.warn_days) {
            f.warnings
                .push(format!("{target}: the certificate expires in {} (warn under {})", days(left), input.warn_days));
        }
    } else {
        f.failures.push(format!("{target}: the server sent no certificate"));
    }
    if input.require_ocsp && !h.ocsp_stapled {
        f.failures.push(format!("{target}: the server staples no OCSP response"));
    }
    f
}

fn failure_words(kind: VerifyFailure) -> &'static str {
    match kind {
        VerifyFailure::Expired => "expired",
        VerifyFailure::NotYetValid => "not valid yet",
        VerifyFailure::NameMismatch => "not issued for this name",
        VerifyFailure::UnknownIssuer => {
            "issued by no trusted CA (self-signed, or a private CA not granted in `tls_ca:`)"
        }
        VerifyFailure::Other => "rejected",
    }
}

/// What the page's headers lack, one sentence each.
pub fn check_headers(check: &HeadersCheck, headers: &[(String, String)]) -> Vec<String> {
    let get = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
    let csp = get("content-security-policy");
    let mut missing = Vec::new();
    for header in &check.require {
        let problem = match header {
            Header::Hsts => match get("strict-transport-security").map(hsts_max_age) {
                None => Some("no Strict-Transport-Security header".to_string()),
                Some(None) => Some("Strict-Transport-Security has no max-age".to_string()),
                Some(Some(age)) if age < check.hsts_min_age => {
                    Some(format!("Strict-Transport-Security max-age={age} is below {}", check.hsts_min_age))
                }
                Some(Some(_)) => None,
            },
            Header::Csp => csp.is_none().then(|| "no Content-Security-Policy header".to_string()),
            Header::Nosniff => (!get("x-content-type-options").is_some_and(|v| v.eq_ignore_ascii_case("nosniff")))
                .then(|| "X-Content-Type-Options is not nosniff".to_string()),
            Header::Frame => {
                let framed = get("x-frame-options")
                    .is_some_and(|v| v.eq_ignore_ascii_case("deny") || v.eq_ignore_ascii_case("sameorigin"));
                let ancestors = csp.is_some_and(|c| c.to_ascii_lowercase().contains("frame-ancestors"));
                (!framed && !ancestors)
                    .then(|| "neither X-Frame-Options nor CSP frame-ancestors limits framing".to_string())
            }
        };
        missing.extend(problem.map(|p| format!("{}: {p}", check.url)));
    }
    missing
}

fn hsts_max_age(value: &str) -> Option<u64> {
    value.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("max-age").then(|| v.trim().trim_matches('"').parse().ok())?
    })
}

/// The TLS and security-headers check.
pub struct TlsCheck;

impl Step for TlsCheck {
    fn describe() -> Describe {
        Describe::new("tls-check", env!("CARGO_PKG_VERSION"))
            .description(
                "Checks TLS endpoints: chain, name, expiry, protocol version, OCSP; and a page's security headers",
            )
            .input::<Input>()
            .capability("tls")
            .output("subject", "the leaf certificate's subject")
            .output("issuer", "the leaf certificate's issuer")
            .output("not_after", "when the leaf certificate expires")
            .output("sha256", "the leaf certificate's SHA-256 fingerprint")
            .output("days_left", "days until the leaf certificate expires")
            .output("protocol", "the negotiated TLS version")
            .output("checked", "how many targets were checked")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        if input.targets.is_empty() {
            return Err(Error::failed("`targets` is empty: name at least one host:port"));
        }
        if input.fail_days > input.warn_days {
            return Err(Error::failed(format!(
                "fail_days ({}) is above warn_days ({})",
                input.fail_days, input.warn_days
            )));
        }
        let min_version = tls::parse_version(&input.min_version)
            .filter(|v| *v >= 12)
            .ok_or_else(|| Error::failed(format!("min_version `{}` is not 1.2 or 1.3", input.min_version)))?;
        let starttls = match input.starttls {
            StartTls::None => Starttls::None,
            StartTls::Smtp => Starttls::Smtp,
            StartTls::Postgres => Starttls::Postgres,
        };
        let now = (gantry_sdk::now_ms() / 1000) as i64;
        let (mut failures, mut days_left, mut lowest) = (Vec::new(), None::<i64>, None::<String>);
        let mut outputs = Outputs::new();
        for target in &input.targets {
            let handshake = match tls::probe_starttls(target, starttls) {
                Ok(h) => h,
                Err(ProbeError::Handshake(why)) => {
                    failures.push(format!(
                        "{target}: no TLS 1.2 or later handshake (minimum TLS 1.{}): {why}",
                        min_version - 10
                    ));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let found = judge(&input, min_version, target, &handshake, now);
            for w in &found.warnings {
                gantry_sdk::warn!("{w}");
            }
            if let Some(leaf) = handshake.leaf() {
                let trust = match handshake.trusted_by {
                    Some(Trust::PublicRoots) => "public roots",
                    Some(Trust::GrantedCa) => "granted CA",
                    None => "not verified",
                };
                gantry_sdk::info!(
                    "{target}: {} {}, {} issued by {}, {trust}",
                    handshake.protocol,
                    handshake.cipher,
                    leaf.subject,
                    leaf.issuer
                );
            }
            days_left = match (days_left, found.days_left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if lowest.as_ref().is_none_or(|l| tls::parse_version(l).unwrap_or(0) > handshake.version()) {
                lowest = Some(handshake.protocol.clone());
            }
            if input.targets.len() == 1 {
                if let Some(leaf) = handshake.leaf() {
                    outputs.set("subject", &leaf.subject);
                    outputs.set("issuer", &leaf.issuer);
                    outputs.set("not_after", leaf.not_after);
                    outputs.set("sha256", &leaf.sha256);
                }
            }
            failures.extend(found.failures);
        }
        if let Some(check) = &input.headers {
            let response =
                ctx.http().get(&check.url).send().map_err(|e| e.during(format!("fetching {}", check.url)))?;
            failures.extend(check_headers(check, response.headers()));
        }
        if !failures.is_empty() {
            return Err(Error::failed(failures.join("; ")));
        }
        if let Some(d) = days_left {
            outputs.set("days_left", d);
        }
        if let Some(p) = lowest {
            outputs.set("protocol", p);
        }
        Ok(outputs.with("checked", input.targets.len()))
    }
}

gantry_sdk::export_step!(TlsCheck);

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_sdk::tls::Certificate;

    fn input() -> Input {
        serde_json::from_value(serde_json::json!({"targets": ["a.example:443"]})).unwrap()
    }

    fn handshake(not_after: i64, protocol: &str, trusted: bool) -> Handshake {
        let leaf = Certificate {
            subject: "CN=a.example".into(),
            issuer: "CN=CA".into(),
            sans: vec!["a.example".into()],
            not_before: 0,
            not_after,
            serial: "1".into(),
            sha256: "00".into(),
        };
        Handshake {
            protocol: protocol.into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            chain: vec![leaf],
            trusted_by: trusted.then_some(Trust::GrantedCa),
            failure: (!trusted).then(|| (VerifyFailure::Expired, "certificate expired".into())),
            ocsp_stapled: false,
        }
    }

    #[test]
    fn expiry_warns_then_fails_and_a_bad_chain_or_old_protocol_fails() {
        let now = 1_000 * DAY;
        let good = judge(&input(), 12, "a", &handshake(now + 90 * DAY, "TLSv1.3", true), now);
        assert_eq!((good.failures.len(), good.warnings.len(), good.days_left), (0, 0, Some(90)));
        let soon = judge(&input(), 12, "a", &handshake(now + 20 * DAY, "TLSv1.3", true), now);
        assert_eq!((soon.failures.len(), soon.warnings.len()), (0, 1));
        let closer = judge(&input(), 12, "a", &handshake(now + 3 * DAY, "TLSv1.3", true), now);
        assert!(closer.failures[0].contains("expires in 3 days"), "{closer:?}");
        let expired = judge(&input(), 12, "a", &handshake(now - DAY, "TLSv1.3", false), now);
        assert!(expired.failures[0].contains("does not verify: expired"), "{expired:?}");
        assert_eq!(expired.days_left, Some(-1));
        let old = judge(&input(), 13, "a", &handshake(now + 90 * DAY, "TLSv1.2", true), now);
        assert!(old.failures[0].contains("below the minimum TLS 1.3"), "{old:?}");
    }

    #[test]
    fn days_are_counted_as_a_person_counts_them_and_an_expired_certificate_says_how_long_ago() {
        let now = 1_000 * DAY;
        // Made for 5 days, read a second or half a day later: 5 days left, not 4.
        let five = judge(&input(), 12, "a", &handshake(now + 5 * DAY - 1, "TLSv1.3", true), now);
        assert!(five.failures[0].contains("expires in 5 days"), "{five:?}");
        assert_eq!(five.days_left, Some(5));
        assert_eq!(days_left(now + 90 * DAY + 1, now), 90, "a clock stepped back by a second");
        assert_eq!(days_left(now + 90 * DAY - 1, now), 90);
        assert_eq!(days_left(now + DAY, now), 1);
        let one = judge(&input(), 12, "a", &handshake(now + DAY, "TLSv1.3", true), now);
        assert!(one.failures[0].contains("expires in a day"), "{one:?}");
        // Expired two days ago: said so, and never "expires in -3 days" beside it.
        let gone = judge(&input(), 12, "a", &handshake(now - 2 * DAY - 60, "TLSv1.3", false), now);
        assert_eq!(gone.days_left, Some(-2));
        assert!(gone.failures.iter().any(|m| m.contains("expired 2 days ago")), "{gone:?}");
        assert!(!gone.failures.iter().any(|m| m.contains("expires in")), "{gone:?}");
        let today = judge(&input(), 12, "a", &handshake(now - 60, "TLSv1.3", false), now);
        assert!(today.failures.iter().any(|m| m.contains("expired today")), "{today:?}");
    }

    #[test]
    fn headers_need_long_hsts_csp_nosniff_and_a_framing_rule() {
        let check: HeadersCheck = serde_json::from_value(serde_json::json!({"url": "https://a.example/"})).unwrap();
        let h = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let good = h(&[
            ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
            ("content-security-policy", "default-src 'self'; frame-ancestors 'none'"),
            ("X-Content-Type-Options", "nosniff"),
        ]);
        assert!(check_headers(&check, &good).is_empty());
        let weak = h(&[("strict-transport-security", "max-age=300"), ("x-frame-options", "ALLOW-FROM x")]);
        let missing = check_headers(&check, &weak);
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert!(missing[0].contains("max-age=300 is below 15768000"));
    }
}
