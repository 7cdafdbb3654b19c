//! `gantry analysis replay`: a run's recorded canary readings and comparisons judged again under a
//! changed spec.

use crate::analysis::{self, Decided, Replay};
use clap::Subcommand;
use std::path::PathBuf;

/// Canary analysis over recorded runs.
#[derive(Debug, Subcommand)]
pub(crate) enum AnalysisCommand {
    /// Judge a run's recorded readings and canary-baseline samples again with a changed spec,
    /// offline, and show what they would have decided and at which stage.
    Replay {
        /// Run id (see `gantry runs`).
        id: String,
        /// The changed spec: `rules:` by metric name (as under a metric's `rules:`), `judge:` by
        /// comparison name (as under its `spec:`), `scores:`; what it leaves out stays as recorded.
        #[arg(long, value_name = "FILE")]
        spec: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl AnalysisCommand {
    pub(crate) async fn execute(self, state: Option<&str>) -> anyhow::Result<u8> {
        let AnalysisCommand::Replay { id, spec, json } = self;
        let store = super::pipeline::store(state).await?;
        let journal = store.read(&id).await?;
        let readings = analysis::readings(&journal.records);
        let compared = analysis::comparisons(&journal.records);
        if readings.is_empty() && compared.is_empty() {
            anyhow::bail!("run {id} recorded no canary readings or comparisons (no step ran an analysis)");
        }
        let spec = match &spec {
            Some(path) => analysis::load_spec(path, &readings, &compared)?,
            None => analysis::Spec::default(),
        };
        let replay = analysis::replay(&readings, &compared, &spec);
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
    let metrics = analysis::first_seen(replay.watches.iter().map(|w| (w.step.as_str(), w.metric.as_str())));
    println!("run {id}: {count} readings of {} metrics, {} comparisons", metrics.len(), replay.comparisons.len());
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
    for c in &replay.comparisons {
        let spec = if c.changed { "changed spec" } else { "spec as recorded" };
        let (n, m) = c.recorded.samples;
        println!("  {}/{} (canary {n} v baseline {m} samples, {spec})", c.step, c.name);
        println!("    recorded: {}", judgement(&c.recorded));
        println!("    replayed: {}", judgement(&c.replayed));
    }
    for s in &replay.scores {
        let word = |v: crate::analysis::Verdict| format!("{v:?}").to_lowercase();
        println!(
            "  {} score: recorded {:.0} ({}), replayed {:.0} ({})",
            s.step,
            s.recorded.0,
            word(s.recorded.1),
            s.replayed.0,
            word(s.replayed.1)
        );
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
    if !replay.watches.is_empty() {
        println!("{verdict}");
    }
}

fn outcome(decided: &Option<Decided>) -> String {
    decided.as_ref().map(Decided::describe).unwrap_or_else(|| "running to the last reading".into())
}

/// `high: p 3.2e-9, shift +29.8 %`
fn judgement(j: &crate::analysis::MetricJudgement) -> String {
    let class = format!("{:?}", j.classification).to_lowercase();
    format!("{class}: p {:.3e}, shift {:+.1} %", j.p, j.relative_shift * 100.0)
}
