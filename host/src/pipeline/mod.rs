//! Pipeline files: YAML → typed model, with every problem reported at once.
//!
//! Loading happens in three passes, each reporting *all* its problems with
//! `file:line:column` and the field: YAML syntax; structure, by walking the
//! parsed nodes against the JSON Schema derived from [`model::Pipeline`]
//! (unknown fields with a "did you mean", wrong types, missing fields); and
//! meaning ([`validate`]: duplicate ids, unknown `needs`, cycles, expressions
//! naming unknown steps or variables, undeclared secrets, missing plugins).
//! A file with any problem never reaches the planner.

pub mod checked;
pub mod condition;
pub mod expr;
mod load;
pub mod model;
mod schema_walk;
pub mod source;
pub mod units;
mod validate;

pub use checked::{ApprovalPolicy, Checked, ResourceLimits, RetryPolicy};
pub use condition::Condition;
pub use load::{load, load_str, load_str_with, load_with, Loaded};
pub use model::{Loc, Pipeline, Position, StepDef};
pub use schema_walk::unknown;
pub use source::{Digest, PluginRef, PluginSource};

use std::fmt;
use std::path::PathBuf;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Where in it.
    pub at: Position,
    /// The field, as a path such as `steps[2].needs[0]`.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file.display(), self.at, self.field, self.message)
    }
}

/// Every problem found in a pipeline file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The JSON Schema of pipeline files, with the fields of the capabilities gantry ships.
pub fn json_schema() -> serde_json::Value {
    json_schema_with(&crate::capability::Capabilities::builtin())
}

/// The JSON Schema of pipeline files whose steps may be granted `capabilities` (`gantry schema`).
pub fn json_schema_with(capabilities: &crate::capability::Capabilities) -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(model::Pipeline)).unwrap_or_default();
    units::extend_schema(&mut schema, "$defs", capabilities);
    schema
}
