//! The statistical judge: a canary's samples of a metric against the baseline's, as Kayenta's
//! Mann–Whitney classifier judges them. Each metric is compared with a Mann–Whitney U test (ties
//! given average ranks, the normal approximation with tie and continuity corrections, as SciPy's
//! `mannwhitneyu(method="asymptotic")`), in the direction that is bad for it, and its shift
//! (the Hodges–Lehmann estimate, relative to the baseline's median) is weighed against a
//! tolerance; the run's score is the share of metrics that pass.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which way a metric must not move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Higher is worse (error rate, latency, CPU).
    Increase,
    /// Lower is worse (throughput, success rate).
    Decrease,
    /// A move either way is bad.
    Either,
}

/// How one metric is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeSpec {
    /// Which way is bad (default `increase`).
    #[serde(default = "increase")]
    pub direction: Direction,
    /// Significance level of the test (default 0.05).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The relative shift tolerated even when significant, e.g. 0.1 for 10 % (default 0.1).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn increase() -> Direction {
    Direction::Increase
}
fn default_alpha() -> f64 {
    0.05
}
fn default_tolerance() -> f64 {
    0.1
}

impl Default for JudgeSpec {
    fn default() -> Self {
        Self { direction: increase(), alpha: default_alpha(), tolerance: default_tolerance() }
    }
}

/// A Mann–Whitney U test's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// U of the first sample (SciPy's `statistic`).
    pub u: f64,
    /// The p-value for the alternative asked.
    pub p: f64,
    /// The standard score used for it.
    pub z: f64,
}

/// The alternative hypothesis, as SciPy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alternative {
    /// The first sample's distribution differs from the second's.
    TwoSided,
    /// The first sample tends to be larger.
    Greater,
    /// The first sample tends to be smaller.
    Less,
}

/// Mann–Whitney U of `x` against `y` (both non-empty), asymptotic p-value with tie and continuity
/// corrections; `p` is 1 when every value is tied.
pub fn mann_whitney(x: &[f64], y: &[f64], alternative: Alternative) -> MannWhitney {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, bool)> = x.iter().map(|v| (*v, true)).chain(y.iter().map(|v| (*v, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut tie_term, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        // Ranks i+1 ..= j+1 share their average.
        let rank = (i + j + 2) as f64 / 2.0;
        rank_sum += rank * all[i..=j].iter().filter(|(_, first)| *first).count() as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let n = n1 + n2;
    let u1 = rank_sum - n1 * (n1 + 1.0) / 2.0;
    let u2 = n1 * n2 - u1;
    let mu = n1 * n2 / 2.0;
    let sigma = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let u = match alternative {
        Alternative::TwoSided => u1.max(u2),
        Alternative::Greater => u1,
        Alternative::Less => u2,
    };
    if sigma == 0.0 || !sigma.is_finite() {
        return MannWhitney { u: u1, p: 1.0, z: 0.0 };
    }
    let z = (u - mu - 0.5) / sigma;
    let tail = normal_sf(z);
    let p = match alternative {
        Alternative::TwoSided => (2.0 * tail).min(1.0),
        _ => tail,
    };
    MannWhitney { u: u1, p, z }
}

/// The standard normal's survival function, 1 - Φ(z).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function, to about 1e-14: the Taylor series of erf below 2 (few
/// enough terms that cancellation stays small), a continued fraction (Lentz) above, where
/// erfc's small values would be lost as 1 - erf.
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.0 {
        let (mut term, mut sum, z) = (x, x, x * x);
        for n in 1..80 {
            term *= -z / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        return 1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum;
    }
    // erfc(x) = exp(-x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …))))).
    let tiny = 1e-300;
    let (mut f, mut c, mut d) = (x, x, 0.0);
    for n in 1..200 {
        let a = n as f64 / 2.0;
        d = x + a * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = x + a / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

/// The median of `values` (non-empty).
pub fn median(values: &[f64]) -> f64 {
    median_in_place(&mut values.to_vec())
}

/// The median of `v` (non-empty), reordering it: selection, not a sort, since the Hodges–Lehmann
/// estimate takes the median of every pairwise difference (a million for 1,000 samples a side).
fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    let (below, upper, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    match n % 2 {
        1 => upper,
        // The largest of the lower half is the other middle value.
        _ => (below.iter().copied().max_by(f64::total_cmp).unwrap_or(upper) + upper) / 2.0,
    }
}

/// The Hodges–Lehmann estimate of how far `x` sits above `y`: the median of every difference.
pub fn hodges_lehmann(x: &[f64], y: &[f64]) -> f64 {
    let mut diffs: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| a - b)).collect();
    median_in_place(&mut diffs)
}

/// What the judge concluded about one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// No significant shift beyond the tolerance in the bad direction.
    Pass,
    /// Significantly and materially higher than the baseline.
    High,
    /// Significantly and materially lower than the baseline.
    Low,
    /// Too few samples to judge (fewer than 3 on a side).
    Nodata,
}

/// One metric's judgement, with the figures that led to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricJudgement {
    /// Pass, high, low or no data.
    pub classification: Classification,
    /// U of the canary's sample.
    pub u: f64,
    /// The p-value in the bad direction (the smaller of both for `either`).
    pub p: f64,
    /// Hodges–Lehmann shift of the canary over the baseline, relative to the baseline's median.
    pub relative_shift: f64,
    /// Samples: canary, baseline.
    pub samples: (usize, usize),
}

