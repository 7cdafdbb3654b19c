//! What changed between two plans, as a reviewer reads it before approving: plugins by digest,
//! grants (origins, address ranges, secrets by name and binding, databases, TLS targets, DNS
//! names, files, artifacts), limits, retries
//! and inputs, step by step. `gantry plan --diff <run-id>` prints it against a recorded run.

use crate::plan::{Plan, PlannedStep};
use std::collections::BTreeSet;
use std::fmt;

/// What part of a step changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aspect {
    /// The pipeline file, by digest.
    Pipeline,
    /// The step itself.
    Step,
    /// Its plugin, by digest.
    Plugin,
    /// A granted origin.
    Origin,
    /// A restricted address range names may resolve to.
    Address,
    /// A granted secret: name, source and the origins it is bound to.
    Secret,
    /// A granted database: where, as whom, TLS, read-only, and its password's secret.
    Database,
    /// A granted directory.
    File,
    /// The writable `/artifacts` directory.
    Artifacts,
    /// Resource limits.
    Limits,
    /// Retry policy.
    Retry,
    /// The `with:` input.
    Input,
    /// A grant of a registered capability, by its name (`redis`).
    #[serde(untagged)]
    Unit(String),
}

/// Whether it appeared, went, or is different.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sign {
    /// Only in the newer plan.
    Added,
    /// Only in the older plan.
    Removed,
    /// In both, different.
    Changed,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Change {
    /// Step id.
    pub step: String,
    /// What part of it.
    pub aspect: Aspect,
    /// How.
    pub sign: Sign,
    /// The value (or `old → new`).
    pub detail: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.sign {
            Sign::Added => '+',
            Sign::Removed => '-',
            Sign::Changed => '~',
        };
        write!(f, "{sign} {}: {} {}", self.step, self.aspect, self.detail)
    }
}

/// What is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Everything a reviewer reads, secrets with their sources.
    Review,
    /// What must match for a promotion: plugins, grants (secrets by name), limits; not inputs.
    Promotion,
}

/// What a step is granted, one line per grant with its aspect, as a reviewer reads it (secrets by
/// name, source and binding, never value; databases by where and as whom): the run report's grants
/// table shows the lines `plan --diff` compares, so a grant shown in one is shown in the other.
pub fn grants(step: &PlannedStep) -> Vec<(Aspect, String)> {
    facets(step, Scope::Review).into_iter().filter(|(aspect, _)| *aspect != Aspect::Plugin).collect()
}

impl fmt::Display for Aspect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Aspect::Unit(name) = self {
            return f.write_str(name);
        }
        let name = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        f.write_str(&name)
    }
}

/// Everything a step is granted or runs, as comparable lines per aspect.
fn facets(step: &PlannedStep, scope: Scope) -> Vec<(Aspect, String)> {
    let mut out = vec![(Aspect::Plugin, format!("{} sha256:{}", step.uses, step.sha256))];
    out.extend(step.network.grants().iter().map(|g| (Aspect::Origin, g.to_string())));
    out.extend(step.network.addresses().iter().map(|a| (Aspect::Address, a.to_string())));
    out.extend(step.secrets.iter().map(|s| {
        let bound: Vec<String> = s.bound_to.iter().map(ToString::to_string).collect();
        let detail = match scope {
            Scope::Review => {
                format!("{} from {} bound to [{}]", s.name, s.source, bound.join(", "))
            }
            Scope::Promotion => s.name.clone(),
        };
        (Aspect::Secret, detail)
    }));
    out.extend(step.databases.iter().map(|d| {
        let g = &d.grant;
        let tls = if g.tls == crate::capability::TlsMode::Require { "tls" } else { "no tls" };
        let access = if g.readonly { "read-only" } else { "read-write" };
        let detail = match scope {
            // Host and user differ between environments by design; what the grant allows may not.
            Scope::Promotion => format!("{} {access}, {tls}, password {}", g.name, d.password.name),
            Scope::Review => format!(
                "{} = {} as {}, {access}, {tls}, password {} from {}",
                g.name, g.location, g.user, d.password.name, d.password.source
            ),
        };
        (Aspect::Database, detail)
    }));
    for (name, granted) in &step.capabilities {
        out.extend(granted.lines.iter().map(|line| {
            let text = match scope {
                Scope::Review => &line.review,
                Scope::Promotion => &line.promotion,
            };
            (Aspect::Unit(name.clone()), text.clone())
        }));
        out.extend(granted.secrets.iter().map(|secret| {
            let detail = match scope {
                Scope::Review => format!("signs in with {} from {}", secret.name, secret.source),
                Scope::Promotion => format!("signs in with {}", secret.name),
            };
            (Aspect::Unit(name.clone()), detail)
        }));
    }
    out.extend(step.files.iter().map(|g| (Aspect::File, format!("{} as {}", g.host.display(), g.guest))));
    if step.artifacts {
        out.push((Aspect::Artifacts, "/artifacts".into()));
    }
    out
}

