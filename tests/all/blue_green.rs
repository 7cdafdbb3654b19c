//! The shipped `pipelines/blue-green-release.yaml` against moto (ECS, ELBv2,
//! SNS with an SQS inbox; signatures on — and Route 53 on a second moto that
//! checks none, since moto 5 refuses every Route 53 `GET` once it checks
//! signatures, boto3's included), its ports pointed at this test's peers. After success, after a failed gate and after `kill -9`
//! mid-canary then `gantry rollback`, the weights, the services' task
//! definitions and counts, the DNS record and the alerts are read back with
//! boto3, not through the plugins; the migration is read back with `psql`. PostgreSQL, the site's
//! TLS server (a certificate from the demo CA) and dnsmasq (www → green) stand in for the rest.

use crate::peers::{prometheus, wait_for_data, Aws, Dnsmasq, Peer, Postgres, TlsServers};
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a release left, read with boto3: (blue, green) weights, ECS (service, image, desired), www's values, alerts.
type State = ((u64, u64), Vec<(String, String, u64)>, Value, Vec<String>);

struct Release {
    aws: Aws,
    route53: crate::peers::Peer,
    health: CountingServer,
    dns: Value,
    pg: Postgres,
    _site: TlsServers,
    _resolver: Dnsmasq,
    _metrics: Peer,
    _prometheus: Peer,
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Release {
    /// moto set up with blue serving (ECS web-blue × 2, the listener on blue, www → blue), green's CPU
    /// and memory in CloudWatch at 35 and 52 %, Prometheus scraping the canary's metrics (no errors,
    /// 50 ms, health probes passing), and the shipped pipeline copied beside the plugins with its ports
    /// pointed at them and a health server.
    fn start() -> Self {
        Self::with_cpu(35)
    }

    /// As [`Release::start`], green's CPU at `cpu` %.
    fn with_cpu(cpu: u32) -> Self {
        let aws = Aws::start();
        aws.boto3_with("put-metrics", &["--cpu", &cpu.to_string(), "--memory", "52"]);
        let route53 = Aws::unchecked_moto();
        aws.boto3("ecs-setup");
        let dns = aws.boto3_with("dns-setup", &["--route53", &route53.origin]);
        let health = CountingServer::start(Reply::text(200, "ok"));
        let dir = tempfile::tempdir().unwrap();
        let metrics = aws.metrics(false);
        std::fs::create_dir(dir.path().join("prometheus")).unwrap();
        let prometheus = prometheus(&metrics, &dir.path().join("prometheus"));
        let pipelines = dir.path().join("pipelines");
        for sub in ["config", "migrations", "certs"] {
            std::fs::create_dir_all(pipelines.join(sub)).unwrap();
            for entry in std::fs::read_dir(repo().join("pipelines").join(sub)).unwrap().flatten() {
                std::fs::copy(entry.path(), pipelines.join(sub).join(entry.file_name())).unwrap();
            }
        }
        let pg = Postgres::start();
        pg.query("CREATE ROLE deploy LOGIN");
        pg.query("CREATE DATABASE app OWNER deploy");
        let certs = dir.path().join("site-certs");
        std::fs::create_dir(&certs).unwrap();
        let made = Command::new(repo().join("scripts/demo-cert")).arg(&certs).status().unwrap();
        assert!(made.success(), "scripts/demo-cert");
        let (cert, key) = (certs.join("site.pem"), certs.join("site.key"));
        let site = TlsServers::start(&[("site", &cert, &key, &[])]);
        let resolver = Dnsmasq::start(
            "the7space.example",
            &[
                "--host-record=green.the7space.example,127.0.0.1".into(),
                "--cname=www.the7space.example,green.the7space.example".into(),
            ],
            "",
        );
        std::os::unix::fs::symlink(repo().join("plugins"), dir.path().join("plugins")).unwrap();
        let text = std::fs::read_to_string(repo().join("pipelines/blue-green-release.yaml")).unwrap();
        let hostport = |origin: &str| origin.trim_start_matches("http://").to_string();
        let text = text
            .replace("127.0.0.1:18083", &hostport(&aws.moto.origin))
            .replace("127.0.0.1:18084", &hostport(&prometheus.origin))
            .replace("127.0.0.1:18085", &hostport(&health.origin()))
            .replace("127.0.0.1:18088", &hostport(&route53.origin))
            .replace("127.0.0.1:18089", &format!("127.0.0.1:{}", pg.port))
            .replace("127.0.0.1:18090", &format!("127.0.0.1:{}", site.ports["site"]))
            .replace("127.0.0.1:18091", &resolver.resolver());
        let file = pipelines.join("blue-green-release.yaml");
        std::fs::write(&file, text).unwrap();
        // Two scrapes, so the rates the release reads from its first stage have data.
        wait_for_data(&prometheus.origin, "sum(rate(http_requests_total[1m]))");
        let (_metrics, _prometheus) = (metrics, prometheus);
        Release { aws, route53, health, dns, pg, _site: site, _resolver: resolver, _metrics, _prometheus, dir, file }
    }

    fn gantry(&self, args: &[&str], pause_ms: u64) -> Command {
        let mut cmd = command(&shared_cache());
        cmd.current_dir(self.dir.path()).args(args);
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", self.aws.get("access_key")),
            ("AWS_SECRET_ACCESS_KEY", self.aws.get("secret_key")),
            ("LISTENER_ARN", self.aws.get("listener")),
            ("BLUE_TG", self.aws.get("blue")),
            ("GREEN_TG", self.aws.get("green")),
            ("ZONE_ID", self.dns["zone"].as_str().unwrap().to_string()),
            ("TOPIC_ARN", self.dns["topic"].as_str().unwrap().to_string()),
            ("GREEN_HEALTH", format!("{}/health", self.health.origin())),
            ("ROUTE53_ENDPOINT", format!("{}/", self.route53.origin)),
            ("CANARY_PAUSE_MS", pause_ms.to_string()),
            ("DB_PASSWORD", "trust-auth-ignores-it".to_string()),
        ] {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self) -> std::process::Output {
        self.gantry(&["run", self.file.to_str().unwrap()], 0).output().unwrap()
    }

    /// Whether the migration's table is in the database, read with `psql`.
    fn migrated(&self) -> bool {
        self.pg.query_in("app", "SELECT to_regclass('public.bookings') IS NOT NULL") == ["t"]
    }

    /// The state of every system the release touches.
    fn state(&self) -> State {
        let weights = self.aws.weights();
        let weight = |arn: String| weights.iter().find(|(a, _)| *a == arn).map(|(_, w)| *w).unwrap_or(0);
        let ecs = self.aws.boto3("ecs-state");
        let services = ["web-blue", "web-green"]
            .iter()
            .map(|s| {
                let e = &ecs[*s];
                (s.to_string(), e["image"].as_str().unwrap().to_string(), e["desired"].as_u64().unwrap())
            })
            .collect();
        let dns = self.aws.boto3_with("dns-state", &["--route53", &self.route53.origin]);
        let messages = dns["messages"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
        ((weight(self.aws.get("blue")), weight(self.aws.get("green"))), services, dns["www"].clone(), messages)
    }
}

fn services(blue: (&str, u64), green: (&str, u64)) -> Vec<(String, String, u64)> {
    vec![("web-blue".into(), blue.0.into(), blue.1), ("web-green".into(), green.0.into(), green.1)]
}

fn journal_in(dir: &Path) -> Vec<Value> {
    journal(dir)
}

#[test]
fn the_blue_green_release_lands_green_everywhere() {
    let r = Release::start();
    let out = r.run();
    expect_code(&out, 0);
    let (weights, ecs, www, messages) = r.state();
    assert_eq!(weights, (0, 100));
    assert_eq!(ecs, services(("web:1", 0), ("web:2", 2)));
    assert_eq!(www, serde_json::json!(["green.the7space.example"]));
    assert!(r.migrated(), "the bookings table is in place");
    let journal = journal_in(r.dir.path());
    let said = |prefix: &str| journal.iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with(prefix)));
    assert!(said("tls 127.0.0.1:") && said("dns www.the7space.example CNAME: green.the7space.example"));
    // The guide's nine conditions were each read from Prometheus or CloudWatch, with a value, and none decided.
    let readings: Vec<Value> = journal
        .iter()
        .filter_map(|e| serde_json::from_str(e["message"].as_str()?.strip_prefix("reading ")?).ok())
        .collect();
    for metric in [
        "error-rate",
        "p95-latency",
        "cpu",
        "memory",
        "error-rate-sustained",
        "p95-latency-sustained",
        "cpu-sustained",
        "memory-sustained",
        "health-check-failures",
    ] {
        let own: Vec<&Value> = readings.iter().filter(|r| r["metric"] == metric).collect();
        assert!(!own.is_empty(), "{metric} was never read: {readings:?}");
        for r in own {
            assert_eq!(r["judged"]["reading"]["kind"], "value", "{r}");
            assert_eq!(r["judged"]["phase"], "running", "{r}");
        }
    }
    let cpu = readings.iter().find(|r| r["metric"] == "cpu").unwrap();
    assert_eq!(cpu["judged"]["reading"]["value"], 35.0, "green's CPU as put into CloudWatch");
    let p95 = readings.iter().find(|r| r["metric"] == "p95-latency").unwrap();
    let p95 = p95["judged"]["reading"]["value"].as_f64().unwrap();
    assert!(p95 > 0.0 && p95 <= 0.05, "every request took 50 ms: {p95}");
    assert_eq!(messages.len(), 1, "one alert: {messages:?}");
    assert!(
        messages[0].contains("blue-green-release development / default")
            && messages[0].contains("blue-green release of web:2"),
        "{}",
        messages[0]
    );
}

