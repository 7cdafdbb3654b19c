//! `gantry step run`: one step, outside any pipeline.

use crate::build::{build_crate, BuildOptions};
use crate::capability::secrets::read_source;
use crate::capability::{Grant, Grants, NetworkPolicy, Secret};
use crate::sandbox::{limits::parse_memory, CallError, Limits, Runtime, StepCall};
use anyhow::anyhow;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub(crate) enum StepCommand {
    /// Run one step and print its outputs.
    ///
    /// Exit code 0 when the step succeeds, 1 when it fails, 2 for bad usage or an unusable plugin.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// A plugin crate directory (built first) or a component file.
    plugin: PathBuf,
    /// Input field as key=value; the value is read as JSON when it parses, else as a string.
    #[arg(long = "with", value_name = "KEY=VALUE")]
    with: Vec<String>,
    /// Grant network access to an origin, e.g. http://127.0.0.1:8080 (repeatable).
    #[arg(long = "allow-net", value_name = "ORIGIN")]
    allow_net: Vec<String>,
    /// Grant a secret: NAME=env:VAR@ORIGIN or NAME=file:PATH@ORIGIN (repeatable).
    #[arg(long = "secret", value_name = "NAME=SOURCE@ORIGIN")]
    secrets: Vec<String>,
    /// Wall-clock limit for the call, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Memory limit, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_memory)]
    memory: usize,
    /// Step id the plugin sees.
    #[arg(long, default_value = "step")]
    id: String,
    /// Call `rollback` instead of `run`.
    #[arg(long)]
    rollback: bool,
    /// Ask the step to report changes without making them.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl StepCommand {
    pub(crate) async fn execute(self) -> anyhow::Result<u8> {
        match self {
            StepCommand::Run(args) => run(args).await,
        }
    }
}

/// Parses `key=value` pairs into the JSON input object.
fn input_from(pairs: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut input = serde_json::Map::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').ok_or_else(|| anyhow!("--with {pair:?}: expected KEY=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        input.insert(key.to_string(), value);
    }
    Ok(serde_json::Value::Object(input))
}

/// Parses `NAME=env:VAR@ORIGIN` or `NAME=file:PATH@ORIGIN`.
fn secret_from(spec: &str) -> anyhow::Result<(String, Secret)> {
    let (name, rest) = spec.split_once('=').ok_or_else(|| anyhow!("--secret {spec:?}: expected NAME=SOURCE@ORIGIN"))?;
    let (source, origin) = rest.rsplit_once('@').ok_or_else(|| {
        anyhow!("--secret {spec:?}: bind it to an origin, e.g. {name}=env:VAR@https://api.example.com")
    })?;
    let value = read_source(source).map_err(|e| anyhow!("--secret {name}: {e}"))?;
    Ok((name.to_string(), Secret::new(value, vec![Grant::parse(origin)?])))
}

/// A component file as given, or the component built from a crate directory.
pub(crate) fn resolve_plugin(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_dir() {
        let built = build_crate(path, &BuildOptions::default())?;
        Ok(built.path)
    } else {
        Ok(path.to_path_buf())
    }
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let mut grants = Grants { network: NetworkPolicy::parse(&args.allow_net)?, ..Default::default() };
    for spec in &args.secrets {
        let (name, secret) = secret_from(spec)?;
        grants.secrets.insert(name, secret);
    }
    let mut call = StepCall {
        grants,
        limits: Limits { memory_bytes: args.memory, timeout: args.timeout, ..Limits::default() },
        ..Default::default()
    };
    call.context.step_id = args.id.clone();
    call.context.pipeline = "adhoc".into();
    call.context.environment = "development".into();
    call.context.entity = "default".into();
    call.context.dry_run = args.dry_run;
    call.context.input = input_from(&args.with)?;

    let source = args.plugin.clone();
    let file = tokio::task::spawn_blocking(move || resolve_plugin(&source)).await??;
    let runtime = Runtime::builder().build().map_err(|e| anyhow!("{e:#}"))?;
    let plugin = runtime.load(&file)?;
    let started = Instant::now();
    let result = if args.rollback { plugin.rollback(&call).await } else { plugin.run(&call).await };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let plugin_json = serde_json::json!({"path": file, "sha256": plugin.sha256(), "cache": plugin.cache_status()});
    match result {
        Ok(outputs) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "step": args.id, "outputs": outputs, "plugin": plugin_json, "duration_ms": elapsed_ms})
                );
            } else {
                println!("step `{}` succeeded in {elapsed_ms:.1} ms", args.id);
                for (name, value) in &outputs {
                    println!("  {name} = {value}");
                }
            }
            Ok(0)
        }
        Err(e) => {
            report_failure(&args, &e, plugin_json, elapsed_ms);
            Ok(super::EXIT_STEP_FAILED)
        }
    }
}

fn report_failure(args: &RunArgs, e: &CallError, plugin_json: serde_json::Value, elapsed_ms: f64) {
    if args.json {
        let error = serde_json::json!({"kind": e.kind(), "message": e.to_string(), "retryable": e.is_retryable()});
        println!(
            "{}",
            serde_json::json!({"ok": false, "step": args.id, "error": error, "plugin": plugin_json, "duration_ms": elapsed_ms})
        );
    } else {
        eprintln!("error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_values_are_json_when_they_parse() {
        let input =
            input_from(&["url=http://x/a=b".into(), "probes=3".into(), "flag=true".into(), "name=abc".into()]).unwrap();
        assert_eq!(input, serde_json::json!({"url": "http://x/a=b", "probes": 3, "flag": true, "name": "abc"}));
        assert!(input_from(&["novalue".into()]).is_err());
    }

    #[test]
    fn secrets_must_be_bound() {
        std::env::set_var("GANTRY_TEST_SECRET_SPEC", "v");
        let (name, secret) = secret_from("TOKEN=env:GANTRY_TEST_SECRET_SPEC@https://api.notion.com").unwrap();
        assert_eq!(name, "TOKEN");
        assert_eq!(secret.bound_to()[0].to_string(), "https://api.notion.com");
        assert!(secret_from("TOKEN=env:GANTRY_TEST_SECRET_SPEC").unwrap_err().to_string().contains("bind it"));
        assert!(secret_from("TOKEN=vault:x@https://a").unwrap_err().to_string().contains("env:VAR or file:PATH"));
    }
}
