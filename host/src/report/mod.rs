//! Reports for CI: a run summary built from the journal, written as JSON or
//! JUnit XML, and GitHub Actions `::error::` annotations; and the HTML report
//! people look at ([`html`]).

pub mod html;
pub mod out;
pub mod progress;

use crate::run::journal::Record;
use crate::run::Event;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

/// A report format a run can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// JUnit XML, one test case per step.
    Junit,
    /// The [`Summary`] as JSON.
    Json,
}

/// A report to write after a run: `junit=PATH` or `json=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSpec {
    /// The format.
    pub kind: ReportKind,
    /// Where to write it.
    pub path: PathBuf,
}

impl ReportSpec {
    /// The same report for one entity of a rollout: `junit.xml` becomes `junit.<entity>.xml`.
    pub fn for_entity(&self, entity: &str) -> Self {
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = match self.path.extension() {
            Some(ext) => format!("{stem}.{entity}.{}", ext.to_string_lossy()),
            None => format!("{stem}.{entity}"),
        };
        Self { kind: self.kind, path: self.path.with_file_name(name) }
    }
}

impl FromStr for ReportSpec {
    type Err = String;

    /// Checked before a run starts, so a typo never waits until after a deploy.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (kind, path) = spec.split_once('=').ok_or_else(|| format!("{spec:?}: expected junit=PATH or json=PATH"))?;
        let kind = match kind {
            "junit" => ReportKind::Junit,
            "json" => ReportKind::Json,
            other => return Err(format!("{other:?}: the report kinds are junit and json")),
        };
        if path.is_empty() {
            return Err(format!("{spec:?}: give the file to write"));
        }
        let path = PathBuf::from(path);
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            return Err(format!("{spec:?}: directory {} does not exist", dir.display()));
        }
        Ok(Self { kind, path })
    }
}

impl ReportSpec {
    /// Writes the report of `summary`.
    pub fn write(&self, summary: &Summary) -> std::io::Result<()> {
        let text = match self.kind {
            ReportKind::Junit => summary.junit(),
            ReportKind::Json => serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?,
        };
        std::fs::write(&self.path, text)
    }
}

/// How one step of a run ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepSummary {
    /// Step id.
    pub id: String,
    /// succeeded, failed, cancelled, skipped, or rolled-back.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Seconds from first start to the end of the last attempt.
    pub seconds: f64,
    /// Error or skip reason.
    pub message: Option<String>,
    /// Outputs when it succeeded.
    pub outputs: BTreeMap<String, String>,
    /// HTTP requests the host let out.
    pub requests: u32,
    /// HTTP requests the host refused.
    pub denied: u32,
}

/// A run, summarised from its journal.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Run id.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Environment.
    pub environment: String,
    /// Entity.
    pub entity: String,
    /// How the run ended (`incomplete` when the journal has no end).
    pub status: String,
    /// Steps in the order they first appear in the journal.
    pub steps: Vec<StepSummary>,
    /// In a dry run: the steps whose real run would record a rollback barrier.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub barriers_ahead: Vec<crate::run::fold::Barrier>,
}

impl Summary {
    /// Builds the summary from journal records.
    pub fn from_records(records: &[Record]) -> Self {
        let mut summary = Summary {
            run_id: String::new(),
            pipeline: String::new(),
            environment: String::new(),
            entity: String::new(),
            status: "incomplete".into(),
            steps: Vec::new(),
            barriers_ahead: Vec::new(),
        };
        let mut started: BTreeMap<String, f64> = BTreeMap::new();
        for record in records {
            let step = |id: &str, summary: &mut Summary| -> usize {
                match summary.steps.iter().position(|s| s.id == id) {
                    Some(i) => i,
                    None => {
                        summary.steps.push(StepSummary {
                            id: id.to_string(),
                            status: "running".into(),
                            attempts: 0,
                            seconds: 0.0,
                            message: None,
                            outputs: BTreeMap::new(),
                            requests: 0,
                            denied: 0,
                        });
                        summary.steps.len() - 1
                    }
                }
            };
            let elapsed = |id: &str| started.get(id).map(|t| (record.ts_ms - t) / 1e3).unwrap_or_default();
            match &record.event {
                Event::RunStarted { run_id, pipeline, environment, entity, .. } => {
                    summary.run_id = run_id.clone();
                    summary.pipeline = pipeline.clone();
                    summary.environment = environment.clone();
                    summary.entity = entity.clone();
                }
                Event::StepStarted { step: id, attempt, .. } => {
                    started.entry(id.clone()).or_insert(record.ts_ms);
                    let i = step(id, &mut summary);
                    summary.steps[i].attempts = *attempt;
                }
                Event::StepFinished { step: id, outputs, .. } => {
                    let seconds = elapsed(id);
                    let i = step(id, &mut summary);
                    let s = &mut summary.steps[i];
                    (s.status, s.seconds, s.outputs) = ("succeeded".into(), seconds, outputs.clone());
                }
                Event::StepFailed { step: id, kind, error, .. } => {
                    let seconds = elapsed(id);
                    let i = step(id, &mut summary);
                    let s = &mut summary.steps[i];
                    let status = if kind == "cancelled" { "cancelled" } else { "failed" };
                    (s.status, s.seconds, s.message) = (status.into(), seconds, Some(error.clone()));
                }
                Event::StepSkipped { step: id, reason } => {
                    let i = step(id, &mut summary);
                    (summary.steps[i].status, summary.steps[i].message) = ("skipped".into(), Some(reason.clone()));
                }
                Event::Paused { step: id, reason } => {
                    let seconds = elapsed(id);
                    let i = step(id, &mut summary);
                    let s = &mut summary.steps[i];
                    (s.status, s.seconds, s.message) = ("paused".into(), seconds, Some(reason.clone()));
                }
                Event::Request(r) => {
                    let i = step(&r.step, &mut summary);
                    if r.allowed {
                        summary.steps[i].requests += 1;
                    } else {
                        summary.steps[i].denied += 1;
                    }
                }
                Event::RolledBack { step: id, .. } => {
                    let i = step(id, &mut summary);
                    summary.steps[i].status = "rolled-back".into();
                }
                Event::RollbackFailed { step: id, error, .. } => {
                    let i = step(id, &mut summary);
                    let s = &mut summary.steps[i];
                    (s.status, s.message) = ("rollback-failed".into(), Some(error.clone()));
                }
                Event::RunFinished { status } => summary.status = status.clone(),
                Event::ApprovalRequested(r) => {
                    let i = step(&r.step, &mut summary);
                    let (s, by) = (&mut summary.steps[i], r.approvers.join(", "));
                    (s.status, s.message) = ("awaiting-approval".into(), Some(format!("approvers: {by}")));
                }
                Event::Rejected { step: id, reason, .. } => {
                    let i = step(id, &mut summary);
                    (summary.steps[i].status, summary.steps[i].message) = ("rejected".into(), Some(reason.clone()));
                }
                Event::Approved { .. }
                | Event::StepRetrying { .. }
                | Event::Interrupted { .. }
                | Event::Checkpoint { .. }
                | Event::Phase { .. }
                | Event::Opened { .. }
                | Event::SecretsRead { .. }
                | Event::AwsCredentials { .. }
                | Event::Log { .. }
                | Event::PastBarrier { .. } => {}
                Event::BarrierAhead { step, reason, changed } => {
                    summary.barriers_ahead.push(crate::run::fold::Barrier {
                        step: step.clone(),
                        reason: reason.clone(),
                        changed: changed.clone(),
                    })
                }
                Event::Settled { .. } => summary.status = crate::run::Status::Settled.name().into(),
                Event::Abandoned { .. } => summary.status = crate::run::store::NEEDS_A_PERSON.into(),
            }
        }
        summary
    }

