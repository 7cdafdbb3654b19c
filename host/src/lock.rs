//! `gantry.lock`: the source and digest of every plugin a pipeline resolves, for every environment
//! and entity, beside the pipeline file. `plan` and `run` refuse a plugin whose digest or source
//! differs from its entry; `--locked` also refuses a plugin with no entry. TOML in a stable order,
//! one table per environment × entity × step, so a change reads as a small diff in review.

use crate::build::BuildOptions;
use crate::pipeline::{Digest, Loaded, PluginSource};
use crate::plan::{Plan, PlanError};
use std::path::{Path, PathBuf};

/// The lock file's name, beside the pipeline.
pub const LOCK_FILE: &str = "gantry.lock";
/// The format version written and read.
pub const LOCK_VERSION: u32 = 1;

/// Why a lock could not be read, written or honoured.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a lock of this version.
    #[error("{}: not a gantry lock file (version {LOCK_VERSION}): {message}", path.display())]
    Format {
        /// The lock file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A plugin differs from its entry.
    #[error("{}: step `{}` ({}/{}) {}: run `gantry lock` if the change is intended",
        .path.display(), .now.step, .now.environment, .now.entity, moved(now, locked))]
    Mismatch {
        /// The lock file.
        path: PathBuf,
        /// What the plan resolved.
        now: Box<Locked>,
        /// What the lock has.
        locked: Box<Locked>,
    },
    /// `--locked` and a plugin has no entry (or there is no lock file).
    #[error("{}: no entry for step `{step}` ({environment}/{entity}) and --locked was given: run `gantry lock` and commit the lock file", path.display())]
    Missing {
        /// The lock file.
        path: PathBuf,
        /// Environment.
        environment: String,
        /// Entity.
        entity: String,
        /// Step id.
        step: String,
    },
    /// Planning an environment × entity failed while writing the lock.
    #[error("{environment}/{entity}: {source}")]
    Plan {
        /// Environment.
        environment: String,
        /// Entity.
        entity: String,
        /// The cause.
        source: Box<PlanError>,
    },
}

/// How a plugin differs from its lock entry, each side said once: the digest a tag moved to, or
/// the reference that replaced the locked one.
fn moved(now: &Locked, locked: &Locked) -> String {
    if now.source == locked.source {
        format!("{} now resolves to {}, but the lock has {}", now.source, now.digest, locked.digest)
    } else {
        format!("uses {} {}, but the lock has {} {}", now.source, now.digest, locked.source, locked.digest)
    }
}

/// One plugin of one step for one environment and entity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Locked {
    /// Environment.
    pub environment: String,
    /// Entity.
    pub entity: String,
    /// Step id.
    pub step: String,
    /// Where the plugin comes from: a path relative to the pipeline, or an `oci://` reference.
    pub source: String,
    /// The component's sha256.
    pub digest: Digest,
}

/// The contents of a lock file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lock {
    /// Format version.
    pub version: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// Every plugin, sorted.
    #[serde(rename = "plugin", default)]
    pub plugins: Vec<Locked>,
}

/// The lock file beside `pipeline`.
pub fn path_beside(pipeline: &Path) -> PathBuf {
    pipeline.parent().unwrap_or(Path::new(".")).join(LOCK_FILE)
}

/// Every environment × entity a pipeline names (`development` and `default` when it names none).
pub fn targets(loaded: &Loaded) -> Vec<(String, String)> {
    let p = &loaded.pipeline;
    let or = |names: Vec<String>, default: &str| if names.is_empty() { vec![default.to_string()] } else { names };
    let environments = or(p.environments.keys().cloned().collect(), "development");
    let entities = or(p.entities.keys().cloned().collect(), "default");
    environments.iter().flat_map(|env| entities.iter().map(move |ent| (env.clone(), ent.clone()))).collect()
}

/// A step's source as the lock writes it: a path relative to the pipeline's directory where it can be.
fn source_text(source: &PluginSource, base: &Path) -> String {
    match source {
        PluginSource::Crate { path } | PluginSource::Component { path } => {
            let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
            let path = path.canonicalize().unwrap_or_else(|_| path.clone());
            path.strip_prefix(&base).map(Path::to_path_buf).unwrap_or(path).display().to_string()
        }
        PluginSource::Registry { reference } => format!("{}{reference}", crate::pipeline::source::OCI_SCHEME),
    }
}