#[test]
fn a_failed_gate_rolls_the_release_back_and_the_alert_says_so() {
    let r = Release::start();
    // A green target that is not healthy: the canary's target-health gate fails at its first stage.
    r.aws.stop_green_instance();
    let out = r.run();
    expect_code(&out, 1);
    let (weights, ecs, www, messages) = r.state();
    assert_eq!(weights, (100, 0), "the shift restored the original weights");
    assert_eq!(ecs, services(("web:1", 2), ("web:1", 0)), "green's deploy was rolled back");
    assert_eq!(www, serde_json::json!(["blue.the7space.example"]), "DNS never changed");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains(": rolled-back") && messages[0].contains("failed step: shift"), "{}", messages[0]);
    assert!(messages[0].contains("rolled back: shift,health,deploy-green,migrate,audit"), "{}", messages[0]);
    assert!(!r.migrated(), "the migration's down file ran");
}

#[test]
fn green_above_the_guides_cpu_limit_fails_the_first_stage_and_the_release_rolls_back() {
    // Green at 85 % CPU, over the guide's 70 %.
    let r = Release::with_cpu(85);
    let out = r.run();
    expect_code(&out, 1);
    let (weights, ecs, www, _) = r.state();
    assert_eq!(weights, (100, 0), "the shift restored the original weights");
    assert_eq!(ecs, services(("web:1", 2), ("web:1", 0)), "green's deploy was rolled back");
    assert_eq!(www, serde_json::json!(["blue.the7space.example"]), "DNS never changed");
    assert!(!r.migrated(), "the migration's down file ran");
    let failed = journal_in(r.dir.path())
        .into_iter()
        .find(|e| e["event"] == "step_failed" && e["step"] == "shift")
        .expect("the shift failed");
    let message = failed.to_string();
    assert!(message.contains("gate failed at 5%") && message.contains("cpu gate: 85 (threshold 85, success < 70: not met"), "{message}");
}

