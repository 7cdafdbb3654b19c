//! Secrets a step may *use*, each bound to the origins it may be sent to.
//! Values stay in the host: plugins name a secret and the host applies it to
//! an outgoing request at send time, and redacts it from anything it prints.

use super::network::{origin_of, Grant};
use super::aws_credentials::{AwsCredentials, Keys};
use super::sigv4;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;
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

/// The secrets granted to one step, by name, and every value to redact.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    by_name: BTreeMap<String, Secret>,
    /// AWS credential sets (`aws-credentials:`), by name, each with the origins it may sign for.
    aws: BTreeMap<String, (Arc<AwsCredentials>, Vec<Grant>)>,
    redactor: Redactor,
}

/// Replaces secret values with `***` in every form a text may carry them: as written, base64
/// (standard and URL-safe, padded or not, and from 8 bytes on inside the base64 of a larger text)
/// and hex (either case), each of these with any of its
/// characters URL-encoded (`%XX` in either case, `+` for a space: whatever set an encoder leaves
/// alone, as `encodeURIComponent`, `rawurlencode` and form encoding differ) and inside a JSON string
/// whatever the encoder escaped (`\/` as PHP writes it, `\u0026` as Go writes `&`, `\uXXXX` for any
/// character).
#[derive(Clone, Default)]
pub struct Redactor {
    /// Every form of every value, longest first, each character also matching its escapes; `None`
    /// when there is nothing to redact.
    pattern: Option<Arc<regex::bytes::Regex>>,
    forms: usize,
    /// The values it was built from, so it can be extended with one more.
    values: Arc<Vec<String>>,
    /// Credentials derived from the values, each its own pattern, applied first.
    derived: Arc<Vec<Redactor>>,
    /// Values learned while the run goes on (renewed AWS credentials), shared by every clone, so
    /// each is redacted everywhere from the moment it is known.
    learned: Arc<std::sync::RwLock<Vec<Redactor>>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let learned = self.learned.read().map_or(0, |l| l.iter().map(|d| d.forms).sum::<usize>());
        write!(f, "Redactor({} forms)", self.forms + self.derived.iter().map(|d| d.forms).sum::<usize>() + learned)
    }
}

/// Shorter values are redacted only as written (and escaped): their encoded forms are too likely to
/// occur by chance.
const MIN_ENCODED_LEN: usize = 4;

/// Values this long are also found inside the base64 of a larger text (a whole echoed request, a
/// basic-authentication token): the characters they alone determine are long enough not to occur
/// by chance.
const MIN_EMBEDDED_LEN: usize = 8;

/// One form a value may take before URL- and JSON-escaping.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Form {
    text: String,
    /// What may follow when nothing else does (base64's last partial character and padding).
    tail: String,
    encoding: Encoding,
}

/// How a form's characters vary.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Encoding {
    /// As they are.
    Text,
    /// Hex digits in either case.
    Hex,
    /// Base64 in the standard or the URL-safe alphabet (`-` for `+`, `_` for `/`).
    Base64,
}

/// The forms of a value: as written, hex, and base64 at each of the three alignments it can have
/// inside a larger text (the first as the whole encoding, with its padding).
fn forms(value: &str) -> Vec<Form> {
    let form = |text: &str, tail: &str, encoding| Form { text: text.into(), tail: tail.into(), encoding };
    let mut forms = vec![form(value, "", Encoding::Text)];
    if value.len() < MIN_ENCODED_LEN {
        return forms;
    }
    forms.push(form(&hex::encode(value), "", Encoding::Hex));
    let alignments = if value.len() >= MIN_EMBEDDED_LEN { 3 } else { 1 };
    for k in 0..alignments {
        // After `k` bytes of anything, the value's bits start at bit 8k: the characters wholly inside
        // them are the same whatever comes before or after.
        let encoded = base64::engine::general_purpose::STANDARD.encode([&[0u8; 2][..k], value.as_bytes()].concat());
        let (start, end) = ((8 * k).div_ceil(6), 8 * (k + value.len()) / 6);
        let tail = if k == 0 { &encoded[end..] } else { "" };
        forms.push(form(&encoded[start..end], tail, Encoding::Base64));
    }
    forms
}

