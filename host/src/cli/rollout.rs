//! `gantry run --entity all` (or `a,b,c`): the pipeline for many entities, in
//! the pipeline's waves. The entities of a wave run at once, each as an
//! ordinary run (its own plan, lock, journal, secrets) recorded with the
//! rollout's id; a wave starts only when the one before it has ended, and not
//! at all once the failure budget is spent or a run waits for a person.

use super::pipeline::{run_entity, EntityRun, RunArgs};
use crate::pipeline::Loaded;
use crate::rollout;
use crate::run::store::RunStore;
use std::sync::Arc;

/// How one entity of a rollout ended.
#[derive(Debug, Clone, serde::Serialize)]
struct Outcome {
    entity: String,
    wave: usize,
    /// Exit code of its run, or `None` when its wave never started.
    exit: Option<u8>,
    run_id: Option<String>,
}

/// Exit codes from most to least severe: a rollout exits with the worst of its runs.
const SEVERITY: [u8; 7] = [3, 6, 1, 7, 2, 4, 5];

/// Runs the pipeline for each selected entity, wave by wave; exit 0 when every run succeeded.
pub(crate) async fn run(loaded: &Loaded, args: &RunArgs, store: Arc<dyn RunStore>) -> anyhow::Result<u8> {
    let declared: Vec<String> = loaded.pipeline.entities.keys().cloned().collect();
    let selected = rollout::select(&args.entity, &declared).map_err(anyhow::Error::msg)?;
    let plan = &loaded.checked.rollout;
    let waves = plan.waves_of(&selected);
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let id = format!("rollout-{ms}-{}", std::process::id());
    eprintln!(
        "rollout {id}: {} entities in {} waves, failure budget {}",
        selected.len(),
        waves.len(),
        plan.failure_budget
    );
    let mut outcomes: Vec<Outcome> = Vec::new();
    let (mut failed, mut stopped) = (0u32, None::<String>);
    for (i, wave) in waves.iter().enumerate() {
        if let Some(why) = &stopped {
            eprintln!("rollout {id}: wave {} ({}) not started: {why}", i + 1, wave.join(", "));
            outcomes.extend(wave.iter().map(|e| Outcome { entity: e.clone(), wave: i + 1, exit: None, run_id: None }));
            continue;
        }
        eprintln!("rollout {id}: wave {}: {}", i + 1, wave.join(", "));
        let runs = wave.iter().map(|entity| run_entity(loaded, args, entity, store.clone(), Some(&id)));
        let ended = futures::future::join_all(runs).await;
        for (entity, ended) in wave.iter().zip(ended) {
            let EntityRun { code, run_id } = ended.unwrap_or_else(|e| {
                eprintln!("error: [{entity}] {e:#}");
                EntityRun { code: super::EXIT_USAGE, run_id: None }
            });
            if matches!(code, 1..=3 | 6 | 7) {
                failed += 1;
            }
            outcomes.push(Outcome { entity: entity.clone(), wave: i + 1, exit: Some(code), run_id });
        }
        let waiting: Vec<&str> =
            outcomes.iter().filter(|o| matches!(o.exit, Some(4 | 5))).map(|o| o.entity.as_str()).collect();
        if failed >= plan.failure_budget {
            stopped = Some(format!("{failed} entities failed, failure budget {}", plan.failure_budget));
        } else if !waiting.is_empty() {
            stopped = Some(format!("waiting for a person ({})", waiting.join(", ")));
        }
    }
    summarise(&id, &outcomes, args.json);
    let worst = SEVERITY.into_iter().find(|code| outcomes.iter().any(|o| o.exit == Some(*code)));
    Ok(worst.unwrap_or(if outcomes.iter().any(|o| o.exit.is_none()) { super::EXIT_STEP_FAILED } else { 0 }))
}

/// One line per entity (or one JSON object for the rollout).
fn summarise(id: &str, outcomes: &[Outcome], json: bool) {
    if json {
        println!("{}", serde_json::json!({ "rollout": id, "entities": outcomes }));
        return;
    }
    println!("rollout {id}:");
    for o in outcomes {
        let status = match o.exit {
            None => "not started".to_string(),
            Some(0) => "succeeded".to_string(),
            Some(code) => format!("exit {code}"),
        };
        println!("  wave {}  {:<24} {:<12} {}", o.wave, o.entity, status, o.run_id.as_deref().unwrap_or("-"));
    }
}
