//! The run report people look at: one self-contained HTML page (inline CSS
//! and SVG, one small inline script, no fetches) drawn from the journal — the
//! DAG with each step's state, a timeline of attempts, retries, approvals and
//! rollbacks, the canary's weights and gate samples, each analysis metric's
//! readings against its thresholds ([`readings`]), requests per step with
//! denials, and each step's grants.

mod readings;

use super::canary::{clock, logged as canary, Weight};
use super::{escape, Summary};
use crate::plan::Plan;
use crate::run::journal::Record;
use crate::run::Event;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Seconds between reloads of a page whose run has not finished (`gantry ui`).
pub const LIVE_RELOAD_SECONDS: u32 = 2;

/// One stretch of a step on the timeline.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    step: String,
    start: f64,
    end: Option<f64>,
    /// attempt, retry, succeeded, failed, rollback, waiting.
    kind: &'static str,
    label: String,
}

/// The page for one run's journal; `live` adds the reload for a run still going.
pub fn page(records: &[Record], live: bool) -> String {
    let folded = crate::run::fold::fold(records);
    let summary = Summary::of(&folded);
    let plan: Option<Plan> = folded.start.as_ref().and_then(|(_, plan)| Plan::read(plan.clone()).ok());
    let started_by = Some(folded.started_by.clone()).filter(|by| !by.is_empty());
    let t0 = records.first().map(|r| r.ts_ms).unwrap_or_default();
    let t1 = records.last().map(|r| r.ts_ms).unwrap_or(t0);
    let finished = folded.finished.is_some();
    let order = step_order(plan.as_ref(), &summary);
    let status_of = |id: &str| {
        summary.steps.iter().find(|s| s.id == id).map(|s| s.status.clone()).unwrap_or_else(|| "pending".into())
    };

    let mut html = String::new();
    let title = format!("{} · {} / {} · {}", summary.pipeline, summary.environment, summary.entity, summary.status);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gantry · {}</title>\n<style>{CSS}</style></head>\n<body data-live=\"{}\" data-finished=\"{finished}\">\n",
        escape(&title),
        live && !finished
    );
    let _ = writeln!(
        html,
        "<header><h1>{}</h1><p class=\"status s-{}\">{}</p><p>run <code>{}</code> · environment <b>{}</b> · entity <b>{}</b>{} · {}</p></header>",
        escape(&summary.pipeline),
        escape(&summary.status),
        escape(&summary.status),
        escape(&summary.run_id),
        escape(&summary.environment),
        escape(&summary.entity),
        started_by.map(|u| format!(" · started by <b>{}</b>", escape(&u))).unwrap_or_default(),
        duration(t1 - t0)
    );
    html += &barriers(&folded);
    html += &barriers_ahead(&summary.barriers_ahead);
    html += &preflight(&summary.preflight);
    html += "<section><h2>Steps</h2>";
    html += &dag(plan.as_ref(), &order, &status_of);
    html += "</section>\n<section><h2>Timeline</h2>";
    html += &timeline(&spans(records), &order, t0, t1);
    html += "</section>\n";
    let weights = canary(records, plan.as_ref());
    if !weights.0.is_empty() || !weights.1.is_empty() {
        html += "<section><h2>Canary</h2>";
        html += &canary_chart(&weights.0, t0, t1);
        html += &table(&["time", "step", "stage", "sample", "gate", "observed", "threshold", "verdict"], &weights.1);
        html += "</section>\n";
    }
    html += &readings::section(&crate::analysis::readings(records), t0, t1);
    html += "<section><h2>Requests</h2>";
    html += &requests(records, &order);
    html += "</section>\n<section><h2>Grants</h2>";
    html += &grants(plan.as_ref());
    html += "</section>\n";
    let _ = write!(html, "<script>{SCRIPT}</script>\n</body></html>\n");
    html
}

