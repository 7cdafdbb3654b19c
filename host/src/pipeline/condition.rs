//! `if:` conditions, parsed once. As in GitHub Actions, a condition that calls
//! none of `failure()`, `always()` or `cancelled()` runs only when the
//! pipeline has not failed and every step it needs succeeded: it is read as
//! `success() && <condition>`, however it is written (`success()`,
//! `${{ success() }}`, `success() && env.X == 'y'`).

use super::expr::{self, Expr, Op};
use crate::sandbox::Outputs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The condition of a step without `if:`.
pub const DEFAULT_CONDITION: &str = "success()";

/// A parsed `if:` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Condition {
    text: String,
    expr: Expr,
}

/// What a condition is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Whether the pipeline has failed so far.
    pub failed: bool,
    /// Whether every step this one needs succeeded (or failed with `continue_on_error`).
    pub needs_ok: bool,
    /// Whether the run is being cancelled.
    pub cancelled: bool,
    /// The environment.
    pub environment: &'a str,
    /// The entity.
    pub entity: &'a str,
    /// Outputs of steps that succeeded.
    pub outputs: &'a BTreeMap<String, Outputs>,
}

impl Condition {
    /// Parses a condition, bare or wrapped in `${{ }}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let inner = trimmed.strip_prefix("${{").and_then(|t| t.strip_suffix("}}")).unwrap_or(trimmed);
        let expr = expr::parse(inner)?;
        Ok(Self { text: text.to_string(), expr })
    }

    /// The parsed expression.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether the condition decides about failure itself (calls `failure()`, `always()` or `cancelled()`);
    /// otherwise it implies `success()`.
    pub fn overrides_status(&self) -> bool {
        expr::calls(&self.expr).iter().any(|c| matches!(*c, "failure" | "always" | "cancelled"))
    }

    /// Evaluates the condition.
    pub fn eval(&self, facts: &Facts) -> bool {
        let success = !facts.failed && facts.needs_ok;
        if !self.overrides_status() && !success {
            return false;
        }
        truthy(&value(&self.expr, facts))
    }
}

impl Default for Condition {
    fn default() -> Self {
        Self::parse(DEFAULT_CONDITION).expect("the default condition parses")
    }
}

serde_as_text!(Condition, String);

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn truthy(v: &str) -> bool {
    v == "true"
}

fn value(e: &Expr, facts: &Facts) -> String {
    match e {
        Expr::Str(s) => s.clone(),
        Expr::Bool(b) => b.to_string(),
        Expr::Ref(path) => match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["environment"] => facts.environment.to_string(),
            ["entity"] => facts.entity.to_string(),
            ["steps", id, "outputs", name] => {
                facts.outputs.get(*id).and_then(|o| o.get(*name)).cloned().unwrap_or_default()
            }
            _ => String::new(),
        },
        Expr::Call(f) => match f.as_str() {
            "success" => !facts.failed && facts.needs_ok,
            "failure" => facts.failed,
            "always" => true,
            "cancelled" => facts.cancelled,
            _ => false,
        }
        .to_string(),
        Expr::Not(inner) => (!truthy(&value(inner, facts))).to_string(),
        Expr::Binary(op, a, b) => {
            let (a, b) = (value(a, facts), value(b, facts));
            match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::And => truthy(&a) && truthy(&b),
                Op::Or => truthy(&a) || truthy(&b),
            }
            .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str, failed: bool, needs_ok: bool) -> bool {
        let none = BTreeMap::new();
        let facts =
            Facts { failed, needs_ok, cancelled: false, environment: "production", entity: "e", outputs: &none };
        Condition::parse(text).unwrap().eval(&facts)
    }

    #[test]
    fn conditions_follow_the_pipeline_status() {
        assert!(eval("success()", false, true));
        assert!(!eval("success()", true, true));
        assert!(eval("${{ failure() }}", true, true));
        assert!(eval("always()", true, false));
        assert!(eval("environment == 'production' && !failure()", false, true));
        assert!(!eval("environment != 'production'", false, true));
    }

    #[test]
    fn success_in_any_spelling_requires_the_needs_to_have_succeeded() {
        for text in ["success()", "${{ success() }}", "success() && environment == 'production'", "entity == 'e'"] {
            assert!(eval(text, false, true), "{text} runs when its needs succeeded");
            assert!(!eval(text, false, false), "{text} is skipped when a need did not succeed");
        }
        assert!(eval("always()", false, false));
    }

    #[test]
    fn a_condition_survives_serde_as_written() {
        let c = Condition::parse("${{ failure() }}").unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json, serde_json::json!("${{ failure() }}"));
        assert_eq!(serde_json::from_value::<Condition>(json).unwrap(), c);
    }
}
