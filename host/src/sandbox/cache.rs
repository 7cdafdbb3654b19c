//! Compiled components on disk, keyed by the component's sha256 and the
//! engine's configuration, so a second run deserializes instead of compiling.
//!
//! Deserializing native code is only as safe as the bytes read, so every
//! entry carries a sidecar with its length and CRC-32 written with it; an entry
//! whose bytes do not match (truncated, corrupted, foreign) is deleted and
//! recompiled, never loaded. A checksum, not a cryptographic hash: it guards
//! against accidents (a crash, a bad disk, another engine's file); whoever can
//! write the cache directory can write a matching sidecar whatever its
//! algorithm, so sha256 bought nothing there and cost a millisecond per load.

use sha2::{Digest as _, Sha256};
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
    /// Already loaded by this runtime: its compiled code and pre-instantiation are shared.
    Shared,
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

    /// Every entry: compiled components and, under `pulled/`, components from registries.
    pub fn entries(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for (dir, kind, ext) in
            [(self.dir.clone(), EntryKind::Compiled, "cwasm"), (self.dir.join("pulled"), EntryKind::Pulled, "wasm")]
        {
            let Ok(read) = std::fs::read_dir(&dir) else { continue };
            for entry in read.flatten() {
                let path = entry.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
                let Some(stem) = name.strip_suffix(&format!(".{ext}")) else { continue };
                let digest = stem.split('-').next().unwrap_or(stem).to_string();
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                entries.push(Entry { kind, digest, size, path });
            }
        }
        entries.sort_by(|a, b| (a.kind, &a.digest).cmp(&(b.kind, &b.digest)));
        entries
    }

    /// Removes every entry (and its sidecar); returns how many files and bytes went. A running
    /// process that wanted one compiles or pulls it again.
    pub fn clean(&self) -> std::io::Result<(usize, u64)> {
        let (mut files, mut bytes) = (0, 0);
        for entry in self.entries() {
            std::fs::remove_file(&entry.path)?;
            let _ = std::fs::remove_file(sidecar(&entry.path));
            // Entries written before the checksum was a CRC have a sha256 sidecar.
            let _ = std::fs::remove_file(entry.path.with_extension("cwasm.sha256"));
            files += 1;
            bytes += entry.size;
        }
        if let Ok(read) = std::fs::read_dir(self.dir.join("descriptions")) {
            for entry in read.flatten() {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(entry.path())?;
                files += 1;
            }
        }
        for (path, size) in self.leftovers() {
            std::fs::remove_file(&path)?;
            files += 1;
            bytes += size;
        }
        Ok((files, bytes))
    }

    /// Temporary files a killed writer left (`.…tmp`, never read as entries), once an hour old, so a
    /// write still under way in another process keeps its file.
    fn leftovers(&self) -> Vec<(PathBuf, u64)> {
        let old =
            |m: &std::fs::Metadata| m.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a > LEFTOVER_AGE);
        [self.dir.clone(), self.dir.join("pulled")]
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|read| read.flatten())
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp")))
            .filter_map(|e| e.metadata().ok().filter(old).map(|m| (e.path(), m.len())))
            .collect()
    }

    /// What the component with this sha256 said of itself when last described, if kept.
    pub fn description(&self, component_sha256: &str) -> Option<super::PluginInfo> {
        let text = std::fs::read(self.description_path(component_sha256)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Keeps what a component says of itself: a description depends on the component alone, so
    /// validate and plan describe each digest once, without loading it again.
    pub fn store_description(&self, component_sha256: &str, info: &super::PluginInfo) {
        let path = self.description_path(component_sha256);
        let written = serde_json::to_vec(info).map_err(std::io::Error::other).and_then(|bytes| write_whole(&path, &bytes));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not keep the plugin's description");
        }
    }

    fn description_path(&self, component_sha256: &str) -> PathBuf {
        self.dir.join("descriptions").join(format!("{component_sha256}.json"))
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
            if verified(&path) {
                // SAFETY: the file was written by `store` below from `Component::serialize` and
                // its checksum matches the sidecar written with it; wasmtime additionally checks
                // the header against this engine's configuration. Mapping it (rather than
                // deserializing the bytes just read) saves copying the code a second time: an
                // entry is only ever replaced whole, by a rename of the same component compiled
                // by the same engine, and never written in place.
                match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(component) => {
                        tracing::debug!(path = %path.display(), "component loaded from cache");
                        return Ok((component, CacheStatus::Hit));
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cache entry rejected by the engine; recompiling")
                    }
                }
            } else {
                tracing::warn!(path = %path.display(), "cache entry failed verification; recompiling")
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

/// How old a temporary file must be before `clean` takes it for a killed writer's.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// Native code compiled from a component for this engine.
    Compiled,
    /// A component pulled from a registry.
    Pulled,
}

/// One file in the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// What it holds.
    pub kind: EntryKind,
    /// The component's sha256.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The file.
    pub path: PathBuf,
}

fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("cwasm.crc32")
}

/// What the sidecar says of an entry: its length and CRC-32.
fn check_text(len: usize, crc: u32) -> String {
    format!("{len} {crc:08x}")
}

fn check_of(bytes: &[u8]) -> String {
    check_text(bytes.len(), crc32fast::hash(bytes))
}

/// Whether the entry's bytes match its sidecar. Streamed through one small buffer: reading a
/// whole entry into fresh memory cost a page fault per 4 KiB.
fn verified(path: &Path) -> bool {
    let (Ok(mut file), Ok(expected)) = (std::fs::File::open(path), std::fs::read_to_string(sidecar(path))) else {
        return false;
    };
    let (mut crc, mut len, mut buf) = (crc32fast::Hasher::new(), 0usize, vec![0u8; 64 << 10]);
    loop {
        match std::io::Read::read(&mut file, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                crc.update(&buf[..n]);
                len += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    check_text(len, crc.finalize()) == expected.trim()
}

/// Writes `bytes` to `path` by way of a temporary file and a rename, so a concurrent reader never
/// sees half of it.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // The sidecar goes last, so an entry without it is simply a miss.
    write_whole(path, bytes)?;
    let dir = path.parent().expect("cache entries live in a directory");
    let tmp_check = dir.join(format!(".{}.check.tmp", std::process::id()));
    std::fs::write(&tmp_check, check_of(bytes))?;
    std::fs::rename(&tmp_check, sidecar(path))
}

/// Hex sha256 of bytes, the identity of a plugin everywhere in gantry.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A sha256 digest, kept as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses 64 hex digits, with or without a `sha256:` prefix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("`@sha256:` needs 64 hex digits, got `{hex}`"));
        }
        Ok(Self(hex.to_ascii_lowercase()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(sha256_hex(bytes))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

serde_as_text!(Digest, String);

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_list_compiled_and_pulled_components_and_clean_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let hex = "ab".repeat(32);
        store(&dir.path().join(format!("{hex}-0123456789abcdef.cwasm")), b"native").unwrap();
        std::fs::create_dir_all(dir.path().join("pulled")).unwrap();
        std::fs::write(dir.path().join(format!("pulled/{hex}.wasm")), b"component").unwrap();
        let entries = cache.entries();
        let kinds: Vec<_> = entries.iter().map(|e| (e.kind, e.digest.as_str(), e.size)).collect();
        assert_eq!(kinds, [(EntryKind::Compiled, hex.as_str(), 6), (EntryKind::Pulled, hex.as_str(), 9)]);
        // A pull killed before its rename, long ago, and one under way now.
        let killed = dir.path().join("pulled/.pull-1-0.tmp");
        std::fs::write(&killed, b"half").unwrap();
        let an_hour_ago = std::time::SystemTime::now() - LEFTOVER_AGE - std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(&killed).unwrap().set_modified(an_hour_ago).unwrap();
        let under_way = dir.path().join("pulled/.pull-2-0.tmp");
        std::fs::write(&under_way, b"writing").unwrap();
        assert_eq!(cache.clean().unwrap(), (3, 19));
        assert!(!killed.exists() && under_way.exists(), "only the old temporary file goes");
        std::fs::remove_file(&under_way).unwrap();
        assert!(cache.entries().is_empty());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.path().is_file()).collect();
        assert!(left.is_empty(), "sidecars go too: {left:?}");
    }

    #[test]
    fn a_description_is_kept_by_digest_and_cleaned_with_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let (hex, other) = ("cd".repeat(32), "ef".repeat(32));
        assert_eq!(cache.description(&hex), None);
        let info = super::super::PluginInfo {
            name: "http-check".into(),
            version: "0.1.0".into(),
            description: "checks a URL".into(),
            input_schema: serde_json::json!({"type": "object", "required": ["url"]}),
            capabilities: vec!["network".into()],
            outputs: Some(vec![super::super::DeclaredOutput { name: "status".into(), description: "the status".into() }]),
        };
        cache.store_description(&hex, &info);
        assert_eq!(cache.description(&hex), Some(info));
        assert_eq!(cache.description(&other), None, "another digest is another plugin");
        std::fs::write(cache.description_path(&other), b"{not json").unwrap();
        assert_eq!(cache.description(&other), None, "a damaged description is described again");
        assert_eq!(cache.clean().unwrap().0, 2);
        assert_eq!(cache.description(&hex), None);
    }
}
