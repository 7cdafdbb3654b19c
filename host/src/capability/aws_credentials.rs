//! AWS credentials as the AWS SDKs find them: the SDK for Rust's own default chain (environment,
//! shared config and credentials profiles, web identity token file, ECS container credentials,
//! IMDSv2, `credential_process`), optionally an STS role assumed with them. The host holds them,
//! signs with them at send time and renews temporary ones ahead of their expiry, so a canary that
//! outlives a one-hour session token still signs its rollback. Plugins never see a value.

use super::Redactor;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The source's prefix: `aws-credentials:` alone is the default chain.
pub const PREFIX: &str = "aws-credentials";

/// Temporary credentials are renewed when this much of their life is left, or a quarter of the life
/// they had when read, whichever is less (the AWS SDKs renew five minutes ahead).
pub const RENEW_AHEAD: Duration = Duration::from_secs(300);

/// How long one call of a credential provider (STS, the ECS or instance metadata endpoint) may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a credential set comes from, as written after `aws-credentials:`: comma-separated
/// `profile=NAME`, `role=ARN`, `duration=SECONDS`; nothing for the default chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsCredentialSpec {
    /// A named profile of the shared config and credentials files instead of `AWS_PROFILE`/`default`.
    pub profile: Option<String>,
    /// A role assumed (STS `AssumeRole`) with the chain's credentials.
    pub role: Option<String>,
    /// The assumed role's session length (`DurationSeconds`); STS's default (one hour) when left out.
    pub duration: Option<Duration>,
}

impl AwsCredentialSpec {
    /// Parses what follows `aws-credentials:`.
    pub fn parse(options: &str) -> Result<Self, String> {
        let mut spec = Self::default();
        for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let Some((key, value)) = option.split_once('=').filter(|(_, v)| !v.is_empty()) else {
                return Err(format!("`{option}` in `{PREFIX}:{options}` must be KEY=VALUE (profile, role or duration)"));
            };
            match key {
                "profile" => spec.profile = Some(value.to_string()),
                "role" if value.starts_with("arn:") && value.contains(":role/") => spec.role = Some(value.to_string()),
                "role" => return Err(format!("role `{value}` is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)")),
                "duration" => match value.trim_end_matches('s').parse::<u64>() {
                    Ok(s) if s > 0 => spec.duration = Some(Duration::from_secs(s)),
                    _ => return Err(format!("duration `{value}` must be a whole number of seconds")),
                },
                other => {
                    return Err(format!("unknown option `{other}` in `{PREFIX}:{options}`: profile, role or duration"))
                }
            }
        }
        if spec.duration.is_some() && spec.role.is_none() {
            return Err(format!(
                "`{PREFIX}:{options}`: duration is the assumed role's session length; give a role too"
            ));
        }
        Ok(spec)
    }
}

impl fmt::Display for AwsCredentialSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut options = Vec::new();
        options.extend(self.profile.as_ref().map(|p| format!("profile={p}")));
        options.extend(self.role.as_ref().map(|r| format!("role={r}")));
        options.extend(self.duration.map(|d| format!("duration={}", d.as_secs())));
        write!(f, "{PREFIX}:{}", options.join(","))
    }
}

/// A credential set could not be read or renewed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("AWS credentials `{name}` ({spec}): {message}")]
pub struct CredentialError {
    name: String,
    spec: String,
    message: String,
}

/// The keys a request is signed with at one moment; never shown.
#[derive(Clone)]
pub struct Keys {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(***)")
    }
}

/// What the journal learns of a read or a renewal: when, which provider, until when. Never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The secret's name in the pipeline.
    pub name: String,
    /// The provider of the chain that answered (`Environment`, `WebIdentityToken`, `EcsContainer`,
    /// `Ec2InstanceMetadata`, `Profile`, `AssumeRoleProvider`, …).
    pub provider: String,
    /// When they expire; `None` for long-term keys.
    pub expires: Option<SystemTime>,
    /// The step whose request found them due, or `None` when read before the first step.
    pub step: Option<String>,
}

/// Called with every renewal, as it happens.
pub type Observer = Arc<dyn Fn(&Renewal) + Send + Sync>;

/// A credential set held for a run: read once before the first step, renewed ahead of expiry.
pub struct AwsCredentials {
    name: String,
    spec: AwsCredentialSpec,
    chain: Chain,
    held: tokio::sync::Mutex<Held>,
    /// The run's redactor: each renewed value is added to it before it signs anything.
    redactor: Mutex<Option<Redactor>>,
    observer: Mutex<Option<Observer>>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AwsCredentials({} from {})", self.name, self.spec)
    }
}

/// The keys in hand and when to renew them.
struct Held {
    keys: Keys,
    provider: String,
    expires: Option<SystemTime>,
    renew_at: Option<SystemTime>,
}

