//! `alb-shift`: moves traffic of an AWS Application Load Balancer listener from
//! a blue to a green target group through a canary schedule (default 5 → 25 →
//! 50 → 100 %), checking gates after each stage over a window of samples. A
//! failed gate restores the weights found before the shift and fails the step;
//! an inconclusive one (no data, when so configured) leaves traffic where it is
//! and pauses the run for a person; `rollback` restores the checkpointed weights. Requests are signed with SigV4 by the host: the
//! plugin names the secrets, it never holds the keys.

pub mod elb;
pub mod gates;

use elb::{Elb, Weighted};
use gantry_sdk::analysis::{watch_for, Metric, Phase, Reading, Watch};
use gantry_sdk::{Check, Context, Describe, Error, Outputs, Step};
use gates::{Measurement, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// ELBv2 endpoint, e.g. `https://elasticloadbalancing.us-east-1.amazonaws.com`.
    pub endpoint: String,
    /// AWS region of the signature.
    #[serde(default = "default_region")]
    pub region: String,
    /// Listener whose default action is shifted.
    pub listener_arn: String,
    /// Target group serving now.
    pub blue_target_group_arn: String,
    /// Target group receiving the new release.
    pub green_target_group_arn: String,
    /// Percent of traffic on green at each stage, ending at 100.
    #[serde(default = "default_stages")]
    pub stages: Vec<u32>,
    /// Wait after each stage before the gates, in milliseconds (a number, or digits from an expression).
    #[serde(default = "default_pause", deserialize_with = "number_or_digits")]
    #[schemars(with = "u64")]
    pub pause_ms: u64,
    /// Check that every green target is healthy after each stage.
    #[serde(default = "yes")]
    pub target_health: bool,
    /// A URL that must answer 2xx after each stage.
    #[serde(default)]
    pub health_url: Option<String>,
    /// A Prometheus query that must stay under a threshold after each stage.
    #[serde(default)]
    pub prometheus: Option<gates::PrometheusGate>,
    /// How many consecutive samples every gate must pass at each stage, and how far apart.
    #[serde(default)]
    pub window: gates::Window,
    /// Metrics judged by the SDK's canary analysis: as gates at each stage (each read once per
    /// sample of the window, limits counted per stage), or with `background: true` all through the
    /// rollout, read during every pause, stopping the rollout the moment one fails.
    #[serde(default)]
    pub analysis: Vec<Metric>,
    /// How often background metrics are read during a pause, in milliseconds (default 1000).
    #[serde(default = "default_analysis_interval")]
    pub analysis_interval_ms: u64,
    /// Stages after which a person approves going on (a pause without a duration): traffic stays
    /// there until `gantry approve`, and `gantry reject` restores the original weights.
    #[serde(default)]
    pub approve_after: Vec<u32>,
    /// Secret with the access key id.
    #[serde(default = "gantry_sdk::aws::access_key_secret")]
    pub access_key_secret: String,
    /// Secret with the secret access key.
    #[serde(default = "gantry_sdk::aws::secret_key_secret")]
    pub secret_key_secret: String,
    /// Secret with a session token, for temporary credentials.
    #[serde(default)]
    pub session_token_secret: Option<String>,
}

/// Accepts `1500` and `"1500"`: values rendered from `${{ env.X }}` are strings.
fn number_or_digits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| serde::de::Error::custom("expected a whole number")),
        serde_json::Value::String(s) => {
            s.trim().parse().map_err(|_| serde::de::Error::custom(format!("expected a number, got {s:?}")))
        }
        other => Err(serde::de::Error::custom(format!("expected a number, got {other}"))),
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_stages() -> Vec<u32> {
    vec![5, 25, 50, 100]
}
fn default_pause() -> u64 {
    30_000
}
fn default_analysis_interval() -> u64 {
    1000
}
fn yes() -> bool {
    true
}

/// Checks a target group ARN's shape, since ELBv2 emulators accept anything.
pub fn check_target_group_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "elasticloadbalancing"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].strip_prefix("targetgroup/").is_some_and(|rest| rest.split('/').count() == 2);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"
        ))
    }
}

