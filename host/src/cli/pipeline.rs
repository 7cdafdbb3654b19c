//! `gantry validate` and `gantry schema`.

use crate::pipeline;
use crate::report::progress::{describe, printer, printer_for};
use crate::units::bytes;
use crate::report::ReportSpec;
use crate::run::approval::{current_user, Decision};
use crate::run::fold::RunPhase;
use crate::run::store::now_ms;
use crate::run::store::RunStore;
use crate::run::{RunOptions, Session, Status};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// Checks a pipeline file and prints every problem; exit 2 when there is any. Unless `offline`,
/// every plugin of every environment and entity is built or pulled and described, and each step's
/// input is checked against its plugin's schema.
pub(crate) async fn validate(file: PathBuf, json: bool, offline: bool) -> anyhow::Result<u8> {
    let (steps, problems, skipped) = match pipeline::load(&file) {
        Ok(loaded) if offline => (loaded.pipeline.steps.len(), Vec::new(), Some("--offline: plugin inputs not checked")),
        Ok(loaded) => (loaded.pipeline.steps.len(), inputs_of_every_target(&loaded).await?, None),
        Err(problems) => (0, problems.0, None),
    };
    if problems.is_empty() {
        if json {
            println!("{}", serde_json::json!({"ok": true, "file": file, "steps": steps, "skipped": skipped}));
        } else {
            let skipped = skipped.map(|s| format!("; {s}")).unwrap_or_default();
            println!("{}: ok ({steps} steps{skipped})", file.display());
        }
        return Ok(0);
    }
    if json {
        let list: Vec<_> = problems
            .iter()
            .map(|p| serde_json::json!({"file": p.file, "line": p.at.line, "column": p.at.column, "field": p.field, "message": p.message}))
            .collect();
        println!("{}", serde_json::json!({"ok": false, "problems": list}));
    } else {
        let n = problems.len();
        eprintln!("{}", pipeline::Problems(problems));
        eprintln!("{n} problem{} in {}", if n == 1 { "" } else { "s" }, file.display());
    }
    Ok(super::EXIT_USAGE)
}

/// The input problems of every environment and entity the pipeline names, each once.
async fn inputs_of_every_target(loaded: &pipeline::Loaded) -> anyhow::Result<Vec<pipeline::Problem>> {
    let (mut plans, described) = plan_every_target(loaded, "`gantry validate --offline` checks the file alone").await?;
    let mut problems: Vec<pipeline::Problem> = Vec::new();
    for plan in &mut plans {
        for problem in described_problems(loaded, plan, &described) {
            if !problems.iter().any(|p| p.to_string() == problem.to_string()) {
                problems.push(problem);
            }
        }
    }
    problems.sort_by_key(|p| (p.at.line, p.at.column));
    Ok(problems)
}

/// The plan of every environment and entity the pipeline names, and what their plugins say of themselves.
/// `instead` says what the caller's user can do when a plugin cannot be had (e.g. offline).
async fn plan_every_target(loaded: &pipeline::Loaded, instead: &str) -> anyhow::Result<(Vec<crate::plan::Plan>, Described)> {
    let runtime = super::runtime()?;
    let mut described = Described::new();
    let mut plans = Vec::new();
    for (environment, entity) in crate::lock::targets(loaded) {
        let plan = crate::plan::plan(loaded, &environment, &entity, &super::build_options())
            .map_err(|e| {
                anyhow::anyhow!("cannot describe the plugins of environment {environment}, entity {entity}: {e} ({instead})")
            })?;
        describe_plugins(&runtime, &plan, &mut described).await;
        plans.push(plan);
    }
    Ok((plans, described))
}

/// Prints one pipeline's JSON Schema for editors: each step's `with:` held to the plugin it feeds
/// in the first environment and entity that keep it, each overlay's replacement input to the plugin
/// it feeds there.
pub(crate) async fn editor_schema(file: PathBuf) -> anyhow::Result<u8> {
    let Some(loaded) = load_or_report(&file) else { return Ok(super::EXIT_USAGE) };
    let (plans, described) = plan_every_target(&loaded, "`gantry schema` without `--pipeline` prints the grammar alone").await?;
    let fed_by = |plan: &crate::plan::Plan, id: &str| {
        plan.steps.iter().find(|s| s.id == id).and_then(|s| described.get(&s.sha256)?.as_ref())
    };
    let p = &loaded.pipeline;
    // A step's own input feeds the plugin of the first target whose overlays do not replace it.
    let replaced = |plan: &crate::plan::Plan, id: &str| {
        [p.entities.get(&plan.entity), p.environments.get(&plan.environment)]
            .into_iter()
            .flatten()
            .any(|overlay| overlay.with.contains_key(id))
    };
    let own = |id: &str| plans.iter().find(|plan| !replaced(plan, id)).or(plans.first());
    let mut fed = crate::editor::Fed {
        steps: p.steps.iter().map(|s| own(&s.id).and_then(|plan| fed_by(plan, &s.id))).collect(),
        capabilities: loaded.capabilities.clone(),
        ..Default::default()
    };
    for (overlays, fed_overlays, of_plan) in [
        (&p.entities, &mut fed.entities, (|plan: &crate::plan::Plan| plan.entity.clone()) as fn(&crate::plan::Plan) -> String),
        (&p.environments, &mut fed.environments, |plan: &crate::plan::Plan| plan.environment.clone()),
    ] {
        for (name, overlay) in overlays {
            let Some(plan) = plans.iter().find(|plan| of_plan(plan) == *name) else { continue };
            let by_step = overlay.with.keys().filter_map(|id| Some((id.clone(), fed_by(plan, id)?))).collect();
            fed_overlays.insert(name.clone(), by_step);
        }
    }
    println!("{}", serde_json::to_string_pretty(&crate::editor::schema(&fed))?);
    Ok(0)
}

