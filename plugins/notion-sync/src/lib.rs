//! `notion-sync`: reads a Notion database of contacts, validates them (email
//! syntax, duplicates by email), classifies each into a segment by rules from
//! `with:`, and writes the segment back only where it changed, so a second
//! run writes nothing. Before each batch of writes the previous values are
//! checkpointed (journaled durably), so `rollback` restores every page the
//! step touched — whether `run` finished, failed part-way, was retried or the
//! process died.

pub mod api;
pub mod contacts;

use api::Api;
use contacts::{Contact, Invalid, SegmentRule};
use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// API base URL.
    #[serde(default = "default_base")]
    pub api_url: String,
    /// Data source to query (API 2025-09-03).
    #[serde(default)]
    pub data_source_id: Option<String>,
    /// Database to query with the legacy endpoint (API 2022-06-28).
    #[serde(default)]
    pub database_id: Option<String>,
    /// `2025-09-03` (data sources) or `2022-06-28` (databases).
    #[serde(default = "default_version")]
    pub notion_version: String,
    /// Secret holding the integration token.
    #[serde(default = "default_token")]
    pub token_secret: String,
    /// Query `filter`, passed through.
    #[serde(default)]
    pub filter: Option<Value>,
    /// Query `sorts`, passed through.
    #[serde(default)]
    pub sorts: Option<Value>,
    /// Page size, 1–100.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Property holding the email.
    #[serde(default = "default_email")]
    pub email_property: String,
    /// Select property the segment is written to.
    #[serde(default = "default_segment")]
    pub segment_property: String,
    /// Segment rules, first match wins (defaults: artists/gallery, wellness clients, business partners).
    #[serde(default = "contacts::default_rules")]
    pub segments: Vec<SegmentRule>,
    /// Segment of contacts no rule matches.
    #[serde(default = "default_fallback")]
    pub fallback_segment: String,
    /// Retries of a rate-limited or failed call.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Longest single wait, in ms.
    #[serde(default = "default_max_wait")]
    pub max_wait_ms: u64,
}

fn default_base() -> String {
    "https://api.notion.com".into()
}
fn default_version() -> String {
    "2025-09-03".into()
}
fn default_token() -> String {
    "NOTION_TOKEN".into()
}
fn default_page_size() -> u32 {
    100
}
fn default_email() -> String {
    "Email".into()
}
fn default_segment() -> String {
    "Segment".into()
}
fn default_fallback() -> String {
    "general visitors".into()
}
fn default_retries() -> u32 {
    5
}
fn default_max_wait() -> u64 {
    30_000
}

fn api<'a>(ctx: &'a Context, input: &Input) -> Api<'a> {
    Api {
        ctx,
        base: input.api_url.clone(),
        version: input.notion_version.clone(),
        token_secret: input.token_secret.clone(),
        max_retries: input.max_retries,
        max_wait_ms: input.max_wait_ms,
    }
}

/// Every page of the data source (or legacy database), following `next_cursor`.
fn query_all(api: &Api, input: &Input) -> Result<Vec<Value>, Error> {
    if !(1..=100).contains(&input.page_size) {
        return Err(Error::failed(format!("page_size {} must be 1-100", input.page_size)));
    }
    let path = match (input.notion_version.as_str(), &input.data_source_id, &input.database_id) {
        ("2022-06-28", _, Some(db)) => format!("/v1/databases/{db}/query"),
        ("2022-06-28", _, None) => {
            return Err(Error::failed("notion_version 2022-06-28 queries a database: set database_id"))
        }
        (_, Some(ds), _) => format!("/v1/data_sources/{ds}/query"),
        (_, None, _) => {
            return Err(Error::failed("set data_source_id (or database_id with notion_version 2022-06-28)"))
        }
    };
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"page_size": input.page_size});
        if let Some(f) = &input.filter {
            body["filter"] = f.clone();
        }
        if let Some(s) = &input.sorts {
            body["sorts"] = s.clone();
        }
        if let Some(c) = &cursor {
            body["start_cursor"] = json!(c);
        }
        let list = api.call("POST", &path, &body)?;
        pages.extend(list["results"].as_array().cloned().unwrap_or_default());
        match (list["has_more"].as_bool(), list["next_cursor"].as_str()) {
            (Some(true), Some(next)) => cursor = Some(next.to_string()),
            _ => return Ok(pages),
        }
    }
}

fn set_segment(api: &Api, page: &str, property: &str, value: Option<&str>) -> Result<(), Error> {
    let select = value.map(|v| json!({"name": v})).unwrap_or(Value::Null);
    api.call("PATCH", &format!("/v1/pages/{page}"), &json!({"properties": {property: {"select": select}}})).map(|_| ())
}

/// Writes checkpointed per batch: one checkpoint covers this many writes, so 1000 checkpoints (the host's
/// cap per call) cover 50 000 changes, each well under the 64 KiB a checkpoint may hold.
pub const BATCH: usize = 50;

/// Checkpoint key of the `n`-th batch; zero-padded so keys sort in write order.
fn batch_key(n: usize) -> String {
    format!("batch {n:05}")
}

/// The changes every checkpointed batch announced, in write order.
pub fn checkpointed_changes(checkpoints: &BTreeMap<String, String>) -> Result<Vec<Change>, Error> {
    let mut changes = Vec::new();
    for (_, value) in checkpoints.iter().filter(|(k, _)| k.starts_with("batch ")) {
        let batch: Vec<Change> =
            serde_json::from_str(value).map_err(|e| Error::failed(format!("checkpointed changes: {e}")))?;
        changes.extend(batch);
    }
    Ok(changes)
}

