//! A program that embeds gantry-host and adds a capability of its own: change tickets.
//!
//! The pipeline declares ticket systems (`tickets: { itsm: { url, token, project } }`) and a step
//! names one (`tickets: [itsm]`); the plugin calls `acme:tickets/api.open(system, title)` and gets
//! a ticket id, while this host holds the URL and the token. The capability is registered twice,
//! once for the grammar (`pipeline::load_with`) and once for the sandbox
//! (`Runtime::builder().capabilities`), from one registry.
//!
//! ```text
//! change-ticket PIPELINE [ENVIRONMENT]
//! ```
//!
//! Exits with the run's exit code (0 when it succeeded), 2 when the pipeline is invalid.

use gantry_host::build::BuildOptions;
use gantry_host::capability::unit::{
    CallContext, CallState, Declarations, Grammar, GrantInUse, GrantLine, Granted, RequestRecord, SecretBinds,
    StepFields, UnitProblem,
};
use gantry_host::capability::{Capabilities, Capability};
use gantry_host::sandbox::Runtime;
use gantry_host::{pipeline, plan, run};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "ticket-user",
        imports: { default: async },
    });
}

use bindings::acme::tickets::api;

/// The change-ticket capability.
struct Tickets;

/// A ticket system as the pipeline declares it.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SystemDef {
    /// Its origin, e.g. `https://itsm.internal`.
    url: String,
    /// Name of a declared secret bound to the URL's origin: the token the host sends.
    token: String,
    /// The project tickets are opened in.
    project: String,
}

/// A granted system, as the plan keeps it.
#[derive(Clone, Serialize, Deserialize)]
struct System {
    url: String,
    token: String,
    project: String,
}

/// The state of one call: the granted systems and their tokens.
struct TicketCall {
    systems: BTreeMap<String, System>,
    tokens: BTreeMap<String, String>,
    call: CallContext,
    client: reqwest::Client,
}