/// What each plugin says of itself, by digest; `None` for one that cannot be described.
type Described = std::collections::HashMap<String, Option<crate::sandbox::PluginInfo>>;

/// Describes every plugin of `plan` not yet in `described`. A plugin that cannot be described is
/// left to the run, which reports why in the journal.
async fn describe_plugins(runtime: &crate::sandbox::Runtime, plan: &crate::plan::Plan, described: &mut Described) {
    for step in &plan.steps {
        if !described.contains_key(&step.sha256) {
            described.insert(step.sha256.clone(), runtime.describe_file(&step.plugin, &step.sha256).await);
        }
    }
}

/// Each described step's plugin name and input schema.
fn schemas(plan: &crate::plan::Plan, described: &Described) -> crate::inputs::Schemas {
    plan.steps
        .iter()
        .filter_map(|s| described.get(&s.sha256)?.as_ref().map(|i| (s.id.clone(), (i.name.clone(), i.input_schema.clone()))))
        .collect()
}

/// The pipeline at `file`, or `None` after printing every problem in it.
fn load_or_report(file: &std::path::Path) -> Option<pipeline::Loaded> {
    pipeline::load(file).map_err(|problems| eprintln!("{problems}")).ok()
}

/// Writes gantry.lock beside the pipeline, or with `check` compares it: exit 1 when stale.
pub(crate) fn lock(file: PathBuf, check: bool) -> anyhow::Result<u8> {
    let Some(loaded) = load_or_report(&file) else { return Ok(super::EXIT_USAGE) };
    let path = crate::lock::path_beside(&file);
    let now = crate::lock::Lock::resolve(&loaded, &super::build_options())?;
    if !check {
        now.write(&path)?;
        println!("{}: {} plugins locked", path.display(), now.plugins.len());
        return Ok(0);
    }
    let Some(written) = crate::lock::Lock::read(&path)? else {
        eprintln!("{}: missing; run `gantry lock {}`", path.display(), file.display());
        return Ok(1);
    };
    let diff = written.diff(&now);
    if diff.is_empty() {
        println!("{}: up to date", path.display());
        return Ok(0);
    }
    eprintln!("{}: stale; run `gantry lock {}`", path.display(), file.display());
    for line in diff {
        eprintln!("  {line}");
    }
    Ok(1)
}

/// Prints the JSON Schema of pipeline files.
pub(crate) fn schema() -> u8 {
    println!("{}", serde_json::to_string_pretty(&pipeline::json_schema()).unwrap_or_default());
    0
}

