//! Gates evaluated after each stage: target health, an HTTP health URL and a
//! Prometheus query against a threshold. Each gate gives a [`Measurement`]
//! with a [`Verdict`]; a stage's window takes `samples` consecutive rounds of
//! every gate, `interval_ms` apart, and ends at the first round that does not
//! pass, as Argo Rollouts' analysis does with a failure limit of zero.

use gantry_sdk::{Context, Error};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The value of a Prometheus instant query's answer (the SDK's, shared with every analysis provider).
pub use gantry_sdk::analysis::provider::prometheus_value;

/// What a gate says of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Within bounds: the canary may go on.
    Pass,
    /// Out of bounds: the canary is rolled back.
    Fail,
    /// No answer to judge (no data): the run pauses for a person.
    Inconclusive,
}

/// What to do when a Prometheus query returns no data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoData {
    /// No data during a canary is suspicious: the gate fails.
    #[default]
    Fail,
    /// The gate passes (e.g. a metric only emitted on errors).
    Pass,
    /// The gate is inconclusive: the run pauses, traffic stays where it is, a person decides.
    Inconclusive,
}

/// One gate's reading in one sample, as recorded in the step's outputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// Percent on green when it was taken.
    pub stage: u32,
    /// 1-based sample of the stage's window.
    pub sample: u32,
    /// `target-health`, `health-url` or `prometheus`.
    pub gate: String,
    /// What was measured, e.g. the query's value or the status code.
    pub observed: String,
    /// The bound it was held to.
    pub threshold: String,
    /// The verdict.
    pub verdict: Verdict,
}

impl Measurement {
    /// One line for a person.
    pub fn describe(&self) -> String {
        format!("{} gate: {} (threshold {}): {:?}", self.gate, self.observed, self.threshold, self.verdict)
    }
}

/// How a stage's gates are sampled.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Consecutive samples every gate must pass.
    #[serde(default = "one")]
    pub samples: u32,
    /// Wait between samples, in milliseconds.
    #[serde(default)]
    pub interval_ms: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self { samples: 1, interval_ms: 0 }
    }
}

fn one() -> u32 {
    1
}

/// A Prometheus instant query that must stay at or under `max`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusGate {
    /// Prometheus base URL, e.g. `http://prometheus:9090`.
    pub url: String,
    /// PromQL giving one number, e.g. an error rate.
    pub query: String,
    /// Highest acceptable value.
    pub max: f64,
    /// What an empty result means: `fail` (default), `pass` or `inconclusive`.
    #[serde(default)]
    pub no_data: NoData,
}

impl PrometheusGate {
    /// The verdict on a query's value (`None`: no data).
    pub fn judge(&self, value: Option<f64>) -> Verdict {
        match value {
            Some(v) if v.is_nan() || v > self.max => Verdict::Fail,
            Some(_) => Verdict::Pass,
            None => match self.no_data {
                NoData::Fail => Verdict::Fail,
                NoData::Pass => Verdict::Pass,
                NoData::Inconclusive => Verdict::Inconclusive,
            },
        }
    }

    /// Runs the query once and says what it answers now, unjudged: a pre-flight's read, where only
    /// an unreachable or unreadable Prometheus is in the way.
    pub fn answer(&self, ctx: &Context) -> Result<String, Error> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url.trim_end_matches('/'),
            gantry_sdk::percent_encode(&self.query)
        );
        let response = ctx.http().get(&url).send().map_err(|e| Error::failed(format!("prometheus gate: {e}")))?;
        match prometheus_value(&response.text()) {
            Ok(Some(value)) => Ok(format!("`{}` = {value}", self.query)),
            Ok(None) => Ok(format!("`{}` returns no data yet", self.query)),
            Err(e) => Err(Error::failed(format!("`{}`: {e} (HTTP {})", self.query, response.status()))),
        }
    }

    /// Runs the query and judges it; an unreadable answer fails the gate, as it would a person's check.
    pub fn measure(&self, ctx: &Context) -> Result<(String, Verdict), Error> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url.trim_end_matches('/'),
            gantry_sdk::percent_encode(&self.query)
        );
        let response = ctx.http().get(&url).send().map_err(|e| Error::retryable(format!("prometheus gate: {e}")))?;
        Ok(match prometheus_value(&response.text()) {
            Ok(Some(value)) => (format!("`{}` = {value}", self.query), self.judge(Some(value))),
            Ok(None) => (format!("`{}` returned no data", self.query), self.judge(None)),
            Err(e) => (format!("`{}`: {e} (HTTP {})", self.query, response.status()), Verdict::Fail),
        })
    }
}

