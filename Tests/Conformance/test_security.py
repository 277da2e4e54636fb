"""Attacks on the relay process, each reproduced as an attacker would run it, and the relay's answer.

Every test here failed against the relay before the fixes of the security issue: a token crashed it, a
long path froze it, sockets leaked past the handshake deadline, pings grew it without bound, a listener
could write headers into HTTP responses and read the sender's token. After each attack the relay must
still carry a normal tunnel.
"""
import asyncio
import json
import os
import resource
import socket
import struct
import subprocess
import threading
import time
import urllib.request
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import agents
import hc
from conftest import free_port

LISTEN_KEY_NAME = "ListenOnly"
LISTEN_KEY = "bGlzdGVuLW9ubHkta2V5LWZvci10ZXN0aW5n"
INT64_MAX = 2 ** 63 - 1

CONFIG = """
listen: "127.0.0.1:{port}"
namespaceRules:
  - keyName: {key_name}
    primaryKey: "{key}"
    rights: [Listen, Send, Manage]
hybridConnections:
  - name: hyco
    rules:
      - keyName: {send_key_name}
        primaryKey: "{send_key}"
        rights: [Send]
      - keyName: {listen_key_name}
        primaryKey: "{listen_key}"
        rights: [Listen]
  - name: open
    requiresClientAuthorization: false
  - name: other
limits:
{limits}
"""

LIMITS = {
    "acceptTimeoutSeconds": 5, "httpResponseTimeoutSeconds": 5, "handshakeTimeoutSeconds": 2,
    "httpBodyTimeoutSeconds": 2, "idleTimeoutSeconds": 2, "pingIntervalSeconds": 1,
    "maxBufferedHTTPBytes": 262144,
}


