//! A component ready to instantiate, with where its exports are: `plugin` always, `preflight` and
//! `outputs` when it has them (0.3.4), so steps built for an earlier 0.3 contract still load.

use super::bindings::exports::gantry::step::{outputs, plugin, preflight};
use wasmtime::component::InstancePre;
use wasmtime::Store;

/// A pre-instantiated step component.
pub(crate) struct Pre<T: 'static> {
    pre: InstancePre<T>,
    plugin: plugin::GuestIndices,
    preflight: Option<preflight::GuestIndices>,
    outputs: Option<outputs::GuestIndices>,
}

impl<T: 'static> Clone for Pre<T> {
    fn clone(&self) -> Self {
        Pre {
            pre: self.pre.clone(),
            plugin: self.plugin.clone(),
            preflight: self.preflight.clone(),
            outputs: self.outputs.clone(),
        }
    }
}

/// One instance's entry points.
pub(crate) struct Loaded {
    /// `describe`, `run`, `rollback`.
    pub plugin: plugin::Guest,
    /// `preflight`, when the component exports it.
    pub preflight: Option<preflight::Guest>,
    /// `outputs`, when the component exports it.
    pub outputs: Option<outputs::Guest>,
}

impl<T: Send + 'static> Pre<T> {
    /// Finds the exports; fails when `plugin` is missing or of another shape.
    pub fn new(pre: InstancePre<T>) -> wasmtime::Result<Self> {
        let plugin = plugin::GuestIndices::new(&pre)?;
        let preflight = preflight::GuestIndices::new(&pre).ok();
        let outputs = outputs::GuestIndices::new(&pre).ok();
        Ok(Pre { pre, plugin, preflight, outputs })
    }

    /// Whether the component exports a pre-flight.
    pub fn has_preflight(&self) -> bool {
        self.preflight.is_some()
    }

    /// A fresh instance in `store`.
    pub async fn instantiate(&self, store: &mut Store<T>) -> wasmtime::Result<Loaded> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let plugin = self.plugin.load(&mut *store, &instance)?;
        let preflight = match &self.preflight {
            Some(indices) => Some(indices.load(&mut *store, &instance)?),
            None => None,
        };
        let outputs = match &self.outputs {
            Some(indices) => Some(indices.load(&mut *store, &instance)?),
            None => None,
        };
        Ok(Loaded { plugin, preflight, outputs })
    }
}
