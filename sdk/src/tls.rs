//! TLS handshakes with the `host:port` targets the pipeline granted the step (`tls:`): the host
//! connects, shakes hands, verifies the chain against the public roots and the step's granted CA,
//! and reports what it saw. An expired, misnamed or self-signed certificate is reported with its
//! chain, not refused, so a check can say what is wrong with it.

use crate::__private::bindings::gantry::step::tls as wit;

pub use wit::{Certificate, Handshake, ProbeError, Starttls, Trust, VerifyFailure};

/// Shakes hands with `target` (`host:port`, 443 when left out), TLS from the first byte.
pub fn probe(target: &str) -> Result<Handshake, ProbeError> {
    wit::probe(target, Starttls::None)
}

/// Shakes hands with `target` after speaking `starttls` (SMTP's `STARTTLS`, PostgreSQL's `SSLRequest`).
pub fn probe_starttls(target: &str, starttls: Starttls) -> Result<Handshake, ProbeError> {
    wit::probe(target, starttls)
}

impl Handshake {
    /// Whether the chain verified for the probed name at probe time.
    pub fn verified(&self) -> bool {
        self.trusted_by.is_some()
    }

    /// The server's own certificate.
    pub fn leaf(&self) -> Option<&Certificate> {
        self.chain.first()
    }

    /// The protocol as a number to compare: 12 for `TLSv1.2`, 13 for `TLSv1.3`.
    pub fn version(&self) -> u8 {
        parse_version(&self.protocol).unwrap_or(0)
    }
}

/// `1.2`, `TLSv1.2` or `tls1.3` as 12 or 13 (10 and 11 for 1.0 and 1.1).
pub fn parse_version(text: &str) -> Option<u8> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.trim_start_matches("tlsv").trim_start_matches("tls");
    match digits {
        "1.0" | "1" => Some(10),
        "1.1" => Some(11),
        "1.2" => Some(12),
        "1.3" => Some(13),
        _ => None,
    }
}

impl ProbeError {
    /// The error for a person (the generated `Display` is the debug form).
    pub fn message(&self) -> String {
        match self {
            ProbeError::Denied(m) => format!("denied: {m}"),
            ProbeError::Timeout(m) => format!("timed out: {m}"),
            ProbeError::Transport(m) | ProbeError::Handshake(m) | ProbeError::Invalid(m) => m.clone(),
        }
    }
}

impl From<ProbeError> for crate::Error {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Timeout(_) | ProbeError::Transport(_) => crate::Error::retryable(e.message()),
            _ => crate::Error::failed(e.message()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_read_as_people_write_them() {
        assert_eq!(parse_version("TLSv1.2"), Some(12));
        assert_eq!(parse_version("1.3"), Some(13));
        assert_eq!(parse_version("tls1.0"), Some(10));
        assert_eq!(parse_version("ssl3"), None);
    }
}