class SecurityRelay(agents.Process):
    def __init__(self, directory, limits=None, rlimit_files=None, name="relay"):
        self.port = free_port()
        self.host = "127.0.0.1"
        self.ws = "ws://127.0.0.1:%d" % self.port
        config = directory / ("%s-%d.yaml" % (name, time.time_ns()))
        config.write_text(CONFIG.format(
            port=self.port, key_name=hc.KEY_NAME, key=hc.KEY, send_key_name=hc.SEND_KEY_NAME, send_key=hc.SEND_KEY,
            listen_key_name=LISTEN_KEY_NAME, listen_key=LISTEN_KEY,
            limits="\n".join("  %s: %s" % item for item in {**LIMITS, **(limits or {})}.items())))
        self.metrics_port = free_port()
        args = ["relay", "--config", str(config), "--metrics", "127.0.0.1:%d" % self.metrics_port]
        if rlimit_files is None:
            super().__init__(args, str(directory / ("%s-%d.log" % (name, time.time_ns()))))
        else:
            # A low descriptor limit (soft and hard) makes EMFILE reachable with a few hundred sockets.
            self.log_path = str(directory / ("%s-%d.log" % (name, time.time_ns())))
            self.args = args
            self.log_file = open(self.log_path, "w")

            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (rlimit_files, rlimit_files))
            self.popen = subprocess.Popen([agents.binary()] + args, stdout=self.log_file, stderr=subprocess.STDOUT,
                                          preexec_fn=limit)
        self.wait_for_log("relay listening")

    def metric(self, name, **labels):
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all('%s="%s"' % (k, v) in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def alive(self):
        return self.popen.poll() is None

    def cpu_seconds(self):
        return agents.cpu_seconds(self.popen.pid)

    def rss(self):
        return agents.rss(self.popen.pid)

    def fds(self):
        return agents.fds(self.popen.pid)


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    process = SecurityRelay(tmp_path_factory.mktemp("security"))
    yield process
    process.stop()


def audience(relay, path):
    return hc.dotnet_audience(relay.host, path)


def token_headers(relay, path, **kwargs):
    return {"ServiceBusAuthorization": hc.sas_token(audience(relay, path), **kwargs)}


def raw_request(relay, data, timeout=5):
    """Sends raw bytes and returns the status line (b'' when the relay closed without answering)."""
    sock = socket.create_connection((relay.host, relay.port), timeout=timeout)
    try:
        sock.sendall(data)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.split(b"\r\n")[0]
    finally:
        sock.close()


def upgrade_head(target, extra=""):
    return ("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (target, extra)).encode()


async def open_listener(relay, path="hyco"):
    ws = await connect(hc.listen_uri(relay.ws, path), additional_headers=token_headers(relay, path),
                       ping_interval=None, max_size=None)
    return ws


async def next_control(ws, timeout=10):
    return hc.parse_control(await asyncio.wait_for(ws.recv(), timeout))


def assert_tunnel_works(relay, path="hyco", timeout=None):
    """A listener, a sender and bytes both ways: the relay still does its job (within `timeout` s when given)."""
    async def run():
        control = await open_listener(relay, path)
        sender_task = asyncio.ensure_future(connect("%s/$hc/%s" % (relay.ws, path),
                                                    additional_headers=token_headers(relay, path)))
        _, accept = await next_control(control)
        rendezvous = await connect(accept["address"])
        sender = await sender_task
        await sender.send(b"ping")
        assert await rendezvous.recv() == b"ping"
        await rendezvous.send(b"pong")
        assert await sender.recv() == b"pong"
        await sender.close()
        await rendezvous.close()
        await control.close()
    assert relay.alive(), relay.log()
    asyncio.run(asyncio.wait_for(run(), timeout) if timeout else run())


# 1. A signed token with `se` near Int64.max overflowed the skew addition and trapped.

def test_token_expiring_at_int64_max_does_not_crash_the_relay(relay):
    send_only = hc.sas_token(audience(relay, "hyco"), key_name=hc.SEND_KEY_NAME, key=hc.SEND_KEY, expiry=INT64_MAX)
    ws = hc.RawWebSocket(relay.host, relay.port, "/$hc/hyco", headers={"ServiceBusAuthorization": send_only})
    # Valid token, no listener: Azure's 404, not a dead relay.
    assert ws.status == 404, (ws.status, ws.reason)
    ws.close()
    assert relay.alive(), relay.log()

    async def renew():
        control = await open_listener(relay)
        listen_only = hc.sas_token(audience(relay, "hyco"), key_name=LISTEN_KEY_NAME, key=LISTEN_KEY,
                                   expiry=INT64_MAX)
        await control.send(json.dumps({"renewToken": {"token": listen_only}}))
        await asyncio.sleep(0.5)
        await control.ping()
        await control.close()
    asyncio.run(renew())
    assert relay.alive(), relay.log()
    assert "listener token renewed" in relay.log()
    most_negative = hc.sas_token(audience(relay, "hyco"), expiry=-2 ** 63)
    ws = hc.RawWebSocket(relay.host, relay.port, "/$hc/hyco", headers={"ServiceBusAuthorization": most_negative})
    assert ws.status == 401 and "ExpiredToken" in ws.reason
    ws.close()
    assert_tunnel_works(relay)


# 2. Entity resolution was quadratic in the number of path segments, before authentication.

def test_long_request_targets_are_resolved_in_linear_time_or_refused(relay):
    near_limit = "/" + "a/" * 8000  # 16,001 bytes: under the 16 KiB target limit, 8000 segments
    started = time.time()
    assert b" 404 " in raw_request(relay, upgrade_head("/$hc" + near_limit[:16000]))
    assert b" 404 " in raw_request(relay, ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % near_limit[:16000]).encode())
    elapsed = time.time() - started
    # Quadratic resolution took seconds here (about 1.7 s for 5,000 segments in a release build).
    assert elapsed < 1.0, elapsed
    started = time.time()
    assert b" 414 " in raw_request(relay, ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % ("/a" * 20000)).encode())
    assert time.time() - started < 1.0
    # The request line counts in the header budget: a 15 KB target with 20 KB of headers is too much.
    big_headers = "".join("X-Pad-%d: %s\r\n" % (i, "b" * 1000) for i in range(20))
    assert b" 431 " in raw_request(relay, ("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % ("/a" * 7500, big_headers)).encode())
    assert relay.metric("hyrelay_refused_requests_total", reason="uri_too_long") >= 1
    # Several at once do not freeze the loop for a normal request.
    threads = [threading.Thread(target=raw_request, args=(relay, upgrade_head("/$hc" + near_limit[:16000]))) for _ in range(8)]
    for thread in threads:
        thread.start()
    started = time.time()
    status, _, _, _ = hc.http_request(relay.host, relay.port, "GET", "/nothere/x", timeout=5)
    assert status == 404 and time.time() - started < 1.0
    for thread in threads:
        thread.join()
    assert_tunnel_works(relay)


# 3. An upgrade request declaring a body stopped the handshake timer and held its socket for ever.

def test_upgrade_with_a_body_is_refused_and_requests_keep_their_deadline(relay):
    assert b" 400 " in raw_request(relay, upgrade_head("/$hc/open", "Content-Length: 100\r\n"))
    assert b" 400 " in raw_request(relay, upgrade_head("/$hc/open", "Transfer-Encoding: chunked\r\n"))
    assert relay.metric("hyrelay_refused_requests_total", reason="upgrade_with_body") >= 2
    baseline = relay.fds()
    sockets = []
    for _ in range(300):
        sock = socket.create_connection((relay.host, relay.port), timeout=10)
        sock.sendall(upgrade_head("/$hc/open", "Content-Length: 100000\r\n"))
        sockets.append(sock)
    for sock in sockets:
        assert b" 400 " in sock.recv(4096).split(b"\r\n")[0]
        assert sock.recv(4096) == b"", "the relay closes after refusing"
        sock.close()
    # An HTTP-mode body that never completes runs into its own deadline (httpBodyTimeoutSeconds: 2).
    async def unfinished_body():
        control = await open_listener(relay, "open")
        sock = socket.create_connection((relay.host, relay.port), timeout=10)
        sock.sendall(b"POST /open/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.time()
        line = await asyncio.get_running_loop().run_in_executor(None, lambda: sock.recv(4096))
        assert b" 408 " in line.split(b"\r\n")[0], line
        assert 1 < time.time() - started < 5
        sock.close()
        await control.close()
    asyncio.run(unfinished_body())
    time.sleep(0.5)
    assert relay.fds() <= baseline + 5, (baseline, relay.fds())
    assert_tunnel_works(relay)


def open_and_sort(relay, count):
    """Opens `count` connections at once; returns (admitted, refused-lines): the relay may count them in any
    order, its event loops run in parallel."""
    sockets = [socket.create_connection((relay.host, relay.port), timeout=10) for _ in range(count)]
    time.sleep(0.5)
    admitted, refused = [], []
    for sock in sockets:
        sock.setblocking(False)
        try:
            refused.append(sock.recv(4096).split(b"\r\n")[0])
            sock.close()
        except BlockingIOError:
            admitted.append(sock)
    for sock in admitted:
        sock.setblocking(True)
    return admitted, refused


def test_connections_per_source_are_capped(tmp_path):
    relay = SecurityRelay(tmp_path, limits={"maxConnectionsPerSource": 50}, name="capped")
    try:
        admitted, refused = open_and_sort(relay, 70)
        assert len(admitted) == 50 and len(refused) == 20, (len(admitted), refused[:2])
        assert all(b" 503 " in line and b"Too many connections" in line for line in refused), refused[:2]
        assert relay.metric("hyrelay_refused_requests_total", reason="source_connection_limit") == 20
        # Twenty refusals in a burst log one line, not twenty.
        assert relay.log().count("Too many connections") <= 3
        for sock in admitted:
            sock.close()
        time.sleep(0.3)
        assert_tunnel_works(relay)
    finally:
        relay.stop()


def test_connections_stop_short_of_the_open_file_limit(tmp_path):
    # 128 descriptors: the relay takes at most 64 connections and refuses the rest politely, so accept(2)
    # never fails for want of a descriptor.
    relay = SecurityRelay(tmp_path, rlimit_files=128, name="fdcap")
    try:
        assert "max_connections=64" in relay.log()
        admitted, refused = open_and_sort(relay, 150)
        assert len(admitted) == 64 and len(refused) == 86, (len(admitted), len(refused))
        assert all(b" 503 " in line and b"connection limit" in line for line in refused), refused[:2]
        for sock in admitted:
            sock.close()
        time.sleep(0.3)
        assert relay.metric("hyrelay_accept_errors_total") == 0
        assert relay.metric("hyrelay_refused_requests_total", reason="connection_limit") == 86
        assert_tunnel_works(relay)
    finally:
        relay.stop()


def test_descriptor_exhaustion_backs_off_and_recovers(tmp_path):
    # With the connection limit set past the descriptors, accept(2) itself fails (EMFILE).
    relay = SecurityRelay(tmp_path, limits={"handshakeTimeoutSeconds": 4, "maxConnections": 1000},
                          rlimit_files=96, name="emfile")
    try:
        sockets = []
        for _ in range(300):
            try:
                sockets.append(socket.create_connection((relay.host, relay.port), timeout=2))
            except OSError:
                break
        relay.wait_for_log("cannot accept connections", timeout=10)
        # Accept is paused, not retried in a busy loop, while the table is full: also across the handshake
        # deadlines (4 s), when descriptors come free and are taken again at once.
        before = relay.cpu_seconds()
        time.sleep(6)
        assert relay.cpu_seconds() - before < 1.0, "the accept loop spins"
        for sock in sockets:
            sock.close()
        time.sleep(1.5)
        assert_tunnel_works(relay)
        assert relay.metric("hyrelay_accept_errors_total", socket="relay", error="emfile") >= 1
        # At most one line a second, however many accepts failed.
        assert relay.log().count("cannot accept connections") <= 12
    finally:
        relay.stop()


# 4. Pings were answered without back-pressure: a peer that pings and never reads grew the relay.

def test_pings_from_a_peer_that_never_reads_do_not_grow_the_relay(relay):
    async def accept_one():
        control = await open_listener(relay, "open")
        _, accept = await next_control(control)
        return control, await connect(accept["address"], max_size=None)

    loop = asyncio.new_event_loop()
    listener_task = loop.create_task(accept_one())
    loop.run_until_complete(asyncio.sleep(0.3))
    attacker = socket.socket()
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    attacker.connect((relay.host, relay.port))
    attacker.sendall(upgrade_head("/$hc/open"))
    result = {}

    def handshake():
        result["reply"] = attacker.recv(4096)
    reader = threading.Thread(target=handshake)
    reader.start()
    control, rendezvous = loop.run_until_complete(listener_task)
    reader.join(10)
    assert b" 101 " in result["reply"].split(b"\r\n")[0]
    before = relay.rss()
    # 64 MB of masked 125-byte pings (all-zero mask key), never reading a pong.
    frame = bytes([0x89, 0x80 | 125]) + b"\x00\x00\x00\x00" + b"p" * 125
    chunk = frame * 8000
    sent = 0
    attacker.settimeout(30)
    while sent < 64 * 1024 * 1024:
        attacker.sendall(chunk)
        sent += len(chunk)
    time.sleep(1)
    grown = relay.rss() - before
    # Unbounded, the pongs queued here cost more than the pings (about 3x their size).
    assert grown < 40 * 1024 * 1024, grown
    attacker.close()
    loop.run_until_complete(control.close())
    loop.close()
    assert_tunnel_works(relay)


# 5. A listener's responseHeaders with CR/LF reached the HTTP client as headers of their own.

@pytest.mark.parametrize("headers", [
    {"X-Ok": "fine\r\nSet-Cookie: session=stolen"},
    {"X-Ok": "fine\nSet-Cookie: session=stolen"},
    {"Bad Name": "x"},
    {"X-Evil\r\nSet-Cookie": "session=stolen"},
])
def test_listener_headers_cannot_split_the_http_response(relay, headers):
    async def run():
        control = await open_listener(relay)
        loop = asyncio.get_running_loop()
        response = loop.run_in_executor(None, lambda: hc.http_request(
            relay.host, relay.port, "GET", "/hyco/split", headers=token_headers(relay, "hyco")))
        _, request = await next_control(control)
        await control.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 200,
                                                     "responseHeaders": headers}}))
        status, reason, response_headers, _ = await response
        assert status == 502 and "not valid HTTP" in reason, (status, reason)
        assert "set-cookie" not in response_headers
        await control.close()
    asyncio.run(run())
    assert relay.metric("hyrelay_refused_requests_total", reason="bad_listener_response") >= 1
    assert relay.alive()


