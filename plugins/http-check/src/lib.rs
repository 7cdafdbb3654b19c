//! `http-check`: probes a URL and fails unless status, body and latency are as expected.
//!
//! The model step plugin: typed input with a derived schema, HTTP through the
//! host, pure checks kept apart from I/O so they are unit-tested natively.

use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// URL to probe; its origin must be granted in the step's `network:`.
    pub url: String,
    /// `GET` or `HEAD`.
    #[serde(default)]
    pub method: Method,
    /// Status every probe must answer with.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Substring the body must contain (GET only).
    #[serde(default)]
    pub expect_body: Option<String>,
    /// Fail when the slowest probe takes longer than this.
    #[serde(default)]
    pub max_latency_ms: Option<f64>,
    /// How many requests to send.
    #[serde(default = "default_probes")]
    pub probes: u32,
}

/// HTTP method of the probe.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// Fetch status and body.
    #[default]
    Get,
    /// Fetch the status only.
    Head,
}

fn default_status() -> u16 {
    200
}

fn default_probes() -> u32 {
    1
}

/// Upper bound on probes, so a typo cannot turn a check into a load test.
const MAX_PROBES: u32 = 1000;

/// One probe's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Status code received.
    pub status: u16,
    /// Latency in milliseconds.
    pub latency_ms: f64,
    /// Whether the expected body substring was found (true when none is expected).
    pub body_matches: bool,
}

/// Checks one probe against the input; the error says what differed.
pub fn check_probe(input: &Input, probe: &Probe) -> Result<(), Error> {
    if probe.status != input.expect_status {
        let message = format!("expected status {} from {}, got {}", input.expect_status, input.url, probe.status);
        // A 5xx during a rollout is often the service still starting.
        return Err(if probe.status >= 500 { Error::retryable(message) } else { Error::failed(message) });
    }
    if !probe.body_matches {
        let expected = input.expect_body.as_deref().unwrap_or_default();
        return Err(Error::failed(format!("body of {} does not contain {expected:?}", input.url)));
    }
    Ok(())
}

/// Median and maximum of the latencies, in milliseconds.
pub fn latency_summary(latencies: &[f64]) -> (f64, f64) {
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let p50 = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    (p50, sorted[n - 1])
}

/// The generic HTTP health check.
pub struct HttpCheck;

impl Step for HttpCheck {
    fn describe() -> Describe {
        Describe::new("http-check", env!("CARGO_PKG_VERSION"))
            .description("Probes a URL; fails unless status, body and latency are as expected")
            .input::<Input>()
            .capability("network")
            .output("status", "the status every probe answered with")
            .output("latency_ms_p50", "the median probe's latency, in milliseconds")
            .output("latency_ms_max", "the slowest probe's latency, in milliseconds")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        if input.probes == 0 || input.probes > MAX_PROBES {
            return Err(Error::failed(format!("probes must be between 1 and {MAX_PROBES}, got {}", input.probes)));
        }
        let mut latencies = Vec::with_capacity(input.probes as usize);
        let mut status = 0;
        for i in 1..=input.probes {
            let request = match input.method {
                Method::Get => ctx.http().get(&input.url),
                Method::Head => ctx.http().head(&input.url),
            };
            let response = request.send()?;
            let body_matches = match &input.expect_body {
                Some(needle) => response.text().contains(needle.as_str()),
                None => true,
            };
            let probe =
                Probe { status: response.status(), latency_ms: response.elapsed_us() as f64 / 1000.0, body_matches };
            gantry_sdk::debug!("probe {i}: {} in {:.3} ms", probe.status, probe.latency_ms);
            check_probe(&input, &probe)?;
            status = probe.status;
            latencies.push(probe.latency_ms);
        }
        let (p50, max) = latency_summary(&latencies);
        if let Some(limit) = input.max_latency_ms {
            if max > limit {
                return Err(Error::retryable(format!(
                    "slowest probe of {} took {max:.3} ms, over max_latency_ms {limit}",
                    input.url
                )));
            }
        }
        gantry_sdk::info!("{} answered {status} to {} probes, p50 {p50:.3} ms", input.url, input.probes);
        Ok(Outputs::new()
            .with("status", status)
            .with("latency_ms_p50", format!("{p50:.3}"))
            .with("latency_ms_max", format!("{max:.3}")))
    }
}

gantry_sdk::export_step!(HttpCheck);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> Input {
        Context::for_test("check", json).input().unwrap()
    }

    #[test]
    fn defaults_apply() {
        let i = input(serde_json::json!({"url": "http://127.0.0.1:1/"}));
        assert_eq!(i.method, Method::Get);
        assert_eq!(i.expect_status, 200);
        assert_eq!(i.probes, 1);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = Context::for_test("check", serde_json::json!({"url": "x", "probe": 2})).input::<Input>().unwrap_err();
        assert!(err.message().contains("unknown field `probe`"), "{err}");
    }

    #[test]
    fn status_mismatch_names_both_codes() {
        let i = input(serde_json::json!({"url": "http://h/"}));
        let err = check_probe(&i, &Probe { status: 404, latency_ms: 1.0, body_matches: true }).unwrap_err();
        assert_eq!(err.message(), "expected status 200 from http://h/, got 404");
        assert!(!err.is_retryable());
        let err = check_probe(&i, &Probe { status: 503, latency_ms: 1.0, body_matches: true }).unwrap_err();
        assert!(err.is_retryable());
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(latency_summary(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(latency_summary(&[4.0, 1.0, 2.0, 3.0]), (2.5, 4.0));
    }
}
