//! The pre-flight: before a run changes anything, each step reads what it will depend on, through
//! its own grants for reading only ([`crate::capability::Grants::for_preflight`]). A failed check stops the run with
//! nothing to undo; the journal keeps what each step read.

use super::{render_outputs, Ctx, Event};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the pre-flight found in the way: each failed check or pre-flight, as `step: what`.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Empty when every step may go ahead.
    pub failures: Vec<String>,
}

/// Asks every step of the plan, in plan order, what it depends on; journals each answer (queued:
/// a run stopped part-way through reads again when resumed, so none needs to be durable alone).
pub(super) async fn run(ctx: &Arc<Ctx>) -> Found {
    let mut found = Found::default();
    for step in &ctx.plan.steps {
        let input = render_outputs(&step.input, &BTreeMap::new());
        if input.to_string().contains("${{") {
            let reason = "its input needs an earlier step's outputs".to_string();
            ctx.record(Event::PreflightSkipped { step: Some(step.id.clone()), reason });
            continue;
        }
        let mut call = ctx.call(step, ctx.context(&step.id, 1, input, BTreeMap::new()));
        call.grants = call.grants.for_preflight();
        (call.checkpoints, call.approvals) = (None, None);
        let answer = ctx.plugins[&step.id].preflight(&call).await;
        let event = match answer {
            Ok(None) => {
                let reason = "its plugin has none (built for a contract before 0.3.4)".to_string();
                Event::PreflightSkipped { step: Some(step.id.clone()), reason }
            }
            Ok(Some(checks)) => {
                let failed = checks.iter().filter(|c| !c.passed);
                found.failures.extend(failed.map(|c| format!("{}: {}: {}", step.id, c.name, c.answer)));
                Event::PreflightChecked { step: step.id.clone(), checks, error: None }
            }
            Err(e) => {
                found.failures.push(format!("{}: {e}", step.id));
                Event::PreflightChecked { step: step.id.clone(), checks: Vec::new(), error: Some(e.to_string()) }
            }
        };
        ctx.record(event);
    }
    found
}