/// Checks the schedule: percentages rising strictly, at most 100, ending at 100.
pub fn check_stages(stages: &[u32]) -> Result<(), String> {
    if stages.last() != Some(&100) {
        return Err(format!("stages {stages:?} must end at 100"));
    }
    if stages.windows(2).any(|w| w[0] >= w[1]) || stages.iter().any(|s| *s > 100) {
        return Err(format!("stages {stages:?} must rise strictly and stay within 0-100"));
    }
    Ok(())
}

/// Weights for `percent` of traffic on green; ALB weights are 0-999, percentages fit.
pub fn stage_weights(blue: &str, green: &str, percent: u32) -> Vec<Weighted> {
    vec![Weighted { arn: blue.into(), weight: 100 - percent }, Weighted { arn: green.into(), weight: percent }]
}

/// Whether two weight lists give every target group the same weight, whatever their order.
fn same_weights(a: &[Weighted], b: &[Weighted]) -> bool {
    let sorted = |w: &[Weighted]| {
        let mut w = w.to_vec();
        w.sort_by(|x, y| x.arn.cmp(&y.arn));
        w
    };
    sorted(a) == sorted(b)
}

/// Refuses weights ALB would reject, since emulators accept them.
pub fn check_weights(weights: &[Weighted]) -> Result<(), String> {
    match weights.iter().find(|w| w.weight > 999) {
        Some(w) => Err(format!("weight {} of {} is outside 0-999", w.weight, w.arn)),
        None => Ok(()),
    }
}

/// Whether the listener already sends everything to green.
pub fn fully_green(weights: &[Weighted], green: &str) -> bool {
    weights.iter().any(|w| w.arn == green && w.weight > 0) && weights.iter().all(|w| w.arn == green || w.weight == 0)
}

fn format_weights(weights: &[Weighted]) -> String {
    serde_json::to_string(weights).unwrap_or_default()
}

fn elb<'a>(ctx: &'a Context, input: &Input) -> Elb<'a> {
    Elb {
        ctx,
        endpoint: input.endpoint.clone(),
        region: input.region.clone(),
        access_key_secret: input.access_key_secret.clone(),
        secret_key_secret: input.secret_key_secret.clone(),
        session_token_secret: input.session_token_secret.clone(),
    }
}

/// A judged reading as a gate's verdict: a metric that failed fails the gate.
fn verdict_of(phase: Phase) -> Verdict {
    match phase {
        Phase::Running => Verdict::Pass,
        Phase::Failed => Verdict::Fail,
        Phase::Inconclusive => Verdict::Inconclusive,
    }
}

/// A reading's value as a person reads it.
fn observed(reading: &Reading) -> String {
    match reading {
        Reading::Value { value } => value.to_string(),
        Reading::Nodata => "no data".into(),
        Reading::Error { message } => format!("error: {message}"),
    }
}

/// One sample of every configured gate at `stage`; a gate that cannot be read at all fails.
fn sample(ctx: &Context, input: &Input, elb: &Elb, stage: u32, sample: u32, watches: &mut [Watch]) -> Vec<Measurement> {
    let mut readings: Vec<(String, String, (String, Verdict))> = Vec::new();
    let unreadable = |e: Error| (e.message().to_string(), Verdict::Fail);
    if input.target_health {
        let reading = elb.target_states(&input.green_target_group_arn).map(|s| gates::target_health(&s));
        readings.push((
            "target-health".into(),
            "every green target healthy, at least one".into(),
            reading.unwrap_or_else(unreadable),
        ));
    }
    if let Some(url) = &input.health_url {
        readings.push(("health-url".into(), "2xx".into(), gates::health_url(ctx, url)));
    }
    if let Some(p) = &input.prometheus {
        let threshold = format!("<= {}, no data: {:?}", p.max, p.no_data).to_lowercase();
        readings.push(("prometheus".into(), threshold, p.measure(ctx).unwrap_or_else(unreadable)));
    }
    for watch in watches.iter_mut() {
        let judged = watch.read(ctx, Some(stage));
        let verdict = verdict_of(judged.phase);
        readings.push((watch.metric.name.clone(), judged.reason, (observed(&judged.reading), verdict)));
    }
    readings
        .into_iter()
        .map(|(gate, threshold, (observed, verdict))| Measurement { stage, sample, gate, observed, threshold, verdict })
        .collect()
}

