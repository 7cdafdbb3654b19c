"""An OTLP/HTTP trace receiver that decodes what it gets with OpenTelemetry's own protobuf
definitions (PyPI `opentelemetry-proto`), as a collector does:
  POST /v1/traces    application/x-protobuf ExportTraceServiceRequest -> 200 ExportTraceServiceResponse
                     (a body that does not decode is 400, as the OTLP spec says)
  GET  /_spans       (test only) every span received, as JSON: name, ids in hex, times, attributes,
                     events, status, and the resource's attributes
  GET  /_raw         (test only) every request body received, hex, to search for what must not be there
"""
import argparse
import http.server
import json
import threading

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

lock = threading.Lock()
spans = []
raw = []


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, kind):
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            return self.answer(404, b"", "text/plain")
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decode failure is the sender's
            return self.answer(400, str(e).encode(), "text/plain")
        got = []
        for rs in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append({
                        "name": s.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                        "events": [{"name": e.name, "attributes": {kv.key: value(kv.value) for kv in e.attributes}} for e in s.events],
                        "status": {"code": s.status.code, "message": s.status.message},
                        "resource": resource,
                        "scope": ss.scope.name,
                    })
        with lock:
            spans.extend(got)
            raw.append(body.hex())
        self.answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self):
        with lock:
            if self.path == "/_spans":
                return self.answer(200, json.dumps(spans).encode(), "application/json")
            if self.path == "/_raw":
                return self.answer(200, json.dumps(raw).encode(), "application/json")
        self.answer(404, b"", "text/plain")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
