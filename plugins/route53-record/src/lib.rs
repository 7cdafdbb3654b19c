//! `route53-record`: points one Route 53 record set (name and type) at new
//! values with an UPSERT, the DNS step of a blue-green release. Before the
//! change it checkpoints the record set it replaces (or that there was none),
//! so `rollback` puts exactly that back, or deletes what it created. Requests
//! are signed by the host; the plugin never holds keys.

use gantry_sdk::{percent_encode, Context, Describe, Error, Outputs, Sigv4, Step};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Route 53 endpoint.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Hosted zone id, e.g. `Z0123456789ABC` (or `/hostedzone/Z0123456789ABC`).
    pub hosted_zone_id: String,
    /// Record name, e.g. `www.example.com`.
    pub name: String,
    /// Record type.
    #[serde(default = "default_type")]
    pub r#type: String,
    /// TTL in seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
    /// The values, e.g. `["green-alb.example.com"]`.
    pub values: Vec<String>,
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

fn default_endpoint() -> String {
    "https://route53.amazonaws.com/".into()
}
fn default_type() -> String {
    "CNAME".into()
}
fn default_ttl() -> u64 {
    300
}

/// One record set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSet {
    /// Fully qualified name, with its final dot.
    pub name: String,
    /// Type.
    pub r#type: String,
    /// TTL in seconds.
    pub ttl: u64,
    /// Values.
    pub values: Vec<String>,
}

/// The checkpoint holding the record set as it was (`null` when there was none).
const BEFORE: &str = "record_before";
const API: &str = "2013-04-01";
const NS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";

