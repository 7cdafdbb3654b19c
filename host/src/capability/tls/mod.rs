//! TLS, as a capability unit: the `host:port` targets a step may shake hands with (`tls:
//! ["the7space.example:443"]`) and a CA file its probes trust besides the public roots (`tls_ca:`,
//! relative to the pipeline file). The host connects, shakes hands and closes ([`handshake`]): no
//! application data is sent, and the target's addresses pass the rules HTTP's do.

mod handshake;

use super::probe::TlsTarget;
use super::unit::{
    CallContext, CallState, Capability, Declarations, GrantInUse, GrantLine, Grammar, Granted, SecretBinds,
    StepFields, UnitProblem, parse_each,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use wasmtime::component::{HasSelf, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "tls-unit",
        imports: { default: async },
    });
}

/// The TLS capability.
pub struct Tls;

/// A step's TLS grant, as the plan keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsGrant {
    /// Targets the step may shake hands with.
    pub targets: Vec<TlsTarget>,
    /// A CA file (PEM) its probes trust besides the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl Capability for Tls {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn grammar(&self) -> Grammar {
        Grammar {
            step: json!({
                "type": "array",
                "items": {"type": "string"},
                "description": "Targets the step may shake hands with (TLS probes): `host:port`, 443 when left out, `*.` for names below one.\n\nExample: `tls: [\"the7space.example:443\", \"db.internal:5432\"]`"
            }),
            declaration: None,
            also: vec![(
                "tls_ca",
                json!({
                    "type": "string",
                    "description": "A PEM file of CA certificates the step's TLS probes trust besides the public roots, relative to the pipeline file."
                }),
            )],
            about: "targets a step may shake hands with",
            origins: vec![],
        }
    }

    fn grant(&self, step: &StepFields, _: &Declarations, _: &dyn SecretBinds) -> Result<Granted, Vec<UnitProblem>> {
        let mut problems = Vec::new();
        let targets = match step.get("tls") {
            Some(written) => parse_each(written.field, written.value, TlsTarget::parse, &mut problems),
            None => Vec::new(),
        };
        let ca = step.get("tls_ca").and_then(|written| {
            let path = step.base.join(written.value.as_str().unwrap_or_default());
            if path.is_file() {
                Some(path)
            } else {
                problems.push(UnitProblem::new(written.field, format!("{} is not a file", path.display())));
                None
            }
        });
        // A CA with nothing to verify is a grant someone meant to write and did not.
        let listed = step.get("tls").and_then(|w| w.value.as_array()).is_some_and(|t| !t.is_empty());
        if step.get("tls_ca").is_some() && !listed {
            problems.push(UnitProblem::new(
                step.field("tls_ca"),
                "a CA file without `tls:` targets is used by nothing: list the targets the step probes",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Granted::of((!targets.is_empty()).then_some(TlsGrant { targets, ca })))
    }

    fn recorded_before(&self, step: &Value) -> Option<Value> {
        let probes = step.get("probes")?;
        let targets = probes.get("tls").filter(|t| t.as_array().is_some_and(|a| !a.is_empty()))?;
        let mut grant = json!({ "targets": targets });
        if let Some(ca) = probes.get("ca") {
            grant["ca"] = ca.clone();
        }
        Some(grant)
    }

    fn describe(&self, grant: &Value) -> Vec<GrantLine> {
        let grant: TlsGrant = serde_json::from_value(grant.clone()).unwrap_or_default();
        let targets = grant.targets.iter().map(|t| GrantLine::same(t.to_string()));
        targets.chain(grant.ca.map(|ca| GrantLine::same(format!("trusting {}", ca.display())))).collect()
    }

    fn link(&self, linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
        bindings::TlsUnit::add_to_linker::<CallState, HasSelf<handshake::TlsCall>>(linker, |s| s.slot())
    }

    fn prepare(&self, grant: Option<&GrantInUse>, call: &CallContext, state: &mut CallState) -> Result<(), String> {
        let grant = match grant {
            Some(g) => serde_json::from_value(g.grant.clone()).map_err(|e| format!("the plan's TLS grant does not read: {e}"))?,
            None => TlsGrant::default(),
        };
        state.insert(handshake::TlsCall { grant, call: call.clone() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn step(base: &std::path::Path, fields: Value) -> StepFields {
        let fields: BTreeMap<String, Value> = serde_json::from_value(fields).unwrap();
        StepFields::new("steps[1]", base, fields)
    }

    #[test]
    fn targets_and_a_ca_file_beside_the_pipeline_are_granted_and_described() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        let written = step(dir.path(), json!({"tls": ["the7space.example"], "tls_ca": "ca.pem"}));
        let g = Tls.grant(&written, &Declarations::default(), &BTreeMap::new()).unwrap();
        let lines: Vec<String> = Tls.describe(&g.grant).into_iter().map(|l| l.review).collect();
        assert_eq!(lines, ["the7space.example:443".to_string(), format!("trusting {}", dir.path().join("ca.pem").display())]);
        let nothing = Tls.grant(&step(dir.path(), json!({"tls": []})), &Declarations::default(), &BTreeMap::new()).unwrap();
        assert!(nothing.is_nothing());
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let written = step(dir.path(), json!({"tls": ["https://x.example", "ok.example"], "tls_ca": "missing.pem"}));
        let found = Tls.grant(&written, &Declarations::default(), &BTreeMap::new()).unwrap_err();
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["steps[1].tls[0]", "steps[1].tls_ca"], "{found:?}");
        assert!(found[1].message.ends_with("missing.pem is not a file"), "{found:?}");
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        let found = Tls.grant(&step(dir.path(), json!({"tls_ca": "ca.pem"})), &Declarations::default(), &BTreeMap::new()).unwrap_err();
        assert!(found[0].message.contains("used by nothing"), "{found:?}");
    }

    #[test]
    fn a_plan_recorded_before_the_unit_reads_into_its_grant() {
        let old = json!({"probes": {"tls": ["a.example:443"], "ca": "/etc/ca.pem", "dns": ["a.example"]}});
        let grant: TlsGrant = serde_json::from_value(Tls.recorded_before(&old).unwrap()).unwrap();
        assert_eq!((grant.targets[0].to_string(), grant.ca), ("a.example:443".to_string(), Some("/etc/ca.pem".into())));
        assert_eq!(Tls.recorded_before(&json!({"probes": {"dns": ["a.example"]}})), None);
    }
}
