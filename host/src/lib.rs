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

pub mod build;
pub mod capability;
pub mod cli;
pub mod pipeline;
pub mod plan;
pub mod run;
pub mod sandbox;
