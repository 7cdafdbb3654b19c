//! `uses:` parsed once: where a plugin comes from and the digest it is pinned
//! to. Validation, planning and `gantry step run` all read it through
//! [`PluginRef::parse`], so the reference format is written down here only.

use serde::{Deserialize, Serialize};
pub use crate::registry::OCI_SCHEME;
pub use crate::sandbox::cache::Digest;
use std::fmt;
use std::path::{Path, PathBuf};

/// What separates a reference from its pinned digest.
pub const PIN_SEPARATOR: &str = "@sha256:";

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PluginSource {
    /// A plugin crate directory, built on demand.
    Crate {
        /// The directory holding `Cargo.toml`.
        path: PathBuf,
    },
    /// A component file.
    Component {
        /// The `.wasm` file.
        path: PathBuf,
    },
    /// An OCI registry reference, `oci://registry/repository:tag`.
    Registry {
        /// The reference without the scheme, e.g. `registry.example/team/alb-shift:1.2.0`.
        reference: String,
    },
}

/// A plugin reference: its source and, optionally, the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    /// Where it comes from.
    pub source: PluginSource,
    /// The digest the component must have, when pinned.
    pub pin: Option<Digest>,
}

impl PluginRef {
    /// Parses `uses:` text; relative paths are taken from `base` (the pipeline's directory).
    ///
    /// Example: `plugins/http-check`, `build/check.wasm@sha256:<64 hex>`, `oci://registry.example/team/check:1.0`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let (reference, pin) = match text.rsplit_once(PIN_SEPARATOR) {
            Some((r, hex)) => (r, Some(Digest::parse(hex)?)),
            None => (text, None),
        };
        if let Some(reference) = reference.strip_prefix(OCI_SCHEME) {
            if reference.is_empty() || !reference.contains('/') {
                return Err(format!("`{text}`: an OCI reference is oci://registry/repository[:tag][@sha256:<digest>]"));
            }
            return Ok(Self { source: PluginSource::Registry { reference: reference.to_string() }, pin });
        }
        if reference.is_empty() {
            return Err("`uses:` is empty: give a plugin crate directory, a .wasm file or an oci:// reference".into());
        }
        let path = base.join(reference);
        let source = if path.is_dir() && path.join("Cargo.toml").is_file() {
            PluginSource::Crate { path }
        } else if path.is_file() {
            PluginSource::Component { path }
        } else {
            return Err(format!(
                "plugin `{reference}` not found (looked for {}): give a plugin crate directory or a .wasm file",
                path.display()
            ));
        };
        Ok(Self { source, pin })
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            PluginSource::Crate { path } | PluginSource::Component { path } => write!(f, "{}", path.display())?,
            PluginSource::Registry { reference } => write!(f, "{OCI_SCHEME}{reference}")?,
        }
        match &self.pin {
            Some(pin) => write!(f, "@{pin}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_parses_into_a_source_and_a_pin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("crate")).unwrap();
        std::fs::write(dir.path().join("crate/Cargo.toml"), "").unwrap();
        std::fs::write(dir.path().join("p.wasm"), "").unwrap();
        let hex = "AB".repeat(32);
        let c = PluginRef::parse("crate", dir.path()).unwrap();
        assert_eq!(c.source, PluginSource::Crate { path: dir.path().join("crate") });
        let f = PluginRef::parse(&format!("p.wasm@sha256:{hex}"), dir.path()).unwrap();
        assert_eq!(f.source, PluginSource::Component { path: dir.path().join("p.wasm") });
        assert_eq!(f.pin.unwrap().hex(), "ab".repeat(32));
        let o = PluginRef::parse("oci://127.0.0.1:5000/team/check:1.0", dir.path()).unwrap();
        assert_eq!(o.source, PluginSource::Registry { reference: "127.0.0.1:5000/team/check:1.0".into() });
        assert!(PluginRef::parse("p.wasm@sha256:abc", dir.path()).unwrap_err().contains("64 hex digits"));
        assert!(PluginRef::parse("missing", dir.path()).unwrap_err().contains("not found"));
        assert!(PluginRef::parse("oci://nothing", dir.path()).is_err());
    }

    #[test]
    fn a_plugin_ref_survives_serde() {
        let r = PluginRef {
            source: PluginSource::Registry { reference: "r.example/a/b:1".into() },
            pin: Some(Digest::parse(&"0".repeat(64)).unwrap()),
        };
        let back: PluginRef = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(serde_json::from_value::<Digest>(serde_json::json!("xyz")).is_err());
    }
}