impl AwsCredentials {
    /// Builds the chain `spec` names and reads the first credentials; an empty chain is an error
    /// that names every provider it asked.
    pub async fn read(name: &str, spec: &AwsCredentialSpec) -> Result<Arc<Self>, CredentialError> {
        let fail = |message: String| CredentialError { name: name.into(), spec: spec.to_string(), message };
        let chain = Chain::new(spec).await.map_err(fail)?;
        let fresh = fetch(&chain).await.map_err(fail)?;
        let this = Self {
            name: name.to_string(),
            spec: spec.clone(),
            chain,
            held: tokio::sync::Mutex::new(fresh),
            redactor: Mutex::new(None),
            observer: Mutex::new(None),
        };
        Ok(Arc::new(this))
    }

    /// A set holding `keys` until `expires`, with no provider to renew them from.
    #[cfg(test)]
    pub(crate) fn for_test(name: &str, keys: Keys, expires: Option<SystemTime>) -> Arc<Self> {
        let held = Held { keys, provider: "test".into(), expires, renew_at: expires };
        Arc::new(Self {
            name: name.into(),
            spec: AwsCredentialSpec::default(),
            chain: Chain::Default(Vec::new()),
            held: tokio::sync::Mutex::new(held),
            redactor: Mutex::new(None),
            observer: Mutex::new(None),
        })
    }

    /// The secret's name in the pipeline.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds the values held now, and every renewed one, to `redactor` (shared by the run).
    pub fn redact_into(&self, redactor: &Redactor) {
        if let Ok(held) = self.held.try_lock() {
            learn(redactor, &held.keys);
        }
        *self.redactor.lock().unwrap_or_else(|e| e.into_inner()) = Some(redactor.clone());
    }