/// Samples the gates over the stage's window, recording every reading; ends at the first sample that
/// does not pass, with its verdict and the readings that decided it.
fn judge_stage(
    ctx: &Context,
    input: &Input,
    elb: &Elb,
    stage: u32,
    record: &mut Vec<Measurement>,
) -> (Verdict, String) {
    // Gate metrics count their limits per stage, as an analysis run per step does in Argo Rollouts.
    let mut watches: Vec<Watch> = input.analysis.iter().filter(|m| !m.background).cloned().map(Watch::new).collect();
    for n in 1..=input.window.samples.max(1) {
        if n > 1 && input.window.interval_ms > 0 {
            gantry_sdk::sleep_ms(input.window.interval_ms);
        }
        let readings = sample(ctx, input, elb, stage, n, &mut watches);
        for m in &readings {
            gantry_sdk::info!("stage {stage}% sample {n}/{}: {}", input.window.samples.max(1), m.describe());
        }
        let verdict = gates::worst(readings.iter().map(|m| m.verdict));
        let deciding: Vec<String> =
            readings.iter().filter(|m| m.verdict == verdict).map(Measurement::describe).collect();
        record.extend(readings);
        if verdict != Verdict::Pass {
            return (verdict, format!("sample {n}: {}", deciding.join("; ")));
        }
    }
    (Verdict::Pass, String::new())
}

/// Waits out a stage's pause, reading the background metrics every `analysis_interval_ms`; ends
/// early with the first that stops running, and why.
fn pause(input: &Input, ctx: &Context, background: &mut [Watch], stage: u32) -> Option<(Verdict, String)> {
    if background.is_empty() {
        gantry_sdk::sleep_ms(input.pause_ms);
        return None;
    }
    let decided = watch_for(ctx, background, Some(stage), input.pause_ms, input.analysis_interval_ms);
    decided.map(|(phase, why)| (verdict_of(phase), why))
}

fn input_of(ctx: &Context) -> Result<Input, Error> {
    let input: Input = ctx.input()?;
    check_stages(&input.stages).map_err(Error::failed)?;
    check_target_group_arn(&input.blue_target_group_arn).map_err(Error::failed)?;
    check_target_group_arn(&input.green_target_group_arn).map_err(Error::failed)?;
    if input.blue_target_group_arn == input.green_target_group_arn {
        return Err(Error::failed("blue and green are the same target group"));
    }
    Ok(input)
}

/// The step.
pub struct AlbShift;

impl Step for AlbShift {
    fn describe() -> Describe {
        Describe::new("alb-shift", env!("CARGO_PKG_VERSION"))
            .description("Canary shift of an ALB listener from blue to green with gates and automatic rollback")
            .input::<Input>()
            .capability("network")
            .capability("secrets:aws-sigv4")
            .output("listener_arn", "the listener whose weights were shifted")
            .output("original_weights", "blue and green weights before the shift")
            .output("final_weights", "blue and green weights the run left")
            .output("stages_completed", "how many stages passed their gates")
            .output("changed", "whether the listener was changed")
            .output("gates", "every gate reading, as JSON")
            .output("restored", "whether the rollback restored the original weights")
            .output("weights", "the weights the rollback restored")
    }

