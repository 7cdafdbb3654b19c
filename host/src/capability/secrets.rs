//! Secrets a step may *use*, each bound to the origins it may be sent to.
//! Values stay in the host: plugins name a secret and the host applies it to
//! an outgoing request at send time, and redacts it from anything it prints.

use super::network::{origin_of, Grant};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use url::Url;

/// A secret value and the origins it may be sent to.
#[derive(Clone)]
pub struct Secret {
    value: String,
    bound_to: Vec<Grant>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret").field("value", &"***").field("bound_to", &self.bound_to).finish()
    }
}

impl Secret {
    /// A secret that may be sent only to `bound_to`.
    pub fn new(value: impl Into<String>, bound_to: Vec<Grant>) -> Self {
        Self { value: value.into(), bound_to }
    }

    /// Origins the secret is bound to.
    pub fn bound_to(&self) -> &[Grant] {
        &self.bound_to
    }
}

/// The secrets granted to one step, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    by_name: BTreeMap<String, Secret>,
}

/// A secret a request may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No secret of that name was granted to the step.
    #[error("secret `{name}` is not granted to this step: add it to `secrets:` of the step")]
    Unknown {
        /// The name the plugin used.
        name: String,
    },
    /// The secret exists but is not bound to the request's origin.
    #[error("secret `{name}` is not bound to {origin}: bind it to that origin in the pipeline")]
    NotBound {
        /// The name the plugin used.
        name: String,
        /// Origin of the request.
        origin: String,
    },
    /// The way of using the secret is not available.
    #[error("{0}")]
    Unsupported(String),
}

/// Reads a secret's value from its source: `env:NAME` or `file:PATH` (trailing newline dropped).
pub fn read_source(source: &str) -> Result<String, String> {
    if let Some(var) = source.strip_prefix("env:") {
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
    } else if let Some(path) = source.strip_prefix("file:") {
        std::fs::read_to_string(path).map(|s| s.trim_end().to_string()).map_err(|e| format!("cannot read {path}: {e}"))
    } else {
        Err(format!("source must be env:VAR or file:PATH, got {source:?}"))
    }
}

/// A header to add to an outgoing request.
pub type Header = (String, String);

impl Secrets {
    /// Grants a secret under a name.
    pub fn insert(&mut self, name: impl Into<String>, secret: Secret) {
        self.by_name.insert(name.into(), secret);
    }

    /// Names of the granted secrets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The value of `name` if it may be sent to `url`.
    fn value_for(&self, name: &str, url: &Url) -> Result<&str, SecretError> {
        let secret = self.by_name.get(name).ok_or_else(|| SecretError::Unknown { name: name.to_string() })?;
        if secret.bound_to.iter().any(|g| g.allows(url)) {
            Ok(&secret.value)
        } else {
            Err(SecretError::NotBound { name: name.to_string(), origin: origin_of(url) })
        }
    }

    /// `Authorization: Bearer <secret>`.
    pub fn bearer(&self, name: &str, url: &Url) -> Result<Header, SecretError> {
        Ok(("authorization".into(), format!("Bearer {}", self.value_for(name, url)?)))
    }

    /// `<header>: <prefix><secret>`.
    pub fn header(&self, header: &str, prefix: &str, name: &str, url: &Url) -> Result<Header, SecretError> {
        Ok((header.to_string(), format!("{prefix}{}", self.value_for(name, url)?)))
    }

    /// `Authorization: Basic base64(user:secret)`.
    pub fn basic(&self, username: &str, password: &str, url: &Url) -> Result<Header, SecretError> {
        let pair = format!("{username}:{}", self.value_for(password, url)?);
        Ok(("authorization".into(), format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))))
    }

    /// `<header>: <prefix><hex hmac-sha256(secret, body)>`.
    pub fn hmac_sha256(
        &self,
        header: &str,
        prefix: &str,
        name: &str,
        url: &Url,
        body: &[u8],
    ) -> Result<Header, SecretError> {
        let key = self.value_for(name, url)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(body);
        Ok((header.to_string(), format!("{prefix}{}", hex::encode(mac.finalize().into_bytes()))))
    }

    /// Replaces every granted secret value in `text` with `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.by_name.values() {
            if !secret.value.is_empty() {
                out = out.replace(&secret.value, "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        let mut s = Secrets::default();
        s.insert("TOKEN", Secret::new("s3cr3t", vec![Grant::parse("https://api.notion.com").unwrap()]));
        s
    }

    #[test]
    fn bound_origin_gets_the_value() {
        let url = Url::parse("https://api.notion.com/v1/users/me").unwrap();
        assert_eq!(secrets().bearer("TOKEN", &url).unwrap().1, "Bearer s3cr3t");
    }

    #[test]
    fn other_origin_is_refused() {
        let url = Url::parse("https://evil.example.com/").unwrap();
        let err = secrets().bearer("TOKEN", &url).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret `TOKEN` is not bound to https://evil.example.com: bind it to that origin in the pipeline"
        );
        assert!(matches!(secrets().bearer("NOPE", &url), Err(SecretError::Unknown { .. })));
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let mut s = Secrets::default();
        s.insert("K", Secret::new("Jefe", vec![Grant::parse("http://h").unwrap()]));
        let url = Url::parse("http://h/").unwrap();
        let (_, v) = s.hmac_sha256("x-sig", "sha256=", "K", &url, b"what do ya want for nothing?").unwrap();
        assert_eq!(v, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn redaction_hides_values_and_debug_hides_them_too() {
        let s = secrets();
        assert_eq!(s.redact("token=s3cr3t!"), "token=***!");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
