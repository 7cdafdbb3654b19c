//! The canary readings and comparisons a run recorded, read back from its journal (every
//! `reading {json}` and `compared {json}` line a plugin's analysis wrote), and their replay under
//! a changed spec: what the same readings and samples would have decided, and where. Offline:
//! nothing is read from a provider again.

use crate::run::journal::Record;
use crate::run::Event;
use gantry_analysis::judge::{judge_metric, score, Compared, JudgeSpec, Scores};
pub use gantry_analysis::judge::{MetricJudgement, Verdict};
use gantry_analysis::{Phase, Reading, Recorded, Rules, Tracker};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A reading and the step that took it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReading {
    /// The step's id.
    pub step: String,
    /// The reading as journaled.
    pub recorded: Recorded,
}

/// Every reading in a run's journal, in the order they were taken.
pub fn readings(records: &[Record]) -> Vec<StepReading> {
    logged(records, Recorded::from_line).map(|(step, recorded)| StepReading { step, recorded }).collect()
}

/// A reading as people read it: the value, `no data`, or `error: …`.
pub fn reading_text(reading: &Reading) -> String {
    match reading {
        Reading::Value { value } => format!("{value}"),
        Reading::Nodata => "no data".into(),
        Reading::Error { message } => format!("error: {message}"),
    }
}

/// Each distinct item once, in the order it first appears (steps, metrics: a handful each).
pub fn first_seen<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

/// Every log line of `records` that `parse` reads, with the step that wrote it.
fn logged<'a, T: 'a>(records: &'a [Record], parse: fn(&str) -> Option<T>) -> impl Iterator<Item = (String, T)> + 'a {
    records.iter().filter_map(move |r| match &r.event {
        Event::Log { step, message, .. } => parse(message).map(|t| (step.clone(), t)),
        _ => None,
    })
}

/// A comparison and the step that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepComparison {
    /// The step's id.
    pub step: String,
    /// The comparison as journaled.
    pub compared: Compared,
}

/// Every comparison of canary and baseline in a run's journal, in order.
pub fn comparisons(records: &[Record]) -> Vec<StepComparison> {
    logged(records, Compared::from_line).map(|(step, compared)| StepComparison { step, compared }).collect()
}

/// Why a spec file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// It cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not a map of metric names to rules.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde_yaml's words, with the line and column.
        message: String,
    },
    /// It names a metric or comparison the run did not make.
    #[error("{}: {kind} `{name}` is not in this run (it has: {known})", path.display())]
    Unknown {
        /// The file.
        path: PathBuf,
        /// `metric` (under `rules:`) or `comparison` (under `judge:`).
        kind: &'static str,
        /// The name.
        name: String,
        /// The names of that kind the run has.
        known: String,
    },
}

/// A changed analysis spec: rules by metric name (as under a metric's `rules:`), judge specs by
/// comparison name (as under a comparison's `spec:`), and the judge's scores. What it leaves out
/// keeps what the run recorded.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Rules by metric name.
    #[serde(default)]
    pub rules: BTreeMap<String, Rules>,
    /// Judge specs by comparison name.
    #[serde(default)]
    pub judge: BTreeMap<String, JudgeSpec>,
    /// The judge's pass and marginal scores.
    #[serde(default)]
    pub scores: Option<Scores>,
}

/// Reads a spec file and checks each metric and comparison it names is in the run.
pub fn load_spec(path: &Path, readings: &[StepReading], compared: &[StepComparison]) -> Result<Spec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.into(), source })?;
    let spec: Spec =
        serde_yaml::from_str(&text).map_err(|e| SpecError::Parse { path: path.into(), message: located(&text, &e) })?;
    let unknown = |kind: &'static str, named: Vec<&String>, known: Vec<&str>| {
        let known: std::collections::BTreeSet<&str> = known.into_iter().collect();
        let name = named.into_iter().find(|n| !known.contains(n.as_str()))?;
        let known = if known.is_empty() { "none".into() } else { known.into_iter().collect::<Vec<_>>().join(", ") };
        Some(SpecError::Unknown { path: path.into(), kind, name: name.clone(), known })
    };
    let metrics = readings.iter().map(|r| r.recorded.metric.as_str()).collect();
    if let Some(e) = unknown("metric", spec.rules.keys().collect(), metrics) {
        return Err(e);
    }
    let names = compared.iter().map(|c| c.compared.name.as_str()).collect();
    if let Some(e) = unknown("comparison", spec.judge.keys().collect(), names) {
        return Err(e);
    }
    Ok(spec)
}

