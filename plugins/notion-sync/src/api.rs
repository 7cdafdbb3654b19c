//! The Notion API calls, with its rate limiting honoured: 429 waits for
//! `Retry-After` (seconds or an HTTP date) through the host's sleep, bounded;
//! without it, exponential backoff with jitter. 5xx is retried the same way.

use gantry_sdk::{Context, Error, Response};
use serde_json::Value;

/// Where and how to talk to Notion.
pub struct Api<'a> {
    pub ctx: &'a Context,
    pub base: String,
    pub version: String,
    pub token_secret: String,
    pub max_retries: u32,
    pub max_wait_ms: u64,
}

/// Seconds since the epoch of an RFC 7231 date, `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(text: &str) -> Option<u64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m == month)? as i64
        + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, s] = hms.as_slice() else { return None };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if month <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + h * 3600 + mi * 60 + s).ok()
}

/// How long to wait, in ms, as `Retry-After` says.
pub fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return Some((secs.max(0.0) * 1000.0) as u64);
    }
    http_date(value).map(|t| (t * 1000).saturating_sub(now_ms))
}

/// The `{object:"error", code, message, request_id}` of a response, as text.
pub fn error_text(response: &Response) -> String {
    let v: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    match (v["code"].as_str(), v["message"].as_str()) {
        (Some(code), Some(message)) => {
            format!("{} {code}: {message} (request_id {})", response.status(), v["request_id"].as_str().unwrap_or("-"))
        }
        _ => format!("HTTP {}", response.status()),
    }
}

/// How one attempt of a call ended.
enum Attempt {
    /// The JSON answer.
    Done(Value),
    /// An error another attempt will not fix.
    Fatal(Error),
    /// Worth another attempt: the error to report if none is left, what to log, and how long to wait
    /// (`None`: the current backoff).
    Again(Error, String, Option<u64>),
}

impl Api<'_> {
    /// Sends `method path` with a JSON body, retrying 429, 5xx, dropped connections and garbled answers
    /// (every call the sync makes is safe to repeat: queries, and PATCHes of absolute values); returns
    /// the JSON answer.
    pub fn call(&self, method: &str, path: &str, body: &Value) -> Result<Value, Error> {
        let mut backoff = 500u64;
        for attempt in 0..=self.max_retries {
            match self.attempt(method, path, body, backoff) {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Again(e, _, _) if attempt == self.max_retries => return Err(e),
                Attempt::Again(_, why, wait) => {
                    let wait = wait.unwrap_or(backoff);
                    gantry_sdk::warn!("{method} {path}: {why}; waiting {wait} ms (attempt {})", attempt + 1);
                    gantry_sdk::sleep_ms(wait);
                    backoff = (backoff * 2).min(self.max_wait_ms.max(1));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn attempt(&self, method: &str, path: &str, body: &Value, backoff: u64) -> Attempt {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let sent = self
            .ctx
            .http()
            .request(method, &url)
            .bearer_secret(&self.token_secret)
            .header("Notion-Version", &self.version)
            .json(body)
            .send();
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_retryable() => {
                return Attempt::Again(Error::retryable(format!("{method} {path}: {e}")), e.to_string(), None)
            }
            Err(e) => return Attempt::Fatal(Error::failed(format!("{method} {path}: {e}"))),
        };
        let status = response.status();
        if response.is_success() {
            return match serde_json::from_slice(response.body()) {
                Ok(answer) => Attempt::Done(answer),
                Err(e) => Attempt::Again(
                    Error::retryable(format!("{method} {path}: answer is not JSON: {e}")),
                    format!("answer is not JSON ({e})"),
                    None,
                ),
            };
        }
        let text = format!("Notion {method} {path}: {}", error_text(&response));
        if status != 429 && status < 500 {
            return Attempt::Fatal(Error::failed(text));
        }
        let jitter = gantry_sdk::now_ms() % (backoff / 2 + 1);
        let wait = response
            .header("retry-after")
            .and_then(|v| retry_after_ms(v, gantry_sdk::now_ms()))
            .unwrap_or(backoff + jitter)
            .min(self.max_wait_ms);
        Attempt::Again(Error::retryable(text), error_text(&response), Some(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(retry_after_ms("2", 0), Some(2000));
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:39 GMT", 784_111_777_000), Some(2000));
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:30 GMT", 784_111_777_000), Some(0));
        assert_eq!(retry_after_ms("soon", 0), None);
    }
}
