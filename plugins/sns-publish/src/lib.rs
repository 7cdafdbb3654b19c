//! `sns-publish`: the operations alert of a release — publishes the run's
//! outcome (status, the step that failed and why, what was rolled back) and
//! an optional message to an SNS topic. A message once sent cannot be
//! unsent: `rollback` does nothing, and the step is usually `if: always()`.
//! Requests are signed by the host; the plugin never holds keys.

use gantry_sdk::{Context, Describe, Error, Outputs, Sigv4, Step};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// SNS endpoint, e.g. `https://sns.eu-west-1.amazonaws.com/`.
    pub endpoint: String,
    /// AWS region of the signature.
    #[serde(default = "default_region")]
    pub region: String,
    /// Topic ARN.
    pub topic_arn: String,
    /// Subject line (SNS caps it at 100 characters).
    #[serde(default)]
    pub subject: Option<String>,
    /// Text added after the run's outcome.
    #[serde(default)]
    pub message: Option<String>,
    /// Secret with the access key id.
    #[serde(default = "gantry_sdk::aws::access_key_secret")]
    pub access_key_secret: String,
    /// Secret with the secret access key.
    #[serde(default = "gantry_sdk::aws::secret_key_secret")]
    pub secret_key_secret: String,
    /// Secret with a session token, for temporary credentials.
    #[serde(default)]
    pub session_token_secret: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// The alert: the run's outcome as the host tells it, then the pipeline's message.
pub fn alert(ctx: &Context, message: Option<&str>) -> (String, String) {
    let status = ctx.run_info("status").unwrap_or("running");
    let mut lines = vec![format!(
        "{} {} / {}: {status} (run {})",
        ctx.pipeline(),
        ctx.environment(),
        ctx.entity(),
        ctx.run_info("run_id").unwrap_or("?")
    )];
    if let (Some(step), Some(error)) = (ctx.run_info("failed_step"), ctx.run_info("error")) {
        lines.push(format!("failed step: {step}: {error}"));
    }
    for (key, label) in [("rolled_back", "rolled back"), ("rollback_failed", "ROLLBACK FAILED")] {
        if let Some(list) = ctx.run_info(key).filter(|l| !l.is_empty()) {
            lines.push(format!("{label}: {list}"));
        }
    }
    if let Some(message) = message {
        lines.push(message.to_string());
    }
    let subject = format!("[{status}] {} {} / {}", ctx.pipeline(), ctx.environment(), ctx.entity());
    (subject, lines.join("\n"))
}

/// The step.
pub struct SnsPublish;

impl Step for SnsPublish {
    fn describe() -> Describe {
        Describe::new("sns-publish", env!("CARGO_PKG_VERSION"))
            .description("Publishes the run's outcome to an SNS topic")
            .input::<Input>()
            .capability("network")
            .capability("secrets:aws-sigv4")
            .output("published", "whether the message was published")
            .output("message_id", "the published message's id")
            .output("restored", "false: a published message cannot be unpublished")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let (default_subject, message) = alert(ctx, input.message.as_deref());
        let subject: String = input.subject.unwrap_or(default_subject).chars().take(100).collect();
        if ctx.dry_run() {
            gantry_sdk::info!("dry run: would publish to {}: {subject}", input.topic_arn);
            return Ok(Outputs::new().with("published", false));
        }
        let sigv4 = Sigv4::aws(
            "sns",
            &input.region,
            &input.access_key_secret,
            &input.secret_key_secret,
            input.session_token_secret.as_deref(),
        );
        let form = [
            ("Action", "Publish"),
            ("Version", "2010-03-31"),
            ("TopicArn", input.topic_arn.as_str()),
            ("Subject", subject.as_str()),
            ("Message", message.as_str()),
        ];
        // Not retried: a publish whose answer was lost may have been delivered, and a second alert
        // is worse than a failed step that says so.
        let response = ctx.http().post(&input.endpoint).form(&form).aws_sigv4(sigv4).send()?;
        let body = response.text();
        if !response.is_success() {
            return Err(Error::failed(format!(
                "SNS Publish answered {}: {}",
                response.status(),
                body.chars().take(300).collect::<String>()
            )));
        }
        let id = body.split("<MessageId>").nth(1).and_then(|r| r.split('<').next()).unwrap_or_default().to_string();
        gantry_sdk::info!("published to {}: {subject}", input.topic_arn);
        Ok(Outputs::new().with("published", true).with("message_id", id))
    }

    fn rollback(_ctx: &Context) -> Result<Outputs, Error> {
        // A message cannot be unsent.
        Ok(Outputs::new().with("restored", false))
    }
}

gantry_sdk::export_step!(SnsPublish);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alert_tells_the_outcome_and_what_was_rolled_back() {
        let ctx = Context::for_test("alert", serde_json::json!({}))
            .with_upstream("gantry.run", "status", "rolled-back")
            .with_upstream("gantry.run", "run_id", "r1")
            .with_upstream("gantry.run", "failed_step", "smoke")
            .with_upstream("gantry.run", "error", "503")
            .with_upstream("gantry.run", "rolled_back", "dns,deploy");
        let (subject, message) = alert(&ctx, Some("see the runbook"));
        assert!(subject.starts_with("[rolled-back] "), "{subject}");
        assert!(
            message.contains("failed step: smoke: 503") && message.contains("rolled back: dns,deploy"),
            "{message}"
        );
        assert!(message.ends_with("see the runbook"));
    }
}