/// A name as Route 53 writes it: lower case, ending in a dot.
pub fn fqdn(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The `ChangeResourceRecordSets` body for one change.
pub fn change_body(action: &str, set: &RecordSet) -> String {
    let values: String =
        set.values.iter().map(|v| format!("<ResourceRecord><Value>{}</Value></ResourceRecord>", escape(v))).collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ChangeResourceRecordSetsRequest xmlns=\"{NS}\"><ChangeBatch><Comment>gantry</Comment><Changes><Change><Action>{action}</Action><ResourceRecordSet><Name>{}</Name><Type>{}</Type><TTL>{}</TTL><ResourceRecords>{values}</ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>",
        escape(&set.name),
        escape(&set.r#type),
        set.ttl
    )
}

/// The first record set of a `ListResourceRecordSets` answer, if it is `name`/`type`.
pub fn parse_record(xml: &str, name: &str, r#type: &str) -> Result<Option<RecordSet>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("ListResourceRecordSets: {e}"))?;
    let text = |node: roxmltree::Node, tag: &str| {
        node.children().find(|n| n.has_tag_name(tag)).and_then(|n| n.text()).map(|t| t.trim().to_string())
    };
    let Some(set) = doc.descendants().find(|n| n.has_tag_name("ResourceRecordSet")) else { return Ok(None) };
    let found = RecordSet {
        name: fqdn(&text(set, "Name").unwrap_or_default()),
        r#type: text(set, "Type").unwrap_or_default(),
        ttl: text(set, "TTL").and_then(|t| t.parse().ok()).unwrap_or_default(),
        values: set
            .descendants()
            .filter(|n| n.has_tag_name("ResourceRecord"))
            .filter_map(|r| text(r, "Value"))
            .collect(),
    };
    Ok((found.name == fqdn(name) && found.r#type == r#type).then_some(found))
}

struct Route53<'a> {
    ctx: &'a Context,
    base: String,
    sigv4: Sigv4,
}

impl Route53<'_> {
    fn new<'a>(ctx: &'a Context, input: &Input) -> Route53<'a> {
        let zone = input.hosted_zone_id.trim_start_matches("/hostedzone/");
        Route53 {
            ctx,
            base: format!("{}/{API}/hostedzone/{zone}/rrset", input.endpoint.trim_end_matches('/')),
            sigv4: Sigv4::aws(
                "route53",
                "us-east-1",
                &input.access_key_secret,
                &input.secret_key_secret,
                input.session_token_secret.as_deref(),
            ),
        }
    }

    fn send(&self, what: &str, request: gantry_sdk::RequestBuilder) -> Result<String, Error> {
        let response =
            request.aws_sigv4(self.sigv4.clone()).send().map_err(|e| e.during(format_args!("Route 53 {what}")))?;
        let body = response.text();
        if response.is_success() {
            return Ok(body);
        }
        let status = response.status();
        let text = format!("Route 53 {what} answered {status}: {}", body.chars().take(300).collect::<String>());
        if status >= 500 || status == 429 || body.contains("Throttling") || body.contains("PriorRequestNotComplete") {
            Err(Error::retryable(text))
        } else {
            Err(Error::failed(text))
        }
    }

    fn current(&self, name: &str, r#type: &str) -> Result<Option<RecordSet>, Error> {
        let url =
            format!("{}?name={}&type={}&maxitems=1", self.base, percent_encode(&fqdn(name)), percent_encode(r#type));
        let body = gantry_sdk::retrying(4, 250, || self.send("ListResourceRecordSets", self.ctx.http().get(&url)))?;
        parse_record(&body, name, r#type).map_err(Error::failed)
    }

    fn change(&self, action: &str, set: &RecordSet) -> Result<(), Error> {
        let body = change_body(action, set);
        gantry_sdk::retrying(4, 250, || {
            let request =
                self.ctx.http().post(&format!("{}/", self.base)).header("content-type", "text/xml").body(body.clone());
            self.send(&format!("{action} {} {}", set.name, set.r#type), request)
        })
        .map(|_| ())
    }
}

/// The step.
pub struct Route53Record;

impl Step for Route53Record {
    fn describe() -> Describe {
        Describe::new("route53-record", env!("CARGO_PKG_VERSION"))
            .description("UPSERT of one Route 53 record set; rollback restores the record set it replaced")
            .input::<Input>()
            .capability("network")
            .capability("secrets:aws-sigv4")
            .output("record", "the record, as name and type")
            .output("previous", "the record before the change, as JSON")
            .output("changed", "whether the record was changed")
            .output("restored", "whether the rollback restored the previous record")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        if input.values.is_empty() {
            return Err(Error::failed("`values` is empty: a record set needs at least one value"));
        }
        let api = Route53::new(ctx, &input);
        let want = RecordSet {
            name: fqdn(&input.name),
            r#type: input.r#type.clone(),
            ttl: input.ttl,
            values: input.values.clone(),
        };
        let before = api.current(&input.name, &input.r#type)?;
        let outputs = Outputs::new()
            .with("record", format!("{} {}", want.name, want.r#type))
            .with("previous", serde_json::to_string(&before).unwrap_or_default());
        if before.as_ref() == Some(&want) {
            gantry_sdk::info!("{} {} already points at {:?}; nothing to do", want.name, want.r#type, want.values);
            return Ok(outputs.with("changed", false));
        }
        if ctx.dry_run() {
            gantry_sdk::info!("dry run: would point {} {} at {:?}", want.name, want.r#type, want.values);
            return Ok(outputs.with("changed", false));
        }
        ctx.checkpoint(BEFORE, &serde_json::to_string(&before).unwrap_or_default())?;
        api.change("UPSERT", &want)?;
        gantry_sdk::info!("{} {} now points at {:?} (TTL {})", want.name, want.r#type, want.values, want.ttl);
        Ok(outputs.with("changed", true))
    }

    fn rollback(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let Some(recorded) = ctx.checkpointed(BEFORE) else {
            return Ok(Outputs::new().with("restored", false));
        };
        let before: Option<RecordSet> =
            serde_json::from_str(&recorded).map_err(|e| Error::failed(format!("recorded record set: {e}")))?;
        let api = Route53::new(ctx, &input);
        match before {
            Some(set) => {
                api.change("UPSERT", &set)?;
                gantry_sdk::info!("restored {} {} to {:?}", set.name, set.r#type, set.values);
            }
            None => match api.current(&input.name, &input.r#type)? {
                // There was none: what stands now is what the step created, deleted with its exact values.
                Some(created) => {
                    api.change("DELETE", &created)?;
                    gantry_sdk::info!("deleted {} {}, which did not exist before", created.name, created.r#type);
                }
                None => gantry_sdk::info!("{} {} does not exist; nothing to undo", fqdn(&input.name), input.r#type),
            },
        }
        Ok(Outputs::new().with("restored", true))
    }
}

gantry_sdk::export_step!(Route53Record);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_record_set_is_read_only_when_it_is_the_one_asked_for() {
        let xml = r#"<ListResourceRecordSetsResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ResourceRecordSets><ResourceRecordSet><Name>www.example.com.</Name><Type>CNAME</Type><TTL>60</TTL><ResourceRecords><ResourceRecord><Value>blue.example.com</Value></ResourceRecord></ResourceRecords></ResourceRecordSet></ResourceRecordSets></ListResourceRecordSetsResponse>"#;
        let set = parse_record(xml, "WWW.example.com", "CNAME").unwrap().unwrap();
        assert_eq!(set.values, ["blue.example.com"]);
        assert_eq!(set.ttl, 60);
        assert_eq!(parse_record(xml, "api.example.com", "CNAME").unwrap(), None, "the list starts at the next name");
        assert_eq!(parse_record(xml, "www.example.com", "A").unwrap(), None);
    }

    #[test]
    fn the_change_body_escapes_values() {
        let set =
            RecordSet { name: "x.example.com.".into(), r#type: "TXT".into(), ttl: 5, values: vec!["\"a<b\"".into()] };
        let body = change_body("UPSERT", &set);
        assert!(body.contains("<Action>UPSERT</Action>") && body.contains("<Value>\"a&lt;b\"</Value>"), "{body}");
        assert_eq!(fqdn("WWW.Example.com"), "www.example.com.");
    }
}
