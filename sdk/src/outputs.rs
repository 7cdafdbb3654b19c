//! Step outputs: named strings later steps read as `steps.<id>.outputs.<name>`.

use crate::__private::bindings::gantry::step::types as wit;
use std::collections::BTreeMap;
use std::fmt::Display;

/// The named outputs of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs(BTreeMap<String, String>);

impl Outputs {
    /// No outputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an output, formatted with `Display`.
    ///
    /// ```
    /// let out = gantry_sdk::Outputs::new().with("status", 200);
    /// assert_eq!(out.get("status"), Some("200"));
    /// ```
    pub fn with(mut self, name: impl Into<String>, value: impl Display) -> Self {
        self.set(name, value);
        self
    }

    /// Sets an output in place.
    pub fn set(&mut self, name: impl Into<String>, value: impl Display) {
        self.0.insert(name.into(), value.to_string());
    }

    /// Reads an output back.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub(crate) fn into_wit(self) -> wit::Outcome {
        wit::Outcome { outputs: self.0.into_iter().collect() }
    }
}
