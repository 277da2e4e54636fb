"""The edge's HTTP reverse proxy (azbridge -H, YAML Http: true) end to end: HTTP clients talk to the relay's
HTTP-mode endpoint, the relay hands each request to the edge's listener, and the edge proxies it to a real nginx
(DAV for uploads, files for downloads) with bodies streamed both ways."""
import concurrent.futures
import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

import agents
from conftest import free_port

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is installed by scripts/setup.sh")

NGINX_CONFIG = """
{user}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/nginx-access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        {tls}
        root {dir}/www;
        client_max_body_size 0;
        location /app/ {{
            dav_methods PUT DELETE;
            create_full_put_path on;
        }}
        location = /app/headers {{
            default_type text/plain;
            return 200 "uri=$request_uri|host=$http_host|via=$http_via|xff=$http_x_forwarded_for|proto=$http_x_forwarded_proto|xhost=$http_x_forwarded_host|tp=$http_traceparent\\n";
        }}
    }}
}}
"""


class Nginx:
    """nginx on a free loopback port serving {dir}/www, PUT allowed under /app/ (its DAV module)."""

    def __init__(self, directory, tls=None):
        self.directory = directory
        self.port = free_port()
        for sub in ("www/app", "body"):
            os.makedirs(directory / sub, exist_ok=True)
        tls_lines = ""
        if tls:
            tls_lines = "ssl_certificate %s; ssl_certificate_key %s;" % tls
        config = directory / "nginx.conf"
        # As root, workers would run as nobody, who cannot enter pytest's private temporary directories.
        user = "user root;" if os.geteuid() == 0 else ""
        config.write_text(NGINX_CONFIG.format(dir=directory, port=self.port, tls=tls_lines, user=user).replace(
            "listen 127.0.0.1:%d;" % self.port, "listen 127.0.0.1:%d%s;" % (self.port, " ssl" if tls else "")))
        self.popen = subprocess.Popen(["nginx", "-c", str(config), "-p", str(directory)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        agents.wait_port(self.port)

    def path(self, name):
        return self.directory / "www" / "app" / name

    def stop(self):
        self.popen.terminate()
        self.popen.wait(10)


@pytest.fixture
def web(tmp_path):
    """A relay with the anonymous-sender entity `web`, nginx, and an edge forwarding `web` to nginx's /app."""
    nginx = Nginx(tmp_path)
    relay = edge = None
    try:
        relay = agents.start_relay(tmp_path, ["web"], extra=["--anonymous-sender", "web"])
        metrics_port = free_port()
        edge = start_http_edge(tmp_path, relay, ["web:http/127.0.0.1:%d/app" % nginx.port],
                               extra=["--metrics", "127.0.0.1:%d" % metrics_port])
        edge.metrics_port = metrics_port
        yield relay, nginx, edge
    finally:
        for process in (edge, relay):
            if process is not None:
                process.stop()
        nginx.stop()


def start_http_edge(tmp_path, relay, specs, extra=()):
    args = ["edge", "-e", "ws://127.0.0.1:%d" % relay.port, "-K", agents.KEY_NAME, "-k", agents.KEY, "-a", "1"]
    for spec in specs:
        args += ["-H", spec]
    process = agents.Process(args + list(extra), str(tmp_path / ("edge-%d.log" % time.time_ns())))
    process.wait_for_log("listener online")
    return process


def request(relay, method, path, body=None, headers=None, timeout=120):
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=timeout)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def test_requests_reach_the_target_as_through_a_reverse_proxy(web):
    """Path: the relay name stripped and the prefix applied; Host the target's; Via, X-Forwarded-* and the
    trace added; small bodies on the control channel, large ones through a rendezvous, both byte-exact."""
    relay, nginx, edge = web
    response, body = request(relay, "GET", "/web/headers?x=1&y=%C3%B8",
                             headers={"X-Forwarded-For": "198.51.100.7", "Connection": "keep-alive"})
    assert response.status == 200, body
    fields = dict(part.split("=", 1) for part in body.decode().strip().split("|"))
    assert fields["uri"] == "/app/headers?x=1&y=%C3%B8"
    assert fields["host"] == "127.0.0.1:%d" % nginx.port
    assert fields["via"].endswith("1.1 hyrelay"), fields
    # The client's own X-Forwarded-For is not believed: the target gets the address the relay saw.
    assert fields["xff"] == "127.0.0.1"
    assert fields["proto"] == "http"
    assert fields["xhost"] == "127.0.0.1:%d" % relay.port
    assert fields["tp"].startswith("00-") and len(fields["tp"]) == 55
    assert "hyrelay" in response.getheader("Via")

    # A small PUT rides the control channel; a 300 KB one and its download go through rendezvous.
    for name, size in (("small.bin", 100), ("medium.bin", 300_000)):
        payload = os.urandom(size)
        response, _ = request(relay, "PUT", "/web/" + name, body=payload)
        assert response.status in (201, 204), response.status
        assert nginx.path(name).read_bytes() == payload
        response, downloaded = request(relay, "GET", "/web/" + name)
        assert response.status == 200 and downloaded == payload
    response, _ = request(relay, "GET", "/web/missing")
    assert response.status == 404
    response, body = request(relay, "HEAD", "/web/medium.bin")
    assert response.status == 200 and body == b""

    edge.wait_for_log("status=404")
    log = edge.log()
    assert "status=404" in log and "route=rendezvous" in log and "route=control_channel" in log
    assert agents.metric_value(edge.metrics_port, "hyrelay_http_forwarded_requests_total", entity="web",
                               code="2xx") >= 6
    assert agents.metric_value(edge.metrics_port, "hyrelay_http_forwarded_requests_total", entity="web",
                               code="4xx") == 1
    assert agents.metric_value(edge.metrics_port, "hyrelay_http_forwarded_bytes_total", entity="web",
                               direction="down") >= 300_100


def stream_put(port, path, size, chunked=False, chunk=1 << 20):
    """PUTs `size` random bytes, streamed; returns (status, sha256 of what was sent)."""
    digest = hashlib.sha256()
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: %d" % size
    sock.sendall(("PUT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\nConnection: close\r\n\r\n" % (path, framing)).encode())
    block = os.urandom(chunk)
    sent = 0
    while sent < size:
        piece = block[: min(chunk, size - sent)]
        # Different bytes per block, cheaply: a running counter at the front.
        piece = sent.to_bytes(8, "big") + piece[8:]
        digest.update(piece)
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        sent += len(piece)
    if chunked:
        sock.sendall(b"0\r\n\r\n")
    status_line = sock.makefile("rb").readline()
    sock.close()
    return int(status_line.split()[1]), digest.hexdigest()


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def test_a_gigabyte_each_way_streams_in_bounded_memory(web):
    """1 GiB uploaded (a Content-Length upload, sent on by the edge chunked) and downloaded back, byte-exact,
    while the edge's and the relay's memory stay bounded: bodies are streamed, never held."""
    relay, nginx, edge = web
    size = 1 << 30
    edge_before, relay_before = agents.rss(edge.popen.pid), agents.rss(relay.popen.pid)
    status, sent_digest = stream_put(relay.port, "/web/big.bin", size)
    assert status in (201, 204), status
    assert file_sha256(nginx.path("big.bin")) == sent_digest

    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=120)
    connection.request("GET", "/web/big.bin")
    response = connection.getresponse()
    assert response.status == 200
    digest, received = hashlib.sha256(), 0
    while True:
        block = response.read(1 << 20)
        if not block:
            break
        digest.update(block)
        received += len(block)
    connection.close()
    assert received == size and digest.hexdigest() == sent_digest
    for name, pid, before in (("edge", edge.popen.pid, edge_before), ("relay", relay.popen.pid, relay_before)):
        grown = agents.rss(pid) - before
        assert grown < 64 << 20, "%s grew by %d MiB moving 2 GiB" % (name, grown >> 20)
    assert agents.metric_value(edge.metrics_port, "hyrelay_http_forwarded_bytes_total", entity="web",
                               direction="up") >= size


