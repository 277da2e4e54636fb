"""Fake Entra, IMDS, Logs Ingestion and Application Insights endpoints on loopback.

They enforce the documented contract (../shared/reference/azure-monitor.md section 2.3) rather than accept
anything: path and api-version, bearer tokens they issued and that have not expired, Content-Type, gzip,
wire size <= 1,048,576 bytes (413 otherwise), a JSON array, each row checked against the stream
declaration in deploy/azure-monitor.json, 204. Anything a real service would silently drop but that means a
bug on our side (unknown or missing columns, a batch over our own 1,000,000-byte cap, a non-GUID request id)
is recorded in `violations`, which every test asserts to be empty.
"""
import gzip
import json
import os
import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from conftest import ROOT

DCR_ID = "dcr-" + "0123456789abcdef" * 2
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "fake-secret-value"
IKEY = "00000000-0000-0000-0000-0000000000aa"
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PATH = re.compile(r"^/dataCollectionRules/(dcr-[0-9a-f]{32})/streams/(Custom-[A-Za-z0-9_]+)$")
DURATION = re.compile(r"^\d+\.\d{2}:\d{2}:\d{2}\.\d{3}$")
ENVELOPES = {
    "Microsoft.ApplicationInsights.Request": "RequestData",
    "Microsoft.ApplicationInsights.RemoteDependency": "RemoteDependencyData",
    "Microsoft.ApplicationInsights.Message": "MessageData",
    "Microsoft.ApplicationInsights.Metric": "MetricData",
    "Microsoft.ApplicationInsights.Exception": "ExceptionData",
}


def stream_declarations():
    with open(os.path.join(ROOT, "deploy", "azure-monitor.json")) as f:
        template = json.load(f)
    rule = next(r for r in template["resources"] if r["type"] == "Microsoft.Insights/dataCollectionRules")
    return {name: {c["name"]: c["type"] for c in decl["columns"]}
            for name, decl in rule["properties"]["streamDeclarations"].items()}


def type_ok(kind, value):
    if kind == "string":
        return isinstance(value, str)
    if kind in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "real":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "dynamic":
        return True
    if kind == "datetime":
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return True
        except (AttributeError, ValueError):
            return False
    return False


PUBLIC_AUDIENCE = "https://monitor.azure.com"
AUDIENCES = (PUBLIC_AUDIENCE, "https://monitor.azure.us", "https://monitor.azure.cn")


def scope_audience(scope):
    """`https://monitor.azure.com/.default` and the `//.default` spelling both ask for that audience."""
    return scope[:-len(".default")].rstrip("/") if scope.endswith("/.default") else None