/// Writes each change's previous value back, newest first (an empty value clears the select);
/// one failed write does not stop the others, and the first error is returned.
fn restore(api: &Api, property: &str, changes: &[Change]) -> Result<(), Error> {
    let mut first = None;
    for c in changes.iter().rev() {
        if let Err(e) = set_segment(api, &c.page, property, Some(c.from.as_str()).filter(|s| !s.is_empty())) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// One write the sync makes: page, old and new segment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// Page id.
    pub page: String,
    /// Segment before, empty when unset.
    pub from: String,
    /// Segment after.
    pub to: String,
}

/// The segment each valid contact should have, where it differs from the current one.
pub fn plan_changes(valid: &[Contact], input: &Input) -> (Vec<Change>, BTreeMap<String, usize>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut changes = Vec::new();
    for c in valid {
        let segment = contacts::classify(c, &input.segments, &input.fallback_segment);
        *counts.entry(segment.to_string()).or_default() += 1;
        let current = c.props.get(&input.segment_property).cloned().unwrap_or_default();
        if current != segment {
            changes.push(Change { page: c.id.clone(), from: current, to: segment.to_string() });
        }
    }
    (changes, counts)
}

/// The step.
pub struct NotionSync;

impl Step for NotionSync {
    fn describe() -> Describe {
        Describe::new("notion-sync", env!("CARGO_PKG_VERSION"))
            .description("Validates and segments Notion contacts; writes back only what changed")
            .input::<Input>()
            .capability("network")
            .capability("secrets:bearer")
            .output("contacts", "contacts read")
            .output("valid", "contacts that passed validation")
            .output("invalid", "contacts that failed it")
            .output("duplicates", "duplicate contacts found")
            .output("changes", "changes planned")
            .output("updated", "changes applied")
            .output("dry_run", "whether it was a dry run")
            .output("changed", "the changes applied, as JSON")
            .output("segment.<name>", "contacts in one segment")
            .output("restored", "changes the rollback undid")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let api = api(ctx, &input);
        let pages = query_all(&api, &input)?;
        let all: Vec<Contact> = pages.iter().map(contacts::from_page).collect();
        let (valid, invalid) = contacts::validate(&all, &input.email_property);
        for (c, why) in &invalid {
            match why {
                Invalid::Email(e) => gantry_sdk::warn!("page {}: invalid email {e:?}", c.id),
                Invalid::Duplicate(first) => gantry_sdk::warn!("page {}: duplicate email of page {first}", c.id),
            }
        }
        let (changes, counts) = plan_changes(&valid, &input);
        let mut applied = Vec::new();
        if !ctx.dry_run() {
            // A retry or a resume numbers its batches after those already journaled, whose first values stay.
            let done = ctx.checkpoints().keys().filter(|k| k.starts_with("batch ")).count();
            for (n, batch) in changes.chunks(BATCH).enumerate() {
                // The previous values are in the journal before the first write of the batch: if the step
                // fails or the process dies mid-batch, rollback restores them (rewriting an unwritten page's
                // value is harmless).
                ctx.checkpoint(&batch_key(done + n), &serde_json::to_string(batch)?)?;
                for change in batch {
                    set_segment(&api, &change.page, &input.segment_property, Some(&change.to))?;
                    applied.push(change.clone());
                }
            }
        } else {
            for c in &changes {
                gantry_sdk::info!("dry run: page {} {:?} -> {:?}", c.page, c.from, c.to);
            }
        }
        let duplicates = invalid.iter().filter(|(_, w)| matches!(w, Invalid::Duplicate(_))).count();
        let mut out = Outputs::new()
            .with("contacts", all.len())
            .with("valid", valid.len())
            .with("invalid", invalid.len())
            .with("duplicates", duplicates)
            .with("changes", changes.len())
            .with("updated", applied.len())
            .with("dry_run", ctx.dry_run())
            .with("changed", serde_json::to_string(&applied).unwrap_or_default());
        for (segment, n) in counts {
            out.set(format!("segment.{}", slug(&segment)), n.to_string());
        }
        Ok(out)
    }

    fn rollback(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        // The checkpoints cover every attempt, finished or not; the outputs only the attempt that finished.
        let mut changes = checkpointed_changes(&ctx.checkpoints())?;
        if changes.is_empty() {
            let Some(recorded) = ctx.recorded("changed") else {
                return Err(Error::failed("run recorded no changes; nothing to restore"));
            };
            changes = serde_json::from_str(recorded).map_err(|e| Error::failed(format!("recorded changes: {e}")))?;
        }
        restore(&api(ctx, &input), &input.segment_property, &changes)?;
        Ok(Outputs::new().with("restored", changes.len()))
    }
}

gantry_sdk::export_step!(NotionSync);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpointed_batches_come_back_in_write_order() {
        let change = |page: &str, from: &str| Change { page: page.into(), from: from.into(), to: "x".into() };
        let ctx = Context::for_test("sync", json!({}));
        for (n, batch) in [vec![change("p1", "a"), change("p2", "")], vec![change("p1", "x2")]].iter().enumerate() {
            ctx.checkpoint(&batch_key(n), &serde_json::to_string(batch).unwrap()).unwrap();
        }
        ctx.checkpoint("other", "ignored").unwrap();
        let pages: Vec<(String, String)> =
            checkpointed_changes(&ctx.checkpoints()).unwrap().into_iter().map(|c| (c.page, c.from)).collect();
        let expected = [("p1", "a"), ("p2", ""), ("p1", "x2")].map(|(p, f)| (p.to_string(), f.to_string()));
        assert_eq!(pages, expected, "restored newest first, p1 ends at its first value");
        assert!(batch_key(9) < batch_key(10), "keys sort in write order");
    }
}
