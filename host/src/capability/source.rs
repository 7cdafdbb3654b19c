//! Where secret values come from: the process environment, a file, a command
//! (`vault kv get -field=…`, `op read`, `pass`, a credential helper) or AWS
//! Secrets Manager, signed by the host. The reference format is written here
//! only; values are read on the host, once per run, and never logged.

use super::sigv4;
use super::Redactor;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// How long an `exec:` command may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one Secrets Manager request may take.
const AWS_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes kept of a command's output.
const OUTPUT_CAP: u64 = 1 << 20;

/// Where a secret's value is read from; never the value itself. Serialised as written
/// (`env:NAME`, `file:PATH`, `exec:COMMAND`, `aws-sm:ID[#KEY]`).
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
}

impl SecretSource {
    /// Parses `env:NAME`, `file:PATH`, `exec:COMMAND` or `aws-sm:ID[#KEY]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "secret source `{text}` must be `env:NAME`, `file:PATH`, `exec:COMMAND` or `aws-sm:SECRET_ID[#KEY]`"
            )
        };
        match text.split_once(':') {
            Some(("env", var)) if !var.is_empty() => Ok(Self::Env(var.to_string())),
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.into())),
            Some(("exec", command)) => {
                argv(command)?;
                Ok(Self::Exec(command.to_string()))
            }
            Some(("aws-sm", rest)) => {
                let (id, key) = match rest.split_once('#') {
                    Some((id, key)) => (id, Some(key)),
                    None => (rest, None),
                };
                if id.is_empty() || key.is_some_and(str::is_empty) {
                    return Err(invalid());
                }
                Ok(Self::AwsSm { id: id.to_string(), key: key.map(str::to_string) })
            }
            _ => Err(invalid()),
        }
    }

    /// Whether reading it needs a secret store's configuration (and the network).
    pub fn needs_store(&self) -> bool {
        matches!(self, Self::AwsSm { .. })
    }

    /// Reads a value that needs no secret store: `env:`, `file:`, `exec:`.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Env(var) => std::env::var(var).map_err(|_| format!("environment variable {var} is not set")),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end().to_string())
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            Self::Exec(command) => exec(command, EXEC_TIMEOUT),
            Self::AwsSm { .. } => {
                Err("aws-sm: sources are read by runs, with the pipeline's `secret_stores.aws`".into())
            }
        }
    }

    /// Reads the value, from a secret store (over `http`) when the source names one.
    pub async fn fetch(&self, stores: &SecretStores, http: Option<&reqwest::Client>) -> Result<String, String> {
        match self {
            Self::AwsSm { id, key } => {
                let store = stores.aws.as_ref().ok_or("no `secret_stores.aws` in the pipeline")?;
                let http = http.ok_or("no HTTP client was given for the secret store")?;
                let value = store.get_secret_value(id, http).await?;
                match key {
                    None => Ok(value),
                    Some(key) => json_key(&value, key),
                }
            }
            other => {
                let other = other.clone();
                tokio::task::spawn_blocking(move || other.read()).await.map_err(|e| e.to_string())?
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
        }
    }
}

serde_as_text!(SecretSource, String);

/// The secret stores a pipeline configures (`secret_stores:`), recorded in the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretStores {
    /// AWS Secrets Manager, for `aws-sm:` sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSecretStore>,
}

impl SecretStores {
    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.aws.is_none()
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
}

impl AwsSecretStore {
    /// The default endpoint of `region`.
    pub fn default_endpoint(region: &str) -> String {
        format!("https://secretsmanager.{region}.amazonaws.com")
    }

    /// `GetSecretValue` of `id`: its `SecretString`.
    async fn get_secret_value(&self, id: &str, http: &reqwest::Client) -> Result<String, String> {
        let credential = |source: &SecretSource, what: &str| {
            source.read().map_err(|e| format!("the {what} for AWS Secrets Manager ({source}): {e}"))
        };
        let access_key_id = credential(&self.access_key_id, "access key id")?;
        let secret_access_key = credential(&self.secret_access_key, "secret access key")?;
        let session_token = self.session_token.as_ref().map(|s| credential(s, "session token")).transpose()?;
        let url = url::Url::parse(&self.endpoint).map_err(|e| format!("endpoint {}: {e}", self.endpoint))?;
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
        let mut last = String::new();
        // Transport errors and 5xx are retried: a flaky endpoint should not stop a deploy it has not touched yet.
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let signed = sigv4::sign(&creds, "POST", &url, &headers, body.as_bytes(), SystemTime::now());
            let mut request = http.post(url.clone()).timeout(AWS_TIMEOUT).body(body.clone());
            for (name, value) in headers.iter().chain(&signed) {
                request = request.header(name, value);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{}: {}", self.endpoint, error_chain(&e));
                    continue;
                }
            };
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if status.is_server_error() {
                last = format!("GetSecretValue answered {status}: {}", aws_error(&text));
                continue;
            }
            if !status.is_success() {
                return Err(format!("GetSecretValue answered {status}: {}", aws_error(&text)));
            }
            let answer: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("GetSecretValue answered no JSON: {e}"))?;
            return match answer.get("SecretString").and_then(|v| v.as_str()) {
                Some(value) => Ok(value.to_string()),
                None => Err("the secret has no SecretString (binary secrets are not supported)".into()),
            };
        }
        Err(format!("{last} (3 attempts)"))
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
fn exec(command: &str, timeout: Duration) -> Result<String, String> {
    let argv = argv(command)?;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
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
                return Err(format!("it did not finish within {}", humantime::format_duration(timeout)));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    let value = out.trim_end_matches(['\n', '\r']).to_string();
    if !status.success() {
        let said = Redactor::new([value.as_str()].into_iter().filter(|v| !v.is_empty())).redact(err.trim());
        let said: String = said.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("it failed ({status}){}{said}", if said.is_empty() { "" } else { ": " }));
    }
    if value.is_empty() {
        return Err(format!("`{}` printed nothing", argv[0]));
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
        ] {
            assert_eq!(SecretSource::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            SecretSource::parse("aws-sm:arn:aws:secretsmanager:eu-west-1:1:secret:x#k").unwrap(),
            SecretSource::AwsSm { id: "arn:aws:secretsmanager:eu-west-1:1:secret:x".into(), key: Some("k".into()) }
        );
        for bad in ["env:", "exec:", "exec:echo 'open", "aws-sm:", "aws-sm:x#", "vault:x", "TOKEN"] {
            assert!(SecretSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_runs_without_a_shell_and_redacts_its_stderr() {
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
    fn a_json_key_is_picked_from_the_secret() {
        let value = r#"{"username":"app","password":"pw","port":5432}"#;
        assert_eq!(json_key(value, "password").unwrap(), "pw");
        assert_eq!(json_key(value, "port").unwrap(), "5432");
        assert!(json_key(value, "host").unwrap_err().contains("no key `host`"));
        assert!(json_key("plain", "k").unwrap_err().contains("not JSON"));
    }
}
