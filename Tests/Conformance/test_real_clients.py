"""What clients nobody here wrote found (issue #28), each through real processes: HTTP framing that is the
sender's end to end (Python's `http.server` and a WSGI app as `-H` targets read only `Content-Length` bodies),
and the framing an SDK-shaped listener sees."""
import hashlib
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

import agents
import hc
from conftest import free_port
from test_http_forward import start_http_edge


class LengthOnlyHandler(BaseHTTPRequestHandler):
    """Python's own server as many embedded ones behave: a body is `Content-Length` bytes or nothing. Answers
    the body's hash and the framing it saw; `/big` answers 300,000 bytes with their length; HEAD says how long
    GET's answer would be."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, body, with_body=True):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.answer(json.dumps({
            "sha256": hashlib.sha256(body).hexdigest(), "length": self.headers.get("Content-Length"),
            "te": self.headers.get("Transfer-Encoding")}).encode())

    def do_GET(self):
        self.answer(b"x" * 300_000 if self.path.endswith("/big") else b"small")

    def do_HEAD(self):
        self.answer(b"x" * 300_000 if self.path.endswith("/big") else b"small", with_body=False)


def wsgi_app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    answer = hashlib.sha256(body).hexdigest().encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
    return [answer]


class QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def targets(tmp_path):
    """A relay with anonymous senders on `py` and `wsgi`, an edge proxying them to Python's http.server and to a
    wsgiref app."""
    python_server = ThreadingHTTPServer(("127.0.0.1", 0), LengthOnlyHandler)
    wsgi_server = make_server("127.0.0.1", 0, wsgi_app, handler_class=QuietWSGIHandler)
    for server in (python_server, wsgi_server):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = edge = None
    try:
        relay = agents.start_relay(tmp_path, ["py", "wsgi"], extra=["--anonymous-sender", "py",
                                                                     "--anonymous-sender", "wsgi"])
        edge = start_http_edge(tmp_path, relay, [
            "py:http/127.0.0.1:%d" % python_server.server_address[1],
            "wsgi:http/127.0.0.1:%d" % wsgi_server.server_address[1]])
        yield relay
    finally:
        agents.stop_all(edge, relay)
        python_server.shutdown()
        wsgi_server.shutdown()


def post(relay, path, body, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=120)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("size", [100, 300_000, 12_000_000])
def test_a_length_framed_upload_reaches_servers_that_read_no_chunks(targets, size):
    """A POST with Content-Length (small: the control channel; large: a rendezvous) reaches Python's
    http.server and a WSGI app with that Content-Length, so they read the whole body: the hashes match."""
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    digest = hashlib.sha256(payload).hexdigest()
    response, body = post(targets, "/py/upload", payload)
    assert response.status == 200, body[:300]
    seen = json.loads(body)
    assert seen == {"sha256": digest, "length": str(size), "te": None}, seen
    assert response.getheader("Content-Length") == str(len(body)), "the target's length reaches the client"
    response, body = post(targets, "/wsgi/upload", payload)
    assert response.status == 200 and body.decode() == digest


def test_chunked_stays_chunked_and_lengths_come_back(targets):
    """A chunked upload reaches the target chunked (Python's server then reads no body: its rule, not ours);
    a 300 KB answer with a length comes back with that length; HEAD answers the GET's length and no body."""
    def chunks():
        yield b"abc"
        yield b"def"
    response, body = post(targets, "/py/upload", chunks(), headers={"Transfer-Encoding": "chunked"})
    assert response.status == 200
    assert json.loads(body)["te"] == "chunked"

    connection = http.client.HTTPConnection("127.0.0.1", targets.port, timeout=60)
    connection.request("GET", "/py/big")
    response = connection.getresponse()
    data = response.read()
    assert response.getheader("Content-Length") == "300000" and response.getheader("Transfer-Encoding") is None
    assert data == b"x" * 300_000
    connection.request("HEAD", "/py/big")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") == "300000"
    assert response.read() == b""
    # The connection is still in step: a HEAD left no body behind.
    connection.request("GET", "/py/small")
    response = connection.getresponse()
    assert response.read() == b"small"
    connection.close()

    # HTTP/1.0: no chunks either way; the answer is delimited as the target delimited it.
    with socket.create_connection(("127.0.0.1", targets.port), timeout=30) as sock:
        sock.sendall(b"GET /py/small HTTP/1.0\r\nHost: x\r\n\r\n")
        raw = hc.read_to_end(sock)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower() and rest == b"small", raw[:300]


def test_an_sdk_listener_sees_the_senders_content_length(tmp_path):
    """The `request` message a listener reads carries the sender's Content-Length (Azure's requestHeaders do),
    on the control channel and on a rendezvous."""
    import asyncio
    from websockets.asyncio.client import connect

    relay = agents.start_relay(tmp_path, ["hc"], extra=["--anonymous-sender", "hc"])
    seen = []

    async def listener(ready):
        token = hc.sas_token("http://127.0.0.1:%d/hc" % relay.port, agents.KEY_NAME, agents.KEY)
        url = hc.listen_uri("ws://127.0.0.1:%d" % relay.port, "hc", token=token)
        async with connect(url, max_size=None) as control:
            ready.set()
            while len(seen) < 2:
                message = json.loads(await control.recv())
                request = message["request"]
                if "method" not in request:
                    async with connect(request["address"], max_size=None) as rendezvous:
                        request = json.loads(await rendezvous.recv())["request"]
                        seen.append(request["requestHeaders"])
                        while True:
                            part = await rendezvous.recv()
                            if isinstance(part, bytes):
                                break
                        await rendezvous.send(json.dumps({"response": {
                            "requestId": request["id"], "statusCode": 200, "body": False}}))
                    continue
                seen.append(request["requestHeaders"])
                if request.get("body"):
                    await control.recv()
                await control.send(json.dumps({"response": {
                    "requestId": request["id"], "statusCode": 200, "body": False}}))

    def run():
        ready = asyncio.Event()

        async def main():
            task = asyncio.ensure_future(listener(ready))
            await ready.wait()
            await asyncio.get_running_loop().run_in_executor(None, send_both)
            await asyncio.wait_for(task, 30)
        asyncio.run(main())

    def send_both():
        time.sleep(0.3)
        for size in (10, 200_000):
            response, _ = post(relay, "/hc/x", b"a" * size)
            assert response.status == 200

    try:
        run()
    finally:
        relay.stop()
    lengths = [{k.lower(): v for k, v in headers.items()}.get("content-length") for headers in seen]
    assert lengths == ["10", "200000"], seen


def spans_of(process, name):
    return [json.loads(line) for line in process.log().splitlines()
            if line.startswith("{") and '"message":"span"' in line and '"%s"' % name in line]


@pytest.mark.parametrize("size", [100, 300_000], ids=["control-channel", "rendezvous"])
def test_one_trace_per_http_request_on_either_route(tmp_path, size):
    """A request on the control channel and one through a rendezvous (large body): the edge's `edge.http` span
    is the child of the relay's `relay.http` span, both in the trace of the caller's `traceparent`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), LengthOnlyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = edge = None
    try:
        relay = agents.start_relay(tmp_path, ["py"], extra=["--anonymous-sender", "py", "--log-format", "json"])
        edge = start_http_edge(tmp_path, relay, ["py:http/127.0.0.1:%d" % server.server_address[1]],
                               extra=["--log-format", "json"])
        trace_id = "4bf92f3577b34da6a3ce929d0e0e%04x" % (size % (1 << 16))
        caller = "00-%s-00f067aa0ba902b7-01" % trace_id
        response, _ = post(relay, "/py/upload", b"u" * size, headers={"traceparent": caller})
        assert response.status == 200
        agents.wait_until(lambda: spans_of(edge, "edge.http") and spans_of(relay, "relay.http"), timeout=10,
                          what="both spans logged")
        relay_span = spans_of(relay, "relay.http")[-1]
        edge_span = spans_of(edge, "edge.http")[-1]
        assert relay_span["trace_id"] == trace_id, relay_span
        assert relay_span.get("parent_span_id") == "00f067aa0ba902b7", relay_span
        assert edge_span["trace_id"] == trace_id, (edge_span, relay_span)
        assert edge_span.get("parent_span_id") == relay_span["span_id"], (edge_span, relay_span)
    finally:
        agents.stop_all(edge, relay)
        server.shutdown()


RELAY_WITH_SHORT_GRACE = """listen: "127.0.0.1:{port}"
namespaceRules:
  - {{keyName: {key_name}, primaryKey: "{key}", rights: [Listen, Send]}}
hybridConnections:
  - name: hc
limits:
  tokenGraceSeconds: {grace}
  clockSkewSeconds: 300
  authFailureBurst: 100000
  authFailuresPerSecond: 80000
"""


def listen_status(port, token):
    """Status of a listener's upgrade, as an SDK sees it, and whether the socket then stayed open a moment."""
    target = "/$hc/hc?sb-hc-action=listen&sb-hc-id=%s&sb-hc-token=%s" % (
        "l1", hc.form_encode_plus(token))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                      % (target, port)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        return head.split(b"\r\n", 1)[0].decode(), head


@pytest.mark.parametrize("grace,age", [(5, 100), (300, 300)], ids=["short-grace", "defaults-at-the-edge"])
def test_a_token_the_relay_admits_it_does_not_close_at_once(tmp_path, grace, age):
    """A listener token `age` seconds past `se` is inside the clock-skew window: today it is admitted and its
    channel closed in the same second, and an SDK listener that reconnects without backoff loops. Admission
    and expiry use one window: it is refused at the handshake with 401 ExpiredToken, every time, and no
    listener ever registers."""
    port = free_port()
    relay = agents.start_relay_from_config(tmp_path, RELAY_WITH_SHORT_GRACE.format(
        port=port, key_name=agents.KEY_NAME, key=agents.KEY, grace=grace))
    try:
        resource = "http://127.0.0.1:%d/hc" % port
        # As the Node listener does: reconnect at once, for a second.
        statuses = []
        deadline = time.time() + 1
        while time.time() < deadline:
            token = hc.sas_token(resource, agents.KEY_NAME, agents.KEY, expiry=int(time.time()) - age)
            status, head = listen_status(port, token)
            statuses.append(status)
        assert statuses and all(" 401 " in s + " " for s in statuses), set(statuses)
        assert b"ExpiredToken" in head, head
        assert "listener connected" not in relay.log()
        # A token with life left still registers.
        fresh = hc.sas_token(resource, agents.KEY_NAME, agents.KEY, ttl=600)
        assert " 101 " in listen_status(port, fresh)[0] + " "
    finally:
        relay.stop()


def test_a_lost_leg_is_connection_lost_and_span_status_is_ok_or_error(tmp_path):
    """A listener whose socket drops without a Close (a killed edge): the relay counts the tunnel as
    `connection_lost`, not `close_1001` (the sender's answer to the relay's Going Away), and its relay.bridge
    span has status error. Span `status` is ok/error only; the HTTP code is `http.response.status_code`.
    A refused rendezvous keeps the sender's sb-hc-id and its log line carries the trace id."""
    import asyncio
    from websockets.asyncio.client import connect

    metrics_port = free_port()
    relay = agents.start_relay(tmp_path, ["hc"], extra=["--log-format", "json",
                                                         "--metrics", "127.0.0.1:%d" % metrics_port])
    base = "ws://127.0.0.1:%d" % relay.port
    token = hc.sas_token("http://127.0.0.1:%d/hc" % relay.port, agents.KEY_NAME, agents.KEY)

    async def run():
        control = await connect(hc.listen_uri(base, "hc", token=token))
        sender_task = asyncio.ensure_future(connect(base + "/$hc/hc?sb-hc-id=sender-42",
                                                    additional_headers={"ServiceBusAuthorization": token}))
        kind, accept = hc.parse_control(await asyncio.wait_for(control.recv(), 10))
        # The rendezvous leg is a raw socket we can drop without a Close.
        address = accept["address"]
        host_port = address.split("://", 1)[1].split("/", 1)[0]
        path = "/" + address.split("://", 1)[1].split("/", 1)[1]
        host, port = host_port.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)))
        raw.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     % (path, host_port)).encode())
        assert b" 101 " in raw.recv(4096)
        sender = await sender_task
        raw.close()  # no Close frame: the listener's connection is lost
        try:
            await asyncio.wait_for(sender.recv(), 5)
        except Exception:
            pass
        await sender.close()
        await control.close()
        # A refused sender: an entity nobody listens on any more -> 404 with its id and trace in the log.
        try:
            await connect(base + "/$hc/hc?sb-hc-id=refused-7", additional_headers={
                "ServiceBusAuthorization": token, "traceparent": "00-%s-00f067aa0ba902b7-01" % ("ab" * 16)})
        except Exception:
            pass

    try:
        asyncio.run(run())
        agents.wait_until(lambda: agents.metric_value(metrics_port, "hyrelay_tunnels_closed_total", role="relay",
                                                     cause="connection_lost") >= 1, timeout=10,
                          what="the lost tunnel counted as connection_lost")
        assert agents.metric_value(metrics_port, "hyrelay_tunnels_closed_total", role="relay", cause="close_1001") == 0
        lines = [json.loads(line) for line in relay.log().splitlines() if line.startswith("{")]
        spans = [line for line in lines if line.get("message") == "span"]
        assert all(span["status"] in ("ok", "error") for span in spans), {span["status"] for span in spans}
        bridge = [span for span in spans if span["span_name"] == "relay.bridge"]
        assert bridge and bridge[-1]["status"] == "error" and bridge[-1]["close_cause"] == "connection_lost"
        accepted = [span for span in spans if span["span_name"] == "relay.rendezvous"
                    and span.get("http.response.status_code") == "101"]
        assert accepted and accepted[0]["tracking_id"] == "sender-42"
        refused = [span for span in spans if span["span_name"] == "relay.rendezvous"
                   and span.get("tracking_id") == "refused-7"]
        assert refused and refused[0]["status"] == "error" and refused[0]["http.response.status_code"] == "404"
        refusal_lines = [line for line in lines if line.get("message", "").startswith("refused request")
                         and line.get("trace_id") == "ab" * 16]
        assert refusal_lines, [line for line in lines if "refused" in line.get("message", "")]
    finally:
        relay.stop()