/// The rollback barriers in place, as the fold reads them, with what is still in place: what the
/// person deciding `resume`, `rollback --past-barrier` or `settle` needs first.
fn barriers(folded: &crate::run::fold::Folded) -> String {
    let found = folded.barriers();
    if found.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> =
        found.iter().map(|b| vec![b.step.clone(), b.reason.clone(), b.changed.clone()]).collect();
    format!(
        "<section><h2>Rollback barrier</h2><p>These steps said their change cannot be undone: a rollback stops at them. \
         Still in place: <b>{}</b>.</p>{}</section>\n",
        escape(&folded.in_place().join(", ")),
        table(&["step", "why it cannot be undone", "what stays changed"], &rows)
    )
}

/// A dry run's steps whose real run would record a rollback barrier: what to plan for before it.
fn barriers_ahead(ahead: &[crate::run::fold::Barrier]) -> String {
    if ahead.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> =
        ahead.iter().map(|b| vec![b.step.clone(), b.reason.clone(), b.changed.clone()]).collect();
    format!(
        "<section><h2>Rollback barriers ahead</h2><p>In the real run, these steps would make a change that cannot be \
         undone: a rollback after them stops there and waits for a person.</p>{}</section>\n",
        table(&["step", "why it could not be undone", "what would stay changed"], &rows)
    )
}

/// What each step read before the run's first change.
fn preflight(read: &[crate::run::fold::PreflightShown]) -> String {
    if read.is_empty() {
        return String::new();
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    for p in read {
        if let Some(error) = &p.error {
            rows.push(vec![p.step.clone(), "(the pre-flight itself)".into(), error.clone(), "FAILED".into()]);
        }
        for c in &p.checks {
            let passed = if c.passed { "ok" } else { "FAILED" };
            rows.push(vec![p.step.clone(), c.name.clone(), c.answer.clone(), passed.into()]);
        }
    }
    format!(
        "<section><h2>Pre-flight</h2><p>What each step read before the run changed anything.</p>{}</section>\n",
        table(&["step", "check", "what it read", ""], &rows)
    )
}

/// Steps in plan order, then any the journal names that the plan does not.
fn step_order(plan: Option<&Plan>, summary: &Summary) -> Vec<String> {
    let mut order: Vec<String> = plan.map(|p| p.steps.iter().map(|s| s.id.clone()).collect()).unwrap_or_default();
    for s in &summary.steps {
        if !order.contains(&s.id) {
            order.push(s.id.clone());
        }
    }
    order
}

/// The step graph: one column per wave, edges for `needs`.
fn dag(plan: Option<&Plan>, order: &[String], status_of: &dyn Fn(&str) -> String) -> String {
    let groups: Vec<Vec<String>> = match plan {
        Some(p) if !p.groups.is_empty() => p.groups.clone(),
        _ => vec![order.to_vec()],
    };
    let (w, h, gap_x, gap_y) = (150.0, 40.0, 60.0, 16.0);
    let mut at: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (col, group) in groups.iter().enumerate() {
        for (row, id) in group.iter().enumerate() {
            at.insert(id, (10.0 + col as f64 * (w + gap_x), 10.0 + row as f64 * (h + gap_y)));
        }
    }
    let width = 20.0 + groups.len() as f64 * (w + gap_x);
    let height = 20.0 + groups.iter().map(Vec::len).max().unwrap_or(1) as f64 * (h + gap_y);
    let mut svg =
        format!("<svg id=\"dag\" role=\"img\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\">");
    if let Some(plan) = plan {
        for step in &plan.steps {
            for need in &step.needs {
                if let (Some((x1, y1)), Some((x2, y2))) = (at.get(need.as_str()), at.get(step.id.as_str())) {
                    let _ = write!(
                        svg,
                        "<path class=\"edge\" d=\"M{} {} C{} {} {} {} {} {}\"/>",
                        x1 + w,
                        y1 + h / 2.0,
                        x1 + w + gap_x / 2.0,
                        y1 + h / 2.0,
                        x2 - gap_x / 2.0,
                        y2 + h / 2.0,
                        x2,
                        y2 + h / 2.0
                    );
                }
            }
        }
    }
    for (id, (x, y)) in &at {
        let status = status_of(id);
        let _ = write!(
            svg,
            "<g class=\"node s-{s}\" data-step=\"{id}\"><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\"/><text x=\"{tx}\" y=\"{ty}\">{id}</text><text class=\"small\" x=\"{tx}\" y=\"{ty2}\">{s}</text></g>",
            s = escape(&status),
            id = escape(id),
            tx = x + 8.0,
            ty = y + 17.0,
            ty2 = y + 32.0
        );
    }
    svg + "</svg>"
}

/// Attempts, waits, retries and rollbacks of each step, from the journal.
fn spans(records: &[Record]) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let close = |spans: &mut Vec<Span>, open: &mut BTreeMap<String, usize>, step: &str, ts: f64, kind: &'static str| {
        if let Some(i) = open.remove(step) {
            spans[i].end = Some(ts);
            spans[i].kind = kind;
        }
    };
    for r in records {
        let ts = r.ts_ms;
        match &r.event {
            Event::StepStarted { step, attempt, .. } => {
                open.insert(step.clone(), spans.len());
                let label = format!("attempt {attempt}");
                spans.push(Span { step: step.clone(), start: ts, end: None, kind: "attempt", label });
            }
            Event::StepRetrying { step, .. } => close(&mut spans, &mut open, step, ts, "retry"),
            Event::StepFinished { step, .. } => close(&mut spans, &mut open, step, ts, "succeeded"),
            Event::StepFailed { step, .. } | Event::Paused { step, .. } => {
                close(&mut spans, &mut open, step, ts, "failed")
            }
            Event::ApprovalRequested(req) => spans.push(Span {
                step: req.step.clone(),
                start: ts,
                end: None,
                kind: "waiting",
                label: "awaiting approval".into(),
            }),
            Event::Approved { step, by, .. } | Event::Rejected { step, by, .. } => {
                if let Some(s) = spans.iter_mut().rev().find(|s| s.step == *step && s.kind == "waiting") {
                    s.end = Some(ts);
                    s.label = format!("decided by {by}");
                }
            }
            Event::RolledBack { step, .. } | Event::RollbackFailed { step, .. } => {
                let kind = if matches!(r.event, Event::RolledBack { .. }) { "rollback" } else { "failed" };
                spans.push(Span { step: step.clone(), start: ts, end: Some(ts), kind, label: "rolled back".into() })
            }
            _ => {}
        }
    }
    spans
}

