//! What a step is granted: network origins, address ranges, secrets bound to
//! origins, SQL databases, read-only directories and an artifacts directory, and
//! the grants of the capability units (TLS targets, DNS names, Redis servers).
//! Everything defaults to deny; a step gets only what its grants name.
//!
//! A capability registered through [`unit::Capability`] lives in a folder of its own here and
//! joins [`builtin`] with one line; see `docs/architecture.md`.

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
pub mod unit;
pub mod vault;

pub use address::Resolver;
pub use database::{Database, DatabaseGrant, Databases, Engine, Location, TlsMode};
pub use files::{FileGrant, Files};
pub use network::{Grant, GrantError, NetworkPolicy};
pub use secrets::{Redactor, Secret, Secrets};
pub use source::{AwsSecretStore, Patience, SecretFrom, SecretSource, SecretStores, Store};
pub use unit::{Capabilities, Capability, UnitGrants};
pub use vault::{VaultAuth, VaultStore};

/// Declares the built-in units' folders and registers them: one line per unit, `folder::Unit`.
macro_rules! units {
    ($($folder:ident :: $unit:ident),* $(,)?) => {
        $(pub mod $folder;)*

        /// The capabilities gantry ships as units, in registration order.
        pub fn builtin() -> Vec<std::sync::Arc<dyn Capability>> {
            vec![$(std::sync::Arc::new($folder::$unit)),*]
        }
    };
}

units! {
    tls::Tls,
    dns::Dns,
    redis::Redis,
}

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
    /// Grants of registered capabilities, by name, with their secrets' values.
    pub units: UnitGrants,
    /// Only what reads goes out: requests that [`network::may_change`] nothing and statements of
    /// read-only transactions (a pre-flight).
    pub reads_only: bool,
}

impl Grants {
    /// The same reach for reading only: what a step's pre-flight is given.
    pub fn for_preflight(&self) -> Grants {
        let mut grants = self.clone();
        grants.reads_only = true;
        grants.databases = self.databases.read_only();
        grants.files.artifacts = None;
        grants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preflight_reads_through_the_same_grants_with_databases_read_only() {
        let mut grants = Grants::default();
        grants.databases.insert(Database {
            grant: DatabaseGrant::for_test("postgres://127.0.0.1:5432/app", false),
            password: "pw".into(),
            preflight_of_writable: false,
        });
        let read = grants.for_preflight();
        assert!(read.reads_only && !grants.reads_only);
        let app = read.databases.get("app").unwrap();
        assert!(app.grant.readonly && app.preflight_of_writable, "read-only, its role not refused");
        assert!(!grants.databases.get("app").unwrap().grant.readonly, "the run's own grants stay");
    }
}
