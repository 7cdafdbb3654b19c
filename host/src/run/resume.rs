//! Reopening a run from its journal, for `resume` and `rollback`: the plan it
//! recorded when it started (never the pipeline file as it is now) and what
//! the journal fold ([`super::fold`]) says is changed now.

use super::fold::{fold, Folded};
use super::store::StoredJournal;
use crate::plan::Plan;
use crate::sandbox::Outputs;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A run as its journal left it.
#[derive(Debug, Clone)]
pub struct Reopened {
    /// The plan the run recorded when it started.
    pub plan: Plan,
    /// What the journal says, folded.
    pub fold: Folded,
    /// Steps completed and in place, in completion order.
    pub completed: Vec<(String, Outputs)>,
    /// The status it finished with, if it finished (and no later session took it up again).
    pub finished: Option<String>,
    /// It had failed, was interrupted, rejected or rolling back: it may only go on rolling back.
    pub rolling_back: bool,
    /// The step whose inconclusive result paused it, while it waits for a person.
    pub paused: Option<String>,
    /// Checkpoints of the steps whose change is in place (key → first value).
    pub checkpoints: BTreeMap<String, Outputs>,
    /// Steps cut off part-way (started, neither finished nor undone), in the order they stopped.
    pub partial: Vec<String>,
    /// Steps cut off after a change they recorded no checkpoint for: the first request that may
    /// have changed something, e.g. `PATCH https://api.notion.com/v1/pages/…`.
    pub changes: BTreeMap<String, String>,
    /// The pipeline file it was planned from, for messages.
    pub file: Option<PathBuf>,
    /// Journal lines cut off by a crash, ignored.
    pub torn: Vec<String>,
    /// The sequence number the next event gets.
    pub next_seq: u64,
    /// The session number the next process writes under.
    pub next_session: u32,
    /// The approval the run waits for, while it waits.
    pub awaiting: Option<super::approval::Request>,
    /// Gated steps approved so far.
    pub approved: std::collections::BTreeSet<String>,
    /// Who started the run, as recorded (empty in journals from before it was).
    pub started_by: String,
    /// Steps stopped at a gate inside them that has since been approved: they go on from their
    /// checkpoints when the run continues (never undone first); a rollback still undoes them.
    pub resumable: std::collections::BTreeSet<String>,
}

/// Why a run cannot be reopened.
#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    /// The journal does not say what ran.
    #[error("run {id}: {what}")]
    Incomplete {
        /// Run id.
        id: String,
        /// What is missing.
        what: String,
    },
}

impl Reopened {
    /// Reads what a run did from its journal.
    pub fn from_journal(id: &str, journal: StoredJournal) -> Result<Self, ReopenError> {
        let incomplete = |what: String| ReopenError::Incomplete { id: id.to_string(), what };
        let folded = fold(&journal.records);
        let unstarted = match folded.reading_secrets {
            // Stopped while it read its secrets: no plan was recorded and nothing ran.
            true => "it stopped while reading its secrets, before anything ran: run the pipeline again",
            false => "the journal has no start",
        };
        let (file, plan) = folded.start.clone().ok_or_else(|| incomplete(unstarted.into()))?;
        let plan = Plan::read(plan).map_err(|e| {
            incomplete(format!(
                "the plan recorded at its start cannot be read ({e}); it was written by another gantry version"
            ))
        })?;
        if !journal.torn.is_empty() {
            tracing::warn!(run = id, "ignoring {} journal line(s) cut off by a crash", journal.torn.len());
        }
        let paused = match folded.phase {
            Some(super::fold::RunPhase::Paused) => folded.paused.clone(),
            _ => None,
        };
        Ok(Self {
            plan,
            completed: folded.completed(),
            finished: folded.finished.clone(),
            rolling_back: folded.rolling_back(),
            paused,
            checkpoints: folded.checkpoints(),
            partial: folded.cut_off(),
            changes: folded.unknown_changes(),
            file,
            torn: journal.torn,
            next_seq: folded.last_seq + 1,
            next_session: folded.last_session + 1,
            awaiting: folded.awaiting.clone(),
            approved: folded.approved.clone(),
            started_by: folded.started_by.clone(),
            resumable: folded.resumable.clone(),
            fold: folded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blue-green release recorded by gantry before capability units (contract 0.3.4): its plan
    /// still reads, its TLS and DNS grants (recorded as `probes`) read into the units' grants with
    /// the lines a plan of today shows, and everything else writes back as it was read, so resuming
    /// or rolling back a run recorded then works as before.
    #[test]
    fn a_journal_recorded_before_capability_units_reopens_unchanged() {
        let text = include_str!("../../../tests/fixtures/journals/blue-green-before-units.jsonl");
        let journal = super::super::store::file::parse_journal(text);
        assert!(journal.torn.is_empty());
        let recorded: serde_json::Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["event"] == "run_started")
            .map(|r| r["plan"].clone())
            .unwrap();
        let reopened = Reopened::from_journal("1796675406986-14980", journal).unwrap();
        assert_eq!(reopened.plan.steps.len(), 10);
        let lines = |id: &str, unit: &str| -> Vec<String> {
            let step = reopened.plan.step(id).unwrap();
            step.capabilities.get(unit).map(|g| g.lines.iter().map(|l| l.review.clone()).collect()).unwrap_or_default()
        };
        assert_eq!(lines("tls", "tls"), ["127.0.0.1:18090", "trusting pipelines/certs/demo-ca.pem"]);
        assert_eq!(lines("verify-dns", "dns"), ["www.the7space.example", "asking 127.0.0.1:18091"]);
        let granted: Vec<usize> = reopened.plan.steps.iter().map(|s| s.capabilities.len()).collect();
        assert_eq!(granted.iter().sum::<usize>(), 2, "no other step gains a grant: {granted:?}");
        assert_eq!(reopened.plan.step("migrate").map(|s| s.databases.len()), Some(1));
        // Written back, the plan is the recorded one with `probes` become the units' grants.
        let mut written = serde_json::to_value(&reopened.plan).unwrap();
        let mut recorded = recorded;
        for (w, r) in written["steps"].as_array_mut().unwrap().iter_mut().zip(recorded["steps"].as_array_mut().unwrap()) {
            r.as_object_mut().unwrap().remove("probes");
            w.as_object_mut().unwrap().remove("capabilities");
        }
        assert_eq!(written, recorded);
        assert_eq!(reopened.completed.len(), 10, "every step of the finished run is in place");
    }
}
