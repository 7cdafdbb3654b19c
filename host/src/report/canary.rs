//! What a canary step logged, read back from its journal: the green weight each stage set, each
//! gate reading against its threshold, the weights a rollback restored. The HTML report charts
//! and tabulates it; the Markdown job summary tabulates it.

use crate::plan::Plan;
use crate::run::journal::Record;
use crate::run::Event;

/// A point on the canary chart: time, green weight, what moved it (`25%`, `restored`).
pub type Weight = (f64, u32, String);

/// Green weights the canary logged (`stage N%: green weight N, …`) and its gate readings
/// (`stage N% sample i/n: <gate> gate: <observed> (threshold <t>): <verdict>`), a row each:
/// time, step, stage, sample, gate, observed, threshold, verdict.
pub fn logged(records: &[Record], plan: Option<&Plan>) -> (Vec<Weight>, Vec<Vec<String>>) {
    // The green target group of each canary step, to read the weight a rollback restored.
    let green = |step: &str| -> Option<String> {
        let input = &plan?.step(step)?.input;
        input.get("green_target_group_arn")?.as_str().map(str::to_string)
    };
    let (mut weights, mut readings) = (Vec::new(), Vec::new());
    for r in records {
        let Event::Log { step, message, .. } = &r.event else { continue };
        if let Some(rest) = message.strip_prefix("stage ") {
            if let Some((stage, after)) = rest.split_once(": green weight ") {
                if let Ok(weight) = after.split(',').next().unwrap_or_default().trim().parse::<u32>() {
                    weights.push((r.ts_ms, weight, stage.to_string()));
                }
            } else if let Some(reading) = reading(rest) {
                readings.push([vec![clock(r.ts_ms), step.clone()], reading].concat());
            }
        } else if let Some(restored) = message.strip_prefix("restored ") {
            let list: Vec<serde_json::Value> = serde_json::from_str(restored).unwrap_or_default();
            let weight = green(step)
                .and_then(|arn| list.iter().find(|w| w["arn"] == arn.as_str()).and_then(|w| w["weight"].as_u64()));
            if let Some(weight) = weight {
                weights.push((r.ts_ms, weight as u32, "restored".into()));
            }
            let row = ["rollback", "", "weights restored", restored, "", ""];
            readings.push([vec![clock(r.ts_ms), step.clone()], row.map(str::to_string).to_vec()].concat());
        } else if message.starts_with("gate failed at ") {
            let row = ["", "", "", message.as_str(), "", "Fail"];
            readings.push([vec![clock(r.ts_ms), step.clone()], row.map(str::to_string).to_vec()].concat());
        }
    }
    (weights, readings)
}

/// `25% sample 1/2: error-rate gate: 0.01 (threshold 0.05): Pass` as stage, sample, gate,
/// observed, threshold, verdict; a reading in another form keeps its text as the gate.
fn reading(rest: &str) -> Option<Vec<String>> {
    let (stage, after) = rest.split_once(" sample ")?;
    let (sample, after) = after.split_once(": ")?;
    let parsed = after.split_once(" gate: ").and_then(|(gate, after)| {
        let (observed, after) = after.split_once(" (threshold ")?;
        let (threshold, verdict) = after.split_once("): ")?;
        Some([gate, observed, threshold, verdict].map(str::to_string).to_vec())
    });
    let tail = parsed.unwrap_or_else(|| vec![after.to_string(), String::new(), String::new(), String::new()]);
    Some([vec![stage.to_string(), sample.to_string()], tail].concat())
}

/// `HH:MM:SS.mmm` UTC of a journal timestamp.
pub fn clock(ts_ms: f64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(ts_ms.max(0.0) / 1e3);
    let text = humantime::format_rfc3339_millis(at).to_string();
    text.get(11..23).unwrap_or(&text).to_string()
}
