//! `vault:` secret sources and fallback chains. The Vault stand-in (`tests/peers/vault.py`) is
//! first proven against Vault's official clients, `hvac` (PyPI) and `node-vault` (npm): what they
//! write and read, how they sign in, how they fail. Then gantry reads what hvac wrote, by token and
//! by AppRole, in a namespace, over TLS with a CA the test made; and a chain whose first source is
//! unreachable is answered by its second, the journal saying which, never the value.

use crate::certs::Ca;
use crate::peers::{free_port, venv, Aws, Vault};
use crate::support::*;
use std::path::Path;
use std::process::Command;

const ROOT: &str = "root-tok-5e1f";
const ROLE_ID: &str = "role-8c2d";
const SECRET_ID: &str = "sid-a41b99";
const PASSWORD: &str = "vault-pw-3f9c0e";
const SM_PASSWORD: &str = "sm-pw-7d21aa";

/// Runs `code` with hvac against `vault`; its stdout's last line as JSON.
fn hvac(vault: &Vault, code: &str) -> serde_json::Value {
    let out = Command::new(venv("python")).args(["-c", code]).env("VAULT_ADDR", &vault.peer.origin).output().unwrap();
    assert!(out.status.success(), "hvac: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

/// Runs `code` with node-vault against `vault`; its stdout's last line as JSON.
fn node_vault(vault: &Vault, code: &str) -> serde_json::Value {
    let modules = repo().join("target/peers/node/node_modules");
    assert!(modules.join("node-vault").exists(), "node-vault is missing: run scripts/peers-setup");
    let out = Command::new("node")
        .args(["-e", code])
        .env("NODE_PATH", modules)
        .env("VAULT_ADDR", &vault.peer.origin)
        .output()
        .unwrap();
    assert!(out.status.success(), "node-vault: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

#[test]
fn the_stand_in_answers_hvac_and_node_vault_as_vault_does() {
    let vault = Vault::start(
        &[
            "--token",
            ROOT,
            "--role-id",
            ROLE_ID,
            "--secret-id",
            SECRET_ID,
            "--policy",
            "kv/data/prod/",
            "--namespace",
            "team-a",
        ],
        None,
    );
    let said = hvac(
        &vault,
        &format!(
            r#"
import hvac, json, os
c = hvac.Client(url=os.environ["VAULT_ADDR"], token="{ROOT}", namespace="team-a")
out = {{"authenticated": c.is_authenticated()}}
w = c.secrets.kv.v2.create_or_update_secret(path="prod/db", mount_point="kv", secret={{"password": "{PASSWORD}", "port": 5432}})
out["written"] = w["data"]["version"]
c.secrets.kv.v2.create_or_update_secret(path="prod/db", mount_point="kv", secret={{"password": "{PASSWORD}", "user": "app"}}, cas=1)
r = c.secrets.kv.v2.read_secret_version(path="prod/db", mount_point="kv", raise_on_deleted_version=True)
out["read"] = r["data"]["data"]; out["version"] = r["data"]["metadata"]["version"]
out["first"] = c.secrets.kv.v2.read_secret_version(path="prod/db", mount_point="kv", version=1, raise_on_deleted_version=True)["data"]["data"]
try:
    c.secrets.kv.v2.create_or_update_secret(path="prod/db", mount_point="kv", secret={{"x": "y"}}, cas=1)
except hvac.exceptions.InvalidRequest as e:
    out["cas"] = str(e)
try:
    c.secrets.kv.v2.read_secret_version(path="prod/none", mount_point="kv", raise_on_deleted_version=True)
except hvac.exceptions.InvalidPath:
    out["missing"] = "InvalidPath"
c.secrets.kv.v2.create_or_update_secret(path="prod/old", mount_point="kv", secret={{"k": "v"}})
c.secrets.kv.v2.delete_latest_version_of_secret(path="prod/old", mount_point="kv")
try:
    c.secrets.kv.v2.read_secret_version(path="prod/old", mount_point="kv", raise_on_deleted_version=True)
except hvac.exceptions.InvalidPath:
    out["deleted"] = "InvalidPath"
c.secrets.kv.v2.create_or_update_secret(path="ops/other", mount_point="kv", secret={{"k": "v"}})
a = hvac.Client(url=os.environ["VAULT_ADDR"], namespace="team-a")
login = a.auth.approle.login(role_id="{ROLE_ID}", secret_id="{SECRET_ID}")
out["approle_token"] = login["auth"]["client_token"].startswith("hvs.")
out["approle_read"] = a.secrets.kv.v2.read_secret_version(path="prod/db", mount_point="kv", raise_on_deleted_version=True)["data"]["data"]["user"]
try:
    a.secrets.kv.v2.read_secret_version(path="ops/other", mount_point="kv", raise_on_deleted_version=True)
except hvac.exceptions.Forbidden:
    out["out_of_policy"] = "Forbidden"
try:
    hvac.Client(url=os.environ["VAULT_ADDR"], namespace="team-a").auth.approle.login(role_id="{ROLE_ID}", secret_id="wrong")
except hvac.exceptions.InvalidRequest as e:
    out["bad_login"] = str(e)
out["bad_token"] = hvac.Client(url=os.environ["VAULT_ADDR"], token="nope", namespace="team-a").is_authenticated()
try:
    hvac.Client(url=os.environ["VAULT_ADDR"], token="{ROOT}").secrets.kv.v2.read_secret_version(path="prod/db", mount_point="kv", raise_on_deleted_version=True)
except hvac.exceptions.InvalidPath as e:
    out["no_namespace"] = str(e)
print(json.dumps(out))
"#
        ),
    );
    assert_eq!(said["authenticated"], true, "{said}");
    assert_eq!(said["written"], 1, "{said}");
    assert_eq!(said["version"], 2, "{said}");
    assert_eq!(said["read"], serde_json::json!({"password": PASSWORD, "user": "app"}), "{said}");
    assert_eq!(said["first"]["port"], 5432, "{said}");
    assert!(said["cas"].as_str().unwrap().contains("check-and-set"), "{said}");
    assert_eq!(said["missing"], "InvalidPath", "{said}");
    assert_eq!(said["deleted"], "InvalidPath", "{said}");
    assert_eq!(said["approle_token"], true, "{said}");
    assert_eq!(said["approle_read"], "app", "{said}");
    assert_eq!(said["out_of_policy"], "Forbidden", "{said}");
    assert!(said["bad_login"].as_str().unwrap().contains("invalid role or secret ID"), "{said}");
    assert_eq!(said["bad_token"], false, "{said}");
    assert!(said["no_namespace"].as_str().unwrap().contains("no handler for route"), "{said}");

    // node-vault reads what hvac wrote, signs in with AppRole, and writes what hvac then reads.
    let said = node_vault(
        &vault,
        &format!(
            r#"
const vault = require("node-vault");
(async () => {{
  const out = {{}};
  const root = vault({{ apiVersion: "v1", endpoint: process.env.VAULT_ADDR, token: "{ROOT}", namespace: "team-a" }});
  out.read = (await root.read("kv/data/prod/db")).data.data;
  await root.write("kv/data/prod/api", {{ data: {{ key: "from-node" }} }});
  const app = vault({{ apiVersion: "v1", endpoint: process.env.VAULT_ADDR, namespace: "team-a" }});
  const login = await app.approleLogin({{ role_id: "{ROLE_ID}", secret_id: "{SECRET_ID}" }});
  out.token = login.auth.client_token.startsWith("hvs.");
  out.approle = (await app.read("kv/data/prod/api")).data.data.key;
  try {{ await app.read("kv/data/ops/other"); }} catch (e) {{ out.denied = e.response.statusCode; }}
  try {{ await root.read("kv/data/prod/none"); }} catch (e) {{ out.missing = e.response.statusCode; }}
  console.log(JSON.stringify(out));
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#
        ),
    );
    assert_eq!(said["read"], serde_json::json!({"password": PASSWORD, "user": "app"}), "{said}");
    assert_eq!(said["token"], true, "{said}");
    assert_eq!(said["approle"], "from-node", "{said}");
    assert_eq!(said["denied"], 403, "{said}");
    assert_eq!(said["missing"], 404, "{said}");
    let check = hvac(
        &vault,
        &format!(
            r#"
import hvac, json, os
c = hvac.Client(url=os.environ["VAULT_ADDR"], token="{ROOT}", namespace="team-a")
print(json.dumps(c.secrets.kv.v2.read_secret_version(path="prod/api", mount_point="kv", raise_on_deleted_version=True)["data"]["data"]))
"#
        ),
    );
    assert_eq!(check, serde_json::json!({"key": "from-node"}));
}

/// A pipeline whose one step sends `DB` as a bearer token to `server`; `stores` and `from` as given.
#[test]
fn the_stand_in_answers_the_metadata_api_as_vault_does() {
    let vault = Vault::start(&["--token", ROOT, "--policy", "kv/data/prod/"], None);
    // hvac writes two versions, reads the metadata, lists, soft-deletes and destroys versions.
    let said = hvac(
        &vault,
        &format!(
            r#"
import hvac, json, os
c = hvac.Client(url=os.environ["VAULT_ADDR"], token="{ROOT}")
kv = c.secrets.kv.v2
kv.create_or_update_secret(path="prod/db", secret={{"password": "one"}}, mount_point="kv")
kv.create_or_update_secret(path="prod/db", secret={{"password": "two"}}, mount_point="kv")
kv.create_or_update_secret(path="prod/web/tls", secret={{"key": "k"}}, mount_point="kv")
out = {{}}
m = kv.read_secret_metadata(path="prod/db", mount_point="kv")["data"]
out["current"] = m["current_version"]
out["versions"] = sorted(m["versions"])
out["list"] = kv.list_secrets(path="prod", mount_point="kv")["data"]["keys"]
kv.delete_secret_versions(path="prod/db", versions=[1], mount_point="kv")
out["deleted"] = kv.read_secret_metadata(path="prod/db", mount_point="kv")["data"]["versions"]["1"]["deletion_time"] != ""
try:
    kv.read_secret_version(path="prod/db", version=1, mount_point="kv", raise_on_deleted_version=True)
except hvac.exceptions.InvalidPath:
    out["v1"] = "gone"
kv.undelete_secret_versions(path="prod/db", versions=[1], mount_point="kv")
out["undeleted"] = kv.read_secret_version(path="prod/db", version=1, mount_point="kv", raise_on_deleted_version=True)["data"]["data"]
kv.destroy_secret_versions(path="prod/db", versions=[2], mount_point="kv")
out["destroyed"] = kv.read_secret_metadata(path="prod/db", mount_point="kv")["data"]["versions"]["2"]["destroyed"]
try:
    kv.read_secret_metadata(path="prod/none", mount_point="kv")
except hvac.exceptions.InvalidPath:
    out["missing"] = 404
print(json.dumps(out))
"#
        ),
    );
    assert_eq!(said["current"], 2, "{said}");
    assert_eq!(said["versions"], serde_json::json!(["1", "2"]), "{said}");
    assert_eq!(said["list"], serde_json::json!(["db", "web/"]), "{said}");
    assert_eq!((said["deleted"].as_bool(), said["v1"].as_str()), (Some(true), Some("gone")), "{said}");
    assert_eq!(said["undeleted"], serde_json::json!({"password": "one"}), "{said}");
    assert_eq!(said["destroyed"], true, "{said}");
    assert_eq!(said["missing"], 404, "{said}");

    // node-vault reads the same metadata and list, then deletes the secret with all its versions,
    // which hvac sees gone.
    let said = node_vault(
        &vault,
        &format!(
            r#"
const vault = require("node-vault");
(async () => {{
  const out = {{}};
  const root = vault({{ apiVersion: "v1", endpoint: process.env.VAULT_ADDR, token: "{ROOT}" }});
  const m = (await root.read("kv/metadata/prod/db")).data;
  out.current = m.current_version;
  out.oldest = m.oldest_version;
  out.list = (await root.list("kv/metadata/prod")).data.keys;
  await root.write("kv/delete/prod/web/tls", {{ versions: [1] }});
  try {{ await root.read("kv/data/prod/web/tls"); }} catch (e) {{ out.soft = e.response.statusCode; }}
  await root.delete("kv/metadata/prod/db");
  try {{ await root.read("kv/metadata/prod/db"); }} catch (e) {{ out.gone = e.response.statusCode; }}
  console.log(JSON.stringify(out));
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#
        ),
    );
    assert_eq!((said["current"].as_i64(), said["oldest"].as_i64()), (Some(2), Some(1)), "{said}");
    assert_eq!(said["list"], serde_json::json!(["db", "web/"]), "{said}");
    assert_eq!((said["soft"].as_i64(), said["gone"].as_i64()), (Some(404), Some(404)), "{said}");
    let check = hvac(
        &vault,
        &format!(
            r#"
import hvac, json, os
kv = hvac.Client(url=os.environ["VAULT_ADDR"], token="{ROOT}").secrets.kv.v2
print(json.dumps(kv.list_secrets(path="prod", mount_point="kv")["data"]["keys"]))
"#
        ),
    );
    assert_eq!(check, serde_json::json!(["web/"]));
}

fn pipeline(server: &CountingServer, stores: &str, from: &str) -> String {
    let misbehave = repo().join("tests/plugins/misbehave");
    format!(
        "name: vaulted\nsecret_stores:\n{stores}secrets:\n  DB: {{ from: {from}, bind: [\"{o}\"] }}\nsteps:\n  - id: use\n    uses: {}\n    network: [\"{o}\"]\n    secrets: [DB]\n    with: {{ action: http, url: \"{o}/use\", bearer: DB }}\n",
        misbehave.display(),
        o = server.origin()
    )
}

fn seed(dir: &Path) -> String {
    let file = dir.join("seed.json");
    let seed = serde_json::json!({
        "kv/data/prod/db": { "password": PASSWORD, "user": "app" },
        "kv/data/ops/other": { "password": "not-for-deploys" },
    });
    std::fs::write(&file, seed.to_string()).unwrap();
    file.display().to_string()
}

fn secrets_read(dir: &Path) -> serde_json::Value {
    let events = journal(dir);
    let read: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "secrets_read").collect();
    assert_eq!(read.len(), 1, "{events:?}");
    read[0]["answered"]["DB"].clone()
}

fn run_store_text(dir: &Path) -> String {
    let mut text = String::new();
    let mut todo = vec![dir.join(".gantry")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.path().is_dir() {
                true => todo.push(e.path()),
                false => text += &String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()),
            }
        }
    }
    text
}

#[test]
fn approle_in_a_namespace_over_tls_reads_a_kv2_key_and_only_the_host_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let leaf = ca.issue("vault", &["127.0.0.1", "localhost"], 1);
    let seed = seed(dir.path());
    let vault = Vault::start(
        &[
            "--role-id",
            ROLE_ID,
            "--secret-id",
            SECRET_ID,
            "--policy",
            "kv/data/prod/",
            "--namespace",
            "team-a",
            "--seed",
            &seed,
        ],
        Some((&leaf.cert, &leaf.key)),
    );
    std::fs::write(dir.path().join("secret-id"), format!("{SECRET_ID}\n")).unwrap();
    let server = CountingServer::start(Reply::text(200, "ok"));
    let stores = format!(
        "  vault:\n    address: \"{}\"\n    namespace: team-a\n    approle: {{ role_id: \"env:ROLE\", secret_id: \"file:secret-id\" }}\n    ca_file: ca.pem\n",
        vault.peer.origin
    );
    // A relative file: source is read from the working directory, as the shell would.
    let yaml = pipeline(&server, &stores, "\"vault:kv/data/prod/db#password\"");
    let out = run_pipeline(dir.path(), &yaml, &[("ROLE", ROLE_ID)], &[]);
    expect_code(&out, 0);
    let headers = server.headers().join("\n").to_ascii_lowercase();
    assert!(headers.contains(&format!("authorization: bearer {PASSWORD}")), "{headers}");
    assert_eq!(secrets_read(dir.path()), serde_json::json!({"source": "vault:kv/data/prod/db#password"}));
    let all =
        run_store_text(dir.path()) + &String::from_utf8_lossy(&out.stdout) + &String::from_utf8_lossy(&out.stderr);
    for value in [PASSWORD, SECRET_ID] {
        assert!(!all.contains(value), "{value} leaked into the output or the run store");
    }

    // Without the CA bundle the system roots do not know the test's CA: the run stops before the step.
    let hits = server.hits();
    let untrusted = yaml.replace("    ca_file: ca.pem\n", "");
    let out = run_pipeline(dir.path(), &untrusted, &[("ROLE", ROLE_ID)], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secret `DB`: vault:kv/data/prod/db#password: the AppRole login at auth/approle"),
        "{stderr}"
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    assert_eq!(server.hits(), hits, "no step ran");

    // A path outside the role's policy is refused, named, and nothing runs.
    let denied = yaml.replace("prod/db#password", "ops/other#password");
    let out = run_pipeline(dir.path(), &denied, &[("ROLE", ROLE_ID)], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "vault:kv/data/ops/other#password: Vault refused the read (403: 1 error occurred: * permission denied)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("the token's policy must allow `read` on this path"), "{stderr}");
    assert_eq!(server.hits(), hits, "no step ran");

    // A key the secret does not have names the keys it has (never their values).
    let out = run_pipeline(dir.path(), &yaml.replace("#password", "#pasword"), &[("ROLE", ROLE_ID)], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vault:kv/data/prod/db#pasword: the secret has no key `pasword` (it has: password, user)"),
        "{stderr}"
    );

    // Every call carried the namespace; the login gave the token every read used.
    let requests = vault.requests();
    assert!(requests.iter().all(|r| r["headers"]["x-vault-namespace"] == "team-a"), "{requests:?}");
    assert!(requests.iter().any(|r| r["path"] == "/v1/auth/approle/login"), "{requests:?}");
    for read in requests.iter().filter(|r| r["path"].as_str().unwrap().contains("/data/")) {
        assert!(read["headers"]["x-vault-token"].as_str().unwrap().starts_with("hvs."), "{read}");
    }
}

#[test]
fn a_chain_falls_back_to_vault_when_secrets_manager_is_unreachable_and_says_so() {
    let aws = Aws::start();
    aws.put_secret("prod/db", &format!(r#"{{"password":"{SM_PASSWORD}"}}"#));
    let dir = tempfile::tempdir().unwrap();
    let seed = seed(dir.path());
    // Sealed for the first two requests: the host's retries ride it out.
    let vault = Vault::start(&["--token", ROOT, "--seed", &seed, "--sealed-for", "2"], None);
    std::fs::write(dir.path().join("aws-secret-key"), aws.get("secret_key")).unwrap();
    let server = CountingServer::start(Reply::text(200, "ok"));
    let stores = |endpoint: &str| {
        format!(
            "  aws:\n    region: us-east-1\n    endpoint: \"{endpoint}\"\n    access_key_id: \"env:SM_KEY\"\n    secret_access_key: \"file:aws-secret-key\"\n  vault:\n    address: \"{}\"\n    token: \"env:VT\"\n",
            vault.peer.origin
        )
    };
    let chain = "[\"aws-sm:prod/db#password\", \"vault:kv/data/prod/db#password\"]";
    let env = [("SM_KEY", aws.get("access_key")), ("VT", ROOT.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Secrets Manager answers: its value is used, and Vault is not asked.
    let out = run_pipeline(dir.path(), &pipeline(&server, &stores(&aws.moto.origin), chain), &env, &[]);
    expect_code(&out, 0);
    assert!(server.headers().join("\n").to_ascii_lowercase().contains(&format!("bearer {SM_PASSWORD}")));
    assert_eq!(secrets_read(dir.path()), serde_json::json!({"source": "aws-sm:prod/db#password"}));
    assert!(vault.requests().iter().all(|r| !r["path"].as_str().unwrap().contains("/data/")));

    // Secrets Manager unreachable: Vault answers (after its two 503s), the journal and a warning say so.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws-secret-key"), aws.get("secret_key")).unwrap();
    let down = format!("http://127.0.0.1:{}", free_port());
    let out = run_pipeline(dir.path(), &pipeline(&server, &stores(&down), chain), &env, &[]);
    expect_code(&out, 0);
    assert!(server.headers().join("\n").to_ascii_lowercase().contains(&format!("bearer {PASSWORD}")));
    let answered = secrets_read(dir.path());
    assert_eq!(answered["source"], "vault:kv/data/prod/db#password", "{answered}");
    let passed = answered["passed_over"][0].as_str().unwrap();
    assert!(
        passed.starts_with("aws-sm:prod/db#password: GetSecretValue: ") && passed.ends_with("(3 attempts of up to 10s)"),
        "{passed}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("read from vault:kv/data/prod/db#password instead"), "{stderr}");
    let reads = vault.requests().iter().filter(|r| r["path"] == "/v1/kv/data/prod/db").count();
    assert_eq!(reads, 3, "two sealed answers, then the value");
    let all = run_store_text(dir.path());
    assert!(!all.contains(PASSWORD) && !all.contains(ROOT), "a value leaked into the run store");

    // Secrets Manager answers that the secret does not exist: that ends the chain; Vault is not asked.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws-secret-key"), aws.get("secret_key")).unwrap();
    let before = vault.requests().len();
    let missing = chain.replace("prod/db#", "prod/nothing#");
    let hits = server.hits();
    let out = run_pipeline(dir.path(), &pipeline(&server, &stores(&aws.moto.origin), &missing), &env, &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret `DB`: aws-sm:prod/nothing#password: GetSecretValue answered 404 Not Found: ResourceNotFoundException"), "{stderr}");
    assert!(stderr.contains("ends the chain: 1 later source is for when this one is unavailable"), "{stderr}");
    assert_eq!(vault.requests().len(), before, "Vault was not asked");
    assert_eq!(server.hits(), hits, "no step ran");

    // Neither available: both are named with their reasons, and nothing ran.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws-secret-key"), aws.get("secret_key")).unwrap();
    let no_vault = stores(&down).replace(&vault.peer.origin, &format!("http://127.0.0.1:{}", free_port()));
    let out = run_pipeline(dir.path(), &pipeline(&server, &no_vault, chain), &env, &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secret `DB`: its sources, asked in order:\n  aws-sm:prod/db#password: GetSecretValue: "),
        "{stderr}"
    );
    assert!(stderr.contains("(3 attempts of up to 10s)\n  vault:kv/data/prod/db#password: Vault: "), "{stderr}");
    assert_eq!(server.hits(), hits, "no step ran");
}

#[test]
fn vault_sources_are_checked_with_their_line_before_anything_runs() {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    // No store for a vault: source; a path that is not KV v2; both token and AppRole.
    let yaml = pipeline(&server, "  aws: { region: us-east-1 }\n", "[\"env:DB\", \"vault:kv/data/prod/db#password\"]");
    let out = run_pipeline(dir.path(), &yaml, &[], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pipeline.yaml:5:") && stderr.contains("secrets.DB.from[1]"), "{stderr}");
    assert!(
        stderr.contains("needs `secret_stores.vault` (address, and the source of a token or of an AppRole's ids)"),
        "{stderr}"
    );

    let yaml = pipeline(&server, "  vault: { address: \"http://127.0.0.1:1\" }\n", "\"vault:kv/prod/db#password\"");
    let out = run_pipeline(dir.path(), &yaml, &[], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did you mean `vault:kv/data/prod/db`?"), "{stderr}");

    let stores = "  vault:\n    address: \"http://vault.example:8200\"\n    token: \"env:T\"\n    approle: { role_id: \"env:R\", secret_id: \"env:S\" }\n";
    let out = run_pipeline(dir.path(), &pipeline(&server, stores, "\"vault:kv/data/a#b\""), &[], &[]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secret_stores.vault.address: `http://vault.example:8200` must be an https:// origin"),
        "{stderr}"
    );
    assert!(stderr.contains("secret_stores.vault.token: give `token` or `approle`, not both"), "{stderr}");
    assert_eq!(server.hits(), 0);
}

/// A Vault that takes connections and never answers: the run is listed while it waits, says so every
/// few seconds, gives up after the pipeline's `timeout` × `attempts`, and records why it did not start.
#[test]
fn a_hung_secret_store_is_named_while_the_run_waits_and_gives_up_after_its_timeouts() {
    // Bound and never accepted: the kernel completes the handshake, nothing ever answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://127.0.0.1:{}", hung.local_addr().unwrap().port());
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let stores = format!("  vault:\n    address: \"{address}\"\n    token: \"env:VT\"\n    timeout: 3s\n    attempts: 2\n");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, pipeline(&server, &stores, "\"vault:kv/data/prod/db#password\"")).unwrap();
    let started = std::time::Instant::now();
    let mut child = command(&shared_cache())
        .current_dir(dir.path())
        .env("VT", ROOT)
        .args(["run", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the store hangs, the run is listed with what it waits for: polled until the run ends, since on a
    // loaded runner planning (its plugin's build check) alone can take longer than a fixed few seconds.
    let mut listed = String::new();
    while child.try_wait().unwrap().is_none() && !listed.contains("reading-secrets") {
        std::thread::sleep(std::time::Duration::from_millis(300));
        listed = String::from_utf8_lossy(&gantry_in(dir.path(), &["runs"]).stdout).to_string();
    }
    assert!(listed.contains("reading-secrets") && listed.contains("vaulted"), "{listed}");
    let out = child.wait_with_output().unwrap();
    let waited = started.elapsed();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    expect_code(&out, 2);
    // Two attempts of 3 s and the pause between them; the default (3 × 10 s) would take 30 s.
    assert!(waited > std::time::Duration::from_secs(6) && waited < std::time::Duration::from_secs(20), "{waited:?}");
    assert!(
        printed.contains("reading secrets: `DB` from vault:kv/data/prod/db#password: no answer yet after 5"),
        "{printed}"
    );
    assert!(printed.contains("(2 attempts of up to 3s)"), "{printed}");
    assert_eq!(server.hits(), 0, "no step ran");
    let events: Vec<String> = journal(dir.path()).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events.first().map(String::as_str), Some("reading_secrets"), "{events:?}");
    assert!(events.iter().any(|e| e == "secret_slow"), "{events:?}");
    assert_eq!(events[events.len() - 2..], ["start_failed", "run_finished"], "{events:?}");
    let listed = String::from_utf8_lossy(&gantry_in(dir.path(), &["runs"]).stdout).to_string();
    assert!(listed.contains("failed") && !listed.contains("reading-secrets"), "{listed}");

    // Killed while it waits: nothing ran, and a resume says so instead of guessing a plan.
    let first = run_id(dir.path());
    let mut child = command(&shared_cache()).current_dir(dir.path()).env("VT", ROOT).args(["run", file.to_str().unwrap()]).spawn().unwrap();
    let killed = loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut ids: Vec<String> = std::fs::read_dir(dir.path().join(".gantry/runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|id| *id != first)
            .collect();
        if let Some(id) = ids.pop().filter(|id| !journal_of(dir.path(), id).is_empty()) {
            break id;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = String::from_utf8_lossy(&gantry_in(dir.path(), &["runs"]).stdout).to_string();
    assert!(listed.contains("reading-secrets"), "until a recovery closes it: {listed}");
    let out = gantry_in(dir.path(), &["resume", &killed]);
    expect_code(&out, 1);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("stopped while reading its secrets, before anything ran: recorded as failed"), "{said}");
    let listed = String::from_utf8_lossy(&gantry_in(dir.path(), &["runs"]).stdout).to_string();
    assert!(!listed.contains("reading-secrets"), "{listed}");
    let events: Vec<String> = journal_of(dir.path(), &killed).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events, ["reading_secrets", "start_failed", "run_finished"]);
    assert_ne!(gantry_in(dir.path(), &["rollback", &killed]).status.code(), Some(0), "closed: nothing to undo");
    assert_eq!(server.hits(), 0, "no step ran");

    // A timeout that is not a duration, and too many attempts, are found by validate with their lines.
    let stores = stores.replace("timeout: 3s", "timeout: soon").replace("attempts: 2", "attempts: 40");
    std::fs::write(&file, pipeline(&server, &stores, "\"vault:kv/data/prod/db#password\"")).unwrap();
    let out = gantry_in(dir.path(), &["validate", file.to_str().unwrap()]);
    expect_code(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pipeline.yaml:6:") && stderr.contains("secret_stores.vault.timeout"), "{stderr}");
    assert!(stderr.contains("pipeline.yaml:7:") && stderr.contains("40 is outside 1..=10"), "{stderr}");
    drop(hung);
}