/// A Gantt chart: a row per step, a bar per span.
fn timeline(spans: &[Span], order: &[String], t0: f64, t1: f64) -> String {
    let (left, width, row) = (150.0, 760.0, 26.0);
    let scale = width / (t1 - t0).max(1.0);
    let height = 30.0 + order.len() as f64 * row;
    let mut svg = format!(
        "<svg id=\"timeline\" role=\"img\" viewBox=\"0 0 {w} {height}\" width=\"{w}\" height=\"{height}\">",
        w = left + width + 20.0
    );
    let _ = write!(
        svg,
        "<text class=\"small\" x=\"{left}\" y=\"{y}\">0</text><text class=\"small\" x=\"{x}\" y=\"{y}\" text-anchor=\"end\">{}</text>",
        duration(t1 - t0),
        y = height - 6.0,
        x = left + width
    );
    for (i, id) in order.iter().enumerate() {
        let y = 6.0 + i as f64 * row;
        let _ = write!(
            svg,
            "<g class=\"row\" data-step=\"{}\"><text x=\"4\" y=\"{}\">{}</text>",
            escape(id),
            y + 15.0,
            escape(id)
        );
        for s in spans.iter().filter(|s| s.step == *id) {
            let x = left + (s.start - t0) * scale;
            let end = s.end.unwrap_or(t1);
            let w = ((end - s.start) * scale).max(3.0);
            let _ = write!(
                svg,
                "<rect class=\"bar k-{}\" x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\"><title>{}: {} ({:.0} ms)</title></rect>",
                s.kind,
                row - 8.0,
                escape(id),
                escape(&s.label),
                end - s.start
            );
        }
        svg += "</g>";
    }
    svg + "</svg>"
}

