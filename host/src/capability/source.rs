//! Where secret values come from: the process environment, a file, a command
//! (`op read`, `pass`, a credential helper), AWS Secrets Manager (signed by the
//! host) or a HashiCorp Vault KV v2 engine, alone or as a fallback chain. The
//! reference format is written here only; values are read on the host, once
//! per run, and never logged.

use super::aws_credentials::{self, AwsCredentialSpec};
use super::sigv4;
use super::vault::{self, VaultStore};
use super::Redactor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// How long an `exec:` command may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a run says it still waits for a secret, while a source is slow to answer.
pub const SLOW_NOTICE: Duration = Duration::from_secs(5);
/// Most bytes kept of a command's output.
const OUTPUT_CAP: u64 = 1 << 20;

/// Where a secret's value is read from; never the value itself. Serialised as written
/// (`env:NAME`, `file:PATH`, `exec:COMMAND`, `aws-sm:ID[#KEY]`, `vault:PATH[#KEY]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecretSource {
    /// A variable of the process environment.
    Env(String),
    /// A file; its trailing newline is dropped.
    File(PathBuf),
    /// A command, run without a shell; its standard output, less the trailing newline, is the value.
    Exec(String),
    /// An AWS Secrets Manager secret (`GetSecretValue`), or one key of its JSON value.
    AwsSm {
        /// Secret name or ARN.
        id: String,
        /// A key of the secret's JSON object.
        key: Option<String>,
    },
    /// A secret of a Vault KV v2 engine, or one key of its data.
    Vault {
        /// The API path under `/v1/`: `MOUNT/data/PATH`, e.g. `secret/data/app`.
        path: String,
        /// A key of the secret's data.
        key: Option<String>,
    },
    /// An AWS credential set from the AWS SDK's default chain, renewed before it expires; used only
    /// to sign AWS requests (SigV4), never as a value.
    AwsCredentials(AwsCredentialSpec),
}

/// The secret store a source needs configured in `secret_stores:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `secret_stores.aws`.
    Aws,
    /// `secret_stores.vault`.
    Vault,
}

impl Store {
    /// Its key under `secret_stores:`.
    pub fn field(self) -> &'static str {
        match self {
            Self::Aws => "secret_stores.aws",
            Self::Vault => "secret_stores.vault",
        }
    }

    /// What its configuration holds, for the error that asks for it.
    pub fn needs(self) -> &'static str {
        match self {
            Self::Aws => "region, and the sources of the credentials the host signs with",
            Self::Vault => "address, and the source of a token or of an AppRole's ids",
        }
    }
}

/// Why a source gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// What went wrong, for a person; never a value.
    pub message: String,
    /// The source could not be asked (unreachable, 5xx, throttled, a variable or file that is not
    /// there): a chain tries its next source. Otherwise it answered with a refusal, which ends it.
    pub unavailable: bool,
}

impl SourceError {
    /// The source answered, and the answer is no.
    pub fn refused(message: impl Into<String>) -> Self {
        Self { message: message.into(), unavailable: false }
    }

    /// The source could not be asked.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { message: message.into(), unavailable: true }
    }
}