/// Judges a canary's samples of one metric against the baseline's.
pub fn judge_metric(canary: &[f64], baseline: &[f64], spec: &JudgeSpec) -> MetricJudgement {
    let samples = (canary.len(), baseline.len());
    if canary.len() < 3 || baseline.len() < 3 {
        return MetricJudgement {
            classification: Classification::Nodata,
            u: 0.0,
            p: 1.0,
            relative_shift: 0.0,
            samples,
        };
    }
    let shift = hodges_lehmann(canary, baseline);
    let scale = median(baseline).abs();
    let relative_shift = if scale > 0.0 { shift / scale } else { shift };
    let greater = mann_whitney(canary, baseline, Alternative::Greater);
    let less = mann_whitney(canary, baseline, Alternative::Less);
    let high = greater.p < spec.alpha && relative_shift > spec.tolerance;
    let low = less.p < spec.alpha && relative_shift < -spec.tolerance;
    let (classification, p) = match spec.direction {
        Direction::Increase => (if high { Classification::High } else { Classification::Pass }, greater.p),
        Direction::Decrease => (if low { Classification::Low } else { Classification::Pass }, less.p),
        Direction::Either if high => (Classification::High, greater.p),
        Direction::Either if low => (Classification::Low, less.p),
        Direction::Either => (Classification::Pass, greater.p.min(less.p)),
    };
    MetricJudgement { classification, u: greater.u, p, relative_shift, samples }
}

/// The canary's overall verdict from its score, as Kayenta gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// At or above the pass score.
    Pass,
    /// At or above the marginal score, below the pass score: a person decides.
    Marginal,
    /// Below the marginal score.
    Fail,
}

/// The share (0–100) of judged metrics that pass, and the verdict for `pass_score` and `marginal_score`.
/// Metrics without data count as not passing: a canary is not promoted on silence.
pub fn score(judgements: &[MetricJudgement], pass_score: f64, marginal_score: f64) -> (f64, Verdict) {
    if judgements.is_empty() {
        return (0.0, Verdict::Fail);
    }
    let passed = judgements.iter().filter(|j| j.classification == Classification::Pass).count();
    let score = 100.0 * passed as f64 / judgements.len() as f64;
    let verdict = match score {
        s if s >= pass_score => Verdict::Pass,
        s if s >= marginal_score => Verdict::Marginal,
        _ => Verdict::Fail,
    };
    (score, verdict)
}

/// Kayenta's thresholds on the share of compared metrics that pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    /// At or above: pass (default 95).
    pub pass: f64,
    /// At or above (below `pass`): marginal, the run pauses for a person (default 75).
    pub marginal: f64,
}