/// Loads, validates and plans a pipeline; prints the plan.
pub(crate) async fn plan(
    file: PathBuf,
    environment: String,
    entity: String,
    locked: bool,
    json: bool,
    since: Option<(String, Arc<dyn RunStore>)>,
) -> anyhow::Result<u8> {
    let Some(loaded) = load_or_report(&file) else { return Ok(super::EXIT_USAGE) };
    let mut plan = crate::plan::plan(&loaded, &environment, &entity, &super::build_options())?;
    crate::lock::verify(&loaded, &plan, locked)?;
    if !described_fits(&super::runtime()?, &loaded, &mut plan).await {
        return Ok(super::EXIT_USAGE);
    }
    if let Some((id, store)) = since {
        let recorded = crate::run::resume::Reopened::from_journal(&id, store.read(&id).await?)?.plan;
        let changes = crate::review::diff(&recorded, &plan);
        if json {
            println!("{}", serde_json::to_string_pretty(&changes)?);
        } else {
            println!("changes since run {id} ({}/{}):", recorded.environment, recorded.entity);
            changes.iter().for_each(|c| println!("  {c}"));
            if changes.is_empty() {
                println!("  none");
            }
        }
        return Ok(0);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(0);
    }
    println!("plan: {}  environment={}  entity={}", plan.pipeline, plan.environment, plan.entity);
    for (i, group) in plan.groups.iter().enumerate() {
        println!("  wave {}: {}", i + 1, group.join(", "));
    }
    for (name, value) in &plan.outputs {
        println!("  exports {name} = {value}");
    }
    let or_none = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
    fn texts<T: ToString>(v: &[T]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }
    for step in &plan.steps {
        println!();
        println!("step {}{}", step.id, step.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default());
        println!("  plugin    {} sha256:{}", step.uses, step.sha256);
        println!("  needs     {}", or_none(&step.needs));
        println!("  if        {}", step.condition);
        println!("  network   {}", or_none(&texts(step.network.grants())));
        let secrets: Vec<String> = step
            .secrets
            .iter()
            .map(|s| format!("{} ({}) -> {}", s.name, s.source, texts(&s.bound_to).join(" ")))
            .collect();
        println!("  secrets   {}", or_none(&secrets));
        let files: Vec<String> =
            step.files.iter().map(|f| format!("{} (read-only, as {})", f.host.display(), f.guest)).collect();
        println!("  files     {}", or_none(&files));
        if step.artifacts {
            println!("  artifacts /artifacts (writable, kept in the run directory)");
        }
        if !step.network.addresses().is_empty() {
            println!("  addresses {}", or_none(&texts(step.network.addresses())));
        }
        for d in &step.databases {
            println!(
                "  database  {}: {} (password {} from {})",
                d.grant.name, d.grant, d.password.name, d.password.source
            );
        }
        for (name, granted) in &step.capabilities {
            for line in &granted.lines {
                println!("  {name:<9} {}", line.review);
            }
            for secret in &granted.secrets {
                println!("  {name:<9} signs in with {} ({})", secret.name, secret.source);
            }
        }
        let (l, r) = (&step.limits, &step.retry);
        println!(
            "  limits    timeout {}, {} attempts, backoff {}, memory {}, output {}, {} requests, response {}, request timeout {}, artifacts {} in {} files",
            humantime::format_duration(l.timeout),
            r.attempts,
            humantime::format_duration(r.backoff),
            bytes(l.memory_bytes as u64),
            bytes(l.output_bytes as u64),
            l.requests,
            bytes(l.response_bytes as u64),
            humantime::format_duration(l.request_timeout),
            bytes(l.artifacts_bytes as u64),
            l.artifact_files,
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
    pub locked: bool,
    pub promoted_from: Option<String>,
    pub dry_run: bool,
    pub skip_preflight: bool,
    pub jobs: usize,
    pub json: bool,
    pub reports: Vec<ReportSpec>,
    pub state: Option<String>,
}

/// The newest successful run of the same pipeline and entity in `from` whose pipeline file, plugins
/// and grants match `plan`; the refusal names what differs from the newest successful one.
async fn promotion(
    store: &dyn RunStore,
    plan: &crate::plan::Plan,
    from: &str,
) -> anyhow::Result<crate::plan::Promotion> {
    let succeeded = crate::run::Status::Succeeded.name();
    let mut runs: Vec<_> = store
        .list()
        .await?
        .into_iter()
        .filter(|r| {
            r.pipeline == plan.pipeline && r.environment == from && r.entity == plan.entity && r.status == succeeded
        })
        .collect();
    // Run ids start with their start time in milliseconds.
    runs.sort_by(|a, b| b.id.len().cmp(&a.id.len()).then_with(|| b.id.cmp(&a.id)));
    let mut newest = None;
    for run in runs {
        let proven = crate::run::resume::Reopened::from_journal(&run.id, store.read(&run.id).await?)?.plan;
        let differences = crate::review::promotion_differences(&proven, plan);
        if differences.is_empty() {
            return Ok(crate::plan::Promotion { environment: from.to_string(), run_id: run.id });
        }
        newest.get_or_insert((run.id, differences));
    }
    let (entity, pipeline) = (&plan.entity, &plan.pipeline);
    match newest {
        None => anyhow::bail!(
            "--promoted-from {from}: no successful run of `{pipeline}` for entity `{entity}` in {from} in {}: run it there first",
            store.location()
        ),
        Some((id, differences)) => {
            let lines: Vec<String> = differences.iter().map(|d| format!("  {d}")).collect();
            anyhow::bail!(
                "--promoted-from {from}: no successful run in {from} matches this plan; the newest ({id}) differs:\n{}",
                lines.join("\n")
            )
        }
    }
}

/// The run store `--state` (or `GANTRY_STATE`) names; the file store under the working directory otherwise.
pub(crate) async fn store(state: Option<&str>) -> anyhow::Result<Arc<dyn RunStore>> {
    Ok(crate::run::store::open(state, &std::env::current_dir()?).await?)
}

/// Validates, plans and runs a pipeline for one entity, or rolls it out to many (`--entity all`, `a,b`).
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let Some(loaded) = load_or_report(&args.file) else { return Ok(super::EXIT_USAGE) };
    let store = store(args.state.as_deref()).await?;
    if crate::rollout::is_many(&args.entity) {
        return super::rollout::run(&loaded, &args, store).await;
    }
    Ok(run_entity(&loaded, &args, &args.entity, store, None).await?.code)
}

/// How one entity's run ended: its exit code and, once it started, its id.
pub(crate) struct EntityRun {
    /// Exit code: 0, 1 (failed, rolled back), 2 (did not start), 3 (needs a person), 4 (paused), 5 (awaiting
    /// approval), 6 (stopped at a barrier), 7 (a pre-flight failed).
    pub code: u8,
    /// The run, when one was recorded.
    pub run_id: Option<String>,
}

/// Plans and runs the pipeline for `entity`, as part of `rollout` when given (its lines then carry the entity).
pub(crate) async fn run_entity(
    loaded: &pipeline::Loaded,
    args: &RunArgs,
    entity: &str,
    store: Arc<dyn RunStore>,
    rollout: Option<&str>,
) -> anyhow::Result<EntityRun> {
    let not_started = EntityRun { code: super::EXIT_USAGE, run_id: None };
    let mut plan = crate::plan::plan(loaded, &args.environment, entity, &super::build_options())?;
    crate::lock::verify(loaded, &plan, args.locked)?;
    let runtime = super::runtime_for(&plan, args.jobs)?;
    if !described_fits(&runtime, loaded, &mut plan).await {
        return Ok(not_started);
    }
    if let Some(from) = &args.promoted_from {
        let promotion = promotion(store.as_ref(), &plan, from).await?;
        eprintln!(
            "promoted from {} run {}: same pipeline, plugins and grants",
            promotion.environment, promotion.run_id
        );
        plan.promoted_from = Some(promotion);
    }
    let session = Session::start(store.clone(), &plan).await?;
    let run_id = session.run_id().to_string();
    let (tx, printer) = printer_for(args.json, rollout.map(|_| entity.to_string()));
    let (interrupt, signals) = signals(&session);
    let options = RunOptions {
        jobs: args.jobs,
        dry_run: args.dry_run,
        file: Some(args.file.canonicalize()?),
        interrupt: Some(interrupt),
        rollout: rollout.map(str::to_string),
        preflight: match args.skip_preflight {
            true => crate::run::Preflight::Skipped(format!("--skip-preflight by {}", crate::run::approval::current_user())),
            false => crate::run::Preflight::Read,
        },
        ..RunOptions::default()
    };
    let result = crate::run::run(&runtime, &plan, &session, &options, Some(tx)).await;
    let _ = printer.await;
    signals.abort();
    let closed = session.close().await;
    let result = match result {
        Ok(result) => result,
        Err(e) => {
            eprintln!("error: {}{e}", rollout.map(|_| format!("[{entity}] ")).unwrap_or_default());
            return Ok(EntityRun { run_id: Some(run_id), ..not_started });
        }
    };
    if !args.json {
        println!("run {run_id}: {:?}; recorded in {}", result.status, store.location());
    }
    report_journal_error(&result, closed);
    if !result.preflight_failures.is_empty() {
        eprintln!(
            "error: run {run_id}: the pre-flight found what a step needs missing, so nothing ran: {}; fix it and run \
             the pipeline again (`--skip-preflight` starts without it, in an emergency)",
            result.preflight_failures.join("; ")
        );
    }
    let reports: Vec<ReportSpec> = match rollout {
        None => args.reports.clone(),
        Some(_) => args.reports.iter().map(|r| r.for_entity(entity)).collect(),
    };
    write_reports(store.as_ref(), &run_id, &reports).await?;
    Ok(EntityRun { code: result.exit_code(), run_id: Some(run_id) })
}

/// Every step input that does not fit its plugin's schema and every output reference its plugin does
/// not declare, converting rendered numbers and booleans in the plan.
fn described_problems(loaded: &pipeline::Loaded, plan: &mut crate::plan::Plan, described: &Described) -> Vec<pipeline::Problem> {
    let mut problems = crate::inputs::check(loaded, plan, &schemas(plan, described));
    problems.extend(crate::inputs::unknown_outputs(loaded, plan, &declared(plan, described)));
    problems
}

/// The outputs each described step's plugin declares, for steps whose plugin declares any.
fn declared(plan: &crate::plan::Plan, described: &Described) -> crate::inputs::Declared {
    plan.steps
        .iter()
        .filter_map(|s| {
            let info = described.get(&s.sha256)?.as_ref()?;
            let names = info.outputs.as_ref()?.iter().map(|o| o.name.clone()).collect();
            Some((s.id.clone(), (info.name.clone(), names)))
        })
        .collect()
}

/// Compares what each step's plugin describes with the step: its declared capabilities with the
/// step's grants, its input schema with the step's input (converting rendered numbers and booleans
/// in the plan). Prints every mismatch and problem; false when the step cannot run as written.
async fn described_fits(runtime: &crate::sandbox::Runtime, loaded: &pipeline::Loaded, plan: &mut crate::plan::Plan) -> bool {
    use crate::capability::declared::{check, Severity};
    let mut described = Described::new();
    describe_plugins(runtime, plan, &mut described).await;
    let mut ok = true;
    for step in &plan.steps {
        let Some(Some(info)) = described.get(&step.sha256) else { continue };
        for mismatch in check(&info.name, &info.capabilities, step.granted(), &loaded.capabilities.names()) {
            ok &= mismatch.severity != Severity::Error;
            eprintln!("step `{}`: {mismatch}", step.id);
        }
    }
    let problems = described_problems(loaded, plan, &described);
    if !problems.is_empty() {
        eprintln!("{}", pipeline::Problems(problems));
        ok = false;
    }
    ok
}

/// Watches SIGINT and SIGTERM for a run: the first asks it to stop and roll back (through the returned
/// receiver); the second records that the run was abandoned and needs a person, then exits at once with 3.
fn signals(session: &Session) -> (watch::Receiver<Option<String>>, tokio::task::JoinHandle<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(None);
    let journal = session.journal().clone();
    let run_id = session.run_id().to_string();
    let handle = tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            tracing::warn!("cannot watch SIGINT/SIGTERM: a signal will end the run without rolling back");
            return;
        };
        async fn next(int: &mut tokio::signal::unix::Signal, term: &mut tokio::signal::unix::Signal) -> &'static str {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        }
        let first = next(&mut int, &mut term).await;
        eprintln!("{first}: run {run_id} stops starting steps and rolls back; a second signal exits at once");
        let _ = tx.send(Some(first.to_string()));
        let second = next(&mut int, &mut term).await;
        let _ = crate::run::abandon(&journal, first, second).await;
        eprintln!(
            "{second} again: exiting now. Run {run_id} NEEDS A PERSON: check the target systems, then `gantry rollback {run_id}`"
        );
        std::process::exit(super::EXIT_NEEDS_PERSON.into());
    });
    (rx, handle)
}

