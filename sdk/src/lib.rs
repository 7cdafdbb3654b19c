//! Write gantry deployment-step plugins in Rust.
//!
//! A plugin is a type that implements [`Step`], exported with
//! [`export_step!`]. The host calls [`Step::run`] with a [`Context`] that
//! carries the step's typed input, and [`Step::rollback`] when a later step of
//! the pipeline fails. Everything that leaves the sandbox goes through the
//! host: HTTP via [`Context::http`], logs via [`info!`] and friends, time via
//! [`now_ms`] and [`sleep_ms`]. Secrets are *used* by name
//! ([`RequestBuilder::bearer_secret`]) and never read: the host fills them in
//! only for origins the pipeline bound them to.
//!
//! ```no_run
//! use gantry_sdk::{Context, Describe, Error, Outputs, Step};
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Input {
//!     /// Page to fetch.
//!     url: String,
//! }
//!
//! struct Ping;
//!
//! impl Step for Ping {
//!     fn describe() -> Describe {
//!         Describe::new("ping", env!("CARGO_PKG_VERSION"))
//!             .description("Fetches a page and reports its status")
//!             .input::<Input>()
//!             .capability("network")
//!     }
//!
//!     fn run(ctx: &Context) -> Result<Outputs, Error> {
//!         let input: Input = ctx.input()?;
//!         let response = ctx.http().get(&input.url).send()?;
//!         Ok(Outputs::new().with("status", response.status()))
//!     }
//! }
//!
//! gantry_sdk::export_step!(Ping);
//! ```
//!
//! The host builds this crate for `wasm32-wasip1`; on other targets it
//! compiles (for docs and unit tests) but calls into the host panic.

pub mod analysis;
pub mod aws;
mod context;
mod describe;
pub mod dns;
mod error;
mod http;
mod log;
mod outputs;
mod preflight;
pub mod redis;
pub mod sql;
pub mod tls;

/// The plugin author's guide (the crate's README): writing, testing and publishing a plugin.
/// Included here so its Rust examples compile and run as doctests.
#[doc = include_str!("../README.md")]
pub mod guide {}

pub use context::Context;
pub use describe::Describe;
pub use error::{Error, Failure};
pub use http::{percent_encode, Client, HttpError, RequestBuilder, Response, Sigv4};
pub use log::{log, Level};
pub use outputs::Outputs;
pub use preflight::Check;

/// A placeholder the host replaces with a secret's value at send time, in a request's URL or body:
/// for webhooks whose URL is the secret, or APIs that take a key in the body. The host fills it in
/// only towards an origin the secret is bound to; the plugin never sees the value.
pub fn secret(name: &str) -> String {
    format!("{{{{secret:{name}}}}}")
}
pub use schemars;
pub use serde_json;

/// Convenience alias for a step result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The checkpoint key a rollback barrier is recorded under ([`Context::barrier`]): the host stops
/// a rollback at a step that recorded it.
pub const BARRIER_CHECKPOINT: &str = "gantry.barrier";

/// The version of the WIT contract (`gantry:step@VERSION`) this SDK builds against: read from
/// the package line of `wit/step.wit`, where it is written once.
pub const CONTRACT_VERSION: &str = {
    const WIT: &[u8] = include_bytes!("../wit/step.wit");
    const START: usize = at(WIT, b"package gantry:step@", 0) + b"package gantry:step@".len();
    let (head, _) = WIT.split_at(at(WIT, b";", START));
    match std::str::from_utf8(head.split_at(START).1) {
        Ok(version) => version,
        Err(_) => panic!("the WIT package version is not UTF-8"),
    }
};

/// Where `needle` first occurs in `hay` from `from`, at compile time.
const fn at(hay: &[u8], needle: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let mut j = 0;
        while j < needle.len() && hay[i + j] == needle[j] {
            j += 1;
        }
        if j == needle.len() {
            return i;
        }
        i += 1;
    }
    panic!("not found in the WIT file")
}

/// A deployment step: what a plugin author implements.
pub trait Step {
    /// Describes the plugin: name, version, input schema, capabilities.
    fn describe() -> Describe;

    /// Does the step's work and returns its outputs.
    fn run(ctx: &Context) -> Result<Outputs>;

    /// Undoes what [`Step::run`] did; called when a later step fails.
    ///
    /// The default does nothing, for steps that change nothing.
    fn rollback(ctx: &Context) -> Result<Outputs> {
        let _ = ctx;
        Ok(Outputs::new())
    }

