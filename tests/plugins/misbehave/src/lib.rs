//! A step that misbehaves on request, so tests can prove the host contains it.

use gantry_sdk::{Context, Describe, Error, Outputs, Step};
use std::collections::BTreeMap;

/// What to do, chosen by `with: { action: ... }`.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Input {
    #[serde(default = "default_action")]
    action: String,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    message: String,
    /// Where `record` reports run and rollback calls.
    #[serde(default)]
    url: Option<String>,
    /// `flaky` succeeds from this attempt on.
    #[serde(default)]
    succeed_on: u32,
    /// Makes `rollback` fail.
    #[serde(default)]
    rollback_fails: bool,
}

/// Tells the recording server what happened, so tests can count calls and order.
fn record(ctx: &Context, input: &Input, what: &str) -> Result<(), Error> {
    if let Some(url) = &input.url {
        ctx.http().post(url).body(format!("{what} {}", ctx.step_id())).send()?;
    }
    Ok(())
}

fn default_action() -> String {
    "record".into()
}

struct Misbehave;

fn recurse(depth: u64) -> u64 {
    // black_box keeps the frames from being optimised into a loop.
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))) + 1
}

impl Step for Misbehave {
    fn describe() -> Describe {
        Describe::new("misbehave", env!("CARGO_PKG_VERSION")).input::<Input>()
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        match input.action.as_str() {
            "record" => {
                if input.ms > 0 {
                    gantry_sdk::sleep_ms(input.ms);
                }
                record(ctx, &input, "run")?;
                Ok(Outputs::new().with("step", ctx.step_id()).with("attempt", ctx.attempt()))
            }
            "flaky" if ctx.attempt() < input.succeed_on => {
                record(ctx, &input, "attempt")?;
                Err(Error::retryable(format!("flaky: attempt {} of {}", ctx.attempt(), input.succeed_on)))
            }
            "flaky" => {
                record(ctx, &input, "attempt")?;
                Ok(Outputs::new().with("attempt", ctx.attempt()))
            }
            "ok" => {
                let mut out = Outputs::new().with("attempt", ctx.attempt()).with("entity", ctx.entity());
                for (k, v) in input.outputs {
                    out.set(k, v);
                }
                Ok(out)
            }
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => Ok(Outputs::new().with("depth", recurse(0))),
            "panic" => panic!("deliberate panic: {}", input.message),
            "sleep" => {
                gantry_sdk::sleep_ms(input.ms);
                Ok(Outputs::new().with("slept_ms", input.ms))
            }
            "print" => {
                println!("stdout: {}", input.message);
                eprintln!("stderr: {}", input.message);
                gantry_sdk::info!("log: {}", input.message);
                Ok(Outputs::new())
            }
            "fail" => {
                record(ctx, &input, "run")?;
                Err(Error::failed(input.message))
            }
            "retryable" => Err(Error::retryable(input.message)),
            other => Err(Error::failed(format!("unknown action {other:?}"))),
        }
    }

    fn rollback(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        record(ctx, &input, "rollback")?;
        if input.rollback_fails {
            return Err(Error::failed("rollback refused on purpose"));
        }
        Ok(Outputs::new())
    }
}

gantry_sdk::export_step!(Misbehave);
