//! Gates evaluated after each stage: target health, an HTTP health URL and a
//! Prometheus query against a threshold. A gate answers `Ok(None)` when it
//! passes and `Ok(Some(reason))` when it fails; `Err` only for broken input.

use gantry_sdk::{Context, Error};
use schemars::JsonSchema;
use serde::Deserialize;

/// A Prometheus instant query that must stay at or under `max`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusGate {
    /// Prometheus base URL, e.g. `http://prometheus:9090`.
    pub url: String,
    /// PromQL giving one number, e.g. an error rate.
    pub query: String,
    /// Highest acceptable value.
    pub max: f64,
    /// Whether an empty result passes (default: it fails, as no data during a canary is suspicious).
    #[serde(default)]
    pub pass_without_data: bool,
}

/// Reads the value of a Prometheus `/api/v1/query` answer: `None` when the result is empty.
pub fn prometheus_value(body: &str) -> Result<Option<f64>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"].as_str().unwrap_or("error"), v["error"].as_str().unwrap_or("")));
    }
    let value = match v["data"]["resultType"].as_str() {
        Some("vector") => match v["data"]["result"].as_array().and_then(|r| r.first()) {
            Some(sample) => sample["value"][1].clone(),
            None => return Ok(None),
        },
        Some("scalar") => v["data"]["result"][1].clone(),
        other => return Err(format!("unsupported result type {other:?}")),
    };
    let text = value.as_str().ok_or("sample value is not a string")?;
    text.parse::<f64>().map(Some).map_err(|_| format!("sample value {text:?} is not a number"))
}

impl PrometheusGate {
    /// Runs the query and compares.
    pub fn check(&self, ctx: &Context) -> Result<Option<String>, Error> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url.trim_end_matches('/'),
            gantry_sdk::percent_encode(&self.query)
        );
        let response = ctx.http().get(&url).send().map_err(|e| Error::retryable(format!("prometheus gate: {e}")))?;
        match prometheus_value(&response.text()) {
            Ok(Some(value)) if value.is_nan() || value > self.max => {
                Ok(Some(format!("prometheus gate: `{}` = {value} is over {}", self.query, self.max)))
            }
            Ok(Some(_)) => Ok(None),
            Ok(None) if self.pass_without_data => Ok(None),
            Ok(None) => Ok(Some(format!("prometheus gate: `{}` returned no data", self.query))),
            Err(e) => Ok(Some(format!("prometheus gate: {e} (HTTP {})", response.status()))),
        }
    }
}

/// A URL that must answer 2xx.
pub fn health_url(ctx: &Context, url: &str) -> Result<Option<String>, Error> {
    match ctx.http().get(url).send() {
        Ok(r) if r.is_success() => Ok(None),
        Ok(r) => Ok(Some(format!("health gate: {url} answered {}", r.status()))),
        Err(e) => Ok(Some(format!("health gate: {url}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_are_read() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.05"]}]}}"#;
        assert_eq!(prometheus_value(ok), Ok(Some(0.05)));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(prometheus_value(empty), Ok(None));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"2"]}}"#;
        assert_eq!(prometheus_value(scalar), Ok(Some(2.0)));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(prometheus_value(bad), Err("bad_data: parse error".into()));
        assert_eq!(gantry_sdk::percent_encode("a{b=~\"5..\"}[1m]"), "a%7Bb%3D~%225..%22%7D%5B1m%5D");
    }
}