impl SecretSource {
    /// Parses `env:NAME`, `file:PATH`, `exec:COMMAND`, `aws-sm:ID[#KEY]` or `vault:PATH[#KEY]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "secret source `{text}` must be `env:NAME`, `file:PATH`, `exec:COMMAND`, `aws-sm:SECRET_ID[#KEY]`, `vault:MOUNT/data/PATH[#KEY]` or `aws-credentials:[OPTIONS]`"
            )
        };
        let id_and_key = |rest: &str| {
            let (id, key) = match rest.split_once('#') {
                Some((id, key)) => (id.to_string(), Some(key.to_string())),
                None => (rest.to_string(), None),
            };
            match id.is_empty() || key.as_ref().is_some_and(String::is_empty) {
                true => Err(invalid()),
                false => Ok((id, key)),
            }
        };
        match text.split_once(':') {
            Some(("env", var)) if !var.is_empty() => Ok(Self::Env(var.to_string())),
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.into())),
            Some(("exec", command)) => {
                argv(command)?;
                Ok(Self::Exec(command.to_string()))
            }
            Some(("aws-sm", rest)) => {
                let (id, key) = id_and_key(rest)?;
                Ok(Self::AwsSm { id, key })
            }
            Some(("vault", rest)) => {
                let (path, key) = id_and_key(rest)?;
                vault::check_path(&path)?;
                Ok(Self::Vault { path, key })
            }
            Some((aws_credentials::PREFIX, options)) => AwsCredentialSpec::parse(options).map(Self::AwsCredentials),
            _ => Err(invalid()),
        }
    }

    /// The secret store reading it needs configured (and the network), if any.
    pub fn store(&self) -> Option<Store> {
        match self {
            Self::AwsSm { .. } => Some(Store::Aws),
            Self::Vault { .. } => Some(Store::Vault),
            Self::Env(_) | Self::File(_) | Self::Exec(_) | Self::AwsCredentials(_) => None,
        }
    }

    /// Whether reading it needs a secret store's configuration (and the network).
    pub fn needs_store(&self) -> bool {
        self.store().is_some()
    }

    /// Reads a value that needs no secret store: `env:`, `file:`, `exec:`.
    pub fn read(&self) -> Result<String, String> {
        self.read_local().map_err(|e| e.message)
    }

    fn read_local(&self) -> Result<String, SourceError> {
        match self {
            Self::Env(var) => std::env::var(var)
                .map_err(|_| SourceError::unavailable(format!("environment variable {var} is not set"))),
            Self::File(path) => std::fs::read_to_string(path).map(|s| s.trim_end().to_string()).map_err(|e| {
                let message = format!("cannot read {}: {e}", path.display());
                match e.kind() {
                    std::io::ErrorKind::NotFound => SourceError::unavailable(message),
                    _ => SourceError::refused(message),
                }
            }),
            Self::Exec(command) => exec(command, EXEC_TIMEOUT),
            Self::AwsSm { .. } | Self::Vault { .. } => Err(SourceError::refused(format!(
                "{self} is read by runs, with the pipeline's `{}`",
                self.store().map(Store::field).unwrap_or_default()
            ))),
            Self::AwsCredentials(_) => {
                Err(SourceError::refused(format!("{self} holds AWS credentials, which only sign AWS requests")))
            }
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(var) => write!(f, "env:{var}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Exec(command) => write!(f, "exec:{command}"),
            Self::AwsSm { id, key: None } => write!(f, "aws-sm:{id}"),
            Self::AwsSm { id, key: Some(key) } => write!(f, "aws-sm:{id}#{key}"),
            Self::Vault { path, key: None } => write!(f, "vault:{path}"),
            Self::Vault { path, key: Some(key) } => write!(f, "vault:{path}#{key}"),
            Self::AwsCredentials(spec) => spec.fmt(f),
        }
    }
}

serde_as_text!(SecretSource, String);

/// A secret's sources in order (`from:` as one source or a list): the first that is available
/// answers. Never empty. Serialised as one source's text, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFrom(Vec<SecretSource>);

impl SecretFrom {
    /// A chain of these sources; errs on none.
    pub fn chain(sources: Vec<SecretSource>) -> Result<Self, String> {
        let sets = sources.iter().filter(|s| matches!(s, SecretSource::AwsCredentials(_))).count();
        match sources.is_empty() {
            true => Err("give at least one source".into()),
            false if sets > 0 && sources.len() > 1 => Err(format!(
                "`{}:` stands alone: the AWS SDK's chain is itself the fallback, and a credential set does not fall back to a value",
                aws_credentials::PREFIX
            )),
            false => Ok(Self(sources)),
        }
    }

    /// The credential set it names, when it is `aws-credentials:` (which stands alone).
    pub fn aws_credentials(&self) -> Option<&AwsCredentialSpec> {
        match self.0.as_slice() {
            [SecretSource::AwsCredentials(spec)] => Some(spec),
            _ => None,
        }
    }

    /// Its sources, first asked first.
    pub fn sources(&self) -> &[SecretSource] {
        &self.0
    }

    /// The secret stores reading it may need.
    pub fn stores(&self) -> impl Iterator<Item = Store> + '_ {
        self.0.iter().filter_map(SecretSource::store)
    }

    /// Whether reading it may need a secret store (and the network).
    pub fn needs_store(&self) -> bool {
        self.stores().next().is_some()
    }

    /// Reads the first available of its sources that need no store; for planning, which has no stores.
    pub fn read(&self) -> Result<String, String> {
        let mut passed = Vec::new();
        for source in &self.0 {
            match source.read_local() {
                Ok(value) => return Ok(value),
                Err(e) if e.unavailable || source.needs_store() => passed.push(format!("{source}: {}", e.message)),
                Err(e) => return Err(e.message),
            }
        }
        Err(passed.join("; "))
    }
}

