//! The HTML run report, loaded in headless Chromium (Debian's `chromium`):
//! a canary against moto that shifts all traffic, then a failing smoke test
//! rolls it back. The page loads with no console error, its script runs, the
//! timeline has every step, and a screenshot is kept. `gantry ui` serves the
//! same page.

use crate::alb::canary_yaml_at;
use crate::peers::{wait_for_data, Aws};
use crate::support::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Headless Chromium on `url` with `args`, its own profile, console messages on stderr.
pub(crate) fn chromium(profile: &Path, url: &str, args: &[&str]) -> Output {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium is installed by scripts/peers-setup");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Console messages Chromium logged while loading the page.
pub(crate) fn console(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("CONSOLE")).map(str::to_string).collect()
}

fn get(origin: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(origin.trim_start_matches("http://")).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// `gantry ui` on a free port; killed on drop.
struct Ui(std::process::Child, String);

impl Ui {
    fn start(dir: &Path) -> Self {
        let mut child = command(&shared_cache())
            .args(["ui", "--port", "0"])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let origin =
            line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches('/').to_string();
        Ui(child, origin)
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_html_report_of_a_rolled_back_canary_loads_clean_in_chromium_with_every_step_on_its_timeline() {
    let aws = Aws::start();
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let misbehave = repo().join("tests/plugins/misbehave");
    let o = server.origin();
    let gates = format!("pause_ms: 0\n      target_health: false\n      health_url: \"{}/health\"", server.origin());
    let yaml = canary_yaml_at(&aws, &aws.moto.origin, &gates, &[&server.origin()])
        + &format!(
            "  - id: probe\n    uses: {m}\n    needs: [shift]\n    network: [\"{o}\"]\n    continue_on_error: true\n    with: {{ action: http, url: \"http://127.0.0.1:9/not-granted\" }}\n  - id: smoke\n    uses: {m}\n    needs: [probe]\n    network: [\"{o}\"]\n    with: {{ url: \"{o}/record\", action: fail, message: post-release check failed }}\n",
            m = misbehave.display()
        );
    let (key, secret) = (aws.get("access_key"), aws.get("secret_key"));
    let summary = dir.path().join("summary.md");
    let summary_env = summary.to_str().unwrap();
    let env = [("TEST_AWS_KEY", key.as_str()), ("TEST_AWS_SECRET", secret.as_str()), ("GITHUB_STEP_SUMMARY", summary_env)];
    let out = run_pipeline(dir.path(), &yaml, &env, &[]);
    expect_code(&out, 1);
    let id = run_id(dir.path());

    // The job summary, as GitHub renders it: every stage's gate reading, the weights the rollback
    // restored, what was rolled back and why.
    let shown = github_html(&std::fs::read_to_string(&summary).unwrap());
    for stage in ["5%", "25%", "50%", "100%"] {
        let observed = format!("{}/health answered 200", server.origin());
        let row = format!("<td>shift</td>\n<td align=\"right\">{stage}</td>\n<td align=\"right\">1/1</td>\n<td>health-url</td>\n<td>{observed}</td>\n<td>2xx</td>\n<td>Pass</td>");
        assert!(shown.contains(&row), "the reading of stage {stage}: {shown}");
    }
    assert!(shown.contains("<td>weights restored</td>"), "{shown}");
    assert!(shown.contains("<h4>Rolled back</h4>\n<p>shift, because "), "{shown}");
    assert!(shown.contains("smoke failed: step `smoke` failed: post-release check failed.</p>"), "{shown}");
    // The same gate readings as metrics: one pass per stage.
    let (_, metrics) = get(&Ui::start(dir.path()).1, "/metrics");
    let passed = "gantry_canary_decisions_total{pipeline=\"canary-kill\",step=\"shift\",metric=\"health-url\",outcome=\"pass\"} 4\n";
    assert!(metrics.contains(passed), "{metrics}");

    let page = dir.path().join("report.html");
    let written = gantry_in(dir.path(), &["report", &id, "--html", page.to_str().unwrap()]);
    expect_code(&written, 0);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script src") && !html.contains("<link "), "one self-contained file");
    assert!(html.contains("<svg id=\"canary\""), "the canary's weights are charted");
    assert!(html.contains("DENIED"), "the probe's refused request is shown");
    assert_eq!(html.matches("<circle class=\"weight\"").count(), 5, "4 stages, then the weight the rollback restored");
    assert!(html.contains("<title>restored: green 0% at "), "the rollback put green back to 0");
    for stage in ["5%", "25%", "50%", "100%", "restored"] {
        assert!(
            html.contains(&format!("text-anchor=\"middle\">{stage}</text>")),
            "stage {stage} is labelled on the chart"
        );
    }
    assert!(html.contains("class=\"small tick\""), "the chart has a time axis");
    assert!(html.contains("ModifyListener") && html.contains("DescribeListeners"), "requests name their AWS action");
    // Every stage's gate reading, observed against its threshold.
    for stage in ["5%", "25%", "50%", "100%"] {
        let observed = format!("{}/health answered 200", server.origin());
        let row =
            format!("<td>{stage}</td><td>1/1</td><td>health-url</td><td>{observed}</td><td>2xx</td><td>Pass</td>");
        assert!(html.contains(&row), "the reading of stage {stage}: {html}");
    }

    // Loaded in Chromium: no console message, the script ran, the timeline has every step.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.display());
    let dom = chromium(profile.path(), &url, &["--dump-dom"]);
    assert_eq!(console(&dom), Vec::<String>::new(), "console messages while loading the report");
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("data-ready=\"true\""), "the page's script ran to its end");
    let timeline = &dom[dom.find("<svg id=\"timeline\"").unwrap()..];
    let timeline = &timeline[..timeline.find("</svg>").unwrap()];
    for step in ["shift", "probe", "smoke"] {
        assert!(timeline.contains(&format!("data-step=\"{step}\"")), "timeline row for {step}");
    }
    assert!(timeline.contains("k-rollback"), "the rollback of the shift is on the timeline");
    assert_eq!(timeline.matches("k-succeeded").count(), 1, "shift succeeded (then was rolled back)");

    // The detector above sees console errors when there are some.
    let broken = dir.path().join("broken.html");
    std::fs::write(&broken, "<!DOCTYPE html><p>x</p><script>console.error('boom'); undefined_call();</script>")
        .unwrap();
    let seen = chromium(profile.path(), &format!("file://{}", broken.display()), &["--dump-dom"]);
    assert!(console(&seen).iter().any(|l| l.contains("boom")), "{:?}", String::from_utf8_lossy(&seen.stderr));

    let shot: PathBuf = repo().join("target/gantry-report.png");
    let _ = std::fs::remove_file(&shot);
    chromium(profile.path(), &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1100,1400"]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    println!("report screenshot: {}", shot.display());

    // `gantry ui` serves the index and the same report.
    let ui = Ui::start(dir.path());
    let (status, index) = get(&ui.1, "/");
    assert_eq!(status, 200);
    assert!(index.contains(&format!("href=\"/runs/{id}\"")), "{index}");
    let (status, served) = get(&ui.1, &format!("/runs/{id}"));
    assert_eq!(status, 200);
    assert!(
        served.contains("<svg id=\"timeline\"") && served.contains("data-live=\"false\""),
        "a finished run does not reload"
    );
    assert_eq!(get(&ui.1, "/runs/..%2F..%2Fetc").0, 404);
}

/// The value of an instant `query` at Prometheus `prom`, by the labels named.
fn query(prom: &str, query: &str) -> Vec<(String, f64)> {
    let q: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let (status, body) = crate::peers::get(prom, &format!("/api/v1/query?query={q}")).expect("prometheus answers");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let series = answer["data"]["result"].as_array().cloned().unwrap_or_default();
    series
        .iter()
        .map(|s| {
            let labels: Vec<String> = ["status", "step", "outcome"]
                .iter()
                .filter_map(|l| s["metric"][l].as_str().map(|v| format!("{l}={v}")))
                .collect();
            (labels.join(","), s["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect()
}

#[test]
fn gantry_ui_serves_the_metrics_of_every_run_and_the_real_prometheus_scrapes_them() {
    let dir = tempfile::tempdir().unwrap();
    let misbehave = repo().join("tests/plugins/misbehave");
    let write = |name: &str, steps: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, format!("name: {name}\nsteps:\n{}", steps.replace("PLUGIN", &misbehave.display().to_string()))).unwrap();
        file
    };
    let work = "  - id: work\n    uses: PLUGIN\n    with: { action: sleep, ms: 20 }\n";
    let fail = "  - id: check\n    uses: PLUGIN\n    needs: [work]\n    with: { action: fail, message: smoke failed }\n";
    let gated = "  - id: release\n    uses: PLUGIN\n    needs: [work]\n    approval: { timeout: 1h }\n    with: { action: sleep, ms: 1 }\n";
    for (file, code) in [(write("ok", work), 0), (write("broken", &format!("{work}{fail}")), 1), (write("gated", &format!("{work}{gated}")), 5)] {
        let out = gantry_in(dir.path(), &["run", file.to_str().unwrap()]);
        expect_code(&out, code);
    }
    let ui = Ui::start(dir.path());
    let (status, text) = get(&ui.1, "/metrics");
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE gantry_step_duration_seconds histogram"), "{text}");
    let data = tempfile::tempdir().unwrap();
    let prom = crate::peers::prometheus_scraping(&ui.1, data.path());
    wait_for_data(&prom.origin, "gantry_runs");
    let runs = query(&prom.origin, "sum by (status) (gantry_runs)");
    for (status, count) in [("status=succeeded", 1.0), ("status=failed", 1.0), ("status=awaiting-approval", 1.0)] {
        assert!(runs.contains(&(status.to_string(), count)), "{status}: {runs:?}");
    }
    assert_eq!(query(&prom.origin, "gantry_rollbacks_total{pipeline=\"broken\"}"), [("step=work".to_string(), 1.0)]);
    assert_eq!(query(&prom.origin, "gantry_approvals_waiting"), [("step=release".to_string(), 1.0)]);
    let durations = query(&prom.origin, "sum by (step) (gantry_step_duration_seconds_count)");
    assert!(durations.contains(&("step=work".to_string(), 3.0)), "{durations:?}");
    // A run recorded after the first scrape is counted at the next.
    let out = gantry_in(dir.path(), &["run", dir.path().join("ok.yaml").to_str().unwrap()]);
    expect_code(&out, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while query(&prom.origin, "gantry_runs{status=\"succeeded\"}") != [("status=succeeded".to_string(), 2.0)] {
        assert!(std::time::Instant::now() < deadline, "the second run never showed");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_ui_page_of_a_run_still_going_reloads_itself() {
    let dir = tempfile::tempdir().unwrap();
    let misbehave = repo().join("tests/plugins/misbehave");
    let file = dir.path().join("slow.yaml");
    std::fs::write(
        &file,
        format!("name: slow\nsteps:\n  - id: wait\n    uses: {}\n    timeout: 2m\n    with: {{ action: sleep, ms: 60000 }}\n", misbehave.display()),
    )
    .unwrap();
    let mut cmd = command(&shared_cache());
    cmd.current_dir(dir.path()).args(["run", file.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
    let path = dir.path().to_path_buf();
    let mut run =
        spawn_until(&mut cmd, "the step running", || journal(&path).iter().any(|e| e["event"] == "step_started"));
    let ui = Ui::start(dir.path());
    let (status, page) = get(&ui.1, &format!("/runs/{}", run_id(dir.path())));
    let _ = run.kill();
    let _ = run.wait();
    assert_eq!(status, 200);
    assert!(page.contains("data-live=\"true\"") && page.contains("location.reload"), "a running run's page reloads");
    assert!(page.contains("data-step=\"wait\""), "and shows the step under way");
}