    /// JUnit XML: one test suite for the run, one test case per step.
    pub fn junit(&self) -> String {
        let failed =
            |s: &StepSummary| matches!(s.status.as_str(), "failed" | "cancelled" | "rollback-failed" | "paused");
        let failures = self.steps.iter().filter(|s| failed(s)).count();
        let skipped = self.steps.iter().filter(|s| s.status == "skipped").count();
        let total: f64 = self.steps.iter().map(|s| s.seconds).sum();
        let suite = format!("{} ({} / {})", self.pipeline, self.environment, self.entity);
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        xml += &format!(
            "<testsuites name=\"gantry\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">\n",
            self.steps.len()
        );
        xml += &format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">\n",
            escape(&suite),
            self.steps.len()
        );
        for s in &self.steps {
            xml += &format!(
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                escape(&s.id),
                escape(&self.pipeline),
                s.seconds
            );
            let message = escape(s.message.as_deref().unwrap_or_default());
            if failed(s) {
                xml += &format!(
                    ">\n      <failure message=\"{message}\" type=\"{}\">{message}</failure>\n    </testcase>\n",
                    s.status
                );
            } else if s.status == "skipped" {
                xml += &format!(">\n      <skipped message=\"{message}\"/>\n    </testcase>\n");
            } else {
                xml += "/>\n";
            }
        }
        xml += "  </testsuite>\n</testsuites>\n";
        xml
    }

    /// GitHub Actions annotations for the steps that failed.
    pub fn github_annotations(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| matches!(s.status.as_str(), "failed" | "rollback-failed"))
            .map(|s| {
                let message = s.message.as_deref().unwrap_or(&s.status);
                format!("::error title=gantry step {}::{}", annotation(&s.id), annotation(message))
            })
            .collect()
    }
}

/// Text made safe inside HTML or XML text and attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// GitHub's workflow-command escaping.
fn annotation(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A").replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts_ms: f64, event: Event) -> Record {
        Record { seq: 0, ts_ms, session: 1, event }
    }

    #[test]
    fn junit_counts_failures_and_skips_and_escapes() {
        let records = vec![
            record(
                0.0,
                Event::RunStarted {
                    run_id: "r".into(),
                    pipeline: "p".into(),
                    environment: "production".into(),
                    entity: "e".into(),
                    plugins: BTreeMap::new(),
                    file: None,
                    plan: serde_json::Value::Null,
                    started_by: None,
                    rollout: None,
                },
            ),
            record(1.0, Event::StepStarted { step: "a".into(), attempt: 1, notifier: false }),
            record(1501.0, Event::StepFinished { step: "a".into(), outputs: BTreeMap::new(), attempt: 1 }),
            record(1600.0, Event::StepStarted { step: "b".into(), attempt: 1, notifier: false }),
            record(
                1700.0,
                Event::StepFailed {
                    step: "b".into(),
                    kind: "failed".into(),
                    error: "got <503> & \"gave up\"".into(),
                    continue_on_error: false,
                    attempt: 1,
                },
            ),
            record(1800.0, Event::StepSkipped { step: "c".into(), reason: "condition".into() }),
            record(1900.0, Event::RunFinished { status: "failed".into() }),
        ];
        let summary = Summary::from_records(&records);
        assert_eq!(summary.steps[0].seconds, 1.5);
        let xml = summary.junit();
        assert!(xml.contains(r#"<testsuite name="p (production / e)" tests="3" failures="1" skipped="1""#), "{xml}");
        assert!(
            xml.contains(r#"<failure message="got &lt;503&gt; &amp; &quot;gave up&quot;" type="failed">"#),
            "{xml}"
        );
        assert_eq!(summary.github_annotations(), ["::error title=gantry step b::got <503> & \"gave up\""]);
    }
}
