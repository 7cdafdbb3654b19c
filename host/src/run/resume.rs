//! Reopening a run from its journal, for `resume` and `rollback`: which
//! pipeline, environment and entity it was, which steps completed with which
//! outputs, and whether it finished — re-planned with the very same plugins.

use super::journal::{self, FileJournal};
use super::Event;
use crate::build::BuildOptions;
use crate::plan::Plan;
use crate::sandbox::Outputs;
use std::path::{Path, PathBuf};

/// A run as its journal left it.
pub struct Reopened {
    /// The pipeline, planned again for the run's environment and entity.
    pub plan: Plan,
    /// Steps completed and not rolled back, in completion order.
    pub completed: Vec<(String, Outputs)>,
    /// The status it finished with, if it finished.
    pub finished: Option<String>,
    /// The journal, open for appending.
    pub journal: FileJournal,
    /// The pipeline file.
    pub file: PathBuf,
}

/// Why a run cannot be reopened.
#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    /// The journal is missing or unreadable.
    #[error("run {id}: cannot read its journal: {source}")]
    Journal {
        /// Run id.
        id: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The journal does not say what ran.
    #[error("run {id}: {what}")]
    Incomplete {
        /// Run id.
        id: String,
        /// What is missing.
        what: String,
    },
    /// The pipeline no longer validates or plans.
    #[error("run {id}: {message}")]
    Pipeline {
        /// Run id.
        id: String,
        /// The problems.
        message: String,
    },
    /// A plugin is not the one the run started with.
    #[error("run {id}: the plugin of step `{step}` changed since the run started (sha256 {then} then, {now} now); refusing to mix plugins in one run")]
    PluginChanged {
        /// Run id.
        id: String,
        /// Step id.
        step: String,
        /// Hash in the journal.
        then: String,
        /// Hash now.
        now: String,
    },
}

/// Reads `<runs_dir>/<id>/journal.jsonl` and plans the run again, refusing changed plugins.
pub fn reopen(runs_dir: &Path, id: &str, build: &BuildOptions) -> Result<Reopened, ReopenError> {
    let dir = runs_dir.join(id);
    let io = |source| ReopenError::Journal { id: id.to_string(), source };
    let records = journal::read(&dir.join("journal.jsonl")).map_err(io)?;
    let mut started = None;
    let mut completed: Vec<(String, Outputs)> = Vec::new();
    let mut finished = None;
    for record in records {
        match record.event {
            Event::RunStarted { file, environment, entity, plugins, .. } if started.is_none() => {
                started = Some((file, environment, entity, plugins))
            }
            Event::StepFinished { step, outputs } => completed.push((step, outputs)),
            Event::RolledBack { step } => completed.retain(|(s, _)| *s != step),
            Event::RunFinished { status } => finished = Some(status),
            _ => {}
        }
    }
    let incomplete = |what: &str| ReopenError::Incomplete { id: id.to_string(), what: what.to_string() };
    let (file, environment, entity, hashes) = started.ok_or_else(|| incomplete("the journal has no start"))?;
    let file = file.ok_or_else(|| incomplete("the journal does not name its pipeline file"))?;
    let pipeline_error = |message: String| ReopenError::Pipeline { id: id.to_string(), message };
    let loaded = crate::pipeline::load(&file).map_err(|p| pipeline_error(p.to_string()))?;
    let plan = crate::plan::plan(&loaded, &environment, &entity, build).map_err(|e| pipeline_error(e.to_string()))?;
    for step in &plan.steps {
        let then = hashes.get(&step.id).cloned().unwrap_or_else(|| "none".into());
        if then != step.sha256 {
            return Err(ReopenError::PluginChanged {
                id: id.to_string(),
                step: step.id.clone(),
                then,
                now: step.sha256.clone(),
            });
        }
    }
    let journal = FileJournal::create(&dir).map_err(io)?;
    Ok(Reopened { plan, completed, finished, journal, file })
}
