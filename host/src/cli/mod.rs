//! The `gantry` command line. Each subcommand is a few lines over a library call.
//!
//! Exit codes: 0 success, 1 a step failed (and was rolled back), 2 bad usage,
//! an invalid pipeline or an unusable plugin, 3 a rollback failed (needs a
//! person), 4 paused: a step was inconclusive and a person decides, 5 a step
//! awaits approval, 6 the rollback stopped at a barrier, 7 a step's pre-flight
//! failed and nothing ran.

// Every command prints through `report::out`: a closed pipe stops the printing, not the command.
macro_rules! println {
    () => {
        $crate::report::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::report::out::line(format_args!($($arg)*))
    };
}

mod analysis;
mod pipeline;
mod plugin;
mod rollout;
mod step;
mod ui;

use crate::run::approval::Decision;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// gantry: deployment pipelines whose steps are sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Answer DNS lookups of NAME with IP instead of asking the resolver, as curl's --resolve (repeatable).
    /// The answer is checked like any other: a loopback or private address still needs a grant.
    #[arg(long, global = true, value_name = "NAME=IP", value_parser = crate::capability::address::parse_override)]
    resolve: Vec<(String, Vec<std::net::IpAddr>)>,
    /// Where runs and run locks are kept: a postgres:// URL shared by many runners, or unset for
    /// the file store in ./.gantry.
    #[arg(long, global = true, value_name = "URL", env = crate::run::store::STATE_ENV, hide_env_values = true)]
    state: Option<String>,
    /// Colour in logs: `auto` only on a terminal and without `NO_COLOR`, `always`, or `never`.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
    /// Print each step's outcome and the run's end only, and warnings; requests, checkpoints
    /// and plugin logs are still journaled (`gantry runs show <id>`).
    #[arg(long, short, global = true)]
    quiet: bool,
}

/// When log lines carry colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Color {
    /// On a terminal, unless `NO_COLOR` is set (no-color.org).
    Auto,
    /// Always, for log viewers that render ANSI codes.
    Always,
    /// Never.
    Never,
}

