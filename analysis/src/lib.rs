//! The rules of canary analysis, shared by the SDK (which judges readings as a plugin takes them)
//! and the host (which replays a run's recorded readings under a changed spec): each metric's
//! readings judged by `success` and `failure` conditions, with Argo Rollouts' limits
//! (`failure_limit`, `inconclusive_limit`, `consecutive_error_limit`), Flagger-style sustained
//! triggers (`for:` — a failure counts only once it has held that long), a `no_data` policy and
//! `dry_run` metrics that are measured and logged but never decide; and a statistical judge of a
//! canary's samples against its baseline's ([`judge`]).
//!
//! Nothing here reads a metric or a clock: every reading goes through [`Tracker::record`] with
//! the time it was taken, which says what it means and whether the metric has now decided.

pub mod judge;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A comparison of a reading with a threshold.
///
/// Example: `{ op: "<", value: 0.001 }`
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// `<`, `<=`, `>`, `>=`, `==` or `!=`.
    pub op: Op,
    /// The threshold.
    pub value: f64,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Op {
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// At most.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// At least.
    #[serde(rename = ">=")]
    Ge,
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
}

impl Condition {
    /// Whether `reading` meets the condition.
    pub fn holds(&self, reading: f64) -> bool {
        match self.op {
            Op::Lt => reading < self.value,
            Op::Le => reading <= self.value,
            Op::Gt => reading > self.value,
            Op::Ge => reading >= self.value,
            Op::Eq => reading == self.value,
            Op::Ne => reading != self.value,
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        };
        write!(f, "{op} {}", self.value)
    }
}

/// What a reading without data means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoData {
    /// It is inconclusive (default): counted against `inconclusive_limit`.
    #[default]
    Inconclusive,
    /// It is a failed reading.
    Fail,
    /// It is a successful reading.
    Pass,
}

/// How one metric's readings are judged; the provider and query are the plugin's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// A reading succeeds when this holds; without `failure`, a reading that misses it fails.
    #[serde(default)]
    pub success: Option<Condition>,
    /// A reading fails when this holds (checked first).
    #[serde(default)]
    pub failure: Option<Condition>,
    /// A failing reading counts only once failing readings have lasted this long without a
    /// break, e.g. `5m` ("error rate > 1 % for 5 consecutive minutes").
    #[serde(default, rename = "for", with = "duration_opt")]
    #[schemars(with = "Option<String>")]
    pub sustained: Option<std::time::Duration>,
    /// Failed readings tolerated; one more fails the metric (default 0, as Argo Rollouts).
    #[serde(default)]
    pub failure_limit: u32,
    /// Inconclusive readings tolerated; one more makes the metric inconclusive (default 0).
    #[serde(default)]
    pub inconclusive_limit: u32,
    /// Consecutive provider errors tolerated; one more fails the metric (default 4, as Argo Rollouts).
    #[serde(default = "default_error_limit")]
    pub consecutive_error_limit: u32,
    /// What a reading without data means (default `inconclusive`).
    #[serde(default)]
    pub no_data: NoData,
    /// Measure and log, never decide: for a query a team is learning to trust.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_error_limit() -> u32 {
    4
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            success: None,
            failure: None,
            sustained: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: default_error_limit(),
            no_data: NoData::default(),
            dry_run: false,
        }
    }
}

mod duration_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

/// Parses `250ms`, `30s`, `5m` or `1h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as 30s or 5m"))?;
    let seconds = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{text}`: the unit is ms, s, m or h")),
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// What one reading was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Reading {
    /// A value.
    Value {
        /// The value.
        value: f64,
    },
    /// The query answered with no data.
    Nodata,
    /// The provider failed (after the plugin's own retries).
    Error {
        /// What it said.
        message: String,
    },
}

/// What a reading counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It met the conditions.
    Successful,
    /// It failed them; `counted` is false while a sustained trigger has not yet held long enough.
    Failed,
    /// Neither, or no data under `no_data: inconclusive`.
    Inconclusive,
    /// The provider failed.
    Error,
}

/// Where a metric stands after its readings so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Still within its limits.
    Running,
    /// Failed readings passed `failure_limit`, or errors `consecutive_error_limit`.
    Failed,
    /// Inconclusive readings passed `inconclusive_limit`.
    Inconclusive,
}

/// One reading as judged, for the journal: what it was, what it counted as, where the metric stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// The reading.
    pub reading: Reading,
    /// What it counted as.
    pub outcome: Outcome,
    /// Whether it counted against a limit (a failure inside a sustained window does not yet).
    pub counted: bool,
    /// The metric's phase after it (`running` for a dry-run metric whatever it measured).
    pub phase: Phase,
    /// What the phase would be without `dry_run`.
    pub would_be: Phase,
    /// Why, for a person: `0.012 > 0.01 held for 5m (failure 3 of limit 2)`.
    pub reason: String,
}

/// How a journal line holding a reading begins; the JSON of a [`Recorded`] follows.
pub const READING_PREFIX: &str = "reading ";

/// One reading as a plugin journals it, and as the report and replay read it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// The metric's name.
    pub metric: String,
    /// Where it was read, after templating (`prometheus http://…: <query>`).
    pub query: String,
    /// The traffic stage (green %) it was read at, for a plugin that moves traffic.
    #[serde(default)]
    pub stage: Option<u32>,
    /// When it was taken (ms since the epoch).
    pub at_ms: u64,
    /// When its watch's first reading was taken: the readings judged by one tracker share it.
    #[serde(default)]
    pub watch_ms: u64,
    /// Whether it was a background metric (read through pauses) rather than a stage gate.
    #[serde(default)]
    pub background: bool,
    /// The rules its watch judges by, given with the watch's first reading only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Rules>,
    /// How it was judged.
    pub judged: Judged,
}

