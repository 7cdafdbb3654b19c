//! Rolling a pipeline out to many entities: which entities a `--entity`
//! selection names, and the waves they run in. Each entity's run is an
//! ordinary run (its own plan, lock, journal and secrets); a rollout only
//! decides the order and when to stop starting more.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `--entity` value that selects every declared entity.
pub const ALL: &str = "all";

/// One wave: named entities, a share of all selected ones, or whatever is left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wave {
    /// These entities (those among the selection).
    Entities(Vec<String>),
    /// This percentage of the selected entities, rounded up, taken from those not yet in a wave.
    Percent(u32),
    /// Every selected entity not yet in a wave.
    Rest,
}

impl Wave {
    /// Parses a wave written as text: `50%` or `rest`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "rest" {
            return Ok(Wave::Rest);
        }
        match text.strip_suffix('%').map(|n| n.trim().parse::<u32>()) {
            Some(Ok(n)) if (1..=100).contains(&n) => Ok(Wave::Percent(n)),
            _ => Err(format!("wave `{text}`: write a list of entities, a share such as `25%` (1-100), or `rest`")),
        }
    }
}

impl fmt::Display for Wave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wave::Entities(names) => write!(f, "[{}]", names.join(", ")),
            Wave::Percent(n) => write!(f, "{n}%"),
            Wave::Rest => f.write_str("rest"),
        }
    }
}

/// How a pipeline rolls out to many entities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Waves in order; entities no wave takes run in a last wave of their own.
    pub waves: Vec<Wave>,
    /// Once this many entities have failed, no further wave starts.
    pub failure_budget: u32,
}

impl Default for Rollout {
    fn default() -> Self {
        Self { waves: vec![Wave::Rest], failure_budget: Self::DEFAULT_FAILURE_BUDGET }
    }
}

impl Rollout {
    /// The first failure stops the rollout unless the pipeline says otherwise.
    pub const DEFAULT_FAILURE_BUDGET: u32 = 1;

    /// The selected entities in waves, in order; empty waves are dropped and nobody is left out.
    pub fn waves_of(&self, selected: &[String]) -> Vec<Vec<String>> {
        let mut left: Vec<String> = selected.to_vec();
        let mut waves = Vec::new();
        for wave in &self.waves {
            let taken: Vec<String> = match wave {
                Wave::Entities(names) => left.iter().filter(|e| names.contains(e)).cloned().collect(),
                Wave::Percent(n) => {
                    let count = (selected.len() * *n as usize).div_ceil(100);
                    left.iter().take(count).cloned().collect()
                }
                Wave::Rest => left.clone(),
            };
            left.retain(|e| !taken.contains(e));
            if !taken.is_empty() {
                waves.push(taken);
            }
        }
        if !left.is_empty() {
            waves.push(left);
        }
        waves
    }
}

/// Whether an `--entity` value names more than one run: `all`, or a comma-separated list.
pub fn is_many(spec: &str) -> bool {
    spec == ALL || spec.contains(',')
}

/// The entities an `--entity` value selects, in declaration order for `all`, as written for a list.
pub fn select(spec: &str, declared: &[String]) -> Result<Vec<String>, String> {
    if declared.is_empty() {
        return Err(format!("--entity {spec}: the pipeline declares no entities"));
    }
    if spec == ALL {
        return Ok(declared.to_vec());
    }
    let mut chosen: Vec<String> = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !declared.iter().any(|d| d == name) {
            return Err(format!("--entity: entity `{name}` is not declared; declared: {}", declared.join(", ")));
        }
        if !chosen.iter().any(|c| c == name) {
            chosen.push(name.to_string());
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn waves_take_named_entities_then_shares_then_the_rest() {
        let all = names(&["a", "b", "c", "d", "e", "f"]);
        let rollout =
            Rollout { waves: vec![Wave::Entities(names(&["c"])), Wave::Percent(33), Wave::Rest], failure_budget: 1 };
        assert_eq!(rollout.waves_of(&all), vec![names(&["c"]), names(&["a", "b"]), names(&["d", "e", "f"])]);
        // Nobody is left out; a wave that takes nobody disappears.
        let partial = Rollout { waves: vec![Wave::Entities(names(&["zz"])), Wave::Percent(50)], failure_budget: 1 };
        assert_eq!(partial.waves_of(&all), vec![names(&["a", "b", "c"]), names(&["d", "e", "f"])]);
        assert_eq!(Rollout::default().waves_of(&all), vec![all.clone()]);
        assert_eq!(Rollout::default().waves_of(&names(&["b"])), vec![names(&["b"])]);
    }

    #[test]
    fn selections_and_wave_text() {
        let declared = names(&["a", "b", "c"]);
        assert_eq!(select("all", &declared).unwrap(), declared);
        assert_eq!(select("c, a,c", &declared).unwrap(), names(&["c", "a"]));
        assert!(select("a,x", &declared).unwrap_err().contains("entity `x` is not declared"));
        assert!(select("all", &[]).unwrap_err().contains("declares no entities"));
        assert!(is_many("all") && is_many("a,b") && !is_many("a"));
        assert_eq!(Wave::parse("25%").unwrap(), Wave::Percent(25));
        assert_eq!(Wave::parse("rest").unwrap(), Wave::Rest);
        assert!(Wave::parse("0%").is_err() && Wave::parse("half").is_err());
    }
}
