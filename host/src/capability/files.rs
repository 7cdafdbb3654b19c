//! File access for a step: directories granted read-only, each preopened at
//! a guest path, and an optional writable artifacts directory. Nothing else
//! of the host's file system exists inside the sandbox.

use std::path::{Component, Path, PathBuf};

/// Where the artifacts directory appears inside the sandbox.
pub const ARTIFACTS_GUEST_PATH: &str = "/artifacts";

/// A host directory the step may read, and the path it has inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub guest: String,
}

/// What a step may read and write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// Read-only directories.
    pub read: Vec<FileGrant>,
    /// Writable directory, seen as [`ARTIFACTS_GUEST_PATH`].
    pub artifacts: Option<PathBuf>,
}

/// The sandbox path of a `files:` entry: absolute entries keep their path,
/// relative ones are rooted at `/` (`config/prod` is `/config/prod`).
pub fn guest_path(written: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in Path::new(written).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                return Err(format!("{written:?} contains `..`: name the directory itself"));
            }
            Component::Prefix(_) => return Err(format!("{written:?} is not a portable path")),
        }
    }
    if parts.is_empty() {
        return Err(format!("{written:?} would grant the whole file system: name a directory"));
    }
    Ok(format!("/{}", parts.join("/")))
}

impl FileGrant {
    /// A grant for `written`, resolved against `base` when relative.
    pub fn new(written: &str, base: &Path) -> Result<Self, String> {
        let guest = guest_path(written)?;
        let host = if Path::new(written).is_absolute() { PathBuf::from(written) } else { base.join(written) };
        let host = std::path::absolute(&host).unwrap_or(host);
        Ok(Self { host, guest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_absolute_and_never_climb() {
        assert_eq!(guest_path("config").unwrap(), "/config");
        assert_eq!(guest_path("./config/prod/").unwrap(), "/config/prod");
        assert_eq!(guest_path("/etc/app").unwrap(), "/etc/app");
        assert!(guest_path("../secrets").unwrap_err().contains(".."));
        assert!(guest_path("a/../../b").unwrap_err().contains(".."));
        assert!(guest_path("/").unwrap_err().contains("whole file system"));
        let g = FileGrant::new("config", Path::new("/srv/p")).unwrap();
        assert_eq!(g.host, PathBuf::from("/srv/p/config"));
    }
}
