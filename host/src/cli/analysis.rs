//! `gantry analysis replay`: a run's recorded canary readings judged again under changed rules.

use crate::analysis::{self, Decided, Replay};
use clap::Subcommand;
use std::path::PathBuf;

/// Canary analysis over recorded runs.
#[derive(Debug, Subcommand)]
pub(crate) enum AnalysisCommand {
    /// Judge a run's recorded readings again with changed rules, offline, and show what they
    /// would have decided and at which stage.
    Replay {
        /// Run id (see `gantry runs`).
        id: String,
        /// Rules by metric name, as under a metric's `rules:` (`error-rate: { failure: { op: ">", value: 0.005 } }`);
        /// metrics it does not name keep the rules they were read under.
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl AnalysisCommand {
    pub(crate) async fn execute(self, state: Option<&str>) -> anyhow::Result<u8> {
        let AnalysisCommand::Replay { id, rules, json } = self;
        let store = super::pipeline::store(state).await?;
        let journal = store.read(&id).await?;
        let readings = analysis::readings(&journal.records);
        if readings.is_empty() {
            anyhow::bail!("run {id} recorded no canary readings (no step read an analysis metric)");
        }
        let spec = match &rules {
            Some(path) => analysis::load_spec(path, &readings)?,
            None => analysis::Spec::new(),
        };
        let replay = analysis::replay(&readings, &spec);
        if json {
            println!("{}", serde_json::to_string(&serde_json::json!({"run": id, "replay": replay}))?);
        } else {
            print(&id, readings.len(), &replay);
        }
        Ok(0)
    }
}

fn print(id: &str, count: usize, replay: &Replay) {
    // A gate metric has a watch per stage; people read it as one metric.
    let mut metrics: Vec<(&str, &str)> = Vec::new();
    for w in &replay.watches {
        if !metrics.contains(&(w.step.as_str(), w.metric.as_str())) {
            metrics.push((w.step.as_str(), w.metric.as_str()));
        }
    }
    println!("run {id}: {count} readings of {} metrics", metrics.len());
    for (step, metric) in metrics {
        let own: Vec<&analysis::WatchReplay> =
            replay.watches.iter().filter(|w| w.step == step && w.metric == metric).collect();
        let kind = if own[0].background { "background".to_string() } else { format!("gate at {} stages", own.len()) };
        let rules = if own.iter().any(|w| w.changed) { "changed rules" } else { "rules as recorded" };
        let readings: usize = own.iter().map(|w| w.readings).sum();
        let first = |pick: fn(&analysis::WatchReplay) -> &Option<Decided>| {
            own.iter().filter_map(|w| pick(w).as_ref()).min_by_key(|d| d.at_ms).cloned()
        };
        println!("  {step}/{metric} ({kind}, {readings} readings, {rules})");
        println!("    recorded: {}", outcome(&first(|w| &w.recorded)));
        println!("    replayed: {}", outcome(&first(|w| &w.replayed)));
    }
    let verdict = match (&replay.recorded, &replay.replayed) {
        (_, Some(f)) => {
            format!("with these rules the first decision would have been: {}/{} {}", f.step, f.metric, f.decided.describe())
        }
        (Some(f), None) => format!(
            "with these rules no metric decides within the recorded readings; as run, {}/{} {}",
            f.step,
            f.metric,
            f.decided.describe()
        ),
        (None, None) => "with these rules no metric decides, as in the run".to_string(),
    };
    println!("{verdict}");
}

fn outcome(decided: &Option<Decided>) -> String {
    decided.as_ref().map(Decided::describe).unwrap_or_else(|| "running to the last reading".into())
}
