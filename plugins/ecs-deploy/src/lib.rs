//! `ecs-deploy`: one colour of an ECS blue-green release. With an `image`, it
//! registers a task definition revision whose `container` runs that image and
//! points the service at it; it sets the service's desired count (scaling the
//! old colour down is the same step with `desired_count: 0` and no image); it
//! waits until the service runs what it should. Before the first change it
//! checkpoints the service's task definition and desired count, so `rollback`
//! — after a later failure, or from the journal after `kill -9` — puts both
//! back exactly. With `analysis:` metrics it then watches the service for a bake
//! time: a metric that fails restores the service and fails the step. Requests
//! are signed by the host; the plugin never holds keys.

pub mod ecs;

use ecs::{Ecs, ServiceState};
use gantry_sdk::analysis::{watch_for, Metric, Phase, Watch};
use gantry_sdk::{Check, Context, Describe, Error, Outputs, Step};
use schemars::JsonSchema;
use serde::Deserialize;

/// The step's `with:` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// ECS endpoint, e.g. `https://ecs.us-east-1.amazonaws.com/`.
    pub endpoint: String,
    /// AWS region of the signature.
    #[serde(default = "default_region")]
    pub region: String,
    /// Cluster name or ARN.
    pub cluster: String,
    /// The service of this colour, e.g. `web-green`.
    pub service: String,
    /// New image for `container`; the service's task definition stays when left out.
    #[serde(default)]
    pub image: Option<String>,
    /// The container whose image changes.
    #[serde(default = "default_container")]
    pub container: String,
    /// Tasks the service should run.
    pub desired_count: u64,
    /// Longest wait for the service to run what it should, in milliseconds.
    #[serde(default = "default_stable_timeout")]
    pub stable_timeout_ms: u64,
    /// Wait between checks, in milliseconds.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// Secret with the access key id.
    #[serde(default = "gantry_sdk::aws::access_key_secret")]
    pub access_key_secret: String,
    /// Secret with the secret access key.
    #[serde(default = "gantry_sdk::aws::secret_key_secret")]
    pub secret_key_secret: String,
    /// Secret with a session token, for temporary credentials.
    #[serde(default)]
    pub session_token_secret: Option<String>,
    /// Metrics of the SDK's canary analysis, read once the service is stable (also when it already
    /// was): a metric that fails restores the service as it was before this run and fails the step;
    /// an inconclusive one pauses the run with the service as deployed.
    #[serde(default)]
    pub analysis: Vec<Metric>,
    /// How long the analysis watches the stable service (the bake time), in milliseconds; the
    /// metrics are read at least once.
    #[serde(default)]
    pub analysis_ms: u64,
    /// How often the metrics are read during the bake time, in milliseconds.
    #[serde(default = "default_analysis_interval")]
    pub analysis_interval_ms: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_container() -> String {
    "app".into()
}
fn default_stable_timeout() -> u64 {
    600_000
}
fn default_poll() -> u64 {
    2_000
}
fn default_analysis_interval() -> u64 {
    10_000
}

/// The checkpoint holding the service as it was before the step changed it.
const BEFORE: &str = "service_before";

fn ecs<'a>(ctx: &'a Context, input: &Input) -> Ecs<'a> {
    let sigv4 = gantry_sdk::Sigv4::aws(
        "ecs",
        &input.region,
        &input.access_key_secret,
        &input.secret_key_secret,
        input.session_token_secret.as_deref(),
    );
    Ecs { ctx, endpoint: input.endpoint.clone(), sigv4 }
}

/// Polls until the service has `want` as its task definition and runs its desired count.
fn wait_stable(api: &Ecs, input: &Input, want: &ServiceState) -> Result<u64, Error> {
    let mut waited = 0;
    loop {
        let (now, running) = api.service(&input.cluster, &input.service)?;
        if now == *want && running == want.desired_count {
            return Ok(running);
        }
        if waited >= input.stable_timeout_ms {
            return Err(Error::failed(format!(
                "service {} not stable after {} ms: {} of {} running, task definition {}",
                input.service, waited, running, want.desired_count, now.task_definition
            )));
        }
        gantry_sdk::sleep_ms(input.poll_ms);
        waited += input.poll_ms.max(1);
    }
}

