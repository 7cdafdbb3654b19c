//! The report's Analysis section: a chart per metric (its readings over the run's time, its
//! thresholds, the moment it decided) and a table of every reading, from the `reading {json}`
//! lines plugins journal.

use super::{clock, duration, escape, table};
use crate::analysis::{first_seen, reading_text, StepReading};
use gantry_analysis::{format_duration, Outcome, Phase, Reading, Rules};
use std::fmt::Write;

/// The section's HTML, or nothing when the run recorded no readings.
pub(super) fn section(readings: &[StepReading], t0: f64, t1: f64) -> String {
    if readings.is_empty() {
        return String::new();
    }
    let metrics = first_seen(readings.iter().map(|r| (r.step.as_str(), r.recorded.metric.as_str())));
    let mut html = String::from("<section><h2>Analysis</h2>");
    for (step, metric) in metrics {
        let own: Vec<&StepReading> =
            readings.iter().filter(|r| r.step == step && r.recorded.metric == metric).collect();
        let _ = write!(html, "<h3>{} · {}</h3>", escape(step), escape(metric));
        html += &chart(step, metric, &own, t0, t1);
    }
    let rows: Vec<Vec<String>> = readings
        .iter()
        .map(|r| {
            let j = &r.recorded.judged;
            vec![
                clock(r.recorded.at_ms as f64),
                r.step.clone(),
                r.recorded.metric.clone(),
                r.recorded.stage.map(|s| format!("{s}%")).unwrap_or_default(),
                reading_text(&j.reading),
                format!("{:?}", j.outcome).to_lowercase(),
                j.reason.clone(),
                phase_text(j.phase, j.would_be),
            ]
        })
        .collect();
    html += &table(&["time", "step", "metric", "stage", "value", "outcome", "why", "metric is"], &rows);
    html + "</section>\n"
}

/// `running`, `Fail` (so the table marks the row), or `running (dry run: would be failed)`.
fn phase_text(phase: Phase, would_be: Phase) -> String {
    match (phase, would_be) {
        (Phase::Failed, _) => "Fail".into(),
        (Phase::Inconclusive, _) => "inconclusive".into(),
        (Phase::Running, Phase::Running) => "running".into(),
        (Phase::Running, other) => format!("running (dry run: would be {other:?})").to_lowercase(),
    }
}

/// The thresholds of `rules` to draw: (value, label, class).
fn thresholds(rules: &Rules) -> Vec<(f64, String, &'static str)> {
    let mut lines = Vec::new();
    if let Some(f) = rules.failure {
        let held = rules.sustained.map(|d| format!(" for {}", format_duration(d))).unwrap_or_default();
        lines.push((f.value, format!("failure {f}{held}"), "failure"));
    }
    if let Some(s) = rules.success {
        lines.push((s.value, format!("success {s}"), "success"));
    }
    lines
}

