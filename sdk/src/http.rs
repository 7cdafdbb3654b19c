//! HTTP performed by the host: the plugin builds a request, the host checks
//! it against the step's network policy, applies named secrets and sends it.

use crate::__private::bindings::gantry::step::{host, types as wit};
use crate::Error;
use serde::de::DeserializeOwned;
use std::fmt;

/// Entry point for requests; get one from [`crate::Context::http`].
#[derive(Debug, Clone, Default)]
pub struct Client {
    _private: (),
}

impl Client {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Starts a request with any method.
    pub fn request(&self, method: &str, url: &str) -> RequestBuilder {
        RequestBuilder {
            request: wit::Request {
                method: method.to_ascii_uppercase(),
                url: url.to_string(),
                headers: Vec::new(),
                body: Vec::new(),
                secrets: Vec::new(),
                timeout_ms: None,
            },
        }
    }

    /// Starts a `GET` request.
    pub fn get(&self, url: &str) -> RequestBuilder {
        self.request("GET", url)
    }

    /// Starts a `HEAD` request.
    pub fn head(&self, url: &str) -> RequestBuilder {
        self.request("HEAD", url)
    }

    /// Starts a `POST` request.
    pub fn post(&self, url: &str) -> RequestBuilder {
        self.request("POST", url)
    }

    /// Starts a `PATCH` request.
    pub fn patch(&self, url: &str) -> RequestBuilder {
        self.request("PATCH", url)
    }

    /// Starts a `PUT` request.
    pub fn put(&self, url: &str) -> RequestBuilder {
        self.request("PUT", url)
    }

    /// Starts a `DELETE` request.
    pub fn delete(&self, url: &str) -> RequestBuilder {
        self.request("DELETE", url)
    }
}

/// AWS Signature Version 4 parameters; the three credentials are secret names.
#[derive(Debug, Clone)]
pub struct Sigv4 {
    /// Signing service, e.g. `elasticloadbalancing`.
    pub service: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Secret holding the access key id.
    pub access_key_id_secret: String,
    /// Secret holding the secret access key.
    pub secret_access_key_secret: String,
    /// Secret holding a session token, if the credentials are temporary.
    pub session_token_secret: Option<String>,
}

/// A request being built; nothing is sent until [`RequestBuilder::send`].
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    request: wit::Request,
}

impl RequestBuilder {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body as raw bytes.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = body.into();
        self
    }

    /// Sets a JSON body and `Content-Type: application/json`.
    pub fn json<T: serde::Serialize>(self, value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(body)
    }

    /// Sets a form body (`application/x-www-form-urlencoded`) from pairs; a space is `+`, as browsers
    /// and AWS SDKs write it (servers that re-encode the form to check a signature expect exactly that).
    pub fn form(self, pairs: &[(&str, &str)]) -> Self {
        let field = |text: &str| percent_encode(text).replace("%20", "+");
        let body = pairs.iter().map(|(k, v)| format!("{}={}", field(k), field(v))).collect::<Vec<_>>().join("&");
        self.header("content-type", "application/x-www-form-urlencoded; charset=utf-8").body(body)
    }

    /// Caps this request's duration; the step's own limit still applies.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.request.timeout_ms = Some(ms);
        self
    }

    /// `Authorization: Bearer <value of secret>`, filled in by the host.
    ///
    /// ```no_run
    /// # let ctx = gantry_sdk::Context::for_test("s", serde_json::json!({}));
    /// let me = ctx.http().get("https://api.notion.com/v1/users/me")
    ///     .bearer_secret("NOTION_TOKEN")
    ///     .send()?;
    /// # Ok::<(), gantry_sdk::Error>(())
    /// ```
    pub fn bearer_secret(mut self, secret: &str) -> Self {
        self.request.secrets.push(wit::SecretUse::Bearer(secret.to_string()));
        self
    }

    /// `<header>: <prefix><value of secret>`, filled in by the host.
    pub fn header_secret(mut self, header: &str, prefix: &str, secret: &str) -> Self {
        self.request.secrets.push(wit::SecretUse::Header(wit::HeaderSecret {
            header: header.to_string(),
            secret: secret.to_string(),
            prefix: prefix.to_string(),
        }));
        self
    }

    /// HTTP basic auth with a plain user name and a secret password.
    pub fn basic_secret(mut self, username: &str, password_secret: &str) -> Self {
        self.request.secrets.push(wit::SecretUse::Basic(wit::BasicSecret {
            username: username.to_string(),
            password_secret: password_secret.to_string(),
        }));
        self
    }

    /// `<header>: <prefix><hex HMAC-SHA256 of the body>` keyed by a secret.
    pub fn hmac_sha256_secret(mut self, header: &str, prefix: &str, secret: &str) -> Self {
        self.request.secrets.push(wit::SecretUse::HmacSha256(wit::HmacSecret {
            header: header.to_string(),
            secret: secret.to_string(),
            prefix: prefix.to_string(),
        }));
        self
    }

    /// Signs the request with AWS Signature Version 4.
    pub fn aws_sigv4(mut self, sigv4: Sigv4) -> Self {
        self.request.secrets.push(wit::SecretUse::AwsSigv4(wit::Sigv4Secret {
            service: sigv4.service,
            region: sigv4.region,
            access_key_id_secret: sigv4.access_key_id_secret,
            secret_access_key_secret: sigv4.secret_access_key_secret,
            session_token_secret: sigv4.session_token_secret,
        }));
        self
    }

    /// Asks the host to perform the request.
    pub fn send(self) -> Result<Response, HttpError> {
        host::http(&self.request).map(Response).map_err(HttpError)
    }
}

