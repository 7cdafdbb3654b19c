//! The run as Markdown for a CI job's summary page (GitHub's `$GITHUB_STEP_SUMMARY`, or
//! `--report markdown=PATH`): how it ended, a table of its steps, the canary's stages with their
//! gate readings (and the last analysis reading of each metric), what was rolled back and why, and
//! where the HTML report is.
//! Built from the journal, like the JUnit report. Every text from the run (a step's message, a
//! reading's reason) is escaped, so nothing in it turns into Markdown or HTML.

use super::Summary;
use crate::analysis::{first_seen, reading_text, StepReading};
use crate::run::journal::Record;
use crate::units::millis;
use std::fmt::Write;

/// The summary page of the run `records` journaled (`summary` is theirs); `html` is the HTML report
/// written beside it, if any.
pub fn job_summary(summary: &Summary, records: &[Record], html: Option<&std::path::Path>) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### gantry: {} · {} · {}: {}\n",
        text(&summary.pipeline),
        text(&summary.environment),
        text(&summary.entity),
        text(&summary.status)
    );
    let took = match (records.first(), records.last()) {
        (Some(first), Some(last)) => format!(" · {}", millis(last.ts_ms - first.ts_ms)),
        _ => String::new(),
    };
    let _ = writeln!(md, "Run `{}` · {} steps{took}\n", code(&summary.run_id), summary.steps.len());
    for (step, found) in summary.preflight_failures() {
        let _ = writeln!(md, "> **Pre-flight of {} failed**, so nothing ran: {}\n", text(&step), text(&found));
    }
    md += "| step | outcome | attempts | duration | message |\n| --- | --- | ---: | ---: | --- |\n";
    for s in &summary.steps {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            text(&s.id),
            text(&s.status),
            s.attempts,
            millis(s.seconds * 1e3),
            text(s.message.as_deref().unwrap_or_default())
        );
    }
    if !summary.outputs.is_empty() {
        md += "\n| output | value |\n| --- | --- |\n";
        for (name, value) in &summary.outputs {
            let _ = writeln!(md, "| {} | {} |", text(name), text(value));
        }
    }
    md += &canary(records);
    let rolled_back: Vec<_> = summary.steps.iter().filter(|s| s.status.starts_with("rolled")).collect();
    let failed: Vec<_> = summary.steps.iter().filter(|s| matches!(s.status.as_str(), "failed" | "cancelled")).collect();
    if !rolled_back.is_empty() {
        md += "\n#### Rolled back\n\n";
        let why = match failed.as_slice() {
            [] => "the run was stopped".to_string(),
            steps => steps
                .iter()
                .map(|s| format!("{} {}: {}", text(&s.id), text(&s.status), text(s.message.as_deref().unwrap_or_default())))
                .collect::<Vec<_>>()
                .join("; "),
        };
        let steps: Vec<String> = rolled_back.iter().map(|s| text(&s.id)).collect();
        let _ = writeln!(md, "{}, because {why}.", steps.join(", "));
    }
    md += "\n";
    match html {
        Some(path) => {
            let _ = writeln!(md, "The HTML report (timeline, requests, grants): {}", text(&path.display().to_string()));
        }
        None => {
            let _ = writeln!(md, "The HTML report: `gantry report {} --html report.html`", code(&summary.run_id));
        }
    }
    md
}

/// The canary's stages: each gate reading its step logged (the weights a rollback restored among
/// them), then per step, stage and metric the last analysis reading and how it was judged.
fn canary(records: &[Record]) -> String {
    let (_, gates) = super::canary::logged(records, None);
    let readings = crate::analysis::readings(records);
    if gates.is_empty() && readings.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n#### Canary\n");
    if !gates.is_empty() {
        md += "\n| step | stage | sample | gate | observed | threshold | verdict |\n| --- | ---: | ---: | --- | --- | --- | --- |\n";
        for row in &gates {
            let cells: Vec<String> = row.iter().skip(1).map(|cell| text(cell)).collect();
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
    }
    md += &analysis(&readings);
    md
}

/// Per step, stage and metric of the canary's analysis: the last reading and how it was judged.
fn analysis(readings: &[StepReading]) -> String {
    if readings.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n| step | stage | metric | last reading | outcome | why |\n| --- | ---: | --- | ---: | --- | --- |\n");
    let keys = first_seen(readings.iter().map(|r| (r.step.as_str(), r.recorded.stage, r.recorded.metric.as_str())));
    for (step, stage, metric) in keys {
        let Some(last) =
            readings.iter().rev().find(|r| r.step == step && r.recorded.stage == stage && r.recorded.metric == metric)
        else {
            continue;
        };
        let judged = &last.recorded.judged;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            text(step),
            stage.map(|s| format!("{s}%")).unwrap_or_default(),
            text(metric),
            text(&reading_text(&judged.reading)),
            format!("{:?}", judged.outcome).to_lowercase(),
            text(&judged.reason)
        );
    }
    md
}

/// Text from the run inside Markdown: every ASCII punctuation mark backslash-escaped (so no
/// emphasis, link, table cell break or HTML tag can start), line breaks as spaces.
pub fn text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            c if c.is_ascii_punctuation() => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Text inside a code span: backticks cannot end it, line breaks become spaces.
fn code(raw: &str) -> String {
    raw.replace('`', "'").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::StepSummary;

    fn step(id: &str, status: &str, message: Option<&str>) -> StepSummary {
        StepSummary {
            id: id.into(),
            status: status.into(),
            attempts: 1,
            seconds: 1.5,
            message: message.map(str::to_string),
            outputs: Default::default(),
            requests: 0,
            denied: 0,
        }
    }

    #[test]
    fn punctuation_from_the_run_is_escaped_and_lines_are_joined() {
        assert_eq!(text("a|b <i>*x*</i>\n[l](u)"), "a\\|b \\<i\\>\\*x\\*\\<\\/i\\> \\[l\\]\\(u\\)");
        assert_eq!(text("plain words"), "plain words");
    }

    #[test]
    fn a_rolled_back_run_names_what_failed_and_what_went_back() {
        let summary = Summary {
            run_id: "17-1".into(),
            pipeline: "release".into(),
            environment: "production".into(),
            entity: "the7space".into(),
            status: "rolled-back".into(),
            steps: vec![step("deploy", "rolled-back", None), step("canary", "failed", Some("error rate 0.2 > 0.05"))],
            barriers_ahead: vec![],
            preflight: vec![],
            outputs: [("site_url".to_string(), "https://the7space.example/".to_string())].into(),
        };
        let md = job_summary(&summary, &[], None);
        assert!(md.starts_with("### gantry: release · production · the7space: rolled\\-back\n"), "{md}");
        assert!(md.contains("| deploy | rolled\\-back | 1 | 1.5 s |  |"), "{md}");
        assert!(md.contains("deploy, because canary failed: error rate 0\\.2 \\> 0\\.05."), "{md}");
        assert!(md.contains("`gantry report 17-1 --html report.html`"), "{md}");
        assert!(md.contains("| site\\_url | https\\:\\/\\/the7space\\.example\\/ |"), "{md}");
        assert_eq!(
            crate::report::github_outputs(&summary),
            "run-id=17-1\nstatus=rolled-back\nsite_url=https://the7space.example/\n"
        );
        let mut lines = summary.clone();
        lines.outputs.insert("notes".into(), "a\ngantry_EOF\nb".into());
        let text = crate::report::github_outputs(&lines);
        assert!(text.contains("notes<<gantry_EOF_\na\ngantry_EOF\nb\ngantry_EOF_\n"), "{text}");
    }
}