    /// Reads the listener, both target groups' health, the Prometheus gate and every analysis
    /// metric (gates and background) once: before the first weight changes, an unreachable
    /// dependency fails the run, not a rollout at 25 %. Values are not judged: traffic has not moved.
    fn preflight(ctx: &Context) -> Result<Vec<Check>, Error> {
        let input = input_of(ctx)?;
        let elb = elb(ctx, &input);
        let mut checks = vec![Check::of(
            "listener",
            elb.weights(&input.listener_arn).map(|w| format!("forwards {}", format_weights(&w))),
        )];
        for (name, arn) in [("blue target group", &input.blue_target_group_arn), ("green target group", &input.green_target_group_arn)] {
            let states = elb.target_states(arn).map(|s| format!("{} targets registered", s.len()));
            checks.push(Check::of(name, states));
        }
        if let Some(gate) = &input.prometheus {
            checks.push(Check::of("prometheus gate", gate.answer(ctx)));
        }
        checks.extend(input.analysis.iter().map(|metric| metric.preflight(ctx)));
        Ok(checks)
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input = input_of(ctx)?;
        let elb = elb(ctx, &input);
        let (blue, green) = (&input.blue_target_group_arn, &input.green_target_group_arn);
        let original = elb.weights(&input.listener_arn)?;
        let outputs = Outputs::new()
            .with("listener_arn", &input.listener_arn)
            .with("original_weights", format_weights(&original));
        if fully_green(&original, green) {
            gantry_sdk::info!("listener already sends all traffic to green; nothing to do");
            return Ok(outputs
                .with("final_weights", format_weights(&original))
                .with("stages_completed", 0)
                .with("changed", false));
        }
        if let Some(unknown) = original.iter().find(|w| w.arn != *blue && w.arn != *green && w.weight > 0) {
            return Err(Error::failed(format!(
                "listener forwards to {}, which is neither blue nor green: refusing to shift",
                unknown.arn
            )));
        }
        if ctx.dry_run() {
            gantry_sdk::info!("dry run: would shift {:?} % to green", input.stages);
            return Ok(outputs
                .with("final_weights", format_weights(&original))
                .with("stages_completed", 0)
                .with("changed", false));
        }
        // Continuing after an approval: the listener stands at the stage it stopped at, which is run
        // again (idempotent weights, its gates) rather than walking traffic back through earlier ones.
        let continuing = ctx.checkpointed("original_weights").is_some();
        let from = match continuing {
            true => {
                input.stages.iter().position(|&p| same_weights(&stage_weights(blue, green, p), &original)).unwrap_or(0)
            }
            false => 0,
        };
        // The weights before the first change, journaled before it: a retry or a resume keeps the
        // first value, so the original is never mistaken for a half-shifted listener.
        ctx.checkpoint("original_weights", &format_weights(&original))?;
        let original = match ctx.checkpointed("original_weights") {
            Some(text) => parse_weights(&text)?,
            None => original,
        };
        let mut completed = from;
        let mut record = Vec::new();
        // Background metrics judge the whole rollout: their limits run across every stage.
        let mut background: Vec<Watch> =
            input.analysis.iter().filter(|m| m.background).cloned().map(Watch::new).collect();
        for &percent in &input.stages[from..] {
            let weights = stage_weights(blue, green, percent);
            check_weights(&weights).map_err(Error::failed)?;
            elb.set_weights(&input.listener_arn, &weights)?;
            gantry_sdk::info!("stage {percent}%: green weight {percent}, blue {}", 100 - percent);
            let judged = match pause(&input, ctx, &mut background, percent) {
                Some((verdict, why)) => (verdict, format!("background analysis during the pause: {why}")),
                None => judge_stage(ctx, &input, &elb, percent, &mut record),
            };
            match judged {
                (Verdict::Pass, _) if percent < 100 && input.approve_after.contains(&percent) => {
                    completed += 1;
                    if !ctx.approval(&format!("stage {percent}%")) {
                        gantry_sdk::info!("stage {percent}%: waiting for approval to go on");
                        return Err(Error::failed(format!(
                            "awaiting approval to go past {percent}%; traffic stays at {}",
                            format_weights(&weights)
                        )));
                    }
                }
                (Verdict::Pass, _) => completed += 1,
                (Verdict::Fail, why) => {
                    gantry_sdk::warn!("gate failed at {percent}%: {why}; restoring the original weights");
                    elb.set_weights(&input.listener_arn, &original)?;
                    return Err(Error::failed(format!(
                        "gate failed at {percent}%: {why}; restored the original weights {}",
                        format_weights(&original)
                    )));
                }
                (Verdict::Inconclusive, why) => {
                    // Traffic stays where it is: a person decides between going on and going back.
                    return Err(Error::inconclusive(format!(
                        "gate inconclusive at {percent}%: {why}; traffic stays at {}; `gantry resume` runs the canary again from the original weights, `gantry rollback` restores {}",
                        format_weights(&weights),
                        format_weights(&original)
                    )));
                }
            }
        }
        let final_weights = elb.weights(&input.listener_arn)?;
        Ok(outputs
            .with("final_weights", format_weights(&final_weights))
            .with("stages_completed", completed)
            .with("changed", true)
            .with("gates", serde_json::to_string(&record).unwrap_or_default()))
    }

