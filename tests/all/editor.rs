//! The editor: `gantry schema --pipeline` read by a real editor engine, yaml-language-server 1.x
//! (npm; `scripts/peers-setup` installs it), driven over stdio as an editor drives it.

use crate::support::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A language server on stdio, killed on drop; what it sends arrives on `messages`.
struct Server {
    child: Child,
    stdin: ChildStdin,
    messages: mpsc::Receiver<Value>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Self {
        let bin = repo().join("target/peers/node/node_modules/yaml-language-server/bin/yaml-language-server");
        assert!(bin.exists(), "{} is missing: run scripts/peers-setup", bin.display());
        let mut child = Command::new("node")
            .arg(bin)
            .arg("--stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || loop {
            // LSP framing: headers, a blank line, then Content-Length bytes of JSON.
            let mut length = 0;
            loop {
                let mut line = String::new();
                if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                match line.trim_end().split_once(": ") {
                    Some(("Content-Length", n)) => length = n.parse().unwrap(),
                    None if line.trim_end().is_empty() => break,
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            if stdout.read_exact(&mut body).is_err() || tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        });
        Self { child, stdin, messages }
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next message `wanted` picks, answering the server's own requests on the way (with
    /// `settings` when it asks for configuration).
    fn until(&mut self, settings: &Value, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.messages.recv_timeout(left).expect("the language server answers within a minute");
            if wanted(&message) {
                return message;
            }
            if let (Some(id), Some(method)) = (message.get("id"), message["method"].as_str()) {
                let result = match method {
                    "workspace/configuration" => {
                        let asked = message["params"]["items"].as_array().map_or(0, Vec::len);
                        json!(vec![settings["yaml"].clone(); asked])
                    }
                    _ => Value::Null,
                };
                self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
            }
        }
    }
}

#[test]
fn yaml_language_server_with_the_pipeline_schema_underlines_both_input_typos_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let broken = std::fs::read_to_string(repo().join("tests/pipelines/broken/47-input-typos.yaml")).unwrap();
    let plugin = repo().join("plugins/http-check");
    let text = broken.replace("../../../plugins/http-check", plugin.to_str().unwrap());
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, &text).unwrap();

    let schema_of = |pipeline: &std::path::Path, name: &str| {
        let out = command(&shared_cache()).args(["schema", "--pipeline", pipeline.to_str().unwrap()]).output().unwrap();
        expect_code(&out, 0);
        let schema = dir.path().join(name);
        std::fs::write(&schema, &out.stdout).unwrap();
        schema
    };
    let schema = schema_of(&file, "pipeline.schema.json");
    // A shipped pipeline, whose inputs hold expressions and whose entities swap a step's plugin.
    let gallery = repo().join("pipelines/gallery-release.yaml");
    let gallery_schema = schema_of(&gallery, "gallery.schema.json");
    // Its nine environment × entity plans build each of its six plugin crates once.
    let validated =
        command(&shared_cache()).env("GANTRY_LOG", "debug").args(["validate", gallery.to_str().unwrap()]).output().unwrap();
    expect_code(&validated, 0);
    let log = String::from_utf8_lossy(&validated.stderr);
    let builds: Vec<&str> = log.lines().filter(|l| l.contains("cargo build") && l.contains("crate_dir")).collect();
    assert_eq!(builds.len(), 6, "{builds:#?}");
    // Described once, kept by digest: a second look at the same plugins loads none of them.
    let again =
        command(&shared_cache()).env("GANTRY_LOG", "debug").args(["validate", file.to_str().unwrap()]).output().unwrap();
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(log.contains("expect_statuz") && !log.contains("plugin loaded"), "{log}");

    let uri = |p: &std::path::Path| format!("file://{}", p.display());
    // What an editor's settings say (VS Code: `yaml.schemas` in settings.json).
    let settings = json!({"yaml": {"validate": true, "schemas": {
        uri(&schema): [file.to_str().unwrap()],
        uri(&gallery_schema): [gallery.to_str().unwrap()],
    }}});
    let mut server = Server::start();
    server.send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "processId": null, "rootUri": uri(dir.path()),
        "capabilities": {"workspace": {"configuration": true}, "textDocument": {"publishDiagnostics": {}}},
    }}));
    server.until(&settings, |m| m["id"] == 1 && m.get("result").is_some());
    server.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    server.send(json!({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration", "params": {"settings": settings}}));
    server.send(json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": uri(&file), "languageId": "yaml", "version": 1, "text": text,
    }}}));
    let published = server.until(&settings, |m| {
        m["method"] == "textDocument/publishDiagnostics"
            && m["params"]["uri"] == uri(&file).as_str()
            && m["params"]["diagnostics"].as_array().is_some_and(|d| !d.is_empty())
    });
    let mut found: Vec<(u64, String)> = published["params"]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["range"]["start"]["line"].as_u64().unwrap() + 1, d["message"].as_str().unwrap().to_string()))
        .collect();
    found.sort();
    let lines: Vec<u64> = found.iter().map(|(line, _)| *line).collect();
    // The lines `gantry validate` names for this file (tests/pipelines/broken/expected.txt), and nothing else.
    assert_eq!(lines, [7, 8], "{found:?}");
    for (_, message) in &found {
        assert!(message.contains("not allowed"), "{found:?}");
    }

    // What validate accepts, the editor does not underline.
    server.send(json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": uri(&gallery), "languageId": "yaml", "version": 1, "text": std::fs::read_to_string(&gallery).unwrap(),
    }}}));
    let published = server.until(&settings, |m| {
        m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri(&gallery).as_str()
    });
    assert_eq!(published["params"]["diagnostics"], json!([]), "{published}");
}
