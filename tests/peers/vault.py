"""A local stand-in for HashiCorp Vault's HTTP API: the KV v2 engine, tokens and AppRole.

No Vault server is installable here; this one implements what gantry's `vault:` source and
the official clients (PyPI `hvac`, npm `node-vault`) use, as Vault documents it:
  GET  /v1/sys/health                         initialized, unsealed, active
  POST /v1/auth/<approle mount>/login         {role_id, secret_id} -> auth.client_token
  GET  /v1/auth/token/lookup-self             the calling token
  GET  /v1/<mount>/data/<path>[?version=N]    data.data, data.metadata
  POST|PUT /v1/<mount>/data/<path>            {data, options.cas} -> data.version
  DELETE /v1/<mount>/data/<path>              soft-deletes the latest version
  GET  /v1/<mount>/metadata/<path>            the secret's metadata and every version's
  LIST /v1/<mount>/metadata/<path>/ (or GET ?list=true)  data.keys: names under it, folders with "/"
  DELETE /v1/<mount>/metadata/<path>          the secret, every version and its metadata
  POST /v1/<mount>/delete|undelete|destroy/<path>  {versions: [N]}: soft-delete, restore, destroy
  GET  /_state                                (test only: the request log)
Errors are {"errors": [...]}: 403 "permission denied" for a missing, unknown or out-of-policy
token, 404 for a missing secret (with metadata when its version was deleted), 503 "Vault is
sealed" for the first --sealed-for requests. With --namespace, every call but sys/health
must carry X-Vault-Namespace (or the path prefix) naming it, as Enterprise routes them;
otherwise the route is not found. --tls-cert/--tls-key serve HTTPS.
"""
import argparse
import datetime
import http.server
import json
import ssl
import sys
import threading
import urllib.parse
import uuid

lock = threading.Lock()
secrets = {}  # (mount, path) -> [versions: {"data", "created_time", "deletion_time"}]
tokens = {}  # token -> list of allowed path prefixes ("" allows all)
log = []
args = None


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def metadata(versions, n):
    v = versions[n - 1]
    return {"created_time": v["created_time"], "custom_metadata": None, "deletion_time": v["deletion_time"],
            "destroyed": v.get("destroyed", False), "version": n}


def secret_metadata(versions):
    """The KV v2 metadata of a secret, as `GET <mount>/metadata/<path>` answers it."""
    live = [n for n, v in enumerate(versions, 1) if not v.get("destroyed")]
    return {"cas_required": False, "created_time": versions[0]["created_time"],
            "current_version": len(versions), "custom_metadata": None, "delete_version_after": "0s",
            "max_versions": 0, "oldest_version": live[0] if live else 0,
            "updated_time": versions[-1]["created_time"],
            "versions": {str(n): {"created_time": v["created_time"], "deletion_time": v["deletion_time"],
                                  "destroyed": v.get("destroyed", False)} for n, v in enumerate(versions, 1)}}


def listed(mount, prefix):
    """Names under `prefix` in `mount`: a secret's name, or a folder's with a trailing `/`."""
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    keys = set()
    for (m, path), versions in secrets.items():
        if m == mount and versions and path.startswith(prefix):
            head, slash, _ = path[len(prefix):].partition("/")
            keys.add(head + slash)
    return sorted(keys)


VERBS = ("data", "metadata", "delete", "undelete", "destroy")