# 6. The sender's token, sent in `Authorization`, was copied into the listener's accept.connectHeaders.

def test_the_senders_token_never_reaches_the_listener(relay):
    send_token = hc.sas_token(audience(relay, "hyco"), key_name=hc.SEND_KEY_NAME, key=hc.SEND_KEY)

    async def connect_headers(path, headers):
        control = await open_listener(relay, path)
        sender_task = asyncio.ensure_future(connect("%s/$hc/%s" % (relay.ws, path), additional_headers=headers))
        _, accept = await next_control(control)
        rendezvous = await connect(accept["address"])
        sender = await sender_task
        await sender.close()
        await rendezvous.close()
        await control.close()
        return {k.lower(): v for k, v in accept["connectHeaders"].items()}

    # The token in Authorization authenticated the sender: stripped.
    seen = asyncio.run(connect_headers("hyco", {"Authorization": send_token}))
    assert "authorization" not in seen and send_token not in json.dumps(seen)
    seen = asyncio.run(connect_headers("hyco", {"Authorization": "Bearer " + send_token}))
    assert "authorization" not in seen
    # The token came in ServiceBusAuthorization: Authorization is the application's and passes.
    seen = asyncio.run(connect_headers("hyco", {"ServiceBusAuthorization": send_token, "Authorization": "Basic YXBwOmFwcA=="}))
    assert seen.get("authorization") == "Basic YXBwOmFwcA==" and "servicebusauthorization" not in seen
    # No token is checked on an anonymous entity, so nothing of the sender's is consumed.
    seen = asyncio.run(connect_headers("open", {"Authorization": "Bearer app-token"}))
    assert seen.get("authorization") == "Bearer app-token"


