//! The runs a store holds, as Prometheus metrics (text exposition format 0.0.4), for `gantry ui`'s
//! `/metrics`: runs by pipeline, environment and status, step durations, rollbacks, approvals
//! waiting and the canary's decisions. Read from the journals, so a scrape sees every runner's runs
//! and a restarted `gantry ui` loses nothing.

use super::Summary;
use crate::run::journal::Record;
use crate::run::Event;
use std::collections::BTreeMap;
use std::fmt::Write;

/// What one run adds to the metrics, read once from its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    pipeline: String,
    environment: String,
    entity: String,
    status: String,
    /// Step id and seconds, for the steps that ran.
    durations: Vec<(String, f64)>,
    /// Steps rolled back, and steps whose rollback failed.
    rolled_back: Vec<String>,
    rollback_failed: Vec<String>,
    /// The step awaiting approval, when the run waits for one.
    awaiting: Option<String>,
    /// The canary's decisions: step, metric or gate, outcome.
    decisions: Vec<(String, String, String)>,
}

impl RunFacts {
    /// The facts of the run `records` journaled.
    pub fn of(records: &[Record]) -> Self {
        let summary = Summary::from_records(records);
        let ran = summary.steps.iter().filter(|s| s.status != "skipped" && s.attempts > 0);
        let mut facts = RunFacts {
            durations: ran.map(|s| (s.id.clone(), s.seconds)).collect(),
            rolled_back: Vec::new(),
            rollback_failed: Vec::new(),
            awaiting: None,
            decisions: Vec::new(),
            pipeline: summary.pipeline,
            environment: summary.environment,
            entity: summary.entity,
            status: summary.status,
        };
        for record in records {
            match &record.event {
                Event::RolledBack { step, .. } => facts.rolled_back.push(step.clone()),
                Event::RollbackFailed { step, .. } => facts.rollback_failed.push(step.clone()),
                Event::ApprovalRequested(request) => facts.awaiting = Some(request.step.clone()),
                _ => {}
            }
        }
        if facts.status != crate::run::Status::AwaitingApproval.name() {
            facts.awaiting = None;
        }
        for reading in crate::analysis::readings(records) {
            let outcome = format!("{:?}", reading.recorded.judged.outcome).to_lowercase();
            facts.decisions.push((reading.step, reading.recorded.metric, outcome));
        }
        // Gate rows: time, step, stage, sample, gate, observed, threshold, verdict.
        for row in super::canary::logged(records, None).1 {
            if let [_, step, stage, _, gate, _, _, verdict] = &row[..] {
                if stage != "rollback" && !gate.is_empty() && !verdict.is_empty() {
                    facts.decisions.push((step.clone(), gate.clone(), verdict.to_lowercase()));
                }
            }
        }
        facts
    }
}

