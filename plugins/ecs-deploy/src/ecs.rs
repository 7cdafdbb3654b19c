//! The ECS JSON API calls a deploy needs, signed by the host with SigV4.

use gantry_sdk::{Context, Error, Sigv4};
use serde_json::{json, Value};

/// Where and as whom to call ECS.
pub struct Ecs<'a> {
    /// The step's context, for its HTTP client.
    pub ctx: &'a Context,
    /// Endpoint, e.g. `https://ecs.us-east-1.amazonaws.com/`.
    pub endpoint: String,
    /// How the host signs: service `ecs`, the region and the secrets holding the keys.
    pub sigv4: Sigv4,
}

/// A service as the deploy sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceState {
    /// Task definition ARN.
    pub task_definition: String,
    /// Desired count.
    pub desired_count: u64,
}

/// Attempts of one call, and the wait before the second (doubling after).
const ATTEMPTS: (u32, u64) = (4, 250);

impl Ecs<'_> {
    /// One call, retried on 5xx, throttling and transport errors (every call here is idempotent:
    /// reads, a revision registered again is only a new revision, updates set absolute values).
    pub fn call(&self, action: &str, body: &Value) -> Result<Value, Error> {
        let (attempts, wait_ms) = ATTEMPTS;
        gantry_sdk::retrying(attempts, wait_ms, || self.call_once(action, body))
    }

    fn call_once(&self, action: &str, body: &Value) -> Result<Value, Error> {
        let response = self
            .ctx
            .http()
            .post(&self.endpoint)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", &format!("AmazonEC2ContainerServiceV20141113.{action}"))
            .body(body.to_string())
            .aws_sigv4(self.sigv4.clone())
            .send()
            .map_err(|e| e.during(format_args!("ECS {action}")))?;
        let status = response.status();
        let answer: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        if response.is_success() && answer.is_object() {
            return Ok(answer);
        }
        let kind = answer["__type"].as_str().unwrap_or("error").rsplit('#').next().unwrap_or("error").to_string();
        let message = answer["message"].as_str().or(answer["Message"].as_str()).unwrap_or("").to_string();
        let text = format!("ECS {action} answered {status}: {kind}: {message}");
        if status >= 500 || status == 429 || kind.contains("Throttling") || response.is_success() {
            Err(Error::retryable(text))
        } else {
            Err(Error::failed(text))
        }
    }

    /// The service's task definition and desired count.
    pub fn service(&self, cluster: &str, service: &str) -> Result<(ServiceState, u64), Error> {
        let answer = self.call("DescribeServices", &json!({"cluster": cluster, "services": [service]}))?;
        let found = answer["services"].as_array().and_then(|s| s.first()).cloned().ok_or_else(|| {
            let why = answer["failures"][0]["reason"].as_str().unwrap_or("not found").to_string();
            Error::failed(format!("service {service} in cluster {cluster}: {why}"))
        })?;
        let state = ServiceState {
            task_definition: found["taskDefinition"].as_str().unwrap_or_default().to_string(),
            desired_count: found["desiredCount"].as_u64().unwrap_or_default(),
        };
        Ok((state, found["runningCount"].as_u64().unwrap_or_default()))
    }

    /// A task definition's family and container definitions.
    pub fn task_definition(&self, arn: &str) -> Result<Value, Error> {
        let answer = self.call("DescribeTaskDefinition", &json!({"taskDefinition": arn}))?;
        Ok(answer["taskDefinition"].clone())
    }

    /// Registers `definition` with `container`'s image replaced; the new revision's ARN.
    pub fn register_with_image(&self, definition: &Value, container: &str, image: &str) -> Result<String, Error> {
        let mut containers = definition["containerDefinitions"].as_array().cloned().unwrap_or_default();
        let target = containers
            .iter_mut()
            .find(|c| c["name"] == container)
            .ok_or_else(|| Error::failed(format!("the task definition has no container `{container}`")))?;
        target["image"] = image.into();
        let mut request = json!({"family": definition["family"], "containerDefinitions": containers});
        for key in ["taskRoleArn", "executionRoleArn", "networkMode", "requiresCompatibilities", "cpu", "memory"] {
            if !definition[key].is_null() {
                request[key] = definition[key].clone();
            }
        }
        let answer = self.call("RegisterTaskDefinition", &request)?;
        answer["taskDefinition"]["taskDefinitionArn"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::failed("RegisterTaskDefinition answered no taskDefinitionArn"))
    }

    /// Sets the service's task definition and desired count.
    pub fn update(&self, cluster: &str, service: &str, to: &ServiceState) -> Result<(), Error> {
        let body = json!({"cluster": cluster, "service": service, "taskDefinition": to.task_definition, "desiredCount": to.desired_count});
        self.call("UpdateService", &body).map(|_| ())
    }
}

/// The image of `container` in a task definition.
pub fn image_of(definition: &Value, container: &str) -> Option<String> {
    definition["containerDefinitions"].as_array()?.iter().find(|c| c["name"] == container)?["image"]
        .as_str()
        .map(str::to_string)
}