fn base_of(loaded: &Loaded) -> PathBuf {
    loaded.path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Lock {
    /// Resolves the pipeline for every environment × entity (building and pulling as `plan` does).
    pub fn resolve(loaded: &Loaded, build: &BuildOptions) -> Result<Self, LockError> {
        let mut plugins = Vec::new();
        for (environment, entity) in targets(loaded) {
            let plan = crate::plan::plan(loaded, &environment, &entity, build).map_err(|e| LockError::Plan {
                environment: environment.clone(),
                entity: entity.clone(),
                source: Box::new(e),
            })?;
            plugins.extend(Self::entries(&plan, &base_of(loaded)));
        }
        plugins.sort();
        Ok(Self { version: LOCK_VERSION, pipeline: loaded.pipeline.name.value.clone(), plugins })
    }

    fn entries(plan: &Plan, base: &Path) -> Vec<Locked> {
        plan.steps
            .iter()
            .map(|s| Locked {
                environment: plan.environment.clone(),
                entity: plan.entity.clone(),
                step: s.id.clone(),
                source: source_text(&s.uses.source, base),
                digest: Digest::parse(&s.sha256).expect("a planned digest is 64 hex digits"),
            })
            .collect()
    }

    /// Reads the lock file at `path`; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LockError::Io { path: path.to_path_buf(), source }),
        };
        let lock: Self = toml::from_str(&text)
            .map_err(|e| LockError::Format { path: path.to_path_buf(), message: e.to_string() })?;
        if lock.version != LOCK_VERSION {
            let message = format!("version {} is not supported", lock.version);
            return Err(LockError::Format { path: path.to_path_buf(), message });
        }
        Ok(Some(lock))
    }

    /// The file's text: a header, then the tables in order.
    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).expect("a lock serialises");
        format!(
            "# Written by `gantry lock`: the plugins this pipeline runs, by digest. Commit it; do not edit.\n{body}"
        )
    }

    /// Writes the lock to `path` through a temporary file, so a reader never sees half of it.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let io = |source| LockError::Io { path: path.to_path_buf(), source };
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, self.to_text()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// What differs from `other`, a line each (`-` only here, `+` only there).
    pub fn diff(&self, other: &Self) -> Vec<String> {
        let line = |sign: char, l: &Locked| {
            format!("{sign} {}/{} {}: {} {}", l.environment, l.entity, l.step, l.source, l.digest)
        };
        let mut out: Vec<String> =
            self.plugins.iter().filter(|l| !other.plugins.contains(l)).map(|l| line('-', l)).collect();
        out.extend(other.plugins.iter().filter(|l| !self.plugins.contains(l)).map(|l| line('+', l)));
        out
    }
}

/// Checks a plan against the lock beside its pipeline: every plugin with an entry must match it;
/// with `locked`, every plugin must have one.
pub fn verify(loaded: &Loaded, plan: &Plan, locked: bool) -> Result<(), LockError> {
    let path = path_beside(&loaded.path);
    let lock = Lock::read(&path)?;
    for entry in Lock::entries(plan, &base_of(loaded)) {
        let found = lock.as_ref().and_then(|l| {
            l.plugins
                .iter()
                .find(|p| (&p.environment, &p.entity, &p.step) == (&entry.environment, &entry.entity, &entry.step))
        });
        match found {
            Some(l) if l.digest == entry.digest && l.source == entry.source => {}
            Some(l) => return Err(LockError::Mismatch { path, now: Box::new(entry), locked: Box::new(l.clone()) }),
            None if locked => {
                return Err(LockError::Missing {
                    path,
                    environment: entry.environment,
                    entity: entry.entity,
                    step: entry.step,
                })
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(environment: &str, step: &str, byte: u8) -> Locked {
        Locked {
            environment: environment.into(),
            entity: "default".into(),
            step: step.into(),
            source: "oci://r.example/a/b:1".into(),
            digest: Digest::of(&[byte]),
        }
    }

    #[test]
    fn a_lock_reads_back_as_written_and_a_diff_names_each_changed_entry() {
        let lock = Lock {
            version: LOCK_VERSION,
            pipeline: "p".into(),
            plugins: vec![entry("prod", "a", 1), entry("prod", "b", 2)],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        lock.write(&path).unwrap();
        assert_eq!(Lock::read(&path).unwrap(), Some(lock.clone()));
        let mut newer = lock.clone();
        newer.plugins[1] = entry("prod", "b", 3);
        let diff = newer.diff(&lock);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff[0].starts_with("- prod/default b:") && diff[1].starts_with("+ prod/default b:"), "{diff:?}");
        std::fs::write(&path, "version = 7\npipeline = \"p\"\n").unwrap();
        assert!(Lock::read(&path).unwrap_err().to_string().contains("version 7 is not supported"));
        assert_eq!(Lock::read(&dir.path().join("none")).unwrap(), None);
    }
}
