//! DNS lookups of the names the pipeline granted the step (`dns:`), asked of the step's granted
//! resolver or the system's, with no cache in between: each lookup is the resolver's answer now.

use crate::__private::bindings::gantry::step::dns as wit;

pub use wit::{Answer, LookupError, RecordType};

/// Looks up `kind` records of `name`; empty when the name or the type does not exist.
pub fn lookup(name: &str, kind: RecordType) -> Result<Vec<Answer>, LookupError> {
    wit::lookup(name, kind)
}

/// Parses `A`, `AAAA`, `CNAME`, `TXT`, `MX` or `CAA` (any case).
pub fn parse_type(text: &str) -> Option<RecordType> {
    Some(match text.to_ascii_uppercase().as_str() {
        "A" => RecordType::A,
        "AAAA" => RecordType::Aaaa,
        "CNAME" => RecordType::Cname,
        "TXT" => RecordType::Txt,
        "MX" => RecordType::Mx,
        "CAA" => RecordType::Caa,
        _ => return None,
    })
}

impl LookupError {
    /// The error for a person (the generated `Display` is the debug form).
    pub fn message(&self) -> String {
        match self {
            LookupError::Denied(m) => format!("denied: {m}"),
            LookupError::Timeout(m) => format!("timed out: {m}"),
            LookupError::Transport(m) | LookupError::Invalid(m) => m.clone(),
        }
    }
}

impl From<LookupError> for crate::Error {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::Timeout(_) | LookupError::Transport(_) => crate::Error::retryable(e.message()),
            _ => crate::Error::failed(e.message()),
        }
    }
}