/// Says loudly when the journal stopped recording: the run's record is incomplete.
fn report_journal_error(result: &crate::run::RunResult, closed: Result<(), crate::run::session::SessionError>) {
    if let Some(e) = &result.journal_error {
        eprintln!(
            "error: {e}; the run stopped and rolled back what it could ({}), but its journal misses events: check the target systems",
            if result.rolled_back.is_empty() { "nothing".to_string() } else { result.rolled_back.join(", ") }
        );
    }
    if let Err(e) = closed {
        eprintln!("warning: closing the run: {e}");
    }
}

/// `gantry runs [show ID]`: lists recorded runs, or prints one run's journal.
pub(crate) async fn runs(show: Option<String>, json: bool, state: Option<&str>) -> anyhow::Result<u8> {
    let store = store(state).await?;
    if let Some(id) = show {
        let journal = store.read(&id).await?;
        for record in &journal.records {
            if json {
                println!("{}", serde_json::to_string(record)?);
            } else {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(record.ts_ms / 1e3);
                println!("{} {}", humantime::format_rfc3339_millis(at), describe(&record.event));
            }
        }
        for line in &journal.torn {
            eprintln!("warning: run {id}: ignored a journal line cut off by a crash: {line}");
        }
        return Ok(0);
    }
    let runs = store.list().await?;
    // The runs of one rollout are listed together, under it, where its first run was.
    let mut shown = std::collections::BTreeSet::new();
    for run in &runs {
        let what = |r: &crate::run::store::RunInfo| {
            format!("{} environment={} entity={}", r.pipeline, r.environment, r.entity)
        };
        if json {
            let mut line =
                serde_json::json!({"id": run.id, "run": what(run), "status": run.status, "events": run.events});
            if let Some(rollout) = &run.rollout {
                line["rollout"] = rollout.clone().into();
            }
            println!("{line}");
            continue;
        }
        match &run.rollout {
            None => println!("{}  {:<16} {}", run.id, run.status, what(run)),
            Some(rollout) if shown.insert(rollout.clone()) => {
                let members: Vec<_> = runs.iter().filter(|r| r.rollout.as_ref() == Some(rollout)).collect();
                let succeeded = members.iter().filter(|r| r.status == Status::Succeeded.name()).count();
                println!("{rollout}  {} runs, {succeeded} succeeded", members.len());
                for r in members {
                    println!("  {}  {:<16} {}", r.id, r.status, what(r));
                }
            }
            Some(_) => {}
        }
    }
    Ok(0)
}