    /// Reads what [`Step::run`] will depend on, before the run changes anything, and says what
    /// it found: the host calls it for every step of a run first, with the step's own grants, and
    /// refuses every request and statement that could change something (AWS `Describe…`,
    /// `Get…` and `List…` actions read). A failed check, or an error, stops the run before its
    /// first change. The input is the step's `with:`; a step whose input needs an earlier step's
    /// outputs is not asked.
    ///
    /// The default checks nothing.
    fn preflight(ctx: &Context) -> Result<Vec<Check>> {
        let _ = ctx;
        Ok(Vec::new())
    }
}

/// Milliseconds since the Unix epoch, from the host's clock.
pub fn now_ms() -> u64 {
    bindings::gantry::step::host::now()
}

/// Waits `ms` milliseconds; the wait counts against the step's timeout.
pub fn sleep_ms(ms: u64) {
    bindings::gantry::step::host::sleep(ms)
}

/// Calls `call` until it succeeds, fails for good, or has been tried `attempts` times, waiting
/// `first_wait_ms` after the first retryable error and twice as long after each next one. For
/// idempotent calls to a flaky API; each retry is logged as a warning.
pub fn retrying<T>(attempts: u32, first_wait_ms: u64, mut call: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let (mut attempt, mut wait_ms) = (1, first_wait_ms);
    loop {
        match call() {
            Err(e) if e.is_retryable() && attempt < attempts => {
                crate::warn!("{e}; trying again in {wait_ms} ms (attempt {attempt} of {attempts})");
                sleep_ms(wait_ms);
                wait_ms *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Exports a [`Step`] implementation as the plugin's entry points.
///
/// ```no_run
/// struct Noop;
/// impl gantry_sdk::Step for Noop {
///     fn describe() -> gantry_sdk::Describe { gantry_sdk::Describe::new("noop", "0.1.0") }
///     fn run(_: &gantry_sdk::Context) -> gantry_sdk::Result<gantry_sdk::Outputs> {
///         Ok(gantry_sdk::Outputs::new())
///     }
/// }
/// gantry_sdk::export_step!(Noop);
/// ```
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        // Exports exist only in the wasm build: native builds of a plugin
        // crate (unit tests, docs) cannot link symbols named like
        // `gantry:step/plugin@0.1.0#run`.
        #[cfg(target_arch = "wasm32")]
        type __GantryStepExport = $crate::__private::Adapter<$step>;
        #[cfg(target_arch = "wasm32")]
        $crate::__private::bindings::__export_step!(
            __GantryStepExport with_types_in $crate::__private::bindings
        );
    };
}

// Lets the generated bindings name this crate by its public path.
extern crate self as gantry_sdk;

use __private::bindings;

#[doc(hidden)]
pub mod __private {
    //! Glue between the generated bindings and [`crate::Step`]; not a stable API.

    use crate::{Context, Step};
    use std::marker::PhantomData;

    #[allow(missing_docs, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "wit",
            world: "step",
            pub_export_macro: true,
            export_macro_name: "__export_step",
            default_bindings_module: "::gantry_sdk::__private::bindings",
            runtime_path: "::gantry_sdk::__private::wit_bindgen::rt",
        });
    }

    pub use wit_bindgen;

    use bindings::exports::gantry::step::plugin::Guest;
    use bindings::gantry::step::types as wit;

    /// Adapts a [`Step`] to the generated export trait.
    pub struct Adapter<T>(PhantomData<T>);

    impl<T: Step> Guest for Adapter<T> {
        fn describe() -> wit::PluginInfo {
            T::describe().into_wit()
        }

        fn run(ctx: wit::Context) -> Result<wit::Outcome, wit::StepError> {
            let ctx = Context::from_wit(ctx);
            T::run(&ctx).map(|outputs| outputs.into_wit()).map_err(|e| e.into_wit())
        }

        fn rollback(ctx: wit::Context) -> Result<wit::Outcome, wit::StepError> {
            let ctx = Context::from_wit(ctx);
            T::rollback(&ctx).map(|outputs| outputs.into_wit()).map_err(|e| e.into_wit())
        }
    }

    impl<T: Step> bindings::exports::gantry::step::outputs::Guest for Adapter<T> {
        fn outputs() -> Option<Vec<bindings::exports::gantry::step::outputs::Output>> {
            let declared = T::describe().declared_outputs()?.to_vec();
            Some(
                declared
                    .into_iter()
                    .map(|(name, description)| bindings::exports::gantry::step::outputs::Output { name, description })
                    .collect(),
            )
        }
    }

    impl<T: Step> bindings::exports::gantry::step::preflight::Guest for Adapter<T> {
        fn preflight(
            ctx: wit::Context,
        ) -> Result<Vec<bindings::exports::gantry::step::preflight::Check>, wit::StepError> {
            let ctx = Context::from_wit(ctx);
            T::preflight(&ctx).map(|checks| checks.into_iter().map(|c| c.into_wit()).collect()).map_err(|e| e.into_wit())
        }
    }
}
