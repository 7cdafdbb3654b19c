//! Builds a plugin crate into a component: `cargo build` for wasm32-wasip1
//! with whichever toolchain this machine has, then componentization in
//! process with the WASI preview1 reactor adapter.

mod toolchain;

pub use toolchain::Toolchain;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

/// Why a plugin build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No toolchain can build wasm32-wasip1 here.
    #[error("no Rust toolchain for wasm32-wasip1 found: {remedy}")]
    NoToolchain {
        /// What to install.
        remedy: String,
    },
    /// The directory holds no Cargo.toml.
    #[error("{0} is not a plugin crate: it has no Cargo.toml")]
    NotACrate(PathBuf),
    /// Running cargo failed.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// cargo reported a compile error; its whole output is in `log`.
    #[error("cargo build of {} failed:\n{errors}\n(cargo's whole output: {})", dir.display(), log.display())]
    Cargo {
        /// The crate.
        dir: PathBuf,
        /// cargo's output.
        log: PathBuf,
        /// The compiler's errors, as it rendered them.
        errors: String,
    },
    /// The crate produced no `.wasm` library.
    #[error("building {0} produced no wasm library: set `crate-type = [\"cdylib\"]` in its [lib] section")]
    NoArtifact(PathBuf),
    /// The core module could not be made into a component.
    #[error("cannot componentize {path}: {message}")]
    Componentize {
        /// The core module.
        path: PathBuf,
        /// What wit-component said.
        message: String,
    },
    /// Reading or writing files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A built plugin component.
#[derive(Debug, Clone)]
pub struct Built {
    /// The component file.
    pub path: PathBuf,
    /// Hex sha256 of the component.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
}

/// Options for [`build_crate`].
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cargo target directory; the crate's workspace default when unset.
    pub target_dir: Option<PathBuf>,
    /// Toolchain to use; detected when unset.
    pub toolchain: Option<Toolchain>,
    /// Where plugins from registries are pulled to, and how; the default store when unset.
    pub registry: Option<crate::registry::RegistryOptions>,
    /// Crates already built with these options (and their clones).
    pub once: BuiltOnce,
}

/// The crates built with one [`BuildOptions`] and its clones, by manifest: a command that plans
/// many environments and entities runs cargo and componentizes once per crate, not once per plan.
/// Sources that change while it runs are caught where they always are: a run checks every
/// component against the digest its plan recorded.
#[derive(Debug, Clone, Default)]
pub struct BuiltOnce(Arc<Mutex<HashMap<PathBuf, Built>>>);

impl BuiltOnce {
    fn get(&self, manifest: &Path) -> Option<Built> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(manifest).cloned()
    }

    fn keep(&self, manifest: PathBuf, built: &Built) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(manifest, built.clone());
    }
}

