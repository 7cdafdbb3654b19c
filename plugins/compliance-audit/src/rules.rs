//! The rule packs. Each built-in rule looks for keys by name (config schemas
//! differ, the words do not) and maps to HIPAA, SOC 2 and GDPR controls;
//! users add exact-path rules of their own in `with:`.

use crate::config::Entry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Low,
    /// Should be fixed.
    Medium,
    /// Must be fixed before production.
    High,
    /// Exploitable or a breach already.
    Critical,
}

impl Severity {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// A rule: id, what it checks, how bad a violation is, which controls it evidences.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    /// Stable id, e.g. `GA-ENC-REST`.
    pub id: String,
    /// One-line title.
    pub title: String,
    /// Severity of a violation.
    pub severity: Severity,
    /// `(framework, control)` pairs, e.g. `("HIPAA", "164.312(a)(2)(iv)")`.
    pub controls: Vec<(String, String)>,
}

/// One violation, located.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Rule id.
    pub rule: String,
    /// Severity.
    pub severity: Severity,
    /// File, as the plugin sees it.
    pub file: String,
    /// Dotted key path, or `(missing)`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn rule(id: &str, title: &str, severity: Severity, controls: &[(&str, &str)]) -> Rule {
    Rule {
        id: id.into(),
        title: title.into(),
        severity,
        controls: controls.iter().map(|(f, c)| (f.to_string(), c.to_string())).collect(),
    }
}

/// The built-in rules.
pub fn builtin() -> Vec<Rule> {
    use Severity::*;
    vec![
        rule(
            "GA-ENC-REST",
            "Encryption at rest enabled",
            High,
            &[("HIPAA", "164.312(a)(2)(iv)"), ("SOC2", "CC6.1"), ("GDPR", "Art. 32(1)(a)")],
        ),
        rule(
            "GA-ENC-TRANSIT",
            "Encryption in transit enforced",
            High,
            &[("HIPAA", "164.312(e)(1)"), ("SOC2", "CC6.7"), ("GDPR", "Art. 32(1)(a)")],
        ),
        rule(
            "GA-AUDIT-LOG",
            "Audit logging enabled",
            High,
            &[("HIPAA", "164.312(b)"), ("SOC2", "CC7.2"), ("GDPR", "Art. 30")],
        ),
        rule(
            "GA-JWT-EXPIRY",
            "JWT expiry bounded (≤ 24 h)",
            Medium,
            &[("HIPAA", "164.312(a)(2)(iii)"), ("SOC2", "CC6.1"), ("GDPR", "Art. 32(1)(b)")],
        ),
        rule("GA-RATE-LIMIT", "Rate limiting configured", Medium, &[("SOC2", "CC6.6"), ("GDPR", "Art. 32(1)(b)")]),
        rule(
            "GA-CORS",
            "CORS origins not `*` in production",
            High,
            &[("HIPAA", "164.312(e)(1)"), ("SOC2", "CC6.6"), ("GDPR", "Art. 32(1)(b)")],
        ),
        rule(
            "GA-INGRESS",
            "No 0.0.0.0/0 ingress in production",
            Critical,
            &[("HIPAA", "164.312(e)(1)"), ("SOC2", "CC6.6"), ("GDPR", "Art. 32(1)(b)")],
        ),
        rule(
            "GA-BACKUP",
            "Backups enabled with retention ≥ 90 days",
            High,
            &[("HIPAA", "164.308(a)(7)(ii)(A)"), ("SOC2", "A1.2"), ("GDPR", "Art. 32(1)(c)")],
        ),
        rule("GA-DEBUG", "Debug off in production", Medium, &[("SOC2", "CC8.1"), ("GDPR", "Art. 25")]),
        rule(
            "GA-SECRETS",
            "No plain-text secrets in configuration",
            Critical,
            &[("HIPAA", "164.312(a)(1)"), ("SOC2", "CC6.1"), ("GDPR", "Art. 32(1)(a)")],
        ),
    ]
}

/// A path squashed for matching: lower case, without `_` and `-`.
fn key(path: &str) -> String {
    path.to_ascii_lowercase().replace(['_', '-'], "")
}

fn last(path: &str) -> String {
    key(path.rsplit('.').next().unwrap_or(path))
}

fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" | "enabled" | "required" | "require" => Some(true),
            "false" | "no" | "off" | "0" | "disabled" | "none" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_f64().map(|n| n != 0.0),
        _ => None,
    }
}

/// Seconds in `3600`, `"15m"`, `"24h"`, `"7d"`, `"30s"`.
fn seconds(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
            let n: f64 = s[..split].parse().ok()?;
            let factor = match s[split..].trim() {
                "" | "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                "w" => 604800.0,
                _ => return None,
            };
            Some(n * factor)
        }
        _ => None,
    }
}

struct Ctx<'a> {
    entries: &'a [Entry],
    out: Vec<Finding>,
}

impl Ctx<'_> {
    fn find(&mut self, rule: &Rule, e: &Entry, message: String) {
        self.out.push(Finding {
            rule: rule.id.clone(),
            severity: rule.severity,
            file: e.file.clone(),
            path: e.path.clone(),
            message: format!("{}: {}: {message}", e.file, e.path),
        });
    }

    fn missing(&mut self, rule: &Rule, message: &str) {
        let file = self.entries.first().map(|e| e.file.clone()).unwrap_or_default();
        self.out.push(Finding {
            rule: rule.id.clone(),
            severity: rule.severity,
            file,
            path: "(missing)".into(),
            message: message.to_string(),
        });
    }

    /// Flags entries whose path matches and are off; reports a missing setting when none is on.
    fn switch(&mut self, rule: &Rule, matches: impl Fn(&str) -> bool, off: &str, missing: &str) {
        let hits: Vec<Entry> = self.entries.iter().filter(|e| matches(&key(&e.path))).cloned().collect();
        let mut on = false;
        for e in &hits {
            match truthy(&e.value) {
                Some(false) => self.find(rule, e, off.to_string()),
                Some(true) => on = true,
                None => {}
            }
        }
        if !on && hits.iter().all(|e| truthy(&e.value).is_none()) {
            self.missing(rule, missing);
        }
    }
}

const SENSITIVE: &[&str] =
    &["password", "passwd", "secret", "apikey", "token", "privatekey", "accesskey", "credential"];
const NOT_VALUES: &[&str] =
    &["file", "path", "ref", "arn", "name", "env", "ttl", "expiry", "expiresin", "length", "url", "id"];

fn is_reference(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    s.is_empty()
        || s.starts_with("${")
        || s.starts_with('$')
        || ["vault:", "env:", "file:", "arn:aws:secretsmanager", "arn:aws:ssm", "secretref:", "ssm:"]
            .iter()
            .any(|p| l.starts_with(p))
}

fn entropy(s: &str) -> f64 {
    let mut counts = std::collections::BTreeMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = s.chars().count() as f64;
    counts.values().map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum()
}

/// Well-known credential shapes, wherever they appear.
fn credential_pattern(s: &str) -> Option<&'static str> {
    let akia = s
        .find("AKIA")
        .map(|i| &s[i..])
        .is_some_and(|t| t.len() >= 20 && t[4..20].chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
    if akia {
        Some("an AWS access key id")
    } else if s.contains("-----BEGIN") && s.contains("PRIVATE KEY") {
        Some("a private key")
    } else if ["xoxb-", "xoxp-", "ghp_", "github_pat_", "sk_live_", "glpat-"].iter().any(|p| s.contains(p)) {
        Some("an API token")
    } else {
        None
    }
}

