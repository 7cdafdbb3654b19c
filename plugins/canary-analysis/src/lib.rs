//! `canary-analysis`: reads each metric from its provider every `interval_ms`, judges every
//! reading with the SDK's analysis rules (limits, sustained triggers, no-data policy, dry run) and,
//! when asked, compares the canary's samples with the baseline's statistically. It fails the step
//! when a metric fails, pauses the run for a person when one is inconclusive, and journals every
//! reading with what it meant, as a `reading {json}` log line.

use gantry_sdk::analysis::judge::{self, Compared, JudgeSpec, MetricJudgement, Scores, Verdict, COMPARED_PREFIX};
use gantry_sdk::analysis::provider::Provider;
use gantry_sdk::analysis::{Metric, Phase, Watch};
use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Metrics judged on every reading.
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Wait between rounds of readings, in milliseconds (default 1000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Rounds of readings (default 5); the step ends sooner when a metric decides.
    #[serde(default = "default_rounds")]
    pub readings: u32,
    /// Canary against baseline, judged after the readings.
    #[serde(default)]
    pub judge: Vec<Comparison>,
    /// Judge's pass score (default 95) and marginal score (default 75), as Kayenta's.
    #[serde(default)]
    pub scores: Option<Scores>,
}

/// A metric of the canary compared with the same metric of the baseline.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// Its name, e.g. `p95-latency`.
    pub name: String,
    /// The canary's series.
    pub canary: Provider,
    /// The baseline's series.
    pub baseline: Provider,
    /// Direction, significance and tolerance.
    #[serde(default)]
    pub spec: JudgeSpec,
}


fn default_interval() -> u64 {
    1000
}
fn default_rounds() -> u32 {
    5
}

/// Most rounds, so a typo cannot turn a check into hours of polling.
const MAX_ROUNDS: u32 = 10_000;

/// The canary analysis step.
pub struct CanaryAnalysis;

/// What the metrics decided once the readings ended or one decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every metric stayed within its limits.
    Passed,
    /// A metric failed.
    Failed,
    /// A metric was inconclusive (and none failed).
    Inconclusive,
}

/// The decision from the metrics' phases: a failure outranks an inconclusive metric.
pub fn decide(phases: &[Phase]) -> Decision {
    if phases.contains(&Phase::Failed) {
        Decision::Failed
    } else if phases.contains(&Phase::Inconclusive) {
        Decision::Inconclusive
    } else {
        Decision::Passed
    }
}