/// Builds the crate in `dir` and writes `<name>.component.wasm` beside its core module.
pub fn build_crate(dir: &Path, options: &BuildOptions) -> Result<Built, BuildError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(dir.to_path_buf()));
    }
    let manifest = manifest.canonicalize().map_err(|source| BuildError::Io { path: manifest.clone(), source })?;
    if let Some(built) = options.once.get(&manifest) {
        return Ok(built);
    }
    let toolchain = match &options.toolchain {
        Some(t) => t.clone(),
        None => Toolchain::detect()?,
    };
    let mut cmd: Command = toolchain.cargo_build();
    cmd.arg("--manifest-path").arg(&manifest).arg("--lib").arg("--message-format=json-render-diagnostics");
    if let Some(target_dir) = &options.target_dir {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    let log = log_path(&name, &manifest);
    let log_file = std::fs::File::create(&log).map_err(|source| BuildError::Io { path: log.clone(), source })?;
    cmd.stdout(Stdio::piped()).stderr(log_file);
    tracing::debug!(crate_dir = %dir.display(), toolchain = %toolchain, log = %log.display(), "cargo build");
    let started = std::time::Instant::now();
    let spawn = |source| BuildError::Spawn { program: toolchain.to_string(), source };
    let mut child = cmd.spawn().map_err(spawn)?;
    let mut messages = String::new();
    let (mut compiling, mut announced) = (false, false);
    for line in BufReader::new(child.stdout.take().expect("stdout is piped")).lines() {
        let line = line.map_err(spawn)?;
        // An up-to-date plugin costs no line, a quick build one ("built"), a slow one a line as it
        // goes on too: "building" once cargo has been at it for a while.
        compiling |= line.contains(r#""fresh":false"#);
        if compiling && !announced && started.elapsed() >= BUILDING_NOTICE {
            announced = true;
            tracing::info!("building {name} (cargo's output: {})", log.display());
        }
        messages.push_str(&line);
        messages.push('\n');
    }
    let status = child.wait().map_err(spawn)?;
    if !status.success() {
        let errors = compiler_errors(&std::fs::read_to_string(&log).unwrap_or_default());
        return Err(BuildError::Cargo { dir: dir.to_path_buf(), log, errors });
    }
    if compiling {
        let took = crate::units::duration(started.elapsed());
        match announced {
            true => tracing::info!("built {name} in {took}"),
            false => tracing::info!("built {name} in {took} (cargo's output: {})", log.display()),
        }
    }
    let core = core_artifact(&messages, &manifest).ok_or_else(|| BuildError::NoArtifact(dir.to_path_buf()))?;
    let bytes = std::fs::read(&core).map_err(|source| BuildError::Io { path: core.clone(), source })?;
    let component = componentize(&bytes).map_err(|message| BuildError::Componentize { path: core.clone(), message })?;
    let path = core.with_extension("component.wasm");
    // Write-then-rename: concurrent runs build the same crate, and a reader
    // must never see a half-written component.
    let tmp = core.with_extension(format!("component.wasm.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &component).map_err(|source| BuildError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, &path).map_err(|source| BuildError::Io { path: path.clone(), source })?;
    let built = Built { sha256: crate::sandbox::cache::sha256_hex(&component), size: component.len() as u64, path };
    options.once.keep(manifest, &built);
    Ok(built)
}

/// How long a build runs before it is announced: a quick one is one line when it is done.
const BUILDING_NOTICE: std::time::Duration = std::time::Duration::from_secs(15);

/// Where cargo's output for the crate at `manifest` goes: one file per crate, overwritten by
/// each build, outside the crate so a build never dirties a source tree.
fn log_path(name: &str, manifest: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join("gantry-build");
    let _ = std::fs::create_dir_all(&dir);
    let id = crate::sandbox::cache::sha256_hex(manifest.as_os_str().as_encoded_bytes());
    dir.join(format!("{name}-{}.log", &id[..12]))
}

/// The compiler's rendered errors in cargo's output, at most [`ERROR_LINES`] lines; the
/// output's tail when it holds none (a cargo error, not a compiler one).
fn compiler_errors(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let first = lines.iter().position(|l| l.starts_with("error")).unwrap_or(lines.len().saturating_sub(ERROR_LINES));
    let shown = &lines[first..lines.len().min(first + ERROR_LINES)];
    shown.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// How much of a failed build's output an error shows.
const ERROR_LINES: usize = 40;

/// Finds the `.wasm` cdylib of the package at `manifest` in cargo's JSON messages.
fn core_artifact(messages: &str, manifest: &Path) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(manifest))
        .filter(|m| m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib")))
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

/// Turns a wasm32-wasip1 core module into a component with the reactor adapter.
pub fn componentize(core: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(core)
        .and_then(|e| e.adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER))
        .and_then(|mut e| e.encode())
        .map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cdylib_of_the_right_package() {
        let messages = r#"{"reason":"compiler-artifact","manifest_path":"/p/dep/Cargo.toml","target":{"kind":["cdylib"]},"filenames":["/t/dep.wasm"]}
{"reason":"compiler-artifact","manifest_path":"/p/check/Cargo.toml","target":{"kind":["cdylib","rlib"]},"filenames":["/t/libcheck.rlib","/t/check.wasm"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(core_artifact(messages, Path::new("/p/check/Cargo.toml")), Some(PathBuf::from("/t/check.wasm")));
        assert_eq!(core_artifact(messages, Path::new("/p/other/Cargo.toml")), None);
    }

    #[test]
    fn a_failed_build_shows_the_compilers_errors_not_its_progress() {
        let output = "   Compiling dep v1.0.0\n   Compiling check v0.1.0\nerror[E0425]: cannot find value `x`\n --> src/lib.rs:3:5\nerror: could not compile `check`";
        let shown = compiler_errors(output);
        assert!(shown.starts_with("  error[E0425]"), "{shown}");
        assert!(!shown.contains("Compiling"), "{shown}");
        assert_eq!(compiler_errors("error: manifest is broken"), "  error: manifest is broken");
        assert_eq!(compiler_errors("a\nb"), "  a\n  b");
    }

    #[test]
    fn componentize_refuses_a_non_module() {
        assert!(componentize(b"not wasm").is_err());
    }
}
