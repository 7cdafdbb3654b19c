//! `gantry step run`: one step, outside any pipeline.

use crate::build::build_crate;
use crate::capability::aws_credentials::{AwsCredentialSpec, AwsCredentials};
use crate::capability::secrets::SecretSource;
use crate::capability::{FileGrant, Files, Grant, Grants, NetworkPolicy, Secret};
use crate::pipeline::ResourceLimits;
use crate::sandbox::{limits::parse_memory, CallError, CheckpointLog, RequestLog, RequestRecord, StepCall};
use anyhow::anyhow;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// Let granted names resolve into a restricted address range, e.g. 10.0.0.0/8 (repeatable).
    #[arg(long = "allow-address", value_name = "RANGE", value_parser = crate::capability::address::parse_range)]
    allow_address: Vec<ipnet::IpNet>,
    /// Grant a directory read-only; the plugin sees it at /<DIR> (repeatable).
    #[arg(long = "files", value_name = "DIR")]
    files: Vec<String>,
    /// Give the plugin a writable /artifacts directory backed by DIR.
    #[arg(long, value_name = "DIR")]
    artifacts: Option<PathBuf>,
    /// Most HTTP requests the call may make (default as in pipelines: 10000).
    #[arg(long)]
    requests: Option<u32>,
    /// Largest HTTP response body, e.g. 16MiB (the default).
    #[arg(long, value_parser = parse_memory)]
    response_size: Option<usize>,
    /// Longest one HTTP request may take (default 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// Most bytes of stdout/stderr kept, of log lines, and of outputs returned, e.g. 1MiB (the default).
    #[arg(long, value_parser = parse_memory)]
    output: Option<usize>,
    /// Most bytes left in `/artifacts` (with --artifacts), e.g. 256MiB (the default).
    #[arg(long, value_parser = parse_memory)]
    artifacts_size: Option<usize>,
    /// Wall-clock limit for the call, e.g. 10s, 500ms, 2m (default 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Memory limit, e.g. 64MiB (the default).
    #[arg(long, value_parser = parse_memory)]
    memory: Option<usize>,
    /// Step id the plugin sees.
    #[arg(long, default_value = "step")]
    id: String,
    /// Call `rollback` instead of `run`.
    #[arg(long)]
    rollback: bool,
    /// Call only the step's pre-flight (reads, with every grant read-only) and print its checks;
    /// exit 7 when one fails.
    #[arg(long, conflicts_with = "rollback")]
    preflight: bool,
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
fn secret_from(spec: &str) -> anyhow::Result<(String, Given)> {
    let (name, rest) = spec.split_once('=').ok_or_else(|| anyhow!("--secret {spec:?}: expected NAME=SOURCE@ORIGIN"))?;
    let (source, origin) = rest.rsplit_once('@').ok_or_else(|| {
        anyhow!("--secret {spec:?}: bind it to an origin, e.g. {name}=env:VAR@https://api.example.com")
    })?;
    let bound = vec![Grant::parse(origin)?];
    let source = SecretSource::parse(source).map_err(|e| anyhow!("--secret {name}: {e}"))?;
    if let SecretSource::AwsCredentials(spec) = source {
        return Ok((name.to_string(), Given::Credentials(spec, bound)));
    }
    let value = source.read().map_err(|e| anyhow!("--secret {name}: {e}"))?;
    Ok((name.to_string(), Given::Value(Secret::new(value, bound))))
}

/// What `--secret` grants: a value, or an AWS credential set read when the step starts.
#[derive(Debug)]
enum Given {
    Value(Secret),
    Credentials(AwsCredentialSpec, Vec<Grant>),
}