/// The differences from `before` to `after`, step by step in `after`'s order, then removed steps.
pub fn diff(before: &Plan, after: &Plan) -> Vec<Change> {
    compare(before, after, Scope::Review)
}

/// What keeps a run in `promoted` from being a promotion of the run that planned `proven`: a
/// different pipeline file, plugin digest, origin, address range, secret name, file or limit
/// (inputs and environment values may differ between environments).
pub fn promotion_differences(proven: &Plan, promoted: &Plan) -> Vec<Change> {
    let mut changes = Vec::new();
    if proven.source_digest != promoted.source_digest {
        let shown = |d: &Option<crate::pipeline::Digest>| d.as_ref().map_or("(unknown)".into(), ToString::to_string);
        let detail = format!("{} → {}", shown(&proven.source_digest), shown(&promoted.source_digest));
        changes.push(Change { step: "(pipeline)".into(), aspect: Aspect::Pipeline, sign: Sign::Changed, detail });
    }
    changes.extend(compare(proven, promoted, Scope::Promotion));
    changes
}

fn compare(before: &Plan, after: &Plan, scope: Scope) -> Vec<Change> {
    let mut changes = Vec::new();
    let change = |step: &str, aspect, sign, detail: String| Change { step: step.to_string(), aspect, sign, detail };
    for new in &after.steps {
        let Some(old) = before.step(&new.id) else {
            changes.push(change(&new.id, Aspect::Step, Sign::Added, String::new()));
            changes.extend(facets(new, scope).into_iter().map(|(a, d)| change(&new.id, a, Sign::Added, d)));
            continue;
        };
        let (was, now): (BTreeSet<_>, BTreeSet<_>) =
            (facets(old, scope).into_iter().collect(), facets(new, scope).into_iter().collect());
        if old.sha256 != new.sha256 || old.uses != new.uses {
            let detail = format!("{} sha256:{} → {} sha256:{}", old.uses, old.sha256, new.uses, new.sha256);
            changes.push(change(&new.id, Aspect::Plugin, Sign::Changed, detail));
        }
        let plugin = |(a, _): &&(Aspect, String)| *a != Aspect::Plugin;
        changes.extend(was.difference(&now).filter(plugin).map(|(a, d)| change(&new.id, a.clone(), Sign::Removed, d.clone())));
        changes.extend(now.difference(&was).filter(plugin).map(|(a, d)| change(&new.id, a.clone(), Sign::Added, d.clone())));
        let json = |v: Result<String, serde_json::Error>| v.unwrap_or_default();
        for (aspect, old_value, new_value) in [
            (Aspect::Limits, json(serde_json::to_string(&old.limits)), json(serde_json::to_string(&new.limits))),
            (Aspect::Retry, json(serde_json::to_string(&old.retry)), json(serde_json::to_string(&new.retry))),
            (Aspect::Input, old.input.to_string(), new.input.to_string()),
        ] {
            let compared = scope == Scope::Review || aspect == Aspect::Limits;
            if compared && old_value != new_value {
                changes.push(change(&new.id, aspect, Sign::Changed, format!("{old_value} → {new_value}")));
            }
        }
    }
    for old in before.steps.iter().filter(|s| after.step(&s.id).is_none()) {
        changes.push(change(&old.id, Aspect::Step, Sign::Removed, String::new()));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: serde_json::Value) -> Plan {
        serde_json::from_value(json).unwrap()
    }

    fn step(id: &str, sha: char, origins: &[&str], input: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "id": id, "name": null,
            "uses": {"source": {"kind": "registry", "reference": "r.example/a/b:1"}, "pin": null},
            "plugin": "/x.wasm", "sha256": sha.to_string().repeat(64), "needs": [], "condition": "success()",
            "network": crate::capability::NetworkPolicy::parse(origins).unwrap(), "secrets": [], "files": [], "artifacts": false,
            "limits": crate::pipeline::ResourceLimits::default(), "retry": crate::pipeline::RetryPolicy::default(),
            "continue_on_error": false, "rollback": false, "input": input
        })
    }

    #[test]
    fn a_diff_names_the_changed_plugin_the_added_origin_the_input_and_the_new_step() {
        let before = plan(serde_json::json!({"pipeline": "p", "environment": "staging", "entity": "e", "groups": [],
            "steps": [step("a", '1', &["https://a.example"], serde_json::json!({"x": 1})), step("gone", '1', &[], serde_json::json!({}))]}));
        let after = plan(serde_json::json!({"pipeline": "p", "environment": "production", "entity": "e", "groups": [],
            "steps": [step("a", '2', &["https://a.example", "https://b.example"], serde_json::json!({"x": 2})), step("new", '3', &["https://c.example"], serde_json::json!({}))]}));
        let lines: Vec<String> = diff(&before, &after).iter().map(ToString::to_string).collect();
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        assert!(has("~ a: plugin oci://r.example/a/b:1 sha256:111"), "{lines:#?}");
        assert!(has("+ a: origin https://b.example") && !has("origin https://a.example"), "{lines:#?}");
        assert!(has("~ a: input {\"x\":1} → {\"x\":2}"), "{lines:#?}");
        assert!(has("+ new: step") && has("+ new: origin https://c.example") && has("- gone: step"), "{lines:#?}");
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn a_database_grant_made_writable_shows_in_the_diff_and_stops_a_promotion_a_new_host_does_not() {
        use crate::capability::DatabaseGrant;
        let base = || {
            plan(serde_json::json!({"pipeline": "p", "environment": "staging", "entity": "e", "groups": [],
            "steps": [step("a", '1', &[], serde_json::json!({}))]}))
        };
        let with_db = |url: &str, readonly: bool| {
            let mut p = base();
            let password = serde_json::from_value(
                serde_json::json!({"name": "DB_PASSWORD", "source": "env:DB_PASSWORD", "bound_to": []}),
            )
            .unwrap();
            let grant = DatabaseGrant::for_test(url, readonly);
            p.steps[0].databases.push(crate::plan::PlannedDatabase { grant, password });
            p
        };
        let (staging, prod) =
            (with_db("postgres://db.staging:5432/app", true), with_db("postgres://db.prod:5432/app", true));
        let lines: Vec<String> = diff(&base(), &staging).iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["+ a: database app = postgres://db.staging:5432/app as deploy, read-only, tls, password DB_PASSWORD from env:DB_PASSWORD"]);
        assert!(promotion_differences(&staging, &prod).is_empty(), "another host is another environment");
        let writable = with_db("postgres://db.prod:5432/app", false);
        let refused: Vec<String> = promotion_differences(&staging, &writable).iter().map(ToString::to_string).collect();
        assert!(refused.iter().any(|l| l.contains("+ a: database app read-write")), "{refused:#?}");
    }

    #[test]
    fn a_unit_grant_shows_its_own_lines_in_the_diff_and_its_promotion_lines_decide() {
        use crate::capability::unit::GrantLine;
        use crate::plan::{PlannedGrant, PlannedSecret};
        let with = |host: &str, scope: &str| {
            let mut p = plan(serde_json::json!({"pipeline": "p", "environment": "staging", "entity": "e", "groups": [],
                "steps": [step("a", '1', &[], serde_json::json!({}))]}));
            let token: PlannedSecret = serde_json::from_value(
                serde_json::json!({"name": "TICKET_TOKEN", "source": "env:TICKET_TOKEN", "bound_to": []}),
            )
            .unwrap();
            let line = GrantLine { review: format!("main = {host}, {scope}"), promotion: format!("main {scope}") };
            let grant = PlannedGrant { grant: serde_json::json!({}), secrets: vec![token], lines: vec![line] };
            p.steps[0].capabilities.insert("tickets".into(), grant);
            p
        };
        let (staging, prod) = (with("https://t.staging", "comment"), with("https://t.prod", "comment"));
        let lines: Vec<String> = diff(&staging, &prod).iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["- a: tickets main = https://t.staging, comment", "+ a: tickets main = https://t.prod, comment"]);
        assert!(promotion_differences(&staging, &prod).is_empty(), "another host is another environment");
        let wider = with("https://t.prod", "close");
        let refused: Vec<String> = promotion_differences(&staging, &wider).iter().map(ToString::to_string).collect();
        assert!(refused.contains(&"+ a: tickets main close".to_string()), "{refused:#?}");
        let shown: Vec<String> = grants(&staging.steps[0]).iter().map(|(a, d)| format!("{a} {d}")).collect();
        assert_eq!(shown, ["tickets main = https://t.staging, comment", "tickets signs in with TICKET_TOKEN from env:TICKET_TOKEN"]);
    }

    #[test]
    fn probe_grants_show_in_the_diff_and_keep_a_promotion_apart() {
        let base = || {
            plan(serde_json::json!({"pipeline": "p", "environment": "staging", "entity": "e", "groups": [],
            "steps": [step("a", '1', &[], serde_json::json!({}))]}))
        };
        let mut probed = base();
        let units = crate::capability::Capabilities::builtin();
        let mut grant = |name: &str, value: serde_json::Value| {
            let lines = units.get(name).unwrap().describe(&value);
            let granted = crate::plan::PlannedGrant { grant: value, secrets: vec![], lines };
            probed.steps[0].capabilities.insert(name.into(), granted);
        };
        grant("tls", serde_json::json!({"targets": ["the7space.example"]}));
        grant("dns", serde_json::json!({"names": ["*.the7space.example"], "resolver": "10.0.0.2:53"}));
        let lines: Vec<String> = diff(&base(), &probed).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            ["+ a: dns *.the7space.example", "+ a: dns asking 10.0.0.2:53", "+ a: tls the7space.example:443"]
        );
        assert_eq!(promotion_differences(&probed, &base()).len(), 3, "a grant the proven run lacked");
    }
}