impl Default for Scores {
    fn default() -> Self {
        Self { pass: 95.0, marginal: 75.0 }
    }
}

/// How a journal line holding a comparison begins; the JSON of a [`Compared`] follows.
pub const COMPARED_PREFIX: &str = "compared ";

/// One comparison as a plugin journals it: the samples, how they were judged and what came of it,
/// so a replay can judge the same samples with another spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compared {
    /// The comparison's name, e.g. `latency`.
    pub name: String,
    /// The canary's samples, oldest first.
    pub canary: Vec<f64>,
    /// The baseline's samples, oldest first.
    pub baseline: Vec<f64>,
    /// How they were judged.
    pub spec: JudgeSpec,
    /// The step's score thresholds.
    pub scores: Scores,
    /// What the judge concluded.
    pub judgement: MetricJudgement,
}

impl Compared {
    /// The comparison in a journal line, if the line is one.
    pub fn from_line(line: &str) -> Option<Compared> {
        serde_json::from_str(line.strip_prefix(COMPARED_PREFIX)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
        assert_eq!(median(&[2.0, 2.0, 1.0, 9.0]), 2.0);
        assert_eq!(hodges_lehmann(&[10.0, 11.0], &[1.0, 2.0]), 9.0);
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (0.3, 0.671_373_240_540_873_2),
            (1.0, 0.157_299_207_050_285_13),
            (2.5, 4.069_520_174_449_59e-4),
            (5.0, 1.537_459_794_428_034_8e-12),
            (-1.0, 1.842_700_792_949_715),
        ] {
            assert!(((erfc(x) - want) / want).abs() < 1e-12, "erfc({x}) = {} not {want}", erfc(x));
        }
    }

    #[test]
    fn u_counts_pairs_with_ties_as_halves() {
        // x beats y in 3 of 4 pairs and ties in one: U = 3.5.
        let r = mann_whitney(&[2.0, 3.0], &[1.0, 2.0], Alternative::TwoSided);
        assert_eq!(r.u, 3.5);
        let all_tied = mann_whitney(&[1.0, 1.0], &[1.0, 1.0], Alternative::Greater);
        assert_eq!(all_tied.p, 1.0);
    }

    #[test]
    fn a_shift_past_the_tolerance_in_the_bad_direction_fails_and_the_other_way_passes() {
        let base: Vec<f64> = (0..30).map(|i| 100.0 + (i % 7) as f64).collect();
        let worse: Vec<f64> = base.iter().map(|v| v * 1.3).collect();
        let spec = JudgeSpec::default();
        assert_eq!(judge_metric(&worse, &base, &spec).classification, Classification::High);
        assert_eq!(judge_metric(&base, &worse, &spec).classification, Classification::Pass, "lower latency is fine");
        let either = JudgeSpec { direction: Direction::Either, ..spec.clone() };
        assert_eq!(judge_metric(&base, &worse, &either).classification, Classification::Low);
        let tolerant = JudgeSpec { tolerance: 0.5, ..spec };
        assert_eq!(judge_metric(&worse, &base, &tolerant).classification, Classification::Pass);
        assert_eq!(judge_metric(&[1.0, 2.0], &base, &JudgeSpec::default()).classification, Classification::Nodata);
    }

    #[test]
    fn scores_map_to_pass_marginal_and_fail() {
        let j = |c| MetricJudgement { classification: c, u: 0.0, p: 1.0, relative_shift: 0.0, samples: (3, 3) };
        let four = [j(Classification::Pass), j(Classification::Pass), j(Classification::Pass), j(Classification::High)];
        assert_eq!(score(&four, 95.0, 75.0), (75.0, Verdict::Marginal));
        assert_eq!(score(&four[..3], 95.0, 75.0), (100.0, Verdict::Pass));
        assert_eq!(score(&four[2..], 95.0, 75.0), (50.0, Verdict::Fail));
        assert_eq!(score(&[], 95.0, 75.0).1, Verdict::Fail);
    }
}