/// Percent-encodes everything but `A-Z a-z 0-9 - _ . ~`, for query parameters and form fields.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An HTTP response, after any redirects the host followed.
#[derive(Debug, Clone)]
pub struct Response(wit::Response);

impl Response {
    /// Status code.
    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.0.status)
    }

    /// First value of a header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// All headers as received.
    pub fn headers(&self) -> &[(String, String)] {
        &self.0.headers
    }

    /// Body bytes.
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    /// Body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.body).into_owned()
    }

    /// Body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.0.body)
            .map_err(|e| Error::failed(format!("response body is not the expected JSON: {e}")))
    }

    /// Time from sending to the end of the body, in microseconds, measured by the host.
    pub fn elapsed_us(&self) -> u64 {
        self.0.elapsed_us
    }
}

/// Why the host did not return a response.
#[derive(Debug, Clone)]
pub struct HttpError(wit::HttpError);

impl HttpError {
    /// True when the network policy refused the origin or address.
    pub fn is_denied(&self) -> bool {
        matches!(self.0, wit::HttpError::Denied(_) | wit::HttpError::SecretDenied(_))
    }

    /// True when another attempt may succeed (timeouts, transport failures).
    pub fn is_retryable(&self) -> bool {
        matches!(self.0, wit::HttpError::Timeout(_) | wit::HttpError::Transport(_))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            wit::HttpError::Denied(m) => write!(f, "denied: {m}"),
            wit::HttpError::SecretDenied(m) => write!(f, "secret denied: {m}"),
            wit::HttpError::Invalid(m) => write!(f, "invalid request: {m}"),
            wit::HttpError::Timeout(m) => write!(f, "timeout: {m}"),
            wit::HttpError::Limit(m) => write!(f, "limit reached: {m}"),
            wit::HttpError::Transport(m) => write!(f, "transport error: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl HttpError {
    /// The step error for this failure, its message prefixed with what was being done
    /// (`ECS UpdateService: …`); retryable when the failure is.
    pub fn during(&self, what: impl std::fmt::Display) -> Error {
        self.error(format!("{what}: {self}"))
    }

    /// `text` as an error as retryable as this failure.
    fn error(&self, text: String) -> Error {
        if self.is_retryable() {
            Error::retryable(text)
        } else {
            Error::failed(text)
        }
    }
}

impl From<HttpError> for Error {
    fn from(e: HttpError) -> Self {
        e.error(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_reserved_bytes() {
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
