//! Step errors: whether a retry may help, or a person must decide, is the plugin's call.

use crate::__private::bindings::gantry::step::types as wit;
use std::fmt;

/// What a failed step asks of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Another attempt will not help: the run fails and rolls back.
    Failed,
    /// Another attempt may help: the host retries as the step's `retry:` allows.
    Retryable,
    /// The step could not decide: the run pauses without rolling back, for a person.
    Inconclusive,
}

/// Why a step failed, and what the run should do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    failure: Failure,
}

impl Error {
    /// A failure that another attempt will not fix (bad input, a failed check).
    pub fn failed(message: impl Into<String>) -> Self {
        Self { message: message.into(), failure: Failure::Failed }
    }

    /// A failure that another attempt may fix (timeout, 503, rate limit).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), failure: Failure::Retryable }
    }

    /// The step cannot tell whether to go on (a gate without data): the run pauses, changes stay as
    /// they are, and a person decides with `gantry resume` (run the step again) or `gantry rollback`.
    pub fn inconclusive(message: impl Into<String>) -> Self {
        Self { message: message.into(), failure: Failure::Inconclusive }
    }

    /// What the run does about it.
    pub fn failure(&self) -> Failure {
        self.failure
    }

    /// The message for a person.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host may retry the step.
    pub fn is_retryable(&self) -> bool {
        self.failure == Failure::Retryable
    }

    pub(crate) fn into_wit(self) -> wit::StepError {
        let failure = match self.failure {
            Failure::Failed => wit::Failure::Failed,
            Failure::Retryable => wit::Failure::Retryable,
            Failure::Inconclusive => wit::Failure::Inconclusive,
        };
        wit::StepError { message: self.message, failure }
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
