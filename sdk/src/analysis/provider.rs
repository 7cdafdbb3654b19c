//! Where a metric's readings come from: Prometheus (an instant query), CloudWatch
//! (`GetMetricData`, signed by the host with the step's AWS secrets), Datadog (the metrics query
//! API, keys applied by the host) and any granted URL answering JSON (a path to a number). Every
//! request goes through the host's `http` capability: the origin must be granted to the step,
//! and no key or credential is ever seen by the plugin.

use super::Reading;
use crate::{Context, Sigv4};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A metric's source and query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum Provider {
    /// `GET <address>/api/v1/query?query=…`: the first sample of the vector, or the scalar.
    Prometheus {
        /// Prometheus's base URL, e.g. `http://prometheus:9090`.
        address: String,
        /// PromQL, e.g. `sum(rate(http_requests_total{status=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))`.
        query: String,
    },
    /// CloudWatch `GetMetricData` over the last `window_s`: the newest datapoint is the reading,
    /// all of them the samples.
    Cloudwatch {
        /// Endpoint, e.g. `https://monitoring.us-east-1.amazonaws.com/`.
        endpoint: String,
        /// Region the request is signed for.
        region: String,
        /// Namespace, e.g. `AWS/ECS`.
        namespace: String,
        /// Metric name, e.g. `CPUUtilization`.
        metric: String,
        /// Dimensions, e.g. `{ ClusterName: prod, ServiceName: web-green }`.
        #[serde(default)]
        dimensions: BTreeMap<String, String>,
        /// `Average`, `Sum`, `Maximum`, `Minimum`, `SampleCount` or a percentile such as `p95`.
        #[serde(default = "average")]
        stat: String,
        /// Seconds per datapoint (default 60).
        #[serde(default = "sixty")]
        period_s: u32,
        /// How far back to read, in seconds (default 300).
        #[serde(default = "five_minutes")]
        window_s: u32,
        /// Secret holding the access key id (default `AWS_ACCESS_KEY_ID`; with none granted under that
        /// name, the `aws-credentials:` set granted for the endpoint signs).
        #[serde(default = "crate::aws::access_key_secret")]
        access_key_id_secret: String,
        /// Secret holding the secret access key (default `AWS_SECRET_ACCESS_KEY`).
        #[serde(default = "crate::aws::secret_key_secret")]
        secret_access_key_secret: String,
        /// Secret holding a session token, for temporary static keys.
        #[serde(default)]
        session_token_secret: Option<String>,
    },
    /// Datadog `GET <address>/api/v1/query` over the last `window_s`: the newest point is the
    /// reading, all of them the samples.
    Datadog {
        /// API base URL, e.g. `https://api.datadoghq.com`.
        address: String,
        /// A metric query, e.g. `avg:trace.http.request.errors{service:web,color:green}`.
        query: String,
        /// How far back to read, in seconds (default 300).
        #[serde(default = "five_minutes")]
        window_s: u32,
        /// Secret holding the API key (default `DD_API_KEY`), sent as `DD-API-KEY`.
        #[serde(default = "dd_api_key")]
        api_key_secret: String,
        /// Secret holding the application key (default `DD_APP_KEY`), sent as `DD-APPLICATION-KEY`.
        #[serde(default = "dd_app_key")]
        app_key_secret: String,
    },
    /// `GET <url>`, a number found at `json_path` (`data.error_rate`, `results[0].value`).
    Web {
        /// The URL.
        url: String,
        /// Dot path to the number (a numeric string counts); empty for the whole body.
        #[serde(default)]
        json_path: String,
    },
}

fn average() -> String {
    "Average".into()
}
fn sixty() -> u32 {
    60
}
fn five_minutes() -> u32 {
    300
}
fn dd_api_key() -> String {
    "DD_API_KEY".into()
}
fn dd_app_key() -> String {
    "DD_APP_KEY".into()
}

impl Provider {
    /// The query as sent, for the journal: PromQL, the Datadog query, the CloudWatch metric, the URL.
    pub fn describe(&self) -> String {
        match self {
            Provider::Prometheus { query, .. } | Provider::Datadog { query, .. } => query.clone(),
            Provider::Cloudwatch { namespace, metric, dimensions, stat, .. } => {
                let dims: Vec<String> = dimensions.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{namespace} {metric} {stat} {{{}}}", dims.join(","))
            }
            Provider::Web { url, json_path } => format!("{url} {json_path}"),
        }
    }