/// serde_yaml's words, with the line of the top-level key they name where they give none (serde_yaml
/// locates a misspelt key inside a map it is reading, not one at the top of the file).
fn located(text: &str, e: &serde_yaml::Error) -> String {
    let message = e.to_string();
    if e.location().is_some() {
        return message;
    }
    let key = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next());
    let line = key.and_then(|key| {
        text.lines().position(|l| l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')))
    });
    match line {
        Some(i) => format!("{message} at line {} column 1", i + 1),
        None => message,
    }
}

/// The reading at which a metric decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decided {
    /// `failed` or `inconclusive`.
    pub phase: Phase,
    /// The traffic stage (green %) of the reading, for a plugin that moves traffic.
    pub stage: Option<u32>,
    /// When it was taken (ms since the epoch).
    pub at_ms: u64,
    /// Which reading of its watch it was (1-based).
    pub reading: usize,
    /// The value, when there was one.
    pub value: Option<f64>,
    /// Why, as the tracker says it.
    pub reason: String,
}

/// One watch's readings (a metric in one step, one stage's gate or the whole rollout) judged
/// again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchReplay {
    /// The step.
    pub step: String,
    /// The metric.
    pub metric: String,
    /// A background metric rather than a stage gate.
    pub background: bool,
    /// How many readings were recorded.
    pub readings: usize,
    /// Whether the rules differ from those the readings were judged by.
    pub changed: bool,
    /// Where the recorded judging decided, if it did.
    pub recorded: Option<Decided>,
    /// Where the replay decides, if it does within the recorded readings.
    pub replayed: Option<Decided>,
}

/// The first decision among a run's metrics: which metric of which step, and where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct First {
    /// The step.
    pub step: String,
    /// The metric.
    pub metric: String,
    /// Where it decided.
    #[serde(flatten)]
    pub decided: Decided,
}

/// What a run's readings decide under changed rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replay {
    /// Every watch, in the order its first reading was taken.
    pub watches: Vec<WatchReplay>,
    /// The first decision the recorded readings led to, as they were judged.
    pub recorded: Option<First>,
    /// The first decision under the changed rules.
    pub replayed: Option<First>,
    /// Every comparison of canary and baseline, judged again.
    pub comparisons: Vec<ComparisonReplay>,
    /// Each judging step's score and verdict, as recorded and again.
    pub scores: Vec<ScoreReplay>,
}

/// One comparison's samples judged again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonReplay {
    /// The step.
    pub step: String,
    /// The comparison.
    pub name: String,
    /// Whether the spec differs from the one the samples were judged by.
    pub changed: bool,
    /// The judgement as recorded.
    pub recorded: MetricJudgement,
    /// The judgement under the changed spec.
    pub replayed: MetricJudgement,
}

/// A judging step's score, as recorded and again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReplay {
    /// The step.
    pub step: String,
    /// The share (0–100) of its comparisons that passed, and the verdict, as recorded.
    pub recorded: (f64, Verdict),
    /// The same under the changed spec.
    pub replayed: (f64, Verdict),
}

/// Judges every watch's readings again, with `spec`'s rules where it names the metric and the
/// recorded rules elsewhere (dry-run metrics never decide, as in the run), and every comparison's
/// samples with `spec`'s judge spec and scores where it gives them.
pub fn replay(readings: &[StepReading], compared: &[StepComparison], spec: &Spec) -> Replay {
    // Step, metric and the watch's first reading name one tracker's readings.
    type Key<'a> = (&'a str, &'a str, u64);
    let mut groups: Vec<(Key, Vec<&Recorded>)> = Vec::new();
    for r in readings {
        let key = (r.step.as_str(), r.recorded.metric.as_str(), r.recorded.watch_ms);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(&r.recorded),
            None => groups.push((key, vec![&r.recorded])),
        }
    }
    let mut watches = Vec::new();
    for ((step, metric, _), list) in groups {
        let recorded_rules = list[0].rules.clone();
        let rules = spec.rules.get(metric).cloned().or(recorded_rules.clone());
        let recorded = list.iter().enumerate().find_map(|(i, r)| decided(r, i, r.judged.phase, &r.judged.reason));
        let replayed = match &rules {
            Some(rules) => {
                let mut tracker = Tracker::new(rules.clone());
                list.iter().enumerate().find_map(|(i, r)| {
                    let judged = tracker.record(r.judged.reading.clone(), r.at_ms);
                    decided(r, i, judged.phase, &judged.reason)
                })
            }
            // A journal from before rules were recorded: its judging stands.
            None => recorded.clone(),
        };
        watches.push(WatchReplay {
            step: step.to_string(),
            metric: metric.to_string(),
            background: list[0].background,
            readings: list.len(),
            changed: rules != recorded_rules,
            recorded,
            replayed,
        });
    }
    let first = |pick: fn(&WatchReplay) -> &Option<Decided>| {
        watches
            .iter()
            .filter_map(|w| {
                let decided = pick(w).clone()?;
                Some(First { step: w.step.clone(), metric: w.metric.clone(), decided })
            })
            .min_by_key(|f| f.decided.at_ms)
    };
    let recorded = first(|w| &w.recorded);
    let replayed = first(|w| &w.replayed);
    let (comparisons, scores) = rejudge(compared, spec);
    Replay { watches, recorded, replayed, comparisons, scores }
}