class SlowUnixEcho:
    """A Unix echo server as Python writes one: listen(5), one thread accepting, a small pause per accept (a
    busy service), so a burst of connects fills its backlog."""

    def __init__(self, path):
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(5)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            time.sleep(0.02)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    def close(self):
        self.closed = True
        self.server.close()


def test_a_burst_of_tunnels_to_a_unix_socket_with_a_small_backlog_loses_none(tmp_path):
    """20 concurrent tunnels, 3 rounds, to a Unix echo server with a backlog of 5: a connect that finds the
    backlog full (EAGAIN at once, where TCP would wait) is tried again within the dial timeout; none is lost."""
    import tempfile
    directory = tempfile.mkdtemp(prefix="hy-", dir="/tmp")
    path = directory + "/echo.sock"
    server = SlowUnixEcho(path)
    relay = agents.start_relay(tmp_path, ["usock"])
    url = "ws://127.0.0.1:%d" % relay.port
    edge = client = None
    try:
        edge = agents.start_edge(tmp_path, url, ["usock:echo/%s" % path])
        port = free_port()
        client = agents.start_client(tmp_path, url, ["127.0.0.1:%d/echo:usock" % port], [port])

        def one(index):
            data = ("tunnel %d " % index).encode() * 100
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                return hc.read_to_end(sock) == data

        import concurrent.futures
        for _ in range(3):
            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                results = list(pool.map(one, range(20)))
            assert results.count(True) == 20, "%d of 20 tunnels lost: %s" % (
                results.count(False), [l for l in edge.log().splitlines() if "dial" in l][-3:])
    finally:
        agents.stop_all(client, edge, relay)
        server.close()