impl Recorded {
    /// The reading in a journal line, if the line is one.
    pub fn from_line(line: &str) -> Option<Recorded> {
        serde_json::from_str(line.strip_prefix(READING_PREFIX)?).ok()
    }
}

/// Judges one metric's readings as they come, in time order.
#[derive(Debug, Clone)]
pub struct Tracker {
    rules: Rules,
    failed: u32,
    inconclusive: u32,
    consecutive_errors: u32,
    /// When the current run of failing readings began (ms), for sustained triggers.
    failing_since: Option<u64>,
    phase: Phase,
}

impl Tracker {
    /// A tracker with no readings yet.
    pub fn new(rules: Rules) -> Self {
        Self { rules, failed: 0, inconclusive: 0, consecutive_errors: 0, failing_since: None, phase: Phase::Running }
    }

    /// Where the metric stands (as its rules decide, `dry_run` aside).
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// What `reading`, taken at `at_ms`, counts as before limits and sustained windows.
    fn outcome(&self, reading: &Reading) -> Outcome {
        match reading {
            Reading::Error { .. } => Outcome::Error,
            Reading::Nodata => match self.rules.no_data {
                NoData::Inconclusive => Outcome::Inconclusive,
                NoData::Fail => Outcome::Failed,
                NoData::Pass => Outcome::Successful,
            },
            Reading::Value { value } => {
                let (success, failure) = (self.rules.success, self.rules.failure);
                match (success.map(|c| c.holds(*value)), failure.map(|c| c.holds(*value))) {
                    (_, Some(true)) => Outcome::Failed,
                    (Some(false), Some(false)) => Outcome::Inconclusive,
                    (Some(false), None) => Outcome::Failed,
                    _ => Outcome::Successful,
                }
            }
        }
    }

    /// Judges the next reading, taken at `at_ms` (milliseconds, any epoch, never decreasing).
    pub fn record(&mut self, reading: Reading, at_ms: u64) -> Judged {
        let outcome = self.outcome(&reading);
        let mut counted = true;
        let mut reason = match &reading {
            Reading::Value { value } => self.explain(*value),
            Reading::Nodata => format!("no data ({:?})", self.rules.no_data).to_lowercase(),
            Reading::Error { message } => format!("provider error: {message}"),
        };
        if outcome != Outcome::Error {
            self.consecutive_errors = 0;
        }
        if outcome != Outcome::Failed {
            self.failing_since = None;
        }
        match outcome {
            Outcome::Successful => {}
            Outcome::Inconclusive => self.inconclusive += 1,
            Outcome::Error => self.consecutive_errors += 1,
            Outcome::Failed => {
                let since = *self.failing_since.get_or_insert(at_ms);
                if let Some(window) = self.rules.sustained {
                    let held = std::time::Duration::from_millis(at_ms.saturating_sub(since));
                    counted = held >= window;
                    reason += &format!(" for {} of {}", format_duration(held), format_duration(window));
                }
                if counted {
                    self.failed += 1;
                }
            }
        }
        if self.phase == Phase::Running {
            if self.failed > self.rules.failure_limit {
                self.phase = Phase::Failed;
            } else if self.consecutive_errors > self.rules.consecutive_error_limit {
                self.phase = Phase::Failed;
                reason += &format!(" ({} consecutive errors)", self.consecutive_errors);
            } else if self.inconclusive > self.rules.inconclusive_limit {
                self.phase = Phase::Inconclusive;
            }
        }
        reason += &format!(
            " [failed {} of limit {}, inconclusive {} of limit {}]",
            self.failed, self.rules.failure_limit, self.inconclusive, self.rules.inconclusive_limit
        );
        let phase = if self.rules.dry_run { Phase::Running } else { self.phase };
        Judged { reading, outcome, counted, phase, would_be: self.phase, reason }
    }