/// `gantry resume <id>`: continues an interrupted run after its last completed step, from its recorded plan.
pub(crate) async fn resume(
    id: String,
    rerun: &[String],
    jobs: usize,
    json: bool,
    state: Option<&str>,
) -> anyhow::Result<u8> {
    let store = store(state).await?;
    if Session::close_unstarted(store.clone(), &id).await? {
        return Ok(unstarted(&id));
    }
    let (session, r) = Session::reopen(store, &id).await?;
    if let Some(request) = &r.awaiting {
        if request.expired(now_ms()) {
            return lapse(session, r, json).await;
        }
        anyhow::bail!(
            "run {id} is awaiting approval of step `{}` until {}: `gantry approve {id}` or `gantry reject {id}`",
            request.step,
            request.deadline()
        );
    }
    let barriers = r.fold.barriers();
    match (&r.finished, &r.paused) {
        (Some(status), _) if status == crate::run::Status::Settled.name() => {
            anyhow::bail!("run {id} was settled: a person accepted its state as it is; nothing to resume")
        }
        (Some(_), _) if r.fold.phase == Some(RunPhase::AtBarrier) => {
            let said: Vec<String> = barriers.iter().map(|b| format!("`{}` ({})", b.step, b.reason)).collect();
            eprintln!("run {id} stopped at the barrier of {}: going forward from it, its change stays", said.join(", "))
        }
        (Some(_), Some(step)) => {
            eprintln!("run {id} was paused by step `{step}`: undoing it from its checkpoints, then running it again")
        }
        (Some(status), _) if status == crate::run::Status::PreflightFailed.name() => {
            anyhow::bail!("run {id} stopped at its pre-flight and changed nothing: run the pipeline again")
        }
        (Some(status), None) => anyhow::bail!("run {id} already finished ({status}); nothing to resume"),
        (None, _) => {}
    }
    go_on(session, r, rerun, jobs, json).await
}

