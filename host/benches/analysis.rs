//! What canary analysis costs after a run, each figure beside its baseline from the same run:
//!
//! 1. `gantry analysis replay` of a long canary's journal (four stages watched 15 minutes each,
//!    five rollback triggers read every 10 s, four gates per stage: 1,816 readings among 2,176
//!    records) and of ten of them: finding the readings and judging them again vs reading the
//!    journal's lines into records (what every command over a run already does);
//! 2. the run report of that journal with its analysis charts vs the same journal with its
//!    readings left out;
//! 3. the statistical judge on 2 × 1,000 samples vs sorting the 2,000 numbers.
//!
//! `cargo bench -p gantry-host --bench analysis`. Run without `--bench` (as `cargo test
//! --benches` does) it measures each figure once: a check that the bench works, not a figure.

mod common;
use common::time;

use gantry_analysis::judge::{judge_metric, JudgeSpec};
use gantry_analysis::{Condition, Op, Reading, Recorded, Rules, Tracker, READING_PREFIX};
use gantry_host::analysis::{readings, replay, Spec};
use gantry_host::report::html;
use gantry_host::run::journal::Record;
use gantry_host::run::Event;
use std::time::Duration;

fn rules(failure: f64, held_minutes: u64) -> Rules {
    Rules {
        failure: Some(Condition { op: Op::Gt, value: failure }),
        sustained: Some(Duration::from_secs(held_minutes * 60)),
        ..Rules::default()
    }
}

/// A canary's journal: per stage a 15-minute pause with five triggers read every 10 s, then four
/// gates, each reading a log line among the step's other records (requests, stage lines).
fn journal(runs: usize) -> Vec<Record> {
    let triggers = [("error-rate", 0.01, 5), ("p95", 0.5, 5), ("cpu", 90.0, 10), ("memory", 95.0, 5), ("health", 0.5, 3)];
    let gate = Rules { success: Some(Condition { op: Op::Lt, value: 70.0 }), ..Rules::default() };
    let mut records = Vec::new();
    let mut at = 1_800_000_000_000u64;
    let mut push = |at: u64, event: Event| {
        records.push(Record { seq: records.len() as u64 + 1, ts_ms: at as f64, session: 1, event });
    };
    for run in 0..runs {
        let mut trackers: Vec<Tracker> = triggers.iter().map(|(_, f, m)| Tracker::new(rules(*f, *m))).collect();
        let first_at = at + 10_000;
        for stage in [5u32, 25, 50, 100] {
            // As a plugin's watch journals them: the rules with its first reading.
            let line = |metric: &str, rules: &Rules, background: bool, watch_ms: u64, at: u64, judged| Recorded {
                metric: metric.into(),
                query: format!("sum(rate({metric}[1m]))"),
                stage: Some(stage),
                at_ms: at,
                watch_ms,
                background,
                rules: (watch_ms == at).then(|| rules.clone()),
                judged,
            };
            let log = |r: &Recorded| Event::Log {
                step: format!("shift-{run}"),
                level: gantry_host::sandbox::Level::Info,
                message: format!("{READING_PREFIX}{}", serde_json::to_string(r).unwrap()),
            };
            for tick in 0..90u64 {
                at += 10_000;
                for (i, (name, failure, held)) in triggers.iter().enumerate() {
                    let value = failure * (0.2 + (tick % 7) as f64 / 10.0);
                    let judged = trackers[i].record(Reading::Value { value }, at);
                    push(at, log(&line(name, &rules(*failure, *held), true, first_at, at, judged)));
                }
                push(at, Event::Log { step: format!("shift-{run}"), level: gantry_host::sandbox::Level::Info, message: "GET /api/v1/query -> 200".into() });
            }
            for name in ["error-rate-gate", "p95-gate", "cpu-gate", "memory-gate"] {
                at += 50;
                let judged = Tracker::new(gate.clone()).record(Reading::Value { value: 35.0 }, at);
                push(at, log(&line(name, &gate, false, at, at, judged)));
            }
        }
    }
    records
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = |full_count: usize| if full { full_count } else { 1 };
    println!("mode: {}", if full { "full" } else { "quick (one pass)" });

    let stricter = Spec { rules: [("cpu".to_string(), rules(40.0, 1))].into(), ..Spec::default() };
    for runs in [1, 10] {
        let records = journal(runs);
        let count = readings(&records).len();
        let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        let parse = time(n(20), || text.lines().map(|l| serde_json::from_str::<Record>(l).unwrap()).collect::<Vec<_>>());
        let found = time(n(20), || readings(&records));
        let replayed = time(n(20), || replay(&readings(&records), &[], &stricter));
        println!(
            "replay of {count} readings in {} records ({} KiB of journal): {replayed:?} (finding them {found:?}); baseline, reading the journal's lines into records: {parse:?}",
            records.len(),
            text.len() / 1024
        );
    }

    let records = journal(1);
    let without: Vec<Record> = records
        .iter()
        .filter(|r| !matches!(&r.event, Event::Log { message, .. } if message.starts_with(READING_PREFIX)))
        .cloned()
        .collect();
    let charted = time(n(10), || html::page(&records, false));
    let plain = time(n(10), || html::page(&without, false));
    let size = html::page(&records, false).len();
    println!("report with 9 analysis charts and {} reading rows: {charted:?}, {} KiB; baseline, the same journal without readings: {plain:?}", records.len() - without.len(), size / 1024);

    // Seeded samples: a like canary (the judge's slowest case: every rank computed, nothing to cut short).
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let baseline: Vec<f64> = (0..1000).map(|_| 100.0 + 20.0 * next()).collect();
    let canary: Vec<f64> = (0..1000).map(|_| 100.0 + 20.0 * next()).collect();
    let spec = JudgeSpec::default();
    let judged = time(n(50), || judge_metric(&canary, &baseline, &spec));
    let sorted = time(n(50), || {
        let mut all: Vec<f64> = canary.iter().chain(&baseline).copied().collect();
        all.sort_by(f64::total_cmp);
        all
    });
    println!("judge of 2 x 1,000 samples (Mann-Whitney U, Hodges-Lehmann shift): {judged:?}; baseline, sorting the 2,000 numbers: {sorted:?}");
}