/// The green weight over time, as a step line with each stage labelled, over a time axis.
fn canary_chart(weights: &[Weight], t0: f64, t1: f64) -> String {
    let (left, width, height) = (40.0, 760.0, 190.0);
    let scale = width / (t1 - t0).max(1.0);
    let y = |w: u32| 20.0 + (100.0 - w as f64) / 100.0 * (height - 60.0);
    let mut last_y = y(0);
    let mut points = format!("{left},{last_y:.1}");
    for (ts, w, _) in weights {
        let x = left + (ts - t0) * scale;
        let _ = write!(points, " {x:.1},{last_y:.1} {x:.1},{:.1}", y(*w));
        last_y = y(*w);
    }
    let _ = write!(points, " {:.1},{last_y:.1}", left + width);
    let mut svg = format!(
        "<svg id=\"canary\" role=\"img\" viewBox=\"0 0 {w} {height}\" width=\"{w}\" height=\"{height}\">",
        w = left + width + 20.0
    );
    for pct in [0, 50, 100] {
        let _ = write!(svg, "<text class=\"small\" x=\"4\" y=\"{:.1}\">{pct}%</text><line class=\"grid\" x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>", y(pct) + 4.0, left + width, y = y(pct));
    }
    // Time since the run started, five ticks.
    let axis = y(0) + 26.0;
    for i in 0..=4 {
        let (x, at) = (left + width * i as f64 / 4.0, (t1 - t0) * i as f64 / 4.0);
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text class=\"small tick\" x=\"{x:.1}\" y=\"{axis:.1}\" text-anchor=\"{anchor}\">{}</text>",
            y(0),
            y(0) + 4.0,
            if i == 0 { "0 s".to_string() } else { duration(at) }
        );
    }
    let _ = write!(svg, "<polyline class=\"weight\" points=\"{points}\"/>");
    for (ts, w, label) in weights {
        let (x, y) = (left + (ts - t0) * scale, y(*w));
        let _ = write!(
            svg,
            "<circle class=\"weight\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\"><title>{}: green {w}% at {}</title></circle><text class=\"small stage\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            escape(label),
            duration(ts - t0),
            y - 7.0,
            escape(label)
        );
    }
    svg + "</svg>"
}

/// Every request by step, denials marked.
fn requests(records: &[Record], order: &[String]) -> String {
    let mut rows = Vec::new();
    for id in order {
        for r in records {
            if let Event::Request(req) = &r.event {
                if req.step == *id {
                    let result = match (req.allowed, req.status) {
                        (false, _) => format!("DENIED: {}", req.reason.as_deref().unwrap_or_default()),
                        (true, Some(status)) => format!("{status} · {} B · {:.1} ms", req.bytes, req.duration_ms),
                        (true, None) => format!("failed: {}", req.reason.as_deref().unwrap_or_default()),
                    };
                    rows.push(vec![clock(r.ts_ms), id.clone(), req.shown(), result]);
                }
            }
        }
    }
    if rows.is_empty() {
        return "<p>No requests.</p>".into();
    }
    table(&["time", "step", "request", "result"], &rows)
}

/// What each step was granted, from the plan the run recorded: every grant of every capability,
/// one line each, as `plan --diff` compares them.
fn grants(plan: Option<&Plan>) -> String {
    let Some(plan) = plan else { return "<p>The journal has no plan.</p>".into() };
    let rows: Vec<Vec<String>> = plan
        .steps
        .iter()
        .map(|s| {
            let lines: Vec<String> =
                crate::review::grants(s).iter().map(|(aspect, detail)| format!("{aspect} {detail}")).collect();
            vec![
                s.id.clone(),
                format!("{} (sha256:{}…)", s.uses, &s.sha256[..s.sha256.len().min(12)]),
                if lines.is_empty() { "—".to_string() } else { lines.join("\n") },
            ]
        })
        .collect();
    table(&["step", "plugin", "grants (secrets by name: used, never seen)"], &rows)
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(t, "<th>{}</th>", escape(h));
    }
    t += "</tr></thead><tbody>";
    for row in rows {
        let denied = row.last().is_some_and(|c| c.starts_with("DENIED") || c == "Fail");
        t += if denied { "<tr class=\"denied\">" } else { "<tr>" };
        for cell in row {
            let _ = write!(t, "<td>{}</td>", escape(cell));
        }
        t += "</tr>";
    }
    t + "</tbody></table>"
}