/// Continues a reopened run: rolls back if it was rolling back, else runs what is left.
async fn go_on(
    session: Session,
    r: crate::run::resume::Reopened,
    rerun: &[String],
    jobs: usize,
    json: bool,
) -> anyhow::Result<u8> {
    let id = session.run_id().to_string();
    if r.rolling_back {
        // A run that had failed or was interrupted is never rolled forward.
        eprintln!("run {id} was rolling back when it stopped: continuing the rollback");
        return undo(session, r, json).await;
    }
    // A step cut off after a change with nothing to undo it from is not run again on top of it.
    let unknown: Vec<String> = r
        .changes
        .iter()
        .filter(|(step, _)| !r.checkpoints.contains_key(*step) && !rerun.contains(step) && !r.resumable.contains(*step))
        .map(|(step, change)| format!("`{step}` (after {change})"))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "run {id}: step {} was cut off after a change and left no checkpoints, so gantry cannot tell what it changed; \
             check the target, then `gantry resume {id} --rerun STEP` to run it again or `gantry rollback {id}`",
            unknown.join(", ")
        );
    }
    let runtime = super::runtime_for(&r.plan, jobs)?;
    let (tx, printer) = printer(json);
    let (interrupt, signals) = signals(&session);
    // Steps cut off part-way are rolled back from their checkpoints first, then run again; a step
    // stopped at a gate inside it that is now approved goes on from its checkpoints instead, and so
    // does a rollback barrier's step: what it did cannot be undone.
    let barrier = |id: &String| r.checkpoints.get(id).is_some_and(|c| c.contains_key(crate::run::BARRIER_CHECKPOINT));
    let partial = r
        .partial
        .iter()
        .filter(|id| r.checkpoints.contains_key(*id) && !r.resumable.contains(*id) && !barrier(id))
        .cloned()
        .collect();
    let options = RunOptions {
        jobs,
        file: r.file,
        completed: r.completed,
        resumed: true,
        interrupt: Some(interrupt),
        checkpoints: r.checkpoints,
        partial,
        approved: r.approved,
        started_by: r.started_by,
        // A run stopped during its pre-flight changed nothing yet: it reads again first.
        preflight: match r.fold.phase {
            Some(RunPhase::Preflight) => crate::run::Preflight::Read,
            _ => crate::run::Preflight::Past,
        },
        ..RunOptions::default()
    };
    let result = crate::run::run(&runtime, &r.plan, &session, &options, Some(tx)).await;
    let _ = printer.await;
    signals.abort();
    let (store, id) = (session.store().clone(), session.run_id().to_string());
    let closed = session.close().await;
    let result = result?;
    report_journal_error(&result, closed);
    write_reports(store.as_ref(), &id, &[]).await?;
    Ok(result.exit_code())
}