/// Watches the stable service for the bake time. A failed metric restores the service from the
/// checkpoint, if this run changed it, and fails the step; an inconclusive one pauses the run.
fn bake(ctx: &Context, api: &Ecs, input: &Input) -> Result<(), Error> {
    if input.analysis.is_empty() {
        return Ok(());
    }
    let mut watches: Vec<Watch> = input.analysis.iter().cloned().map(Watch::new).collect();
    let Some((phase, why)) = watch_for(ctx, &mut watches, None, input.analysis_ms, input.analysis_interval_ms) else {
        gantry_sdk::info!("{}: analysis passed over {} ms", input.service, input.analysis_ms);
        return Ok(());
    };
    if phase == Phase::Inconclusive {
        return Err(Error::inconclusive(format!(
            "analysis inconclusive: {why}; {} stays as deployed: `gantry resume` reads the metrics again, `gantry rollback` restores it",
            input.service
        )));
    }
    gantry_sdk::warn!("analysis failed: {why}; restoring {} if this run changed it", input.service);
    match restore(ctx, api, input)? {
        Some(before) => Err(Error::failed(format!(
            "analysis failed: {why}; restored {} to {} × {}",
            input.service, before.task_definition, before.desired_count
        ))),
        None => Err(Error::failed(format!("analysis failed: {why}; this run changed nothing in {}", input.service))),
    }
}

/// Puts the service back as the checkpoint recorded it before the first change and waits until it
/// is stable; `None` when nothing was checkpointed (nothing was changed).
fn restore(ctx: &Context, api: &Ecs, input: &Input) -> Result<Option<ServiceState>, Error> {
    let Some(recorded) = ctx.checkpointed(BEFORE) else {
        return Ok(None);
    };
    let before = parse_state(&recorded)?;
    api.update(&input.cluster, &input.service, &before)?;
    wait_stable(api, input, &before)?;
    Ok(Some(before))
}

fn parse_state(text: &str) -> Result<ServiceState, Error> {
    serde_json::from_str(text).map_err(|e| Error::failed(format!("recorded service state: {e}")))
}

/// The step.
pub struct EcsDeploy;

impl Step for EcsDeploy {
    fn describe() -> Describe {
        Describe::new("ecs-deploy", env!("CARGO_PKG_VERSION"))
            .description("ECS service of one colour: new task definition revision, desired count, wait stable; rollback restores both")
            .input::<Input>()
            .capability("network")
            .capability("secrets:aws-sigv4")
            .output("service", "the service it deployed")
            .output("task_definition", "the task definition the service runs after the step")
            .output("previous_task_definition", "the one it ran before")
            .output("desired_count", "the desired count after the step")
            .output("previous_desired_count", "the desired count before it")
            .output("changed", "whether the step changed the service")
            .output("restored", "whether its rollback restored the service")
    }

    /// Describes the service and its task definition (the container to change must be in it)
    /// and reads every analysis metric once, before anything changes.
    fn preflight(ctx: &Context) -> Result<Vec<Check>, Error> {
        let input: Input = ctx.input()?;
        let api = ecs(ctx, &input);
        let service = api.service(&input.cluster, &input.service);
        let mut checks = vec![Check::of(
            "service",
            service.as_ref().map(|(s, _)| format!("{} runs {} × {}", input.service, s.task_definition, s.desired_count)).map_err(Clone::clone),
        )];
        if let Ok((state, _)) = &service {
            let container = api.task_definition(&state.task_definition).and_then(|definition| {
                ecs::image_of(&definition, &input.container)
                    .map(|image| format!("container `{}` runs {image}", input.container))
                    .ok_or_else(|| Error::failed(format!("{} has no container `{}`", state.task_definition, input.container)))
            });
            checks.push(Check::of("task definition", container));
        }
        checks.extend(input.analysis.iter().map(|metric| metric.preflight(ctx)));
        Ok(checks)
    }