    /// The samples in the provider's window, oldest first (the newest alone for Prometheus and web).
    pub fn samples(&self, ctx: &Context) -> Result<Vec<f64>, String> {
        let now = crate::now_ms() / 1000;
        match self {
            Provider::Prometheus { address, query } => {
                let url =
                    format!("{}/api/v1/query?query={}", address.trim_end_matches('/'), crate::percent_encode(query));
                let body = get_text(ctx.http().get(&url))?;
                Ok(prometheus_value(&body)?.into_iter().collect())
            }
            Provider::Web { url, json_path } => {
                let body = get_text(ctx.http().get(url))?;
                let v: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| format!("{url} did not answer JSON: {e}"))?;
                Ok(json_number(&v, json_path).into_iter().collect())
            }
            Provider::Datadog { address, query, window_s, api_key_secret, app_key_secret } => {
                let url = format!(
                    "{}/api/v1/query?from={}&to={now}&query={}",
                    address.trim_end_matches('/'),
                    now - u64::from(*window_s),
                    crate::percent_encode(query)
                );
                let request = ctx.http().get(&url).header_secret("DD-API-KEY", "", api_key_secret).header_secret(
                    "DD-APPLICATION-KEY",
                    "",
                    app_key_secret,
                );
                datadog_points(&get_text(request)?)
            }
            Provider::Cloudwatch {
                endpoint,
                region,
                namespace,
                metric,
                dimensions,
                stat,
                period_s,
                window_s,
                access_key_id_secret,
                secret_access_key_secret,
                session_token_secret,
            } => {
                let time = |s: u64| format_time(s);
                let mut form = vec![
                    ("Action".to_string(), "GetMetricData".to_string()),
                    ("Version".into(), "2010-08-01".into()),
                    ("StartTime".into(), time(now - u64::from(*window_s))),
                    ("EndTime".into(), time(now + 1)),
                    ("MetricDataQueries.member.1.Id".into(), "m1".into()),
                    ("MetricDataQueries.member.1.MetricStat.Metric.Namespace".into(), namespace.clone()),
                    ("MetricDataQueries.member.1.MetricStat.Metric.MetricName".into(), metric.clone()),
                    ("MetricDataQueries.member.1.MetricStat.Period".into(), period_s.to_string()),
                    ("MetricDataQueries.member.1.MetricStat.Stat".into(), stat.clone()),
                ];
                for (i, (name, value)) in dimensions.iter().enumerate() {
                    let key = format!("MetricDataQueries.member.1.MetricStat.Metric.Dimensions.member.{}", i + 1);
                    form.push((format!("{key}.Name"), name.clone()));
                    form.push((format!("{key}.Value"), value.clone()));
                }
                let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let request = ctx.http().post(endpoint).form(&pairs).aws_sigv4(Sigv4::aws(
                    "monitoring",
                    region,
                    access_key_id_secret,
                    secret_access_key_secret,
                    session_token_secret.as_deref(),
                ));
                cloudwatch_values(&get_text(request)?)
            }
        }
    }

    /// One reading: the newest sample, no data when there is none, the error when the provider failed.
    pub fn read(&self, ctx: &Context) -> Reading {
        match self.samples(ctx) {
            Ok(samples) => match samples.last() {
                Some(value) => Reading::Value { value: *value },
                None => Reading::Nodata,
            },
            Err(message) => Reading::Error { message },
        }
    }
}

fn get_text(request: crate::RequestBuilder) -> Result<String, String> {
    let response = request.send().map_err(|e| e.to_string())?;
    let text = response.text();
    if !response.is_success() {
        let shown: String = text.chars().take(200).collect();
        return Err(format!("HTTP {}: {shown}", response.status()));
    }
    Ok(text)
}

/// `2026-12-06T20:41:20Z` for Unix seconds.
pub fn format_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The value of a Prometheus instant query's answer: the first sample of a vector, or a scalar.
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

