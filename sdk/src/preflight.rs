//! What a step reads before a run changes anything ([`crate::Step::preflight`]).

use crate::__private::bindings::exports::gantry::step::preflight as wit;

/// One thing a step read in its pre-flight, and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was read, e.g. `metric error_rate` or `listener`.
    pub name: String,
    /// What the read found, in a person's words.
    pub answer: String,
    /// Whether the step can go ahead, as far as this check knows.
    pub passed: bool,
}

impl Check {
    /// A check that found what the step needs.
    pub fn passed(name: impl Into<String>, answer: impl Into<String>) -> Self {
        Check { name: name.into(), answer: answer.into(), passed: true }
    }

    /// A check that found the step cannot go ahead: the host stops the run before any change.
    pub fn failed(name: impl Into<String>, answer: impl Into<String>) -> Self {
        Check { name: name.into(), answer: answer.into(), passed: false }
    }

    /// `passed` when `read` succeeded, with its answer; `failed` with the error otherwise.
    pub fn of(name: impl Into<String>, read: Result<String, crate::Error>) -> Self {
        match read {
            Ok(answer) => Check::passed(name, answer),
            Err(e) => Check::failed(name, e.to_string()),
        }
    }

    pub(crate) fn into_wit(self) -> wit::Check {
        wit::Check { name: self.name, answer: self.answer, passed: self.passed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_fails_is_a_failed_check_with_its_error() {
        let ok = Check::of("listener", Ok("2 target groups".into()));
        assert!(ok.passed);
        let down = Check::of("metric error_rate", Err(crate::Error::failed("connection refused")));
        assert_eq!(down, Check::failed("metric error_rate", "connection refused"));
    }
}