/// Upper bounds of the step-duration histogram's buckets, in seconds.
const BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// The exposition of every run's facts.
pub fn exposition(runs: &[RunFacts]) -> String {
    let mut out = String::new();
    let mut runs_by: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut waiting: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut rollbacks: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut rollback_failures: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut decisions: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut durations: BTreeMap<Vec<String>, Vec<f64>> = BTreeMap::new();
    for run in runs {
        let (p, e) = (run.pipeline.clone(), run.environment.clone());
        *runs_by.entry(vec![p.clone(), e.clone(), run.status.clone()]).or_default() += 1.0;
        if let Some(step) = &run.awaiting {
            *waiting.entry(vec![p.clone(), e.clone(), run.entity.clone(), step.clone()]).or_default() += 1.0;
        }
        for step in &run.rolled_back {
            *rollbacks.entry(vec![p.clone(), e.clone(), step.clone()]).or_default() += 1.0;
        }
        for step in &run.rollback_failed {
            *rollback_failures.entry(vec![p.clone(), e.clone(), step.clone()]).or_default() += 1.0;
        }
        for (step, metric, outcome) in &run.decisions {
            *decisions.entry(vec![p.clone(), step.clone(), metric.clone(), outcome.clone()]).or_default() += 1.0;
        }
        for (step, seconds) in &run.durations {
            durations.entry(vec![p.clone(), step.clone()]).or_default().push(*seconds);
        }
    }
    family(&mut out, "gantry_runs", "gauge", "Recorded runs by how they stand now.", &["pipeline", "environment", "status"], &runs_by);
    family(
        &mut out,
        "gantry_approvals_waiting",
        "gauge",
        "Runs waiting for an approval, by the step that waits.",
        &["pipeline", "environment", "entity", "step"],
        &waiting,
    );
    family(&mut out, "gantry_rollbacks_total", "counter", "Steps rolled back.", &["pipeline", "environment", "step"], &rollbacks);
    family(
        &mut out,
        "gantry_rollback_failures_total",
        "counter",
        "Rollbacks of a step that failed: a person must look.",
        &["pipeline", "environment", "step"],
        &rollback_failures,
    );
    family(
        &mut out,
        "gantry_canary_decisions_total",
        "counter",
        "Canary gate and analysis readings, by metric or gate and how each was judged.",
        &["pipeline", "step", "metric", "outcome"],
        &decisions,
    );
    let _ = writeln!(out, "# HELP gantry_step_duration_seconds Time from a step's first start to the end of its last attempt.");
    let _ = writeln!(out, "# TYPE gantry_step_duration_seconds histogram");
    for (labels, seconds) in &durations {
        let base = pairs(&["pipeline", "step"], labels);
        for bound in BUCKETS {
            let count = seconds.iter().filter(|s| **s <= bound).count();
            let _ = writeln!(out, "gantry_step_duration_seconds_bucket{{{base},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "gantry_step_duration_seconds_bucket{{{base},le=\"+Inf\"}} {}", seconds.len());
        let _ = writeln!(out, "gantry_step_duration_seconds_sum{{{base}}} {}", seconds.iter().sum::<f64>());
        let _ = writeln!(out, "gantry_step_duration_seconds_count{{{base}}} {}", seconds.len());
    }
    out
}

/// One metric family of samples by label values.
fn family(out: &mut String, name: &str, kind: &str, help: &str, labels: &[&str], samples: &BTreeMap<Vec<String>, f64>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (values, value) in samples {
        let _ = writeln!(out, "{name}{{{}}} {value}", pairs(labels, values));
    }
}

/// `a="1",b="2"`, each value escaped as the exposition format asks.
fn pairs(labels: &[&str], values: &[String]) -> String {
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    labels.iter().zip(values).map(|(l, v)| format!("{l}=\"{}\"", escape(v))).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(status: &str, pipeline: &str) -> RunFacts {
        RunFacts {
            pipeline: pipeline.into(),
            environment: "production".into(),
            entity: "e".into(),
            status: status.into(),
            durations: vec![("deploy".into(), 2.0), ("check".into(), 0.05)],
            rolled_back: vec!["deploy".into()],
            rollback_failed: vec![],
            awaiting: None,
            decisions: vec![("shift".into(), "error-rate".into(), "pass".into())],
        }
    }

    #[test]
    fn runs_are_counted_by_status_and_label_values_are_escaped() {
        let text = exposition(&[facts("failed", "release"), facts("failed", "release"), facts("succeeded", "a\"b\\c")]);
        assert!(text.contains("gantry_runs{pipeline=\"release\",environment=\"production\",status=\"failed\"} 2\n"), "{text}");
        assert!(text.contains("gantry_runs{pipeline=\"a\\\"b\\\\c\",environment=\"production\",status=\"succeeded\"} 1\n"), "{text}");
        assert!(text.contains("gantry_rollbacks_total{pipeline=\"release\",environment=\"production\",step=\"deploy\"} 2\n"), "{text}");
        assert!(text.contains("gantry_step_duration_seconds_bucket{pipeline=\"release\",step=\"check\",le=\"0.1\"} 2\n"), "{text}");
        assert!(text.contains("gantry_step_duration_seconds_bucket{pipeline=\"release\",step=\"deploy\",le=\"1\"} 0\n"), "{text}");
        assert!(text.contains("gantry_step_duration_seconds_count{pipeline=\"release\",step=\"deploy\"} 2\n"), "{text}");
        assert!(text.contains("gantry_canary_decisions_total{pipeline=\"release\",step=\"shift\",metric=\"error-rate\",outcome=\"pass\"} 2\n"), "{text}");
        assert!(text.contains("# TYPE gantry_step_duration_seconds histogram\n"), "{text}");
    }
}
