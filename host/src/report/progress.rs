//! Progress of a run as people and CI see it: one line per event (CI logs,
//! `gantry runs show`), JSON lines (`--json`), or a live view with a spinner
//! per step on a terminal.

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
        Phase { phase, reason } => format!("run {}: {reason}", phase.name().replace('_', " ")),
        Opened { command, pid, host } => format!("{command}: pid {pid} on {host} took the run up"),
        Checkpoint { step, key, .. } => format!("{step}: checkpoint {key} recorded"),
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
                super::units::bytes(r.bytes),
                super::units::millis(r.duration_ms)
            ),
            (reason, None) => {
                format!("{}: {} failed: {}", r.step, r.shown(), reason.as_deref().unwrap_or(""))
            }
        },
    }
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
        let mut view = if label.is_some() { None } else { live_view(json) };
        let prefix = label.as_ref().map(|l| format!("[{l}] ")).unwrap_or_default();
        while let Some(event) = rx.recv().await {
            if json {
                let mut value = serde_json::to_value(&event).unwrap_or_default();
                if let (Some(label), Some(object)) = (&label, value.as_object_mut()) {
                    object.insert("entity".into(), label.clone().into());
                }
                super::out::line(format_args!("{value}"));
            } else if matches!(event, Event::Log { .. }) {
                // The log already went to stderr as the plugin wrote it.
            } else if let Some(show) = view.as_mut() {
                show(&event);
            } else {
                let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                super::out::line(format_args!("{now} {prefix}{}", describe(&event)));
            }
        }
    });
    (tx, handle)
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
            Phase { .. } | Opened { .. } => {}
            RunStarted { .. }
            | RunFinished { .. }
            | Interrupted { .. }
            | Abandoned { .. }
            | Approved { .. }
            | Rejected { .. } => {
                let _ = self.bars.println(describe(event));
            }
            Request(r) if !r.allowed => {
                let _ = self.bars.println(describe(event));
            }
            Request(_) | Checkpoint { .. } | Log { .. } => {}
        }
    }
}