/// A span of milliseconds as people read it: `850 ms`, `12.4 s`, `3 min 5 s`.
fn duration(ms: f64) -> String {
    match ms {
        ms if ms < 1e3 => format!("{ms:.0} ms"),
        ms if ms < 60e3 => format!("{:.1} s", ms / 1e3),
        ms => format!("{:.0} min {:.0} s", (ms / 60e3).floor(), (ms % 60e3) / 1e3),
    }
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}\
h1{margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}code{font-size:12px}\
.status{display:inline-block;padding:2px 10px;border-radius:12px;background:#ddd;font-weight:600}\
svg{background:#fff;border:1px solid #e3e6ea;border-radius:6px;max-width:100%;height:auto}\
svg text{font-size:12px;fill:#1d2330}svg text.small{font-size:10px;fill:#5b6472}\
.edge{fill:none;stroke:#9aa3ad;stroke-width:1.5}.node rect{fill:#eef1f4;stroke:#9aa3ad}\
.s-succeeded rect,.status.s-succeeded{fill:#d4f3dc;background:#d4f3dc}\
.s-failed rect,.s-cancelled rect,.s-rollback-failed rect,.status.s-failed,.status.s-rollback-failed{fill:#f9d5d3;background:#f9d5d3}\
.s-rolled-back rect,.status.s-rolled-back,.status.s-interrupted{fill:#fde9c8;background:#fde9c8}\
.s-skipped rect{fill:#f0f0f0;stroke-dasharray:4 3}.s-awaiting-approval rect,.status.s-awaiting-approval,.s-paused rect,.status.s-paused{fill:#dfe6fb;background:#dfe6fb}\
.bar{fill:#7aa7e0}.k-succeeded{fill:#4caf6a}.k-failed{fill:#d9534f}.k-retry{fill:#f0ad4e}.k-rollback{fill:#b36bd6}.k-waiting{fill:#9db4ef;opacity:.7}\
.grid{stroke:#eceff2}h3{font-size:13px;margin:14px 0 4px}\
polyline.series{fill:none;stroke:#7aa7e0;stroke-width:1.5}circle.reading{fill:#4caf6a}circle.o-failed{fill:#d9534f}circle.o-failed.pending{fill:#f0ad4e}\
circle.o-inconclusive,circle.o-error{fill:#9aa3ad}line.threshold{stroke-dasharray:5 4;stroke-width:1.2}line.failure{stroke:#d9534f}line.success{stroke:#4caf6a}\
svg text.failure{fill:#d9534f}svg text.success{fill:#2e7d4f}line.decided{stroke:#1d2330;stroke-width:1.5}line.stage{stroke:#cfd5dc;stroke-dasharray:2 3}svg text.decided{fill:#1d2330;font-weight:600}\
polyline.weight{fill:none;stroke:#2e7d4f;stroke-width:2}circle.weight{fill:#2e7d4f}\
table{border-collapse:collapse;background:#fff;font-size:12px}th,td{border:1px solid #e3e6ea;padding:3px 8px;text-align:left;vertical-align:top;white-space:pre-line}\
tr.denied td{background:#fdecea}.highlight rect{stroke:#1d2330;stroke-width:2}";

/// Highlights a step's row and node together on hover; reloads a page whose run is still going.
const SCRIPT: &str = "(function(){\
var live=document.body.dataset.live==='true';\
if(live){setTimeout(function(){location.reload();},2000);}\
document.querySelectorAll('[data-step]').forEach(function(el){\
el.addEventListener('mouseenter',function(){document.querySelectorAll('[data-step=\"'+el.dataset.step+'\"]').forEach(function(o){o.classList.add('highlight');});});\
el.addEventListener('mouseleave',function(){document.querySelectorAll('.highlight').forEach(function(o){o.classList.remove('highlight');});});\
});\
document.body.dataset.ready='true';\
})();";

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts_ms: f64, event: Event) -> Record {
        Record { seq: 0, ts_ms, session: 1, event }
    }

    #[test]
    fn the_grants_table_shows_every_capability_a_step_was_granted() {
        let mut plan: Plan = serde_json::from_value(serde_json::json!({
            "pipeline": "p", "environment": "production", "entity": "e", "groups": [],
            "steps": [{
                "id": "release", "name": null,
                "uses": {"source": {"kind": "registry", "reference": "r.example/a/b:1"}, "pin": null},
                "plugin": "/x.wasm", "sha256": "1".repeat(64), "needs": [], "condition": "success()",
                "network": crate::capability::NetworkPolicy::parse(&["https://a.example"]).unwrap(),
                "secrets": [{"name": "TOKEN", "source": "env:TOKEN", "bound_to": ["https://a.example"]}],
                "files": [], "artifacts": true,
                "limits": crate::pipeline::ResourceLimits::default(), "retry": crate::pipeline::RetryPolicy::default(),
                "continue_on_error": false, "rollback": false, "input": {}
            }]
        }))
        .unwrap();
        let password = serde_json::from_value(serde_json::json!({"name": "DB_PASSWORD", "source": "env:DB_PASSWORD", "bound_to": []}));
        let grant = crate::capability::DatabaseGrant::for_test("postgres://db.prod:5432/app", true);
        plan.steps[0].databases.push(crate::plan::PlannedDatabase { grant, password: password.unwrap() });
        let units = crate::capability::Capabilities::builtin();
        for (name, value) in [
            ("tls", serde_json::json!({"targets": ["the7space.example"]})),
            ("dns", serde_json::json!({"names": ["*.the7space.example"]})),
        ] {
            let lines = units.get(name).unwrap().describe(&value);
            plan.steps[0].capabilities.insert(name.into(), crate::plan::PlannedGrant { grant: value, secrets: vec![], lines });
        }
        let html = grants(Some(&plan));
        for shown in [
            "origin https://a.example",
            "secret TOKEN from env:TOKEN bound to [https://a.example]",
            "database app = postgres://db.prod:5432/app as deploy, read-only, tls, password DB_PASSWORD from env:DB_PASSWORD",
            "tls the7space.example:443",
            "dns *.the7space.example",
            "artifacts /artifacts",
        ] {
            assert!(html.contains(shown), "{shown} missing from {html}");
        }
    }

    #[test]
    fn attempts_retries_and_rollbacks_become_spans_and_the_canary_its_weights() {
        let log = |message: &str| Event::Log {
            step: "shift".into(),
            level: crate::sandbox::Level::Info,
            message: message.into(),
        };
        let records = vec![
            record(0.0, Event::StepStarted { step: "shift".into(), attempt: 1, notifier: false }),
            record(10.0, log("stage 25%: green weight 25, blue 75")),
            record(20.0, log("stage 25% sample 1/2: error-rate gate: 0.01 (threshold 0.05): Pass")),
            record(30.0, Event::StepRetrying { step: "shift".into(), attempt: 1, error: "x".into(), backoff_ms: 5 }),
            record(40.0, Event::StepStarted { step: "shift".into(), attempt: 2, notifier: false }),
            record(50.0, Event::StepFinished { step: "shift".into(), outputs: BTreeMap::new(), attempt: 1 }),
            record(60.0, Event::RolledBack { step: "shift".into(), attempt: 1 }),
        ];
        let s = spans(&records);
        let kinds: Vec<&str> = s.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, ["retry", "succeeded", "rollback"]);
        assert_eq!((s[0].start, s[0].end), (0.0, Some(30.0)));
        let (weights, readings) = canary(&records, None);
        assert_eq!(weights, [(10.0, 25, "25%".to_string())]);
        assert_eq!(readings[0][2..], ["25%", "1/2", "error-rate", "0.01", "0.05", "Pass"]);
        let html = page(&records, true);
        assert!(html.contains("data-live=\"true\"") && html.contains("<svg id=\"canary\""), "{html}");
        assert!(!html.contains("<script src") && !html.contains("<link") && !html.contains("http"), "self-contained");
    }
}