impl Step for CanaryAnalysis {
    fn describe() -> Describe {
        Describe::new("canary-analysis", env!("CARGO_PKG_VERSION"))
            .description("Judges a canary from metrics: conditions, limits, sustained triggers, a statistical comparison with the baseline")
            .input::<Input>()
            .capability("network")
            .capability("secrets:header")
            .capability("secrets:aws-sigv4")
            .output("score", "the share of metrics that passed, 0 to 100")
            .output("verdict", "passed, failed or inconclusive")
            .output("result", "passed, when the analysis passed")
            .output("<metric>.phase", "one metric's phase: successful, failed, inconclusive or error")
            .output("<judge>.judgement", "one baseline-against-canary judgement, as JSON")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        if input.metrics.is_empty() && input.judge.is_empty() {
            return Err(Error::failed("nothing to analyse: give `metrics`, `judge` or both"));
        }
        if input.readings == 0 || input.readings > MAX_ROUNDS {
            return Err(Error::failed(format!("readings must be between 1 and {MAX_ROUNDS}")));
        }
        let mut watches: Vec<Watch> = input.metrics.iter().cloned().map(Watch::new).collect();
        let mut outputs = Outputs::new();
        let mut phases = vec![Phase::Running; watches.len()];
        for round in 0..input.readings {
            if round > 0 {
                gantry_sdk::sleep_ms(input.interval_ms);
            }
            for (i, watch) in watches.iter_mut().enumerate() {
                let judged = watch.read(ctx, None);
                if judged.phase != Phase::Running && phases[i] == Phase::Running {
                    let name = &watch.metric.name;
                    gantry_sdk::warn!("{name}: {:?} after reading {}: {}", judged.phase, round + 1, judged.reason);
                }
                phases[i] = judged.phase;
            }
            if decide(&phases) != Decision::Passed {
                break;
            }
        }
        for (metric, phase) in input.metrics.iter().zip(&phases) {
            outputs.set(format!("{}.phase", metric.name), format!("{phase:?}").to_lowercase());
        }
        let mut judgements: Vec<MetricJudgement> = Vec::new();
        for c in &input.judge {
            let canary = c.canary.samples(ctx).map_err(|e| Error::retryable(format!("{} canary: {e}", c.name)))?;
            let baseline =
                c.baseline.samples(ctx).map_err(|e| Error::retryable(format!("{} baseline: {e}", c.name)))?;
            let j = judge::judge_metric(&canary, &baseline, &c.spec);
            outputs.set(format!("{}.judgement", c.name), serde_json::to_string(&j).unwrap_or_default());
            // The samples with the judgement: `gantry analysis replay` judges them again with another spec.
            let scores = input.scores.unwrap_or_default();
            let line = Compared { name: c.name.clone(), canary, baseline, spec: c.spec.clone(), scores, judgement: j.clone() };
            gantry_sdk::info!("{COMPARED_PREFIX}{}", serde_json::to_string(&line).unwrap_or_default());
            judgements.push(j);
        }
        let verdict = (!judgements.is_empty()).then(|| {
            let s = input.scores.unwrap_or_default();
            judge::score(&judgements, s.pass, s.marginal)
        });
        if let Some((score, v)) = verdict {
            outputs.set("score", score);
            outputs.set("verdict", format!("{v:?}").to_lowercase());
        }
        let failed: Vec<&str> = input
            .metrics
            .iter()
            .zip(&phases)
            .filter(|(_, p)| **p == Phase::Failed)
            .map(|(m, _)| m.name.as_str())
            .collect();
        match (decide(&phases), verdict.map(|v| v.1)) {
            (Decision::Failed, _) => Err(Error::failed(format!("canary analysis failed: {}", failed.join(", ")))),
            (_, Some(Verdict::Fail)) => Err(Error::failed(format!(
                "the canary differs from the baseline: score {:.0}",
                verdict.map(|v| v.0).unwrap_or_default()
            ))),
            (Decision::Inconclusive, _) | (_, Some(Verdict::Marginal)) => {
                Err(Error::inconclusive("canary analysis inconclusive: a person decides (gantry resume or rollback)"))
            }
            _ => Ok(outputs.with("result", "passed")),
        }
    }
}

gantry_sdk::export_step!(CanaryAnalysis);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_outranks_an_inconclusive_metric() {
        assert_eq!(decide(&[Phase::Running, Phase::Running]), Decision::Passed);
        assert_eq!(decide(&[Phase::Inconclusive, Phase::Running]), Decision::Inconclusive);
        assert_eq!(decide(&[Phase::Inconclusive, Phase::Failed]), Decision::Failed);
    }

    #[test]
    fn the_input_reads_as_the_readme_writes_it() {
        let input: Input = serde_json::from_value(serde_json::json!({
            "metrics": [{
                "name": "error-rate",
                "source": {"provider": "prometheus", "address": "http://127.0.0.1:9090", "query": "x"},
                "rules": {"failure": {"op": ">", "value": 0.01}, "for": "5m", "failure_limit": 1}
            }],
            "judge": [{
                "name": "latency",
                "canary": {"provider": "web", "url": "http://127.0.0.1:1/c"},
                "baseline": {"provider": "web", "url": "http://127.0.0.1:1/b"},
                "spec": {"direction": "increase", "tolerance": 0.2}
            }]
        }))
        .unwrap();
        assert_eq!(input.metrics[0].rules.failure_limit, 1);
        assert_eq!(input.readings, 5);
        assert!(serde_json::from_value::<Input>(serde_json::json!({"metrics": [], "readngs": 3})).is_err());
    }
}
