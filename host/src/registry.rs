//! Plugins in OCI registries: push a component with what it says about itself as manifest
//! annotations, pull it into a content-addressed store, inspect it without running it.
//!
//! A pulled component is kept as `<store>/<sha256>.wasm`, written to a temporary file and renamed, so
//! two runners filling one cold store at once both end with the same verified file. The digest a
//! pin names is the component's own sha256 (the layer's digest), the same whether the plugin comes
//! from a file or a registry; `oci://host/repo@sha256:<digest>` fetches that blob directly, and a
//! pinned component already in the store is used without asking the registry.

use crate::sandbox::cache::Digest;
use crate::sandbox::{PluginInfo, CONTRACT_VERSION};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Media type of the one layer: the component itself.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Media type of the config blob, as the CNCF Wasm OCI artifact layout names it.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Annotation keys of what a plugin says about itself.
pub mod annotation {
    /// The plugin's name.
    pub const NAME: &str = "org.opencontainers.image.title";
    /// The plugin's version.
    pub const VERSION: &str = "org.opencontainers.image.version";
    /// Its one-line description.
    pub const DESCRIPTION: &str = "org.opencontainers.image.description";
    /// The contract it was built against, `gantry:step@x.y.z`.
    pub const CONTRACT: &str = "dev.gantry.contract";
    /// JSON Schema of its input.
    pub const INPUT_SCHEMA: &str = "dev.gantry.input-schema";
    /// Capabilities it asks for, comma-separated.
    pub const CAPABILITIES: &str = "dev.gantry.capabilities";
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("invalid registry reference `{OCI_SCHEME}{reference}`: {reason}")]
    Reference {
        /// As written, without the scheme.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry answered with an error or could not be reached (after retries).
    #[error("{OCI_SCHEME}{reference}: {message}")]
    Registry {
        /// The reference.
        reference: String,
        /// The registry's answer or the transport error.
        message: String,
    },
    /// The bytes are not what the manifest or the pin says.
    #[error("{OCI_SCHEME}{reference}: the component has {got}, but {expected_by} says {expected}: refused (a tampered or wrongly pinned plugin)")]
    Digest {
        /// The reference.
        reference: String,
        /// What the bytes hash to.
        got: Digest,
        /// What they should hash to.
        expected: Digest,
        /// Who says so: the manifest or the pin.
        expected_by: &'static str,
    },
    /// Larger than allowed.
    #[error("{OCI_SCHEME}{reference}: the component is larger than {max} bytes")]
    TooLarge {
        /// The reference.
        reference: String,
        /// The cap.
        max: u64,
    },
    /// The store could not be written.
    #[error("cannot store {digest} in {}: {source}", dir.display())]
    Store {
        /// The component's digest.
        digest: Digest,
        /// The store directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How to reach registries and where pulled components go.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// The content-addressed store of pulled components.
    pub store: PathBuf,
    /// Largest component accepted.
    pub max_bytes: u64,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts per operation for transport errors and 5xx/429 answers.
    pub attempts: u32,
    /// Credentials, read by the caller from a secret source; anonymous without.
    pub auth: Option<(String, String)>,
}

impl RegistryOptions {
    /// The store beside the compile cache (`<cache>/pulled`), 64 MiB cap, 30 s timeout, 3 attempts.
    pub fn new(store: impl Into<PathBuf>) -> Self {
        Self { store: store.into(), max_bytes: 64 << 20, timeout: Duration::from_secs(30), attempts: 3, auth: None }
    }

    /// The default store: `pulled/` under the compile cache directory.
    pub fn default_store() -> Option<PathBuf> {
        crate::sandbox::Cache::default_dir().map(|d| d.join("pulled"))
    }

    fn auth(&self) -> RegistryAuth {
        match &self.auth {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// A parsed `oci://` reference: registry, repository, and a tag or a digest.
#[derive(Debug, Clone)]
pub struct OciRef {
    text: String,
    reference: Reference,
    /// Whether a tag is written (the client assumes `latest` otherwise).
    tagged: bool,
}

impl OciRef {
    /// Parses `host[:port]/repository[:tag][@sha256:digest]`, with or without `oci://`; the registry
    /// host must be written out (no implied Docker Hub).
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let bare = text.strip_prefix(OCI_SCHEME).unwrap_or(text);
        let invalid = |reason: &str| RegistryError::Reference { reference: bare.to_string(), reason: reason.into() };
        let host = bare.split('/').next().unwrap_or_default();
        if !bare.contains('/') || !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(invalid("name the registry host first, as in oci://registry.example/team/plugin:1.0"));
        }
        let reference: Reference = bare.parse().map_err(|e: oci_client::ParseError| invalid(&e.to_string()))?;
        let name = bare.split('@').next().unwrap_or_default();
        let tagged = name.rsplit('/').next().is_some_and(|last| last.contains(':'));
        Ok(Self { text: bare.to_string(), reference, tagged })
    }

    /// The reference as written, without the scheme.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The registry host (and port).
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    /// The repository path.
    pub fn repository(&self) -> &str {
        self.reference.repository()
    }

    /// This repository at `digest`.
    fn at(&self, digest: &Digest) -> Reference {
        Reference::with_digest(self.registry().into(), self.repository().into(), digest.to_string())
    }

    /// The registry's API root as the client reaches it: `https://host/v2/`, `http://` on loopback.
    pub fn api_root(&self) -> url::Url {
        let scheme = if self.loopback() { "http" } else { "https" };
        url::Url::parse(&format!("{scheme}://{}/v2/", self.registry())).expect("a parsed registry host is a URL host")
    }

    /// Whether the registry is on this machine, the only place plain HTTP is used.
    fn loopback(&self) -> bool {
        let host = self.registry().rsplit_once(':').map_or(self.registry(), |(h, _)| h);
        crate::capability::address::is_loopback_host(host)
    }

    fn error(&self, e: OciDistributionError) -> RegistryError {
        RegistryError::Registry { reference: self.text.clone(), message: e.to_string() }
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{OCI_SCHEME}{}", self.text)
    }
}

/// The API root of the registry `host[:port]`, as [`OciRef::api_root`] gives it.
pub fn origin(host: &str) -> Result<url::Url, RegistryError> {
    OciRef::parse(&format!("{host}/probe")).map(|r| r.api_root()).map_err(|_| RegistryError::Reference {
        reference: host.to_string(),
        reason: "a registry is `host[:port]`, such as registry.example or 127.0.0.1:5000".into(),
    })
}

/// The scheme that marks an OCI registry reference in `uses:`.
pub const OCI_SCHEME: &str = "oci://";

/// A component in the store.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// Its file.
    pub path: PathBuf,
    /// Its sha256.
    pub digest: Digest,
    /// Whether it was already in the store.
    pub cached: bool,
}

/// What a registry holds for a reference, read from the manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    /// The component's sha256 (the layer's digest): what a pin names.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The manifest's annotations: name, version, contract, input schema, capabilities.
    pub annotations: BTreeMap<String, String>,
}

