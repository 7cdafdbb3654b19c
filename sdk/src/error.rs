//! Step errors: whether a retry may help is the plugin's call.

use crate::__private::bindings::gantry::step::types as wit;
use std::fmt;

/// Why a step failed, and whether the host may retry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    retryable: bool,
}

impl Error {
    /// A failure that another attempt will not fix (bad input, a failed check).
    pub fn failed(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }

    /// A failure that another attempt may fix (timeout, 503, rate limit).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }

    /// The message for a person.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host may retry the step.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub(crate) fn into_wit(self) -> wit::StepError {
        wit::StepError { message: self.message, retryable: self.retryable }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::failed(format!("JSON error: {e}"))
    }
}
