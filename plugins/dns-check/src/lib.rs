//! `dns-check`: looks a name up through the host's `dns` capability until its records are as
//! expected, for a DNS change to propagate; fails with what the resolver last answered.
//!
//! The comparison is pure ([`compare`]) and unit-tested natively; only the lookup and the wait
//! between attempts go through the host.

use gantry_sdk::dns::{self, LookupError};
use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Name to look up; it must be granted in the step's `dns:`.
    pub name: String,
    /// Record type: `A` (default), `AAAA`, `CNAME`, `TXT`, `MX` or `CAA`.
    #[serde(default = "default_type", rename = "type")]
    pub kind: String,
    /// The records must be exactly these values (in any order).
    #[serde(default)]
    pub equals: Option<Vec<String>>,
    /// The records must include each of these values.
    #[serde(default)]
    pub contains: Vec<String>,
    /// The name must have no record of the type (e.g. after a delete).
    #[serde(default)]
    pub absent: bool,
    /// Lookups before giving up (default 10), for propagation.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait between lookups, in milliseconds (default 2000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

fn default_type() -> String {
    "A".into()
}
fn default_attempts() -> u32 {
    10
}
fn default_interval() -> u64 {
    2000
}

/// Upper bound on attempts, so a typo cannot turn a check into a flood of queries.
const MAX_ATTEMPTS: u32 = 1000;

/// Why the answer is not as expected, or `None` when it is. Names and values compare without case
/// and trailing dots, as DNS does.
pub fn compare(input: &Input, values: &[String]) -> Option<String> {
    let norm = |v: &str| v.trim().trim_end_matches('.').to_ascii_lowercase();
    let got: Vec<String> = values.iter().map(|v| norm(v)).collect();
    if input.absent {
        return (!got.is_empty()).then(|| format!("expected no record, found {}", got.join(", ")));
    }
    if let Some(equals) = &input.equals {
        let mut want: Vec<String> = equals.iter().map(|v| norm(v)).collect();
        let mut have = got.clone();
        want.sort();
        have.sort();
        if want != have {
            return Some(format!("expected exactly [{}], found [{}]", want.join(", "), have.join(", ")));
        }
    }
    let missing: Vec<&String> = input.contains.iter().filter(|c| !got.contains(&norm(c))).collect();
    if !missing.is_empty() {
        let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return Some(format!("missing [{}], found [{}]", missing.join(", "), got.join(", ")));
    }
    if input.equals.is_none() && input.contains.is_empty() && got.is_empty() {
        return Some("expected a record, found none".into());
    }
    None
}

/// The DNS check.
pub struct DnsCheck;

impl Step for DnsCheck {
    fn describe() -> Describe {
        Describe::new("dns-check", env!("CARGO_PKG_VERSION"))
            .description(
                "Checks that a name's DNS records equal or contain expected values, retrying while a change propagates",
            )
            .input::<Input>()
            .capability("dns")
            .output("values", "the answer's values, comma-separated")
            .output("ttl", "the answer's TTL, in seconds")
            .output("attempts", "how many lookups it took")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let kind = dns::parse_type(&input.kind)
            .ok_or_else(|| Error::failed(format!("type `{}` is not A, AAAA, CNAME, TXT, MX or CAA", input.kind)))?;
        if input.attempts == 0 || input.attempts > MAX_ATTEMPTS {
            return Err(Error::failed(format!(
                "attempts must be between 1 and {MAX_ATTEMPTS}, got {}",
                input.attempts
            )));
        }
        if input.absent && (input.equals.is_some() || !input.contains.is_empty()) {
            return Err(Error::failed("`absent` excludes `equals` and `contains`"));
        }
        let mut last = String::new();
        for attempt in 1..=input.attempts {
            if attempt > 1 {
                gantry_sdk::sleep_ms(input.interval_ms);
            }
            match dns::lookup(&input.name, kind) {
                Ok(answers) => {
                    let values: Vec<String> = answers.iter().map(|a| a.value.clone()).collect();
                    match compare(&input, &values) {
                        None => {
                            let ttl = answers.iter().map(|a| a.ttl).min().unwrap_or_default();
                            return Ok(Outputs::new()
                                .with("values", values.join(","))
                                .with("ttl", ttl)
                                .with("attempts", attempt));
                        }
                        Some(why) => last = why,
                    }
                }
                Err(e @ (LookupError::Denied(_) | LookupError::Invalid(_))) => return Err(e.into()),
                Err(e) => last = e.message(),
            }
            gantry_sdk::info!("{} {}: attempt {attempt} of {}: {last}", input.name, input.kind, input.attempts);
        }
        Err(Error::failed(format!(
            "{} {} after {} lookups: {last}",
            input.name,
            input.kind.to_ascii_uppercase(),
            input.attempts
        )))
    }
}

gantry_sdk::export_step!(DnsCheck);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(extra: serde_json::Value) -> Input {
        let mut v = serde_json::json!({"name": "www.example"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn equals_ignores_order_case_and_trailing_dots_contains_finds_each() {
        let eq = input(serde_json::json!({"equals": ["10.0.0.2", "10.0.0.1"]}));
        assert_eq!(compare(&eq, &values(&["10.0.0.1", "10.0.0.2"])), None);
        assert!(compare(&eq, &values(&["10.0.0.1"])).unwrap().contains("expected exactly"));
        let cname = input(serde_json::json!({"type": "CNAME", "equals": ["Green.Example."]}));
        assert_eq!(compare(&cname, &values(&["green.example"])), None);
        let has = input(serde_json::json!({"type": "TXT", "contains": ["v=spf1 -all"]}));
        assert_eq!(compare(&has, &values(&["google-site-verification=x", "v=spf1 -all"])), None);
        assert!(compare(&has, &values(&["x"])).unwrap().starts_with("missing [v=spf1 -all]"));
    }

    #[test]
    fn absent_wants_nothing_and_a_bare_check_wants_something() {
        let gone = input(serde_json::json!({"absent": true}));
        assert_eq!(compare(&gone, &[]), None);
        assert!(compare(&gone, &values(&["1.2.3.4"])).is_some());
        let any = input(serde_json::json!({}));
        assert_eq!(compare(&any, &values(&["1.2.3.4"])), None);
        assert_eq!(compare(&any, &[]).as_deref(), Some("expected a record, found none"));
    }
}
