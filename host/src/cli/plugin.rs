//! `gantry plugin build|inspect|push|pull|new`.

use crate::build::{build_crate, BuildOptions};
use crate::capability::SecretSource;
use crate::registry::{self, OciRef, RegistryOptions};
use crate::sandbox::{Runtime, CONTRACT_VERSION};
use anyhow::Context as _;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Build a plugin crate into a component; prints its path and sha256.
    Build {
        /// Directory of the plugin crate.
        crate_dir: PathBuf,
        /// Cargo target directory (default: the crate workspace's).
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what a plugin says about itself, its contract version and sha256; for an `oci://`
    /// reference, what its manifest says, without running it.
    Inspect {
        /// The component file, or an `oci://registry/repository:tag` reference.
        file: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sign_in: SignIn,
    },
    /// Push a plugin (a crate directory, built first, or a component file) to an OCI registry,
    /// with its name, version, contract and input schema as manifest annotations.
    Push {
        /// The crate directory or component file.
        source: PathBuf,
        /// Where to: `oci://registry/repository:tag`.
        reference: String,
        #[command(flatten)]
        sign_in: SignIn,
    },
    /// Create a plugin crate: Cargo.toml, src/lib.rs implementing `Step` with a typed input and a
    /// unit test, a README; it builds and runs with `gantry step run` as created.
    New {
        /// Crate name: lower-case letters, digits and `-`.
        name: String,
        /// Where to create it (default: `./<name>`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The gantry SDK crate to depend on by path (default: the SDK source this gantry was
        /// built from, where it still is; else the published SDK of this gantry's version).
        #[arg(long, conflicts_with = "sdk_version")]
        sdk: Option<PathBuf>,
        /// Depend on the published gantry-sdk of this version requirement instead (`0.1`, `=0.1.0`).
        #[arg(long)]
        sdk_version: Option<String>,
    },
    /// Pull a plugin from an OCI registry into the local store, verified; prints its path and sha256.
    Pull {
        /// `oci://registry/repository:tag`, `...@sha256:<digest>` to pin it.
        reference: String,
        #[command(flatten)]
        sign_in: SignIn,
    },
}

/// Registry credentials on the command line: a user name and where the password is read from, so
/// the password itself is never an argument (visible in `ps` and shell history).
#[derive(Debug, clap::Args)]
pub(crate) struct SignIn {
    /// Registry user name (anonymous without).
    #[arg(long, requires = "password_from")]
    username: Option<String>,
    /// Where the registry password is read from: `env:NAME` or `file:PATH`.
    #[arg(long, requires = "username")]
    password_from: Option<String>,
}

/// `gantry cache ls|clean`.
pub(crate) fn cache(action: &str, json: bool) -> anyhow::Result<u8> {
    let dir = crate::sandbox::Cache::default_dir().context("no cache directory: set GANTRY_CACHE_DIR")?;
    let cache = crate::sandbox::Cache::new(dir);
    if action == "clean" {
        let (files, bytes) = cache.clean()?;
        println!("{}: removed {files} files, {bytes} bytes", cache.dir().display());
        return Ok(0);
    }
    let entries = cache.entries();
    if json {
        println!("{}", serde_json::to_string(&entries)?);
    } else {
        for e in &entries {
            let kind = serde_json::to_value(e.kind)?.as_str().unwrap_or_default().to_string();
            println!("{kind:<9} sha256:{} {:>10} bytes  {}", e.digest, e.size, e.path.display());
        }
        println!(
            "{}: {} entries, {} bytes",
            cache.dir().display(),
            entries.len(),
            entries.iter().map(|e| e.size).sum::<u64>()
        );
    }
    Ok(0)
}

/// Registry options with the default store, or `GANTRY_CACHE_DIR`'s.
fn registry_options(sign_in: &SignIn) -> anyhow::Result<RegistryOptions> {
    let store = RegistryOptions::default_store().context("no cache directory: set GANTRY_CACHE_DIR")?;
    let mut options = RegistryOptions::new(store);
    if let (Some(username), Some(source)) = (&sign_in.username, &sign_in.password_from) {
        let password = SecretSource::parse(source)
            .and_then(|s| s.read())
            .map_err(|e| anyhow::anyhow!("--password-from {source}: {e}"))?;
        options.auth = Some((username.clone(), password));
    }
    Ok(options)
}

