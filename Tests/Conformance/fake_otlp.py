"""An OTLP/HTTP receiver for tests: decodes every request with the official OpenTelemetry protobuf definitions
(opentelemetry-proto) and enforces the OTLP/HTTP contract: POST to /v1/traces, /v1/logs or /v1/metrics,
`Content-Type: application/x-protobuf`, gzip or no content encoding, a body that parses as the signal's
Export…ServiceRequest. Anything else is answered 4xx and recorded in `violations`. `stall` makes it accept
requests and never answer (a hung collector)."""
import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, \
    ExportTraceServiceResponse

REQUESTS = {"/v1/traces": ExportTraceServiceRequest, "/v1/logs": ExportLogsServiceRequest,
            "/v1/metrics": ExportMetricsServiceRequest}
MAX_BODY = 16 << 20


def attributes(key_values):
    """KeyValue list → dict of plain Python values."""
    out = {}
    for kv in key_values:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


class FakeOTLP:
    def __init__(self, stall=False, status=200):
        self.stall = stall
        self.status = status
        self.lock = threading.Lock()
        self.received = {path: [] for path in REQUESTS}
        self.headers = []
        self.violations = []
        self.released = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                fake.handle(self)

            def do_GET(self):
                fake.refuse(self, 405, "GET %s" % self.path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def refuse(self, request, status, why):
        with self.lock:
            self.violations.append(why)
        request.send_response(status)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def handle(self, request):
        length = int(request.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.refuse(request, 413, "body of %d bytes" % length)
        body = request.rfile.read(length)
        if self.stall:
            # Accepted, never answered: the client's timeout is the only way out.
            self.released.wait(600)
            return
        kind = REQUESTS.get(request.path)
        if kind is None:
            return self.refuse(request, 404, "path %s" % request.path)
        if request.headers.get("Content-Type") != "application/x-protobuf":
            return self.refuse(request, 415, "content type %r" % request.headers.get("Content-Type"))
        encoding = request.headers.get("Content-Encoding")
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except OSError as error:
                return self.refuse(request, 400, "gzip: %s" % error)
        elif encoding not in (None, "identity"):
            return self.refuse(request, 415, "content encoding %r" % encoding)
        message = kind()
        try:
            message.ParseFromString(body)
        except DecodeError as error:
            return self.refuse(request, 400, "protobuf: %s" % error)
        with self.lock:
            self.received[request.path].append(message)
            self.headers.append(dict(request.headers))
        if self.status != 200:
            request.send_response(self.status)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        answer = ExportTraceServiceResponse().SerializeToString()
        request.send_response(200)
        request.send_header("Content-Type", "application/x-protobuf")
        request.send_header("Content-Length", str(len(answer)))
        request.end_headers()
        request.wfile.write(answer)

    # -- views for tests ----------------------------------------------------------------------------------
    def spans(self):
        """(resource attributes, scope, span) for every span received."""
        with self.lock:
            requests = list(self.received["/v1/traces"])
        return [(attributes(rs.resource.attributes), ss.scope, span)
                for request in requests for rs in request.resource_spans for ss in rs.scope_spans
                for span in ss.spans]

    def logs(self):
        with self.lock:
            requests = list(self.received["/v1/logs"])
        return [(attributes(rl.resource.attributes), record)
                for request in requests for rl in request.resource_logs for sl in rl.scope_logs
                for record in sl.log_records]

    def metrics(self):
        with self.lock:
            requests = list(self.received["/v1/metrics"])
        return [(attributes(rm.resource.attributes), metric)
                for request in requests for rm in request.resource_metrics for sm in rm.scope_metrics
                for metric in sm.metrics]
