//! SARIF 2.1.0 and JUnit renderings of the findings.

use crate::rules::{Finding, Rule, Severity};
use serde_json::json;

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "note",
    }
}

fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "2.0",
    }
}

/// A SARIF 2.1.0 log with one run.
pub fn sarif(rules: &[Rule], findings: &[Finding], version: &str) -> serde_json::Value {
    let driver_rules: Vec<_> = rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.id,
                "shortDescription": {"text": r.title},
                "defaultConfiguration": {"level": level(r.severity)},
                "properties": {
                    "tags": r.controls.iter().map(|(f, c)| format!("{f} {c}")).collect::<Vec<_>>(),
                    "security-severity": security_severity(r.severity),
                },
            })
        })
        .collect();
    let results: Vec<_> = findings
        .iter()
        .map(|f| {
            json!({
                "ruleId": f.rule,
                "ruleIndex": rules.iter().position(|r| r.id == f.rule).unwrap_or(0),
                "level": level(f.severity),
                "message": {"text": f.message},
                "locations": [{
                    "physicalLocation": {"artifactLocation": {"uri": f.file.trim_start_matches('/')}},
                    "logicalLocations": [{"fullyQualifiedName": f.path, "kind": "member"}],
                }],
                "properties": {"severity": f.severity.name()},
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "gantry compliance-audit", "version": version, "rules": driver_rules}},
            "results": results,
        }],
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One JUnit test case per rule; a rule with findings fails with all of them.
pub fn junit(rules: &[Rule], findings: &[Finding]) -> String {
    let failures = rules.iter().filter(|r| findings.iter().any(|f| f.rule == r.id)).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"compliance-audit\" tests=\"{}\" failures=\"{failures}\">\n  <testsuite name=\"compliance\" tests=\"{}\" failures=\"{failures}\">\n",
        rules.len(),
        rules.len()
    );
    for r in rules {
        let controls = r.controls.iter().map(|(f, c)| format!("{f} {c}")).collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\">\n",
            escape(&controls),
            escape(&format!("{}: {}", r.id, r.title))
        ));
        let mine: Vec<&Finding> = findings.iter().filter(|f| f.rule == r.id).collect();
        if !mine.is_empty() {
            let text = mine.iter().map(|f| f.message.as_str()).collect::<Vec<_>>().join("\n");
            out.push_str(&format!(
                "      <failure type=\"{}\" message=\"{} finding(s)\">{}</failure>\n",
                r.severity.name(),
                mine.len(),
                escape(&text)
            ));
        }
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