    fn rollback(ctx: &Context) -> Result<Outputs, Error> {
        let input = input_of(ctx)?;
        // The checkpoint exists whenever a weight was changed, even when `run` never returned.
        let recorded =
            ctx.checkpointed("original_weights").or_else(|| ctx.recorded("original_weights").map(String::from));
        let Some(recorded) = recorded else {
            return Err(Error::failed("no original weights were recorded by run; nothing to restore"));
        };
        let original = parse_weights(&recorded)?;
        if ctx.checkpointed("original_weights").is_none() && ctx.recorded("changed") == Some("false") {
            return Ok(Outputs::new().with("restored", false));
        }
        let elb = elb(ctx, &input);
        elb.set_weights(&input.listener_arn, &original)?;
        gantry_sdk::info!("restored {}", format_weights(&original));
        Ok(Outputs::new().with("restored", true).with("weights", format_weights(&original)))
    }
}

/// Weights as `format_weights` wrote them.
fn parse_weights(text: &str) -> Result<Vec<Weighted>, Error> {
    serde_json::from_str(text).map_err(|e| Error::failed(format!("recorded weights: {e}")))
}

gantry_sdk::export_step!(AlbShift);

#[cfg(test)]
mod tests {
    use super::*;

    const BLUE: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/blue/50dc6c495c0c9188";
    const GREEN: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/green/6d0ecf831eec9f09";

    #[test]
    fn arns_and_stages_are_checked() {
        assert!(check_target_group_arn(BLUE).is_ok());
        assert!(check_target_group_arn("arn:aws:elasticloadbalancing:us-east-1:123:targetgroup/x/y").is_err());
        assert!(check_target_group_arn("blue").unwrap_err().contains("is not a target group ARN"));
        assert!(check_stages(&[5, 25, 50, 100]).is_ok());
        assert!(check_stages(&[5, 25]).unwrap_err().contains("end at 100"));
        assert!(check_stages(&[50, 25, 100]).unwrap_err().contains("rise strictly"));
    }

    #[test]
    fn weights_follow_the_stage_and_stay_in_range() {
        assert_eq!(stage_weights(BLUE, GREEN, 25).iter().map(|w| w.weight).collect::<Vec<_>>(), vec![75, 25]);
        assert!(check_weights(&[Weighted { arn: BLUE.into(), weight: 1000 }]).unwrap_err().contains("0-999"));
        assert!(fully_green(&stage_weights(BLUE, GREEN, 100), GREEN));
        assert!(!fully_green(&stage_weights(BLUE, GREEN, 50), GREEN));
        assert!(!fully_green(&[Weighted { arn: BLUE.into(), weight: 1 }], GREEN));
    }

    #[test]
    fn pause_takes_numbers_and_digits() {
        let base = serde_json::json!({"endpoint": "e", "listener_arn": "l", "blue_target_group_arn": BLUE, "green_target_group_arn": GREEN});
        for (pause, expected) in [
            (serde_json::json!(1500), Some(1500)),
            (serde_json::json!("250"), Some(250)),
            (serde_json::json!("soon"), None),
        ] {
            let mut input = base.clone();
            input["pause_ms"] = pause;
            assert_eq!(serde_json::from_value::<Input>(input).ok().map(|i| i.pause_ms), expected);
        }
    }

    #[test]
    fn rollback_without_a_record_says_so() {
        let input = serde_json::json!({"endpoint": "http://127.0.0.1:1", "listener_arn": "l", "blue_target_group_arn": BLUE, "green_target_group_arn": GREEN});
        let ctx = Context::for_test("shift", input.clone());
        assert!(AlbShift::rollback(&ctx).unwrap_err().message().contains("no original weights"));
        let ctx = Context::for_test("shift", input)
            .with_upstream("shift", "original_weights", "[]")
            .with_upstream("shift", "changed", "false");
        assert_eq!(AlbShift::rollback(&ctx).unwrap().get("restored"), Some("false"));
    }

    #[test]
    fn run_checkpoints_the_original_weights_once() {
        let ctx = Context::for_test("shift", serde_json::json!({})).with_checkpoint("original_weights", "[]");
        ctx.checkpoint("original_weights", "[{\"arn\":\"x\",\"weight\":5}]").unwrap();
        assert_eq!(parse_weights(&ctx.checkpointed("original_weights").unwrap()).unwrap().len(), 0, "first value kept");
    }
}