impl From<SecretSource> for SecretFrom {
    fn from(source: SecretSource) -> Self {
        Self(vec![source])
    }
}

impl fmt::Display for SecretFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&texts.join(", else "))
    }
}

impl Serialize for SecretFrom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(serializer),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SecretFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(SecretSource),
            Many(Vec<SecretSource>),
        }
        match Written::deserialize(deserializer)? {
            Written::One(one) => Ok(one.into()),
            Written::Many(many) => Self::chain(many).map_err(serde::de::Error::custom),
        }
    }
}

/// How long the host waits for a secret store, and how often it asks: `secret_stores.<store>.timeout`
/// and `.attempts` in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patience {
    /// Longest one request may take, in milliseconds (default 10 s: a store that has not answered
    /// by then is hung, and the next attempt or the next source in the chain is asked).
    #[serde(default = "Patience::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests made while the store is unreachable, times out or answers 5xx or 429 (default 3).
    #[serde(default = "Patience::default_attempts")]
    pub attempts: u32,
}

impl Patience {
    fn default_timeout_ms() -> u64 {
        10_000
    }

    fn default_attempts() -> u32 {
        3
    }

    /// Most attempts a pipeline may ask for.
    pub const MAX_ATTEMPTS: u32 = 10;

    /// One request's timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Patience {
    fn default() -> Self {
        Self { timeout_ms: Self::default_timeout_ms(), attempts: Self::default_attempts() }
    }
}

/// The value of a secret, and which of its sources gave it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The value.
    pub value: String,
    /// The source that answered.
    pub source: SecretSource,
    /// Sources asked first that were unavailable, each with why.
    pub passed_over: Vec<String>,
}

/// Reads secrets from their sources for one run: one HTTP client per store, one Vault login.
pub struct Reader<'a> {
    stores: &'a SecretStores,
    aws_http: tokio::sync::OnceCell<reqwest::Client>,
    vault: vault::Session,
}

impl<'a> Reader<'a> {
    /// A reader of sources under `stores`; nothing is connected until a source needs it.
    pub fn new(stores: &'a SecretStores) -> Self {
        Self { stores, aws_http: tokio::sync::OnceCell::new(), vault: vault::Session::default() }
    }

    /// The first available source's value. A source that refuses ends the chain: a later one is
    /// for when this one cannot be asked, not for a secret it says does not exist. Errors name
    /// each source asked.
    pub async fn read(&self, from: &SecretFrom) -> Result<Answer, String> {
        let mut passed_over = Vec::new();
        for source in from.sources() {
            match self.read_one(source).await {
                Ok(value) => return Ok(Answer { value, source: source.clone(), passed_over }),
                Err(e) if e.unavailable => passed_over.push(format!("{source}: {}", e.message)),
                Err(e) => {
                    let rest = from.sources().len() - passed_over.len() - 1;
                    let note = match rest {
                        0 => String::new(),
                        n => format!(
                            " (an answer that refuses ends the chain: {n} later source{} for when this one is unavailable)",
                            if n == 1 { " is" } else { "s are" }
                        ),
                    };
                    passed_over.push(format!("{source}: {}{note}", e.message));
                    return Err(asked(&passed_over));
                }
            }
        }
        Err(asked(&passed_over))
    }

    async fn read_one(&self, source: &SecretSource) -> Result<String, SourceError> {
        let missing = |store: Store| SourceError::refused(format!("no `{}` in the pipeline", store.field()));
        match source {
            SecretSource::AwsSm { id, key } => {
                let store = self.stores.aws.as_ref().ok_or_else(|| missing(Store::Aws))?;
                let http = self
                    .aws_http
                    .get_or_try_init(|| async { reqwest::Client::builder().build() })
                    .await
                    .map_err(|e| SourceError::refused(format!("no HTTP client: {e}")))?;
                let value = store.get_secret_value(id, http).await?;
                match key {
                    None => Ok(value),
                    Some(key) => json_key(&value, key).map_err(SourceError::refused),
                }
            }
            SecretSource::Vault { path, key } => {
                let store = self.stores.vault.as_ref().ok_or_else(|| missing(Store::Vault))?;
                self.vault.read(store, path, key.as_deref()).await
            }
            local => {
                let local = local.clone();
                tokio::task::spawn_blocking(move || local.read_local())
                    .await
                    .map_err(|e| SourceError::refused(e.to_string()))?
            }
        }
    }
}

