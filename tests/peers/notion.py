"""A local stand-in for the Notion API, following its published shapes.

No Notion emulator exists in the registries; this one implements what
notion-sync uses, as the API documents it:
  POST  /v1/data_sources/{id}/query   (Notion-Version 2025-09-03)
  POST  /v1/databases/{id}/query      (Notion-Version 2022-06-28)
  PATCH /v1/pages/{id}
  GET   /_state                       (test only: pages, request log)
Bodies: list {object:"list", results, next_cursor, has_more, type:"page_or_data_source",
page_or_data_source:{}}; errors {object:"error", status, code, message, request_id}.
Auth: Bearer token; 429 rate_limited with Retry-After; a 500 when asked.
"""
import argparse
import http.server
import json
import random
import sys
import threading
import time
import uuid

FIRST = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kemi", "Luis", "Mara", "Noor", "Otto"]
LAST = ["Ito", "Kahn", "Lopez", "Marsh", "Novak", "Okafor", "Park", "Quinn", "Rossi", "Sato", "Tan", "Ueda", "Vega"]
KINDS = [
    ("artist", ["painter", "gallery"], ""),
    ("wellness", ["yoga", "massage"], ""),
    ("partner", ["vendor"], "Acme Supplies"),
    ("visitor", ["newsletter"], ""),
]


def text(s):
    return [{"type": "text", "text": {"content": s, "link": None}, "plain_text": s, "href": None,
             "annotations": {"bold": False, "italic": False, "strikethrough": False, "underline": False, "code": False, "color": "default"}}]