# Defences around the holes.

def test_only_failed_authentications_are_rate_limited(tmp_path):
    relay = SecurityRelay(tmp_path, limits={"authFailureBurst": 5, "authFailuresPerSecond": 0.01}, name="limited")
    try:
        check_failure_limit(relay)
    finally:
        relay.stop()


def check_failure_limit(relay):
    bad = {"ServiceBusAuthorization": hc.sas_token(audience(relay, "other"), key="d3Jvbmc=")}
    statuses = []
    for _ in range(8):
        ws = hc.RawWebSocket(relay.host, relay.port, hc.listen_uri("", "other"), headers=bad)
        statuses.append(ws.status)
        ws.close()
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses
    # A good agent behind the same address is not locked out by its neighbour.
    good = hc.RawWebSocket(relay.host, relay.port, hc.listen_uri("", "other"), headers=token_headers(relay, "other"))
    assert good.status == 101
    good.close()
    ws = hc.RawWebSocket(relay.host, relay.port, hc.listen_uri("", "other"), headers=bad)
    assert ws.status == 429
    ws.close()


def test_http_mode_bounds_bodies_before_and_while_reading(relay):
    headers = token_headers(relay, "hyco")
    auth = "".join("%s: %s\r\n" % item for item in headers.items())
    # No listener: 502 before a byte of the body is read.
    assert b" 502 " in raw_request(relay, ("POST /hyco/x HTTP/1.1\r\nHost: x\r\n%sContent-Length: 1000\r\n\r\n" % auth).encode())

    async def run():
        # A listener that never opens a rendezvous: every large body waits for one. Each connection's body is
        # held up to 64 KiB (then the relay stops reading it), all of them within maxBufferedHTTPBytes
        # (256 KiB); connections past that get 503, the others 408 once their body stalls for 2 s.
        control = await open_listener(relay)
        sockets = []
        for index in range(8):
            sock = socket.create_connection((relay.host, relay.port), timeout=10)
            sock.sendall(("POST /hyco/%d HTTP/1.1\r\nHost: x\r\n%sContent-Length: 1000000\r\n\r\n" % (index, auth)).encode())
            sock.settimeout(1)
            try:
                sock.sendall(b"x" * 150_000)
            except (socket.timeout, OSError):
                pass
            sock.settimeout(10)
            sockets.append(sock)
        lines = []
        for sock in sockets:
            lines.append(sock.recv(4096).split(b"\r\n")[0])
            sock.close()
        refused = [line for line in lines if b" 503 " in line]
        timed_out = [line for line in lines if b" 408 " in line]
        assert refused and timed_out and len(refused) + len(timed_out) == len(lines), lines
        await control.close()
    asyncio.run(run())
    assert relay.metric("hyrelay_refused_requests_total", reason="http_buffer_full") >= 1


