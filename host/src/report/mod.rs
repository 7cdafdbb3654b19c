//! Reports for CI: a run summary built from the journal, written as JSON,
//! JUnit XML or a Markdown job summary ([`markdown`]), and GitHub Actions
//! `::error::` annotations; and the HTML report people look at ([`html`]).

pub mod canary;
pub mod html;
pub mod markdown;
pub mod metrics;
pub mod trace;
pub mod out;
pub mod progress;

use crate::run::journal::Record;
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
    /// The Markdown job summary ([`markdown::job_summary`]).
    Markdown,
    /// The HTML report ([`html::page`]).
    Html,
}

/// A report to write after a run: `junit=PATH`, `json=PATH`, `markdown=PATH` or `html=PATH`.
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
        let (kind, path) = spec.split_once('=').ok_or_else(|| format!("{spec:?}: expected KIND=PATH, e.g. junit=PATH"))?;
        let kind = match kind {
            "junit" => ReportKind::Junit,
            "json" => ReportKind::Json,
            "markdown" => ReportKind::Markdown,
            "html" => ReportKind::Html,
            other => return Err(format!("{other:?}: the report kinds are junit, json, markdown and html")),
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
    /// Writes the report of the run `records` journaled (`summary` is their summary); `html` is
    /// where the HTML report of the same run is written, for the Markdown to point at.
    pub fn write(&self, records: &[Record], summary: &Summary, html: Option<&std::path::Path>) -> std::io::Result<()> {
        let text = match self.kind {
            ReportKind::Junit => summary.junit(),
            ReportKind::Json => serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?,
            ReportKind::Markdown => markdown::job_summary(summary, records, html),
            ReportKind::Html => html::page(records, false),
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
    /// Host calls the host let out: HTTP requests, Redis commands, SQL statements, TLS handshakes, DNS lookups.
    pub requests: u32,
    /// Host calls the host refused.
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
    /// What each step read before the run's first change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preflight: Vec<crate::run::fold::PreflightShown>,
    /// What the pipeline's `outputs:` export, resolved from the steps' outputs; an output whose
    /// step did not succeed is left out.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

impl Summary {
    /// The summary of a journal: the fold's answer, as reports print it.
    pub fn from_records(records: &[Record]) -> Self {
        Self::of(&crate::run::fold::fold(records))
    }

    /// The summary of a folded journal.
    pub fn of(folded: &crate::run::fold::Folded) -> Self {
        let shown = &folded.shown;
        Summary {
            run_id: shown.identity.run_id.clone(),
            pipeline: shown.identity.pipeline.clone(),
            environment: shown.identity.environment.clone(),
            entity: shown.identity.entity.clone(),
            status: folded.status(),
            steps: shown
                .steps
                .iter()
                .map(|s| StepSummary {
                    id: s.id.clone(),
                    status: s.outcome.name().into(),
                    attempts: s.attempts,
                    seconds: s.seconds,
                    message: s.message.clone(),
                    outputs: s.outputs.clone(),
                    requests: s.requests,
                    denied: s.denied,
                })
                .collect(),
            barriers_ahead: shown.barriers_ahead.clone(),
            preflight: shown.preflight.clone(),
            outputs: exported(folded),
        }
    }

    /// Each failed pre-flight, as `(step, what it found)`: the reason a run changed nothing.
    pub fn preflight_failures(&self) -> Vec<(String, String)> {
        let said = |p: &crate::run::fold::PreflightShown| match &p.error {
            Some(e) => e.clone(),
            None => {
                let failed = p.checks.iter().filter(|c| !c.passed);
                failed.map(|c| format!("{}: {}", c.name, c.answer)).collect::<Vec<_>>().join("; ")
            }
        };
        self.preflight.iter().filter(|p| !p.passed()).map(|p| (p.step.clone(), said(p))).collect()
    }

    /// JUnit XML: one test suite for the run, one test case per step.
    pub fn junit(&self) -> String {
        let failed =
            |s: &StepSummary| matches!(s.status.as_str(), "failed" | "cancelled" | "rollback-failed" | "paused");
        let preflight = self.preflight_failures();
        let failures = self.steps.iter().filter(|s| failed(s)).count() + preflight.len();
        let skipped = self.steps.iter().filter(|s| s.status == "skipped").count();
        let total: f64 = self.steps.iter().map(|s| s.seconds).sum();
        let tests = self.steps.len() + preflight.len();
        let suite = format!("{} ({} / {})", self.pipeline, self.environment, self.entity);
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        xml += &format!(
            "<testsuites name=\"gantry\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">\n"
        );
        xml += &format!(
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">\n",
            escape(&suite)
        );
        // A failed pre-flight is a failure of its own: the run changed nothing, so no step ran.
        for (step, found) in &preflight {
            let (name, message) = (escape(&format!("{step} (pre-flight)")), escape(found));
            xml += &format!(
                "    <testcase name=\"{name}\" classname=\"{}\" time=\"0.000\">\n      <failure message=\"{message}\" type=\"preflight-failed\">{message}</failure>\n    </testcase>\n",
                escape(&self.pipeline)
            );
        }
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

    /// GitHub Actions annotations for the steps that failed, and the pre-flights that did.
    pub fn github_annotations(&self) -> Vec<String> {
        let preflight = self.preflight_failures().into_iter().map(|(step, found)| {
            format!("::error title=gantry pre-flight of step {}::{}", annotation(&step), annotation(&found))
        });
        let steps = self.steps.iter().filter(|s| matches!(s.status.as_str(), "failed" | "rollback-failed")).map(|s| {
            let message = s.message.as_deref().unwrap_or(&s.status);
            format!("::error title=gantry step {}::{}", annotation(&s.id), annotation(message))
        });
        preflight.chain(steps).collect()
    }
}

/// The pipeline's `outputs:` as the recorded plan holds them, each resolved from the outputs of
/// the steps that succeeded; one that refers to a step without outputs is left out.
fn exported(folded: &crate::run::fold::Folded) -> BTreeMap<String, String> {
    let Some((_, plan)) = &folded.start else { return BTreeMap::new() };
    let templates: BTreeMap<String, String> = serde_json::from_value(plan["outputs"].clone()).unwrap_or_default();
    let steps = &folded.shown.steps;
    let lookup = |path: &[&str]| match path {
        ["steps", id, "outputs", name] => steps.iter().find(|s| s.id == *id)?.outputs.get(*name).cloned(),
        _ => None,
    };
    templates
        .into_iter()
        .filter_map(|(name, template)| {
            let value = crate::pipeline::expr::substitute(&serde_json::Value::String(template), &lookup);
            let value = value.as_str()?.to_string();
            (!value.contains("${{")).then_some((name, value))
        })
        .collect()
}

/// The run as GitHub Actions step outputs (`name=value` lines for `$GITHUB_OUTPUT`): `run-id`,
/// `status` and the pipeline's exported `outputs:`.
pub fn github_outputs(summary: &Summary) -> String {
    let one_line = |v: &str| v.replace(['\n', '\r'], " ");
    let mut text = format!("run-id={}\nstatus={}\n", one_line(&summary.run_id), one_line(&summary.status));
    for (name, value) in &summary.outputs {
        // A value of several lines goes between delimiters it does not contain, as GitHub asks.
        if value.contains(['\n', '\r']) {
            let mut delimiter = String::from("gantry_EOF");
            while value.contains(&delimiter) {
                delimiter.push('_');
            }
            text += &format!("{name}<<{delimiter}\n{value}\n{delimiter}\n");
        } else {
            text += &format!("{name}={value}\n");
        }
    }
    text
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
    use crate::run::Event;

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

    #[test]
    fn a_failed_preflight_is_a_failure_in_junit_and_an_annotation_though_no_step_ran() {
        use crate::run::fold::RunPhase;
        use crate::sandbox::{Check, RequestRecord};
        let check = |name: &str, passed| Check { name: name.into(), answer: format!("{name} read"), passed };
        let records = vec![
            record(0.0, Event::Phase { phase: RunPhase::Preflight, reason: String::new() }),
            record(1.0, Event::Request(RequestRecord::allowed_post("shift", Some("DescribeListeners")))),
            record(2.0, Event::PreflightChecked { step: "shift".into(), checks: vec![check("listener", true), check("metric", false)], error: None }),
            record(3.0, Event::PreflightChecked { step: "smoke".into(), checks: Vec::new(), error: None }),
            record(4.0, Event::RunFinished { status: "preflight-failed".into() }),
        ];
        let summary = Summary::from_records(&records);
        assert!(summary.steps.is_empty(), "a pre-flight's requests make no step row: {:?}", summary.steps);
        assert_eq!(summary.preflight_failures(), [("shift".to_string(), "metric: metric read".to_string())]);
        let xml = summary.junit();
        assert!(xml.contains(r#"tests="1" failures="1""#) && xml.contains(r#"<testcase name="shift (pre-flight)""#), "{xml}");
        assert_eq!(summary.github_annotations(), ["::error title=gantry pre-flight of step shift::metric%3A metric read"]);
    }
}
