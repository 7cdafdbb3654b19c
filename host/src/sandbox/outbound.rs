//! Outgoing HTTP on behalf of a plugin: checks every request and every
//! redirect hop against the step's network policy, applies named secrets only
//! where they are bound, and caps time, size and count.

use super::bindings::gantry::step::types::{HttpError, Request, Response, SecretUse};
use crate::capability::network::origin_of;
use crate::capability::Grants;
use std::time::{Duration, Instant};
use url::Url;

/// Caps on a step's outgoing HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most requests one step call may make.
    pub max_requests: u32,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
    /// Longest a single request may take when the plugin sets no timeout.
    pub request_timeout: Duration,
    /// Most redirects followed for one request.
    pub max_redirects: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_requests: 10_000,
            max_response_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
            max_redirects: 10,
        }
    }
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Performs requests for one step call.
pub(crate) struct Outbound {
    pub(crate) step: String,
    pub(crate) grants: Grants,
    pub(crate) limits: HttpLimits,
    pub(crate) client: reqwest::Client,
    pub(crate) requests: u32,
}

fn denied(step: &str, url: &Url) -> HttpError {
    HttpError::Denied(format!(
        "network access to {} denied for step `{step}`: add it to `network:` of the step (or --allow-net)",
        origin_of(url)
    ))
}

impl Outbound {
    /// Performs the request; `deadline` is the step call's own.
    pub(crate) async fn send(&mut self, req: Request, deadline: Instant) -> Result<Response, HttpError> {
        let method = req.method.to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(HttpError::Invalid(format!("method {:?} is not supported", req.method)));
        }
        let mut url =
            Url::parse(&req.url).map_err(|e| HttpError::Invalid(format!("invalid URL {:?}: {e}", req.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::Invalid(format!("URL {:?} is not http or https", req.url)));
        }
        let per_request =
            req.timeout_ms.map(|ms| Duration::from_millis(ms.into())).unwrap_or(self.limits.request_timeout);
        let started = Instant::now();
        let until = deadline.min(started + per_request);
        let mut method = reqwest::Method::from_bytes(method.as_bytes()).expect("listed methods parse");
        let mut body = req.body;
        for _hop in 0..=self.limits.max_redirects {
            if !self.grants.network.allows(&url) {
                tracing::warn!(step = %self.step, origin = %origin_of(&url), "network access denied");
                return Err(denied(&self.step, &url));
            }
            self.requests += 1;
            if self.requests > self.limits.max_requests {
                return Err(HttpError::Limit(format!(
                    "step `{}` made more than {} requests",
                    self.step, self.limits.max_requests
                )));
            }
            let mut builder = self.client.request(method.clone(), url.clone());
            for (name, value) in &req.headers {
                builder = builder.header(name, value);
            }
            for use_ in &req.secrets {
                let (name, value) = self.secret_header(use_, &url, &body)?;
                builder = builder.header(name, value);
            }
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(HttpError::Timeout(format!("request to {} ran out of time", origin_of(&url))));
            }
            let response =
                builder.body(body.clone()).timeout(remaining).send().await.map_err(|e| transport(&url, e))?;
            let status = response.status();
            if status.is_redirection() {
                if let Some(location) = response.headers().get(reqwest::header::LOCATION) {
                    let location =
                        location.to_str().map_err(|_| HttpError::Invalid("redirect location is not text".into()))?;
                    let next = url
                        .join(location)
                        .map_err(|e| HttpError::Invalid(format!("bad redirect location {location:?}: {e}")))?;
                    // 303, and 301/302 after POST, turn into GET as browsers and curl do.
                    if status == reqwest::StatusCode::SEE_OTHER
                        || (matches!(status.as_u16(), 301 | 302) && method == reqwest::Method::POST)
                    {
                        method = reqwest::Method::GET;
                        body.clear();
                    }
                    url = next;
                    continue;
                }
            }
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let body = self.read_body(response, &url).await?;
            return Ok(Response {
                status: status.as_u16(),
                headers,
                body: self.redact_body(body),
                elapsed_us: started.elapsed().as_micros() as u64,
            });
        }
        Err(HttpError::Limit(format!("more than {} redirects from {}", self.limits.max_redirects, req.url)))
    }

    fn secret_header(&self, use_: &SecretUse, url: &Url, body: &[u8]) -> Result<(String, String), HttpError> {
        let secrets = &self.grants.secrets;
        let result = match use_ {
            SecretUse::Bearer(name) => secrets.bearer(name, url),
            SecretUse::Header(h) => secrets.header(&h.header, &h.prefix, &h.secret, url),
            SecretUse::Basic(b) => secrets.basic(&b.username, &b.password_secret, url),
            SecretUse::HmacSha256(h) => secrets.hmac_sha256(&h.header, &h.prefix, &h.secret, url, body),
            SecretUse::AwsSigv4(_) => Err(crate::capability::secrets::SecretError::Unsupported(
                "AWS SigV4 signing is not available in this host yet".into(),
            )),
        };
        result.map_err(|e| HttpError::SecretDenied(format!("step `{}`: {e}", self.step)))
    }

    async fn read_body(&self, mut response: reqwest::Response, url: &Url) -> Result<Vec<u8>, HttpError> {
        let cap = self.limits.max_response_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(url, e))? {
            if body.len() + chunk.len() > cap {
                return Err(HttpError::Limit(format!("response from {} is larger than {cap} bytes", origin_of(url))));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A response that echoes a secret back must not hand it to the plugin.
    fn redact_body(&self, body: Vec<u8>) -> Vec<u8> {
        match String::from_utf8(body) {
            Ok(text) => self.grants.secrets.redact(&text).into_bytes(),
            Err(e) => e.into_bytes(),
        }
    }
}

fn transport(url: &Url, e: reqwest::Error) -> HttpError {
    if e.is_timeout() {
        HttpError::Timeout(format!("request to {} timed out", origin_of(url)))
    } else {
        // reqwest's Display omits the cause; the chain says e.g. "connection refused".
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        HttpError::Transport(message)
    }
}
