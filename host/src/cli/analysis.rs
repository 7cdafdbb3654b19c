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
    println!("run {id}: {count} readings in {} watches", replay.watches.len());
    for w in &replay.watches {
        let kind = if w.background { "background" } else { "gate" };
        let rules = if w.changed { "changed rules" } else { "rules as recorded" };
        println!("  {}/{} ({kind}, {} readings, {rules})", w.step, w.metric, w.readings);
        println!("    recorded: {}", outcome(&w.recorded));
        println!("    replayed: {}", outcome(&w.replayed));
    }
    let verdict = match (&replay.recorded, &replay.replayed) {
        (_, Some((which, d))) => format!("with these rules the first decision would have been: {which} {}", d.describe()),
        (Some((which, d)), None) => {
            format!("with these rules no metric decides within the recorded readings; as run, {which} {}", d.describe())
        }
        (None, None) => "with these rules no metric decides, as in the run".to_string(),
    };
    println!("{verdict}");
}

fn outcome(decided: &Option<Decided>) -> String {
    decided.as_ref().map(Decided::describe).unwrap_or_else(|| "running to the last reading".into())
}
