//! `gantry validate` and `gantry schema`.

use crate::pipeline;
use std::path::PathBuf;

/// Checks a pipeline file and prints every problem; exit 2 when there is any.
pub(crate) fn validate(file: PathBuf, json: bool) -> u8 {
    match pipeline::load(&file) {
        Ok(loaded) => {
            if json {
                println!("{}", serde_json::json!({"ok": true, "file": file, "steps": loaded.pipeline.steps.len()}));
            } else {
                println!("{}: ok ({} steps)", file.display(), loaded.pipeline.steps.len());
            }
            0
        }
        Err(problems) => {
            if json {
                let list: Vec<_> = problems
                    .0
                    .iter()
                    .map(|p| {
                        serde_json::json!({"file": p.file, "line": p.at.line, "column": p.at.column, "field": p.field, "message": p.message})
                    })
                    .collect();
                println!("{}", serde_json::json!({"ok": false, "problems": list}));
            } else {
                eprintln!("{problems}");
                let n = problems.0.len();
                eprintln!("{n} problem{} in {}", if n == 1 { "" } else { "s" }, file.display());
            }
            super::EXIT_USAGE
        }
    }
}

/// Prints the JSON Schema of pipeline files.
pub(crate) fn schema() -> u8 {
    println!("{}", serde_json::to_string_pretty(&pipeline::json_schema()).unwrap_or_default());
    0
}

/// Loads, validates and plans a pipeline; prints the plan.
pub(crate) fn plan(file: PathBuf, environment: String, entity: String, json: bool) -> anyhow::Result<u8> {
    let loaded = match pipeline::load(&file) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            return Ok(super::EXIT_USAGE);
        }
    };
    let plan = crate::plan::plan(&loaded, &environment, &entity, &crate::build::BuildOptions::default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(0);
    }
    println!("plan: {}  environment={}  entity={}", plan.pipeline, plan.environment, plan.entity);
    for (i, group) in plan.groups.iter().enumerate() {
        println!("  wave {}: {}", i + 1, group.join(", "));
    }
    let or_none = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
    for step in &plan.steps {
        println!();
        println!("step {}{}", step.id, step.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default());
        println!("  plugin    {} sha256:{}", step.uses, step.sha256);
        println!("  needs     {}", or_none(&step.needs));
        println!("  if        {}", step.condition);
        println!("  network   {}", or_none(&step.network));
        let secrets: Vec<String> =
            step.secrets.iter().map(|s| format!("{} ({}) -> {}", s.name, s.source, s.bound_to.join(" "))).collect();
        println!("  secrets   {}", or_none(&secrets));
        let files: Vec<String> =
            step.files.iter().map(|f| format!("{} (read-only, as {})", f.host.display(), f.guest)).collect();
        println!("  files     {}", or_none(&files));
        if step.artifacts {
            println!("  artifacts /artifacts (writable, kept in the run directory)");
        }
        if !step.addresses.is_empty() {
            println!("  addresses {}", step.addresses.join(", "));
        }
        let retry = match &step.backoff {
            Some(b) => format!("{} attempts, backoff {b}", step.attempts),
            None => format!("{} attempts", step.attempts),
        };
        let l = &step.limits;
        println!(
            "  limits    timeout {}, {retry}, memory {} B, output {} B, {} requests, response {} B, request timeout {} ms",
            step.timeout.as_deref().unwrap_or("30s"),
            l.memory_bytes,
            l.output_bytes,
            l.requests,
            l.response_bytes,
            l.request_timeout_ms
        );
        println!("  input     {}", step.input);
    }
    Ok(0)
}

/// Options of `gantry run`.
pub(crate) struct RunArgs {
    pub file: PathBuf,
    pub environment: String,
    pub entity: String,
    pub dry_run: bool,
    pub jobs: usize,
    pub json: bool,
    pub reports: Vec<String>,
}

/// Validates, plans and runs a pipeline; exit 0, 1 (failed, rolled back), 3 (rollback failed) or 2.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<u8> {
    use crate::run::{journal::FileJournal, RunOptions};
    let loaded = match pipeline::load(&args.file) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            return Ok(super::EXIT_USAGE);
        }
    };
    let plan = crate::plan::plan(&loaded, &args.environment, &args.entity, &crate::build::BuildOptions::default())?;
    let run_id = format!(
        "{}-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default(),
        std::process::id()
    );
    let _lock = lock(&plan)?;
    let dir = PathBuf::from(".gantry").join("runs").join(&run_id);
    let journal = std::sync::Arc::new(FileJournal::create(&dir)?);
    let runtime = super::runtime()?;
    let (tx, printer) = printer(args.json);
    let json = args.json;
    let options = RunOptions {
        run_id: run_id.clone(),
        jobs: args.jobs,
        dry_run: args.dry_run,
        file: Some(args.file.canonicalize()?),
        completed: Vec::new(),
        artifacts: Some(dir.join("artifacts")),
    };
    let result = crate::run::run(&runtime, &plan, &options, journal, Some(tx)).await;
    let _ = printer.await;
    match result {
        Ok(result) => {
            if !json {
                println!("run {run_id}: {:?}; journal {}", result.status, dir.join("journal.jsonl").display());
            }
            write_reports(&dir, &args.reports)?;
            Ok(result.status.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(super::EXIT_USAGE)
        }
    }
}

