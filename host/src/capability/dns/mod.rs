//! DNS, as a capability unit: the names a step may look up (`dns: [the7space.example,
//! "*.the7space.example"]`) and the resolver its lookups ask (`resolver: 10.0.0.2:53`, the
//! system's when left out). Lookups go straight to that resolver with no cache ([`lookup`]), and
//! an answer holding a restricted address is refused whole unless the step's `addresses:` allow it.

mod lookup;

use super::probe::{parse_resolver, NamePattern};
use super::unit::{
    CallContext, CallState, Capability, Declarations, GrantInUse, GrantLine, Grammar, Granted, SecretBinds,
    StepFields, UnitProblem, parse_each,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use wasmtime::component::{HasSelf, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "dns-unit",
        imports: { default: async },
    });
}

/// The DNS capability.
pub struct Dns;

/// A step's DNS grant, as the plan keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsGrant {
    /// Names the step may look up.
    pub names: Vec<NamePattern>,
    /// The resolver its lookups ask; the system's (`/etc/resolv.conf`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<SocketAddr>,
}

impl Capability for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn grammar(&self) -> Grammar {
        Grammar {
            step: json!({
                "type": "array",
                "items": {"type": "string"},
                "description": "Names the step may look up in DNS; `*.example.com` covers the names below it.\n\nExample: `dns: [the7space.example, \"*.the7space.example\"]`"
            }),
            declaration: None,
            also: vec![(
                "resolver",
                json!({
                    "type": "string",
                    "description": "The resolver the step's lookups ask, `IP[:port]`; the system's (`/etc/resolv.conf`) when unset."
                }),
            )],
            about: "names a step may look up",
            origins: vec![],
        }
    }

    fn grant(&self, step: &StepFields, _: &Declarations, _: &dyn SecretBinds) -> Result<Granted, Vec<UnitProblem>> {
        let mut problems = Vec::new();
        let names = match step.get("dns") {
            Some(written) => parse_each(written.field, written.value, NamePattern::parse, &mut problems),
            None => Vec::new(),
        };
        let resolver = step.get("resolver").and_then(|written| {
            let text = written.value.as_str().map(str::to_string).unwrap_or_else(|| written.value.to_string());
            parse_resolver(&text).map_err(|m| problems.push(UnitProblem::new(written.field, m))).ok()
        });
        // A resolver with nothing to ask is a grant someone meant to write and did not.
        let listed = step.get("dns").and_then(|w| w.value.as_array()).is_some_and(|names| !names.is_empty());
        if step.get("resolver").is_some() && !listed {
            problems.push(UnitProblem::new(
                step.field("resolver"),
                "a resolver without `dns:` names is asked nothing: list the names the step looks up",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Granted::of((!names.is_empty()).then_some(DnsGrant { names, resolver })))
    }

    fn recorded_before(&self, step: &Value) -> Option<Value> {
        let probes = step.get("probes")?;
        let names = probes.get("dns").filter(|n| n.as_array().is_some_and(|a| !a.is_empty()))?;
        let mut grant = json!({ "names": names });
        if let Some(resolver) = probes.get("resolver") {
            grant["resolver"] = resolver.clone();
        }
        Some(grant)
    }

    fn describe(&self, grant: &Value) -> Vec<GrantLine> {
        let grant: DnsGrant = serde_json::from_value(grant.clone()).unwrap_or_default();
        let names = grant.names.iter().map(|n| GrantLine::same(n.to_string()));
        names.chain(grant.resolver.map(|r| GrantLine::same(format!("asking {r}")))).collect()
    }

    fn link(&self, linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
        bindings::DnsUnit::add_to_linker::<CallState, HasSelf<lookup::DnsCall>>(linker, |s| s.slot())
    }

    fn prepare(&self, grant: Option<&GrantInUse>, call: &CallContext, state: &mut CallState) -> Result<(), String> {
        let grant = match grant {
            Some(g) => serde_json::from_value(g.grant.clone()).map_err(|e| format!("the plan's DNS grant does not read: {e}"))?,
            None => DnsGrant::default(),
        };
        state.insert(lookup::DnsCall { grant, call: call.clone() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn step(fields: Value) -> StepFields {
        let fields: BTreeMap<String, Value> = serde_json::from_value(fields).unwrap();
        StepFields::new("steps[0]", ".", fields)
    }

    #[test]
    fn names_and_a_resolver_are_granted_and_described() {
        let g = Dns.grant(&step(json!({"dns": ["*.The7Space.example"], "resolver": "127.0.0.1:5353"})), &Declarations::default(), &BTreeMap::new()).unwrap();
        let lines: Vec<String> = Dns.describe(&g.grant).into_iter().map(|l| l.review).collect();
        assert_eq!(lines, ["*.the7space.example", "asking 127.0.0.1:5353"]);
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let found = Dns
            .grant(&step(json!({"dns": ["ok.example", "a.*.example"], "resolver": "nowhere"})), &Declarations::default(), &BTreeMap::new())
            .unwrap_err();
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["steps[0].dns[1]", "steps[0].resolver"], "{found:?}");
        let found = Dns.grant(&step(json!({"resolver": "10.0.0.2"})), &Declarations::default(), &BTreeMap::new()).unwrap_err();
        assert!(found[0].message.contains("asked nothing"), "{found:?}");
    }

    #[test]
    fn a_plan_recorded_before_the_unit_reads_into_its_grant() {
        let old = json!({"probes": {"tls": ["a.example:443"], "dns": ["a.example"], "resolver": "10.0.0.2:53"}});
        let grant: DnsGrant = serde_json::from_value(Dns.recorded_before(&old).unwrap()).unwrap();
        assert_eq!(grant.resolver, Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(grant.names[0].to_string(), "a.example");
        assert_eq!(Dns.recorded_before(&json!({"probes": {"tls": ["a.example:443"]}})), None);
        assert_eq!(Dns.recorded_before(&json!({"id": "a"})), None);
    }
}
