//! Canary analysis shared by every plugin that moves traffic: a list of [`Metric`]s, each read
//! from a [`provider`] through the host and judged on every reading by the rules of
//! `gantry-analysis` (re-exported here: [`Rules`], [`Tracker`], [`judge`]), which the host also
//! uses to replay a run's recorded readings under a changed spec.
//!
//! Every reading is journaled as `reading {json}` by [`Watch::read`]: the replay and the HTML
//! report read those lines back.

pub mod provider;

pub use gantry_analysis::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One metric: where its readings come from and how they are judged.
///
/// Example: `{ name: error-rate, source: { provider: prometheus, address: "http://prometheus:9090", query: "…" }, rules: { failure: { op: ">", value: 0.01 }, for: 5m } }`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// Its name in the journal, outputs and report, e.g. `error-rate`.
    pub name: String,
    /// Where readings come from.
    pub source: provider::Provider,
    /// How readings are judged.
    #[serde(default)]
    pub rules: Rules,
    /// For a plugin that moves traffic: read all through the rollout, pauses included, and stop
    /// the rollout the moment it fails (a rollback trigger), instead of at each stage's gates.
    #[serde(default)]
    pub background: bool,
}

impl Metric {
    /// Reads the metric once, unjudged and unjournaled, for [`crate::Step::preflight`]: before
    /// anything moves, only an unreadable source is in the way, and no data yet is no failure.
    /// Named `metric NAME`, or `background metric NAME`.
    pub fn preflight(&self, ctx: &crate::Context) -> crate::Check {
        let name = format!("{}metric {}", if self.background { "background " } else { "" }, self.name);
        match self.source.read(ctx) {
            Reading::Value { value } => crate::Check::passed(name, format!("reads {value} now")),
            Reading::Nodata => crate::Check::passed(name, "no data yet"),
            Reading::Error { message } => crate::Check::failed(name, message),
        }
    }
}

/// A metric being watched: its tracker, and a journal line for every reading.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The metric.
    pub metric: Metric,
    tracker: Tracker,
    /// When its first reading was taken (ms): names this watch's readings in the journal, so a
    /// replay judges them with one tracker, as they were (a stage's gates, a resumed run).
    since_ms: Option<u64>,
}

impl Watch {
    /// A watch with no readings yet.
    pub fn new(metric: Metric) -> Self {
        let tracker = Tracker::new(metric.rules.clone());
        Self { metric, tracker, since_ms: None }
    }

    /// Reads the metric once, judges the reading and journals it as `reading {json}` (with the
    /// traffic stage it was read at, when there is one, and with the first the rules it is judged by).
    pub fn read(&mut self, ctx: &crate::Context, stage: Option<u32>) -> Judged {
        let at = crate::now_ms();
        let judged = self.tracker.record(self.metric.source.read(ctx), at);
        // The rules once, with the watch's first reading: its later readings are judged by the same.
        let first = self.since_ms.is_none();
        let line = Recorded {
            metric: self.metric.name.clone(),
            query: self.metric.source.describe(),
            stage,
            at_ms: at,
            watch_ms: *self.since_ms.get_or_insert(at),
            background: self.metric.background,
            rules: first.then(|| self.metric.rules.clone()),
            judged: judged.clone(),
        };
        crate::info!("{}{}", READING_PREFIX, serde_json::to_string(&line).unwrap_or_default());
        judged
    }
}

/// Reads every watch every `interval_ms` for `duration_ms` (at least once), each reading journaled;
/// stops at the first metric that decides, with its phase and why (`error-rate: 0.02 …`). A
/// rollout's pause with rollback triggers, or a deploy's bake time.
pub fn watch_for(
    ctx: &crate::Context,
    watches: &mut [Watch],
    stage: Option<u32>,
    duration_ms: u64,
    interval_ms: u64,
) -> Option<(Phase, String)> {
    let until = crate::now_ms() + duration_ms;
    loop {
        for watch in watches.iter_mut() {
            let judged = watch.read(ctx, stage);
            if judged.phase != Phase::Running {
                return Some((judged.phase, format!("{}: {}", watch.metric.name, judged.reason)));
            }
        }
        let now = crate::now_ms();
        if now >= until {
            return None;
        }
        crate::sleep_ms(interval_ms.max(1).min(until - now));
    }
}
