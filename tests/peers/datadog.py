"""A local stand-in for Datadog's metrics API, following its published shapes.

No Datadog server is installable; this one implements what the canary analysis reads and what
a test writes, as Datadog documents them, and is proven against the official Python client
(PyPI `datadog-api-client`) by the tests:
  POST /api/v2/series   {series: [{metric, type, points: [{timestamp, value}], tags}]} -> 202 {errors: []}
  GET  /api/v1/query    ?from=<s>&to=<s>&query=<agg>:<metric>{<scope>} -> {status: "ok",
                        res_type: "time_series", series: [{metric, pointlist: [[ms, value]], ...}]}
  GET  /_state          (test only: the request log)
Auth: DD-API-KEY on every call, DD-APPLICATION-KEY on queries; otherwise 403 {errors: ["Forbidden"]}.
A query it cannot parse is 400 {errors: ["Error parsing query: ..."]}; no matching points is an
empty `series`, as Datadog answers.
"""
import argparse
import http.server
import json
import re
import threading
import urllib.parse

lock = threading.Lock()
points = []  # (metric, frozenset(tags), timestamp seconds, value)
log = []
args = None

QUERY = re.compile(r"^\s*(avg|sum|min|max):([A-Za-z0-9_.]+)\{([^}]*)\}\s*$")


def aggregate(agg, values):
    if agg == "sum":
        return sum(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    return sum(values) / len(values)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self, app):
        ok = self.headers.get("DD-API-KEY") == args.api_key
        if app:
            ok = ok and self.headers.get("DD-APPLICATION-KEY") == args.app_key
        if not ok:
            self.reply(403, {"errors": ["Forbidden"]})
        return ok

    def record(self):
        with lock:
            log.append({"method": self.command, "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()}})

    def do_POST(self):
        self.record()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        url = urllib.parse.urlparse(self.path)
        if url.path != "/api/v2/series":
            return self.reply(404, {"errors": ["Not found"]})
        if not self.authorized(app=False):
            return
        try:
            series = json.loads(body)["series"]
            with lock:
                for s in series:
                    tags = frozenset(s.get("tags") or [])
                    for p in s["points"]:
                        points.append((s["metric"], tags, int(p["timestamp"]), float(p["value"])))
        except (KeyError, TypeError, ValueError) as e:
            return self.reply(400, {"errors": [f"Invalid payload: {e}"]})
        self.reply(202, {"errors": []})

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/_state":
            with lock:
                return self.reply(200, {"requests": log, "points": len(points)})
        self.record()
        if url.path != "/api/v1/query":
            return self.reply(404, {"errors": ["Not found"]})
        if not self.authorized(app=True):
            return
        q = urllib.parse.parse_qs(url.query)
        try:
            start, end, query = int(q["from"][0]), int(q["to"][0]), q["query"][0]
        except (KeyError, ValueError):
            return self.reply(400, {"errors": ["The parameters from, to and query are required"]})
        m = QUERY.match(query)
        if not m:
            return self.reply(400, {"errors": [f"Error parsing query: unable to parse {query}"]})
        agg, metric, scope = m.groups()
        wanted = frozenset(t.strip() for t in scope.split(",") if t.strip() and t.strip() != "*")
        by_time = {}
        with lock:
            for name, tags, ts, value in points:
                if name == metric and wanted <= tags and start <= ts <= end:
                    by_time.setdefault(ts, []).append(value)
        series = []
        if by_time:
            pointlist = [[float(ts * 1000), aggregate(agg, vs)] for ts, vs in sorted(by_time.items())]
            series.append({
                "metric": metric, "display_name": metric, "expression": query, "aggr": agg,
                "scope": ",".join(sorted(wanted)) or "*", "tag_set": sorted(wanted),
                "pointlist": pointlist, "start": int(pointlist[0][0]), "end": int(pointlist[-1][0]),
                "interval": 1, "length": len(pointlist), "query_index": 0, "unit": None,
            })
        self.reply(200, {"status": "ok", "res_type": "time_series", "resp_version": 1, "query": query,
                         "from_date": start * 1000, "to_date": end * 1000, "group_by": [], "series": series})


def main():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--app-key", required=True)
    args = parser.parse_args()
    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
