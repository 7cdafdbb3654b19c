//! `compliance-audit`: audits configuration files granted read-only through
//! `files:` against HIPAA, SOC 2 and GDPR rule packs plus the user's own
//! rules, writes SARIF 2.1.0 and JUnit to the step's artifacts directory, and
//! fails at a configurable severity.

pub mod config;
pub mod report;
pub mod rules;

use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use rules::{CustomRule, Finding, Rule, Severity};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Files or directories to audit, as the plugin sees them (a `files:` grant `config` is `/config`).
    pub paths: Vec<String>,
    /// Rule packs: `hipaa`, `soc2`, `gdpr` (default all).
    #[serde(default = "all_frameworks")]
    pub frameworks: Vec<String>,
    /// Fail when a finding is at least this severe (default `high`).
    #[serde(default = "default_fail_on")]
    pub fail_on: Severity,
    /// Environments where production-only rules apply (default `production`).
    #[serde(default = "default_production")]
    pub production_environments: Vec<String>,
    /// Rules of your own.
    #[serde(default)]
    pub rules: Vec<CustomRule>,
    /// Built-in rule ids to skip.
    #[serde(default)]
    pub skip: Vec<String>,
    /// Where the reports go.
    #[serde(default = "default_artifacts")]
    pub artifacts_dir: String,
}

fn all_frameworks() -> Vec<String> {
    vec!["hipaa".into(), "soc2".into(), "gdpr".into()]
}
fn default_fail_on() -> Severity {
    Severity::High
}
fn default_production() -> Vec<String> {
    vec!["production".into()]
}
fn default_artifacts() -> String {
    "/artifacts".into()
}

/// The audit's result.
pub struct Audit {
    /// Rules that ran.
    pub rules: Vec<Rule>,
    /// What they found.
    pub findings: Vec<Finding>,
    /// Files read.
    pub files: usize,
}

/// Reads the paths and runs every selected rule.
pub fn audit(input: &Input, environment: &str) -> Result<Audit, Error> {
    let wanted: Vec<String> = input.frameworks.iter().map(|f| f.to_ascii_uppercase().replace(' ', "")).collect();
    if let Some(bad) = wanted.iter().find(|f| !["HIPAA", "SOC2", "GDPR"].contains(&f.as_str())) {
        return Err(Error::failed(format!("unknown framework `{bad}`: use hipaa, soc2, gdpr")));
    }
    let rules: Vec<Rule> = rules::builtin()
        .into_iter()
        .filter(|r| !input.skip.contains(&r.id))
        .filter(|r| r.controls.iter().any(|(f, _)| wanted.contains(f)))
        .collect();
    let mut entries = Vec::new();
    let mut files = 0;
    for path in &input.paths {
        for (file, text) in config::read_tree(path).map_err(Error::failed)? {
            entries.extend(config::parse(&file, &text).map_err(Error::failed)?);
            files += 1;
        }
    }
    if files == 0 {
        return Err(Error::failed(format!("no YAML, JSON or .env files under {:?}", input.paths)));
    }
    let production = input.production_environments.iter().any(|e| e == environment);
    let mut findings = rules::check(&rules, &entries, production);
    let mut all_rules = rules;
    for custom in &input.rules {
        findings.extend(custom.check(&entries).map_err(Error::failed)?);
        all_rules.push(custom.rule());
    }
    findings.sort_by(|a, b| {
        b.severity.cmp(&a.severity).then_with(|| a.rule.cmp(&b.rule)).then_with(|| a.path.cmp(&b.path))
    });
    Ok(Audit { rules: all_rules, findings, files })
}

/// Writes `compliance.sarif`, `compliance-junit.xml` and `compliance.json`; returns their paths.
fn write_reports(dir: &str, audit: &Audit) -> Result<Vec<String>, Error> {
    let sarif = report::sarif(&audit.rules, &audit.findings, env!("CARGO_PKG_VERSION"));
    let summary = serde_json::json!({"files": audit.files, "rules": audit.rules, "findings": audit.findings});
    let mut written = Vec::new();
    for (name, text) in [
        ("compliance.sarif", serde_json::to_string_pretty(&sarif).unwrap_or_default()),
        ("compliance-junit.xml", report::junit(&audit.rules, &audit.findings)),
        ("compliance.json", serde_json::to_string_pretty(&summary).unwrap_or_default()),
    ] {
        let path = format!("{}/{name}", dir.trim_end_matches('/'));
        std::fs::write(&path, text)
            .map_err(|e| Error::failed(format!("cannot write {path}: {e} (give the step `artifacts: true`)")))?;
        written.push(path);
    }
    Ok(written)
}

/// The step.
pub struct ComplianceAudit;

impl Step for ComplianceAudit {
    fn describe() -> Describe {
        Describe::new("compliance-audit", env!("CARGO_PKG_VERSION"))
            .description("Audits configuration files against HIPAA, SOC 2 and GDPR controls; SARIF and JUnit reports")
            .input::<Input>()
            .capability("files")
            .capability("artifacts")
            .output("summary", "one line: files read and findings by severity")
            .output("files", "how many files were audited")
            .output("findings", "how many findings in all")
            .output("critical", "critical findings")
            .output("high", "high findings")
            .output("medium", "medium findings")
            .output("low", "low findings")
            .output("sarif", "the SARIF report's path under /artifacts")
            .output("junit", "the JUnit report's path under /artifacts")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let audit = audit(&input, ctx.environment())?;
        let reports = write_reports(&input.artifacts_dir, &audit)?;
        let count = |s: Severity| audit.findings.iter().filter(|f| f.severity == s).count();
        let blocking: Vec<&Finding> = audit.findings.iter().filter(|f| f.severity >= input.fail_on).collect();
        for f in &audit.findings {
            gantry_sdk::warn!("{} [{}] {}", f.rule, f.severity.name(), f.message);
        }
        let summary = format!(
            "{} files, {} rules, {} findings ({} critical, {} high, {} medium, {} low)",
            audit.files,
            audit.rules.len(),
            audit.findings.len(),
            count(Severity::Critical),
            count(Severity::High),
            count(Severity::Medium),
            count(Severity::Low)
        );
        if !blocking.is_empty() {
            let first: Vec<String> = blocking.iter().take(5).map(|f| format!("{} {}", f.rule, f.message)).collect();
            return Err(Error::failed(format!(
                "{} findings at or above {}: {}{}; {summary}; SARIF at {}",
                blocking.len(),
                input.fail_on.name(),
                first.join("; "),
                if blocking.len() > 5 { "; ..." } else { "" },
                reports[0]
            )));
        }
        Ok(Outputs::new()
            .with("summary", summary)
            .with("files", audit.files)
            .with("findings", audit.findings.len())
            .with("critical", count(Severity::Critical))
            .with("high", count(Severity::High))
            .with("medium", count(Severity::Medium))
            .with("low", count(Severity::Low))
            .with("sarif", &reports[0])
            .with("junit", &reports[1]))
    }
}

gantry_sdk::export_step!(ComplianceAudit);