impl Capability for Tickets {
    fn name(&self) -> &'static str {
        "tickets"
    }

    fn grammar(&self) -> Grammar {
        Grammar {
            step: serde_json::json!({"type": "array", "items": {"type": "string"}}),
            declaration: Some(Grammar::schema_of::<SystemDef>()),
            also: vec![],
            about: "Change-ticket systems steps may open tickets in",
            origins: vec![],
        }
    }

    fn grant(
        &self,
        step: &StepFields,
        declared: &Declarations,
        secrets: &dyn SecretBinds,
    ) -> Result<Granted, Vec<UnitProblem>> {
        let field = step.field("tickets");
        let names: Vec<String> =
            serde_json::from_value(step.get("tickets").map(|w| w.value.clone()).unwrap_or_default())
                .map_err(|_| vec![UnitProblem::new(&field, "a list of declared ticket system names")])?;
        let (mut systems, mut problems) = (BTreeMap::new(), Vec::new());
        for (i, name) in names.iter().enumerate() {
            let Some(written) = declared.get(name) else {
                problems.push(UnitProblem::new(
                    format!("{field}[{i}]"),
                    format!("ticket system `{name}` is not declared in `tickets:` (declared: {})", declared.names()),
                ));
                continue;
            };
            let def: SystemDef = match serde_json::from_value(written.value.clone()) {
                Ok(def) => def,
                Err(e) => {
                    problems.push(UnitProblem::new(written.field, e.to_string()));
                    continue;
                }
            };
            let origin = url::Url::parse(&def.url).map(|u| u.origin().ascii_serialization());
            match (&origin, secrets.bound_to(&def.token)) {
                (Err(e), _) => problems.push(UnitProblem::new(format!("{}.url", written.field), e.to_string())),
                (_, None) => problems.push(UnitProblem::new(
                    format!("{}.token", written.field),
                    format!("secret `{}` is not declared", def.token),
                )),
                (Ok(origin), Some(bound)) if !bound.iter().any(|b| b.trim_end_matches('/') == origin) => {
                    problems.push(UnitProblem::new(
                        format!("{}.token", written.field),
                        format!("secret `{}` is not bound to {origin}", def.token),
                    ))
                }
                _ => {
                    systems.insert(name.clone(), System { url: def.url, token: def.token, project: def.project });
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let secrets = systems.values().map(|s| s.token.clone()).collect();
        Ok(Granted { grant: serde_json::to_value(&systems).unwrap_or_default(), secrets })
    }

    fn describe(&self, grant: &Value) -> Vec<GrantLine> {
        let systems: BTreeMap<String, System> = serde_json::from_value(grant.clone()).unwrap_or_default();
        systems
            .iter()
            .map(|(name, s)| GrantLine {
                review: format!("{name} = {}, project {}", s.url, s.project),
                promotion: format!("{name} project {}", s.project),
            })
            .collect()
    }

    fn link(&self, linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
        api::add_to_linker::<CallState, HasSelf<TicketCall>>(linker, |s| s.slot())
    }

    fn prepare(&self, grant: Option<&GrantInUse>, call: &CallContext, state: &mut CallState) -> Result<(), String> {
        let (systems, tokens) = match grant {
            Some(g) => (serde_json::from_value(g.grant.clone()).map_err(|e| e.to_string())?, g.secrets.clone()),
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let client = reqwest::Client::builder().no_proxy().build().map_err(|e| e.to_string())?;
        state.insert(TicketCall { systems, tokens, call: call.clone(), client });
        Ok(())
    }
}

impl api::Host for TicketCall {
    async fn open(&mut self, system: String, title: String) -> Result<String, String> {
        let Some(s) = self.systems.get(&system).cloned() else {
            return Err(format!("ticket system `{system}` is not granted to the step"));
        };
        let started = Instant::now();
        let url = format!("{}/api/tickets", s.url.trim_end_matches('/'));
        let body = serde_json::json!({"project": s.project, "title": title, "step": self.call.step}).to_string();
        let token = self.tokens.get(&s.token).cloned().unwrap_or_default();
        let sent = self
            .client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .timeout(self.call.request_budget())
            .send()
            .await;
        let answer = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                match serde_json::from_str::<Value>(&text).ok().and_then(|v| v["id"].as_str().map(String::from)) {
                    Some(id) if status < 300 => Ok((status, id)),
                    _ => Err((Some(status), format!("the ticket system answered {status}: {text}"))),
                }
            }
            Err(e) => Err((None, format!("the ticket system is unreachable: {e}"))),
        };
        let (status, reason) = match &answer {
            Ok((status, _)) => (Some(*status), None),
            Err((status, why)) => (*status, Some(self.call.redactor.redact(why))),
        };
        self.call.record(RequestRecord {
            step: self.call.step.clone(),
            method: "POST".into(),
            origin: url::Url::parse(&s.url).map(|u| u.origin().ascii_serialization()).unwrap_or_default(),
            path: "/api/tickets".into(),
            status,
            bytes: 0,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            allowed: true,
            reason: reason.clone(),
            action: Some("OpenTicket".into()),
        });
        answer.map(|(_, id)| id).map_err(|_| reason.unwrap_or_default())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let file = args.next().ok_or_else(|| anyhow::anyhow!("usage: change-ticket PIPELINE [ENVIRONMENT]"))?;
    let environment = args.next().unwrap_or_else(|| "development".into());
    // One registry: the grammar the pipeline is read with and the capabilities the sandbox links.
    let capabilities = Capabilities::builtin().with(Tickets)?;
    let loaded = match pipeline::load_with(file.as_ref(), &capabilities) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            return Ok(ExitCode::from(2));
        }
    };
    let plan = plan::plan(&loaded, &environment, "default", &BuildOptions::default())?;
    let workdir = std::path::Path::new(&file).parent().unwrap_or(std::path::Path::new("."));
    let store = run::store::open(None, workdir).await?;
    let session = run::Session::start(store, &plan).await?;
    let runtime = Runtime::builder().capabilities(capabilities).build()?;
    let result = run::run(&runtime, &plan, &session, &run::RunOptions { jobs: 2, ..Default::default() }, None).await?;
    let id = session.run_id().to_string();
    session.close().await?;
    println!("run {id}: exit {}", result.exit_code());
    Ok(ExitCode::from(result.exit_code()))
}
