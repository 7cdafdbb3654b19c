//! Approval gates: who asks, who may decide, and whether a request still
//! stands. The executor records a request before a gated step and stops
//! starting steps; `gantry approve` and `gantry reject` decide from the
//! journal, in another process, on any runner that shares the run store.

use super::fold::RunPhase;
use super::journal::{Journal, JournalError};
use super::Event;
use crate::pipeline::ApprovalPolicy;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The variable naming who runs gantry; the login name (`USER`, `LOGNAME`) when unset.
pub const USER_ENV: &str = "GANTRY_USER";

/// Who runs this process, as approvals record and check it.
pub fn current_user() -> String {
    [USER_ENV, "USER", "LOGNAME"]
        .iter()
        .find_map(|var| std::env::var(var).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// A request for approval, as the journal holds it while it is open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The gated step.
    pub step: String,
    /// Who may approve; anyone when empty.
    pub approvers: Vec<String>,
    /// Whether the user who started the run is refused.
    pub prevent_self_review: bool,
    /// Who started the run.
    pub requested_by: String,
    /// When the request lapses, ms since the Unix epoch.
    pub deadline_ms: f64,
    /// A gate inside the step (`stage 25%`), asked for by the plugin; `None` for the gate before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
}

/// What a person decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The step may start.
    Approve,
    /// The run is rolled back.
    Reject,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        })
    }
}

/// Why a decision is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApprovalError {
    /// The user is not among the approvers.
    #[error("{user} may not {decision} step `{step}`: its approvers are {}", approvers.join(", "))]
    NotAnApprover {
        /// Who tried.
        user: String,
        /// The decision.
        decision: Decision,
        /// The gated step.
        step: String,
        /// Who may.
        approvers: Vec<String>,
    },
    /// The user started the run and the gate asks for someone else.
    #[error("{user} started this run and step `{step}` has prevent_self_review: another approver must decide")]
    SelfReview {
        /// Who tried.
        user: String,
        /// The gated step.
        step: String,
    },
}

impl Request {
    /// The request a gated step makes now, in a run started by `requested_by`.
    pub fn new(step: &str, policy: &ApprovalPolicy, requested_by: &str, now_ms: f64) -> Self {
        Self {
            step: step.to_string(),
            approvers: policy.approvers.clone(),
            prevent_self_review: policy.prevent_self_review,
            requested_by: requested_by.to_string(),
            deadline_ms: now_ms + policy.timeout.as_secs_f64() * 1e3,
            gate: None,
        }
    }

    /// Whether the request has lapsed at `now_ms`: it then counts as rejected.
    pub fn expired(&self, now_ms: f64) -> bool {
        now_ms > self.deadline_ms
    }

    /// Whether `user` may take `decision`. Approvers may decide either way; the user who started
    /// the run may always reject it (withdraw), and may approve only without `prevent_self_review`.
    pub fn check(&self, user: &str, decision: Decision) -> Result<(), ApprovalError> {
        let is_requester = user == self.requested_by;
        if decision == Decision::Reject && is_requester {
            return Ok(());
        }
        if !self.approvers.is_empty() && !self.approvers.iter().any(|a| a == user) {
            return Err(ApprovalError::NotAnApprover {
                user: user.to_string(),
                decision,
                step: self.step.clone(),
                approvers: self.approvers.clone(),
            });
        }
        if decision == Decision::Approve && self.prevent_self_review && is_requester {
            return Err(ApprovalError::SelfReview { user: user.to_string(), step: self.step.clone() });
        }
        Ok(())
    }

    /// What is approved: the step, or `step@gate` for a gate inside it.
    pub fn key(&self) -> String {
        match &self.gate {
            Some(gate) => super::gate_key(&self.step, gate),
            None => self.step.clone(),
        }
    }

    /// The deadline as RFC 3339, for people.
    pub fn deadline(&self) -> String {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(self.deadline_ms.max(0.0) / 1e3);
        humantime::format_rfc3339_seconds(at).to_string()
    }
}

/// Records `by`'s decision on `request`, durably, before anything acts on it: an approval, or a
/// rejection and the rollback it starts.
pub async fn decide(
    journal: &Journal,
    request: &Request,
    decision: Decision,
    by: &str,
    comment: Option<String>,
) -> Result<(), JournalError> {
    match decision {
        Decision::Approve => {
            let (step, gate) = (request.step.clone(), request.gate.clone());
            journal.write(Event::Approved { step, gate, by: by.to_string(), comment }).await
        }
        Decision::Reject => {
            let then = format!("step `{}` rejected by {by}", request.step);
            reject(journal, request, by, comment, "rejected".into(), then).await
        }
    }
}

/// Records that `request` lapsed: rejected by gantry at its deadline, and the rollback it starts.
pub async fn lapse(journal: &Journal, request: &Request) -> Result<(), JournalError> {
    let reason = format!("timed out: no decision by {}", request.deadline());
    reject(journal, request, "gantry", None, reason.clone(), reason).await
}

/// A rejection, then the rolling-back phase it starts (`then` says why).
async fn reject(
    journal: &Journal,
    request: &Request,
    by: &str,
    comment: Option<String>,
    reason: String,
    then: String,
) -> Result<(), JournalError> {
    let (step, gate) = (request.step.clone(), request.gate.clone());
    journal.write(Event::Rejected { step, gate, by: by.to_string(), comment, reason }).await?;
    journal.write(Event::Phase { phase: RunPhase::RollingBack, reason: then }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(approvers: &[&str], prevent_self_review: bool) -> ApprovalPolicy {
        ApprovalPolicy {
            timeout: Duration::from_secs(60),
            approvers: approvers.iter().map(|a| a.to_string()).collect(),
            prevent_self_review,
            environments: vec![],
        }
    }

    #[test]
    fn approvers_self_review_and_withdrawal() {
        let r = Request::new("deploy", &policy(&["alice", "bob"], true), "alice", 1_000.0);
        assert_eq!(r.check("bob", Decision::Approve), Ok(()));
        assert!(matches!(r.check("alice", Decision::Approve), Err(ApprovalError::SelfReview { .. })));
        assert!(matches!(r.check("mallory", Decision::Approve), Err(ApprovalError::NotAnApprover { .. })));
        assert!(matches!(r.check("mallory", Decision::Reject), Err(ApprovalError::NotAnApprover { .. })));
        assert_eq!(r.check("alice", Decision::Reject), Ok(()), "the requester may withdraw");
        let anyone = Request::new("deploy", &policy(&[], false), "alice", 1_000.0);
        assert_eq!(anyone.check("alice", Decision::Approve), Ok(()));
        assert_eq!(anyone.check("carol", Decision::Approve), Ok(()));
    }

    #[test]
    fn a_request_lapses_after_its_timeout() {
        let r = Request::new("deploy", &policy(&[], false), "alice", 1_000.0);
        assert_eq!(r.deadline_ms, 61_000.0);
        assert!(!r.expired(61_000.0));
        assert!(r.expired(61_000.5));
    }
}