class FakeAzure:
    """One server for all four endpoints; tests script it and read what it stored."""

    def __init__(self, port=0, token_lifetime=3600, audience=PUBLIC_AUDIENCE):
        self.lock = threading.Lock()
        # The cloud this fake stands for: tokens for another cloud's audience are issued (Entra would, for
        # a namespace in that cloud) but refused by ingestion with 401, as a real endpoint refuses them.
        self.audience = audience
        self.streams = stream_declarations()
        self.token_lifetime = token_lifetime
        self.tokens = {}              # token -> (expiry in unix seconds, audience)
        self.token_requests = []      # (time, kind, fields)
        self.rows = {}                # stream -> [row]
        self.calls = []               # dicts: time, status, wire, raw, request_id, stream, count
        self.envelopes = []           # accepted Application Insights envelopes
        self.track_calls = []
        self.faults = []              # scripted responses: (status, headers, body) for the next calls
        self.track_faults = []        # callables(envelopes) -> (status, headers, body) or None
        self.violations = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.handle(self, "GET")

            def do_POST(self):
                server.handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- helpers for tests --------------------------------------------------------------------------------
    def env(self, kind="secret", tmp_path=None):
        """Environment that points hyrelay's credentials at this fake."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        if kind == "secret":
            base.update(AZURE_TENANT_ID=TENANT, AZURE_CLIENT_ID=CLIENT_ID, AZURE_CLIENT_SECRET=CLIENT_SECRET,
                        AZURE_AUTHORITY_HOST=self.url + "/")
        elif kind == "workload":
            token_file = tmp_path / "federated-token"
            token_file.write_text("eyJhbGciOiJSUzI1NiJ9.fake-federated.assertion\n")
            base.update(AZURE_TENANT_ID=TENANT, AZURE_CLIENT_ID=CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE=str(token_file),
                        AZURE_AUTHORITY_HOST=self.url)
        elif kind == "managed":
            base.update(AZURE_POD_IDENTITY_AUTHORITY_HOST=self.url)
        return base

    def flags(self):
        return ["--logs-ingestion-endpoint", self.url, "--dcr-immutable-id", DCR_ID]

    def all_rows(self, stream):
        with self.lock:
            return list(self.rows.get(stream, []))

    def revoke_tokens(self):
        with self.lock:
            self.tokens.clear()

    def accepted_calls(self):
        with self.lock:
            return [c for c in self.calls if c["status"] == 204]

    # -- request handling ----------------------------------------------------------------------------------
    def handle(self, request, method):
        parts = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        if parts.path.endswith("/oauth2/v2.0/token"):
            return self.entra(request, method, parts, body)
        if parts.path == "/metadata/identity/oauth2/token":
            return self.imds(request, method, parts)
        if parts.path in ("/v2.1/track", "/v2/track"):
            return self.track(request, method, body)
        return self.ingest(request, method, parts, body)

    def reply(self, request, status, body=b"", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        request.send_response(status)
        for name, value in headers:
            request.send_header(name, value)
        if body:
            request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def issue(self, request, kind, fields, audience):
        token = "fake-token-" + uuid.uuid4().hex
        with self.lock:
            self.tokens[token] = (time.time() + self.token_lifetime, audience)
            self.token_requests.append((time.time(), kind, fields))
        return token

    def entra(self, request, method, parts, body):
        fields = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if method != "POST" or parts.path != "/%s/oauth2/v2.0/token" % TENANT:
            return self.reply(request, 400, {"error": "invalid_request"})
        if request.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return self.reply(request, 400, {"error": "invalid_request", "error_description": "form expected"})
        if fields.get("grant_type") != "client_credentials" or fields.get("client_id") != CLIENT_ID:
            return self.reply(request, 400, {"error": "invalid_client"})
        audience = scope_audience(fields.get("scope", ""))
        if audience not in AUDIENCES:
            return self.reply(request, 400, {"error": "invalid_scope"})
        if "client_secret" in fields:
            if fields["client_secret"] != CLIENT_SECRET:
                return self.reply(request, 401, {"error": "invalid_client"})
            kind = "secret"
        elif fields.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" \
                and fields.get("client_assertion", "").startswith("eyJ"):
            kind = "workload"
        else:
            return self.reply(request, 400, {"error": "invalid_request"})
        token = self.issue(request, kind, fields, audience)
        self.reply(request, 200, {"token_type": "Bearer", "expires_in": self.token_lifetime,
                                  "ext_expires_in": self.token_lifetime, "access_token": token})

    def imds(self, request, method, parts):
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if method != "GET" or request.headers.get("Metadata") != "true":
            return self.reply(request, 400, {"error": "invalid_request", "error_description": "Metadata header"})
        if query.get("api-version") not in ("2018-02-01", "2019-08-01") or query.get("resource") not in AUDIENCES:
            return self.reply(request, 400, {"error": "invalid_resource"})
        token = self.issue(request, "managed", query, query["resource"])
        self.reply(request, 200, {"access_token": token, "expires_on": str(int(time.time() + self.token_lifetime)),
                                  "expires_in": str(self.token_lifetime), "resource": query["resource"],
                                  "token_type": "Bearer"})

    def bearer_ok(self, request):
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        with self.lock:
            expiry, audience = self.tokens.get(header[7:], (0, None))
        return expiry > time.time() and audience == self.audience

    def ingest(self, request, method, parts, body):
        call = {"time": time.time(), "wire": len(body), "request_id": request.headers.get("x-ms-client-request-id"),
                "stream": None, "count": 0, "status": None}

        def finish(status, payload=b"", headers=()):
            call["status"] = status
            with self.lock:
                self.calls.append(call)
            self.reply(request, status, payload, headers)

        match = PATH.match(parts.path)
        if method != "POST" or not match:
            return finish(404, {"error": {"code": "NotFound", "message": "no such route"}})
        dcr, stream = match.groups()
        call["stream"] = stream
        if parse_qs(parts.query).get("api-version") != ["2023-01-01"]:
            return finish(400, {"error": {"code": "InvalidApiVersion", "message": "api-version 2023-01-01 expected"}})
        if not self.bearer_ok(request):
            return finish(401, {"error": {"code": "InvalidToken", "message": "missing, unknown or expired token"}},
                          [("WWW-Authenticate", 'Bearer authorization_uri="%s"' % self.url)])
        if dcr != DCR_ID:
            return finish(403, {"error": {"code": "OperationFailed", "message": "no access to DCR '%s'" % dcr}})
        if stream not in self.streams:
            return finish(404, {"error": {"code": "InvalidStream", "message": "unknown stream " + stream}})
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
            return finish(415, {"error": {"code": "UnsupportedMediaType", "message": "application/json expected"}})
        if len(body) > 1048576:
            return finish(413, {"error": {"code": "ContentLengthLimitExceeded",
                                          "message": "Maximum allowed content length: 1048576 bytes (1 MB). "
                                                     "Provided content length: %d bytes." % len(body)}})
        rid = call["request_id"]
        if not rid or not GUID.match(rid):
            self.violations.append("request id not a GUID: %r" % rid)
        with self.lock:
            fault = self.faults.pop(0) if self.faults else None
        if fault:
            status, headers, payload = fault
            return finish(status, payload, headers)
        raw = body
        if request.headers.get("Content-Encoding") == "gzip":
            try:
                raw = gzip.decompress(body)
            except OSError:
                return finish(400, {"error": {"code": "InvalidContentEncoding", "message": "not gzip"}})
        elif request.headers.get("Content-Encoding"):
            return finish(400, {"error": {"code": "InvalidContentEncoding", "message": "only gzip"}})
        call["raw"] = len(raw)
        if len(raw) > 50 * 1048576:
            return finish(413, {"error": {"code": "PayloadSizeLimitExceeded", "message": "decompressed over 50 MiB"}})
        if len(raw) > 1000000:
            self.violations.append("uncompressed batch of %d bytes exceeds the exporter's 1,000,000 cap" % len(raw))
        try:
            rows = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            return finish(400, {"error": {"code": "InvalidPayload", "message": "malformed JSON: %s" % error}})
        if isinstance(rows, dict):
            return finish(204)  # the real service answers 204 and stores nothing
        if not isinstance(rows, list):
            return finish(400, {"error": {"code": "InvalidPayload", "message": "JSON array expected"}})
        declared = self.streams[stream]
        now = datetime.now(timezone.utc)
        stored = []
        for row in rows:
            if not isinstance(row, dict):
                return finish(400, {"error": {"code": "InvalidPayload", "message": "array of objects expected"}})
            unknown = set(row) - set(declared)
            missing = set(declared) - set(row)
            if unknown or missing:
                self.violations.append("%s row: unknown %s, missing %s" % (stream, sorted(unknown), sorted(missing)))
            clean = {}
            for name, kind in declared.items():
                if name not in row:
                    continue
                if not type_ok(kind, row[name]):
                    self.violations.append("%s.%s: %r is not %s" % (stream, name, row[name], kind))
                    continue
                value = row[name]
                if isinstance(value, str) and len(value.encode()) > 65536:
                    value = value.encode()[:65536].decode(errors="ignore")
                clean[name] = value
            generated = clean.get("TimeGenerated")
            when = datetime.fromisoformat(generated.replace("Z", "+00:00")) if generated else None
            if when is None or not (now - timedelta(days=2) <= when <= now + timedelta(days=1)):
                clean["TimeGenerated"] = now.isoformat()
            clean["_RequestId"] = rid
            stored.append(clean)
        call["count"] = len(stored)
        with self.lock:
            self.rows.setdefault(stream, []).extend(stored)
        finish(204)

    def track(self, request, method, body):
        raw = body
        if request.headers.get("Content-Encoding") == "gzip":
            try:
                raw = gzip.decompress(body)
            except OSError:
                return self.reply(request, 400, {"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
        content_type = request.headers.get("Content-Type", "").split(";")[0]
        try:
            if content_type == "application/x-json-stream":
                items = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            else:
                items = json.loads(raw.decode())
        except ValueError:
            return self.reply(request, 400, {"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
        if not isinstance(items, list):
            items = [items]
        for item in items:
            self.check_envelope(item)
        with self.lock:
            self.track_calls.append({"time": time.time(), "count": len(items),
                                     "request_id": request.headers.get("x-ms-client-request-id"), "items": items})
            fault = self.track_faults.pop(0) if self.track_faults else None
        answer = fault(items) if fault else None
        if answer is None:
            with self.lock:
                self.envelopes.extend(items)
            return self.reply(request, 200, {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
        status, headers, payload, accepted = answer
        with self.lock:
            self.envelopes.extend(accepted)
        self.reply(request, status, payload, headers)

    def check_envelope(self, item):
        name = item.get("name")
        data = item.get("data", {})
        base = data.get("baseData", {})
        problems = []
        if ENVELOPES.get(name) != data.get("baseType"):
            problems.append("name/baseType %s/%s" % (name, data.get("baseType")))
        if not GUID.match(item.get("iKey", "")):
            problems.append("iKey")
        try:
            datetime.fromisoformat(item.get("time", "").replace("Z", "+00:00"))
        except ValueError:
            problems.append("time")
        if base.get("ver") != 2:
            problems.append("ver")
        if "duration" in base and not DURATION.match(base["duration"]):
            problems.append("duration %r" % base["duration"])
        for key in ("responseCode", "resultCode"):
            if key in base and not isinstance(base[key], str):
                problems.append(key)
        if not all(isinstance(v, str) for v in base.get("properties", {}).values()):
            problems.append("properties must be strings")
        elif any(len(v) > 8192 for v in base.get("properties", {}).values()):
            problems.append("a property value over 8,192 characters")
        if len(base.get("message", "")) > 32768:
            problems.append("a message over 32,768 characters")
        if len(json.dumps(item, ensure_ascii=False).encode()) > 65536:
            problems.append("an item over 64 KB")
        if not all(isinstance(v, (int, float)) for v in base.get("measurements", {}).values()):
            problems.append("measurements must be numbers")
        if problems:
            self.violations.append("envelope %s: %s" % (name, ", ".join(problems)))
