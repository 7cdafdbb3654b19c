//! `wordpress-check`: checks a WordPress site before and after a deployment —
//! the REST API answers and lists `wp/v2`; an authenticated call with an
//! application password (basic auth filled in by the host) succeeds; a webhook
//! accepts a test payload signed with HMAC-SHA256 by the host; N probes stay
//! under a latency threshold.

use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// A webhook that must accept a signed test payload.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Path on the site, e.g. `/wp-json/gantry/v1/webhook`.
    pub path: String,
    /// Secret the host signs the body with.
    #[serde(default = "default_webhook_secret")]
    pub secret: String,
    /// Header carrying the signature.
    #[serde(default = "default_signature_header")]
    pub header: String,
    /// Prefix before the hex signature.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Site root, e.g. `https://the7space.example`.
    pub site_url: String,
    /// User of the application password.
    #[serde(default)]
    pub username: Option<String>,
    /// Secret holding the application password (checked when `username` is set).
    #[serde(default = "default_app_password")]
    pub app_password_secret: String,
    /// Signed webhook check.
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// Latency probes of `/wp-json/`.
    #[serde(default = "default_probes")]
    pub probes: u32,
    /// Highest acceptable p95 latency.
    #[serde(default = "default_max_latency")]
    pub max_latency_ms: f64,
}

fn default_webhook_secret() -> String {
    "WP_WEBHOOK_SECRET".into()
}
fn default_signature_header() -> String {
    "X-Gantry-Signature".into()
}
fn default_prefix() -> String {
    "sha256=".into()
}
fn default_app_password() -> String {
    "WP_APP_PASSWORD".into()
}
fn default_probes() -> u32 {
    5
}
fn default_max_latency() -> f64 {
    500.0
}

/// The value at `q` (0–1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `WordPress 6.1.1` from `<meta name="generator" content="WordPress 6.1.1" />`.
pub fn generator_version(html: &str) -> Option<String> {
    let at = html.find("content=\"WordPress ")?;
    let rest = &html[at + "content=\"WordPress ".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// `6.1.9` from an RSS feed's `<generator>https://wordpress.org/?v=6.1.9</generator>`.
pub fn feed_version(xml: &str) -> Option<String> {
    let at = xml.find("wordpress.org/?v=")?;
    let rest = &xml[at + "wordpress.org/?v=".len()..];
    Some(rest[..rest.find('<')?].trim().to_string())
}

fn get(ctx: &Context, url: &str) -> Result<gantry_sdk::Response, Error> {
    ctx.http().get(url).send().map_err(|e| Error::retryable(format!("GET {url}: {e}")))
}

/// The step.
pub struct WordpressCheck;

impl Step for WordpressCheck {
    fn describe() -> Describe {
        Describe::new("wordpress-check", env!("CARGO_PKG_VERSION"))
            .description("WordPress REST API, application-password auth, signed webhook and latency check")
            .input::<Input>()
            .capability("network")
            .capability("secrets:basic")
            .capability("secrets:hmac-sha256")
            .output("site_name", "the site's name")
            .output("wp_version", "the WordPress version, or hidden")
            .output("user", "the authenticated user")
            .output("webhook_status", "the webhook's HTTP status")
            .output("latency_ms_p50", "the median request's latency, in milliseconds")
            .output("latency_ms_p95", "the 95th percentile latency, in milliseconds")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let site = input.site_url.trim_end_matches('/').to_string();
        let mut out = Outputs::new();

        let index = get(ctx, &format!("{site}/wp-json/"))?;
        if index.status() != 200 {
            return Err(Error::retryable(format!("{site}/wp-json/ answered {}", index.status())));
        }
        let api: Value = index.json()?;
        let namespaces: Vec<&str> =
            api["namespaces"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if !namespaces.contains(&"wp/v2") {
            return Err(Error::failed(format!("{site}/wp-json/ does not list wp/v2 (namespaces: {namespaces:?})")));
        }
        out.set("site_name", api["name"].as_str().unwrap_or_default());
        // The version is exposed by the theme's generator tag or the feed, unless a site hides it.
        let version = get(ctx, &format!("{site}/"))
            .ok()
            .and_then(|home| generator_version(&home.text()))
            .or_else(|| get(ctx, &format!("{site}/?feed=rss2")).ok().and_then(|f| feed_version(&f.text())));
        out.set("wp_version", version.unwrap_or_else(|| "hidden".into()));

        if let Some(user) = &input.username {
            let me = ctx
                .http()
                .get(&format!("{site}/wp-json/wp/v2/users/me?context=edit"))
                .basic_secret(user, &input.app_password_secret)
                .send()
                .map_err(|e| Error::failed(format!("users/me: {e}")))?;
            if me.status() != 200 {
                let body: Value = me.json().unwrap_or(Value::Null);
                return Err(Error::failed(format!(
                    "authenticated call as {user} answered {}: {} {}",
                    me.status(),
                    body["code"].as_str().unwrap_or(""),
                    body["message"].as_str().unwrap_or("")
                )));
            }
            let body: Value = me.json()?;
            out.set("user", body["slug"].as_str().or(body["name"].as_str()).unwrap_or_default());
        }

        if let Some(hook) = &input.webhook {
            let payload = json!({
                "event": "gantry.test",
                "pipeline": ctx.pipeline(),
                "environment": ctx.environment(),
                "entity": ctx.entity(),
                "at_ms": gantry_sdk::now_ms(),
            });
            let url = format!("{site}{}", hook.path);
            let r = ctx
                .http()
                .post(&url)
                .json(&payload)
                .hmac_sha256_secret(&hook.header, &hook.prefix, &hook.secret)
                .send()
                .map_err(|e| Error::failed(format!("webhook {url}: {e}")))?;
            if !r.is_success() {
                return Err(Error::failed(format!(
                    "webhook {url} refused the signed test payload: {} {}",
                    r.status(),
                    r.text()
                )));
            }
            out.set("webhook_status", r.status().to_string());
        }

        let mut samples = Vec::new();
        for _ in 0..input.probes.clamp(1, 100) {
            let r = get(ctx, &format!("{site}/wp-json/"))?;
            if r.status() != 200 {
                return Err(Error::retryable(format!("probe of {site}/wp-json/ answered {}", r.status())));
            }
            samples.push(r.elapsed_us() as f64 / 1000.0);
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let (p50, p95) = (percentile(&samples, 0.5), percentile(&samples, 0.95));
        out.set("latency_ms_p50", format!("{p50:.1}"));
        out.set("latency_ms_p95", format!("{p95:.1}"));
        if p95 > input.max_latency_ms {
            return Err(Error::retryable(format!(
                "p95 latency {p95:.1} ms is over max_latency_ms {}",
                input.max_latency_ms
            )));
        }
        Ok(out)
    }
}

gantry_sdk::export_step!(WordpressCheck);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_version() {
        let s = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!((percentile(&s, 0.5), percentile(&s, 0.95)), (3.0, 100.0));
        let html = r#"<meta name="generator" content="WordPress 6.1.1" />"#;
        assert_eq!(generator_version(html).as_deref(), Some("6.1.1"));
        assert_eq!(generator_version("<html>"), None);
        assert_eq!(feed_version("<generator>https://wordpress.org/?v=6.1.9</generator>").as_deref(), Some("6.1.9"));
    }
}