/// One metric's readings as points over the run's time, its thresholds as dashed lines and a
/// marker where it decided.
fn chart(step: &str, metric: &str, readings: &[&StepReading], t0: f64, t1: f64) -> String {
    let (left, width, height, top) = (60.0, 740.0, 170.0, 16.0);
    let plot = height - top - 30.0;
    let rules = readings.iter().find_map(|r| r.recorded.rules.clone()).unwrap_or_default();
    let lines = thresholds(&rules);
    let values: Vec<f64> = readings
        .iter()
        .filter_map(|r| match r.recorded.judged.reading {
            Reading::Value { value } => Some(value),
            _ => None,
        })
        .chain(lines.iter().map(|l| l.0))
        .collect();
    let hi = values.iter().cloned().fold(f64::MIN, f64::max).max(0.0);
    let lo = values.iter().cloned().fold(f64::MAX, f64::min).min(0.0);
    let span = if hi > lo { (hi - lo) * 1.15 } else { 1.0 };
    let y = |v: f64| top + (1.0 - (v - lo) / span) * plot;
    let x = |ts: f64| left + (ts - t0).max(0.0) * width / (t1 - t0).max(1.0);
    let mut svg = format!(
        "<svg class=\"metric\" data-step=\"{}\" data-metric=\"{}\" role=\"img\" viewBox=\"0 0 {w} {height}\" width=\"{w}\" height=\"{height}\">",
        escape(step),
        escape(metric),
        w = left + width + 20.0
    );
    for v in [lo, lo + span / 2.0, lo + span] {
        let _ = write!(
            svg,
            "<text class=\"small\" x=\"4\" y=\"{:.1}\">{}</text><line class=\"grid\" x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>",
            y(v) + 4.0,
            short(v),
            left + width,
            yy = y(v)
        );
    }
    let _ = write!(
        svg,
        "<text class=\"small tick\" x=\"{left}\" y=\"{:.1}\">0 s</text><text class=\"small tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        height - 6.0,
        left + width,
        height - 6.0,
        duration(t1 - t0)
    );
    for (value, label, class) in &lines {
        let _ = write!(
            svg,
            "<line class=\"threshold {class}\" data-value=\"{value}\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/><text class=\"small {class}\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + width,
            left + width,
            y(*value) - 3.0,
            escape(label),
            yy = y(*value)
        );
    }
    // Where the traffic stage changed between readings: a faint line labelled with the new stage.
    let mut stage = None;
    for r in readings {
        if r.recorded.stage.is_some() && r.recorded.stage != stage {
            let label = r.recorded.stage.map(|s| format!("{s}%")).unwrap_or_default();
            let at = x(r.recorded.at_ms as f64);
            svg += &vertical("stage", at, (top, top + plot), (at, top + plot + 12.0, "middle"), &label);
            stage = r.recorded.stage;
        }
    }
    let points: Vec<String> = readings
        .iter()
        .filter_map(|r| match r.recorded.judged.reading {
            Reading::Value { value } => Some(format!("{:.1},{:.1}", x(r.recorded.at_ms as f64), y(value))),
            _ => None,
        })
        .collect();
    let _ = write!(svg, "<polyline class=\"series\" points=\"{}\"/>", points.join(" "));
    for r in readings {
        let j = &r.recorded.judged;
        let (cx, cy) = match j.reading {
            Reading::Value { value } => (x(r.recorded.at_ms as f64), y(value)),
            _ => (x(r.recorded.at_ms as f64), y(lo)),
        };
        let outcome = format!("{:?}", j.outcome).to_lowercase();
        let counted = if j.outcome == Outcome::Failed && !j.counted { " pending" } else { "" };
        let _ = write!(
            svg,
            "<circle class=\"reading o-{outcome}{counted}\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\"><title>{} at {}: {}</title></circle>",
            escape(&reading_text(&j.reading)),
            duration(r.recorded.at_ms as f64 - t0),
            escape(&j.reason)
        );
    }
    // The moment the metric decided: the first reading after which it stopped running.
    if let Some(r) = readings.iter().find(|r| r.recorded.judged.phase != Phase::Running) {
        let phase = format!("{:?}", r.recorded.judged.phase).to_lowercase();
        let at = x(r.recorded.at_ms as f64);
        let stage = r.recorded.stage.map(|s| format!(" at {s}%")).unwrap_or_default();
        let label = format!("{phase}{stage}, {}", duration(r.recorded.at_ms as f64 - t0));
        svg += &vertical("decided", at, (top, top + plot), (at + 4.0, top + 10.0, "start"), &label);
    }
    svg + "</svg>"
}

/// A vertical line at `x` over `span` (y from, to) with `label` at (x, y, text-anchor).
fn vertical(class: &str, x: f64, span: (f64, f64), at: (f64, f64, &str), label: &str) -> String {
    format!(
        "<line class=\"{class}\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text class=\"small {class}\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{}\">{}</text>",
        span.0,
        span.1,
        at.0,
        at.1,
        at.2,
        escape(label)
    )
}

/// A compact axis label: `0.005`, `12.5`, `1.2e6`.
fn short(v: f64) -> String {
    match v.abs() {
        0.0 => "0".into(),
        a if !(1e-3..1e5).contains(&a) => format!("{v:.1e}"),
        a if a < 1.0 => format!("{v:.4}").trim_end_matches('0').to_string(),
        _ => format!("{v:.1}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_analysis::{Condition, Op, Recorded, Tracker};

    #[test]
    fn a_chart_draws_each_reading_its_thresholds_and_the_moment_it_failed() {
        let rules = Rules {
            failure: Some(Condition { op: Op::Gt, value: 0.01 }),
            sustained: Some(std::time::Duration::from_secs(2)),
            ..Rules::default()
        };
        let mut tracker = Tracker::new(rules.clone());
        let readings: Vec<StepReading> = [(1_000, 0.0), (2_000, 0.2), (3_000, 0.2), (4_000, 0.2)]
            .into_iter()
            .map(|(at_ms, value)| StepReading {
                step: "shift".into(),
                recorded: Recorded {
                    metric: "error-rate".into(),
                    query: "web".into(),
                    stage: Some(50),
                    at_ms,
                    watch_ms: 1_000,
                    background: true,
                    rules: Some(rules.clone()),
                    judged: tracker.record(Reading::Value { value }, at_ms),
                },
            })
            .collect();
        let html = section(&readings, 0.0, 5_000.0);
        assert_eq!(html.matches("<circle class=\"reading").count(), 4, "{html}");
        assert_eq!(html.matches("o-failed pending").count(), 2, "two failures inside the 2 s window: {html}");
        assert!(html.contains("class=\"threshold failure\" data-value=\"0.01\""), "{html}");
        assert!(html.contains("failure &gt; 0.01 for 2s"), "{html}");
        assert!(html.contains(">failed at 50%, 4.0 s</text>"), "the trigger's moment: {html}");
        assert_eq!(html.matches("text-anchor=\"middle\">50%</text>").count(), 1, "the stage, marked once: {html}");
        assert_eq!(html.matches("<tr").count(), 1 + 4, "a row per reading: {html}");
    }
}
