//! What a step is granted: network origins, address ranges, secrets bound to
//! origins, SQL databases, TLS targets and DNS names to probe, read-only
//! directories and an artifacts directory.
//! Everything defaults to deny; a step gets only what its grants name.

pub mod address;
pub mod aws_credentials;
pub mod database;
pub mod declared;
pub mod files;
pub mod network;
pub mod probe;
pub mod secrets;
pub mod sigv4;
pub mod source;
pub mod statement;
pub mod vault;

pub use address::Resolver;
pub use database::{Database, DatabaseGrant, Databases, Engine, Location, TlsMode};
pub use files::{FileGrant, Files};
pub use network::{Grant, GrantError, NetworkPolicy};
pub use probe::Probes;
pub use secrets::{Redactor, Secret, Secrets};
pub use source::{AwsSecretStore, Patience, SecretFrom, SecretSource, SecretStores, Store};
pub use vault::{VaultAuth, VaultStore};

/// Everything a step call is allowed to reach.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Origins the step may send requests to.
    pub network: NetworkPolicy,
    /// Secrets the step may ask the host to apply, with their bindings.
    pub secrets: Secrets,
    /// Directories the step may read, and where it may write artifacts.
    pub files: Files,
    /// SQL databases the step may open, with the passwords the host signs in with.
    pub databases: Databases,
    /// TLS targets the step may shake hands with and names it may look up.
    pub probes: Probes,
}