def test_errors_are_said_in_words(tmp_path):
    """What a new operator met: a misspelled right, a port out of range, an unreadable certificate, each said
    with where and what is allowed; `hyrelay check` fails on a certificate or key file that is missing."""
    import subprocess
    port = free_port()
    config = tmp_path / "relay.yml"
    config.write_text('listen: "127.0.0.1:%d"\nhybridConnections:\n  - name: hc\n    rules:\n'
                      '      - {keyName: k, primaryKey: "x", rights: [Sned]}\n' % port)
    checked = subprocess.run([agents.binary(), "check", "-f", str(config)], capture_output=True, text=True)
    out = checked.stdout + checked.stderr
    assert checked.returncode == 2, out
    assert "line 5" in out and "'Sned' is not a right: Listen, Send or Manage" in out, out
    assert "Cannot initialize" not in out

    result = subprocess.run([agents.binary(), "relay", "--listen", "127.0.0.1:94430", "--hybrid-connection", "hc"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "port 94430" in result.stderr and "0 to 65535" in result.stderr, result.stderr
    result = subprocess.run([agents.binary(), "relay", "--hybrid-connection", "hc", "--metrics", "127.0.0.1:94430"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "port 94430" in result.stderr, result.stderr

    config.write_text('listen: "127.0.0.1:%d"\ntls:\n  certificate: %s/missing.pem\n  key: %s/missing.key\n'
                      'hybridConnections:\n  - name: hc\n' % (port, tmp_path, tmp_path))
    checked = subprocess.run([agents.binary(), "check", "-f", str(config)], capture_output=True, text=True)
    out = checked.stdout + checked.stderr
    assert checked.returncode == 2 and "missing.pem" in out, out
    (tmp_path / "missing.pem").write_text("not a certificate\n")
    checked = subprocess.run([agents.binary(), "check", "-f", str(config)], capture_output=True, text=True)
    out = checked.stdout + checked.stderr
    assert checked.returncode == 2 and "failedToLoad" not in out and "PEM" in out, out


class PageHandler(BaseHTTPRequestHandler):
    """A small web site: a page with an image, a stylesheet and a script; every path it served is recorded."""
    protocol_version = "HTTP/1.1"
    served = []
    files = {
        "/index.html": ("text/html", b'<html><head><link rel="stylesheet" href="style.css">'
                                     b'<script src="app.js"></script></head>'
                                     b'<body><img src="img/logo.png"><p>hello</p></body></html>'),
        "/style.css": ("text/css", b"p { color: #123; }"),
        "/app.js": ("application/javascript", b"document.title = 'loaded';"),
        "/img/logo.png": ("image/png", bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")),
    }

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        PageHandler.served.append((path, self.headers.get("Cookie")))
        if path not in self.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        kind, body = self.files[path]
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_browser_loads_every_sub_resource_of_a_protected_page(tmp_path):
    """Headless Chromium opens `/site/index.html?sb-hc-token=…` on an entity that requires a token: the relay turns
    the valid token into an HttpOnly cookie for `/site`, and the stylesheet, script and image (requested without
    any token) load through the relay too. The cookie never reaches the target; without it or the token, 401."""
    import shutil
    import subprocess
    browser = shutil.which("chromium")
    assert browser, "chromium (Debian package chromium) is required: scripts/setup.sh installs it"
    PageHandler.served = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = edge = None
    try:
        relay = agents.start_relay(tmp_path, ["site"])
        edge = start_http_edge(tmp_path, relay, ["site:http/127.0.0.1:%d" % server.server_address[1]])
        token = hc.sas_token("http://127.0.0.1:%d/site" % relay.port, agents.KEY_NAME, agents.KEY)
        url = "http://127.0.0.1:%d/site/index.html?sb-hc-token=%s" % (relay.port, hc.form_encode_pct(token))
        profile = tmp_path / "profile"
        result = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--user-data-dir=%s" % profile, "--virtual-time-budget=5000", "--dump-dom", url],
                                capture_output=True, text=True, timeout=120)
        assert "hello" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
        assert "<title>loaded</title>" in result.stdout, "the script ran: " + result.stdout[-1000:]
        paths = [path for path, _ in PageHandler.served]
        for path in ("/index.html", "/style.css", "/app.js", "/img/logo.png"):
            assert path in paths, (path, paths)
        assert all("hyrelay-sb-hc-token" not in (cookie or "") for _, cookie in PageHandler.served)
        # Without the token or the cookie the entity stays closed.
        status = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
        status.request("GET", "/site/style.css")
        assert status.getresponse().status == 401
        status.close()
    finally:
        agents.stop_all(edge, relay)
        server.shutdown()


def test_a_head_answered_without_a_length_leaves_the_connection_in_step(tmp_path):
    """A listener answers HEAD with no Content-Length (Node's ServerResponse does): the relay adds no chunked
    coding and no terminator, so the GET that follows on the same connection reads its own response."""
    import asyncio
    from websockets.asyncio.client import connect

    relay = agents.start_relay(tmp_path, ["hc"], extra=["--anonymous-sender", "hc"])

    async def listener(ready, count):
        token = hc.sas_token("http://127.0.0.1:%d/hc" % relay.port, agents.KEY_NAME, agents.KEY)
        async with connect(hc.listen_uri("ws://127.0.0.1:%d" % relay.port, "hc", token=token)) as control:
            ready.set()
            for _ in range(count):
                request = json.loads(await control.recv())["request"]
                if request["method"] == "HEAD":
                    await control.send(json.dumps({"response": {
                        "requestId": request["id"], "statusCode": 200, "responseHeaders": {"X-Kind": "head"},
                        "body": False}}))
                else:
                    await control.send(json.dumps({"response": {
                        "requestId": request["id"], "statusCode": 200, "body": True}}))
                    await control.send(b"get-body")

    def client():
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            sock.sendall(b"HEAD /hc/x HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = b""
            while b"\r\n\r\n" not in raw:
                raw += sock.recv(4096)
            sock.settimeout(0.5)
            try:
                raw += sock.recv(4096)  # anything after the head would be read as the next response
            except socket.timeout:
                pass
            sock.settimeout(10)
            sock.sendall(b"GET /hc/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return raw + hc.read_to_end(sock)

    async def main():
        ready = asyncio.Event()
        task = asyncio.ensure_future(listener(ready, 2))
        await ready.wait()
        raw = await asyncio.get_running_loop().run_in_executor(None, client)
        await asyncio.wait_for(task, 10)
        return raw

    try:
        raw = asyncio.run(main())
    finally:
        relay.stop()
    first, rest = raw.split(b"\r\n\r\n", 1)
    assert b"chunked" not in first.lower(), raw
    assert rest.startswith(b"HTTP/1.1 200"), "the GET's response follows the HEAD's head directly: %r" % raw
    assert rest.endswith(b"get-body"), raw


def test_the_cookie_works_beside_a_sites_own_basic_auth(tmp_path):
    """A site behind HTTP Basic: the browser re-sends `Authorization: Basic …` with every request; with the relay's
    cookie there, that header is the application's (it reaches the target) and the cookie authorizes."""
    PageHandler.served = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = edge = None
    try:
        relay = agents.start_relay(tmp_path, ["site"])
        edge = start_http_edge(tmp_path, relay, ["site:http/127.0.0.1:%d" % server.server_address[1]])
        token = hc.sas_token("http://127.0.0.1:%d/site" % relay.port, agents.KEY_NAME, agents.KEY)
        connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
        connection.request("GET", "/site/index.html?sb-hc-token=" + hc.form_encode_pct(token),
                           headers={"Authorization": "Basic dXNlcjpwdw=="})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        cookie = response.getheader("Set-Cookie")
        assert cookie and "HttpOnly" in cookie and "Path=/site" in cookie and "Max-Age=" in cookie, cookie
        assert response.getheader("Referrer-Policy") == "same-origin"
        pair = cookie.split(";", 1)[0]
        connection.request("GET", "/site/style.css", headers={
            "Authorization": "Basic dXNlcjpwdw==", "Cookie": "theme=dark; " + pair,
            "Referer": "http://127.0.0.1/site/index.html?sb-hc-token=" + hc.form_encode_pct(token)})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert ("/style.css", "theme=dark") in PageHandler.served, PageHandler.served
        connection.close()
    finally:
        agents.stop_all(edge, relay)
        server.shutdown()
