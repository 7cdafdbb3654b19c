//! The blue-green guide's nine conditions as the shipped pipelines write them: each judged by the
//! SDK's rules on readings a minute apart — a promotion criterion passes just inside its limit and
//! fails at it, a rollback trigger lets a breach shorter than its `for:` pass and fires once it has
//! held that long. The README shows the same block. (The providers are exercised against moto's
//! CloudWatch and Prometheus by `blue_green.rs`, which reads all nine in a release and fails one.)

use crate::support::repo;
use gantry_sdk::analysis::{Metric, Phase, Reading, Tracker};

/// A condition of the guide: metric, a reading that keeps it running, one that breaches it, and
/// for a rollback trigger how many minutes a breach must hold.
const GUIDE: [(&str, f64, f64, Option<u64>); 9] = [
    ("error-rate", 0.0009, 0.001, None),
    ("p95-latency", 0.19, 0.2, None),
    ("cpu", 69.0, 70.0, None),
    ("memory", 79.0, 80.0, None),
    ("error-rate-sustained", 0.01, 0.0101, Some(5)),
    ("p95-latency-sustained", 0.5, 0.51, Some(5)),
    ("cpu-sustained", 90.0, 90.5, Some(10)),
    ("memory-sustained", 95.0, 95.5, Some(5)),
    ("health-check-failures", 0.5, 0.67, Some(3)),
];

const MINUTE: u64 = 60_000;

/// The shift step's `analysis:` in a shipped pipeline, and the block's text.
fn analysis(file: &str) -> (Vec<Metric>, String) {
    let text = std::fs::read_to_string(repo().join("pipelines").join(file)).unwrap();
    let pipeline: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let steps = pipeline["steps"].as_sequence().unwrap();
    let shift = steps.iter().find(|s| s["id"] == "shift").unwrap();
    let metrics = serde_yaml::from_value(shift["with"]["analysis"].clone()).unwrap();
    let start = text.find("      # The guide's promotion criteria").unwrap();
    let end = start + text[start..].find("\n\n").unwrap_or(text.len() - start);
    let block = text[start..end].lines().map(|l| l.strip_prefix("      ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    (metrics, block)
}

fn value(v: f64) -> Reading {
    Reading::Value { value: v }
}

#[test]
fn the_shipped_pipelines_hold_the_guides_nine_conditions_and_each_decides_as_the_guide_says() {
    for file in ["blue-green-release.yaml", "canary-release.yaml"] {
        let (metrics, _) = analysis(file);
        assert_eq!(metrics.len(), GUIDE.len(), "{file}");
        for (name, inside, breach, held_minutes) in GUIDE {
            let metric = metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{file}: no {name}"));
            let rules = &metric.rules;
            assert!(!rules.dry_run, "{file} {name}");
            match held_minutes {
                // A promotion criterion: judged at the gates, every reading must be inside it.
                None => {
                    assert!(!metric.background, "{file} {name} is a stage gate");
                    let mut t = Tracker::new(rules.clone());
                    assert_eq!(t.record(value(inside), 0).phase, Phase::Running, "{file} {name} at {inside}");
                    let mut t = Tracker::new(rules.clone());
                    let j = t.record(value(breach), 0);
                    assert_eq!(j.phase, Phase::Failed, "{file} {name} at {breach}: {}", j.reason);
                }
                // A rollback trigger: read through the pauses, fires once the breach has held.
                Some(minutes) => {
                    assert!(metric.background, "{file} {name} is read all through the rollout");
                    let mut t = Tracker::new(rules.clone());
                    // At the limit itself, for twice the window: nothing.
                    for m in 0..=2 * minutes {
                        assert_eq!(t.record(value(inside), m * MINUTE).phase, Phase::Running, "{file} {name}");
                    }
                    // A breach one minute short of the window, a reading back inside, then the breach again.
                    let start = 3 * minutes * MINUTE;
                    for m in 0..minutes {
                        let j = t.record(value(breach), start + m * MINUTE);
                        assert_eq!(j.phase, Phase::Running, "{file} {name} after {m} min: {}", j.reason);
                    }
                    t.record(value(inside), start + minutes * MINUTE);
                    let again = start + (minutes + 1) * MINUTE;
                    for m in 0..minutes {
                        assert_eq!(t.record(value(breach), again + m * MINUTE).phase, Phase::Running, "{file} {name}");
                    }
                    let j = t.record(value(breach), again + minutes * MINUTE);
                    assert_eq!(j.phase, Phase::Failed, "{file} {name} held {minutes} min: {}", j.reason);
                }
            }
        }
        // A gate and its trigger read the same series.
        let source = |name: &str| metrics.iter().find(|m| m.name == name).unwrap().source.describe();
        for (gate, trigger) in [("error-rate", "error-rate-sustained"), ("p95-latency", "p95-latency-sustained")] {
            assert_eq!(source(gate), source(trigger), "{file}");
        }
        assert!(source("cpu").contains("CPUUtilization") && source("memory").contains("em"), "{file}");
    }
}

#[test]
fn the_readme_shows_the_blue_green_release_s_conditions_as_the_pipeline_writes_them() {
    let (_, block) = analysis("blue-green-release.yaml");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains(&block), "README's canary section should show, verbatim:\n{block}");
}
