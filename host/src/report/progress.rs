//! Progress of a run as people and CI see it: one line per event (CI logs,
//! `gantry runs show`), JSON lines (`--json`), or a live view with a spinner
//! per step on a terminal.

use crate::run::fold::RunPhase;
use crate::run::Event;
use tokio::sync::mpsc;

/// One line describing an event, as CI logs and `gantry runs show` print it.
pub fn describe(event: &Event) -> String {
    use Event::*;
    match event {
        RunStarted { run_id, pipeline, environment, entity, .. } => {
            format!("run {run_id} started: {pipeline} environment={environment} entity={entity}")
        }
        StepStarted { step, attempt, .. } => format!("{step}: started (attempt {attempt})"),
        StepFinished { step, outputs, .. } => {
            format!("{step}: succeeded {}", serde_json::to_string(outputs).unwrap_or_default())
        }
        StepRetrying { step, attempt, error, backoff_ms } => {
            format!("{step}: attempt {attempt} failed ({error}); retrying in {backoff_ms} ms")
        }
        StepFailed { step, kind, error, continue_on_error, .. } => {
            format!("{step}: {kind}: {error}{}", if *continue_on_error { " (continue_on_error)" } else { "" })
        }
        StepSkipped { step, reason } => format!("{step}: skipped ({reason})"),
        Paused { step, reason } => format!(
            "{step}: INCONCLUSIVE: {reason}; the run is paused, nothing rolled back: `gantry resume <run id>` runs the step again, `gantry rollback <run id>` undoes the run"
        ),
        ApprovalRequested(r) => format!(
            "{}: AWAITING APPROVAL{} by {} until {}: `gantry approve <run id>` goes on, `gantry reject <run id>` rolls the run back",
            r.step,
            r.gate.as_ref().map(|g| format!(" to go past {g}")).unwrap_or_default(),
            if r.approvers.is_empty() { "anyone".to_string() } else { r.approvers.join(" or ") },
            r.deadline()
        ),
        Approved { step, by, comment, gate } => format!(
            "{step}: approved{} by {by}{}",
            gate.as_ref().map(|g| format!(" past {g}")).unwrap_or_default(),
            comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
        ),
        Rejected { step, by, comment, reason, gate } => format!(
            "{step}: {reason}{} ({by}){}; rolling back",
            gate.as_ref().map(|g| format!(" at {g}")).unwrap_or_default(),
            comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
        ),
        RolledBack { step, .. } => format!("{step}: rolled back"),
        RollbackFailed { step, error, .. } => format!("{step}: ROLLBACK FAILED: {error}"),
        RunFinished { status } => format!("run finished: {status}"),
        Phase { phase: RunPhase::AtBarrier, reason } => format!(
            "run STOPPED AT A BARRIER: {reason}. A person decides: `gantry resume <run id>` goes forward once the cause is fixed, \
             `gantry rollback <run id> --past-barrier` undoes past it, `gantry settle <run id> --reason …` accepts the state"
        ),
        Phase { phase, reason } => format!("run {}: {reason}", phase.name().replace('_', " ")),
        Opened { command, pid, host } => format!("{command}: pid {pid} on {host} took the run up"),
        ReadingSecrets { run_id, pipeline, environment, entity, .. } => {
            format!("run {run_id} reading secrets: {pipeline} environment={environment} entity={entity}")
        }
        SecretSlow { secret, from, waited_ms } => format!(
            "reading secrets: `{secret}` from {from}: no answer yet after {} (each store request waits up to its \
             `secret_stores.<store>.timeout`)",
            crate::units::millis(*waited_ms as f64)
        ),
        StartFailed { error } => format!("the run could not start: {error}; nothing ran"),
        PreflightChecked { step, checks, error } => {
            let each: Vec<String> = checks
                .iter()
                .map(|c| format!("{} {}: {}", if c.passed { "ok" } else { "FAILED" }, c.name, c.answer))
                .collect();
            let said = match (error, each.is_empty()) {
                (Some(e), _) => format!("PRE-FLIGHT FAILED: {e}"),
                (None, true) => "no checks".into(),
                (None, false) => each.join("; "),
            };
            format!("{step}: pre-flight: {said}")
        }
        PreflightSkipped { step: Some(step), reason } => format!("{step}: pre-flight skipped: {reason}"),
        PreflightSkipped { step: None, reason } => format!("pre-flight skipped for the whole run: {reason}"),
        SecretsRead { answered } => {
            let each: Vec<String> = answered
                .iter()
                .map(|(name, a)| match a.passed_over.len() {
                    0 => format!("{name} from {}", a.source),
                    n => format!("{name} from {} ({n} unavailable before it)", a.source),
                })
                .collect();
            format!("secrets read: {}", each.join(", "))
        }
        AwsCredentials { secret, provider, expires, step } => {
            let until = expires.as_ref().map(|e| format!(", valid until {e}")).unwrap_or_else(|| " (long-term keys)".into());
            match step {
                Some(step) => format!("{step}: AWS credentials `{secret}` renewed from {provider}{until}"),
                None => format!("AWS credentials `{secret}` from {provider}{until}"),
            }
        }
        Checkpoint { step, key, value, .. } if key == crate::run::BARRIER_CHECKPOINT => {
            format!("{step}: ROLLBACK BARRIER: {value} (a rollback stops here and waits for a person)")
        }
        Checkpoint { step, key, .. } => format!("{step}: checkpoint {key} recorded"),
        PastBarrier { by } => format!("{by} chose to roll back past the run's barriers"),
        BarrierAhead { step, reason, changed } => format!(
            "{step}: dry run: WOULD BECOME A ROLLBACK BARRIER: {reason} (stays changed: {changed}); \
             a rollback of the real run stops here and waits for a person"
        ),
        Settled { by, reason } => format!("settled by {by}: {reason}; the run stays as it is"),
        Log { step, level, message } => format!("{step}: {level:?}: {message}"),
        Interrupted { signal } => {
            format!("{signal}: stopping: no new steps, cancelling running ones, rolling back (a second signal exits at once)")
        }
        Abandoned { signal } => {
            format!(
                "second {signal}: exiting now; the run NEEDS A PERSON: `gantry rollback <run id>` finishes undoing it"
            )
        }
        Request(r) => match (&r.reason, r.status) {
            (Some(reason), _) if !r.allowed => {
                format!("{}: {} DENIED: {reason}", r.step, r.shown())
            }
            (_, Some(status)) => format!(
                "{}: {} -> {status} ({}, {})",
                r.step,
                r.shown(),
                crate::units::bytes(r.bytes),
                crate::units::millis(r.duration_ms)
            ),
            // A capability's command that got its answer: there is no HTTP status to show.
            (None, None) => format!(
                "{}: {} ({}, {})",
                r.step,
                r.shown(),
                crate::units::bytes(r.bytes),
                crate::units::millis(r.duration_ms)
            ),
            (Some(reason), None) => format!("{}: {} failed: {reason}", r.step, r.shown()),
        },
    }
}