/// A pattern matching `form` with each character as written, URL-encoded or JSON-escaped.
fn escaped(form: &Form) -> String {
    let chars = |text: &str| -> String {
        text.chars()
            .map(|c| {
                let variant = match (form.encoding, c) {
                    (Encoding::Hex, c) if c.is_ascii_alphabetic() => Some(c.to_ascii_uppercase()),
                    (Encoding::Base64, '+') => Some('-'),
                    (Encoding::Base64, '/') => Some('_'),
                    _ => None,
                };
                match variant {
                    Some(v) => format!("(?:{}|{})", url_char(c), url_char(v)),
                    None => url_char(c),
                }
            })
            .collect()
    };
    let mut pattern = chars(&form.text);
    if let Some((last, padding)) = form.tail.split_at_checked(1) {
        // The last character alone, or with any part of its padding.
        let padding: String = padding.chars().map(|c| format!("(?:{}", chars(&c.to_string()))).collect();
        pattern.push_str(&format!("(?:{}{}{})?", chars(last), padding, ")?".repeat(form.tail.len() - 1)));
    }
    pattern
}

/// One character as written, `%XX`-encoded (either hex case), `+` for a space, each of those as a
/// JSON encoder may escape it.
fn url_char(c: char) -> String {
    let mut alternatives = vec![json_char(c)];
    if !c.is_ascii_alphanumeric() {
        let percent = json_char('%');
        alternatives.push(
            c.encode_utf8(&mut [0; 4])
                .bytes()
                .map(|b| format!("{percent}{}{}", hex_digit(b >> 4), hex_digit(b & 0xf)))
                .collect(),
        );
        if c == ' ' {
            alternatives.push(json_char('+'));
        }
    }
    format!("(?:{})", alternatives.join("|"))
}

/// A hex digit in either case, each as a JSON encoder may escape it.
fn hex_digit(d: u8) -> String {
    let c = char::from_digit(d.into(), 16).expect("a nibble is a hex digit");
    if c.is_ascii_alphabetic() {
        format!("(?:{}|{})", json_char(c), json_char(c.to_ascii_uppercase()))
    } else {
        json_char(c)
    }
}