    /// Calls `observer` with every renewal from now on.
    pub fn observe(&self, observer: Observer) {
        *self.observer.lock().unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    /// What the journal records of the credentials held now.
    pub async fn held(&self) -> Renewal {
        let held = self.held.lock().await;
        Renewal { name: self.name.clone(), provider: held.provider.clone(), expires: held.expires, step: None }
    }

    /// The keys to sign with now: those held, or new ones when they are due. A renewal that fails
    /// while the held keys are still valid keeps them (and warns); past their expiry it is an error.
    pub async fn current(&self, step: &str) -> Result<Keys, CredentialError> {
        let mut held = self.held.lock().await;
        let now = SystemTime::now();
        if held.renew_at.is_none_or(|at| now < at) {
            return Ok(held.keys.clone());
        }
        match fetch(&self.chain).await {
            Ok(fresh) => {
                if let Some(redactor) = &*self.redactor.lock().unwrap_or_else(|e| e.into_inner()) {
                    learn(redactor, &fresh.keys);
                }
                *held = fresh;
                let renewal = Renewal {
                    name: self.name.clone(),
                    provider: held.provider.clone(),
                    expires: held.expires,
                    step: Some(step.to_string()),
                };
                if let Some(observer) = &*self.observer.lock().unwrap_or_else(|e| e.into_inner()) {
                    observer(&renewal);
                }
                Ok(held.keys.clone())
            }
            Err(message) if held.expires.is_some_and(|e| now < e) => {
                tracing::warn!("AWS credentials `{}`: renewal failed, signing with the held ones until they expire: {message}", self.name);
                Ok(held.keys.clone())
            }
            Err(message) => Err(CredentialError {
                name: self.name.clone(),
                spec: self.spec.to_string(),
                message: format!("expired and could not be renewed: {message}"),
            }),
        }
    }
}

/// Adds every part of `keys` to the redactor.
fn learn(redactor: &Redactor, keys: &Keys) {
    for value in [Some(&keys.access_key_id), Some(&keys.secret_access_key), keys.session_token.as_ref()].into_iter().flatten() {
        redactor.learn(value);
    }
}

/// Asks the chain once.
async fn fetch(chain: &Chain) -> Result<Held, String> {
    let (credentials, provider) = chain.provide().await?;
    let expires = credentials.expiry();
    let renew_at = expires.map(|at| {
        let life = at.duration_since(SystemTime::now()).unwrap_or_default();
        at - RENEW_AHEAD.min(life / 4)
    });
    Ok(Held {
        keys: Keys {
            access_key_id: credentials.access_key_id().to_string(),
            secret_access_key: credentials.secret_access_key().to_string(),
            session_token: credentials.session_token().map(str::to_string),
        },
        provider: provider.to_string(),
        expires,
        renew_at,
    })
}

/// An error with its causes, as one line.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// The AWS SDK's providers in the order of its default chain, each named, or a role assumed with
/// their credentials.
enum Chain {
    /// The first provider that has credentials answers; one that has them but fails ends the chain.
    Default(Vec<(&'static str, SharedCredentialsProvider)>),
    /// STS `AssumeRole` with the default chain's credentials.
    Role(SharedCredentialsProvider),
}

impl Chain {
    /// The SDK's default chain as `DefaultCredentialsChain` builds it (environment, profile, web
    /// identity, ECS, IMDSv2), with its providers named, since the journal records which answered.
    async fn new(spec: &AwsCredentialSpec) -> Result<Self, String> {
        use aws_config::{
            ecs::EcsCredentialsProvider, environment::EnvironmentVariableCredentialsProvider,
            imds::credentials::ImdsCredentialsProvider, meta::region::RegionProviderChain,
            profile::ProfileFileCredentialsProvider, provider_config::ProviderConfig,
            web_identity_token::WebIdentityTokenCredentialsProvider,
        };
        let http = Reqwest::new()?;
        let conf = ProviderConfig::without_region().with_http_client(http.clone());
        // The region STS is asked in: the SDK's region chain (environment, profile, IMDS), else us-east-1.
        let mut profile_region = aws_config::profile::region::ProfileFileRegionProvider::builder().configure(&conf);
        if let Some(name) = &spec.profile {
            profile_region = profile_region.profile_name(name);
        }
        let imds_region = aws_config::imds::region::ImdsRegionProvider::builder().configure(&conf).build();
        let region = RegionProviderChain::first_try(aws_config::environment::region::EnvironmentVariableRegionProvider::new())
            .or_else(profile_region.build())
            .or_else(imds_region)
            .or_else("us-east-1")
            .region()
            .await;
        let conf = conf.with_region(region.clone());
        let mut profile = ProfileFileCredentialsProvider::builder().configure(&conf);
        if let Some(name) = &spec.profile {
            profile = profile.profile_name(name);
        }
        let chain = vec![
            ("Environment", shared(EnvironmentVariableCredentialsProvider::new())),
            ("Profile", shared(profile.build())),
            ("WebIdentityToken", shared(WebIdentityTokenCredentialsProvider::builder().configure(&conf).build())),
            ("EcsContainer", shared(EcsCredentialsProvider::builder().configure(&conf).build())),
            ("Ec2InstanceMetadata", shared(ImdsCredentialsProvider::builder().configure(&conf).build())),
        ];
        let Some(role) = &spec.role else { return Ok(Self::Default(chain)) };
        let base = Self::Default(chain);
        // The STS client's configuration as the SDK loads it (AWS_ENDPOINT_URL_STS, FIPS, …).
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(region)
            .credentials_provider(shared(Self::Default(Vec::new())))
            .load()
            .await;
        let mut assume = aws_config::sts::AssumeRoleProvider::builder(role).session_name("gantry").configure(&config);
        if let Some(duration) = spec.duration {
            assume = assume.session_length(duration);
        }
        Ok(Self::Role(shared(assume.build_from_provider(base).await)))
    }

    /// Credentials and the name of the provider that gave them.
    async fn provide(&self) -> Result<(aws_credential_types::Credentials, &'static str), String> {
        use aws_credential_types::provider::error::CredentialsError;
        match self {
            Self::Role(role) => {
                role.provide_credentials().await.map(|c| (c, "AssumeRole")).map_err(|e| describe(&e))
            }
            Self::Default(chain) => {
                let mut asked = Vec::new();
                for (name, provider) in chain {
                    match provider.provide_credentials().await {
                        Ok(credentials) => return Ok((credentials, name)),
                        Err(CredentialsError::CredentialsNotLoaded(_)) => asked.push(*name),
                        Err(e) => return Err(format!("{name}: {}", describe(&e))),
                    }
                }
                Err(format!(
                    "no provider of the AWS SDK's default chain has credentials (asked {}); on CI, grant the job an \
                     OIDC role (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE)",
                    asked.join(", ")
                ))
            }
        }
    }
}

/// One provider, shared.
fn shared(provider: impl ProvideCredentials + 'static) -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(provider)
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default(chain) => write!(f, "Chain({:?})", chain.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
            Self::Role(_) => f.write_str("Chain(AssumeRole)"),
        }
    }
}

impl ProvideCredentials for Chain {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            self.provide().await.map(|(c, _)| c).map_err(aws_credential_types::provider::error::CredentialsError::provider_error)
        })
    }
}

/// The providers' HTTP client: the host's reqwest (one TLS stack), with a timeout per call.
#[derive(Debug, Clone)]
struct Reqwest(reqwest::Client);

impl Reqwest {
    fn new() -> Result<Self, String> {
        reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .connect_timeout(PROVIDER_TIMEOUT / 5)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map(Self)
            .map_err(|e| format!("no HTTP client: {e}"))
    }
}