def test_a_chunked_upload_and_200_concurrent_requests(web):
    relay, nginx, edge = web
    status, digest = stream_put(relay.port, "/web/chunked.bin", 5_000_000, chunked=True, chunk=70_000)
    assert status in (201, 204)
    assert file_sha256(nginx.path("chunked.bin")) == digest

    files = {}
    for index in range(20):
        payload = os.urandom(1000 + index * 9000)
        nginx.path("f%d" % index).write_bytes(payload)
        files["f%d" % index] = payload

    def fetch(index):
        name = "f%d" % (index % 20)
        response, body = request(relay, "GET", "/web/" + name, timeout=60)
        return response.status, body == files[name]

    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(fetch, range(200)))
    assert results == [(200, True)] * 200
    assert agents.metric_value(edge.metrics_port, "hyrelay_http_forwarded_requests_total", entity="web",
                               code="2xx") >= 201


def test_target_failures_are_answered_with_a_status_and_a_reason(tmp_path):
    """Nothing listening → 502 naming the target; a target that never answers → 504 after --http-timeout;
    an https target with a certificate nobody vouches for → 502, unless the YAML says Insecure."""
    relay = agents.start_relay(tmp_path, ["down", "slow", "tls", "tlsok"],
                               extra=sum((["--anonymous-sender", name] for name in ("down", "slow", "tls", "tlsok")), []))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    ca = agents.make_ca(tmp_path)
    cert, key = agents.make_server_certificate(tmp_path, ca, "nginx")
    nginx = Nginx(tmp_path, tls=(cert, key))
    nginx.path("hello.txt").write_bytes(b"hello over tls\n")
    config = tmp_path / "edge.yml"
    config.write_text("RemoteForward:\n  - RelayName: tlsok\n    Http: true\n    PortName: https\n"
                      "    Host: 127.0.0.1\n    HostPort: %d\n    Path: /app\n    Insecure: true\n" % nginx.port)
    metrics_port = free_port()
    edge = start_http_edge(tmp_path, relay, [
        "down:http/127.0.0.1:%d" % free_port(), "slow:http/127.0.0.1:%d" % silent.getsockname()[1],
        "tls:https/127.0.0.1/app:%d" % nginx.port], extra=[
        "-f", str(config), "--http-timeout", "1", "--metrics", "127.0.0.1:%d" % metrics_port])
    try:
        edge.wait_for_log("listener online")
        response, body = request(relay, "GET", "/down/x")
        assert response.status == 502
        assert b"cannot reach http://127.0.0.1:" in body and b"refused" in body.lower(), body

        started = time.time()
        response, body = request(relay, "POST", "/slow/x", body=b"data")
        assert response.status == 504 and b"did not answer within 1 s" in body, body
        assert time.time() - started < 10

        response, body = request(relay, "GET", "/tls/hello.txt")
        assert response.status == 502 and b"https://127.0.0.1:%d/app: its TLS certificate" % nginx.port in body, body
        response, body = request(relay, "GET", "/tlsok/hello.txt")
        assert response.status == 200 and body == b"hello over tls\n"

        for reason in ("target_connection_refused", "response_timeout", "target_tls_untrusted"):
            assert agents.metric_value(metrics_port, "hyrelay_http_forward_failures_total", reason=reason) == 1, reason
        log = edge.log()
        assert "reason=response_timeout" in log and "reason=target_connection_refused" in log
    finally:
        edge.stop()
        relay.stop()
        nginx.stop()
        silent.close()


class SlowHTTPServer:
    """Answers every request after `delay` seconds with a fixed body: a slow service to drain against."""

    def __init__(self, delay):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.delay = delay
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(connection,), daemon=True).start()

    def answer(self, connection):
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                data += chunk
            time.sleep(self.delay)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nslow!")

    def close(self):
        self.sock.close()


def test_sigterm_drains_requests_under_way(tmp_path):
    """An edge told to stop takes no new requests but finishes the ones its targets are still answering."""
    relay = agents.start_relay(tmp_path, ["drain"], extra=["--anonymous-sender", "drain"])
    service = SlowHTTPServer(delay=2)
    edge = start_http_edge(tmp_path, relay, ["drain:http/127.0.0.1:%d" % service.port], extra=["--grace", "10"])
    try:
        results = []
        worker = threading.Thread(target=lambda: results.append(request(relay, "GET", "/drain/x")))
        worker.start()
        time.sleep(0.7)
        edge.popen.send_signal(15)
        worker.join(15)
        response, body = results[0]
        assert response.status == 200 and body == b"slow!"
        assert edge.popen.wait(15) == 0
        assert "open_http_requests=0" in edge.log()
    finally:
        edge.stop()
        relay.stop()
        service.close()