fn describe(event: &crate::run::Event) -> String {
    use crate::run::Event::*;
    match event {
        RunStarted { run_id, pipeline, environment, entity, .. } => {
            format!("run {run_id} started: {pipeline} environment={environment} entity={entity}")
        }
        StepStarted { step, attempt } => format!("{step}: started (attempt {attempt})"),
        StepFinished { step, outputs } => {
            format!("{step}: succeeded {}", serde_json::to_string(outputs).unwrap_or_default())
        }
        StepRetrying { step, attempt, error, backoff_ms } => {
            format!("{step}: attempt {attempt} failed ({error}); retrying in {backoff_ms} ms")
        }
        StepFailed { step, kind, error, continue_on_error } => {
            format!("{step}: {kind}: {error}{}", if *continue_on_error { " (continue_on_error)" } else { "" })
        }
        StepSkipped { step, reason } => format!("{step}: skipped ({reason})"),
        RolledBack { step } => format!("{step}: rolled back"),
        RollbackFailed { step, error } => format!("{step}: ROLLBACK FAILED: {error}"),
        RunFinished { status } => format!("run finished: {status}"),
        Request(r) => match (&r.reason, r.status) {
            (Some(reason), _) if !r.allowed => {
                format!("{}: {} {}{} DENIED: {reason}", r.step, r.method, r.origin, r.path)
            }
            (_, Some(status)) => format!(
                "{}: {} {}{} -> {status} ({} B, {:.1} ms)",
                r.step, r.method, r.origin, r.path, r.bytes, r.duration_ms
            ),
            (reason, None) => {
                format!("{}: {} {}{} failed: {}", r.step, r.method, r.origin, r.path, reason.as_deref().unwrap_or(""))
            }
        },
    }
}

/// `gantry runs [show ID]`: lists runs under `.gantry/runs`, or prints one journal.
pub(crate) fn runs(show: Option<String>, json: bool) -> anyhow::Result<u8> {
    use crate::run::{journal, Event};
    let root = PathBuf::from(".gantry").join("runs");
    if let Some(id) = show {
        let path = root.join(&id).join("journal.jsonl");
        let records =
            journal::read(&path).map_err(|e| anyhow::anyhow!("run {id}: cannot read {}: {e}", path.display()))?;
        for record in records {
            if json {
                println!("{}", serde_json::to_string(&record)?);
            } else {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(record.ts_ms / 1e3);
                println!("{} {}", humantime::format_rfc3339_millis(at), describe(&record.event));
            }
        }
        return Ok(0);
    }
    let mut ids: Vec<String> = match std::fs::read_dir(&root) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    ids.sort();
    for id in ids {
        let records = journal::read(&root.join(&id).join("journal.jsonl")).unwrap_or_default();
        let (mut what, mut status) = (String::from("?"), String::from("incomplete"));
        for record in &records {
            match &record.event {
                Event::RunStarted { pipeline, environment, entity, .. } => {
                    what = format!("{pipeline} environment={environment} entity={entity}")
                }
                Event::RunFinished { status: s } => status = s.clone(),
                _ => {}
            }
        }
        if json {
            println!("{}", serde_json::json!({"id": id, "run": what, "status": status, "events": records.len()}));
        } else {
            println!("{id}  {status:<16} {what}");
        }
    }
    Ok(0)
}

fn reopen(id: &str) -> anyhow::Result<crate::run::resume::Reopened> {
    let runs = PathBuf::from(".gantry").join("runs");
    Ok(crate::run::resume::reopen(&runs, id, &crate::build::BuildOptions::default())?)
}

/// Keeps this run apart from others of the same pipeline, environment and entity.
fn lock(plan: &crate::plan::Plan) -> Result<crate::run::journal::Lock, crate::run::journal::LockError> {
    let dir = PathBuf::from(".gantry").join("locks");
    crate::run::journal::Lock::acquire(&dir, &plan.pipeline, &plan.environment, &plan.entity)
}