/// Where a new plugin gets its SDK from.
enum Sdk {
    /// A source directory.
    Path(PathBuf),
    /// A published version requirement.
    Version(String),
}

impl Sdk {
    /// The choice of `--sdk` / `--sdk-version`, or the default: the SDK source this gantry was
    /// built from where it still is (a checkout), else the published SDK of this version.
    fn chosen(path: Option<PathBuf>, version: Option<String>) -> Self {
        let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        match (path, version) {
            (Some(path), _) => Sdk::Path(path),
            (None, Some(version)) => Sdk::Version(version),
            (None, None) if built_from.join("Cargo.toml").is_file() => Sdk::Path(built_from),
            (None, None) => Sdk::Version(env!("CARGO_PKG_VERSION").to_string()),
        }
    }

    /// The dependency's right-hand side in Cargo.toml.
    fn dependency(&self) -> anyhow::Result<String> {
        match self {
            Sdk::Path(path) => {
                let path = path
                    .canonicalize()
                    .with_context(|| format!("the SDK at {}: give its directory with --sdk", path.display()))?;
                anyhow::ensure!(
                    path.join("Cargo.toml").is_file(),
                    "the SDK at {}: no Cargo.toml there; give the gantry-sdk directory with --sdk",
                    path.display()
                );
                Ok(format!("{{ path = {:?} }}", path.display().to_string()))
            }
            Sdk::Version(version) => {
                let valid = !version.is_empty()
                    && version.chars().all(|c| c.is_ascii_alphanumeric() || ".=^~<>*-+, ".contains(c));
                anyhow::ensure!(valid, "--sdk-version `{version}`: give a version requirement such as 0.1 or =0.1.0");
                Ok(format!("{version:?}"))
            }
        }
    }
}

/// Writes a new plugin crate from the templates in `scaffold/`.
fn scaffold(name: &str, dir: &Path, sdk: Sdk) -> anyhow::Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(valid, "plugin name `{name}`: use lower-case letters, digits and `-`, starting with a letter");
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let sdk_dependency = sdk.dependency()?;
    let fill = |template: &str| template.replace("{name}", name).replace("{sdk}", &sdk_dependency);
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("Cargo.toml"), fill(include_str!("scaffold/Cargo.toml.in")))?;
    std::fs::write(dir.join("src/lib.rs"), fill(include_str!("scaffold/lib.rs.in")))?;
    std::fs::write(dir.join("README.md"), fill(include_str!("scaffold/README.md.in")))?;
    Ok(())
}

/// `uses:`-style text split into a reference and its pin.
fn pinned(text: &str) -> anyhow::Result<(OciRef, Option<crate::pipeline::Digest>)> {
    let parsed = crate::pipeline::PluginRef::parse(text, Path::new(".")).map_err(anyhow::Error::msg)?;
    let crate::pipeline::PluginSource::Registry { reference } = &parsed.source else {
        anyhow::bail!("`{text}` is not an oci:// reference");
    };
    Ok((OciRef::parse(reference)?, parsed.pin))
}