/// Set once by the binary from `--quiet`, as the log filter is: every printer of the process
/// then shows step outcomes and the run's end only.
static QUIET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Makes every printer of this process quiet (or not); the first call wins.
pub fn set_quiet(quiet: bool) {
    let _ = QUIET.set(quiet);
}

/// Whether a quiet printer shows `event`: what a step ended as and how the run ended.
fn said_quietly(event: &Event) -> bool {
    use Event::*;
    matches!(
        event,
        StepFinished { .. }
            | StepFailed { .. }
            | StepSkipped { .. }
            | RolledBack { .. }
            | RollbackFailed { .. }
            | Paused { .. }
            | Interrupted { .. }
            | Abandoned { .. }
            | ApprovalRequested(_)
            | Rejected { .. }
            | SecretSlow { .. }
            | PreflightSkipped { step: None, .. }
            | BarrierAhead { .. }
            | Settled { .. }
            | RunFinished { .. }
    )
}

/// How much of a step's outputs a quiet line shows.
const QUIET_OUTPUTS: usize = 100;

/// [`describe`] in one short line: a step's outputs cut at [`QUIET_OUTPUTS`] characters.
fn describe_quietly(event: &Event) -> String {
    let mut line = describe(event);
    if let Event::StepFinished { step, .. } = event {
        let head = format!("{step}: succeeded ").len();
        if let Some((cut, _)) = line.char_indices().nth(head + QUIET_OUTPUTS) {
            line.truncate(cut);
            line.push('…');
        }
    }
    line
}