def test_kept_alive_connections_have_an_idle_deadline(relay):
    async def run():
        control = await open_listener(relay, "open")
        sock = socket.create_connection((relay.host, relay.port), timeout=10)
        sock.sendall(b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n")
        _, request = await next_control(control)
        await control.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 204}}))
        assert b" 204 " in await asyncio.get_running_loop().run_in_executor(None, lambda: sock.recv(4096))
        started = time.time()
        line = await asyncio.get_running_loop().run_in_executor(None, lambda: sock.recv(4096))
        # Closed without a reply once idle for idleTimeoutSeconds (2 s).
        assert line == b"" and 1 < time.time() - started < 5, line
        sock.close()
        await control.close()
    asyncio.run(run())


def test_request_rendezvous_address_works_once(relay):
    async def run():
        control = await open_listener(relay)
        loop = asyncio.get_running_loop()
        upload = os.urandom(100_000)
        response = loop.run_in_executor(None, lambda: hc.http_request(
            relay.host, relay.port, "PUT", "/hyco/big", headers=token_headers(relay, "hyco"), body=upload))
        _, request = await next_control(control)
        first = await connect(request["address"], max_size=None)
        ws = await loop.run_in_executor(None, lambda: hc.RawWebSocket(
            relay.host, relay.port, request["address"].split(str(relay.port), 1)[1]))
        assert ws.status == 404, "a second listener must not read the request again"
        ws.close()
        _, full = hc.parse_control(await first.recv())
        assert await first.recv() == upload
        await first.send(json.dumps({"response": {"requestId": full["id"], "statusCode": 200}}))
        status, _, _, _ = await response
        assert status == 200
        await first.close()
        await control.close()
    asyncio.run(run())