impl PluginCommand {
    pub(crate) async fn execute(self) -> anyhow::Result<u8> {
        match self {
            PluginCommand::Build { crate_dir, target_dir, json } => {
                let options = BuildOptions { target_dir, ..BuildOptions::default() };
                let built = tokio::task::spawn_blocking(move || build_crate(&crate_dir, &options)).await??;
                if json {
                    let value = serde_json::json!({"path": built.path, "sha256": built.sha256, "size": built.size});
                    println!("{value}");
                } else {
                    println!("{}", built.path.display());
                    println!("sha256:{}", built.sha256);
                }
                Ok(0)
            }
            PluginCommand::Inspect { file, json, sign_in } if file.starts_with(crate::pipeline::source::OCI_SCHEME) => {
                let (reference, _) = pinned(&file)?;
                let published = registry::inspect(&reference, &registry_options(&sign_in)?).await?;
                if json {
                    println!("{}", serde_json::to_value(&published)?);
                } else {
                    let a = &published.annotations;
                    let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("(not given)");
                    println!("name:         {}", get(registry::annotation::NAME));
                    println!("version:      {}", get(registry::annotation::VERSION));
                    println!("description:  {}", get(registry::annotation::DESCRIPTION));
                    println!("contract:     {}", get(registry::annotation::CONTRACT));
                    println!("sha256:       {}", published.digest.hex());
                    println!("size:         {} bytes", published.size);
                    println!("manifest:     {}", published.manifest_digest);
                    println!("capabilities: {}", get(registry::annotation::CAPABILITIES));
                    println!("input schema: {}", get(registry::annotation::INPUT_SCHEMA));
                }
                Ok(0)
            }
            PluginCommand::Inspect { file, json, .. } => {
                let file = PathBuf::from(file);
                let runtime = Runtime::builder().build().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                let plugin = runtime.load(&file)?;
                let info = plugin.describe().await.with_context(|| format!("describing {}", file.display()))?;
                if json {
                    let value = serde_json::json!({
                        "plugin": info,
                        "contract": format!("gantry:step@{CONTRACT_VERSION}"),
                        "sha256": plugin.sha256(),
                        "size": std::fs::metadata(&file)?.len(),
                        "cache": plugin.cache_status(),
                    });
                    println!("{value}");
                } else {
                    println!("name:         {}", info.name);
                    println!("version:      {}", info.version);
                    println!("description:  {}", info.description);
                    println!("contract:     gantry:step@{CONTRACT_VERSION}");
                    println!("sha256:       {}", plugin.sha256());
                    println!("size:         {} bytes", std::fs::metadata(&file)?.len());
                    println!("capabilities: {}", info.capabilities.join(", "));
                    match &info.outputs {
                        Some(outputs) => {
                            println!("outputs:");
                            outputs.iter().for_each(|o| println!("  {:<22} {}", o.name, o.description));
                        }
                        None => println!("outputs:      not declared"),
                    }
                    println!("input schema:\n{}", serde_json::to_string_pretty(&info.input_schema)?);
                }
                Ok(0)
            }
            PluginCommand::Push { source, reference, sign_in } => {
                let reference = OciRef::parse(&reference)?;
                let file = if source.is_dir() {
                    let options = BuildOptions::default();
                    tokio::task::spawn_blocking(move || build_crate(&source, &options)).await??.path
                } else {
                    source
                };
                let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let runtime = Runtime::builder().build().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                let info = runtime.load_bytes(&bytes, &file)?.describe().await?;
                let (digest, manifest) =
                    registry::push(&bytes, &info, &reference, &registry_options(&sign_in)?).await?;
                println!("{reference}@{digest}");
                println!("manifest {manifest}");
                Ok(0)
            }
            PluginCommand::New { name, dir, sdk, sdk_version } => {
                let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
                scaffold(&name, &dir, Sdk::chosen(sdk, sdk_version))?;
                println!(
                    "{}: created; try `gantry step run {} --with url=... --allow-net ...`",
                    dir.display(),
                    dir.display()
                );
                Ok(0)
            }
            PluginCommand::Pull { reference, sign_in } => {
                let (oci, pin) = pinned(&reference)?;
                let pulled = registry::pull(&oci, pin.as_ref(), &registry_options(&sign_in)?).await?;
                println!("{}", pulled.path.display());
                println!("{}", pulled.digest);
                // Compiled and described ahead, into the cache: the first run of it then loads in
                // milliseconds instead of compiling (seconds for a large component).
                let runtime = super::builder().build().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                let started = std::time::Instant::now();
                let plugin = runtime.load(&pulled.path)?;
                runtime.describe_file(&pulled.path, pulled.digest.hex()).await;
                let took = crate::units::duration(started.elapsed());
                println!("compiled into the cache ({}) in {took}", serde_json::to_value(plugin.cache_status())?.as_str().unwrap_or("?"));
                Ok(0)
            }
        }
    }
}
