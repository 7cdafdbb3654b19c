//! `notify`: posts a run summary to a Slack-compatible incoming webhook and/or
//! the PagerDuty Events API v2, for `if: failure()` / `always()` steps. The
//! webhook URL and the routing key are secrets the host fills in at send time
//! (`gantry_sdk::secret`): the plugin never sees them.

use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// PagerDuty Events API v2 settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerDuty {
    /// Secret holding the integration's routing key.
    #[serde(default = "default_routing_key")]
    pub routing_key_secret: String,
    /// Events endpoint.
    #[serde(default = "default_events_url")]
    pub events_url: String,
    /// `critical`, `error`, `warning` or `info`.
    #[serde(default = "default_severity")]
    pub severity: String,
}

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Secret holding the Slack-compatible incoming webhook URL.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// PagerDuty: `trigger` when the run failed, `resolve` when it did not (same dedup key per pipeline, environment and entity).
    #[serde(default)]
    pub pagerduty: Option<PagerDuty>,
    /// Link to the run's report.
    #[serde(default)]
    pub report_url: Option<String>,
}

fn default_routing_key() -> String {
    "PAGERDUTY_ROUTING_KEY".into()
}
fn default_events_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}
fn default_severity() -> String {
    "error".into()
}

/// What happened, from the host's account of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub pipeline: String,
    pub environment: String,
    pub entity: String,
    pub run_id: String,
    /// `running` (nothing failed), `failed`, `paused`, `rolled-back` or `rollback-failed`.
    pub status: String,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    /// Steps the rollback undid, before this step ran.
    pub rolled_back: Vec<String>,
    /// Steps whose rollback failed: the target needs a person.
    pub rollback_failed: Vec<String>,
    pub report_url: Option<String>,
}