/// Every comparison judged again, and each step's score from its comparisons.
fn rejudge(compared: &[StepComparison], spec: &Spec) -> (Vec<ComparisonReplay>, Vec<ScoreReplay>) {
    let comparisons: Vec<ComparisonReplay> = compared
        .iter()
        .map(|c| {
            let judge = spec.judge.get(&c.compared.name).unwrap_or(&c.compared.spec);
            ComparisonReplay {
                step: c.step.clone(),
                name: c.compared.name.clone(),
                changed: *judge != c.compared.spec,
                recorded: c.compared.judgement.clone(),
                replayed: judge_metric(&c.compared.canary, &c.compared.baseline, judge),
            }
        })
        .collect();
    let scores = first_seen(compared.iter().map(|c| c.step.as_str()))
        .into_iter()
        .map(|step| {
            let recorded_scores =
                compared.iter().find(|c| c.step == step).map(|c| c.compared.scores).unwrap_or_default();
            let judged = |pick: fn(&ComparisonReplay) -> &MetricJudgement, s: Scores| {
                let own: Vec<MetricJudgement> =
                    comparisons.iter().filter(|c| c.step == step).map(|c| pick(c).clone()).collect();
                score(&own, s.pass, s.marginal)
            };
            ScoreReplay {
                step: step.to_string(),
                recorded: judged(|c| &c.recorded, recorded_scores),
                replayed: judged(|c| &c.replayed, spec.scores.unwrap_or(recorded_scores)),
            }
        })
        .collect();
    (comparisons, scores)
}

fn decided(r: &Recorded, index: usize, phase: Phase, reason: &str) -> Option<Decided> {
    (phase != Phase::Running).then(|| Decided {
        phase,
        stage: r.stage,
        at_ms: r.at_ms,
        reading: index + 1,
        value: match r.judged.reading {
            Reading::Value { value } => Some(value),
            _ => None,
        },
        reason: reason.to_string(),
    })
}