/// Prints events as they arrive: a live view on a terminal, timestamped lines
/// otherwise (CI logs), or JSON lines with `--json`.
pub fn printer(json: bool) -> (mpsc::UnboundedSender<Event>, tokio::task::JoinHandle<()>) {
    printer_for(json, None)
}

/// As [`printer`], for one of many runs printing at once: each line starts with `[label]`, each JSON
/// object carries `"entity": label`, and there is no live view.
pub fn printer_for(json: bool, label: Option<String>) -> (mpsc::UnboundedSender<Event>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let handle = tokio::spawn(async move {
        let quiet = QUIET.get().copied().unwrap_or(false);
        let mut view = if label.is_some() || quiet { None } else { live_view(json) };
        let prefix = label.as_ref().map(|l| format!("[{l}] ")).unwrap_or_default();
        let mut sections = (view.is_none() && !json && GitlabSections::wanted()).then(GitlabSections::default);
        while let Some(event) = rx.recv().await {
            if json {
                let mut value = serde_json::to_value(&event).unwrap_or_default();
                if let (Some(label), Some(object)) = (&label, value.as_object_mut()) {
                    object.insert("entity".into(), label.clone().into());
                }
                super::out::line(format_args!("{value}"));
            } else if matches!(event, Event::Log { .. } | Event::StartFailed { .. }) || (quiet && !said_quietly(&event)) {
                // A plugin's log already went to stderr as the plugin wrote it; a failed start is the
                // command's error.
            } else if let Some(show) = view.as_mut() {
                show(&event);
            } else {
                let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                let said = if quiet { describe_quietly(&event) } else { describe(&event) };
                if let Some(start) = sections.as_mut().and_then(|s| s.start(&event, &prefix)) {
                    super::out::line(format_args!("{start}"));
                }
                super::out::line(format_args!("{now} {prefix}{said}"));
                if let Some(end) = sections.as_mut().and_then(|s| s.end(&event, &prefix)) {
                    super::out::line(format_args!("{end}"));
                }
            }
        }
    });
    (tx, handle)
}

/// GitLab CI's collapsible sections around each step's lines: opened when the step first starts,
/// closed when it ends (succeeded, failed, paused). Steps running at once share the log, so a line
/// lands in whichever section is open when it is printed.
#[derive(Default)]
struct GitlabSections {
    open: std::collections::BTreeSet<String>,
}

impl GitlabSections {
    /// Whether the job runs in GitLab CI (`GITLAB_CI=true`).
    fn wanted() -> bool {
        std::env::var("GITLAB_CI").is_ok_and(|v| v == "true")
    }

    /// A section's name: letters, digits, `_`, `.` and `-` only.
    fn name(prefix: &str, step: &str) -> String {
        let raw = format!("gantry_{prefix}{step}");
        raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' }).collect()
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
    }

    /// The marker opening a step's section, before its first start line.
    fn start(&mut self, event: &Event, prefix: &str) -> Option<String> {
        let Event::StepStarted { step, .. } = event else { return None };
        let name = Self::name(prefix, step);
        self.open.insert(name.clone()).then(|| {
            format!("\u{1b}[0Ksection_start:{}:{name}[collapsed=true]\r\u{1b}[0K{prefix}step {step}", Self::now())
        })
    }

    /// The marker closing a step's section, after the line saying how it ended.
    fn end(&mut self, event: &Event, prefix: &str) -> Option<String> {
        use Event::*;
        let (StepFinished { step, .. } | StepFailed { step, .. } | Paused { step, .. }) = event else { return None };
        let name = Self::name(prefix, step);
        self.open.remove(&name).then(|| format!("\u{1b}[0Ksection_end:{}:{name}\r\u{1b}[0K", Self::now()))
    }
}

/// Shows one event in the live view.
type Shower = Box<dyn FnMut(&Event) + Send>;

/// A live view when stdout is a terminal (and the `cli` feature brings indicatif); none otherwise.
#[cfg(feature = "cli")]
fn live_view(json: bool) -> Option<Shower> {
    use std::io::IsTerminal;
    if json || !std::io::stdout().is_terminal() {
        return None;
    }
    let mut view = LiveView::default();
    Some(Box::new(move |event: &Event| view.show(event)))
}

