//! The Extism side of the peer-host bench: a no-op and a JSON echo.

use extism_pdk::*;

/// Does nothing: the cost of a call itself.
#[plugin_fn]
pub fn noop() -> FnResult<()> {
    Ok(())
}

/// Parses the JSON input and returns it, as gantry's `misbehave` `ok` returns its `outputs`.
#[plugin_fn]
pub fn echo(Json(value): Json<serde_json::Value>) -> FnResult<Json<serde_json::Value>> {
    Ok(Json(value))
}
