//! A run as OpenTelemetry spans, sent over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: a span per session of the run (`run`,
//! `resume`, `rollback`), per step attempt, per step rolled back, and per host call the journal
//! records (HTTP requests, Redis commands, SQL statements, TLS handshakes, DNS lookups: each
//! capability records its own); the step's log lines are events of its attempt's span.
//!
//! The spans are built from the journal after the session ends, as the JUnit report is: their
//! times are the journal's, ids derive from the run id (a resumed run's spans join its trace), and
//! nothing but what the journal already holds, redacted, reaches an attribute. An incoming W3C
//! `TRACEPARENT` (as CI systems set it) becomes the parent of the run's spans. Sending is one
//! request bounded by a timeout: a dead or slow collector never fails nor holds up a run for longer.

use crate::run::journal::Record;
use crate::run::Event;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use sha2::Digest;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long sending the spans may take when `OTEL_EXPORTER_OTLP_TIMEOUT` does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Where spans go, from the standard OpenTelemetry environment variables.
#[derive(Debug, Clone)]
pub struct Exporter {
    /// The traces URL (`…/v1/traces`).
    pub url: String,
    /// The longest the export may take.
    pub timeout: Duration,
    /// The trace and span this run's spans continue (`TRACEPARENT`).
    pub parent: Option<Parent>,
}

/// A W3C trace context's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span the run's spans are children of.
    pub span_id: [u8; 8],
}

impl Parent {
    /// Parses `00-<trace id>-<parent id>-<flags>`; `None` for anything else (as the spec asks: an
    /// invalid header starts a new trace).
    pub fn parse(header: &str) -> Option<Self> {
        let parts: Vec<&str> = header.trim().split('-').collect();
        let [version, trace, span, flags] = parts[..] else { return None };
        if version.len() != 2 || version == "ff" || flags.len() != 2 {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex(span)?.try_into().ok()?;
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(Parent { trace_id, span_id })
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

impl Exporter {
    /// The exporter the environment asks for, or `None` when tracing is off.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
        {
            return None;
        }
        let url = match (var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(url), _) => url,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return None,
        };
        let timeout = var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let parent = var("TRACEPARENT").and_then(|h| Parent::parse(&h));
        Some(Exporter { url, timeout, parent })
    }

    /// Sends the spans of `session` of the run `records` journaled; says why when it could not.
    pub async fn export(&self, records: &[Record], session: u32) -> Result<usize, String> {
        let request = spans(records, session, self.parent);
        let count = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        let body = prost::Message::encode_to_vec(&request);
        let client = reqwest::Client::new();
        let sent = client.post(&self.url).header("content-type", "application/x-protobuf").body(body).send();
        let answer = tokio::time::timeout(self.timeout, sent)
            .await
            .map_err(|_| format!("{} did not answer in {}", self.url, crate::units::duration(self.timeout)))?
            .map_err(|e| format!("{}: {e}", self.url))?;
        match answer.status() {
            s if s.is_success() => Ok(count),
            s => Err(format!("{} answered {s}", self.url)),
        }
    }
}

/// An id of `bytes` length derived from the run and what the span is.
fn id<const N: usize>(parts: &[&str]) -> [u8; N] {
    let digest = sha2::Sha256::digest(parts.join("\u{1f}").as_bytes());
    let mut out = [0u8; N];
    out.copy_from_slice(&digest[..N]);
    out
}

fn nanos(ts_ms: f64) -> u64 {
    (ts_ms.max(0.0) * 1e6) as u64
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }) }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }) }
}

fn failed(message: impl Into<String>) -> Option<Status> {
    Some(Status { message: message.into(), code: status::StatusCode::Error as i32 })
}

/// A span still being assembled.
struct Open {
    span: Span,
}