    fn run(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        let api = ecs(ctx, &input);
        let (before, _) = api.service(&input.cluster, &input.service)?;
        let current = api.task_definition(&before.task_definition)?;
        let task_definition = match &input.image {
            Some(image) if ecs::image_of(&current, &input.container).as_deref() != Some(image) => None,
            _ => Some(before.task_definition.clone()),
        };
        let outputs = Outputs::new()
            .with("service", &input.service)
            .with("previous_task_definition", &before.task_definition)
            .with("previous_desired_count", before.desired_count);
        if task_definition.is_some() && before.desired_count == input.desired_count {
            gantry_sdk::info!("{} already runs what it should; nothing to change", input.service);
            // A resumed run lands here after an inconclusive analysis: the service is still checked.
            if !ctx.dry_run() {
                bake(ctx, &api, &input)?;
            }
            return Ok(outputs.with("task_definition", &before.task_definition).with("changed", false));
        }
        if ctx.dry_run() {
            gantry_sdk::info!("dry run: would set {} to {:?} × {}", input.service, input.image, input.desired_count);
            return Ok(outputs.with("task_definition", &before.task_definition).with("changed", false));
        }
        // The service as it was, journaled before the first change; a retry or resume keeps the first value.
        ctx.checkpoint(BEFORE, &serde_json::to_string(&before).unwrap_or_default())?;
        let task_definition = match task_definition {
            Some(arn) => arn,
            None => {
                let image = input.image.as_deref().unwrap_or_default();
                let arn = api.register_with_image(&current, &input.container, image)?;
                gantry_sdk::info!("registered {arn} ({} runs {image})", input.container);
                arn
            }
        };
        let want = ServiceState { task_definition, desired_count: input.desired_count };
        api.update(&input.cluster, &input.service, &want)?;
        gantry_sdk::info!(
            "{}: task definition {}, desired count {}",
            input.service,
            want.task_definition,
            want.desired_count
        );
        let running = wait_stable(&api, &input, &want)?;
        gantry_sdk::info!("{} stable: {running} running", input.service);
        bake(ctx, &api, &input)?;
        Ok(outputs
            .with("task_definition", &want.task_definition)
            .with("desired_count", want.desired_count)
            .with("changed", true))
    }

    fn rollback(ctx: &Context) -> Result<Outputs, Error> {
        let input: Input = ctx.input()?;
        // The checkpoint exists whenever the service was changed, even when `run` never returned.
        let Some(before) = restore(ctx, &ecs(ctx, &input), &input)? else {
            return Ok(Outputs::new().with("restored", false));
        };
        gantry_sdk::info!(
            "restored {}: task definition {}, desired count {}",
            input.service,
            before.task_definition,
            before.desired_count
        );
        Ok(Outputs::new().with("restored", true).with("task_definition", &before.task_definition))
    }
}

gantry_sdk::export_step!(EcsDeploy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_state_round_trips_and_a_missing_checkpoint_restores_nothing() {
        let state =
            ServiceState { task_definition: "arn:aws:ecs:us-east-1:1:task-definition/web:3".into(), desired_count: 2 };
        assert_eq!(parse_state(&serde_json::to_string(&state).unwrap()).unwrap(), state);
        let input =
            serde_json::json!({"endpoint": "http://127.0.0.1:1/", "cluster": "c", "service": "s", "desired_count": 0});
        let ctx = Context::for_test("deploy", input);
        assert_eq!(EcsDeploy::rollback(&ctx).unwrap().get("restored"), Some("false"));
    }

    #[test]
    fn the_image_of_a_container_is_read_from_the_definition() {
        let def = serde_json::json!({"containerDefinitions": [{"name": "app", "image": "web:1"}, {"name": "log", "image": "fluent"}]});
        assert_eq!(ecs::image_of(&def, "app").as_deref(), Some("web:1"));
        assert_eq!(ecs::image_of(&def, "db"), None);
    }
}
