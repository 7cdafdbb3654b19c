//! What a step is granted: network origins and secrets bound to origins.
//! Everything defaults to deny; a step gets only what its grants name.

pub mod network;
pub mod secrets;

pub use network::{Grant, GrantError, NetworkPolicy};
pub use secrets::{Secret, Secrets};

/// Everything a step call is allowed to reach.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Origins the step may send requests to.
    pub network: NetworkPolicy,
    /// Secrets the step may ask the host to apply, with their bindings.
    pub secrets: Secrets,
}