/// The points of a Datadog query answer's first series, oldest first.
pub fn datadog_points(body: &str) -> Result<Vec<f64>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["status"] != "ok" {
        return Err(format!("Datadog answered status {}: {}", v["status"], v["error"].as_str().unwrap_or("")));
    }
    let Some(series) = v["series"].as_array().and_then(|s| s.first()) else { return Ok(Vec::new()) };
    let mut points: Vec<(f64, f64)> = series["pointlist"]
        .as_array()
        .map(|p| p.iter().filter_map(|pt| Some((pt[0].as_f64()?, pt[1].as_f64()?))).collect())
        .unwrap_or_default();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(points.into_iter().map(|(_, v)| v).collect())
}

/// The `<Values>` of a `GetMetricData` answer's first result, oldest first (by their
/// `<Timestamps>`, whichever order the service listed them in).
pub fn cloudwatch_values(xml: &str) -> Result<Vec<f64>, String> {
    if let Some(code) = between(xml, "<Code>", "</Code>") {
        let message = between(xml, "<Message>", "</Message>").unwrap_or_default();
        return Err(format!("CloudWatch answered {code}: {message}"));
    }
    let result =
        between(xml, "<MetricDataResults>", "</MetricDataResults>").ok_or("no MetricDataResults in the answer")?;
    let members = |list: Option<&str>| -> Vec<String> {
        list.map(|l| {
            l.split("<member>")
                .skip(1)
                .map(|m| m.split("</member>").next().unwrap_or_default().trim().to_string())
                .collect()
        })
        .unwrap_or_default()
    };
    let times = members(between(result, "<Timestamps>", "</Timestamps>"));
    let values = members(between(result, "<Values>", "</Values>"));
    let mut points = values
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = text.parse::<f64>().map_err(|_| format!("value {text:?} is not a number"))?;
            // ISO 8601 UTC times order as text.
            Ok((times.get(i).cloned().unwrap_or_default(), v))
        })
        .collect::<Result<Vec<_>, String>>()?;
    points.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(points.into_iter().map(|(_, v)| v).collect())
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

/// The number at a dot path (`a.b[0].c`); a numeric string counts.
pub fn json_number(value: &serde_json::Value, path: &str) -> Option<f64> {
    let mut v = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            v = v.get(name)?;
        }
        for index in indexes.split('[').skip(1) {
            v = v.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    v.as_f64().or_else(|| v.as_str()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_each_provider_are_read() {
        let prom = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.05"]}]}}"#;
        assert_eq!(prometheus_value(prom).unwrap(), Some(0.05));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(prometheus_value(empty).unwrap(), None);
        let dd = r#"{"status":"ok","series":[{"pointlist":[[2000.0, 2.0],[1000.0, 1.0]]}]}"#;
        assert_eq!(datadog_points(dd).unwrap(), vec![1.0, 2.0]);
        assert_eq!(datadog_points(r#"{"status":"ok","series":[]}"#).unwrap(), Vec::<f64>::new());
        let cw = "<GetMetricDataResponse><GetMetricDataResult><MetricDataResults><member><Id>m1</Id><Timestamps><member>2026-12-06T20:41:20Z</member><member>2026-12-06T20:40:20Z</member></Timestamps><Values><member>50.0</member><member>51.5</member></Values></member></MetricDataResults></GetMetricDataResult></GetMetricDataResponse>";
        assert_eq!(cloudwatch_values(cw).unwrap(), vec![51.5, 50.0], "newest last");
        let denied = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code><Message>bad</Message></Error></ErrorResponse>";
        assert!(cloudwatch_values(denied).unwrap_err().contains("InvalidClientTokenId: bad"));
        let web = serde_json::json!({"data": {"rates": [{"errors": "0.25"}]}});
        assert_eq!(json_number(&web, "data.rates[0].errors"), Some(0.25));
        assert_eq!(json_number(&serde_json::json!(3), ""), Some(3.0));
        assert_eq!(json_number(&web, "data.missing"), None);
    }

    #[test]
    fn times_are_written_as_cloudwatch_reads_them() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_796_589_680), "2026-12-06T20:41:20Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
    }
}
