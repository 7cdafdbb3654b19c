//! The host imports a plugin calls, driven without a plugin: the WIT boundary as the host sees it,
//! for fuzzing the handlers with arbitrary records and for tests that need no component.

use super::bindings::gantry::step::host::Host as _;
use super::bindings::gantry::step::types::{HttpError, Level, Request, Response};
use super::{CallError, Runtime, State, StepCall};

/// One call's host side: the same store data and handlers a plugin's imports reach.
pub struct Imports {
    state: crate::capability::unit::CallState,
}

impl Imports {
    /// The host side of `call` as [`Plugin::run`](super::Plugin::run) would set it up.
    pub fn new(runtime: &Runtime, call: &StepCall) -> Result<Self, CallError> {
        let (state, _stdout, _stderr) = State::new(runtime, call)?;
        Ok(Self { state })
    }

    /// `host.log`.
    pub async fn log(&mut self, level: Level, message: String) {
        self.state.slot::<State>().log(level, message).await
    }

    /// `host.http`.
    pub async fn http(&mut self, req: Request) -> Result<Response, HttpError> {
        self.state.slot::<State>().http(req).await
    }

    /// `host.checkpoint`.
    pub async fn checkpoint(&mut self, key: String, value: String) -> Result<(), String> {
        self.state.slot::<State>().checkpoint(key, value).await
    }
}