    fn explain(&self, value: f64) -> String {
        let mut parts = vec![format!("{value}")];
        if let Some(f) = self.rules.failure {
            parts.push(format!("failure {f}: {}", if f.holds(value) { "met" } else { "not met" }));
        }
        if let Some(s) = self.rules.success {
            parts.push(format!("success {s}: {}", if s.holds(value) { "met" } else { "not met" }));
        }
        parts.join(", ")
    }
}

/// A duration as a pipeline writes it: `5m`, `30s`, `250ms`.
pub fn format_duration(d: std::time::Duration) -> String {
    match d.as_millis() {
        ms if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: serde_json::Value) -> Rules {
        serde_json::from_value(yaml).unwrap()
    }

    fn value(v: f64) -> Reading {
        Reading::Value { value: v }
    }

    const MIN: u64 = 60_000;

    #[test]
    fn a_spike_shorter_than_its_window_does_not_count_a_sustained_one_does() {
        // "error rate > 1 % for 5 consecutive minutes", read every minute.
        let mut t = Tracker::new(rules(serde_json::json!({"failure": {"op": ">", "value": 0.01}, "for": "5m"})));
        for (minute, v) in [(0, 0.002), (1, 0.05), (2, 0.05), (3, 0.001)].iter() {
            assert_eq!(t.record(value(*v), minute * MIN).phase, Phase::Running, "minute {minute}");
        }
        for minute in 4..9 {
            let j = t.record(value(0.05), minute * MIN);
            assert_eq!(j.phase, Phase::Running, "minute {minute}: {}", j.reason);
            assert!(!j.counted);
        }
        let j = t.record(value(0.05), 9 * MIN);
        assert!(j.counted && j.phase == Phase::Failed, "{}", j.reason);
        assert!(j.reason.contains("for 5m of 5m"), "{}", j.reason);
    }

    #[test]
    fn failure_limit_tolerates_that_many_failed_readings_and_fails_on_the_next() {
        let mut t = Tracker::new(rules(serde_json::json!({"success": {"op": "<", "value": 0.2}, "failure_limit": 2})));
        assert_eq!(t.record(value(0.5), 1).phase, Phase::Running);
        assert_eq!(t.record(value(0.1), 2).phase, Phase::Running);
        assert_eq!(t.record(value(0.5), 3).phase, Phase::Running);
        let third = t.record(value(0.5), 4);
        assert_eq!(third.phase, Phase::Failed, "{}", third.reason);
        assert!(third.reason.contains("failed 3 of limit 2"), "{}", third.reason);
    }

    #[test]
    fn both_conditions_missed_is_inconclusive_and_no_data_follows_its_policy() {
        let r = serde_json::json!({"success": {"op": "<", "value": 0.2}, "failure": {"op": ">", "value": 0.5}});
        let mut t = Tracker::new(rules(r.clone()));
        let j = t.record(value(0.3), 1);
        assert_eq!((j.outcome, j.phase), (Outcome::Inconclusive, Phase::Inconclusive));
        let mut t = Tracker::new(rules(r));
        assert_eq!(t.record(Reading::Nodata, 1).phase, Phase::Inconclusive, "no data is inconclusive by default");
        let mut t = Tracker::new(rules(serde_json::json!({"success": {"op": "<", "value": 0.2}, "no_data": "pass"})));
        assert_eq!(t.record(Reading::Nodata, 1).outcome, Outcome::Successful);
    }

    #[test]
    fn errors_fail_the_metric_past_the_consecutive_limit_and_a_good_reading_resets_them() {
        let mut t =
            Tracker::new(rules(serde_json::json!({"success": {"op": "<", "value": 1}, "consecutive_error_limit": 1})));
        let err = || Reading::Error { message: "503".into() };
        assert_eq!(t.record(err(), 1).phase, Phase::Running);
        assert_eq!(t.record(value(0.0), 2).phase, Phase::Running);
        assert_eq!(t.record(err(), 3).phase, Phase::Running);
        assert_eq!(t.record(err(), 4).phase, Phase::Failed);
    }

    #[test]
    fn a_dry_run_metric_never_decides_but_says_what_it_would() {
        let mut t = Tracker::new(rules(serde_json::json!({"success": {"op": "<", "value": 0.2}, "dry_run": true})));
        let j = t.record(value(0.9), 1);
        assert_eq!((j.phase, j.would_be), (Phase::Running, Phase::Failed));
    }

    #[test]
    fn durations_and_conditions_read_as_written() {
        assert_eq!(parse_duration("5m").unwrap(), std::time::Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), std::time::Duration::from_millis(250));
        assert!(parse_duration("5 minutes").is_err());
        let c: Condition = serde_json::from_value(serde_json::json!({"op": ">=", "value": 70})).unwrap();
        assert!(c.holds(70.0) && !c.holds(69.9));
        assert_eq!(c.to_string(), ">= 70");
    }
}
