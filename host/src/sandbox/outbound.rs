//! Outgoing HTTP on behalf of a plugin: checks every request and every
//! redirect hop against the step's network policy (origins, then the
//! addresses names resolve to), applies named secrets only where they are
//! bound, caps time, size and count, and records every request.

use super::bindings::gantry::step::types::{HttpError, Request, Response, SecretUse, Sigv4Secret};
use crate::capability::address::AddressDenied;
use crate::capability::network::origin_of;
use crate::capability::aws_credentials::Keys;
use crate::capability::secrets::{SecretError, SigV4Use, SignedRequest, PLACEHOLDER};
use crate::capability::Grants;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
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

pub use crate::capability::unit::{RequestLog, RequestRecord};

impl RequestRecord {
    /// The request as a person reads it: `POST http://127.0.0.1:5000/ ModifyListener`.
    pub fn shown(&self) -> String {
        let action = self.action.as_deref().map(|a| format!(" {a}")).unwrap_or_default();
        format!("{} {}{}{action}", self.method, self.origin, self.path)
    }

    /// A `POST` the host let out and answered 200, for tests of what reads the journal.
    #[cfg(test)]
    pub fn allowed_post(step: &str, action: Option<&str>) -> Self {
        RequestRecord {
            step: step.into(),
            method: "POST".into(),
            origin: "http://127.0.0.1:1".into(),
            path: "/".into(),
            status: Some(200),
            bytes: 0,
            duration_ms: 1.0,
            allowed: true,
            reason: None,
            action: action.map(String::from),
        }
    }

    /// Whether the request may have changed something ([`crate::capability::network::may_change`]):
    /// a step cut off after reading counts as having changed nothing.
    pub fn may_change(&self) -> bool {
        crate::capability::network::may_change(&self.method, self.action.as_deref())
    }
}

/// The API action a request names: AWS JSON protocols in `X-Amz-Target`, AWS query protocols in
/// an `Action=` form field of the body or the query. Only a plain name is taken: never data.
pub fn api_action(url: &Url, headers: &[(String, String)], body: &[u8]) -> Option<String> {
    let plain = |name: &str| {
        (!name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| name.to_string())
    };
    if let Some((_, target)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target")) {
        return plain(target.rsplit('.').next().unwrap_or_default());
    }
    let form = |text: &str| text.split('&').find_map(|pair| pair.strip_prefix("Action=")).and_then(plain);
    url.query().and_then(form).or_else(|| std::str::from_utf8(body).ok().and_then(form))
}

/// Which host rule stopped a request, so a failed step reports it rather than the plugin's paraphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Origin or address not granted.
    Network(String),
    /// Secret not granted or not bound to the origin.
    Secret(String),
    /// A cap was exceeded.
    Limit(String),
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Performs requests for one step call.
pub(crate) struct Outbound {
    pub(crate) step: String,
    pub(crate) grants: Grants,
    pub(crate) limits: HttpLimits,
    pub(crate) client: reqwest::Client,
    pub(crate) requests: u32,
    pub(crate) log: Option<RequestLog>,
    /// The first request the host refused during this call.
    pub(crate) refusal: Option<Refusal>,
    /// The current request's URL came from a secret: record its origin only.
    pub(crate) hide_path: bool,
    /// The API action of the current request, for its records.
    pub(crate) action: Option<String>,
}

/// One request of a chain of redirects.
struct Hop {
    started: Instant,
    method: reqwest::Method,
    url: Url,
}

impl Hop {
    fn outcome(&self, allowed: bool, reason: Option<String>) -> Outcome {
        Outcome { started: self.started, status: None, bytes: 0, allowed, reason }
    }
}

fn denied(step: &str, url: &Url) -> String {
    format!(
        "network access to {} denied for step `{step}`: add it to `network:` of the step (or --allow-net)",
        origin_of(url)
    )
}

impl Outbound {
    fn record(&self, method: &str, url: &Url, outcome: Outcome) {
        let Some(log) = &self.log else { return };
        let secrets = &self.grants.secrets;
        log.0(RequestRecord {
            step: self.step.clone(),
            method: method.to_string(),
            origin: origin_of(url),
            path: if self.hide_path { "/***".into() } else { secrets.redact(url.path()) },
            status: outcome.status,
            bytes: outcome.bytes,
            duration_ms: outcome.started.elapsed().as_secs_f64() * 1e3,
            allowed: outcome.allowed,
            reason: outcome.reason.map(|r| secrets.redact(&r)),
            action: self.action.clone(),
        });
    }