impl HttpConnector for Reqwest {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.0.clone();
        HttpConnectorFuture::new(async move {
            let io = |e: Box<dyn std::error::Error + Send + Sync>| ConnectorError::io(e);
            let method = reqwest::Method::from_bytes(request.method().as_bytes()).map_err(|e| io(e.into()))?;
            let mut outgoing = client.request(method, request.uri());
            for (name, value) in request.headers() {
                outgoing = outgoing.header(name, value);
            }
            let body = request.body().bytes().unwrap_or_default().to_vec();
            let answer = outgoing.body(body).send().await.map_err(|e| {
                if e.is_timeout() {
                    ConnectorError::timeout(e.into())
                } else {
                    io(e.into())
                }
            })?;
            let status = StatusCode::try_from(answer.status().as_u16()).map_err(|e| io(e.into()))?;
            let headers = answer.headers().clone();
            let bytes = answer.bytes().await.map_err(|e| io(e.into()))?;
            let mut response = Response::new(status, SdkBody::from(bytes));
            for (name, value) in &headers {
                if let Ok(value) = value.to_str() {
                    response.headers_mut().append(name.as_str().to_string(), value.to_string());
                }
            }
            Ok(response)
        })
    }
}

impl HttpClient for Reqwest {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_parse_and_print_as_written() {
        assert_eq!(AwsCredentialSpec::parse("").unwrap(), AwsCredentialSpec::default());
        let spec = AwsCredentialSpec::parse("profile=ci, role=arn:aws:iam::123456789012:role/deploy,duration=900").unwrap();
        assert_eq!(spec.profile.as_deref(), Some("ci"));
        assert_eq!(spec.role.as_deref(), Some("arn:aws:iam::123456789012:role/deploy"));
        assert_eq!(spec.duration, Some(Duration::from_secs(900)));
        assert_eq!(spec.to_string(), "aws-credentials:profile=ci,role=arn:aws:iam::123456789012:role/deploy,duration=900");
        assert_eq!(AwsCredentialSpec::parse(&spec.to_string()["aws-credentials:".len()..]).unwrap(), spec);
    }

    fn keys(id: &str) -> Keys {
        Keys { access_key_id: id.into(), secret_access_key: format!("{id}-secret-key"), session_token: None }
    }

    #[tokio::test]
    async fn held_keys_sign_until_due_and_expired_ones_that_cannot_be_renewed_are_refused() {
        let hour = Duration::from_secs(3600);
        let fresh = AwsCredentials::for_test("AWS", keys("ASIAFRESH"), Some(SystemTime::now() + hour));
        assert_eq!(fresh.current("s").await.unwrap().access_key_id, "ASIAFRESH");
        let long_term = AwsCredentials::for_test("AWS", keys("AKIALONG"), None);
        assert_eq!(long_term.current("s").await.unwrap().access_key_id, "AKIALONG");
        // Due but still valid: an empty chain cannot renew them, so the held ones still sign.
        let due = AwsCredentials::for_test("AWS", keys("ASIADUE"), Some(SystemTime::now() + hour));
        due.held.lock().await.renew_at = Some(SystemTime::now() - Duration::from_secs(1));
        assert_eq!(due.current("s").await.unwrap().access_key_id, "ASIADUE");
        let expired = AwsCredentials::for_test("AWS", keys("ASIAOLD"), Some(SystemTime::now() - Duration::from_secs(1)));
        let err = expired.current("s").await.unwrap_err().to_string();
        assert!(err.contains("AWS credentials `AWS`") && err.contains("expired and could not be renewed"), "{err}");
        assert!(!err.contains("ASIAOLD"), "{err}");
    }

    #[test]
    fn held_keys_are_added_to_the_runs_redactor() {
        let redactor = Redactor::new(["an-unrelated-value"]);
        let clone = redactor.clone();
        AwsCredentials::for_test("AWS", keys("ASIAHELD1234"), None).redact_into(&redactor);
        assert_eq!(clone.redact("key ASIAHELD1234, secret ASIAHELD1234-secret-key"), "key ***, secret ***");
    }

    #[test]
    fn a_wrong_option_is_named() {
        let err = AwsCredentialSpec::parse("rol=arn:aws:iam::1:role/x").unwrap_err();
        assert!(err.contains("unknown option `rol`"), "{err}");
        let err = AwsCredentialSpec::parse("duration=900").unwrap_err();
        assert!(err.contains("give a role too"), "{err}");
        let err = AwsCredentialSpec::parse("role=deploy").unwrap_err();
        assert!(err.contains("not a role ARN"), "{err}");
        assert!(AwsCredentialSpec::parse("role=arn:aws:iam::1:role/x,duration=15m").is_err());
        assert!(AwsCredentialSpec::parse("profile").is_err());
    }
}