impl Open {
    fn new(trace: [u8; 16], id: [u8; 8], parent: Option<[u8; 8]>, name: String, kind: span::SpanKind, start: f64) -> Self {
        Open {
            span: Span {
                trace_id: trace.to_vec(),
                span_id: id.to_vec(),
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name,
                kind: kind as i32,
                start_time_unix_nano: nanos(start),
                end_time_unix_nano: nanos(start),
                ..Default::default()
            },
        }
    }

    fn end(mut self, ts: f64) -> Span {
        self.span.end_time_unix_nano = nanos(ts).max(self.span.start_time_unix_nano);
        self.span
    }
}

/// The spans of `session` of a run (every session when 0), as one OTLP export request.
pub fn spans(records: &[Record], session: u32, parent: Option<Parent>) -> ExportTraceServiceRequest {
    let folded = crate::run::fold::fold(records);
    let identity = &folded.shown.identity;
    let run_id = identity.run_id.as_str();
    let trace = parent.map_or_else(|| id::<16>(&[run_id]), |p| p.trace_id);
    let plan = folded.start.as_ref().map(|(_, plan)| plan);
    let digest = |step: &str| -> Option<String> {
        let steps = plan?.get("steps")?.as_array()?;
        let found = steps.iter().find(|s| s["id"] == step)?;
        found["sha256"].as_str().map(str::to_string)
    };
    let mine: Vec<&Record> = records.iter().filter(|r| session == 0 || r.session == session).collect();
    let (Some(first), Some(last)) = (mine.first(), mine.last()) else { return ExportTraceServiceRequest::default() };
    let command = mine
        .iter()
        .find_map(|r| match &r.event {
            Event::Opened { command, .. } => Some(command.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "run".into());
    let session_text = first.session.to_string();
    let root_id = id::<8>(&[run_id, "session", &session_text]);
    let status = folded.status();
    let mut root = Open::new(
        trace,
        root_id,
        parent.map(|p| p.span_id),
        format!("gantry {command} {}", identity.pipeline),
        span::SpanKind::Internal,
        first.ts_ms,
    );
    let result = match status.as_str() {
        "succeeded" => "success",
        "interrupted" => "cancellation",
        "failed" | "rolled-back" | "rollback-failed" | "needs-a-person" | "preflight-failed" => "failure",
        _ => "",
    };
    root.span.attributes = vec![
        text("cicd.pipeline.name", identity.pipeline.clone()),
        text("cicd.pipeline.run.id", run_id),
        text("gantry.environment", identity.environment.clone()),
        text("gantry.entity", identity.entity.clone()),
        text("gantry.command", command.clone()),
        text("gantry.status", status.clone()),
    ];
    if !result.is_empty() {
        root.span.attributes.push(text("cicd.pipeline.result", result));
    }
    if result == "failure" {
        root.span.status = failed(status.clone());
    }
    let mut done: Vec<Span> = Vec::new();
    let mut attempts: BTreeMap<String, (Open, u32)> = BTreeMap::new();
    let mut rolling_since: Option<f64> = None;
    for r in &mine {
        let ts = r.ts_ms;
        match &r.event {
            Event::StepStarted { step, attempt, .. } => {
                let span_id = id::<8>(&[run_id, "step", step, &attempt.to_string(), &session_text]);
                let mut open = Open::new(trace, span_id, Some(root_id), format!("step {step}"), span::SpanKind::Internal, ts);
                open.span.attributes = vec![
                    text("cicd.pipeline.task.name", step.clone()),
                    text("cicd.pipeline.task.run.id", format!("{run_id}/{step}/{attempt}")),
                    int("gantry.attempt", i64::from(*attempt)),
                ];
                if let Some(sha) = digest(step) {
                    open.span.attributes.push(text("gantry.plugin.sha256", sha));
                }
                attempts.insert(step.clone(), (open, *attempt));
            }
            Event::StepFinished { step, .. } => {
                if let Some((mut open, _)) = attempts.remove(step) {
                    open.span.attributes.push(text("cicd.pipeline.task.run.result", "success"));
                    done.push(open.end(ts));
                }
            }
            Event::StepRetrying { step, error, .. } | Event::StepFailed { step, error, .. } => {
                if let Some((mut open, _)) = attempts.remove(step) {
                    open.span.attributes.push(text("cicd.pipeline.task.run.result", "failure"));
                    open.span.status = failed(error.clone());
                    done.push(open.end(ts));
                }
            }
            Event::Paused { step, reason } => {
                if let Some((mut open, _)) = attempts.remove(step) {
                    open.span.status = failed(reason.clone());
                    done.push(open.end(ts));
                }
            }
            Event::Log { step, level, message } => {
                if let Some((open, _)) = attempts.get_mut(step) {
                    open.span.events.push(span::Event {
                        time_unix_nano: nanos(ts),
                        name: "log".into(),
                        attributes: vec![text("log.severity", format!("{level:?}")), text("log.message", message.clone())],
                        dropped_attributes_count: 0,
                    });
                }
            }
            Event::Request(request) => {
                let (parent_id, step) = match attempts.get(&request.step) {
                    Some((open, _)) => (open.span.span_id.clone(), request.step.clone()),
                    None => (root_id.to_vec(), request.step.clone()),
                };
                let start = ts - request.duration_ms;
                let span_id = id::<8>(&[run_id, "request", &r.seq.to_string()]);
                let name = format!("{} {}", request.method, request.origin);
                let mut open = Open::new(trace, span_id, None, name, span::SpanKind::Client, start);
                open.span.parent_span_id = parent_id;
                open.span.attributes = vec![
                    text("cicd.pipeline.task.name", step),
                    text("gantry.request.method", request.method.clone()),
                    text("server.address", request.origin.clone()),
                    text("url.path", request.path.clone()),
                    int("gantry.response.bytes", request.bytes as i64),
                ];
                if let Some(code) = request.status {
                    open.span.attributes.push(int("http.response.status_code", i64::from(code)));
                }
                if let Some(action) = &request.action {
                    open.span.attributes.push(text("gantry.request.action", action.clone()));
                }
                if !request.allowed {
                    open.span.attributes.push(text("gantry.request.denied", request.reason.clone().unwrap_or_default()));
                    open.span.status = failed(request.reason.clone().unwrap_or_else(|| "denied".into()));
                } else if let Some(reason) = &request.reason {
                    open.span.status = failed(reason.clone());
                }
                done.push(open.end(ts));
            }
            Event::Phase { phase: crate::run::fold::RunPhase::RollingBack, .. } => rolling_since = Some(ts),
            Event::RolledBack { step, attempt } | Event::RollbackFailed { step, attempt, .. } => {
                // Steps are undone one after another: each from the end of the one before.
                let start = rolling_since.unwrap_or(ts);
                let span_id = id::<8>(&[run_id, "rollback", step, &session_text]);
                let mut open = Open::new(trace, span_id, Some(root_id), format!("rollback {step}"), span::SpanKind::Internal, start);
                open.span.attributes =
                    vec![text("cicd.pipeline.task.name", step.clone()), int("gantry.attempt", i64::from(*attempt))];
                if let Event::RollbackFailed { error, .. } = &r.event {
                    open.span.status = failed(error.clone());
                }
                done.push(open.end(ts));
                rolling_since = Some(ts);
            }
            _ => {}
        }
    }
    // An attempt the session left running (killed, paused for approval) ends where the session did.
    done.extend(attempts.into_values().map(|(open, _)| open.end(last.ts_ms)));
    done.insert(0, root.end(last.ts_ms));
    let resource = Resource {
        attributes: vec![
            text("service.name", "gantry"),
            text("service.version", env!("CARGO_PKG_VERSION")),
            text("cicd.pipeline.name", identity.pipeline.clone()),
        ],
        dropped_attributes_count: 0,
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "gantry".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }),
                spans: done,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_as_the_w3c_spec_says() {
        let p = Parent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.span_id[7], 0xb7);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(Parent::parse(bad), None, "{bad}");
        }
    }
}