/// Each source asked and its answer: one on the line, several on lines of their own, since two
/// stores that are both down say much the same.
fn asked(answers: &[String]) -> String {
    match answers {
        [one] => one.clone(),
        many => format!("its sources, asked in order:\n  {}", many.join("\n  ")),
    }
}

/// Sends a request to a secret store, again after a pause while it is unreachable or answers 5xx
/// or 429: a flaky store should not stop a deploy that has not touched anything yet. `what` names
/// the call in errors; a 5xx or transport failure on the last attempt is `unavailable`.
pub(super) async fn send(
    what: &str,
    patience: Patience,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, String), SourceError> {
    let mut last = String::new();
    let attempts = patience.attempts.max(1);
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
        }
        let response = match request().timeout(patience.timeout()).send().await {
            Ok(r) => r,
            Err(e) => {
                // The caller's `what` names the store; the URL would say it twice.
                last = format!("{what}: {}", error_chain(&e.without_url()));
                continue;
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            last = format!("{what} answered {status}{}", store_said(&text));
            continue;
        }
        return Ok((status, text));
    }
    let each = humantime::format_duration(patience.timeout());
    Err(SourceError::unavailable(format!("{last} ({attempts} attempts of up to {each})")))
}

/// What a store's error body says, shortly: AWS's `__type`/`message`, Vault's `errors`.
pub(super) fn store_said(text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if let Some(errors) = v.get("errors").and_then(|e| e.as_array()) {
        // Vault's own errors are multi-line lists ("1 error occurred:\n\t* permission denied").
        let said: Vec<String> = errors
            .iter()
            .filter_map(|e| e.as_str())
            .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        return match said.is_empty() {
            true => String::new(),
            false => format!(": {}", said.join("; ")),
        };
    }
    match v.get("__type").is_some() {
        true => format!(": {}", aws_error(text)),
        false => String::new(),
    }
}

/// The secret stores a pipeline configures (`secret_stores:`), recorded in the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretStores {
    /// AWS Secrets Manager, for `aws-sm:` sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSecretStore>,
    /// HashiCorp Vault, for `vault:` sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultStore>,
}

impl SecretStores {
    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.aws.is_none() && self.vault.is_none()
    }
}

/// AWS Secrets Manager: where, and the credentials the host signs with (themselves from other sources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsSecretStore {
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// The service's origin; `https://secretsmanager.<region>.amazonaws.com` by default.
    pub endpoint: String,
    /// The access key id's source.
    pub access_key_id: SecretSource,
    /// The secret access key's source.
    pub secret_access_key: SecretSource,
    /// A session token's source, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<SecretSource>,
    /// An `aws-credentials:` source instead of the three above: the AWS SDK's chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretSource>,
    /// How long it is waited for, and how often asked.
    #[serde(default)]
    pub patience: Patience,
}

impl AwsSecretStore {
    /// The default endpoint of `region`.
    pub fn default_endpoint(region: &str) -> String {
        format!("https://secretsmanager.{region}.amazonaws.com")
    }

    /// `GetSecretValue` of `id`: its `SecretString`.
    async fn get_secret_value(&self, id: &str, http: &reqwest::Client) -> Result<String, SourceError> {
        let credential = |source: &SecretSource, what: &str| {
            source
                .read()
                .map_err(|e| SourceError::refused(format!("the {what} for AWS Secrets Manager ({source}): {e}")))
        };
        let (access_key_id, secret_access_key, session_token) = match &self.credentials {
            Some(SecretSource::AwsCredentials(spec)) => {
                let set = aws_credentials::AwsCredentials::read("secret_stores.aws", spec)
                    .await
                    .map_err(|e| SourceError::refused(e.to_string()))?;
                let keys = set.current("").await.map_err(|e| SourceError::refused(e.to_string()))?;
                (keys.access_key_id, keys.secret_access_key, keys.session_token)
            }
            _ => (
                credential(&self.access_key_id, "access key id")?,
                credential(&self.secret_access_key, "secret access key")?,
                self.session_token.as_ref().map(|s| credential(s, "session token")).transpose()?,
            ),
        };
        let url = url::Url::parse(&self.endpoint)
            .map_err(|e| SourceError::refused(format!("endpoint {}: {e}", self.endpoint)))?;
        let body = serde_json::json!({ "SecretId": id }).to_string();
        let headers = vec![
            ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
            ("x-amz-target".to_string(), "secretsmanager.GetSecretValue".to_string()),
        ];
        let creds = sigv4::Credentials {
            service: "secretsmanager",
            region: &self.region,
            access_key_id: &access_key_id,
            secret_access_key: &secret_access_key,
            session_token: session_token.as_deref(),
        };
        let (status, text) = send("GetSecretValue", self.patience, || {
            let signed = sigv4::sign(&creds, "POST", &url, &headers, body.as_bytes(), SystemTime::now());
            let mut request = http.post(url.clone()).body(body.clone());
            for (name, value) in headers.iter().chain(&signed) {
                request = request.header(name, value);
            }
            request
        })
        .await?;
        if !status.is_success() {
            return Err(SourceError::refused(format!("GetSecretValue answered {status}{}", store_said(&text))));
        }
        let answer: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| SourceError::refused(format!("GetSecretValue answered no JSON: {e}")))?;
        match answer.get("SecretString").and_then(|v| v.as_str()) {
            Some(value) => Ok(value.to_string()),
            None => Err(SourceError::refused("the secret has no SecretString (binary secrets are not supported)")),
        }
    }
}