def test_accept_address_must_name_the_senders_entity(relay):
    async def run():
        control = await open_listener(relay)
        sender_task = asyncio.ensure_future(connect("%s/$hc/hyco" % relay.ws, additional_headers=token_headers(relay, "hyco")))
        _, accept = await next_control(control)
        wrong = accept["address"].replace("/$hc/hyco?", "/$hc/other?")
        assert wrong != accept["address"]
        ws = await asyncio.get_running_loop().run_in_executor(None, lambda: hc.RawWebSocket(
            relay.host, relay.port, wrong.split(str(relay.port), 1)[1]))
        assert ws.status == 404
        ws.close()
        rendezvous = await connect(accept["address"])
        sender = await sender_task
        await sender.send(b"still there")
        assert await rendezvous.recv() == b"still there"
        await sender.close()
        await rendezvous.close()
        await control.close()
    asyncio.run(run())


def test_forged_log_lines_are_escaped(relay):
    ws = hc.RawWebSocket(relay.host, relay.port, "/$hc/x%0AFORGED-PATH%0D%0A")
    ws.close()
    forged_key = hc.sas_token(audience(relay, "hyco"), key_name="k\nFORGED-KEY")
    ws = hc.RawWebSocket(relay.host, relay.port, "/$hc/hyco", headers={"ServiceBusAuthorization": forged_key})
    assert ws.status == 401
    ws.close()
    time.sleep(0.3)
    lines = relay.log().splitlines()
    assert not any(line.startswith("FORGED") for line in lines)
    assert any("\\nFORGED-PATH" in line for line in lines)
    assert any("\\nFORGED-KEY" in line for line in lines)