/// `gantry approve|reject <id>`: records the decision on the step the run awaits, then continues the
/// run (approve) or rolls it back (reject). A request past its deadline counts as rejected.
pub(crate) async fn decide(
    id: String,
    decision: Decision,
    step: Option<String>,
    comment: Option<String>,
    jobs: usize,
    json: bool,
    state: Option<&str>,
) -> anyhow::Result<u8> {
    let store = store(state).await?;
    let (session, r) = Session::reopen(store, &id).await?;
    let Some(request) = r.awaiting.clone() else {
        let now = r.finished.as_deref().unwrap_or("running");
        anyhow::bail!("run {id} is not awaiting an approval ({now})");
    };
    if let Some(step) = step.filter(|s| *s != request.step) {
        anyhow::bail!("run {id} awaits approval of step `{}`, not `{step}`", request.step);
    }
    if request.expired(now_ms()) {
        let code = lapse(session, r, json).await?;
        eprintln!(
            "error: the approval of step `{}` lapsed at {}: the run was rolled back",
            request.step,
            request.deadline()
        );
        return Ok(code.max(super::EXIT_STEP_FAILED));
    }
    let user = current_user();
    request.check(&user, decision)?;
    crate::run::approval::decide(session.journal(), &request, decision, &user, comment).await?;
    // Read back what was just recorded: the decision is in the journal before anything acts on it.
    let r = crate::run::resume::Reopened::from_journal(&id, session.store().read(&id).await?)?;
    eprintln!("run {id}: step `{}` {}d by {user}", request.step, decision);
    go_on(session, r, &[], jobs, json).await
}

/// A lapsed request counts as rejected: recorded as such, then the run is rolled back.
async fn lapse(session: Session, r: crate::run::resume::Reopened, json: bool) -> anyhow::Result<u8> {
    if let Some(request) = &r.awaiting {
        crate::run::approval::lapse(session.journal(), request).await?;
    }
    undo(session, r, json).await
}

/// `gantry approvals`: the runs awaiting approval; those past their deadline are rejected and rolled back.
pub(crate) async fn approvals(json: bool, state: Option<&str>) -> anyhow::Result<u8> {
    let store = store(state).await?;
    let awaiting = Status::AwaitingApproval.name();
    let mut code = 0;
    for run in store.list().await?.into_iter().filter(|r| r.status == awaiting) {
        let r = crate::run::resume::Reopened::from_journal(&run.id, store.read(&run.id).await?)?;
        let Some(request) = r.awaiting.clone() else { continue };
        let expired = request.expired(now_ms());
        if json {
            let line = serde_json::json!({"id": run.id, "pipeline": run.pipeline, "environment": run.environment,
                "entity": run.entity, "request": request, "expired": expired});
            println!("{line}");
        } else {
            let who = if request.approvers.is_empty() { "anyone".into() } else { request.approvers.join(", ") };
            println!(
                "{}  {} environment={} entity={}  step `{}` by {who} until {}{}",
                run.id,
                run.pipeline,
                run.environment,
                run.entity,
                request.step,
                request.deadline(),
                if expired { "  LAPSED: rejecting and rolling back" } else { "" }
            );
        }
        if expired {
            let (session, r) = Session::reopen(store.clone(), &run.id).await?;
            code = code.max(lapse(session, r, json).await?);
        }
    }
    Ok(code)
}

/// `gantry rollback <id>`: undoes the completed steps of a run, newest first, from its recorded
/// plan; past its rollback barriers only when asked, and confirmed.
pub(crate) async fn rollback(
    id: String,
    past_barrier: bool,
    yes: bool,
    json: bool,
    state: Option<&str>,
) -> anyhow::Result<u8> {
    let store = store(state).await?;
    if Session::close_unstarted(store.clone(), &id).await? {
        return Ok(unstarted(&id));
    }
    let (session, r) = Session::reopen(store, &id).await?;
    let barriers = r.fold.barriers();
    if past_barrier && !barriers.is_empty() && !yes {
        let said: Vec<String> =
            barriers.iter().map(|b| format!("`{}` ({}; stays: {})", b.step, b.reason, b.changed)).collect();
        let question = format!(
            "run {id}: undo past the barrier of {}? Each barrier's step undoes what it still can, then everything older is undone",
            said.join(", ")
        );
        if !confirmed(&question)? {
            anyhow::bail!("not confirmed: nothing was undone (`--yes` confirms without asking)");
        }
    }
    let by = past_barrier.then(current_user);
    undo_with(session, r, by.as_deref(), json).await
}

/// Says that run `id` never started and was closed as failed; the exit code of a failed run.
fn unstarted(id: &str) -> u8 {
    eprintln!("run {id} stopped while reading its secrets, before anything ran: recorded as failed; run the pipeline again");
    super::EXIT_STEP_FAILED
}

