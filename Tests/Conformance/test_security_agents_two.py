"""The agent-side holes of issue #27 (security second pass), each reproduced end to end through real processes on
127.0.0.0/8: UDP flows a sender can multiply without bound, `--allow` not applied to UDP ports, `-H` path
prefixes escaped with dot-segments and encoded slashes, token endpoints answering expiries no clock can hold,
proxy passwords printed in errors and SAS keys only on the command line, and hop-by-hop and forged headers passed
on to `-H` targets."""
import functools
import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
import time

import pytest

import agents
from agents import metric_value
from conftest import free_port
from fake_entra import FakeEntra
from test_entra import EDGE_APP, EDGE_OID, CLIENT_APP, CLIENT_OID, signed_in
from test_entra import start_relay as start_entra_relay


class UdpEcho:
    """A UDP service answering every datagram with b"echo:" and the datagram; remembers every sender (each of
    the edge's flows has a socket, so an address of its own)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.sources = set()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except OSError:
                return
            self.received += 1
            self.sources.add(source)
            self.sock.sendto(b"echo:" + data, source)

    def close(self):
        self.sock.close()


def udp_socket(address="127.0.0.1", timeout=5):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(timeout)
    return sock


def udp_echoes(sock, port, payload, attempts=3):
    """Whether `payload` sent to the client's UDP `port` comes back echoed (loopback may drop under load)."""
    for _ in range(attempts):
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            while True:
                answer, _ = sock.recvfrom(65535)
                if answer == b"echo:" + payload:
                    return True
        except socket.timeout:
            continue
    return False


def answered(sockets):
    """How many of `sockets` have an answer waiting."""
    count = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            sock.recvfrom(65535)
            count += 1
        except BlockingIOError:
            pass
    return count


