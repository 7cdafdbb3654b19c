//! `cache-purge`: deletes every key under a prefix of a granted Redis server after a release, so
//! the site serves what was just deployed. A dry run counts what it would delete and names a few.
//! The host holds the connection and the password and keeps every key inside the grant's prefixes.
//!
//! A purge is not undone: a cache refills from its source, so `rollback` does nothing. Each batch
//! is checkpointed before it is deleted, so the journal says how many keys an attempt began
//! deleting, even one cut off by a crash; a retry counts them, a resume runs the purge again over
//! what is left.

use gantry_sdk::redis;
use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The Redis server, by the name the pipeline declares and grants it under.
    pub server: String,
    /// Every key starting with this is deleted; it must lie under one of the grant's prefixes.
    pub prefix: String,
    /// Keys asked for per `SCAN` page and deleted per `UNLINK` (default 500, at most 10000).
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Wait between batches, in milliseconds (default 0), to spare a busy server.
    #[serde(default)]
    pub pause_ms: u64,
    /// Keys a dry run names (default 10).
    #[serde(default = "default_sample")]
    pub sample: usize,
}

fn default_batch() -> u32 {
    500
}
fn default_sample() -> usize {
    10
}

/// Checkpoint keys of batches: `batch.<n>` holds how many keys batch n found before deleting them.
const BATCH: &str = "batch.";
/// Batches checkpointed per call at most, under the host's limit of checkpoints per call.
const MAX_CHECKPOINTED: usize = 900;

/// The `SCAN MATCH` pattern of every key starting with `prefix`: its glob characters escaped.
pub fn pattern(prefix: &str) -> String {
    let mut out = String::new();
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

/// Keys an earlier attempt found and began deleting, from its checkpoints.
pub fn earlier(ctx: &Context) -> u64 {
    ctx.checkpoints().iter().filter(|(k, _)| k.starts_with(BATCH)).filter_map(|(_, v)| v.parse::<u64>().ok()).sum()
}

/// The cache purge.
pub struct CachePurge;

impl Step for CachePurge {
    fn describe() -> Describe {
        Describe::new("cache-purge", env!("CARGO_PKG_VERSION"))
            .description("Deletes every key under a prefix of a granted Redis server; a dry run counts them")
            .input::<Input>()
            .capability("redis")
            .output("deleted", "keys this call deleted")
            .output("earlier", "keys an earlier attempt of this run found and began deleting (a retry goes on from its checkpoints)")
            .output("would_delete", "in a dry run: keys under the prefix")
            .output("sample", "in a dry run: a few of them, comma-separated")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        if input.prefix.is_empty() {
            return Err(Error::failed("`prefix` is empty: a purge never reaches a whole server"));
        }
        if input.batch == 0 || input.batch > 10_000 {
            return Err(Error::failed(format!("batch must be between 1 and 10000, got {}", input.batch)));
        }
        let server = redis::server(&input.server);
        let pattern = pattern(&input.prefix);
        let (mut cursor, mut found, mut sample) = ("0".to_string(), 0u64, Vec::new());
        let before = earlier(ctx);
        let mut batches = ctx.checkpoints().keys().filter(|k| k.starts_with(BATCH)).count();
        loop {
            let page = server.scan_page(&cursor, &pattern, input.batch)?;
            if ctx.dry_run() {
                found += page.keys.len() as u64;
                sample.extend(page.keys.iter().take(input.sample.saturating_sub(sample.len())).cloned());
            } else if !page.keys.is_empty() {
                batches += 1;
                if batches <= MAX_CHECKPOINTED {
                    ctx.checkpoint(&format!("{BATCH}{batches}"), &page.keys.len().to_string())?;
                }
                found += server.unlink(&page.keys)? as u64;
                if input.pause_ms > 0 {
                    gantry_sdk::sleep_ms(input.pause_ms);
                }
            }
            cursor = page.cursor;
            if cursor == "0" {
                break;
            }
        }
        if ctx.dry_run() {
            gantry_sdk::info!("dry run: {found} keys under {} would be deleted", input.prefix);
            return Ok(Outputs::new().with("would_delete", found).with("sample", sample.join(",")));
        }
        let also = if before > 0 { format!(" ({before} found by an earlier attempt)") } else { String::new() };
        gantry_sdk::info!("deleted {found} keys under {}{also}", input.prefix);
        Ok(Outputs::new().with("deleted", found).with("earlier", before))
    }

    fn rollback(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        gantry_sdk::info!("keys under {} stay purged: a cache refills from its source", input.prefix);
        Ok(Outputs::new())
    }
}

gantry_sdk::export_step!(CachePurge);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_matches_the_prefix_literally() {
        assert_eq!(pattern("the7space:"), "the7space:*");
        assert_eq!(pattern("a[1]*"), "a\\[1\\]\\**");
    }

    #[test]
    fn earlier_attempts_are_counted_from_their_checkpoints() {
        let ctx = Context::for_test("purge", serde_json::json!({}))
            .with_checkpoint("batch.1", "500")
            .with_checkpoint("batch.2", "17")
            .with_checkpoint("other", "x");
        assert_eq!(earlier(&ctx), 517);
    }
}