impl Color {
    /// Whether stderr (where logs go) gets colour codes.
    fn on_stderr(self) -> bool {
        use std::io::IsTerminal;
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

/// `--resolve` overrides, for every runtime the command builds.
static RESOLVE: std::sync::OnceLock<Vec<(String, Vec<std::net::IpAddr>)>> = std::sync::OnceLock::new();

/// The plugin runtime, configured from the global options.
pub(crate) fn runtime() -> anyhow::Result<crate::sandbox::Runtime> {
    builder().build().map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// A runtime for `plan` with at most `jobs` steps running at once: pooled instance slots for
/// twice that many calls (a cancelled call's slot is freed when its task ends, which may be after
/// the next call starts), each as large as the plan's largest memory limit.
pub(crate) fn runtime_for(plan: &crate::plan::Plan, jobs: usize) -> anyhow::Result<crate::sandbox::Runtime> {
    if jobs > 512 {
        // More slots than that would reserve terabytes of address space: each call maps its own.
        return runtime();
    }
    let max_memory = plan.steps.iter().map(|s| s.limits.memory_bytes).max().unwrap_or(0);
    let calls = u32::try_from(jobs.saturating_mul(2).saturating_add(2)).unwrap_or(u32::MAX);
    builder().pooled(calls, max_memory).build().map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// Build options shared by everything one command plans: each plugin crate is built once per
/// command, however many environments and entities it plans.
pub(crate) fn build_options() -> crate::build::BuildOptions {
    static ONE: std::sync::OnceLock<crate::build::BuildOptions> = std::sync::OnceLock::new();
    ONE.get_or_init(crate::build::BuildOptions::default).clone()
}

fn builder() -> crate::sandbox::RuntimeBuilder {
    let mut builder = crate::sandbox::Runtime::builder();
    for (name, addrs) in RESOLVE.get().into_iter().flatten() {
        builder = builder.resolve(name.clone(), addrs.clone());
    }
    builder
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and inspect plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// List or empty the local cache: compiled components and components pulled from registries.
    Cache {
        /// `ls` or `clean`.
        #[arg(value_parser = ["ls", "clean"])]
        action: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a single step outside a pipeline (a plugin author's inner loop).
    #[command(subcommand)]
    Step(step::StepCommand),
    /// Check a pipeline file and report every problem with file:line:column.
    Validate {
        /// The pipeline file.
        file: std::path::PathBuf,
        /// Print the problems as JSON.
        #[arg(long)]
        json: bool,
        /// Check the file alone: build, pull and describe no plugin, so plugin inputs go unchecked.
        #[arg(long)]
        offline: bool,
    },
    /// Print the JSON Schema of pipeline files, for editors; with `--pipeline`, one pipeline's, in
    /// which each step's `with:` is held to its plugin's input schema (draft-07, for yaml-language-server).
    Schema {
        /// The pipeline whose plugins are built or pulled and described.
        #[arg(long, value_name = "FILE")]
        pipeline: Option<std::path::PathBuf>,
    },
    /// Write gantry.lock beside a pipeline: every plugin of every environment and entity, by digest.
    Lock {
        /// The pipeline file.
        file: std::path::PathBuf,
        /// Write nothing; exit 1 and show the differences when the lock is stale or missing.
        #[arg(long)]
        check: bool,
    },
    /// Show what a pipeline would run for an environment and entity, with every step's capabilities.
    Plan {
        #[command(flatten)]
        target: Target,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Show only what changed since a recorded run: plugins, grants, limits, inputs.
        #[arg(long, value_name = "RUN_ID")]
        diff: Option<String>,
    },
    /// List recorded runs, or print one run's journal.
    Runs {
        /// `show`.
        #[arg(value_parser = ["show"])]
        action: Option<String>,
        /// Run id, with `show`.
        id: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Continue an interrupted or paused run after its last completed step, with the same plugins.
    Resume {
        /// Run id (see `gantry runs`).
        id: String,
        /// Run this step again although it was cut off after a change and left no checkpoints to undo it
        /// (after checking the target by hand; repeatable).
        #[arg(long, value_name = "STEP")]
        rerun: Vec<String>,
        /// Most steps running at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Print newline-delimited JSON events.
        #[arg(long)]
        json: bool,
    },
    /// Approve the step a run awaits, and continue the run (as `GANTRY_USER`, else the login name).
    Approve {
        /// Run id (see `gantry approvals`).
        id: String,
        /// The step, to be sure it is the one awaiting approval.
        #[arg(long)]
        step: Option<String>,
        /// Recorded in the journal with the decision.
        #[arg(long)]
        comment: Option<String>,
        /// Most steps running at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Print newline-delimited JSON events.
        #[arg(long)]
        json: bool,
    },
    /// Reject the step a run awaits, and roll the run back.
    Reject {
        /// Run id (see `gantry approvals`).
        id: String,
        /// The step, to be sure it is the one awaiting approval.
        #[arg(long)]
        step: Option<String>,
        /// Recorded in the journal with the decision.
        #[arg(long)]
        comment: Option<String>,
        /// Print newline-delimited JSON events.
        #[arg(long)]
        json: bool,
    },
    /// Canary analysis over recorded runs: `replay` judges a run's readings again with changed rules.
    #[command(subcommand)]
    Analysis(analysis::AnalysisCommand),
    /// Write a run's report as one self-contained HTML page: DAG, timeline, canary, requests, grants.
    Report {
        /// Run id (see `gantry runs`).
        id: String,
        /// Where to write the page.
        #[arg(long, value_name = "PATH")]
        html: std::path::PathBuf,
    },
    /// Serve the reports of every recorded run on 127.0.0.1 (a running run's page updates itself), and their Prometheus metrics at /metrics.
    Ui {
        /// Port; 0 picks a free one (printed).
        #[arg(long, default_value_t = 8765)]
        port: u16,
    },
    /// List runs awaiting approval; rejects and rolls back those whose request has lapsed.
    Approvals {
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Undo the completed steps of a run, newest first, stopping at rollback barriers. Exit 0, 3 when
    /// a rollback fails, 6 when it stopped at a barrier.
    Rollback {
        /// Run id (see `gantry runs`).
        id: String,
        /// Undo past the run's rollback barriers too: each barrier's step undoes what it still can,
        /// then everything older is undone. Asks for confirmation unless `--yes`.
        #[arg(long)]
        past_barrier: bool,
        /// Confirm `--past-barrier` without asking (for scripts and CI).
        #[arg(long)]
        yes: bool,
        /// Print newline-delimited JSON events.
        #[arg(long)]
        json: bool,
    },
    /// Accept a run's state as it is (a run stopped at a rollback barrier, or one that needs a
    /// person): recorded with who (`GANTRY_USER`, else the login name) and why; nothing is run or undone.
    Settle {
        /// Run id (see `gantry runs`).
        id: String,
        /// Why the state is accepted, recorded in the journal.
        #[arg(long)]
        reason: String,
    },
    /// Run a pipeline. Exit 0 success, 1 a step failed (rolled back), 2 invalid, 3 rollback failed,
    /// 4 paused, 5 awaiting approval, 6 the rollback stopped at a barrier (an irreversible change),
    /// 7 a step's pre-flight found it cannot go ahead (nothing ran).
    Run {
        #[command(flatten)]
        target: Target,
        /// Steps report what they would change without changing it.
        #[arg(long)]
        dry_run: bool,
        /// In an emergency: start changing things without each step first reading what it depends
        /// on (the pre-flight). Journaled with who asked.
        #[arg(long)]
        skip_preflight: bool,
        /// Refuse unless a successful run of the same pipeline file, plugin digests and grants
        /// (origins, secrets by name, files, limits) for this entity is recorded in this environment.
        #[arg(long, value_name = "ENV")]
        promoted_from: Option<String>,
        /// Most steps running at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Print newline-delimited JSON events.
        #[arg(long)]
        json: bool,
        /// Write a report after the run: junit=PATH, json=PATH, markdown=PATH (a job summary) or html=PATH (repeatable; checked before the run starts).
        #[arg(long = "report", value_name = "KIND=PATH")]
        reports: Vec<crate::report::ReportSpec>,
    },
}

/// Which pipeline, for which environment and entity.
#[derive(Debug, clap::Args)]
struct Target {
    /// The pipeline file.
    file: std::path::PathBuf,
    /// Environment, e.g. production.
    #[arg(long = "env", default_value = "development")]
    environment: String,
    /// Business entity; for `run`, also `all` or `a,b,c`: one run per entity, in the pipeline's `rollout:` waves.
    #[arg(long, default_value = "default")]
    entity: String,
    /// Refuse a plugin that has no entry in gantry.lock (for CI); a plugin that differs from its
    /// entry is refused with or without it.
    #[arg(long)]
    locked: bool,
}

/// Exit code for a step that failed.
pub const EXIT_STEP_FAILED: u8 = 1;
/// Exit code for bad usage or an unusable plugin.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a run that needs a person: a rollback failed, the journal is incomplete, or it was abandoned.
pub const EXIT_NEEDS_PERSON: u8 = 3;

/// Parses arguments, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = RESOLVE.set(cli.resolve.clone());
    init_logging(cli.color.on_stderr(), cli.quiet);
    crate::report::progress::set_quiet(cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let state = cli.state.clone();
    let state = state.as_deref();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Plugin(cmd) => cmd.execute().await,
            Command::Step(cmd) => cmd.execute().await,
            Command::Cache { action, json } => plugin::cache(&action, json),
            Command::Validate { file, json, offline } => pipeline::validate(file, json, offline).await,
            Command::Schema { pipeline: None } => Ok(pipeline::schema()),
            Command::Schema { pipeline: Some(file) } => pipeline::editor_schema(file).await,
            Command::Lock { file, check } => pipeline::lock(file, check),
            Command::Plan { target, json, diff } => {
                let since = match diff {
                    Some(id) => Some((id, pipeline::store(state).await?)),
                    None => None,
                };
                pipeline::plan(target.file, target.environment, target.entity, target.locked, json, since).await
            }
            Command::Runs { action, id, json } => match (action, id) {
                (Some(_), Some(id)) => pipeline::runs(Some(id), json, state).await,
                (Some(_), None) => Err(anyhow::anyhow!("`gantry runs show` needs a run id")),
                (None, _) => pipeline::runs(None, json, state).await,
            },
            Command::Resume { id, rerun, jobs, json } => pipeline::resume(id, &rerun, jobs, json, state).await,
            Command::Rollback { id, past_barrier, yes, json } => {
                pipeline::rollback(id, past_barrier, yes, json, state).await
            }
            Command::Settle { id, reason } => pipeline::settle(id, reason, state).await,
            Command::Approve { id, step, comment, jobs, json } => {
                pipeline::decide(id, Decision::Approve, step, comment, jobs, json, state).await
            }
            Command::Reject { id, step, comment, json } => {
                pipeline::decide(id, Decision::Reject, step, comment, 1, json, state).await
            }
            Command::Approvals { json } => pipeline::approvals(json, state).await,
            Command::Analysis(cmd) => cmd.execute(state).await,
            Command::Report { id, html } => ui::report(id, html, state).await,
            Command::Ui { port } => ui::serve(port, state).await,
            Command::Run { target, dry_run, skip_preflight, promoted_from, jobs, json, reports } => {
                let Target { file, environment, entity, locked } = target;
                let state = state.map(String::from);
                let args = pipeline::RunArgs {
                    file,
                    environment,
                    entity,
                    locked,
                    promoted_from,
                    dry_run,
                    skip_preflight,
                    jobs,
                    json,
                    reports,
                    state,
                };
                pipeline::run(args).await
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// An error and its causes joined by `: `, each said once: a cause whose text its context
/// already holds (a `thiserror` message that prints its source) is not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// The AWS SDK's crates, whose own logs name the credentials they load.
const AWS_SDK_TARGETS: [&str; 7] =
    ["aws_config", "aws_credential_types", "aws_runtime", "aws_sdk_sts", "aws_sigv4", "aws_smithy_runtime", "aws_smithy_http"];

/// Logs go to stderr, coloured when `ansi`; `GANTRY_LOG` takes `tracing` filter directives.
/// `quiet` keeps warnings and the plugin build lines (a first build takes a while).
fn init_logging(ansi: bool, quiet: bool) {
    let default = if quiet { "warn,gantry::plugin=error,gantry_host::build=info" } else { "info" };
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The AWS SDK's crates log credentials they load (an access key id at `info`): whatever the
    // filter asks, they say only warnings.
    for quiet in AWS_SDK_TARGETS {
        filter = filter.add_directive(format!("{quiet}=warn").parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("step `audit`: {source}")]
    struct Printed {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_its_context_already_prints_is_said_once() {
        let e = anyhow::Error::new(Printed { source: std::io::Error::other("cargo build failed") }).context("planning");
        assert_eq!(chain(&e), "planning: step `audit`: cargo build failed");
        let e = anyhow::anyhow!("disk full").context("the journal could not be written").context("closing the run");
        assert_eq!(chain(&e), "closing the run: the journal could not be written: disk full");
    }
}
