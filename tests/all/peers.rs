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
    request(origin, "GET", path)
}

/// Status and body of a bodiless request.
pub fn request(origin: &str, method: &str, path: &str) -> Option<(u16, String)> {
    let addr = origin.strip_prefix("http://")?;
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").ok()?;
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

/// Starts the peer `make` builds for a free port, and waits until `ready_path` answers as `ours` says
/// this peer answers. Another test's server can take a port between `free_port` and the peer binding
/// it: the peer then exits, and it is started again on another port. An answer that is not yet the
/// peer's own while the peer still runs is waited out: Prometheus answers `/-/ready` with 503 while it
/// opens its storage, which on a loaded runner took long enough for five attempts to give up on it.
pub fn spawn(make: impl Fn(u16) -> Command, ready_path: &str, ours: fn(u16, &str) -> bool) -> Peer {
    for _ in 0..5 {
        let port = free_port();
        let child = make(port).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the peer starts");
        let mut peer = Peer { child, origin: format!("http://127.0.0.1:{port}") };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && peer.child.try_wait().ok().flatten().is_none() {
            match get(&peer.origin, ready_path) {
                Some((status, body)) if ours(status, &body) => return peer,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    panic!("the peer did not start on any of 5 ports (answering {ready_path})");
}

/// moto's server with signature checking on, and what `tests/peers/aws.py setup` made in it.
pub struct Aws {
    /// The server.
    pub moto: Peer,
    /// access_key, secret_key, listener, blue, green.
    pub setup: Value,
}

impl Aws {
    /// A second moto server without IAM users, so it checks no signature: moto 5 refuses every Route 53
    /// `GET` once signatures are checked, even boto3's own, so Route 53 is tested against this one.
    pub fn unchecked_moto() -> Peer {
        spawn(
            |port| {
                let mut cmd = Command::new(venv("moto_server"));
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                cmd
            },
            "/moto-api/data.json",
            |status, body| status == 200 && body.trim_start().starts_with('{'),
        )
    }

    /// Starts moto (only the three IAM calls of the setup go unsigned) and creates the load balancer,
    /// with two healthy targets in each group.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`Aws::start`], with extra arguments to `aws.py setup` (e.g. `--no-green-targets`).
    pub fn start_with(args: &[&str]) -> Self {
        let moto = spawn(
            |port| {
                let mut cmd = Command::new(venv("moto_server"));
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
                cmd
            },
            "/moto-api/data.json",
            |status, body| status == 200 && body.trim_start().starts_with('{'),
        );
        Self::setup_with(moto, args)
    }

    /// The setup of [`Aws::start`] made in a moto already running (one that checks no signature).
    pub fn setup_at(moto: Peer) -> Self {
        Self::setup_with(moto, &[])
    }

    fn setup_with(moto: Peer, args: &[&str]) -> Self {
        let out = aws_py(["setup", "--endpoint", moto.origin.as_str()].into_iter().chain(args.iter().copied()));
        Self { moto, setup: serde_json::from_str(&out).unwrap() }
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

    /// `aws.py <command>` with the setup's key; its JSON output.
    pub fn boto3(&self, command: &str) -> Value {
        self.boto3_with(command, &[])
    }

    /// `aws.py <command> <extra>` with the setup's key; its JSON output.
    pub fn boto3_with(&self, command: &str, extra: &[&str]) -> Value {
        let (key, secret) = (self.get("access_key"), self.get("secret_key"));
        let args = [command, "--endpoint", &self.moto.origin, "--key", &key, "--secret", &secret];
        serde_json::from_str(&aws_py(args.into_iter().chain(extra.iter().copied()))).unwrap()
    }

    /// Creates a Secrets Manager secret with boto3, signed with the setup's key.
    pub fn put_secret(&self, name: &str, value: &str) {
        let (key, secret) = (self.get("access_key"), self.get("secret_key"));
        aws_py(["put-secret", "--endpoint", &self.moto.origin, "--key", &key, "--secret", &secret, "--name", name, "--value", value]);
    }

    /// The listener's weights as `[(arn, weight)]`, read with boto3.
    pub fn weights(&self) -> Vec<(String, u64)> {
        let auth = self.auth_args();
        let v: Value = serde_json::from_str(&aws_py(["weights"].into_iter().chain(auth.iter().map(String::as_str)))).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| (w["arn"].as_str().unwrap().to_string(), w["weight"].as_u64().unwrap()))
            .collect()
    }

    /// Sets the listener's weights with boto3, so one load balancer serves several runs in turn.
    pub fn set_weights(&self, blue: u64, green: u64) {
        let (auth, groups) = (self.auth_args(), [self.get("blue"), self.get("green")]);
        let (blue, green) = (blue.to_string(), green.to_string());
        let weights = ["--blue", &groups[0], "--green", &groups[1], "--blue-weight", &blue, "--green-weight", &green];
        aws_py(["set-weights"].into_iter().chain(auth.iter().map(String::as_str)).chain(weights));
    }

    /// Stops one of green's instances: its target is no longer healthy.
    pub fn stop_green_instance(&self) {
        let id = self.setup["green_instances"][0].as_str().unwrap().to_string();
        let auth = self.auth_args();
        aws_py(["stop"].into_iter().chain(auth.iter().map(String::as_str)).chain(["--instance", id.as_str()]));
    }

    /// The canary's `/metrics` and `/health`; with `broken_green`, errors follow green's share of traffic.
    pub fn metrics(&self, broken_green: bool) -> Peer {
        let make = |port: u16| {
            let mut cmd = Command::new(venv("python"));
            cmd.arg(aws_py_file()).arg("serve").args(self.auth_args()).args(["--green", &self.get("green")]);
            cmd.args(["--port", &port.to_string()]);
            if broken_green {
                cmd.arg("--broken-green");
            }
            cmd
        };
        spawn(make, "/metrics", |status, body| status == 200 && body.contains("http_requests_total"))
    }
}

fn aws_py_file() -> PathBuf {
    repo().join("tests/peers/aws.py")
}

/// An `aws.py worker`: one Python with boto3 imported, running short commands sent on its stdin.
struct Boto3Worker {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

/// Idle workers. Each command takes one (or starts one), so tests never wait on each other's
/// commands; they exit when the test binary does, as their stdin closes.
static BOTO3_WORKERS: std::sync::Mutex<Vec<Boto3Worker>> = std::sync::Mutex::new(Vec::new());

/// `aws.py <args>`, run by a worker; its stdout. Fails the test with its errors when it fails.
fn aws_py<'a>(args: impl IntoIterator<Item = &'a str>) -> String {
    use std::io::BufRead;
    let args: Vec<&str> = args.into_iter().collect();
    let idle = BOTO3_WORKERS.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut worker = idle.unwrap_or_else(|| {
        let mut child = Command::new(venv("python"))
            .arg(aws_py_file())
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("aws.py worker starts");
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        Boto3Worker { child, stdin, stdout: std::io::BufReader::new(stdout) }
    });
    writeln!(worker.stdin, "{}", serde_json::to_string(&args).unwrap()).unwrap();
    worker.stdin.flush().unwrap();
    let mut line = String::new();
    worker.stdout.read_line(&mut line).unwrap();
    let answer: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let _ = worker.child.kill();
        panic!("aws.py worker gave no answer to {args:?} ({e}): {line}")
    });
    assert_eq!(answer["code"], 0, "aws.py {}: {}", args.join(" "), answer["stderr"].as_str().unwrap_or_default());
    BOTO3_WORKERS.lock().unwrap_or_else(|e| e.into_inner()).push(worker);
    answer["stdout"].as_str().unwrap_or_default().to_string()
}

/// Prometheus scraping `target` every 500 ms, with its data in `dir`.
pub fn prometheus(target: &Peer, dir: &std::path::Path) -> Peer {
    prometheus_scraping(&target.origin, dir)
}

/// Prometheus scraping `origin`'s `/metrics` every 500 ms, its data under `dir`.
pub fn prometheus_scraping(origin: &str, dir: &std::path::Path) -> Peer {
    let config = dir.join("prometheus.yml");
    let target = origin.trim_start_matches("http://");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: canary\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let make = |port: u16| {
        let mut cmd = Command::new("prometheus");
        // A data dir per attempt: an attempt given up on must not leave its TSDB lock to the next.
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join(format!("data-{port}")).display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h");
        cmd
    };
    spawn(make, "/-/ready", |status, body| status == 200 && body.contains("Prometheus"))
}

/// Waits until Prometheus at `prom` has scraped enough for `query` (a rate needs two scrapes) to answer.
pub fn wait_for_data(prom: &str, query: &str) {
    let query: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < until {
        if get(prom, &format!("/api/v1/query?query={query}")).is_some_and(|(_, b)| b.contains("\"value\"")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("prometheus has no data for {query} after 30 s");
}

/// An OTLP/HTTP trace receiver decoding with OpenTelemetry's own protobuf definitions
/// (`tests/peers/otlp.py`).
pub fn otlp() -> Peer {
    let make = |port: u16| {
        let mut cmd = Command::new(venv("python"));
        cmd.arg(repo().join("tests/peers/otlp.py")).args(["--port", &port.to_string()]);
        cmd
    };
    spawn(make, "/_spans", |status, body| status == 200 && body.starts_with('['))
}

/// Every span `receiver` decoded, as JSON, and every request body it got (hex).
pub fn otlp_received(receiver: &Peer) -> (Vec<serde_json::Value>, Vec<String>) {
    let read = |path: &str| get(&receiver.origin, path).map(|(_, body)| serde_json::from_str(&body).unwrap()).unwrap();
    let spans: serde_json::Value = read("/_spans");
    let raw: Vec<String> = serde_json::from_value(read("/_raw")).unwrap();
    (spans.as_array().cloned().unwrap_or_default(), raw)
}

/// The Notion stand-in (`tests/peers/notion.py`) with its token, data source and extra flags.
pub fn notion(token: &str, data_source: &str, flags: &[&str]) -> Peer {
    let make = |port: u16| {
        let mut cmd = Command::new(venv("python"));
        cmd.arg(repo().join("tests/peers/notion.py")).args(["--port", &port.to_string(), "--token", token]);
        cmd.args(["--data-source", data_source]).args(flags);
        cmd
    };
    spawn(make, "/_state", |status, body| status == 200 && body.contains("\"pages\""))
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
        if !out.status.success() || wp.app_password.is_empty() {
            // The script sends each program's output to a log in its directory: show their ends.
            let logs: Vec<String> = ["install.log", "mysqld.log", "php-install.log", "php.log"]
                .iter()
                .map(|log| {
                    let text = std::fs::read_to_string(wp.dir.path().join("wp").join(log)).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                    format!("--- {log}:\n{}", tail.join("\n"))
                })
                .collect();
            panic!("wordpress.sh exited {:?}: {}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr), logs.join("\n"));
        }
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

/// A throw-away PostgreSQL server on 127.0.0.1 (Debian's `postgresql` package), stopped on drop.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    /// Keeps the directory until the server is stopped.
    _dir: tempfile::TempDir,
    /// The port it listens on.
    pub port: u16,
}

impl Postgres {
    /// `initdb` into a temporary directory and `pg_ctl start`; as root, both run as the `postgres` user,
    /// since initdb refuses to run as root.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// As [`Postgres::start`], offering TLS with this certificate and key (STARTTLS by `SSLRequest`).
    pub fn start_with_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::start_inner(Some((cert, key)))
    }

    fn start_inner(tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/peers-setup)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").exists())
            .expect("an initdb under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
        let data = dir.path().join("pg");
        std::fs::create_dir(&data).unwrap();
        if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            assert!(Command::new("chown").args(["postgres"]).arg(&data).status().unwrap().success());
        }
        let run = |program: &str, args: &[&str]| {
            let mut cmd = if root { Command::new("runuser") } else { Command::new(bin.join(program)) };
            if root {
                cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
            }
            let out = cmd.args(args).output().unwrap();
            assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let cluster = data.join("data");
        let (cluster_s, data_s) = (cluster.to_str().unwrap(), data.to_str().unwrap());
        run("initdb", &["-D", cluster_s, "-A", "trust", "-U", "gantry"]);
        let port = free_port();
        let mut options = format!("-p {port} -k {data_s} -c listen_addresses=127.0.0.1 -c fsync=on");
        if let Some((cert, key)) = tls {
            // The server reads its key only when the server's user owns it and no one else can.
            let (c, k) = (data.join("server.crt"), data.join("server.key"));
            std::fs::copy(cert, &c).unwrap();
            std::fs::copy(key, &k).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
            if root {
                assert!(Command::new("chown").arg("postgres").arg(&c).arg(&k).status().unwrap().success());
            }
            options += &format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", c.display(), k.display());
        }
        let log = data.join("log");
        run("pg_ctl", &["-D", cluster_s, "-o", &options, "-l", log.to_str().unwrap(), "-w", "start"]);
        Self { bin, data: cluster, _dir: dir, port }
    }

    /// The directory of the server's binaries (`psql` among them).
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    /// The URL gantry takes as `--state`.
    pub fn url(&self) -> String {
        format!("postgres://gantry@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL through `psql` and returns the rows, `|`-separated: an independent read of the store.
    pub fn query(&self, sql: &str) -> Vec<String> {
        self.query_in("postgres", sql)
    }

    /// As [`Postgres::query`], in database `db`.
    pub fn query_in(&self, db: &str, sql: &str) -> Vec<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "gantry", "-d", db, "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data.to_str().unwrap().to_string();
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
        let mut cmd = if root { Command::new("runuser") } else { Command::new(&pg_ctl) };
        if root {
            cmd.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        }
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// The CNCF distribution registry (Debian's `docker-registry`) with a throw-away storage directory.
pub struct Registry {
    /// The server.
    pub peer: Peer,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free port, plain HTTP on 127.0.0.1.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a registry that lets in only `user` with `password` (htpasswd, bcrypt).
    pub fn start_with_password(user: &str, password: &str) -> Self {
        Self::start_with(Some(format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap())))
    }

    fn start_with(htpasswd: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let auth = match htpasswd {
            Some(line) => {
                let file = root.join("htpasswd");
                std::fs::write(&file, line).unwrap();
                format!("auth:\n  htpasswd:\n    realm: gantry-tests\n    path: {}\n", file.display())
            }
            None => String::new(),
        };
        let peer = spawn(
            move |port| {
                let config = root.join(format!("config-{port}.yml"));
                let text = format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                    root.join("storage").display()
                );
                std::fs::write(&config, text).unwrap();
                let mut cmd = Command::new("docker-registry");
                cmd.arg("serve").arg(config);
                cmd
            },
            "/v2/",
            |status, body| (status == 200 && body.trim() == "{}") || (status == 401 && body.contains("UNAUTHORIZED")),
        );
        Self { peer, dir }
    }

    /// `oci://127.0.0.1:PORT/<path>`.
    pub fn oci(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.peer.origin.trim_start_matches("http://"))
    }

    /// The file the registry keeps a blob in, as the filesystem driver lays it out.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

/// The Vault stand-in (`tests/peers/vault.py`), proven against hvac and node-vault in `tests/all/vault.rs`.
pub struct Vault {
    /// The server.
    pub peer: Peer,
}

impl Vault {
    /// Starts it with these flags (`--token`, `--role-id`, `--seed`, ...); over HTTPS with `tls`
    /// (certificate, key), then ready once it accepts connections.
    pub fn start(flags: &[&str], tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let make = |port: u16| {
            let mut cmd = Command::new(venv("python"));
            cmd.arg(repo().join("tests/peers/vault.py")).args(["--port", &port.to_string()]).args(flags);
            if let Some((cert, key)) = tls {
                cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            }
            cmd
        };
        let Some(_) = tls else {
            return Self {
                peer: spawn(make, "/v1/sys/health", |status, body| status == 200 && body.contains("stand-in")),
            };
        };
        let port = free_port();
        let child = make(port).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the peer starts");
        let peer = Peer { child, origin: format!("https://127.0.0.1:{port}") };
        let until = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "the Vault stand-in did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { peer }
    }

    /// Every request it received: method, path, headers (lower-case names).
    pub fn requests(&self) -> Vec<Value> {
        // Read with Python's client, which speaks TLS without trusting anything (it is the test's own log).
        let read = "import ssl, sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1] + '/_state', context=ssl._create_unverified_context()).read().decode())";
        let out = Command::new(venv("python")).args(["-c", read, &self.peer.origin]).output().unwrap();
        assert!(out.status.success(), "the stand-in's log: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["requests"].as_array().unwrap().clone()
    }
}

/// A throw-away MariaDB server on 127.0.0.1 (Debian's `mariadb-server`) with database `app` and a
/// password user `deploy`, stopped on drop; `root` reads it back over the socket.
pub struct MariaDb {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    /// The port it listens on.
    pub port: u16,
}

impl MariaDb {
    /// `mariadb-install-db` into a temporary directory, `mariadbd` on a free port, then the user.
    pub fn start(password: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("db");
        let socket = dir.path().join("mysqld.sock");
        // Its own temporary directory: a temporary table in the shared /tmp was once gone before
        // the bootstrap deleted it ("Error on delete of '/tmp/#sql-temptable-…'").
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=socket", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .expect("MariaDB is installed (scripts/peers-setup)");
        assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let db = Self { child, socket, _dir: dir, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !(db.socket.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            assert!(std::time::Instant::now() < deadline, "mariadbd did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        db.query(&format!(
            "CREATE DATABASE app; CREATE USER 'deploy'@'127.0.0.1' IDENTIFIED BY '{password}'; \
             GRANT ALL ON app.* TO 'deploy'@'127.0.0.1'"
        ));
        db
    }

    /// Runs SQL as root over the socket and returns the rows, tab-separated: an independent read.
    pub fn query(&self, sql: &str) -> Vec<String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-e", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "mariadb: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TLS servers on 127.0.0.1 (`tests/peers/tls.py`), one port per certificate, stopped on drop.
pub struct TlsServers {
    _peer: Peer,
    /// Port of each listener by name.
    pub ports: std::collections::BTreeMap<String, u16>,
}

impl TlsServers {
    /// Serves each `(name, certificate, key, flags)`; flags are `tls1.0` and `weak-headers`.
    pub fn start(servers: &[(&str, &std::path::Path, &std::path::Path, &[&str])]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/peers/tls.py"));
        for (name, cert, key, flags) in servers {
            let mut spec = format!("{name}={},{}", cert.display(), key.display());
            for f in *flags {
                spec += &format!(",{f}");
            }
            cmd.args(["--serve", &spec]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let peer = Peer { child, origin: String::new() };
        let mut ports = std::collections::BTreeMap::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let line = line.expect("the TLS servers print their ports");
            if line == "ready" {
                return Self { _peer: peer, ports };
            }
            let (name, port) = line.split_once(' ').expect("NAME PORT");
            ports.insert(name.to_string(), port.parse().unwrap());
        }
        panic!("the TLS servers exited before they were ready");
    }
}

/// `dnsmasq` (Debian's `dnsmasq-base`) answering for a local zone on 127.0.0.1 from its command line
/// and a hosts file it rereads on SIGHUP; nothing forwarded, stopped on drop.
pub struct Dnsmasq {
    peer: Peer,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
    /// The port it answers on (UDP and TCP).
    pub port: u16,
}

impl Dnsmasq {
    /// Serves `records` (dnsmasq options such as `--host-record=www.example,127.0.0.1`) and names
    /// in `hosts` lines (`127.0.0.2 green.example`); names under `local` it does not know are NXDOMAIN.
    pub fn start(local: &str, records: &[String], hosts: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new("dnsmasq");
            cmd.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args(["--listen-address=127.0.0.1", "--pid-file=", "--user=root", "--group=root"])
            .arg(format!("--port={port}"))
            .arg(format!("--local=/{local}/"))
            .arg(format!("--addn-hosts={}", file.display()))
            .args(records);
            let child =
                cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("dnsmasq runs (scripts/peers-setup)");
            let mut peer = Peer { child, origin: format!("dns://127.0.0.1:{port}") };
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && peer.child.try_wait().ok().flatten().is_none() {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { peer, hosts: file, _dir: dir, port };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("dnsmasq did not start on any of 5 ports");
    }

    /// Replaces the hosts file and has dnsmasq reread it, as a DNS change lands.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let pid = self.peer.child.id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }

    /// Its address as a step's `resolver:` names it.
    pub fn resolver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A throw-away Redis (Debian's `redis-server`) on 127.0.0.1 with a password, no persistence,
/// stopped on drop; `cli` reads it back with `redis-cli`, not through gantry.
pub struct Redis {
    child: Child,
    _dir: tempfile::TempDir,
    /// The port it listens on.
    pub port: u16,
    password: String,
}

impl Redis {
    /// `redis-server` on a free port, requiring `password`.
    pub fn start(password: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", password])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Redis is installed (scripts/peers-setup)");
        let redis = Self { child, _dir: dir, port, password: password.to_string() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while redis.try_cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        redis
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-a", &self.password, "--no-auth-warning"])
            .args(args)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Runs a command with `redis-cli` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Sends commands through `redis-cli --pipe`, for seeding many keys at once.
    pub fn pipe(&self, commands: &str) {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-a", &self.password, "--no-auth-warning", "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(commands.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "redis-cli --pipe failed");
    }

    /// Waits until the server has closed every connection but the asking `redis-cli`'s: a killed
    /// client's commands already on the wire are served before its connection is seen to close.
    pub fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let info = self.cli(&["INFO", "clients"]);
            let connected = info.lines().find_map(|l| l.trim().strip_prefix("connected_clients:")).unwrap_or("0");
            if connected == "1" {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the server still has clients:\n{info}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The origin a secret is bound to.
    pub fn origin(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