/// A component file as given, or the component built from a crate directory.
pub(crate) fn resolve_plugin(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_dir() {
        let built = build_crate(path, &super::build_options())?;
        Ok(built.path)
    } else {
        Ok(path.to_path_buf())
    }
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let network = NetworkPolicy::parse(&args.allow_net)?.with_addresses(args.allow_address.clone());
    let cwd = std::env::current_dir()?;
    let read = args
        .files
        .iter()
        .map(|dir| FileGrant::new(dir, &cwd).map_err(|e| anyhow!("--files {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let files = Files { read, artifacts: args.artifacts.clone() };
    let mut grants = Grants { network, files, ..Default::default() };
    let mut sets = Vec::new();
    for spec in &args.secrets {
        let (name, secret) = secret_from(spec)?;
        match secret {
            Given::Value(secret) => grants.secrets.insert(name, secret),
            Given::Credentials(spec, bound) => {
                let set = AwsCredentials::read(&name, &spec).await?;
                sets.push(set.clone());
                grants.secrets.insert_aws(set, bound);
            }
        }
    }
    // Renewed credentials are redacted too: the run-wide redactor learns each one.
    let redactor = grants.secrets.redactor().clone();
    sets.iter().for_each(|set| set.redact_into(&redactor));
    // The same defaults as a pipeline step's, overridden by what was given.
    let defaults = ResourceLimits::default();
    let limits = ResourceLimits {
        timeout: args.timeout.unwrap_or(defaults.timeout),
        memory_bytes: args.memory.unwrap_or(defaults.memory_bytes),
        output_bytes: args.output.unwrap_or(defaults.output_bytes),
        requests: args.requests.unwrap_or(defaults.requests),
        response_bytes: args.response_size.unwrap_or(defaults.response_bytes),
        request_timeout: args.request_timeout.unwrap_or(defaults.request_timeout),
        artifacts_bytes: args.artifacts_size.unwrap_or(defaults.artifacts_bytes),
        artifact_files: defaults.artifact_files,
        rows: defaults.rows,
    };
    let records: Arc<Mutex<Vec<RequestRecord>>> = Arc::default();
    let sink = records.clone();
    let mut call = StepCall {
        grants,
        limits: limits.sandbox(),
        http: limits.http(),
        sql: limits.sql(),
        requests: Some(RequestLog(Arc::new(move |r| sink.lock().unwrap_or_else(|e| e.into_inner()).push(r)))),
        // Outside a pipeline there is no journal: checkpoints are accepted and logged.
        checkpoints: Some(CheckpointLog(Arc::new(|key, value| {
            tracing::info!(%key, %value, "checkpoint");
            Box::pin(async { Ok(()) })
        }))),
        // The log lines go to stderr through tracing; there is no journal to keep them.
        logs: None,
        context: Default::default(),
        approvals: None,
    };
    call.context.step_id = args.id.clone();
    call.context.pipeline = "adhoc".into();
    call.context.environment = "development".into();
    call.context.entity = "default".into();
    call.context.dry_run = args.dry_run;
    call.context.input = input_from(&args.with)?;

    let source = args.plugin.clone();
    let file = tokio::task::spawn_blocking(move || resolve_plugin(&source)).await??;
    let runtime = super::runtime()?;
    let plugin = runtime.load(&file)?;
    if args.preflight {
        call.grants = call.grants.for_preflight();
        return preflight(&args, &plugin, &call).await;
    }
    let started = Instant::now();
    let result = if args.rollback { plugin.rollback(&call).await } else { plugin.run(&call).await };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let plugin_json = serde_json::json!({"path": file, "sha256": plugin.sha256(), "cache": plugin.cache_status()});
    let requests = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    for r in requests.iter().filter(|r| !r.allowed) {
        tracing::warn!(step = %r.step, "{} {}{} denied: {}", r.method, r.origin, r.path, r.reason.as_deref().unwrap_or(""));
    }
    let requests = serde_json::to_value(&requests)?;
    match result {
        Ok(outputs) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "step": args.id, "outputs": outputs, "plugin": plugin_json, "duration_ms": elapsed_ms, "requests": requests})
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
            report_failure(&args, &e, plugin_json, elapsed_ms, requests);
            Ok(super::EXIT_STEP_FAILED)
        }
    }
}

/// `gantry step run --preflight`: the checks, one line each (or JSON); 7 when one failed.
async fn preflight(args: &RunArgs, plugin: &crate::sandbox::Plugin, call: &StepCall) -> anyhow::Result<u8> {
    let failed_exit = crate::run::Status::PreflightFailed.exit_code();
    let checks = match plugin.preflight(call).await {
        Ok(Some(checks)) => checks,
        Ok(None) => {
            eprintln!("step `{}`: its plugin has no pre-flight (built for a contract before 0.3.4)", args.id);
            return Ok(0);
        }
        Err(e) => {
            report_failure(args, &e, serde_json::json!({"sha256": plugin.sha256()}), 0.0, serde_json::json!([]));
            return Ok(failed_exit);
        }
    };
    let passed = checks.iter().all(|c| c.passed);
    if args.json {
        println!("{}", serde_json::json!({"ok": passed, "step": args.id, "checks": checks}));
    } else {
        for c in &checks {
            println!("{} {}: {}", if c.passed { "ok    " } else { "FAILED" }, c.name, c.answer);
        }
        if checks.is_empty() {
            println!("step `{}`: no pre-flight checks", args.id);
        }
    }
    Ok(if passed { 0 } else { failed_exit })
}

fn report_failure(
    args: &RunArgs,
    e: &CallError,
    plugin_json: serde_json::Value,
    elapsed_ms: f64,
    requests: serde_json::Value,
) {
    if args.json {
        let error = serde_json::json!({"kind": e.kind(), "message": e.to_string(), "retryable": e.is_retryable()});
        println!(
            "{}",
            serde_json::json!({"ok": false, "step": args.id, "error": error, "plugin": plugin_json, "duration_ms": elapsed_ms, "requests": requests})
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
        let Given::Value(secret) = secret else { panic!("a value") };
        assert_eq!(secret.bound_to()[0].to_string(), "https://api.notion.com");
        let (_, set) = secret_from("AWS=aws-credentials:profile=ci@https://ecs.us-east-1.amazonaws.com").unwrap();
        assert!(matches!(set, Given::Credentials(spec, _) if spec.profile.as_deref() == Some("ci")));
        assert!(secret_from("TOKEN=env:GANTRY_TEST_SECRET_SPEC").unwrap_err().to_string().contains("bind it"));
        assert!(secret_from("TOKEN=keyring:x@https://a")
            .unwrap_err()
            .to_string()
            .contains("must be `env:NAME`, `file:PATH`, `exec:COMMAND`, `aws-sm:SECRET_ID[#KEY]`, `vault:"));
    }
}