fn client(reference: &OciRef, options: &RegistryOptions) -> Client {
    let protocol = if reference.loopback() {
        ClientProtocol::HttpsExcept(vec![reference.registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        read_timeout: Some(options.timeout),
        connect_timeout: Some(options.timeout),
        ..ClientConfig::default()
    })
}

/// Whether trying again may help: transport errors, 5xx and 429.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

/// Runs `op` up to `attempts` times while it fails transiently, waiting 200 ms, then 400 ms, ...
async fn retrying<T, F, Fut>(attempts: u32, mut op: F) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    let mut wait = Duration::from_millis(200);
    for attempt in 1.. {
        match op().await {
            Err(e) if attempt < attempts && transient(&e) => {
                tracing::warn!("registry: {e}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            result => return result,
        }
    }
    unreachable!("the loop returns")
}

/// Reads the manifest of a tagged reference: the component's digest, size and annotations.
pub async fn inspect(reference: &OciRef, options: &RegistryOptions) -> Result<Published, RegistryError> {
    let client = client(reference, options);
    let auth = options.auth();
    let (manifest, manifest_digest) =
        retrying(options.attempts, || client.pull_image_manifest(&reference.reference, &auth))
            .await
            .map_err(|e| reference.error(e))?;
    let invalid = |reason: &str| RegistryError::Reference { reference: reference.text.clone(), reason: reason.into() };
    let [layer] = manifest.layers.as_slice() else {
        return Err(invalid("the manifest must have exactly one layer, the component"));
    };
    if layer.media_type != LAYER_MEDIA_TYPE {
        return Err(invalid(&format!("the layer is `{}`, not a component (`{LAYER_MEDIA_TYPE}`)", layer.media_type)));
    }
    let digest = Digest::parse(&layer.digest).map_err(|e| invalid(&e))?;
    Ok(Published {
        digest,
        size: u64::try_from(layer.size).unwrap_or(u64::MAX),
        manifest_digest,
        annotations: manifest.annotations.clone().unwrap_or_default(),
    })
}

/// Fetches the component `reference` names (by tag, or by digest as the pin) into the store,
/// verified against the manifest and the pin; a pinned component already stored is used as is.
pub async fn pull(
    reference: &OciRef,
    pin: Option<&Digest>,
    options: &RegistryOptions,
) -> Result<Pulled, RegistryError> {
    let by_digest = reference
        .reference
        .digest()
        .map(Digest::parse)
        .transpose()
        .map_err(|e| RegistryError::Reference { reference: reference.text.clone(), reason: e })?;
    let wanted = pin.cloned().or(by_digest.clone());
    if let Some(digest) = &wanted {
        if let Some(path) = stored(&options.store, digest) {
            return Ok(Pulled { path, digest: digest.clone(), cached: true });
        }
    }
    // Without a tag, the digest (in the reference or the pin) names the blob itself.
    let direct = by_digest.or_else(|| (!reference.tagged).then(|| pin.cloned()).flatten());
    let (digest, expected_by, size) = match direct {
        Some(digest) => (digest, "the reference", None),
        None => {
            let published = inspect(reference, options).await?;
            (published.digest, "the manifest", Some(published.size))
        }
    };
    if let Some(pin) = pin {
        if *pin != digest {
            return Err(RegistryError::Digest {
                reference: reference.text.clone(),
                got: digest,
                expected: pin.clone(),
                expected_by: "the pin",
            });
        }
    }
    if let Some(path) = stored(&options.store, &digest) {
        return Ok(Pulled { path, digest, cached: true });
    }
    if size.is_some_and(|s| s > options.max_bytes) {
        return Err(RegistryError::TooLarge { reference: reference.text.clone(), max: options.max_bytes });
    }
    let client = client(reference, options);
    client.store_auth_if_needed(reference.registry(), &options.auth()).await;
    let at = reference.at(&digest);
    let digest_text = digest.to_string();
    let bytes = retrying(options.attempts, || async {
        let mut out = Capped { bytes: Vec::new(), max: options.max_bytes, over: false };
        let result = client.pull_blob(&at, digest_text.as_str(), &mut out).await;
        match (result, out.over) {
            (_, true) => Ok(None),
            (Ok(()), false) => Ok(Some(out.bytes)),
            (Err(e), false) => Err(e),
        }
    })
    .await
    .map_err(|e| match e {
        // The client checks the bytes as they arrive; the refusal is the same as ours below.
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError { actual, .. }) => {
            match Digest::parse(&actual) {
                Ok(got) => RegistryError::Digest {
                    reference: reference.text.clone(),
                    got,
                    expected: digest.clone(),
                    expected_by,
                },
                Err(_) => reference.error(OciDistributionError::GenericError(Some(actual))),
            }
        }
        e => reference.error(e),
    })?
    .ok_or_else(|| RegistryError::TooLarge { reference: reference.text.clone(), max: options.max_bytes })?;
    let got = Digest::of(&bytes);
    if got != digest {
        return Err(RegistryError::Digest { reference: reference.text.clone(), got, expected: digest, expected_by });
    }
    let path = store(&options.store, &digest, &bytes)?;
    Ok(Pulled { path, digest, cached: false })
}

/// Pushes a component with what it says about itself; returns the component's digest and the
/// manifest's.
pub async fn push(
    bytes: &[u8],
    info: &PluginInfo,
    reference: &OciRef,
    options: &RegistryOptions,
) -> Result<(Digest, String), RegistryError> {
    let annotations = BTreeMap::from([
        (annotation::NAME.to_string(), info.name.clone()),
        (annotation::VERSION.to_string(), info.version.clone()),
        (annotation::DESCRIPTION.to_string(), info.description.clone()),
        (annotation::CONTRACT.to_string(), format!("gantry:step@{CONTRACT_VERSION}")),
        (annotation::INPUT_SCHEMA.to_string(), info.input_schema.to_string()),
        (annotation::CAPABILITIES.to_string(), info.capabilities.join(",")),
    ]);
    let layers = [ImageLayer::new(bytes.to_vec(), LAYER_MEDIA_TYPE.into(), None)];
    let config = Config::new(b"{}".to_vec(), CONFIG_MEDIA_TYPE.into(), None);
    let manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    let client = client(reference, options);
    let auth = options.auth();
    retrying(options.attempts, || {
        client.push(&reference.reference, &layers, config.clone(), &auth, Some(manifest.clone()))
    })
    .await
    .map_err(|e| reference.error(e))?;
    let manifest_digest = retrying(options.attempts, || client.fetch_manifest_digest(&reference.reference, &auth))
        .await
        .map_err(|e| reference.error(e))?;
    Ok((Digest::of(bytes), manifest_digest))
}

/// The stored file for `digest`, when present and intact; a damaged one is removed.
fn stored(dir: &Path, digest: &Digest) -> Option<PathBuf> {
    let path = dir.join(format!("{}.wasm", digest.hex()));
    let bytes = std::fs::read(&path).ok()?;
    if Digest::of(&bytes) == *digest {
        return Some(path);
    }
    tracing::warn!(path = %path.display(), "a stored component does not match its digest: removed");
    let _ = std::fs::remove_file(&path);
    None
}

/// Writes `bytes` as the store's file for `digest`: a temporary file, synced, then renamed, so a
/// reader never sees half a component and two writers both succeed.
fn store(dir: &Path, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, RegistryError> {
    let failed = |source| RegistryError::Store { digest: digest.clone(), dir: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut tmp = tempfile_in(dir).map_err(failed)?;
    tmp.1.write_all(bytes).and_then(|()| tmp.1.sync_all()).map_err(failed)?;
    let path = dir.join(format!("{}.wasm", digest.hex()));
    std::fs::rename(&tmp.0, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        failed(e)
    })?;
    Ok(path)
}

/// A new file in `dir` no other process picks.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(".pull-{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    Ok((path, file))
}

/// Collects a blob, refusing more than `max` bytes whatever the registry sends.
struct Capped {
    bytes: Vec<u8>,
    max: u64,
    over: bool,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() as u64 + buf.len() as u64 > self.max {
            self.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other("larger than the size cap")));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry_and_loopback_is_told_apart() {
        let r = OciRef::parse("oci://127.0.0.1:5000/gantry/http-check:1.0").unwrap();
        assert_eq!((r.registry(), r.repository(), r.loopback()), ("127.0.0.1:5000", "gantry/http-check", true));
        assert!(!OciRef::parse("registry.example/team/alb-shift:1.2.0").unwrap().loopback());
        assert!(OciRef::parse("localhost:5000/a:1").unwrap().loopback());
        let implied = OciRef::parse("oci://alb-shift:1.2.0").unwrap_err().to_string();
        assert!(implied.contains("name the registry host"), "{implied}");
        assert!(OciRef::parse("oci://team/alb-shift:1.2.0").is_err(), "no implied Docker Hub");
    }

    #[test]
    fn the_store_keeps_whole_verified_files_and_drops_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of(b"component");
        let path = store(dir.path(), &digest, b"component").unwrap();
        assert_eq!(stored(dir.path(), &digest), Some(path.clone()));
        std::fs::write(&path, b"tampered").unwrap();
        assert_eq!(stored(dir.path(), &digest), None);
        assert!(!path.exists(), "a damaged file is removed");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(names.is_empty(), "no temporary file is left: {names:?}");
    }
}