/// Asks `question` on the terminal; without one, the answer is no.
fn confirmed(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question}: no terminal to confirm on; add `--yes`");
    }
    eprint!("{question} [type yes]: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// `gantry settle <id>`: a person accepts the run's state as it is.
pub(crate) async fn settle(id: String, reason: String, state: Option<&str>) -> anyhow::Result<u8> {
    let store = store(state).await?;
    let (session, r) = Session::reopen(store, &id).await?;
    let now = r.fold.status();
    use crate::run::Status;
    if [Status::Succeeded, Status::RolledBack, Status::Settled].map(Status::name).contains(&now.as_str()) {
        anyhow::bail!("run {id} is {now}: there is nothing to settle");
    }
    let by = current_user();
    crate::run::settle(&session, &by, &reason).await?;
    let closed = session.close().await;
    if let Err(e) = closed {
        anyhow::bail!("run {id}: {e}");
    }
    let stays: Vec<String> = r.fold.in_place();
    eprintln!(
        "run {id} settled by {by} ({reason}); in place as it is: {}",
        if stays.is_empty() { "nothing".to_string() } else { stays.join(", ") }
    );
    Ok(0)
}

/// Rolls back a reopened run in its session, stopping at its rollback barriers.
async fn undo(session: Session, r: crate::run::resume::Reopened, json: bool) -> anyhow::Result<u8> {
    undo_with(session, r, None, json).await
}

/// Rolls back a reopened run in its session; past its barriers when `past_barrier` names who chose it.
async fn undo_with(
    session: Session,
    r: crate::run::resume::Reopened,
    past_barrier: Option<&str>,
    json: bool,
) -> anyhow::Result<u8> {
    let runtime = super::runtime_for(&r.plan, 1)?;
    let (tx, printer) = printer(json);
    // A rollback is not stopped by the first signal (it is already the way back); a second one abandons it.
    let (_interrupt, signals) = signals(&session);
    let result = crate::run::rollback(&runtime, &session, &r, past_barrier, Some(tx)).await;
    let _ = printer.await;
    signals.abort();
    let (store, id) = (session.store().clone(), session.run_id().to_string());
    let closed = session.close().await;
    let result = result?;
    report_journal_error(&result, closed);
    write_reports(store.as_ref(), &id, &[]).await?;
    Ok(result.exit_code())
}

/// Writes the reports asked for from the journal; in GitHub Actions, the `::error` annotations,
/// the job summary (`$GITHUB_STEP_SUMMARY`) and the run's id and status as step outputs
/// (`$GITHUB_OUTPUT`); with `OTEL_EXPORTER_OTLP_ENDPOINT`, the session's spans. Run, resume and
/// rollback each write them: each ends (part of) a run.
async fn write_reports(store: &dyn RunStore, run_id: &str, reports: &[ReportSpec]) -> anyhow::Result<()> {
    let github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    let ci_file = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let (step_summary, step_output) = (ci_file("GITHUB_STEP_SUMMARY"), ci_file("GITHUB_OUTPUT"));
    let traces = crate::report::trace::Exporter::from_env();
    if reports.is_empty() && !github && step_summary.is_none() && step_output.is_none() && traces.is_none() {
        // Reading the whole journal back (a few ms for a long run) only when something uses it.
        return Ok(());
    }
    let journal = store.read(run_id).await?;
    let summary = crate::report::Summary::from_records(&journal.records);
    let html = reports.iter().find(|r| r.kind == crate::report::ReportKind::Html).map(|r| r.path.as_path());
    for report in reports {
        report
            .write(&journal.records, &summary, html)
            .map_err(|e| anyhow::anyhow!("--report {}: {e}", report.path.display()))?;
    }
    if github {
        for line in summary.github_annotations() {
            println!("{line}");
        }
    }
    // The runner's files are appended to: other steps of the job write theirs too.
    let append = |path: &std::path::Path, text: &str| -> anyhow::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
        file.write_all(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    if let Some(path) = &step_summary {
        append(path, &crate::report::markdown::job_summary(&summary, &journal.records, html))?;
    }
    if let Some(path) = &step_output {
        append(path, &crate::report::github_outputs(&summary))?;
    }
    // The session that just ended wrote the journal's last records; a trace that cannot be sent
    // is said, never a reason to fail what the run did.
    if let Some(exporter) = traces {
        let session = journal.records.last().map_or(0, |r| r.session);
        match exporter.export(&journal.records, session).await {
            Ok(count) => tracing::debug!("sent {count} spans to {}", exporter.url),
            Err(e) => eprintln!("warning: run {run_id}: the trace was not sent: {e}"),
        }
    }
    Ok(())
}
