//! Compiled components on disk, keyed by the component's sha256 and the
//! engine's configuration, so a second run deserializes instead of compiling.
//!
//! Deserializing native code is only as safe as the bytes read, so every
//! entry carries a sidecar sha256 written with it; an entry whose bytes do not
//! match (truncated, corrupted, foreign) is deleted and recompiled, never loaded.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

/// How a component was obtained on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheStatus {
    /// Deserialized from a verified cache entry.
    Hit,
    /// Compiled and written to the cache.
    Miss,
    /// A cache entry existed but failed verification; compiled again.
    Recompiled,
    /// No cache directory configured; compiled.
    Disabled,
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache rooted at `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The user cache directory, or `GANTRY_CACHE_DIR` when set.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("GANTRY_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        directories::ProjectDirs::from("dev", "gantry", "gantry").map(|d| d.cache_dir().join("components"))
    }

    /// The directory entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, engine: &Engine, component_sha256: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{component_sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// Loads the compiled form of a component, compiling and storing it on a miss.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        component_sha256: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheStatus)> {
        let path = self.entry_path(engine, component_sha256);
        let mut status = CacheStatus::Miss;
        if path.exists() {
            match read_verified(&path) {
                Some(bytes) => {
                    // SAFETY: the bytes were written by `store` below from
                    // `Component::serialize` and their sha256 matches the
                    // sidecar written with them; wasmtime additionally checks
                    // the header against this engine's configuration.
                    match unsafe { Component::deserialize(engine, &bytes) } {
                        Ok(component) => {
                            tracing::debug!(path = %path.display(), "component loaded from cache");
                            return Ok((component, CacheStatus::Hit));
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cache entry rejected by the engine; recompiling")
                        }
                    }
                }
                None => {
                    tracing::warn!(path = %path.display(), "cache entry failed verification; recompiling")
                }
            }
            let _ = std::fs::remove_file(&path);
            status = CacheStatus::Recompiled;
        }
        let component = Component::new(engine, wasm)?;
        tracing::debug!(sha256 = component_sha256, "component compiled");
        if let Err(e) = store(&path, &component.serialize()?) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the compile cache");
        }
        Ok((component, status))
    }
}

fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("cwasm.sha256")
}

fn read_verified(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let expected = std::fs::read_to_string(sidecar(path)).ok()?;
    (hex::encode(Sha256::digest(&bytes)) == expected.trim()).then_some(bytes)
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    // Write-then-rename so a concurrent reader never sees half an entry; the
    // sidecar goes last, so an entry without it is simply a miss.
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let tmp_hash = dir.join(format!(".{}.sha.tmp", std::process::id()));
    std::fs::write(&tmp_hash, hex::encode(Sha256::digest(bytes)))?;
    std::fs::rename(&tmp_hash, sidecar(path))
}

/// Hex sha256 of bytes, the identity of a plugin everywhere in gantry.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