/// One character as written or as a JSON encoder may escape it.
fn json_char(c: char) -> String {
    let mut units = [0u16; 2];
    // `\uXXXX` (a surrogate pair outside the BMP), hex digits in either case.
    let escaped: String = c
        .encode_utf16(&mut units)
        .iter()
        .map(|u| format!("\\\\u{}", format!("{u:04x}").chars().map(hex_class).collect::<String>()))
        .collect();
    let short = match c {
        '/' => Some(r"\\/"),
        '"' => Some(r#"\\""#),
        '\\' => Some(r"\\\\"),
        '\n' => Some(r"\\n"),
        '\r' => Some(r"\\r"),
        '\t' => Some(r"\\t"),
        '\u{8}' => Some(r"\\b"),
        '\u{c}' => Some(r"\\f"),
        _ => None,
    };
    let mut pattern = format!("(?:{}|{escaped}", regex::escape(c.encode_utf8(&mut [0; 4])));
    if let Some(short) = short {
        pattern.push('|');
        pattern.push_str(short);
    }
    pattern.push(')');
    pattern
}

/// A hex digit in either case, as a character class.
fn hex_class(c: char) -> String {
    if c.is_ascii_alphabetic() {
        format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
    } else {
        c.to_string()
    }
}

impl Redactor {
    /// A redactor for `values` and their encoded forms.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).map(str::to_string).collect();
        // A URL that is a secret (a webhook) is secret by its path: a server echoing the request line
        // shows only that part.
        let paths = values.iter().filter_map(|v| Url::parse(v).ok()).filter_map(|url| {
            let path = &url[url::Position::BeforePath..];
            (path.len() >= MIN_EMBEDDED_LEN).then(|| path.to_string())
        });
        let values: Vec<String> = values.iter().cloned().chain(paths).collect();
        let mut needles: Vec<Form> = values.iter().flat_map(|v| forms(v)).collect();
        needles
            .sort_by(|a, b| (b.text.len() + b.tail.len()).cmp(&(a.text.len() + a.tail.len())).then_with(|| a.cmp(b)));
        needles.dedup();
        if needles.is_empty() {
            return Self::default();
        }
        // Alternatives are tried in order, so the longest form wins where one contains another.
        let alternatives: Vec<String> = needles.iter().map(escaped).collect();
        let pattern = regex::bytes::RegexBuilder::new(&alternatives.join("|"))
            .unicode(false)
            .size_limit(64 << 20)
            .build()
            .expect("an escaped alternation of literals is a valid pattern");
        Self {
            pattern: Some(Arc::new(pattern)),
            forms: needles.len(),
            values: Arc::new(values),
            derived: Arc::default(),
            learned: Arc::default(),
        }
    }

    /// Adds `value` to this redactor and every clone of it, at once (a credential renewed during
    /// the run); nothing when it is already known.
    pub fn learn(&self, value: &str) {
        let known = |r: &Redactor| r.values.iter().any(|v| v == value);
        let mut learned = self.learned.write().unwrap_or_else(|e| e.into_inner());
        if value.is_empty() || known(self) || learned.iter().any(known) {
            return;
        }
        // One pattern for all of them, so a longer value is found before a shorter one inside it
        // (a secret key that starts with its key id).
        let mut values: Vec<String> = learned.iter().flat_map(|r| r.values.iter().cloned()).collect();
        values.push(value.to_string());
        *learned = vec![Self::new(values.iter().map(String::as_str))];
    }

    /// This redactor and `value` too (a credential the host derived from a secret, such as a basic
    /// authentication token, which a server may echo back); itself when it already redacts `value`.
    pub fn with(&self, value: &str) -> Self {
        let known = |r: &Redactor| r.values.iter().any(|v| v == value);
        if value.is_empty() || known(self) || self.derived.iter().any(known) {
            return self.clone();
        }
        // Compiling a pattern takes milliseconds; every call of a step that uses basic
        // authentication derives the same token, so the last few are kept, each on its own so that
        // another user name or another set of secrets does not compile them again.
        static DERIVED: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Redactor>>> = std::sync::OnceLock::new();
        let cache = DERIVED.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 64 && !cache.contains_key(value) {
            cache.clear();
        }
        let one = cache.entry(value.to_string()).or_insert_with(|| Self::new([value])).clone();
        let mut extended = self.clone();
        Arc::make_mut(&mut extended.derived).push(one);
        extended
    }

    /// Replaces every form of every value in `text` with `***`.
    pub fn redact(&self, text: &str) -> String {
        match self.redact_bytes(text.as_bytes()) {
            std::borrow::Cow::Borrowed(_) => text.to_string(),
            // Every form is whole UTF-8 characters, so replacing it in UTF-8 leaves UTF-8.
            std::borrow::Cow::Owned(bytes) => {
                String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            }
        }
    }

    /// Replaces every form of every value in `bytes` (a body that may not be UTF-8) with `***`.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        let mut text = Cow::Borrowed(bytes);
        let learned = self.learned.read().unwrap_or_else(|e| e.into_inner());
        for derived in self.derived.iter().chain(learned.iter()) {
            let replaced = match derived.redact_bytes(&text) {
                Cow::Owned(o) => Some(o),
                Cow::Borrowed(_) => None,
            };
            if let Some(o) = replaced {
                text = Cow::Owned(o);
            }
        }
        let replaced = match &self.pattern {
            Some(p) => match p.replace_all(&text, &b"***"[..]) {
                Cow::Owned(o) => Some(o),
                Cow::Borrowed(_) => None,
            },
            None => None,
        };
        replaced.map_or(text, Cow::Owned)
    }

    /// Redacts every string inside a JSON value.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => *s = self.redact(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|v| self.redact_json(v)),
            _ => {}
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.pattern.is_none()
            && self.derived.is_empty()
            && self.learned.read().map_or(true, |l| l.is_empty())
    }
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