#[test]
fn kill_9_mid_canary_then_rollback_puts_blue_back_everywhere() {
    let r = Release::start();
    let mut cmd = r.gantry(&["run", r.file.to_str().unwrap()], 1500);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let dir = r.dir.path().to_path_buf();
    let mut child = spawn_until(&mut cmd, "the canary at 25 %", || {
        journal_in(&dir).iter().any(|e| {
            e["event"] == "log" && e["message"].as_str().is_some_and(|m| m.starts_with("stage 25%: green weight"))
        })
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (weights, ecs, _, _) = r.state();
    assert_eq!(weights, (75, 25), "killed mid-canary");
    assert_eq!(ecs, services(("web:1", 2), ("web:2", 2)));

    let out = r.gantry(&["rollback", &run_id(r.dir.path())], 0).output().unwrap();
    expect_code(&out, 0);
    let (weights, ecs, www, messages) = r.state();
    assert_eq!(weights, (100, 0));
    assert_eq!(ecs, services(("web:1", 2), ("web:1", 0)));
    assert_eq!(www, serde_json::json!(["blue.the7space.example"]));
    assert!(!r.migrated(), "the migration was rolled back too");
    assert!(messages.is_empty(), "no alert was sent by the killed run: {messages:?}");
}

#[test]
fn a_record_the_release_created_is_deleted_by_its_rollback() {
    let aws = Aws::start();
    let route53 = Aws::unchecked_moto();
    let dns = aws.boto3_with("dns-setup", &["--route53", &route53.origin]);
    let dir = tempfile::tempdir().unwrap();
    let o = &route53.origin;
    let yaml = format!(
        "name: new-record\nsecrets:\n  AWS_ACCESS_KEY_ID: {{ from: \"env:TEST_AWS_KEY\", bind: [\"{o}\"] }}\n  AWS_SECRET_ACCESS_KEY: {{ from: \"env:TEST_AWS_SECRET\", bind: [\"{o}\"] }}\nsteps:\n  - id: dns\n    uses: {}\n    network: [\"{o}\"]\n    secrets: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]\n    with: {{ endpoint: \"{o}/\", hosted_zone_id: \"{}\", name: api.the7space.example, values: [green.the7space.example] }}\n{}",
        repo().join("plugins/route53-record").display(),
        dns["zone"].as_str().unwrap(),
        failing_step("smoke", "dns", "post-release check failed")
    );
    let env = [("TEST_AWS_KEY", aws.get("access_key")), ("TEST_AWS_SECRET", aws.get("secret_key"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_pipeline(dir.path(), &yaml, &env, &[]);
    expect_code(&out, 1);
    let events: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let finished = events.iter().find(|e| e["event"] == "step_finished" && e["step"] == "dns").expect("dns ran");
    assert_eq!(finished["outputs"]["previous"], "null", "the record did not exist");
    assert!(events.iter().any(|e| e["event"] == "rolled_back" && e["step"] == "dns"));
    let names = aws.boto3_with("dns-records", &["--route53", &route53.origin]);
    assert!(!names.as_array().unwrap().iter().any(|n| n == "api.the7space.example."), "deleted: {names}");
    assert!(names.as_array().unwrap().iter().any(|n| n == "www.the7space.example."), "the other record stays: {names}");
}

#[test]
fn kill_9_right_after_the_dns_change_then_rollback_restores_the_record_it_replaced() {
    let aws = Aws::start();
    let route53 = Aws::unchecked_moto();
    let dns = aws.boto3_with("dns-setup", &["--route53", &route53.origin]);
    let dir = tempfile::tempdir().unwrap();
    let o = &route53.origin;
    let file = dir.path().join("dns.yaml");
    std::fs::write(
        &file,
        format!(
            "name: dns-kill\nsecrets:\n  AWS_ACCESS_KEY_ID: {{ from: \"env:TEST_AWS_KEY\", bind: [\"{o}\"] }}\n  AWS_SECRET_ACCESS_KEY: {{ from: \"env:TEST_AWS_SECRET\", bind: [\"{o}\"] }}\nsteps:\n  - id: dns\n    uses: {}\n    network: [\"{o}\"]\n    secrets: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]\n    with: {{ endpoint: \"{o}/\", hosted_zone_id: \"{}\", name: www.the7space.example, ttl: 60, values: [green.the7space.example] }}\n  - id: hold\n    uses: {}\n    needs: [dns]\n    timeout: 2m\n    with: {{ action: sleep, ms: 60000 }}\n",
            repo().join("plugins/route53-record").display(),
            dns["zone"].as_str().unwrap(),
            repo().join("tests/plugins/misbehave").display()
        ),
    )
    .unwrap();
    let gantry = |args: &[&str]| {
        let mut cmd = command(&shared_cache());
        cmd.current_dir(dir.path())
            .args(args)
            .env("TEST_AWS_KEY", aws.get("access_key"))
            .env("TEST_AWS_SECRET", aws.get("secret_key"));
        cmd
    };
    let www = || aws.boto3_with("dns-state", &["--route53", &route53.origin])["www"].clone();
    let mut cmd = gantry(&["run", file.to_str().unwrap()]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let path = dir.path().to_path_buf();
    let mut child = spawn_until(&mut cmd, "the step after the DNS change", || {
        journal(&path).iter().any(|e| e["event"] == "step_started" && e["step"] == "hold")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(www(), serde_json::json!(["green.the7space.example"]), "killed after the change");
    let out = gantry(&["rollback", &run_id(dir.path())]).output().unwrap();
    expect_code(&out, 0);
    assert_eq!(www(), serde_json::json!(["blue.the7space.example"]), "the record it replaced, exactly");
    assert_eq!(journal(dir.path()).last().unwrap()["status"], "rolled-back");
}
