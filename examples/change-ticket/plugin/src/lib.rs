//! `open-ticket`: opens a change ticket through the embedder's own `tickets` capability, so a
//! release has its ticket before it changes anything. The step's imports are the gantry SDK's and
//! the embedder's WIT package (`acme:tickets`); the host behind it holds the system's token.

use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;

#[allow(missing_docs)]
mod tickets {
    wit_bindgen::generate!({ path: "../wit", world: "ticket-user" });
}

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The ticket system, by the name the pipeline declares and grants it under.
    pub system: String,
    /// The ticket's title.
    pub title: String,
}

/// The step.
pub struct OpenTicket;

impl Step for OpenTicket {
    fn describe() -> Describe {
        Describe::new("open-ticket", env!("CARGO_PKG_VERSION"))
            .description("Opens a change ticket through the embedder's tickets capability")
            .input::<Input>()
            .capability("tickets")
            .output("ticket", "the ticket's id")
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let id = tickets::acme::tickets::api::open(&input.system, &input.title).map_err(Error::failed)?;
        gantry_sdk::info!("opened change ticket {id}");
        Ok(Outputs::new().with("ticket", id))
    }
}

gantry_sdk::export_step!(OpenTicket);
