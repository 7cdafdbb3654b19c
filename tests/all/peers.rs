//! Real peers on 127.0.0.1, each a child process stopped when its guard drops:
//! moto's AWS server, Prometheus, and the canary's metrics endpoint.
//! `scripts/peers-setup` installs them (the test command runs it).

use crate::support::repo;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct Peer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Status and body of a plain GET.
pub fn get(origin: &str, path: &str) -> Option<(u16, String)> {
    let addr = origin.strip_prefix("http://")?;
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

pub fn venv(bin: &str) -> PathBuf {
    let path = repo().join("target/peers/venv/bin").join(bin);
    assert!(path.exists(), "{} is missing: run scripts/peers-setup", path.display());
    path
}

pub fn spawn(mut cmd: Command, port: u16, ready_path: &str) -> Peer {
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the peer starts");
    let peer = Peer { child, origin: format!("http://127.0.0.1:{port}") };
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if get(&peer.origin, ready_path).is_some_and(|(s, _)| s < 500) {
            return peer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} did not answer {ready_path} within 30 s", peer.origin);
}

/// moto's server with signature checking on, and what `tests/peers/aws.py setup` made in it.
pub struct Aws {
    /// The server.
    pub moto: Peer,
    /// access_key, secret_key, listener, blue, green.
    pub setup: Value,
}

impl Aws {
    /// Starts moto (only the three IAM calls of the setup go unsigned) and creates the load balancer.
    pub fn start() -> Self {
        let port = free_port();
        let mut cmd = Command::new(venv("moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        let moto = spawn(cmd, port, "/moto-api/");
        let out =
            Command::new(venv("python")).arg(aws_py()).args(["setup", "--endpoint", &moto.origin]).output().unwrap();
        assert!(out.status.success(), "aws.py setup: {}", String::from_utf8_lossy(&out.stderr));
        Self { moto, setup: serde_json::from_slice(&out.stdout).unwrap() }
    }

    /// A field of the setup.
    pub fn get(&self, key: &str) -> String {
        self.setup[key].as_str().unwrap().to_string()
    }

    fn auth_args(&self) -> Vec<String> {
        ["--endpoint", &self.moto.origin, "--key", &self.get("access_key"), "--secret", &self.get("secret_key")]
            .iter()
            .map(|s| s.to_string())
            .chain(["--listener".to_string(), self.get("listener")])
            .collect()
    }

    /// The listener's weights as `[(arn, weight)]`, read with boto3.
    pub fn weights(&self) -> Vec<(String, u64)> {
        let out = Command::new(venv("python")).arg(aws_py()).arg("weights").args(self.auth_args()).output().unwrap();
        assert!(out.status.success(), "aws.py weights: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| (w["arn"].as_str().unwrap().to_string(), w["weight"].as_u64().unwrap()))
            .collect()
    }

    /// The canary's `/metrics` and `/health`; with `broken_green`, errors follow green's share of traffic.
    pub fn metrics(&self, broken_green: bool) -> Peer {
        let port = free_port();
        let mut cmd = Command::new(venv("python"));
        cmd.arg(aws_py()).arg("serve").args(self.auth_args()).args(["--green", &self.get("green")]);
        cmd.args(["--port", &port.to_string()]);
        if broken_green {
            cmd.arg("--broken-green");
        }
        spawn(cmd, port, "/health")
    }
}

fn aws_py() -> PathBuf {
    repo().join("tests/peers/aws.py")
}

/// Prometheus scraping `target` every 500 ms, with its data in `dir`.
pub fn prometheus(target: &Peer, dir: &std::path::Path) -> Peer {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    let target = target.origin.trim_start_matches("http://");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: canary\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=1h");
    spawn(cmd, port, "/-/ready")
}

/// The Notion stand-in (`tests/peers/notion.py`) with its token, data source and extra flags.
pub fn notion(token: &str, data_source: &str, flags: &[&str]) -> Peer {
    let port = free_port();
    let mut cmd = Command::new(venv("python"));
    cmd.arg(repo().join("tests/peers/notion.py")).args(["--port", &port.to_string(), "--token", token]);
    cmd.args(["--data-source", data_source]).args(flags);
    spawn(cmd, port, "/_state")
}

/// A real WordPress on 127.0.0.1 (`tests/peers/wordpress.sh`); its process groups are killed on drop.
pub struct WordPress {
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    /// The admin's application password.
    pub app_password: String,
}

impl WordPress {
    /// Installs and serves a fresh site whose webhook checks signatures with `webhook_secret`.
    pub fn start(webhook_secret: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = Command::new(repo().join("tests/peers/wordpress.sh"))
            .arg(dir.path().join("wp"))
            .arg(port.to_string())
            .arg(webhook_secret)
            .stderr(Stdio::piped())
            .output()
            .expect("tests/peers/wordpress.sh runs (scripts/peers-setup installs WordPress)");
        let wp = Self {
            dir,
            origin: format!("http://127.0.0.1:{port}"),
            app_password: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        };
        assert!(
            out.status.success() && !wp.app_password.is_empty(),
            "wordpress.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if get(&wp.origin, "/wp-json/").is_some_and(|(s, _)| s == 200) {
                return wp;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("WordPress did not answer /wp-json/ within 30 s");
    }
}

impl Drop for WordPress {
    fn drop(&mut self) {
        // `php -S` workers outlive a signal to their parent: stop each process group.
        let pgids = std::fs::read_to_string(self.dir.path().join("wp/pgids")).unwrap_or_default();
        for signal in ["-TERM", "-KILL"] {
            for pgid in pgids.lines().filter(|l| !l.trim().is_empty()) {
                let _ = Command::new("kill")
                    .args([signal, "--", &format!("-{}", pgid.trim())])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
