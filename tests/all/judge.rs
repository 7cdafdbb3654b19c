//! The canary judge's statistics against SciPy's `mannwhitneyu` on the same seeded samples: a
//! canary drawn from the baseline's distribution passes, one shifted by +30 % fails, and U and
//! the p-values agree with the reference.

use crate::peers::venv;
use gantry_sdk::analysis::judge::{self, Alternative, Classification, JudgeSpec};

/// Seeded normal samples (a 64-bit LCG and Box–Muller), so the test draws the same every run.
fn normal(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f64> {
    let mut state = seed;
    let mut uniform = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            // Latencies in whole milliseconds, so ties occur as they do in real readings.
            (mean + sd * z).round()
        })
        .collect()
}

/// SciPy's U and asymptotic p-values (two-sided, greater, less) for `x` against `y`.
fn scipy(x: &[f64], y: &[f64]) -> (f64, [f64; 3]) {
    let code = "import json, sys\nfrom scipy.stats import mannwhitneyu\nx, y = json.load(sys.stdin)\n\
                r = [mannwhitneyu(x, y, alternative=a, method='asymptotic') for a in ('two-sided', 'greater', 'less')]\n\
                print(json.dumps([r[0].statistic, [float(t.pvalue) for t in r]]))";
    let mut child = std::process::Command::new(venv("python"))
        .args(["-c", code])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::json!([x, y]).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "scipy: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p: Vec<f64> = v[1].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
    (v[0].as_f64().unwrap(), [p[0], p[1], p[2]])
}

#[test]
fn the_judge_passes_a_canary_like_its_baseline_fails_one_30_percent_slower_and_agrees_with_scipy() {
    let baseline = normal(7, 60, 180.0, 20.0);
    let same = normal(11, 60, 180.0, 20.0);
    let slower: Vec<f64> = normal(13, 60, 180.0, 20.0).iter().map(|v| (v * 1.3).round()).collect();
    let spec = JudgeSpec::default();
    assert_eq!(judge::judge_metric(&same, &baseline, &spec).classification, Classification::Pass);
    let failed = judge::judge_metric(&slower, &baseline, &spec);
    assert_eq!(failed.classification, Classification::High, "{failed:?}");
    assert!(failed.relative_shift > 0.2, "{failed:?}");

    for (canary, name) in [(&same, "same"), (&slower, "slower")] {
        let (u, p) = scipy(canary, &baseline);
        let ours = [Alternative::TwoSided, Alternative::Greater, Alternative::Less]
            .map(|a| judge::mann_whitney(canary, &baseline, a));
        assert_eq!(ours[0].u, u, "{name}: U");
        for (mine, theirs) in ours.iter().zip(p) {
            assert!(
                (mine.p - theirs).abs() <= 1e-9 * theirs.max(1e-300) + 1e-15,
                "{name}: p {} vs scipy {theirs}",
                mine.p
            );
        }
    }
}
