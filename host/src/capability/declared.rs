//! What a plugin declares it uses (the capabilities of `describe`) against what its step is
//! granted, so a step that cannot work, or holds more than its plugin asks for, shows at plan time.
//!
//! `network`, `databases`, `files`, `artifacts` and each registered capability's name (`tls`, `dns`,
//! `redis`) are needs: without the grant the plugin cannot do its job.
//! `secrets:<use>` names a way the plugin may apply a secret, which a step may leave out.

use std::fmt;

/// One capability a plugin declares, parsed from its `describe` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// `network`: it sends requests.
    Network,
    /// `secrets:<use>` (or `secrets`): it may apply secrets, such as `secrets:bearer`.
    Secrets(String),
    /// `databases`: it opens SQL databases.
    Databases,
    /// `files`: it reads granted directories.
    Files,
    /// `artifacts`: it writes to `/artifacts`.
    Artifacts,
    /// Anything else, kept as written.
    Unknown(String),
}

impl Declared {
    /// Parses one declared capability.
    pub fn parse(text: &str) -> Self {
        match text {
            "network" => Self::Network,
            "databases" => Self::Databases,
            "files" => Self::Files,
            "artifacts" => Self::Artifacts,
            "secrets" => Self::Secrets(String::new()),
            other => match other.strip_prefix("secrets:") {
                Some(kind) => Self::Secrets(kind.to_string()),
                None => Self::Unknown(other.to_string()),
            },
        }
    }
}

/// Which kinds of grant a step holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    /// At least one origin.
    pub network: bool,
    /// At least one secret.
    pub secrets: bool,
    /// At least one database.
    pub databases: bool,
    /// At least one read-only directory.
    pub files: bool,
    /// A writable `/artifacts`.
    pub artifacts: bool,
    /// Registered capabilities granted, by name.
    pub units: std::collections::BTreeSet<String>,
}

/// How much a mismatch matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Granted but never asked for: more than the plugin needs.
    Warning,
    /// Needed but not granted: the step cannot work.
    Error,
}

/// One difference between a plugin's declaration and its step's grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// How much it matters.
    pub severity: Severity,
    /// What differs and what to change.
    pub message: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{label}: {}", self.message)
    }
}

/// Compares plugin `name`'s declared capabilities with a step's grants; `units` are the names of
/// the registered capabilities, each declared by its name.
pub fn check(name: &str, declared: &[String], granted: Granted, units: &[&str]) -> Vec<Mismatch> {
    let declared: Vec<Declared> = declared.iter().map(|d| Declared::parse(d)).collect();
    let has = |d: &Declared| declared.contains(d);
    let secrets = declared.iter().any(|d| matches!(d, Declared::Secrets(_)));
    let mut found = Vec::new();
    let mut push = |severity, message: String| found.push(Mismatch { severity, message });
    for (need, word, is_granted, grant) in [
        (Declared::Network, "network", granted.network, "`network:` origins"),
        (Declared::Databases, "databases", granted.databases, "`databases:`"),
        (Declared::Files, "files", granted.files, "`files:`"),
        (Declared::Artifacts, "artifacts", granted.artifacts, "`artifacts: true`"),
    ] {
        match (has(&need), is_granted) {
            (true, false) => push(
                Severity::Error,
                format!("plugin `{name}` needs {word} and the step grants none: give the step {grant}"),
            ),
            (false, true) => push(
                Severity::Warning,
                format!("the step grants {grant} that plugin `{name}` does not declare: remove the grant, or declare `{word}` in the plugin's describe()"),
            ),
            _ => {}
        }
    }
    if granted.secrets && !secrets {
        push(
            Severity::Warning,
            format!("the step grants `secrets:` that plugin `{name}` does not declare: remove them, or declare `secrets:<use>` in the plugin's describe()"),
        );
    }
    for unit in units {
        let declares = declared.iter().any(|d| matches!(d, Declared::Unknown(text) if text == unit));
        match (declares, granted.units.contains(*unit)) {
            (true, false) => push(
                Severity::Error,
                format!("plugin `{name}` needs {unit} and the step grants none: give the step `{unit}:`"),
            ),
            (false, true) => push(
                Severity::Warning,
                format!("the step grants `{unit}:` that plugin `{name}` does not declare: remove the grant, or declare `{unit}` in the plugin's describe()"),
            ),
            _ => {}
        }
    }
    for unknown in declared.iter().filter_map(|d| match d {
        Declared::Unknown(text) if !units.contains(&text.as_str()) => Some(text),
        _ => None,
    }) {
        let mut known = vec!["network", "databases", "secrets:<use>", "files", "artifacts"];
        known.extend(units);
        push(
            Severity::Warning,
            format!("plugin `{name}` declares `{unknown}`, which is not a capability ({})", known.join(", ")),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_need_without_its_grant_is_an_error_and_a_grant_without_a_declaration_a_warning() {
        let none = Granted::default();
        let found = check("http-check", &declared(&["network"]), none, &[]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, Severity::Error);
        assert!(found[0].message.contains("needs network"), "{}", found[0]);

        let all = Granted {
            network: true,
            secrets: true,
            databases: true,
            files: true,
            artifacts: true,
            units: Default::default(),
        };
        let found = check("misbehave", &[], all, &[]);
        assert_eq!(found.iter().filter(|m| m.severity == Severity::Warning).count(), 5, "{found:?}");
        assert!(found.iter().all(|m| m.severity == Severity::Warning));
    }

    #[test]
    fn matching_declarations_and_grants_say_nothing_and_secrets_are_optional() {
        let granted = Granted { network: true, ..Granted::default() };
        assert_eq!(check("notify", &declared(&["network", "secrets:url", "secrets:body"]), granted, &[]), vec![]);
        let granted = Granted { files: true, artifacts: true, ..Granted::default() };
        assert_eq!(check("compliance-audit", &declared(&["files", "artifacts"]), granted, &[]), vec![]);
    }

    #[test]
    fn an_unknown_capability_is_named() {
        let found = check("x", &declared(&["netwrok"]), Granted::default(), &[]);
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("`netwrok`"), "{}", found[0]);
    }

    #[test]
    fn a_registered_capability_is_declared_and_granted_by_its_name() {
        let redis = Granted { units: ["redis".to_string()].into(), ..Granted::default() };
        assert_eq!(check("cache-purge", &declared(&["redis"]), redis.clone(), &["redis"]), vec![]);
        let found = check("cache-purge", &declared(&["redis"]), Granted::default(), &["redis"]);
        assert!(found[0].severity == Severity::Error && found[0].message.contains("needs redis"), "{found:?}");
        let found = check("http-check", &[], redis, &["redis"]);
        assert!(found[0].severity == Severity::Warning && found[0].message.contains("`redis:`"), "{found:?}");
    }
}