pub use super::source::SecretSource;

/// Opens a placeholder the host fills with a secret value at send time: `{{secret:NAME}}`.
pub const PLACEHOLDER: &str = "{{secret:";

/// A header to add to an outgoing request.
pub type Header = (String, String);

/// Which secrets sign a request with SigV4, and for which service and region.
#[derive(Debug, Clone, Copy)]
pub struct SigV4Use<'a> {
    /// Service in the credential scope.
    pub service: &'a str,
    /// Region.
    pub region: &'a str,
    /// Secret holding the access key id.
    pub access_key_id_secret: &'a str,
    /// Secret holding the secret access key.
    pub secret_access_key_secret: &'a str,
    /// Secret holding a session token, for temporary credentials.
    pub session_token_secret: Option<&'a str>,
}

/// The parts of a request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Target URL.
    pub url: &'a Url,
    /// The request's own headers.
    pub headers: &'a [(String, String)],
    /// Body.
    pub body: &'a [u8],
}

impl Secrets {
    /// Grants a secret under a name.
    pub fn insert(&mut self, name: impl Into<String>, secret: Secret) {
        self.by_name.insert(name.into(), secret);
        self.redactor = Redactor::new(self.by_name.values().map(|s| s.value.as_str()));
    }

    /// Redacts with `redactor` instead: a run redacts every secret of the pipeline in every step,
    /// since a plugin may know a value it was not granted.
    pub fn redact_with(&mut self, redactor: Redactor) {
        self.redactor = redactor;
    }