/// `__type` and message of an AWS JSON error, never the request.
fn aws_error(text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let kind = v.get("__type").and_then(|t| t.as_str()).unwrap_or("error");
    let message = v.get("message").or_else(|| v.get("Message")).and_then(|m| m.as_str()).unwrap_or("");
    format!("{}{}{message}", kind.rsplit('#').next().unwrap_or(kind), if message.is_empty() { "" } else { ": " })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// One key of a JSON object given as text; strings as they are, other values as JSON.
fn json_key(value: &str, key: &str) -> Result<String, String> {
    let object: serde_json::Value =
        serde_json::from_str(value).map_err(|_| format!("`#{key}` asks for a key, but the secret is not JSON"))?;
    match object.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Null) | None => Err(format!("the secret's JSON has no key `{key}`")),
        Some(other) => Ok(other.to_string()),
    }
}

/// A command line split as a POSIX shell would, without running one.
fn argv(command: &str) -> Result<Vec<String>, String> {
    match shlex::split(command) {
        Some(argv) if !argv.is_empty() => Ok(argv),
        Some(_) => Err("`exec:` needs a command".into()),
        None => Err(format!("`exec:{command}`: unbalanced quotes")),
    }
}

/// Runs `command` without a shell; its stdout less the trailing newline is the value. Its stderr is
/// only shown when it fails, and then with the value (if any) redacted. Errors do not repeat the
/// command: the caller names the source, `exec:COMMAND`, in front of them.
fn exec(command: &str, timeout: Duration) -> Result<String, SourceError> {
    let argv = argv(command).map_err(SourceError::refused)?;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SourceError::unavailable(format!("cannot start it: {e}")))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(OUTPUT_CAP).read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let waited = humantime::format_duration(timeout);
                return Err(SourceError::unavailable(format!("it did not finish within {waited}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(SourceError::refused(format!("waiting for it: {e}"))),
        }
    };
    let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    let value = out.trim_end_matches(['\n', '\r']).to_string();
    if !status.success() {
        let said = Redactor::new([value.as_str()].into_iter().filter(|v| !v.is_empty())).redact(err.trim());
        let said: String = said.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(SourceError::refused(format!(
            "it failed ({status}){}{said}",
            if said.is_empty() { "" } else { ": " }
        )));
    }
    if value.is_empty() {
        return Err(SourceError::refused(format!("`{}` printed nothing", argv[0])));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print_as_written() {
        for text in [
            "env:TOKEN",
            "file:/run/secrets/t",
            "exec:vault kv get -field=password secret/db",
            "aws-sm:prod/db#password",
            "aws-sm:arn:aws:secretsmanager:eu-west-1:1:secret:x",
            "vault:secret/data/app#password",
            "vault:kv/data/prod/db",
        ] {
            assert_eq!(SecretSource::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            SecretSource::parse("aws-sm:arn:aws:secretsmanager:eu-west-1:1:secret:x#k").unwrap(),
            SecretSource::AwsSm { id: "arn:aws:secretsmanager:eu-west-1:1:secret:x".into(), key: Some("k".into()) }
        );
        for bad in ["env:", "exec:", "exec:echo 'open", "aws-sm:", "aws-sm:x#", "vault:x", "vault:secret/app", "TOKEN"]
        {
            assert!(SecretSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_runs_without_a_shell_and_redacts_its_stderr() {
        let exec = |command: &str, timeout| exec(command, timeout).map_err(|e| e.message);
        assert_eq!(exec("printf 's3cr3t value\\n'", EXEC_TIMEOUT).unwrap(), "s3cr3t value");
        // No shell: `;` and `$HOME` are arguments, not syntax.
        assert_eq!(exec("echo a; echo $HOME", EXEC_TIMEOUT).unwrap(), "a; echo $HOME");
        let failed = exec("sh -c 'echo hunter2; echo \"denied for hunter2\" >&2; exit 3'", EXEC_TIMEOUT).unwrap_err();
        assert!(failed.contains("exit status: 3") && failed.contains("denied for ***"), "{failed}");
        assert!(!failed.contains("hunter2"), "{failed}");
        assert!(exec("true", EXEC_TIMEOUT).unwrap_err().contains("printed nothing"));
        assert!(exec("/no/such/helper", EXEC_TIMEOUT).unwrap_err().contains("cannot start it: "));
        let started = Instant::now();
        let slow = exec("sleep 5", Duration::from_millis(200)).unwrap_err();
        assert!(slow.contains("did not finish within 200ms"), "{slow}");
        assert!(started.elapsed() < Duration::from_secs(3), "killed at its timeout");
    }

    #[test]
    fn a_chain_is_written_as_one_source_or_a_list_and_the_first_available_answers() {
        let one: SecretFrom = serde_json::from_value(serde_json::json!("env:A")).unwrap();
        assert_eq!(serde_json::to_value(&one).unwrap(), serde_json::json!("env:A"), "an older plan's form");
        let chain: SecretFrom = serde_json::from_value(serde_json::json!(["env:A", "vault:kv/data/a#k"])).unwrap();
        assert_eq!(serde_json::to_value(&chain).unwrap(), serde_json::json!(["env:A", "vault:kv/data/a#k"]));
        assert_eq!(chain.to_string(), "env:A, else vault:kv/data/a#k");
        assert!(serde_json::from_value::<SecretFrom>(serde_json::json!([])).is_err());

        std::env::set_var("GANTRY_CHAIN_SECOND", "second-value");
        let stores = SecretStores::default();
        let reader = Reader::new(&stores);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let from = |texts: &[&str]| {
            SecretFrom::chain(texts.iter().map(|t| SecretSource::parse(t).unwrap()).collect()).unwrap()
        };
        // An unset variable and a missing file are unavailable: the chain goes on, and says why.
        let answer = runtime
            .block_on(reader.read(&from(&["env:GANTRY_CHAIN_UNSET", "file:/no/such/file", "env:GANTRY_CHAIN_SECOND"])))
            .unwrap();
        assert_eq!(
            (answer.value.as_str(), answer.source.to_string().as_str()),
            ("second-value", "env:GANTRY_CHAIN_SECOND")
        );
        assert_eq!(answer.passed_over.len(), 2, "{:?}", answer.passed_over);
        assert!(
            answer.passed_over[0].starts_with("env:GANTRY_CHAIN_UNSET: environment variable"),
            "{:?}",
            answer.passed_over
        );
        // A helper that answers "no" ends the chain: the next source is not asked.
        let refused = runtime.block_on(reader.read(&from(&["exec:false", "env:GANTRY_CHAIN_SECOND"]))).unwrap_err();
        assert!(refused.starts_with("exec:false: it failed (exit status: 1)"), "{refused}");
        assert!(refused.contains("ends the chain: 1 later source is for when this one is unavailable"), "{refused}");
        // Every source unavailable: each is named with its reason.
        let none =
            runtime.block_on(reader.read(&from(&["env:GANTRY_CHAIN_UNSET", "exec:/no/such/helper"]))).unwrap_err();
        assert!(
            none.starts_with("its sources, asked in order:\n  env:GANTRY_CHAIN_UNSET: ")
                && none.contains("\n  exec:/no/such/helper: cannot start it"),
            "{none}"
        );
        // A store source without its store is a refusal, not a silent skip.
        let storeless =
            runtime.block_on(reader.read(&from(&["vault:kv/data/a#k", "env:GANTRY_CHAIN_SECOND"]))).unwrap_err();
        assert!(storeless.contains("no `secret_stores.vault` in the pipeline"), "{storeless}");
    }

    #[test]
    fn a_json_key_is_picked_from_the_secret() {
        let value = r#"{"username":"app","password":"pw","port":5432}"#;
        assert_eq!(json_key(value, "password").unwrap(), "pw");
        assert_eq!(json_key(value, "port").unwrap(), "5432");
        assert!(json_key(value, "host").unwrap_err().contains("no key `host`"));
        assert!(json_key("plain", "k").unwrap_err().contains("not JSON"));
    }
}
