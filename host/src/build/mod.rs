//! Builds a plugin crate into a component: `cargo build` for wasm32-wasip1
//! with whichever toolchain this machine has, then componentization in
//! process with the WASI preview1 reactor adapter.

mod toolchain;

pub use toolchain::Toolchain;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    /// cargo reported a compile error (printed above).
    #[error("cargo build of {0} failed (see the compiler output above)")]
    Cargo(PathBuf),
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
}

/// Builds the crate in `dir` and writes `<name>.component.wasm` beside its core module.
pub fn build_crate(dir: &Path, options: &BuildOptions) -> Result<Built, BuildError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(dir.to_path_buf()));
    }
    let manifest = manifest.canonicalize().map_err(|source| BuildError::Io { path: manifest.clone(), source })?;
    let toolchain = match &options.toolchain {
        Some(t) => t.clone(),
        None => Toolchain::detect()?,
    };
    let mut cmd: Command = toolchain.cargo_build();
    cmd.arg("--manifest-path").arg(&manifest).arg("--lib").arg("--message-format=json-render-diagnostics");
    if let Some(target_dir) = &options.target_dir {
        cmd.arg("--target-dir").arg(target_dir);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    tracing::info!(crate_dir = %dir.display(), toolchain = %toolchain, "building plugin");
    let output = cmd.output().map_err(|source| BuildError::Spawn { program: toolchain.to_string(), source })?;
    if !output.status.success() {
        return Err(BuildError::Cargo(dir.to_path_buf()));
    }
    let core = core_artifact(&String::from_utf8_lossy(&output.stdout), &manifest)
        .ok_or_else(|| BuildError::NoArtifact(dir.to_path_buf()))?;
    let bytes = std::fs::read(&core).map_err(|source| BuildError::Io { path: core.clone(), source })?;
    let component = componentize(&bytes).map_err(|message| BuildError::Componentize { path: core.clone(), message })?;
    let path = core.with_extension("component.wasm");
    // Write-then-rename: concurrent runs build the same crate, and a reader
    // must never see a half-written component.
    let tmp = core.with_extension(format!("component.wasm.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &component).map_err(|source| BuildError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, &path).map_err(|source| BuildError::Io { path: path.clone(), source })?;
    Ok(Built { sha256: crate::sandbox::cache::sha256_hex(&component), size: component.len() as u64, path })
}

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
    fn componentize_refuses_a_non_module() {
        assert!(componentize(b"not wasm").is_err());
    }
}