def envelope(data=None, auth=None):
    return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
            "data": data, "wrap_info": None, "warnings": None, "auth": auth, "mount_type": "kv"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body=None):
        raw = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def errors(self, status, *messages):
        self.reply(status, {"errors": list(messages)})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw.strip() else {}

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        query = urllib.parse.parse_qs(url.query)
        with lock:
            if path != "/_state":
                log.append({"method": method, "path": path,
                            "headers": {k.lower(): v for k, v in self.headers.items()}})
            api = [r for r in log if r["path"] != "/v1/sys/health"]
            sealed = path != "/v1/sys/health" and len(api) <= args.sealed_for
        if path == "/_state":
            with lock:
                return self.reply(200, {"requests": log})
        if path == "/v1/sys/health":
            return self.reply(200, {"initialized": True, "sealed": False, "standby": False,
                                    "performance_standby": False, "replication_performance_mode": "disabled",
                                    "replication_dr_mode": "disabled", "server_time_utc": 0,
                                    "version": "1.15.6", "cluster_name": "stand-in", "cluster_id": "stand-in"})
        if sealed:
            return self.errors(503, "Vault is sealed")
        if not path.startswith("/v1/"):
            return self.errors(404)
        route = path[len("/v1/"):]
        if args.namespace:
            header = (self.headers.get("X-Vault-Namespace") or "").strip("/")
            if route.startswith(args.namespace + "/") and not header:
                route = route[len(args.namespace) + 1:]
            elif header != args.namespace:
                return self.errors(404, f'no handler for route "{route}". route entry not found.')
        if route == f"auth/{args.approle_mount}/login" and method in ("POST", "PUT"):
            body = self.body()
            if body.get("role_id") != args.role_id or body.get("secret_id") != args.secret_id or not args.role_id:
                return self.errors(400, "invalid role or secret ID")
            token = "hvs." + uuid.uuid4().hex
            with lock:
                tokens[token] = args.policy or [""]
            return self.reply(200, envelope(auth={
                "client_token": token, "accessor": uuid.uuid4().hex, "policies": ["default", "deploy"],
                "token_policies": ["default", "deploy"], "metadata": {"role_name": "deploy"},
                "lease_duration": 3600, "renewable": True, "entity_id": str(uuid.uuid4()),
                "token_type": "service", "orphan": True, "mfa_requirement": None, "num_uses": 0}))
        token = self.headers.get("X-Vault-Token") or ""
        with lock:
            allowed = tokens.get(token)
        if allowed is None:
            return self.errors(403, "permission denied")
        if route == "auth/token/lookup-self":
            return self.reply(200, envelope(data={"id": token, "policies": ["default"], "ttl": 3600,
                                                  "renewable": True, "type": "service"}))
        if query.get("list") == ["true"] and method == "GET":
            method = "LIST"
        mount, verb, rest = "", "", ""
        for v in VERBS:
            m, sep, r = route.partition(f"/{v}/")
            if sep and m and (r or (v == "metadata" and method == "LIST")):
                mount, verb, rest = m, v, r
                break
        if not verb:
            return self.errors(404, f'no handler for route "{route}". route entry not found.')
        if not any(route.startswith(p) for p in allowed):
            return self.errors(403, "1 error occurred:\n\t* permission denied\n\n")
        key = (mount, rest.rstrip("/"))
        if verb != "data":
            return self.other_verb(method, verb, mount, key)
        with lock:
            versions = secrets.setdefault(key, [])
            if method == "GET":
                if not versions:
                    return self.errors(404)
                n = int(query.get("version", [len(versions)])[0]) or len(versions)
                if n > len(versions):
                    return self.errors(404)
                v = versions[n - 1]
                if v["deletion_time"] or v.get("destroyed"):
                    return self.reply(404, envelope(data={"data": None, "metadata": metadata(versions, n)}))
                return self.reply(200, envelope(data={"data": v["data"], "metadata": metadata(versions, n)}))
            if method in ("POST", "PUT"):
                body = self.body()
                cas = (body.get("options") or {}).get("cas")
                if cas is not None and cas != len(versions):
                    return self.errors(400, "check-and-set parameter did not match the current version")
                if not isinstance(body.get("data"), dict):
                    return self.errors(400, "no data provided")
                versions.append({"data": body["data"], "created_time": now(), "deletion_time": ""})
                return self.reply(200, envelope(data=metadata(versions, len(versions))))
            if method == "DELETE":
                if versions:
                    versions[-1]["deletion_time"] = now()
                return self.reply(204)
        return self.errors(405, "unsupported operation")

    def other_verb(self, method, verb, mount, key):
        """The metadata API and the version verbs of KV v2."""
        with lock:
            versions = secrets.get(key) or []
            if verb == "metadata" and method == "LIST":
                keys = listed(mount, key[1])
                return self.reply(200, envelope(data={"keys": keys})) if keys else self.errors(404)
            if verb == "metadata" and method == "GET":
                return self.reply(200, envelope(data=secret_metadata(versions))) if versions else self.errors(404)
            if verb == "metadata" and method == "DELETE":
                secrets.pop(key, None)
                return self.reply(204)
            if method not in ("POST", "PUT") or verb == "metadata":
                return self.errors(405, "unsupported operation")
            wanted = self.body().get("versions")
            if not isinstance(wanted, list) or not wanted:
                return self.errors(400, "no version number provided")
            for n in wanted:
                if isinstance(n, int) and 1 <= n <= len(versions):
                    v = versions[n - 1]
                    if verb == "delete" and not v.get("destroyed"):
                        v["deletion_time"] = v["deletion_time"] or now()
                    elif verb == "undelete" and not v.get("destroyed"):
                        v["deletion_time"] = ""
                    elif verb == "destroy":
                        v.update(data=None, destroyed=True)
            return self.reply(204)

    def do_LIST(self):
        self.handle_any("LIST")

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", action="append", default=[], help="a root token (all paths)")
    p.add_argument("--role-id", default="")
    p.add_argument("--secret-id", default="")
    p.add_argument("--approle-mount", default="approle")
    p.add_argument("--policy", action="append", default=[], help="a path prefix AppRole tokens may read")
    p.add_argument("--namespace", default="")
    p.add_argument("--sealed-for", type=int, default=0, help="answer 503 to this many first requests")
    p.add_argument("--seed", help="JSON file {\"MOUNT/data/PATH\": {key: value}}")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    args = p.parse_args()
    for t in args.token:
        tokens[t] = [""]
    if args.seed:
        with open(args.seed) as f:
            for route, data in json.load(f).items():
                mount, _, rest = route.partition("/data/")
                secrets[(mount, rest)] = [{"data": data, "created_time": now(), "deletion_time": ""}]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"vault stand-in on 127.0.0.1:{args.port}", file=sys.stderr)
    server.serve_forever()


if __name__ == "__main__":
    main()
