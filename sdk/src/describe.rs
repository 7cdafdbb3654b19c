//! What a plugin says about itself: name, version, input schema, capabilities.

use crate::__private::bindings::gantry::step::types as wit;
use schemars::JsonSchema;

/// Builder for the plugin's self-description, returned by [`crate::Step::describe`].
#[derive(Debug, Clone)]
pub struct Describe {
    name: String,
    version: String,
    description: String,
    input_schema: serde_json::Value,
    capabilities: Vec<String>,
    /// `None` until the first [`Describe::output`]: a plugin that declares none is not checked.
    outputs: Option<Vec<(String, String)>>,
}

impl Describe {
    /// A plugin called `name` at `version` (usually `env!("CARGO_PKG_VERSION")`).
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            input_schema: serde_json::json!({"type": "object"}),
            capabilities: Vec::new(),
            outputs: None,
        }
    }

    /// One-line description shown by `gantry plugin inspect`.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Derives the input's JSON Schema from the type the step deserializes.
    ///
    /// ```
    /// #[derive(schemars::JsonSchema)]
    /// struct Input { url: String }
    /// let d = gantry_sdk::Describe::new("x", "1.0.0").input::<Input>();
    /// assert!(d.input_schema()["properties"]["url"].is_object());
    /// ```
    pub fn input<T: JsonSchema>(mut self) -> Self {
        self.input_schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
        self
    }

    /// Declares a capability the plugin expects: `network`, `secrets` or `files`.
    pub fn capability(mut self, name: impl Into<String>) -> Self {
        self.capabilities.push(name.into());
        self
    }

    /// Declares an output the step returns, read in a pipeline as `steps.<id>.outputs.<name>`.
    /// Once a plugin declares one, a pipeline naming an output it does not declare is refused at
    /// `validate` and `plan`, with the line and the closest declared name. A part written
    /// `<placeholder>` stands for a name the input chooses: `<metric>.phase` covers
    /// `outputs.error-rate.phase`.
    ///
    /// ```
    /// let d = gantry_sdk::Describe::new("deploy", "1.0.0").output("revision", "the deployed revision");
    /// assert_eq!(d.declared_outputs(), Some(&[("revision".to_string(), "the deployed revision".to_string())][..]));
    /// ```
    pub fn output(mut self, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.outputs.get_or_insert_with(Vec::new).push((name.into(), description.into()));
        self
    }

    /// The declared outputs, by name and description; `None` when the plugin declares none.
    pub fn declared_outputs(&self) -> Option<&[(String, String)]> {
        self.outputs.as_deref()
    }

    /// The JSON Schema of the input.
    pub fn input_schema(&self) -> &serde_json::Value {
        &self.input_schema
    }

    pub(crate) fn into_wit(self) -> wit::PluginInfo {
        wit::PluginInfo {
            name: self.name,
            version: self.version,
            description: self.description,
            input_schema: self.input_schema.to_string(),
            capabilities: self.capabilities,
        }
    }
}