fn list(text: Option<&str>) -> Vec<String> {
    text.map(|s| s.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default()
}

impl Summary {
    /// From the context.
    pub fn of(ctx: &Context, report_url: Option<String>) -> Self {
        Self {
            pipeline: ctx.pipeline().into(),
            environment: ctx.environment().into(),
            entity: ctx.entity().into(),
            run_id: ctx.run_info("run_id").unwrap_or_default().into(),
            status: ctx.run_info("status").unwrap_or("running").into(),
            failed_step: ctx.run_info("failed_step").map(String::from),
            error: ctx.run_info("error").map(String::from),
            rolled_back: list(ctx.run_info("rolled_back")),
            rollback_failed: list(ctx.run_info("rollback_failed")),
            report_url,
        }
    }

    /// Whether something went wrong in the run.
    pub fn failed(&self) -> bool {
        self.status != "running"
    }

    /// One line for titles.
    pub fn title(&self) -> String {
        let (pipeline, environment, entity) = (&self.pipeline, &self.environment, &self.entity);
        let step = self.failed_step.as_deref().unwrap_or("?");
        if !self.failed() {
            return format!("{pipeline} succeeded in {environment} for {entity}");
        }
        if self.status == "paused" {
            return format!(
                "{pipeline} is paused in {environment} for {entity} at step `{step}`: decide `gantry resume` or `gantry rollback`"
            );
        }
        let mut title = format!("{pipeline} failed in {environment} for {entity} at step `{step}`");
        if !self.rollback_failed.is_empty() {
            title += &format!("; ROLLBACK FAILED for {}: needs a person", self.rollback_failed.join(", "));
        }
        title
    }

    /// The Slack message: `text` plus blocks.
    pub fn slack(&self) -> Value {
        let mut fields = vec![
            json!({"type": "mrkdwn", "text": format!("*Pipeline*\n{}", self.pipeline)}),
            json!({"type": "mrkdwn", "text": format!("*Environment*\n{}", self.environment)}),
            json!({"type": "mrkdwn", "text": format!("*Entity*\n{}", self.entity)}),
            json!({"type": "mrkdwn", "text": format!("*Run*\n{}", self.run_id)}),
        ];
        if let Some(step) = &self.failed_step {
            fields.push(json!({"type": "mrkdwn", "text": format!("*Failed step*\n{step}")}));
        }
        if !self.rolled_back.is_empty() {
            fields.push(json!({"type": "mrkdwn", "text": format!("*Rolled back*\n{}", self.rolled_back.join(", "))}));
        }
        if !self.rollback_failed.is_empty() {
            let failed = self.rollback_failed.join(", ");
            fields.push(json!({"type": "mrkdwn", "text": format!("*Rollback failed*\n{failed}")}));
        }
        let mut blocks = vec![
            json!({"type": "header", "text": {"type": "plain_text", "text": self.title()}}),
            json!({"type": "section", "fields": fields}),
        ];
        if let Some(error) = &self.error {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{error}```")}}));
        }
        if let Some(url) = &self.report_url {
            blocks.push(
                json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{url}|Run report>")}]}),
            );
        }
        json!({"text": self.title(), "blocks": blocks})
    }

    /// The PagerDuty event: `trigger` on failure (`critical` when a rollback failed), `resolve` otherwise,
    /// deduplicated per pipeline × environment × entity.
    pub fn pagerduty(&self, pd: &PagerDuty, routing_key: &str) -> Value {
        let dedup = format!("gantry/{}/{}/{}", self.pipeline, self.environment, self.entity);
        if !self.failed() {
            return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup});
        }
        let mut event = json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup,
            "payload": {
                "summary": self.title(),
                "source": format!("gantry/{}", self.pipeline),
                "severity": if self.rollback_failed.is_empty() { pd.severity.as_str() } else { "critical" },
                "component": self.failed_step,
                "group": self.environment,
                "class": "deployment",
                "custom_details": {
                    "run_id": self.run_id, "entity": self.entity, "error": self.error, "status": self.status,
                    "rolled_back": self.rolled_back, "rollback_failed": self.rollback_failed,
                },
            },
        });
        if let Some(url) = &self.report_url {
            event["links"] = json!([{"href": url, "text": "Run report"}]);
        }
        event
    }
}

/// The step.
pub struct Notify;

impl Step for Notify {
    fn describe() -> Describe {
        Describe::new("notify", env!("CARGO_PKG_VERSION"))
            .description("Posts a run summary to Slack-compatible webhooks and PagerDuty Events v2")
            .input::<Input>()
            .capability("network")
            .capability("secrets:url")
            .capability("secrets:body")
            .output("title", "the notification's title")
            .output("webhook_status", "the webhook's HTTP status")
            .output("pagerduty_action", "the PagerDuty event action sent")
            .output("pagerduty_dedup_key", "the PagerDuty incident's dedup key")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        if input.webhook_secret.is_none() && input.pagerduty.is_none() {
            return Err(Error::failed("nothing to notify: set webhook_secret and/or pagerduty"));
        }
        let summary = Summary::of(ctx, input.report_url.clone());
        let mut out = Outputs::new().with("title", summary.title());
        if let Some(secret) = &input.webhook_secret {
            let r = ctx
                .http()
                .post(&gantry_sdk::secret(secret))
                .json(&summary.slack())
                .send()
                .map_err(|e| Error::retryable(format!("webhook: {e}")))?;
            if !r.is_success() {
                return Err(Error::retryable(format!("webhook answered {}: {}", r.status(), r.text())));
            }
            out.set("webhook_status", r.status().to_string());
        }
        if let Some(pd) = &input.pagerduty {
            let event = summary.pagerduty(pd, &gantry_sdk::secret(&pd.routing_key_secret));
            let r = ctx
                .http()
                .post(&pd.events_url)
                .json(&event)
                .send()
                .map_err(|e| Error::retryable(format!("pagerduty: {e}")))?;
            if r.status() != 202 {
                return Err(Error::retryable(format!("pagerduty answered {}: {}", r.status(), r.text())));
            }
            out.set("pagerduty_action", event["event_action"].as_str().unwrap_or_default());
            out.set("pagerduty_dedup_key", event["dedup_key"].as_str().unwrap_or_default());
        }
        Ok(out)
    }
}

gantry_sdk::export_step!(Notify);

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Summary {
        Summary {
            pipeline: "release".into(),
            environment: "production".into(),
            entity: "the_7_space".into(),
            run_id: "r1".into(),
            status: "rolled-back".into(),
            failed_step: Some("shift".into()),
            error: Some("gate failed at 25%".into()),
            rolled_back: vec!["audit".into()],
            rollback_failed: vec![],
            report_url: Some("https://ci.example/run/1".into()),
        }
    }

    #[test]
    fn pagerduty_triggers_on_failure_and_resolves_with_the_same_key() {
        let pd = PagerDuty { routing_key_secret: "K".into(), events_url: "u".into(), severity: "critical".into() };
        let t = failed().pagerduty(&pd, "{{secret:K}}");
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["payload"]["severity"], "critical");
        assert_eq!(t["payload"]["summary"], "release failed in production for the_7_space at step `shift`");
        let ok = Summary { status: "running".into(), failed_step: None, ..failed() };
        let r = ok.pagerduty(&pd, "{{secret:K}}");
        assert_eq!((r["event_action"].as_str(), r["dedup_key"].clone()), (Some("resolve"), t["dedup_key"].clone()));
    }

    #[test]
    fn slack_message_has_text_and_blocks() {
        let m = failed().slack();
        assert_eq!(m["text"], "release failed in production for the_7_space at step `shift`");
        assert!(m["blocks"].to_string().contains("*Rolled back*\\naudit"));
        assert!(m["blocks"].to_string().contains("<https://ci.example/run/1|Run report>"));
    }

    #[test]
    fn a_failed_rollback_is_critical_and_a_pause_asks_for_a_decision() {
        let pd = PagerDuty { routing_key_secret: "K".into(), events_url: "u".into(), severity: "warning".into() };
        let broken = Summary { status: "rollback-failed".into(), rollback_failed: vec!["shift".into()], ..failed() };
        assert_eq!(broken.pagerduty(&pd, "k")["payload"]["severity"], "critical");
        assert!(broken.title().ends_with("; ROLLBACK FAILED for shift: needs a person"), "{}", broken.title());
        assert!(broken.slack()["blocks"].to_string().contains("*Rollback failed*\\nshift"));
        let paused = Summary { status: "paused".into(), rolled_back: vec![], ..failed() };
        assert!(paused.title().contains("is paused in production"), "{}", paused.title());
        assert_eq!(paused.pagerduty(&pd, "k")["event_action"], "trigger");
    }
}
