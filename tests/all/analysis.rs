//! `canary-analysis` end to end: CloudWatch readings from moto (signatures on, data put with
//! boto3), Datadog readings from the stand-in fed by the official `datadog-api-client`, the
//! step's judgement journaled reading by reading.

use crate::peers::{spawn, venv, Aws, Peer};
use crate::support::*;
use serde_json::Value;
use std::process::{Command, Output};

/// The `reading {json}` lines the step journaled, in order.
fn readings(dir: &std::path::Path) -> Vec<Value> {
    journal(dir)
        .iter()
        .filter_map(|e| e["message"].as_str()?.strip_prefix("reading ").map(|j| serde_json::from_str(j).unwrap()))
        .collect()
}

fn events(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn outputs(out: &Output) -> Value {
    events(out).into_iter().find(|e| e["event"] == "step_finished").map(|e| e["outputs"].clone()).unwrap_or_default()
}

fn plugin() -> String {
    repo().join("plugins/canary-analysis").display().to_string()
}

/// Puts `values` of `metric` for service `service`, one a minute up to now, with boto3.
fn put_metrics(aws: &Aws, metric: &str, service: &str, values: &[f64]) {
    let code = "import boto3, datetime, json, sys\n\
        ep, key, secret, metric, service, values = sys.argv[1:7]\n\
        cw = boto3.client('cloudwatch', endpoint_url=ep, region_name='us-east-1', aws_access_key_id=key, aws_secret_access_key=secret)\n\
        now = datetime.datetime.now(datetime.timezone.utc)\n\
        values = json.loads(values)\n\
        data = [{'MetricName': metric, 'Dimensions': [{'Name': 'ServiceName', 'Value': service}], 'Timestamp': now - datetime.timedelta(minutes=len(values) - 1 - i), 'Value': v} for i, v in enumerate(values)]\n\
        cw.put_metric_data(Namespace='AWS/ECS', MetricData=data)\n";
    let out = Command::new(venv("python"))
        .args(["-c", code, &aws.moto.origin, &aws.get("access_key"), &aws.get("secret_key"), metric, service])
        .arg(serde_json::to_string(values).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "put_metric_data: {}", String::from_utf8_lossy(&out.stderr));
}

fn cloudwatch(aws: &Aws, metric: &str, service: &str) -> String {
    format!(
        "{{ provider: cloudwatch, endpoint: \"{}/\", region: us-east-1, namespace: AWS/ECS, metric: {metric}, dimensions: {{ ServiceName: {service} }}, stat: Average, window_s: 600 }}",
        aws.moto.origin
    )
}

#[test]
fn cloudwatch_readings_fail_on_the_reading_past_the_limit_and_a_dry_run_metric_never_decides() {
    let aws = Aws::start();
    put_metrics(&aws, "CPUUtilization", "web-green", &[40.0, 60.0, 95.0]);
    put_metrics(&aws, "MemoryUtilization", "web-green", &[70.0, 97.0]);
    let o = &aws.moto.origin;
    let yaml = format!(
        r#"name: analysis
secrets:
  AWS_ACCESS_KEY_ID: {{ from: "env:TEST_AWS_KEY", bind: ["{o}"] }}
  AWS_SECRET_ACCESS_KEY: {{ from: "env:TEST_AWS_SECRET", bind: ["{o}"] }}
steps:
  - id: analysis
    uses: {plugin}
    network: ["{o}"]
    secrets: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]
    with:
      interval_ms: 100
      readings: 6
      metrics:
        - name: cpu
          source: {cpu}
          rules: {{ failure: {{ op: ">", value: 90 }}, failure_limit: 2 }}
        - name: memory
          source: {memory}
          rules: {{ failure: {{ op: ">", value: 95 }}, dry_run: true }}
"#,
        plugin = plugin(),
        cpu = cloudwatch(&aws, "CPUUtilization", "web-green"),
        memory = cloudwatch(&aws, "MemoryUtilization", "web-green"),
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [("TEST_AWS_KEY", aws.get("access_key")), ("TEST_AWS_SECRET", aws.get("secret_key"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_pipeline(dir.path(), &yaml, &env, &[]);
    expect_code(&out, 1);
    let failed = events(&out).into_iter().find(|e| e["event"] == "step_failed").unwrap();
    assert!(failed["error"].as_str().unwrap().contains("canary analysis failed: cpu"), "{failed}");
    let all = readings(dir.path());
    let cpu: Vec<&Value> = all.iter().filter(|r| r["metric"] == "cpu").collect();
    assert_eq!(cpu.len(), 3, "two failed readings tolerated, the third fails: {cpu:#?}");
    assert_eq!(cpu[2]["judged"]["reading"]["value"], 95.0);
    assert_eq!(
        (cpu[1]["judged"]["phase"].as_str(), cpu[2]["judged"]["phase"].as_str()),
        (Some("running"), Some("failed"))
    );
    assert_eq!(cpu[0]["query"], "AWS/ECS CPUUtilization Average {ServiceName=web-green}");
    let memory: Vec<&Value> = all.iter().filter(|r| r["metric"] == "memory").collect();
    assert!(memory.iter().all(|r| r["judged"]["phase"] == "running"), "dry run never decides");
    assert_eq!(memory[0]["judged"]["would_be"], "failed", "but says what it would have decided");
}

/// The Datadog stand-in, with these keys.
fn datadog(api_key: &str, app_key: &str) -> Peer {
    let (api, app) = (api_key.to_string(), app_key.to_string());
    spawn(
        move |port| {
            let mut cmd = Command::new(venv("python"));
            cmd.arg(repo().join("tests/peers/datadog.py")).args([
                "--port",
                &port.to_string(),
                "--api-key",
                &api,
                "--app-key",
                &app,
            ]);
            cmd
        },
        "/_state",
        |status, body| status == 200 && body.contains("points"),
    )
}

/// Submits `values` of `metric` tagged `tags` through the official client, one a second up to now.
fn submit(dd: &Peer, metric: &str, tags: &[&str], values: &[f64]) {
    let code = "import json, sys, time\n\
        from datadog_api_client import ApiClient, Configuration\n\
        from datadog_api_client.v2.api.metrics_api import MetricsApi\n\
        from datadog_api_client.v2.model.metric_payload import MetricPayload\n\
        from datadog_api_client.v2.model.metric_series import MetricSeries\n\
        from datadog_api_client.v2.model.metric_point import MetricPoint\n\
        from datadog_api_client.v2.model.metric_intake_type import MetricIntakeType\n\
        host, metric, tags, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])\n\
        c = Configuration(host=host)\n\
        c.api_key['apiKeyAuth'] = 'dd-api'\n\
        now = int(time.time())\n\
        points = [MetricPoint(timestamp=now - len(values) + 1 + i, value=v) for i, v in enumerate(values)]\n\
        series = MetricSeries(metric=metric, type=MetricIntakeType.GAUGE, points=points, tags=tags)\n\
        r = MetricsApi(ApiClient(c)).submit_metrics(body=MetricPayload(series=[series]))\n\
        assert r.errors == [], r\n";
    let out = Command::new(venv("python"))
        .args(["-c", code, &dd.origin, metric])
        .arg(serde_json::to_string(tags).unwrap())
        .arg(serde_json::to_string(values).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "datadog-api-client: {}", String::from_utf8_lossy(&out.stderr));
}

/// Seeded latencies around `mean` (whole milliseconds), as in the judge's own test.
fn latencies(seed: u64, n: usize, mean: f64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (mean * (0.8 + 0.4 * u)).round()
        })
        .collect()
}

fn judge_pipeline(dd: &Peer, canary_tag: &str, extra_metric: &str) -> String {
    let o = &dd.origin;
    let source = |tag: &str| {
        format!("{{ provider: datadog, address: \"{o}\", query: \"avg:trace.http.request.duration{{service:web,color:{tag}}}\", window_s: 120 }}")
    };
    format!(
        r#"name: judge
secrets:
  DD_API_KEY: {{ from: "env:TEST_DD_API", bind: ["{o}"] }}
  DD_APP_KEY: {{ from: "env:TEST_DD_APP", bind: ["{o}"] }}
steps:
  - id: analysis
    uses: {plugin}
    network: ["{o}"]
    secrets: [DD_API_KEY, DD_APP_KEY]
    with:
      readings: 1
      metrics: [{extra_metric}]
      judge:
        - name: latency
          canary: {canary}
          baseline: {baseline}
          spec: {{ direction: increase, tolerance: 0.1 }}
"#,
        plugin = plugin(),
        canary = source(canary_tag),
        baseline = source("blue"),
    )
}

#[test]
fn datadog_samples_judge_a_canary_like_its_baseline_as_passing_and_a_slower_one_as_failing() {
    let dd = datadog("dd-api", "dd-app");
    submit(&dd, "trace.http.request.duration", &["service:web", "color:blue"], &latencies(1, 60, 180.0));
    submit(&dd, "trace.http.request.duration", &["service:web", "color:same"], &latencies(2, 60, 180.0));
    submit(&dd, "trace.http.request.duration", &["service:web", "color:slow"], &latencies(3, 60, 234.0));
    let env = [("TEST_DD_API", "dd-api"), ("TEST_DD_APP", "dd-app")];

    let dir = tempfile::tempdir().unwrap();
    let out = run_pipeline(dir.path(), &judge_pipeline(&dd, "same", ""), &env, &[]);
    expect_code(&out, 0);
    let o = outputs(&out);
    assert_eq!((o["verdict"].as_str(), o["score"].as_str()), (Some("pass"), Some("100")), "{o}");

    let dir = tempfile::tempdir().unwrap();
    let out = run_pipeline(dir.path(), &judge_pipeline(&dd, "slow", ""), &env, &[]);
    expect_code(&out, 1);
    let judged = journal(dir.path())
        .iter()
        .filter_map(|e| {
            e["message"].as_str()?.strip_prefix("compared ").map(|j| serde_json::from_str::<Value>(j).unwrap())
        })
        .next()
        .expect("the comparison is journaled");
    assert_eq!(judged["judgement"]["classification"], "high", "{judged}");
    assert!(
        judged["judgement"]["p"].as_f64().unwrap() < 0.05
            && judged["judgement"]["relative_shift"].as_f64().unwrap() > 0.2
    );
    assert_eq!(judged["canary"].as_array().unwrap().len(), 60, "its samples are journaled with it");

    // Judged again offline: with the recorded spec it fails as it did; tolerating a 50 % shift, it passes.
    let id = run_id(dir.path());
    let replay = |spec: Option<&str>| {
        let mut args = vec!["analysis", "replay", id.as_str(), "--json"];
        if let Some(text) = spec {
            std::fs::write(dir.path().join("spec.yaml"), text).unwrap();
            args.extend(["--spec", "spec.yaml"]);
        }
        let out = gantry_in(dir.path(), &args);
        expect_code(&out, 0);
        stdout_json(&out)["replay"].clone()
    };
    let as_run = replay(None);
    assert_eq!(as_run["comparisons"][0]["replayed"], judged["judgement"], "the same samples, the same spec: {as_run}");
    assert_eq!(as_run["scores"][0]["replayed"], serde_json::json!([0.0, "fail"]));
    let tolerant = replay(Some("judge:\n  latency: { direction: increase, tolerance: 0.5 }\n"));
    assert_eq!(tolerant["comparisons"][0]["replayed"]["classification"], "pass", "{tolerant}");
    assert_eq!(tolerant["scores"][0]["recorded"], serde_json::json!([0.0, "fail"]));
    assert_eq!(tolerant["scores"][0]["replayed"], serde_json::json!([100.0, "pass"]));

    // A metric without data is inconclusive: the run pauses for a person, nothing rolled back.
    let dir = tempfile::tempdir().unwrap();
    let empty = format!(
        "{{ name: errors, source: {{ provider: datadog, address: \"{}\", query: \"avg:trace.http.request.errors{{color:none}}\" }}, rules: {{ failure: {{ op: \">\", value: 0.01 }} }} }}",
        dd.origin
    );
    let out = run_pipeline(dir.path(), &judge_pipeline(&dd, "same", &empty), &env, &[]);
    expect_code(&out, 4);

    // The keys reached the stand-in as headers; the plugin never saw them.
    let state: Value = serde_json::from_str(&crate::peers::get(&dd.origin, "/_state").unwrap().1).unwrap();
    let queries: Vec<&Value> = state["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/api/v1/query"))
        .collect();
    assert!(queries
        .iter()
        .all(|r| r["headers"]["dd-api-key"] == "dd-api" && r["headers"]["dd-application-key"] == "dd-app"));
}