/// A URL that must answer 2xx; a refused or reset connection fails it too.
pub fn health_url(ctx: &Context, url: &str) -> (String, Verdict) {
    match ctx.http().get(url).send() {
        Ok(r) if r.is_success() => (format!("{url} answered {}", r.status()), Verdict::Pass),
        Ok(r) => (format!("{url} answered {}", r.status()), Verdict::Fail),
        Err(e) => (format!("{url}: {e}"), Verdict::Fail),
    }
}

/// Target health: every target of the group `healthy`, and at least one target (an empty green group
/// would take traffic it cannot serve).
pub fn target_health(states: &[(String, String)]) -> (String, Verdict) {
    if states.is_empty() {
        return ("no targets are registered".into(), Verdict::Fail);
    }
    let bad: Vec<String> = states.iter().filter(|(_, s)| s != "healthy").map(|(id, s)| format!("{id}: {s}")).collect();
    if bad.is_empty() {
        (format!("{} of {} targets healthy", states.len(), states.len()), Verdict::Pass)
    } else {
        (format!("not healthy: {}", bad.join(", ")), Verdict::Fail)
    }
}

/// The worst of a round's verdicts: a failure outweighs an inconclusive reading.
pub fn worst(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    verdicts.into_iter().fold(Verdict::Pass, |w, v| match (w, v) {
        (Verdict::Fail, _) | (_, Verdict::Fail) => Verdict::Fail,
        (Verdict::Inconclusive, _) | (_, Verdict::Inconclusive) => Verdict::Inconclusive,
        _ => Verdict::Pass,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_are_read() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.05"]}]}}"#;
        assert_eq!(prometheus_value(ok), Ok(Some(0.05)));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(prometheus_value(empty), Ok(None));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"2"]}}"#;
        assert_eq!(prometheus_value(scalar), Ok(Some(2.0)));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(prometheus_value(bad), Err("bad_data: parse error".into()));
        assert_eq!(gantry_sdk::percent_encode("a{b=~\"5..\"}[1m]"), "a%7Bb%3D~%225..%22%7D%5B1m%5D");
    }

    #[test]
    fn no_data_follows_the_policy_and_values_the_threshold() {
        let gate = |no_data| PrometheusGate { url: "u".into(), query: "q".into(), max: 0.1, no_data };
        assert_eq!(gate(NoData::Fail).judge(None), Verdict::Fail);
        assert_eq!(gate(NoData::Pass).judge(None), Verdict::Pass);
        assert_eq!(gate(NoData::Inconclusive).judge(None), Verdict::Inconclusive);
        assert_eq!(gate(NoData::Fail).judge(Some(0.1)), Verdict::Pass);
        assert_eq!(gate(NoData::Fail).judge(Some(0.11)), Verdict::Fail);
        assert_eq!(gate(NoData::Pass).judge(Some(f64::NAN)), Verdict::Fail);
    }

    #[test]
    fn an_empty_or_partly_unhealthy_group_fails_target_health() {
        assert_eq!(target_health(&[]).1, Verdict::Fail);
        let states = [("i-1".to_string(), "healthy".to_string()), ("i-2".to_string(), "unused".to_string())];
        assert_eq!(target_health(&states), ("not healthy: i-2: unused".to_string(), Verdict::Fail));
        assert_eq!(target_health(&states[..1]).1, Verdict::Pass);
    }

    #[test]
    fn a_failure_outweighs_an_inconclusive_reading() {
        use Verdict::*;
        assert_eq!(worst([Pass, Inconclusive, Fail]), Fail);
        assert_eq!(worst([Pass, Inconclusive]), Inconclusive);
        assert_eq!(worst([]), Pass);
    }
}