impl Decided {
    /// `failed at stage 50% (reading 3): 0.02, failure > 0.005: met …`
    pub fn describe(&self) -> String {
        let phase = match self.phase {
            Phase::Failed => "failed",
            Phase::Inconclusive => "inconclusive",
            Phase::Running => "running",
        };
        let stage = self.stage.map(|s| format!(" at stage {s}%")).unwrap_or_default();
        format!("{phase}{stage} (reading {}): {}", self.reading, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_analysis::{Condition, Op, Tracker};

    /// Readings of one watch as a plugin would journal them under `rules`.
    fn watch(step: &str, metric: &str, rules: &Rules, values: &[(u32, u64, f64)], background: bool) -> Vec<StepReading> {
        let mut tracker = Tracker::new(rules.clone());
        let watch_ms = values[0].1;
        values
            .iter()
            .map(|&(stage, at_ms, value)| StepReading {
                step: step.into(),
                recorded: Recorded {
                    metric: metric.into(),
                    query: "q".into(),
                    stage: Some(stage),
                    at_ms,
                    watch_ms,
                    background,
                    rules: Some(rules.clone()),
                    judged: tracker.record(Reading::Value { value }, at_ms),
                },
            })
            .collect()
    }

    fn failing_above(value: f64) -> Rules {
        Rules { failure: Some(Condition { op: Op::Gt, value }), ..Rules::default() }
    }

    #[test]
    fn a_stricter_threshold_decides_at_the_first_reading_past_it_and_names_its_stage() {
        let values = [(25, 1_000, 0.002), (25, 2_000, 0.004), (50, 3_000, 0.006), (100, 4_000, 0.004)];
        let recorded = watch("shift", "error-rate", &failing_above(0.01), &values, true);
        let as_run = replay(&recorded, &[], &Spec::default());
        assert_eq!((as_run.recorded.clone(), as_run.replayed.clone()), (None, None), "{as_run:?}");
        assert!(!as_run.watches[0].changed);

        let spec = Spec { rules: BTreeMap::from([("error-rate".to_string(), failing_above(0.005))]), ..Spec::default() };
        let stricter = replay(&recorded, &[], &spec);
        let first = stricter.replayed.clone().unwrap();
        assert_eq!((first.step.as_str(), first.metric.as_str()), ("shift", "error-rate"));
        let decided = first.decided;
        assert_eq!((decided.phase, decided.stage, decided.reading, decided.value), (Phase::Failed, Some(50), 3, Some(0.006)));
        assert!(stricter.watches[0].changed && stricter.recorded.is_none());
    }

    #[test]
    fn each_stage_gate_is_judged_with_its_own_tracker_as_in_the_run() {
        // failure_limit 1 per stage: one bad sample in each of two stages never fails a stage.
        let rules = Rules { failure_limit: 1, ..failing_above(0.01) };
        let mut readings = watch("shift", "p95", &rules, &[(25, 1_000, 0.5), (25, 1_500, 0.001)], false);
        readings.extend(watch("shift", "p95", &rules, &[(50, 2_000, 0.5), (50, 2_500, 0.001)], false));
        let same = replay(&readings, &[], &Spec::default());
        assert_eq!(same.watches.len(), 2);
        assert!(same.replayed.is_none(), "{same:?}");
        let none_tolerated = Spec { rules: BTreeMap::from([("p95".to_string(), failing_above(0.01))]), ..Spec::default() };
        let decided = replay(&readings, &[], &none_tolerated).replayed.unwrap().decided;
        assert_eq!((decided.stage, decided.reading), (Some(25), 1));
    }

    #[test]
    fn a_spec_naming_a_metric_or_comparison_the_run_never_made_is_refused_with_those_it_did() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        let readings = watch("shift", "error-rate", &failing_above(0.01), &[(25, 1, 0.0)], true);
        let cases = [
            (
                "rules:\n  eror-rate:\n    failure: { op: \">\", value: 0.005 }\n",
                "spec.yaml: metric `eror-rate` is not in this run (it has: error-rate)",
            ),
            ("judge:\n  latency: { tolerance: 0.5 }\n", "spec.yaml: comparison `latency` is not in this run (it has: none)"),
            ("rules:\n  error-rate:\n    failure: { op: \">\", value: 0.005 }\n    fro: 1m\n", "unknown field `fro`"),
            ("error-rate:\n  failure: { op: \">\", value: 0.005 }\n", "unknown field `error-rate`, expected one of"),
            // A misspelt top-level key is located too, not only a nested one.
            ("# changed rules\nrule:\n  error-rate:\n    failure: { op: \">\", value: 0.005 }\n", "`rule`"),
            ("# changed rules\nrule:\n  error-rate:\n    failure: { op: \">\", value: 0.005 }\n", "at line 2 column 1"),
            ("rules:\n  error-rate:\n    failure: { op: \">\", value: 0.005 }\n    fro: 1m\n", "line 4"),
        ];
        for (text, want) in cases {
            std::fs::write(&path, text).unwrap();
            let e = load_spec(&path, &readings, &[]).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn a_comparison_judged_again_with_a_wider_tolerance_passes_and_the_score_follows() {
        use gantry_analysis::judge::Classification;
        // A canary 30 % slower than its baseline, every sample distinct.
        let baseline: Vec<f64> = (0..30).map(|i| 100.0 + i as f64).collect();
        let canary: Vec<f64> = baseline.iter().map(|v| v * 1.3).collect();
        let spec = JudgeSpec::default();
        let judgement = judge_metric(&canary, &baseline, &spec);
        assert_eq!(judgement.classification, Classification::High);
        let compared = [StepComparison {
            step: "analysis".into(),
            compared: Compared { name: "latency".into(), canary, baseline, spec, scores: Scores::default(), judgement },
        }];
        let as_run = replay(&[], &compared, &Spec::default());
        assert_eq!(as_run.scores[0].recorded, (0.0, Verdict::Fail));
        assert_eq!(as_run.scores[0].replayed, as_run.scores[0].recorded, "the same spec judges the same");
        let tolerant = JudgeSpec { tolerance: 0.5, ..JudgeSpec::default() };
        let spec = Spec { judge: BTreeMap::from([("latency".to_string(), tolerant)]), ..Spec::default() };
        let again = replay(&[], &compared, &spec);
        assert!(again.comparisons[0].changed);
        assert_eq!(again.comparisons[0].replayed.classification, Classification::Pass);
        assert_eq!(again.scores[0].replayed, (100.0, Verdict::Pass));
    }
}