    /// Every granted value, for building a run-wide [`Redactor`].
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.by_name.values().map(|s| s.value.as_str())
    }

    /// The redactor in use.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Names of the granted secrets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The secret granted as `name`.
    fn granted(&self, name: &str) -> Result<&Secret, SecretError> {
        self.by_name.get(name).ok_or_else(|| SecretError::Unknown { name: name.to_string() })
    }

    /// The value of `name` if it may be sent to `url`.
    fn value_for(&self, name: &str, url: &Url) -> Result<&str, SecretError> {
        let secret = self.granted(name)?;
        if secret.bound_to.iter().any(|g| g.allows(url)) {
            Ok(&secret.value)
        } else {
            Err(SecretError::NotBound { name: name.to_string(), origin: origin_of(url) })
        }
    }

    /// Replaces `{{secret:NAME}}` placeholders in `text` with values that may be sent to `url`.
    pub fn substitute(&self, text: &str, url: &Url) -> Result<String, SecretError> {
        self.expand(text, |name| self.value_for(name, url))
    }

    /// Replaces `{{secret:NAME}}` placeholders in a URL that is itself a secret (a webhook URL);
    /// returns the names used, whose bindings the caller checks against the resulting URL.
    pub fn expand_url(&self, text: &str) -> Result<(String, Vec<String>), SecretError> {
        let mut names = Vec::new();
        let out = self.expand(text, |name| {
            names.push(name.to_string());
            self.granted(name).map(|s| s.value.as_str())
        })?;
        Ok((out, names))
    }

    /// Checks that secret `name` may be sent to `url`.
    pub fn check_bound(&self, name: &str, url: &Url) -> Result<(), SecretError> {
        self.value_for(name, url).map(|_| ())
    }

    fn expand<'a>(
        &'a self,
        text: &str,
        mut value: impl FnMut(&str) -> Result<&'a str, SecretError>,
    ) -> Result<String, SecretError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(PLACEHOLDER) {
            let after = &rest[start + PLACEHOLDER.len()..];
            let Some(end) = after.find("}}") else { break };
            out.push_str(&rest[..start]);
            out.push_str(value(after[..end].trim())?);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `Authorization: Bearer <secret>`.
    pub fn bearer(&self, name: &str, url: &Url) -> Result<Header, SecretError> {
        Ok(("authorization".into(), format!("Bearer {}", self.value_for(name, url)?)))
    }

    /// `<header>: <prefix><secret>`.
    pub fn header(&self, header: &str, prefix: &str, name: &str, url: &Url) -> Result<Header, SecretError> {
        Ok((header.to_string(), format!("{prefix}{}", self.value_for(name, url)?)))
    }

    /// `Authorization: Basic base64(user:secret)`; from then on the token is redacted too, since its
    /// base64 holds the secret's own only when the user name happens to align it.
    pub fn basic(&mut self, username: &str, password: &str, url: &Url) -> Result<Header, SecretError> {
        let pair = format!("{username}:{}", self.value_for(password, url)?);
        let token = base64::engine::general_purpose::STANDARD.encode(pair);
        self.redactor = self.redactor.with(&token);
        Ok(("authorization".into(), format!("Basic {token}")))
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

    /// Grants an AWS credential set under a name, for requests to `bound_to`.
    pub fn insert_aws(&mut self, credentials: Arc<AwsCredentials>, bound_to: Vec<Grant>) {
        self.aws.insert(credentials.name().to_string(), (credentials, bound_to));
    }

    /// The credential set a SigV4 use signs with, if any: the set its access key secret names, or,
    /// when that name is no secret granted to the step, the one set granted for the request's origin.
    pub fn aws_set_for(&self, use_: &SigV4Use<'_>, url: &Url) -> Result<Option<Arc<AwsCredentials>>, SecretError> {
        let bound = |name: &str, (set, grants): &(Arc<AwsCredentials>, Vec<Grant>)| match grants.iter().any(|g| g.allows(url)) {
            true => Ok(Some(set.clone())),
            false => Err(SecretError::NotBound { name: name.to_string(), origin: origin_of(url) }),
        };
        if let Some(named) = self.aws.get(use_.access_key_id_secret) {
            return bound(use_.access_key_id_secret, named);
        }
        if self.by_name.contains_key(use_.access_key_id_secret) {
            return Ok(None);
        }
        let mut for_origin = self.aws.iter().filter(|(_, (_, grants))| grants.iter().any(|g| g.allows(url)));
        match (for_origin.next(), for_origin.next()) {
            (Some((name, set)), None) => bound(name, set),
            (Some(_), Some(_)) => Err(SecretError::Unsupported(format!(
                "more than one AWS credential set is granted for {}: name one as the plugin's access key secret",
                origin_of(url)
            ))),
            (None, _) => Ok(None),
        }
    }

    /// Signs the request with AWS Signature Version 4: with `keys` (a credential set's, current),
    /// or with the secrets the use names, bound to the request's origin.
    pub fn aws_sigv4(
        &self,
        use_: &SigV4Use<'_>,
        keys: Option<&Keys>,
        req: &SignedRequest<'_>,
    ) -> Result<Vec<Header>, SecretError> {
        let (access_key_id, secret_access_key, session_token) = match keys {
            Some(k) => (k.access_key_id.as_str(), k.secret_access_key.as_str(), k.session_token.as_deref()),
            None => (
                self.value_for(use_.access_key_id_secret, req.url)?,
                self.value_for(use_.secret_access_key_secret, req.url)?,
                use_.session_token_secret.map(|name| self.value_for(name, req.url)).transpose()?,
            ),
        };
        let creds = sigv4::Credentials {
            service: use_.service,
            region: use_.region,
            access_key_id,
            secret_access_key,
            session_token,
        };
        Ok(sigv4::sign(&creds, req.method, req.url, req.headers, req.body, SystemTime::now()))
    }

    /// Replaces every secret value (and its encoded forms) in `text` with `***`.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
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
    fn a_learned_value_is_redacted_by_every_clone_from_then_on() {
        let run = Redactor::new(["s3cr3t"]);
        let step = run.with("derived-token");
        assert_eq!(step.redact("ASIARENEWED99 s3cr3t"), "ASIARENEWED99 ***");
        run.learn("ASIARENEWED99");
        assert_eq!(step.redact("ASIARENEWED99 s3cr3t derived-token"), "*** *** ***");
        assert_eq!(run.redact("QVNJQVJFTkVXRUQ5OQ=="), "***", "its base64 too");
        let empty = Redactor::new([]);
        assert!(empty.is_empty());
        empty.clone().learn("later-value");
        assert!(!empty.is_empty());
        assert_eq!(empty.redact("later-value"), "***");
    }

    #[test]
    fn sigv4_signs_with_the_named_set_or_the_one_set_granted_for_the_origin() {
        use crate::capability::aws_credentials::{AwsCredentials, Keys};
        let keys = |id: &str| Keys { access_key_id: id.into(), secret_access_key: "k".into(), session_token: None };
        let elb = Url::parse("https://elasticloadbalancing.us-east-1.amazonaws.com/").unwrap();
        let other = Url::parse("https://monitoring.us-east-1.amazonaws.com/").unwrap();
        let grant = |o: &str| vec![Grant::parse(o).unwrap()];
        let use_ = |access: &'static str| SigV4Use {
            service: "elasticloadbalancing",
            region: "us-east-1",
            access_key_id_secret: access,
            secret_access_key_secret: "AWS_SECRET_ACCESS_KEY",
            session_token_secret: None,
        };
        let mut s = Secrets::default();
        s.insert_aws(AwsCredentials::for_test("AWS", keys("ASIA1"), None), grant("https://elasticloadbalancing.us-east-1.amazonaws.com"));
        // The plugin's default name is no granted secret: the one set for the origin signs.
        assert_eq!(s.aws_set_for(&use_("AWS_ACCESS_KEY_ID"), &elb).unwrap().unwrap().name(), "AWS");
        assert_eq!(s.aws_set_for(&use_("AWS"), &elb).unwrap().unwrap().name(), "AWS");
        assert!(s.aws_set_for(&use_("AWS_ACCESS_KEY_ID"), &other).unwrap().is_none(), "no set for that origin");
        assert!(matches!(s.aws_set_for(&use_("AWS"), &other), Err(SecretError::NotBound { .. })));
        // Static keys under the plugin's name win over a set.
        s.insert("AWS_ACCESS_KEY_ID", Secret::new("AKIASTATIC", grant("https://elasticloadbalancing.us-east-1.amazonaws.com")));
        assert!(s.aws_set_for(&use_("AWS_ACCESS_KEY_ID"), &elb).unwrap().is_none());
        // Two sets for one origin: the plugin must name one.
        s.insert_aws(AwsCredentials::for_test("AWS_PROD", keys("ASIA2"), None), grant("https://elasticloadbalancing.us-east-1.amazonaws.com"));
        assert!(matches!(s.aws_set_for(&use_("OTHER"), &elb), Err(SecretError::Unsupported(_))));
        assert_eq!(s.aws_set_for(&use_("AWS_PROD"), &elb).unwrap().unwrap().name(), "AWS_PROD");
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
    fn placeholders_are_filled_only_for_bound_origins() {
        let s = secrets();
        let api = Url::parse("https://api.notion.com/").unwrap();
        let body = r#"{"routing_key": "{{secret:TOKEN}}", "x": "{{ not a secret }}"}"#;
        assert_eq!(s.substitute(body, &api).unwrap(), r#"{"routing_key": "s3cr3t", "x": "{{ not a secret }}"}"#);
        let evil = Url::parse("https://evil.example.com/").unwrap();
        assert!(matches!(s.substitute(body, &evil), Err(SecretError::NotBound { .. })));
        let mut hook = Secrets::default();
        hook.insert(
            "HOOK",
            Secret::new(
                "https://hooks.slack.com/services/T0/B0/x",
                vec![Grant::parse("https://hooks.slack.com").unwrap()],
            ),
        );
        let (url, names) = hook.expand_url("{{secret:HOOK}}").unwrap();
        assert_eq!((url.as_str(), names), ("https://hooks.slack.com/services/T0/B0/x", vec!["HOOK".to_string()]));
        assert!(matches!(hook.expand_url("{{secret:NOPE}}"), Err(SecretError::Unknown { .. })));
    }

    #[test]
    fn encoded_forms_are_redacted_too() {
        let mut s = Secrets::default();
        s.insert("K", Secret::new("p@ss word/+?", vec![]));
        let b64 = base64::engine::general_purpose::STANDARD.encode("p@ss word/+?");
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("p@ss word/+?");
        let text = format!("a={b64} b={b64url} c=p%40ss+word%2F%2B%3F d=p%40ss%20word%2F%2B%3F e=p@ss word/+?");
        assert_eq!(s.redact(&text), "a=*** b=*** c=*** d=*** e=***");
        let mut json = serde_json::json!({"x": ["p@ss word/+?"], "y": {"z": b64}});
        s.redactor().redact_json(&mut json);
        assert_eq!(json, serde_json::json!({"x": ["***"], "y": {"z": "***"}}));
    }

    /// Every way `value` may appear: each form as written and as PHP's and Go's JSON encoders write it.
    fn encodings(value: &str) -> Vec<String> {
        let php = |s: &str| serde_json::to_string(s).unwrap().replace('/', "\\/");
        let go = |s: &str| {
            serde_json::to_string(s).unwrap().replace('&', "\\u0026").replace('<', "\\u003c").replace('>', "\\u003e")
        };
        let ascii_only = |s: &str| {
            s.encode_utf16()
                .map(|u| if u < 0x80 { (u as u8 as char).to_string() } else { format!("\\u{u:04X}") })
                .collect()
        };
        // encodeURIComponent leaves these alone; NON_ALPHANUMERIC encodes them too.
        const JS: &percent_encoding::AsciiSet =
            &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'!').remove(b'~');
        let lower = |s: String| s.replace("%2F", "%2f").replace("%C3%A4", "%c3%a4").replace("%3D", "%3d");
        let mut all = Vec::new();
        let mut plain_forms = vec![value.to_string()];
        if value.len() >= MIN_ENCODED_LEN {
            use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
            plain_forms.extend([STANDARD.encode(value), STANDARD_NO_PAD.encode(value), URL_SAFE.encode(value)]);
            plain_forms.extend([URL_SAFE_NO_PAD.encode(value), hex::encode(value), hex::encode_upper(value)]);
        }
        for form in plain_forms {
            let upper = percent_encoding::utf8_percent_encode(&form, percent_encoding::NON_ALPHANUMERIC).to_string();
            let url_forms = [
                lower(upper.clone()),
                upper,
                percent_encoding::utf8_percent_encode(&form, JS).to_string(),
                url::form_urlencoded::byte_serialize(form.as_bytes()).collect(),
                form,
            ];
            for url_form in url_forms {
                all.extend([
                    php(&url_form),
                    go(&url_form),
                    ascii_only(&serde_json::to_string(&url_form).unwrap()),
                    url_form,
                ]);
            }
        }
        all
    }

    #[test]
    fn json_escaped_hex_and_lower_case_forms_are_redacted() {
        let values = ["wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "a&b<c>d\"e\\f/g", "pässwörd 😀 x", "tok\nline\tTAB"];
        let r = Redactor::new(values);
        for value in values {
            for encoded in encodings(value) {
                let text = format!("{{\"echo\":{encoded},\"n\":1}}");
                let out = r.redact(&text);
                assert!(!out.contains(value) && out.contains("***"), "{value:?} survived as {encoded}: {out}");
                assert!(out.ends_with(",\"n\":1}"), "only the secret goes: {out}");
            }
        }
        let body = format!("{{\"auth\":\"Bearer {}\"}}", values[0].replace('/', "\\/"));
        assert_eq!(r.redact(&body), "{\"auth\":\"Bearer ***\"}", "PHP's json_encode of an echoed header");
        assert_eq!(r.redact(&hex::encode(values[0])), "***");
        assert_eq!(r.redact("p%c3%a4ssw%c3%b6rd%20%f0%9f%98%80%20x"), "***", "lower-case percent-encoding");
        let binary = [b"\xff\xfe raw ".to_vec(), values[0].as_bytes().to_vec(), b" \x00".to_vec()].concat();
        assert_eq!(&*r.redact_bytes(&binary), b"\xff\xfe raw *** \x00", "a body that is not UTF-8");
    }

    #[test]
    fn no_secret_survives_in_any_encoding_for_generated_values() {
        // A deterministic sweep over values mixing every character class an encoder treats differently.
        let alphabet: Vec<char> = "aZ09/+=&<>\"\\'% \n\té€😀-_.~".chars().collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let len = 4 + (seed % 20) as usize;
            let value: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let r = Redactor::new([value.as_str()]);
            for encoded in encodings(&value) {
                let out = r.redact(&format!("x{encoded}y"));
                assert!(!out.contains(&value), "{value:?} survived in {encoded:?}: {out:?}");
                assert!(out.contains("***"), "{value:?} not found in {encoded:?}: {out:?}");
            }
        }
    }

    #[test]
    fn a_value_inside_the_base64_of_a_larger_text_is_redacted_at_every_alignment() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let value = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY";
        let r = Redactor::new([value]);
        for before in ["", "a", "ab", "Authorization: Basic user:"] {
            let blob = format!("{before}{value}\r\nnext: header");
            for encoded in [STANDARD.encode(&blob), URL_SAFE_NO_PAD.encode(&blob)] {
                let out = r.redact(&encoded);
                // All but the characters shared with the neighbours are gone.
                let hidden = encoded.len() - (out.len() - "***".len());
                assert!(hidden + 4 >= value.len() * 4 / 3, "{before:?}: {out}");
            }
        }
        assert_eq!(Redactor::new(["short7!"]).redact(&STANDARD.encode("xshort7!y")), STANDARD.encode("xshort7!y"));
    }

    #[test]
    fn the_path_of_a_url_that_is_a_secret_is_redacted_on_its_own() {
        // Found by the `boundary` fuzz target: a server echoing the request line showed a webhook's path.
        let r = Redactor::new(["https://hooks.slack.com/services/T0/B0/xoxSECRET?x=1", "https://a.example/"]);
        assert_eq!(r.redact("POST /services/T0/B0/xoxSECRET?x=1 HTTP/1.1"), "POST *** HTTP/1.1");
        assert_eq!(r.redact("GET / HTTP/1.1"), "GET / HTTP/1.1", "a short path is no secret");
    }

    #[test]
    fn redaction_hides_values_and_debug_hides_them_too() {
        let s = secrets();
        assert_eq!(s.redact("token=s3cr3t!"), "token=***!");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn derived_credentials_are_redacted_beside_the_values_and_kept_once() {
        let base = Redactor::new(["pa55word-long"]);
        let (t1, t2) = (
            base64::engine::general_purpose::STANDARD.encode("ann:pa55word-long"),
            base64::engine::general_purpose::STANDARD.encode("bo:pa55word-long"),
        );
        let both = base.with(&t1).with(&t2).with(&t1);
        assert_eq!(both.derived.len(), 2, "a token already known is not added twice");
        let echoed = format!("{t1} {t2} pa55word-long {}", t1.replace('/', "\\/"));
        assert_eq!(both.redact(&echoed), "*** *** *** ***");
        assert!(!base.redact(&t1).is_empty() && base.derived.is_empty(), "the base is unchanged");
    }
}