#[cfg(not(feature = "cli"))]
fn live_view(_json: bool) -> Option<Shower> {
    None
}

/// One spinner per step with its state and elapsed time, redrawn in place.
#[cfg(feature = "cli")]
#[derive(Default)]
struct LiveView {
    bars: indicatif::MultiProgress,
    steps: std::collections::BTreeMap<String, indicatif::ProgressBar>,
}

#[cfg(feature = "cli")]
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

    fn show(&mut self, event: &Event) {
        use Event::*;
        match event {
            StepStarted { step, attempt, .. } => self.bar(step).set_message(format!("running (attempt {attempt})")),
            StepRetrying { step, backoff_ms, .. } => self.bar(step).set_message(format!("retrying in {backoff_ms} ms")),
            StepFinished { step, .. } => self.bar(step).finish_with_message("succeeded"),
            StepFailed { step, kind, error, .. } => self.bar(step).finish_with_message(format!("{kind}: {error}")),
            StepSkipped { step, reason } => self.bar(step).finish_with_message(format!("skipped ({reason})")),
            Paused { step, reason } => self.bar(step).finish_with_message(format!("paused: {reason}")),
            ApprovalRequested(r) => {
                self.bar(&r.step).finish_with_message(format!("awaiting approval until {}", r.deadline()))
            }
            RolledBack { step, .. } => self.bar(step).finish_with_message("rolled back"),
            RollbackFailed { step, error, .. } => {
                self.bar(step).finish_with_message(format!("ROLLBACK FAILED: {error}"))
            }
            Phase { .. }
            | Opened { .. }
            | SecretsRead { .. }
            | AwsCredentials { .. }
            | ReadingSecrets { .. }
            | StartFailed { .. } => {}
            SecretSlow { .. } | PreflightChecked { .. } | PreflightSkipped { .. } => {
                let _ = self.bars.println(describe(event));
            }
            RunStarted { .. }
            | RunFinished { .. }
            | Interrupted { .. }
            | Abandoned { .. }
            | Approved { .. }
            | Rejected { .. }
            | PastBarrier { .. }
            | BarrierAhead { .. }
            | Settled { .. } => {
                let _ = self.bars.println(describe(event));
            }
            Checkpoint { key, .. } if key == crate::run::BARRIER_CHECKPOINT => {
                let _ = self.bars.println(describe(event));
            }
            Request(r) if !r.allowed => {
                let _ = self.bars.println(describe(event));
            }
            Request(_) | Checkpoint { .. } | Log { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_line_cuts_long_outputs_and_keeps_outcomes() {
        let outputs: std::collections::BTreeMap<String, String> =
            [("changed".to_string(), "x".repeat(500))].into_iter().collect();
        let finished = Event::StepFinished { step: "crm".into(), outputs, attempt: 1 };
        let line = describe_quietly(&finished);
        assert!(line.starts_with("crm: succeeded {\"changed\":\"xxx") && line.ends_with('…'), "{line}");
        assert_eq!(line.chars().count(), "crm: succeeded ".len() + QUIET_OUTPUTS + 1);
        assert!(said_quietly(&finished));
        assert!(!said_quietly(&Event::StepStarted { step: "crm".into(), attempt: 1, notifier: false }));
    }

    #[test]
    fn a_gitlab_section_opens_at_a_steps_first_start_and_closes_at_its_end() {
        let mut sections = GitlabSections::default();
        let started = |attempt| Event::StepStarted { step: "db migrate".into(), attempt, notifier: false };
        let start = sections.start(&started(1), "[e1] ").unwrap();
        assert!(start.starts_with("\u{1b}[0Ksection_start:"), "{start:?}");
        assert!(start.ends_with(":gantry__e1__db_migrate[collapsed=true]\r\u{1b}[0K[e1] step db migrate"), "{start:?}");
        assert_eq!(sections.start(&started(2), "[e1] "), None, "a retry stays in the step's section");
        let finished = Event::StepFinished { step: "db migrate".into(), outputs: Default::default(), attempt: 2 };
        let end = sections.end(&finished, "[e1] ").unwrap();
        assert!(end.starts_with("\u{1b}[0Ksection_end:") && end.ends_with(":gantry__e1__db_migrate\r\u{1b}[0K"), "{end:?}");
        assert_eq!(sections.end(&finished, "[e1] "), None);
    }
}