@pytest.mark.parametrize("frame, code", [
    (bytes([0xC2, 0x80]) + b"\x00" * 4, 1002),            # RSV1 set, binary
    (bytes([0x83, 0x80]) + b"\x00" * 4, 1002),            # reserved data opcode 3
    (bytes([0x8B, 0x80]) + b"\x00" * 4, 1002),            # reserved control opcode B
    (bytes([0x88, 0x84]) + b"\x00" * 4 + b"\x03\xe8\xff\xfe", 1007),  # Close reason not UTF-8
    (bytes([0x88, 0x82]) + b"\x00" * 4 + b"\x03\xed", 1002),          # Close code 1005 on the wire
])
def test_frames_breaking_rfc6455_end_the_leg(relay, frame, code):
    async def run():
        control = await open_listener(relay, "open")
        loop = asyncio.get_running_loop()
        sender_future = loop.run_in_executor(None, lambda: hc.RawWebSocket(relay.host, relay.port, "/$hc/open"))
        _, accept = await next_control(control)
        # A raw listener leg, which checks nothing itself: whatever it receives is what the relay let through.
        rendezvous = await loop.run_in_executor(None, lambda: hc.RawWebSocket(
            relay.host, relay.port, accept["address"].split(str(relay.port), 1)[1]))
        sender = await sender_future
        assert sender.status == 101 and rendezvous.status == 101
        sender.sock.sendall(frame)
        fin, opcode, payload = await loop.run_in_executor(None, sender.recv_frame)
        assert opcode == 0x8 and struct.unpack(">H", payload[:2])[0] == code, payload
        sender.close()
        # The bad frame never reaches the partner; it learns that its peer went away.
        fin, opcode, payload = await loop.run_in_executor(None, rendezvous.recv_frame)
        assert opcode == 0x8 and struct.unpack(">H", payload[:2])[0] == 1001, (opcode, payload)
        rendezvous.close()
        await control.close()
    asyncio.run(run())
    # Counted and logged with its cause.
    relay.wait_for_log("the sender broke the WebSocket protocol")
    assert relay.metric("hyrelay_tunnels_closed_total", role="relay", cause="protocol_error") >= 1


def test_control_channel_text_is_refused_past_64_kib_while_it_arrives(relay):
    sent = []

    async def run():
        control = await open_listener(relay)

        async def fragments():
            yield "{" + " " * 40_000
            for _ in range(1000):
                sent.append(40_000)
                yield " " * 40_000  # 40 MB if the relay kept assembling before checking
                await asyncio.sleep(0.01)
        with pytest.raises(ConnectionClosed) as closed:
            await control.send(fragments())
            await asyncio.wait_for(control.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    asyncio.run(run())
    # The relay closes as the message crosses 64 KiB (the second fragment), not at its binary limit.
    assert sum(sent) < 400_000, "the relay took %d bytes of one text message" % sum(sent)


def test_malformed_tokens_are_not_echoed(relay):
    secret = "Sup3rSecretPastedInTheWrongPlace"
    ws = hc.RawWebSocket(relay.host, relay.port, "/$hc/hyco", headers={"ServiceBusAuthorization": secret + " x"})
    assert ws.status == 401 and "MalformedToken" in ws.reason and secret not in ws.reason
    ws.close()
    assert secret not in relay.log()