    /// Remembers the first refusal and hands the plugin the error.
    fn refuse(&mut self, refusal: Refusal) -> HttpError {
        let error = match &refusal {
            Refusal::Network(m) => HttpError::Denied(m.clone()),
            Refusal::Secret(m) => HttpError::SecretDenied(m.clone()),
            Refusal::Limit(m) => HttpError::Limit(m.clone()),
        };
        self.refusal.get_or_insert(refusal);
        error
    }

    /// Performs the request; `deadline` is the step call's own. Each hop (the first request and every
    /// redirect) is admitted against the grants and caps, sent, then followed or received.
    pub(crate) async fn send(&mut self, req: Request, deadline: Instant) -> Result<Response, HttpError> {
        // Whatever an error quotes (a header name, a URL) is redacted like everything else that leaves the host.
        self.attempt(req, deadline).await.map_err(|e| redacted(e, &self.grants.secrets))
    }

    async fn attempt(&mut self, req: Request, deadline: Instant) -> Result<Response, HttpError> {
        let (mut method, mut url, url_secrets) = self.target(&req)?;
        self.action = api_action(&url, &req.headers, &req.body);
        let per_request =
            req.timeout_ms.map(|ms| Duration::from_millis(ms.into())).unwrap_or(self.limits.request_timeout);
        let started = Instant::now();
        let until = deadline.min(started + per_request);
        let (mut body, mut headers) = (req.body, req.headers);
        for _hop in 0..=self.limits.max_redirects {
            let hop = Hop { started: Instant::now(), method: method.clone(), url: url.clone() };
            let keys = self.aws_keys(&hop.url, &req.secrets).await;
            let (map, filled) = self.admit(&hop, &url_secrets, &headers, &body, &req.secrets, &keys)?;
            let response = self.transmit(&hop, map, filled, until).await?;
            let Some(next) = self.redirect(&hop, &response)? else {
                return self.receive(&hop, response, started).await;
            };
            // 303, and 301/302 after POST, turn into GET as browsers and curl do.
            let status = response.status();
            if status == reqwest::StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == reqwest::Method::POST)
            {
                method = reqwest::Method::GET;
                body.clear();
                headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
            }
            url = next;
        }
        let message = format!("more than {} redirects from {}", self.limits.max_redirects, req.url);
        Err(self.refuse(Refusal::Limit(message)))
    }

    /// The method and URL of a request; a URL that is itself a secret (a webhook) is filled in here
    /// and never shown in full.
    fn target(&mut self, req: &Request) -> Result<(reqwest::Method, Url, Vec<String>), HttpError> {
        let method_name = req.method.to_ascii_uppercase();
        if !METHODS.contains(&method_name.as_str()) {
            return Err(HttpError::Invalid(format!("method {:?} is not supported", req.method)));
        }
        let method = reqwest::Method::from_bytes(method_name.as_bytes()).expect("listed methods parse");
        let secret_url = req.url.contains(PLACEHOLDER);
        let (url_text, url_secrets) = if secret_url {
            self.grants
                .secrets
                .expand_url(&req.url)
                .map_err(|e| self.refuse(Refusal::Secret(format!("step `{}`: {e}", self.step))))?
        } else {
            (req.url.clone(), Vec::new())
        };
        let url = Url::parse(&url_text).map_err(|e| {
            let shown = if secret_url { req.url.clone() } else { format!("{:?}", req.url) };
            HttpError::Invalid(format!(
                "invalid URL {shown}: {}",
                if secret_url { "check the secret's value".into() } else { e.to_string() }
            ))
        })?;
        self.hide_path = secret_url;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::Invalid(format!("URL {:?} is not http or https", req.url)));
        }
        Ok((method, url, url_secrets))
    }

    /// Lets a hop out or refuses it: the origin's grant, the request cap, secrets bound to the origin.
    fn admit(
        &mut self,
        hop: &Hop,
        url_secrets: &[String],
        headers: &[(String, String)],
        body: &[u8],
        uses: &[SecretUse],
        keys: &[AwsKeys],
    ) -> Result<(HeaderMap, Vec<u8>), HttpError> {
        let (method, url) = (hop.method.as_str(), &hop.url);
        if !self.grants.network.allows(url) {
            tracing::warn!(step = %self.step, origin = %origin_of(url), "network access denied");
            let message = denied(&self.step, url);
            self.record(method, url, hop.outcome(false, Some(message.clone())));
            return Err(self.refuse(Refusal::Network(message)));
        }
        if self.grants.reads_only && crate::capability::network::may_change(method, self.action.as_deref()) {
            let action = self.action.as_deref().map(|a| format!(" {a}")).unwrap_or_default();
            let message = format!(
                "step `{}`: its pre-flight may only read, and {method} {}{action} could change something",
                self.step,
                origin_of(url)
            );
            self.record(method, url, hop.outcome(false, Some(message.clone())));
            return Err(self.refuse(Refusal::Network(message)));
        }
        self.requests += 1;
        if self.requests > self.limits.max_requests {
            let message = format!("step `{}` made more than {} requests", self.step, self.limits.max_requests);
            self.record(method, url, hop.outcome(false, Some(message.clone())));
            return Err(self.refuse(Refusal::Limit(message)));
        }
        let filled = match self.fill(url, url_secrets, body) {
            Ok(filled) => filled,
            Err(message) => {
                self.record(method, url, hop.outcome(false, Some(message.clone())));
                return Err(self.refuse(Refusal::Secret(message)));
            }
        };
        match self.headers(headers, method, url, &filled, uses, keys) {
            Ok(map) => Ok((map, filled)),
            Err(e) => {
                self.record(method, url, hop.outcome(false, Some(e.to_string())));
                Err(match e {
                    HeaderError::Invalid(m) => HttpError::Invalid(m),
                    HeaderError::Secret(m) => self.refuse(Refusal::Secret(m)),
                })
            }
        }
    }

    /// Sends an admitted hop within what is left of the time allowed.
    async fn transmit(
        &mut self,
        hop: &Hop,
        headers: HeaderMap,
        body: Vec<u8>,
        until: Instant,
    ) -> Result<reqwest::Response, HttpError> {
        let remaining = until.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HttpError::Timeout(format!("request to {} ran out of time", origin_of(&hop.url))));
        }
        let sent = self.client.request(hop.method.clone(), hop.url.clone()).headers(headers).body(body);
        match sent.timeout(remaining).send().await {
            Ok(response) => Ok(response),
            Err(e) => {
                let error = self.transport(&hop.url, e);
                let allowed = !matches!(error, HttpError::Denied(_));
                self.record(hop.method.as_str(), &hop.url, hop.outcome(allowed, Some(http_error_message(&error))));
                Err(error)
            }
        }
    }

    /// Where a redirect points, recorded as a hop of its own; `None` for any other response.
    fn redirect(&mut self, hop: &Hop, response: &reqwest::Response) -> Result<Option<Url>, HttpError> {
        let status = response.status();
        let location = match response.headers().get(reqwest::header::LOCATION) {
            Some(location) if status.is_redirection() => location,
            _ => return Ok(None),
        };
        self.record(
            hop.method.as_str(),
            &hop.url,
            Outcome { status: Some(status.as_u16()), ..hop.outcome(true, None) },
        );
        let location = location.to_str().map_err(|_| HttpError::Invalid("redirect location is not text".into()))?;
        let next = hop
            .url
            .join(location)
            .map_err(|e| HttpError::Invalid(format!("bad redirect location {location:?}: {e}")))?;
        Ok(Some(next))
    }

    /// Reads the final response within the size cap and hands the plugin its redacted form.
    async fn receive(
        &mut self,
        hop: &Hop,
        response: reqwest::Response,
        started: Instant,
    ) -> Result<Response, HttpError> {
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), self.grants.secrets.redact(&String::from_utf8_lossy(v.as_bytes()))))
            .collect();
        let read = self.read_body(response, &hop.url).await;
        let bytes = read.as_ref().map(|b| b.len() as u64).unwrap_or_default();
        let reason = read.as_ref().err().map(http_error_message);
        let outcome = Outcome { status: Some(status.as_u16()), bytes, ..hop.outcome(true, reason) };
        self.record(hop.method.as_str(), &hop.url, outcome);
        let body = match read {
            Ok(body) => body,
            Err(HttpError::Limit(m)) => return Err(self.refuse(Refusal::Limit(m))),
            Err(e) => return Err(e),
        };
        Ok(Response {
            status: status.as_u16(),
            headers,
            body: self.redact_body(body),
            elapsed_us: started.elapsed().as_micros() as u64,
        })
    }

    /// Checks a secret URL's bindings against this hop and fills `{{secret:NAME}}` in the body.
    fn fill(&self, url: &Url, url_secrets: &[String], body: &[u8]) -> Result<Vec<u8>, String> {
        let secrets = &self.grants.secrets;
        for name in url_secrets {
            secrets.check_bound(name, url).map_err(|e| format!("step `{}`: {e}", self.step))?;
        }
        match std::str::from_utf8(body) {
            Ok(text) if text.contains(PLACEHOLDER) => {
                secrets.substitute(text, url).map(String::into_bytes).map_err(|e| format!("step `{}`: {e}", self.step))
            }
            _ => Ok(body.to_vec()),
        }
    }

    /// The plugin's headers, then the secrets it asked for (which replace same-named ones).
    fn headers(
        &mut self,
        own: &[(String, String)],
        method: &str,
        url: &Url,
        body: &[u8],
        uses: &[SecretUse],
        keys: &[AwsKeys],
    ) -> Result<HeaderMap, HeaderError> {
        let mut map = HeaderMap::new();
        let parse = |name: &str, value: &str| -> Result<(HeaderName, HeaderValue), HeaderError> {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HeaderError::Invalid(format!("invalid header name {name:?}")))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| HeaderError::Invalid(format!("invalid value for header {name:?}")))?;
            Ok((n, v))
        };
        for (name, value) in own {
            let (n, v) = parse(name, value)?;
            map.append(n, v);
        }
        for (use_, keys) in uses.iter().zip(keys) {
            for (name, value) in self.secret_headers(use_, keys, method, url, own, body)? {
                let (n, mut v) = parse(&name, &value)
                    .map_err(|_| HeaderError::Invalid(format!("a secret does not fit header {name:?}")))?;
                v.set_sensitive(true);
                map.insert(n, v);
            }
        }
        Ok(map)
    }

    fn secret_headers(
        &mut self,
        use_: &SecretUse,
        keys: &AwsKeys,
        method: &str,
        url: &Url,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, HeaderError> {
        let secrets = &mut self.grants.secrets;
        let one = |r: Result<(String, String), SecretError>| r.map(|h| vec![h]);
        let result = match use_ {
            SecretUse::Bearer(name) => one(secrets.bearer(name, url)),
            SecretUse::Header(h) => one(secrets.header(&h.header, &h.prefix, &h.secret, url)),
            SecretUse::Basic(b) => one(secrets.basic(&b.username, &b.password_secret, url)),
            SecretUse::HmacSha256(h) => one(secrets.hmac_sha256(&h.header, &h.prefix, &h.secret, url, body)),
            SecretUse::AwsSigv4(s) => match keys {
                Ok(keys) => secrets.aws_sigv4(&sigv4_use(s), keys.as_ref(), &SignedRequest { method, url, headers, body }),
                Err(message) => Err(SecretError::Unsupported(message.clone())),
            },
        };
        result.map_err(|e| HeaderError::Secret(format!("step `{}`: {e}", self.step)))
    }

    /// The current keys of the AWS credential set each SigV4 use signs with (renewed here when due,
    /// before anything is admitted); `None` for other uses and for static keys.
    async fn aws_keys(&self, url: &Url, uses: &[SecretUse]) -> Vec<AwsKeys> {
        let mut keys = Vec::with_capacity(uses.len());
        for use_ in uses {
            let SecretUse::AwsSigv4(s) = use_ else {
                keys.push(Ok(None));
                continue;
            };
            let set = self.grants.secrets.aws_set_for(&sigv4_use(s), url).map_err(|e| e.to_string());
            keys.push(match set {
                Ok(Some(set)) => set.current(&self.step).await.map(Some).map_err(|e| e.to_string()),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            });
        }
        keys
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
        // Bytes, not text: a body that is not UTF-8 may still carry a secret.
        match self.grants.secrets.redactor().redact_bytes(&body) {
            std::borrow::Cow::Borrowed(_) => body,
            std::borrow::Cow::Owned(redacted) => redacted,
        }
    }

    /// Maps a send error, recording an address refusal as such.
    fn transport(&mut self, url: &Url, e: reqwest::Error) -> HttpError {
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(denied) = s.downcast_ref::<AddressDenied>() {
                tracing::warn!(step = %self.step, origin = %origin_of(url), "{denied}");
                return self.refuse(Refusal::Network(format!("step `{}`: {}", self.step, denied.for_request())));
            }
            source = s.source();
        }
        transport(url, e)
    }
}