/// Runs the built-in `rules` over `entries`.
pub fn check(rules: &[Rule], entries: &[Entry], production: bool) -> Vec<Finding> {
    let mut c = Ctx { entries, out: Vec::new() };
    for rule in rules {
        match rule.id.as_str() {
            "GA-ENC-REST" => c.switch(
                rule,
                |k| k.contains("encrypt") && !["transit", "tls", "ssl"].iter().any(|x| k.contains(x)),
                "encryption at rest is off: enable it",
                "no setting enables encryption at rest (e.g. database.encrypted: true)",
            ),
            "GA-ENC-TRANSIT" => {
                c.switch(
                    rule,
                    |k| {
                        ["tls", "ssl", "https", "transit"]
                            .iter()
                            .any(|x| last(k).contains(x) || k.ends_with(&format!("{x}.enabled")))
                            && !k.contains("mode")
                    },
                    "encryption in transit is off: require TLS",
                    "no setting enforces TLS (e.g. server.tls.enabled: true)",
                );
                for e in entries.iter() {
                    let k = key(&e.path);
                    if let Value::String(s) = &e.value {
                        let weak_mode = k.contains("sslmode") && ["disable", "allow", "prefer"].contains(&s.as_str());
                        let local = ["http://localhost", "http://127.0.0.1"].iter().any(|p| s.starts_with(p));
                        if weak_mode {
                            c.find(rule, e, format!("`{s}` lets connections fall back to plain text: use verify-full"));
                        } else if production && s.starts_with("http://") && !local {
                            c.find(rule, e, format!("plain-text URL {s} in production: use https"));
                        }
                    }
                }
            }
            "GA-AUDIT-LOG" => c.switch(
                rule,
                |k| {
                    k.contains("audit")
                        && (k.ends_with("enabled")
                            || k.ends_with("audit")
                            || k.ends_with("auditlog")
                            || k.ends_with("auditlogging"))
                },
                "audit logging is off: enable it",
                "no setting enables audit logging (e.g. logging.audit.enabled: true)",
            ),
            "GA-JWT-EXPIRY" => {
                let hits: Vec<&Entry> = entries
                    .iter()
                    .filter(|e| {
                        let k = key(&e.path);
                        (k.contains("jwt") || k.contains("token"))
                            && ["expir", "ttl", "lifetime", "maxage"].iter().any(|x| last(&e.path).contains(x))
                    })
                    .collect();
                if hits.is_empty() {
                    c.missing(rule, "no JWT expiry is configured (e.g. auth.jwt.expires_in: 1h)");
                }
                for e in hits {
                    match seconds(&e.value) {
                        Some(s) if s <= 0.0 => {
                            c.find(rule, e, "tokens never expire: set an expiry of at most 24h".into())
                        }
                        Some(s) if s > 86400.0 => c.find(rule, e, format!("tokens live {s} s, over 24h")),
                        Some(_) => {}
                        None => c.find(rule, e, format!("cannot read {} as a duration", e.value)),
                    }
                }
            }
            "GA-RATE-LIMIT" => c.switch(
                rule,
                |k| k.contains("ratelimit") || k.contains("throttl"),
                "rate limiting is off: enable it",
                "no rate limiting is configured (e.g. api.rate_limit.enabled: true)",
            ),
            "GA-CORS" if production => {
                for e in entries.iter().filter(|e| key(&e.path).contains("cors")) {
                    if e.value == Value::String("*".into()) {
                        c.find(rule, e, "allows any origin in production: list the allowed origins".into());
                    }
                }
            }
            "GA-INGRESS" if production => {
                for e in entries.iter() {
                    if matches!(&e.value, Value::String(s) if s == "0.0.0.0/0" || s == "::/0") {
                        c.find(rule, e, "opens ingress to the whole internet in production".into());
                    }
                }
            }
            "GA-BACKUP" => {
                c.switch(
                    rule,
                    |k| {
                        k.contains("backup")
                            && (k.ends_with("enabled") || k.ends_with("backup") || k.ends_with("backups"))
                    },
                    "backups are off: enable them",
                    "no setting enables backups (e.g. database.backup.enabled: true)",
                );
                let retention: Vec<&Entry> = entries
                    .iter()
                    .filter(|e| key(&e.path).contains("backup") && key(&e.path).contains("retention"))
                    .collect();
                if retention.is_empty() {
                    c.missing(rule, "no backup retention is configured (e.g. database.backup.retention_days: 90)");
                }
                for e in retention {
                    let days = if last(&e.path).contains("day") {
                        e.value.as_f64()
                    } else {
                        seconds(&e.value).map(|s| s / 86400.0)
                    };
                    match days {
                        Some(d) if d < 90.0 => c.find(rule, e, format!("backups are kept {d} days, under 90")),
                        Some(_) => {}
                        None => c.find(rule, e, format!("cannot read {} as a retention", e.value)),
                    }
                }
            }
            "GA-DEBUG" if production => {
                for e in entries.iter() {
                    let l = last(&e.path);
                    let debug_flag = l.contains("debug") && truthy(&e.value) == Some(true);
                    let log_level = l.contains("loglevel") || (l == "level" && key(&e.path).contains("log"));
                    let debug_level = log_level
                        && e.value
                            .as_str()
                            .is_some_and(|s| s.eq_ignore_ascii_case("debug") || s.eq_ignore_ascii_case("trace"));
                    if debug_flag || debug_level {
                        c.find(rule, e, "debug output is on in production: turn it off".into());
                    }
                }
            }
            "GA-SECRETS" => {
                for e in entries.iter() {
                    let Value::String(s) = &e.value else { continue };
                    if let Some(what) = credential_pattern(s) {
                        c.find(rule, e, format!("holds {what} in plain text: move it to a secret store"));
                        continue;
                    }
                    let l = last(&e.path);
                    let sensitive =
                        SENSITIVE.iter().any(|x| l.contains(x)) && !NOT_VALUES.iter().any(|x| l.ends_with(x));
                    if sensitive && !is_reference(s) && s.len() >= 8 && entropy(s) >= 2.5 {
                        c.find(
                            rule,
                            e,
                            "a secret in plain text: reference a secret store instead (e.g. ${VAR} or vault:)".into(),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    c.out
}

/// A rule written in `with:`: an exact key path and a comparison.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// Id shown in reports.
    pub id: String,
    /// Dotted key path, e.g. `server.session.timeout_minutes`; `*` matches one segment.
    pub path: String,
    /// `equals`, `not_equals`, `exists`, `absent`, `gte`, `lte`, `contains`, `not_contains`.
    pub op: String,
    /// Value to compare with.
    #[serde(default)]
    pub value: Value,
    /// Only files whose path contains this.
    #[serde(default)]
    pub file: Option<String>,
    /// Severity of a violation.
    #[serde(default = "high")]
    pub severity: Severity,
    /// Message of a violation.
    #[serde(default)]
    pub message: Option<String>,
    /// Controls it evidences, e.g. `["SOC2 CC6.1"]`.
    #[serde(default)]
    pub controls: Vec<String>,
}

fn high() -> Severity {
    Severity::High
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let a: Vec<&str> = path.split('.').collect();
    p.len() == a.len() && p.iter().zip(&a).all(|(p, a)| *p == "*" || p.eq_ignore_ascii_case(a))
}

fn compare(op: &str, actual: &Value, expected: &Value) -> Result<bool, String> {
    let num = |v: &Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
    Ok(match op {
        "equals" => actual == expected || actual.as_str().is_some_and(|s| Some(s) == expected.as_str()),
        "not_equals" => actual != expected,
        "gte" | "lte" => match (num(actual), num(expected)) {
            (Some(a), Some(b)) => {
                if op == "gte" {
                    a >= b
                } else {
                    a <= b
                }
            }
            _ => false,
        },
        "contains" | "not_contains" => {
            let text = match actual {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let needle = expected.as_str().map(String::from).unwrap_or_else(|| expected.to_string());
            text.contains(&needle) == (op == "contains")
        }
        other => {
            return Err(format!(
                "unknown op `{other}`: use equals, not_equals, exists, absent, gte, lte, contains, not_contains"
            ))
        }
    })
}

impl CustomRule {
    /// The rule as it appears in reports.
    pub fn rule(&self) -> Rule {
        let controls = self.controls.iter().map(|c| match c.split_once(' ') {
            Some((f, c)) => (f.to_string(), c.to_string()),
            None => ("custom".to_string(), c.clone()),
        });
        Rule {
            id: self.id.clone(),
            title: self.message.clone().unwrap_or_else(|| format!("{} {} {}", self.path, self.op, self.value)),
            severity: self.severity,
            controls: controls.collect(),
        }
    }

    /// Violations of this rule.
    pub fn check(&self, entries: &[Entry]) -> Result<Vec<Finding>, String> {
        let hits: Vec<&Entry> = entries
            .iter()
            .filter(|e| {
                self.file.as_ref().is_none_or(|f| e.file.contains(f.as_str())) && path_matches(&self.path, &e.path)
            })
            .collect();
        let what = self.message.clone().unwrap_or_else(|| format!("expected {} {}", self.op, self.value));
        let finding = |file: &str, path: &str, message: String| Finding {
            rule: self.id.clone(),
            severity: self.severity,
            file: file.into(),
            path: path.into(),
            message,
        };
        let first_file = entries.first().map(|e| e.file.as_str()).unwrap_or_default();
        Ok(match self.op.as_str() {
            "exists" if hits.is_empty() => {
                vec![finding(first_file, &self.path, format!("{} is not set: {what}", self.path))]
            }
            "exists" => Vec::new(),
            "absent" => hits
                .iter()
                .map(|e| finding(&e.file, &e.path, format!("{}: {} is set: {what}", e.file, e.path)))
                .collect(),
            op => {
                let mut out = Vec::new();
                for e in hits {
                    if !compare(op, &e.value, &self.value).map_err(|m| format!("rule {}: {m}", self.id))? {
                        out.push(finding(&e.file, &e.path, format!("{}: {} is {}: {what}", e.file, e.path, e.value)));
                    }
                }
                out
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn ids(findings: &[Finding]) -> Vec<String> {
        let mut v: Vec<String> = findings.iter().map(|f| format!("{} {}", f.rule, f.path)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_good_config_passes_every_rule() {
        let good = "database:\n  encrypted: true\n  ssl_mode: verify-full\n  backup:\n    enabled: true\n    retention_days: 90\nserver:\n  tls:\n    enabled: true\nlogging:\n  audit:\n    enabled: true\nauth:\n  jwt:\n    expires_in: 1h\napi:\n  rate_limit:\n    enabled: true\ncors:\n  allowed_origins: ['https://the7space.example']\ndebug: false\npassword: ${DB_PASSWORD}\n";
        let entries = parse("/config/app.yaml", good).unwrap();
        assert!(check(&builtin(), &entries, true).is_empty(), "{:?}", check(&builtin(), &entries, true));
    }

    #[test]
    fn a_bad_config_names_file_key_and_rule() {
        let bad = "database:\n  encrypted: false\n  password: hunter2-Xy9!qz\n  backup:\n    enabled: true\n    retention_days: 30\nserver:\n  tls:\n    enabled: true\nlogging:\n  audit:\n    enabled: false\nauth:\n  jwt:\n    expires_in: 30d\napi:\n  rate_limit:\n    enabled: true\ncors:\n  allowed_origins: ['*']\nsecurity_groups:\n  - ingress: 0.0.0.0/0\ndebug: true\naws:\n  key: AKIAIOSFODNN7EXAMPLE\n";
        let entries = parse("/config/app.yaml", bad).unwrap();
        let found = check(&builtin(), &entries, true);
        assert_eq!(
            ids(&found),
            [
                "GA-AUDIT-LOG logging.audit.enabled",
                "GA-BACKUP database.backup.retention_days",
                "GA-CORS cors.allowed_origins[0]",
                "GA-DEBUG debug",
                "GA-ENC-REST database.encrypted",
                "GA-INGRESS security_groups[0].ingress",
                "GA-JWT-EXPIRY auth.jwt.expires_in",
                "GA-SECRETS aws.key",
                "GA-SECRETS database.password",
            ]
        );
        let m = &found.iter().find(|f| f.rule == "GA-BACKUP").unwrap().message;
        assert_eq!(m, "/config/app.yaml: database.backup.retention_days: backups are kept 30 days, under 90");
        // Outside production, CORS, ingress and debug are not findings.
        let dev = check(&builtin(), &entries, false);
        assert!(!dev.iter().any(|f| ["GA-CORS", "GA-INGRESS", "GA-DEBUG"].contains(&f.rule.as_str())));
    }

    #[test]
    fn custom_rules_compare_paths() {
        let entries = parse("/config/app.yaml", "session:\n  timeout_minutes: 60\n").unwrap();
        let r: CustomRule = serde_json::from_value(
            serde_json::json!({"id": "ORG-1", "path": "session.timeout_minutes", "op": "lte", "value": 15}),
        )
        .unwrap();
        let f = r.check(&entries).unwrap();
        assert_eq!(f[0].message, "/config/app.yaml: session.timeout_minutes is 60: expected lte 15");
        let r: CustomRule =
            serde_json::from_value(serde_json::json!({"id": "ORG-2", "path": "session.*", "op": "exists"})).unwrap();
        assert!(r.check(&entries).unwrap().is_empty());
        let r: CustomRule =
            serde_json::from_value(serde_json::json!({"id": "ORG-3", "path": "x", "op": "like", "value": 1})).unwrap();
        assert!(r.check(&parse("/a.yaml", "x: 1").unwrap()).unwrap_err().contains("unknown op"));
    }
}