/// `gantry resume <id>`: continues an interrupted run after its last completed step.
pub(crate) async fn resume(id: String, jobs: usize, json: bool) -> anyhow::Result<u8> {
    let r = reopen(&id)?;
    if let Some(status) = &r.finished {
        anyhow::bail!("run {id} already finished ({status}); nothing to resume");
    }
    let _lock = lock(&r.plan)?;
    let runtime = super::runtime()?;
    let options = crate::run::RunOptions {
        run_id: id.clone(),
        jobs,
        dry_run: false,
        file: Some(r.file),
        completed: r.completed,
        artifacts: Some(PathBuf::from(".gantry").join("runs").join(&id).join("artifacts")),
    };
    let (tx, printer) = printer(json);
    let result = crate::run::run(&runtime, &r.plan, &options, std::sync::Arc::new(r.journal), Some(tx)).await;
    let _ = printer.await;
    Ok(result?.status.exit_code())
}

/// `gantry rollback <id>`: undoes the completed steps of a run, newest first.
pub(crate) async fn rollback(id: String, json: bool) -> anyhow::Result<u8> {
    let r = reopen(&id)?;
    let _lock = lock(&r.plan)?;
    let runtime = super::runtime()?;
    let (tx, printer) = printer(json);
    let result = crate::run::rollback(&runtime, &r.plan, &r.completed, std::sync::Arc::new(r.journal), Some(tx)).await;
    let _ = printer.await;
    Ok(result?.status.exit_code())
}

/// Prints events as they arrive: a live view on a terminal, timestamped lines
/// otherwise (CI logs), or JSON lines with `--json`.
fn printer(json: bool) -> (tokio::sync::mpsc::UnboundedSender<crate::run::Event>, tokio::task::JoinHandle<()>) {
    use std::io::IsTerminal;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::run::Event>();
    let live = !json && std::io::stdout().is_terminal();
    let handle = tokio::spawn(async move {
        let mut view = live.then(LiveView::default);
        while let Some(event) = rx.recv().await {
            if json {
                println!("{}", serde_json::to_string(&event).unwrap_or_default());
            } else if let Some(view) = view.as_mut() {
                view.show(&event);
            } else {
                let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                println!("{now} {}", describe(&event));
            }
        }
    });
    (tx, handle)
}

/// One spinner per step with its state and elapsed time, redrawn in place.
#[derive(Default)]
struct LiveView {
    bars: indicatif::MultiProgress,
    steps: std::collections::BTreeMap<String, indicatif::ProgressBar>,
}

impl LiveView {
    fn bar(&mut self, step: &str) -> indicatif::ProgressBar {
        let bars = &self.bars;
        self.steps
            .entry(step.to_string())
            .or_insert_with(|| {
                let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:<20} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
                let bar =
                    bars.add(indicatif::ProgressBar::new_spinner().with_style(style).with_prefix(step.to_string()));
                bar.enable_steady_tick(std::time::Duration::from_millis(100));
                bar
            })
            .clone()
    }

    fn show(&mut self, event: &crate::run::Event) {
        use crate::run::Event::*;
        match event {
            StepStarted { step, attempt } => self.bar(step).set_message(format!("running (attempt {attempt})")),
            StepRetrying { step, backoff_ms, .. } => self.bar(step).set_message(format!("retrying in {backoff_ms} ms")),
            StepFinished { step, .. } => self.bar(step).finish_with_message("succeeded"),
            StepFailed { step, kind, error, .. } => self.bar(step).finish_with_message(format!("{kind}: {error}")),
            StepSkipped { step, reason } => self.bar(step).finish_with_message(format!("skipped ({reason})")),
            RolledBack { step } => self.bar(step).finish_with_message("rolled back"),
            RollbackFailed { step, error } => self.bar(step).finish_with_message(format!("ROLLBACK FAILED: {error}")),
            RunStarted { .. } | RunFinished { .. } => {
                let _ = self.bars.println(describe(event));
            }
            Request(r) if !r.allowed => {
                let _ = self.bars.println(describe(event));
            }
            Request(_) => {}
        }
    }
}

/// Writes `junit=PATH` / `json=PATH` reports from the journal, and GitHub annotations when running in Actions.
fn write_reports(dir: &std::path::Path, reports: &[String]) -> anyhow::Result<()> {
    let records = crate::run::journal::read(&dir.join("journal.jsonl"))?;
    let summary = crate::report::Summary::from_records(&records);
    for spec in reports {
        let (kind, path) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--report {spec:?}: expected junit=PATH or json=PATH"))?;
        let text = match kind {
            "junit" => summary.junit(),
            "json" => serde_json::to_string_pretty(&summary)?,
            other => anyhow::bail!("--report {other}: the kinds are junit and json"),
        };
        std::fs::write(path, text).map_err(|e| anyhow::anyhow!("--report {spec}: {e}"))?;
    }
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        for line in summary.github_annotations() {
            println!("{line}");
        }
    }
    Ok(())
}