enum HeaderError {
    Invalid(String),
    Secret(String),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Invalid(m) | HeaderError::Secret(m) => f.write_str(m),
        }
    }
}

struct Outcome {
    started: Instant,
    status: Option<u16>,
    bytes: u64,
    allowed: bool,
    reason: Option<String>,
}

/// The error with its message redacted.
fn redacted(mut e: HttpError, secrets: &crate::capability::Secrets) -> HttpError {
    let (HttpError::Denied(m)
    | HttpError::SecretDenied(m)
    | HttpError::Invalid(m)
    | HttpError::Timeout(m)
    | HttpError::Limit(m)
    | HttpError::Transport(m)) = &mut e;
    *m = secrets.redact(m);
    e
}

fn http_error_message(e: &HttpError) -> String {
    match e {
        HttpError::Denied(m)
        | HttpError::SecretDenied(m)
        | HttpError::Invalid(m)
        | HttpError::Timeout(m)
        | HttpError::Limit(m)
        | HttpError::Transport(m) => m.clone(),
    }
}

/// A transport error as the plugin sees it: the origin and the cause, without the URL reqwest names (it
/// may have come from a secret, as a webhook's does); `send` redacts it with every other error.
fn transport(url: &Url, e: reqwest::Error) -> HttpError {
    if e.is_timeout() {
        HttpError::Timeout(format!("request to {} timed out", origin_of(url)))
    } else {
        let e = e.without_url();
        // reqwest's Display omits the cause; the chain says e.g. "connection refused".
        let mut message = format!("{}: {e}", origin_of(url));
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        HttpError::Transport(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_action_comes_from_the_target_header_or_the_query_form_and_is_only_a_name() {
        let url = Url::parse("http://127.0.0.1:5000/").unwrap();
        let target = vec![("X-Amz-Target".to_string(), "AmazonEC2ContainerServiceV20141113.UpdateService".to_string())];
        assert_eq!(api_action(&url, &target, b"{}").as_deref(), Some("UpdateService"));
        let body = b"Version=2015-12-01&Action=ModifyListener&ListenerArn=arn";
        assert_eq!(api_action(&url, &[], body).as_deref(), Some("ModifyListener"));
        let query = Url::parse("http://127.0.0.1:5000/?Action=DescribeTargetHealth&Version=1").unwrap();
        assert_eq!(api_action(&query, &[], b"").as_deref(), Some("DescribeTargetHealth"));
        assert_eq!(api_action(&url, &[], b"Action=Drop%20Table").as_deref(), None, "data is never taken");
        assert_eq!(api_action(&url, &[], b"{\"Action\":\"x\"}"), None);
    }

    #[test]
    fn a_post_that_names_a_read_action_changes_nothing_and_any_other_post_may() {
        let post = |action: Option<&str>| RequestRecord::allowed_post("s", action);
        for read in ["DescribeListeners", "GetMetricData", "ListTagsForResource", "BatchGetItem"] {
            assert!(!post(Some(read)).may_change(), "{read}");
        }
        for write in ["ModifyListener", "UpdateService", "Getaway", "Listen", "DescribeX".trim_end_matches('X')] {
            assert!(post(Some(write)).may_change(), "{write}");
        }
        assert!(post(None).may_change());
        assert!(!RequestRecord { method: "GET".into(), ..post(Some("ModifyListener")) }.may_change());
    }
}

/// A SigV4 use's keys: a credential set's current ones, none (static secrets), or why they are missing.
type AwsKeys = Result<Option<Keys>, String>;

/// The host's view of a plugin's SigV4 use.
fn sigv4_use(s: &Sigv4Secret) -> SigV4Use<'_> {
    SigV4Use {
        service: &s.service,
        region: &s.region,
        access_key_id_secret: &s.access_key_id_secret,
        secret_access_key_secret: &s.secret_access_key_secret,
        session_token_secret: s.session_token_secret.as_deref(),
    }
}