def contacts(n, seed):
    rnd = random.Random(seed)
    pages = []
    for i in range(n):
        name = f"{FIRST[i % len(FIRST)]} {LAST[(i * 7) % len(LAST)]}"
        kind, tags, company = KINDS[i % len(KINDS)]
        email = f"{name.lower().replace(' ', '.')}{i}@example.com"
        if i % 37 == 5:
            email = f"not-an-email-{i}"
        if i % 53 == 7 and i > 7:
            email = pages[i - 7]["properties"]["Email"]["email"]
        segment = None
        if i % 3 == 0:
            segment = {"artist": "artists/gallery", "wellness": "wellness clients", "partner": "business partners", "visitor": "general visitors"}[kind]
        pid = str(uuid.UUID(int=rnd.getrandbits(128)))
        pages.append({
            "object": "page", "id": pid, "created_time": "2025-09-01T10:00:00.000Z", "last_edited_time": "2025-09-01T10:00:00.000Z",
            "archived": False, "in_trash": False, "url": f"https://www.notion.so/{pid.replace('-', '')}",
            "parent": {"type": "data_source_id", "data_source_id": "ds"},
            "properties": {
                "Name": {"id": "title", "type": "title", "title": text(name)},
                "Email": {"id": "em", "type": "email", "email": email},
                "Tags": {"id": "tg", "type": "multi_select", "multi_select": [{"id": t, "name": t, "color": "default"} for t in tags]},
                "Company": {"id": "co", "type": "rich_text", "rich_text": text(company) if company else []},
                "Segment": {"id": "sg", "type": "select", "select": {"id": segment, "name": segment, "color": "default"} if segment else None},
            },
        })
    return pages


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--data-source", required=True)
    p.add_argument("--contacts", type=int, default=191)
    p.add_argument("--rate-limit-burst", type=int, default=0, help="answer this many queries with 429 first")
    p.add_argument("--retry-after", default="1")
    p.add_argument("--fail-once", action="store_true", help="answer the second query page with a 500 once")
    p.add_argument("--refuse-patch", type=int, default=0, help="answer the N-th PATCH with a 400 (not retryable)")
    p.add_argument("--patch-delay-ms", type=int, default=0, help="take this long over each PATCH")
    a = p.parse_args()
    lock = threading.Lock()
    state = {"pages": contacts(a.contacts, 7), "log": [], "burst": a.rate_limit_burst, "fail": a.fail_once, "queries": 0}

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body, headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, code, message, headers=()):
            self.reply(status, {"object": "error", "status": status, "code": code, "message": message,
                                "request_id": str(uuid.uuid4())}, headers)

        def body(self):
            n = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                return json.loads(raw or b"{}")
            except ValueError:
                return None

        def do_GET(self):
            if self.path == "/_state":
                with lock:
                    return self.reply(200, {"pages": state["pages"], "log": state["log"]})
            self.error(404, "object_not_found", "Could not find the requested resource.")

        def check(self, version):
            if self.headers.get("authorization") != f"Bearer {a.token}":
                self.error(401, "unauthorized", "API token is invalid.")
                return False
            got = self.headers.get("notion-version")
            if got is None:
                self.error(400, "missing_version", "Notion-Version header failed validation: Notion-Version should be defined.")
                return False
            if got != version:
                self.error(400, "validation_error", f"This endpoint requires Notion-Version {version}, got {got}.")
                return False
            return True

        def do_POST(self):
            parts = self.path.strip("/").split("/")
            body = self.body()
            with lock:
                state["log"].append(f"POST {self.path}")
            if len(parts) == 4 and parts[:2] == ["v1", "data_sources"] and parts[3] == "query":
                version = "2025-09-03"
            elif len(parts) == 4 and parts[:2] == ["v1", "databases"] and parts[3] == "query":
                version = "2022-06-28"
            else:
                return self.error(404, "object_not_found", "Could not find the requested resource.")
            if not self.check(version):
                return
            if parts[2] != a.data_source:
                return self.error(404, "object_not_found", f"Could not find data source with ID: {parts[2]}.")
            if body is None:
                return self.error(400, "invalid_json", "Error parsing JSON body.")
            size = body.get("page_size", 100)
            if not isinstance(size, int) or not 1 <= size <= 100:
                return self.error(400, "validation_error", "body failed validation: body.page_size should be ≤ `100`.")
            with lock:
                if state["burst"] > 0:
                    state["burst"] -= 1
                    return self.error(429, "rate_limited", "You have been rate limited. Please try again in a few minutes.",
                                      [("Retry-After", a.retry_after)])
                state["queries"] += 1
                if state["fail"] and state["queries"] == 2:
                    state["fail"] = False
                    return self.error(500, "internal_server_error", "Unexpected error occurred.")
                start = int(body.get("start_cursor") or 0)
                results = state["pages"][start:start + size]
                nxt = start + size
                more = nxt < len(state["pages"])
            self.reply(200, {"object": "list", "results": results, "next_cursor": str(nxt) if more else None,
                             "has_more": more, "type": "page_or_data_source", "page_or_data_source": {}})

        def do_PATCH(self):
            parts = self.path.strip("/").split("/")
            body = self.body()
            with lock:
                state["log"].append(f"PATCH {self.path}")
                n = sum(1 for line in state["log"] if line.startswith("PATCH"))
            if a.patch_delay_ms:
                time.sleep(a.patch_delay_ms / 1000)
            if n == a.refuse_patch:
                return self.error(400, "validation_error", "Can't edit block that is archived.")
            if len(parts) != 3 or parts[:2] != ["v1", "pages"]:
                return self.error(404, "object_not_found", "Could not find the requested resource.")
            if not self.check(self.headers.get("notion-version") or "2025-09-03"):
                return
            with lock:
                page = next((p for p in state["pages"] if p["id"] == parts[2]), None)
                if page is None:
                    return self.error(404, "object_not_found", f"Could not find page with ID: {parts[2]}.")
                for name, value in (body or {}).get("properties", {}).items():
                    if name not in page["properties"]:
                        return self.error(400, "validation_error", f"{name} is not a property that exists.")
                    sel = value.get("select")
                    page["properties"][name]["select"] = None if sel is None else {"id": sel["name"], "name": sel["name"], "color": "default"}
                self.reply(200, page)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), H)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
