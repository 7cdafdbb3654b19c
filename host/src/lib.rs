//! gantry-host: the embeddable WebAssembly plugin host for deployment steps.
//!
//! Data flows one way: a plugin file is loaded by the [`sandbox::Runtime`]
//! (checked against the `gantry:step` contract, compiled or fetched from the
//! compile cache), then each step call runs in a fresh store with the
//! [`capability::Grants`] the caller gives it: network origins, secrets bound
//! to origins, and nothing else. [`build`] turns a plugin crate into a
//! component. The `gantry` binary is a thin layer over these modules.
//!
//! ```no_run
//! use gantry_host::sandbox::{Runtime, StepCall};
//! use gantry_host::capability::NetworkPolicy;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder().build()?;
//! let plugin = runtime.load("http_check.component.wasm".as_ref())?;
//! let mut call = StepCall::default();
//! call.context.step_id = "health".into();
//! call.context.input = serde_json::json!({"url": "http://127.0.0.1:8080/health"});
//! call.grants.network = NetworkPolicy::parse(&["http://127.0.0.1:8080"])?;
//! let outputs = plugin.run(&call).await?;
//! println!("status {}", outputs["status"]);
//! # Ok(()) }
//! ```

//! Running a whole pipeline is the same flow the `gantry run` command uses:
//! load (validates everything) → plan → a [`run::Session`] (the run lock and
//! the run's record in a [`run::store::RunStore`]) → run, with events streamed
//! as they happen.
//!
//! ```no_run
//! use gantry_host::{build::BuildOptions, pipeline, plan, run, sandbox::Runtime};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = pipeline::load("pipelines/health.yaml".as_ref())?;
//! let plan = plan::plan(&loaded, "production", "default", &BuildOptions::default())?;
//! // The file store under ./.gantry; a postgres:// URL shares runs and locks between runners.
//! let store = run::store::open(None, ".".as_ref()).await?;
//! let session = run::Session::start(store, &plan).await?;
//! let (events, mut stream) = tokio::sync::mpsc::unbounded_channel();
//! tokio::spawn(async move {
//!     while let Some(event) = stream.recv().await {
//!         println!("{event:?}");
//!     }
//! });
//! let options = run::RunOptions { jobs: 4, ..Default::default() };
//! let result = run::run(&Runtime::builder().build()?, &plan, &session, &options, Some(events)).await?;
//! session.close().await?;
//! std::process::exit(result.exit_code().into());
//! # }
//! ```

/// Serialises a type as the text it is written as: `TryFrom<String>` through its `parse`,
/// `Into<String>` through `Display` (for `#[serde(try_from = "String", into = "String")]`).
macro_rules! serde_as_text {
    ($type:ty, $error:ty) => {
        impl TryFrom<String> for $type {
            type Error = $error;
            fn try_from(text: String) -> Result<Self, $error> {
                Self::parse(&text)
            }
        }

        impl From<$type> for String {
            fn from(value: $type) -> String {
                value.to_string()
            }
        }
    };
}

pub mod analysis;
pub mod build;
pub mod capability;
pub mod editor;
pub mod inputs;
#[cfg(feature = "cli")]
pub mod cli;
pub mod lock;
pub mod pipeline;
pub mod plan;
pub mod registry;
pub mod units;

#[cfg(test)]
mod layers;
pub mod report;
pub mod review;
pub mod rollout;
pub mod run;
pub mod sandbox;