class UdpChain:
    """A relay, an edge with a UDP echo target (`udp`) and a TCP echo target (`tcp`), and the processes a test
    adds; `stop` ends them all."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.service = UdpEcho()
        self.target = agents.TcpServer("echo")
        self.relay = agents.start_relay(tmp_path, ["udp", "tcp"])
        self.url = "ws://127.0.0.1:%d" % self.relay.port
        self.processes = [self.relay]
        self.edge = agents.start_edge(
            tmp_path, self.url, ["udp:127.0.0.1:%dU" % self.service.port, "tcp:127.0.0.1:%d" % self.target.port])
        self.processes.append(self.edge)

    def client(self, specs, ports, extra=()):
        """A client with `--metrics`; its metrics port is `.metrics`."""
        metrics = free_port()
        process = agents.start_client(self.tmp_path, self.url, specs, ports,
                                      extra=["--metrics", "127.0.0.1:%d" % metrics] + list(extra))
        process.metrics = metrics
        self.processes.append(process)
        # The side port opens after the ports are bound: wait for it before the first scrape.
        process.wait_for_log("metrics served")
        return process

    def stop(self):
        agents.stop_all(*reversed(self.processes))
        self.service.close()
        self.target.close()


@pytest.fixture
def udp_chain(tmp_path):
    chain = UdpChain(tmp_path)
    yield chain
    chain.stop()


def test_udp_flows_per_binding_are_capped(udp_chain):
    """One datagram from each of 100 new source addresses against `--udp-max-flows 20`: no more than 20 tunnels
    open, the rest dropped and counted as flow_limit; a flow that was there before still echoes, and a TCP
    binding of the same client still tunnels."""
    udp_port, tcp_port = free_port(), free_port()
    client = udp_chain.client(["127.0.0.1:%dU:udp" % udp_port, "127.0.0.1:%d:tcp" % tcp_port],
                              [udp_port, tcp_port], extra=["--udp-max-flows", "20"])
    existing = udp_socket()
    sources = []
    try:
        assert udp_echoes(existing, udp_port, b"first flow")
        for index in range(2, 102):
            sock = udp_socket("127.0.0.%d" % index)
            sources.append(sock)
            sock.sendto(b"from %d" % index, ("127.0.0.1", udp_port))
        agents.wait_until(
            lambda: metric_value(client.metrics, "hyrelay_udp_drops_total", role="client", reason="flow_limit") >= 80,
            timeout=10, what="80 datagrams dropped for the flow limit")
        time.sleep(1)  # the admitted flows' tunnels open and answer
        assert metric_value(client.metrics, "hyrelay_active_tunnels", role="client") <= 20
        assert len(udp_chain.service.sources) <= 20, "the edge opened %d flows" % len(udp_chain.service.sources)
        assert answered(sources) <= 19
        assert udp_echoes(existing, udp_port, b"still here"), "the flow from before the flood still echoes"
        sent, received, count = agents.echo_roundtrip(tcp_port, b"tcp beside a full udp port")
        assert count == 26 and sent == received
    finally:
        for sock in [existing] + sources:
            sock.close()


def test_udp_flows_per_source_address_are_capped(udp_chain):
    """20 source ports of 127.0.0.1 against `--udp-max-flows-per-source 5`: at most 5 flows from that address,
    the rest counted as source_flow_limit, while another address (127.0.0.2) still gets its echo."""
    udp_port = free_port()
    client = udp_chain.client(["127.0.0.1:%dU:udp" % udp_port], [udp_port],
                              extra=["--udp-max-flows-per-source", "5"])
    sockets = [udp_socket() for _ in range(20)]
    other = udp_socket("127.0.0.2")
    try:
        for index, sock in enumerate(sockets):
            sock.sendto(b"port %d" % index, ("127.0.0.1", udp_port))
        agents.wait_until(
            lambda: metric_value(client.metrics, "hyrelay_udp_drops_total", role="client",
                                 reason="source_flow_limit") >= 15,
            timeout=10, what="15 datagrams dropped for the per-source limit")
        time.sleep(1)
        assert metric_value(client.metrics, "hyrelay_active_tunnels", role="client") <= 5
        assert len(udp_chain.service.sources) <= 5, "the edge opened %d flows" % len(udp_chain.service.sources)
        assert answered(sockets) <= 5
        assert udp_echoes(other, udp_port, b"another address"), "127.0.0.2 has flows of its own"
        assert metric_value(client.metrics, "hyrelay_active_tunnels", role="client") <= 6
    finally:
        for sock in sockets + [other]:
            sock.close()


def test_allow_list_applies_to_udp_ports(udp_chain):
    """`--allow 10.0.0.0/8`: a datagram from 127.0.0.1 gets no answer, opens no tunnel and is counted as
    source_not_allowed; the same binding without --allow echoes it."""
    refusing_port, open_port = free_port(), free_port()
    refusing = udp_chain.client(["127.0.0.1:%dU:udp" % refusing_port], [refusing_port],
                                extra=["--allow", "10.0.0.0/8"])
    sock = udp_socket(timeout=2)
    try:
        sock.sendto(b"not allowed", ("127.0.0.1", refusing_port))
        with pytest.raises(socket.timeout):
            sock.recvfrom(65535)
        assert udp_chain.service.received == 0, "the datagram reached the target"
        assert metric_value(refusing.metrics, "hyrelay_refused_requests_total", role="client",
                            reason="source_not_allowed") >= 1
        assert metric_value(refusing.metrics, "hyrelay_active_tunnels", role="client") == 0
        assert metric_value(refusing.metrics, "hyrelay_client_connects_total") == 0
        assert "sender connected" not in refusing.log()

        udp_chain.client(["127.0.0.1:%dU:udp" % open_port], [open_port])
        sock.settimeout(5)
        assert udp_echoes(sock, open_port, b"allowed"), "without --allow the datagram is echoed"
    finally:
        sock.close()


SECRET = b"TOP-SECRET-7d1c0f outside the prefix"
INDEX = b"INDEX-PAGE-4be2a9 inside the prefix"

ESCAPES = ["/web/../secret.txt", "/web/%2e%2e/secret.txt", "/web/..%2fsecret.txt", "/web/.%2e/secret.txt",
           "/web//../secret.txt", "/web/%2E%2E/secret.txt", "/web/a/../../secret.txt", "/web/..%5csecret.txt",
           "/web/%252e%252e/secret.txt", "/WEB/../secret.txt", "/Web/%2e%2e/secret.txt", "/web/%2e%2e%2fsecret.txt",
           "/web/..%2Fsecret.txt", "/web/./../secret.txt", "/web/a/%2e%2e/%2e%2e/secret.txt"]


class FileServer:
    """Python's http.server (SimpleHTTPRequestHandler) serving a directory on a free loopback port."""

    def __init__(self, directory):
        handler = functools.partial(QuietFileHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def raw_get(port, target, headers=()):
    """Sends a request line exactly as given (no client library to normalize it); returns (status, whole answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        lines = ["GET %s HTTP/1.1" % target, "Host: 127.0.0.1:%d" % port, "Connection: close", *headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


def test_http_path_prefix_cannot_be_escaped(tmp_path):
    """`-H web:http/127.0.0.1/app:PORT` in front of a file server whose root holds app/index.html and, outside
    the prefix, secret.txt: no spelling of a path that climbs out of /app (dot-segments, encoded dots, slashes
    and backslashes, double encoding, the entity in another case) gets the secret; paths that stay inside still
    work."""
    root = tmp_path / "www"
    (root / "app").mkdir(parents=True)
    (root / "app" / "index.html").write_bytes(INDEX)
    (root / "secret.txt").write_bytes(SECRET)
    files = FileServer(root)
    relay = edge = None
    try:
        relay = agents.start_relay(tmp_path, ["web"], extra=["--anonymous-sender", "web"])
        edge = agents.Process(["edge", "-e", "ws://127.0.0.1:%d" % relay.port, "-K", agents.KEY_NAME, "-k", agents.KEY,
                               "-a", "1", "-H", "web:http/127.0.0.1/app:%d" % files.port],
                              str(tmp_path / "edge-http.log"))
        edge.wait_for_log("listener online")
        # The file server itself serves the secret to anyone asking for it directly: the prefix is the only wall.
        assert SECRET in raw_get(files.port, "/app/../secret.txt")[1]
        for inside in ("/web/index.html", "/web/a/../index.html"):
            status, data = raw_get(relay.port, inside)
            assert status == 200 and INDEX in data, (inside, data[:300])
        leaked = []
        for target in ESCAPES:
            status, data = raw_get(relay.port, target)
            if SECRET in data:
                leaked.append("%s -> %d" % (target, status))
        assert not leaked, "the secret outside /app leaked: %s" % leaked
        assert edge.popen.poll() is None
    finally:
        agents.stop_all(edge, relay)
        files.close()


@pytest.fixture
def entra():
    fake = FakeEntra()
    fake.add_application(EDGE_APP, EDGE_OID, secret="edge-secret")
    fake.add_application(CLIENT_APP, CLIENT_OID, secret="client-secret")
    yield fake
    fake.close()


@pytest.mark.parametrize("field,value", [
    ("expires_in", "nan"), ("expires_on", "inf"), ("expires_in", 1e300), ("expires_on", 2 ** 63 - 1),
], ids=["in-nan", "on-inf", "in-1e300", "on-int64max"])
def test_token_expiry_no_clock_can_hold_is_refused_with_its_reason(tmp_path, entra, field, value):
    """A token endpoint answering an expiry of NaN, infinity, 1e300 or 2^63-1 seconds: the edge does not trap.
    Its first sign-in is refused with the reason in words and the edge stops at start with a non-zero exit, as
    for a wrong secret (a supervisor restarts it); once the endpoint answers sanely the edge comes online."""
    entra.expiry_fields = {field: value}
    relay = start_entra_relay(tmp_path, entra)
    target = agents.TcpServer("echo")
    edge = None
    try:
        args = ["edge", "-e", "ws://127.0.0.1:%d" % relay.port, "-a", "1", "-T", "hc:127.0.0.1:%d" % target.port]
        edge = agents.Process(args, str(tmp_path / "edge-expiry.log"), env=signed_in(entra, EDGE_APP, "edge-secret"))
        edge.popen.wait(timeout=30)
        log = edge.log()
        assert edge.popen.returncode > 0, "the edge ended by signal %s: %s" % (edge.popen.returncode, log[-3000:])
        assert "Fatal error" not in log and "Int64" not in log, log[-3000:]
        assert field in log, "the refusal names the field: " + log[-3000:]
        assert "listener online" not in log, "the edge took a token with %s=%r" % (field, value)
        assert entra.count("/oauth2/v2.0/token") >= 1
        edge.stop()
        entra.expiry_fields = None
        edge = agents.Process(args, str(tmp_path / "edge-sane.log"), env=signed_in(entra, EDGE_APP, "edge-secret"))
        edge.wait_for_log("listener online", timeout=30)
    finally:
        agents.stop_all(edge, relay)
        target.close()


PASSWORD = "s3cretpw"


def run_briefly(args, env=None, timeout=10):
    """Runs hyrelay until it exits or `timeout` passes (then stops it); returns (exit code or None, output)."""
    process = subprocess.Popen([agents.binary()] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output.decode(errors="replace")
    except subprocess.TimeoutExpired:
        process.terminate()
        output, _ = process.communicate(timeout=15)
        return None, output.decode(errors="replace")


def test_a_proxy_password_is_never_printed():
    """A malformed proxy URL with credentials stops the agent with an error that names the proxy, never its
    password; from the environment neither."""
    relay = "ws://127.0.0.1:%d" % free_port()
    bad = "http://user:%s@bad host:99999" % PASSWORD
    common = ["-e", relay, "-K", agents.KEY_NAME, "-k", agents.KEY]
    for role, spec in (("edge", ["-T", "x:127.0.0.1:9"]), ("client", ["-L", "127.0.0.1:%d:x" % free_port()])):
        code, output = run_briefly([role] + common + spec + ["--proxy", bad])
        assert code not in (None, 0), "%s with a malformed --proxy: %s" % (role, output)
        assert "proxy" in output.lower(), output
        assert PASSWORD not in output, "%s printed the proxy password: %s" % (role, output)
    for url in (bad, "socks5://user:%s@127.0.0.1:1080" % PASSWORD):
        env = dict(os.environ, HTTP_PROXY=url, HTTPS_PROXY=url, http_proxy=url, https_proxy=url)
        env.pop("NO_PROXY", None)
        env.pop("no_proxy", None)
        _, output = run_briefly(["edge"] + common + ["-T", "x:127.0.0.1:9"], env=env, timeout=5)
        assert PASSWORD not in output, "the proxy password from the environment was printed: %s" % output


@pytest.mark.parametrize("way", ["key-file", "environment"])
def test_the_sas_key_can_stay_off_the_command_line(tmp_path, way):
    """`--key-file FILE` (a trailing newline allowed) or HYRELAY_SAS_KEY instead of -k: the edge comes online and a
    tunnel through it echoes."""
    relay = agents.start_relay(tmp_path, ["keyed"])
    url = "ws://127.0.0.1:%d" % relay.port
    target = agents.TcpServer("echo")
    edge = client = None
    try:
        env = {key: value for key, value in os.environ.items() if key != "HYRELAY_SAS_KEY"}
        args = ["edge", "-e", url, "-K", agents.KEY_NAME, "-a", "1", "-T", "keyed:127.0.0.1:%d" % target.port]
        if way == "key-file":
            key_file = tmp_path / "sas.key"
            key_file.write_text(agents.KEY + "\n")
            key_file.chmod(0o600)
            args += ["--key-file", str(key_file)]
        else:
            env["HYRELAY_SAS_KEY"] = agents.KEY
        edge = agents.Process(args, str(tmp_path / "edge-keyed.log"), env=env)
        edge.wait_for_log("listener online")
        assert agents.KEY not in " ".join(edge.args)
        port = free_port()
        client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:keyed" % port], [port])
        sent, received, count = agents.echo_roundtrip(port, b"key off the command line")
        assert count == 24 and sent == received
    finally:
        agents.stop_all(client, edge, relay)
        target.close()


class HeaderEcho:
    """An HTTP service answering every request with its header fields as JSON: [[name, value], ...]."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = json.dumps([[name, value] for name, value in self.headers.items()]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_forwarded_headers_are_the_edges_own_and_hop_by_hop_fields_stay_behind(tmp_path):
    """Behind -H the target sees X-Forwarded-For as exactly the address the relay reports (not the client's
    6.6.6.6 before it), and neither Proxy-Authorization nor the fields the client's Connection header names."""
    service = HeaderEcho()
    relay = edge = None
    try:
        relay = agents.start_relay(tmp_path, ["hdr"], extra=["--anonymous-sender", "hdr"])
        edge = agents.Process(["edge", "-e", "ws://127.0.0.1:%d" % relay.port, "-K", agents.KEY_NAME, "-k", agents.KEY,
                               "-a", "1", "-H", "hdr:http/127.0.0.1:%d" % service.port],
                              str(tmp_path / "edge-hdr.log"))
        edge.wait_for_log("listener online")
        connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=15)
        connection.request("GET", "/hdr/headers", headers={
            "X-Forwarded-For": "6.6.6.6", "Proxy-Authorization": "Basic dXNlcjpwcm94eXBhc3M=",
            "Connection": "X-Keep, x-other", "X-Keep": "1", "X-Other": "2", "X-Ordinary": "passed"})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 200, body
        seen = {}
        for name, value in json.loads(body):
            seen.setdefault(name.lower(), []).append(value)
        assert seen.get("x-ordinary") == ["passed"], seen
        assert seen.get("x-forwarded-for") == ["127.0.0.1"], seen
        for name in ("proxy-authorization", "x-keep", "x-other"):
            assert name not in seen, "the target saw %s: %s" % (name, seen)
    finally:
        agents.stop_all(edge, relay)
        service.close()
