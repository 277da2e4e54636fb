"""Random request targets and headers against the relay process: every request gets an HTTP answer or a
close within the handshake deadline, never a 500 or a crash, and a tunnel works afterwards.

`HYRELAY_WIRE_FUZZ_ITERATIONS` sets the number of requests (300 here; scripts/long-tests.sh runs 50,000).
"""
import os
import random
import socket
import time

import pytest

from test_security import SecurityRelay, assert_tunnel_works

ITERATIONS = int(os.environ.get("HYRELAY_WIRE_FUZZ_ITERATIONS", "300"))
SEED = int(os.environ.get("HYRELAY_WIRE_FUZZ_SEED", str(int(time.time()))))

PIECES = ["/", "//", "$hc", "hyco", "HYCO", "open", "other", "%", "%2F", "%zz", "%00", "%0A", "%0D%0A", "?", "&",
          "=", "#", "+", "sb-hc-action=", "listen", "connect", "accept", "request", "sb-hc-id=", "sb-hc-token=",
          "statusCode=", "sb-hc-statusCode=999", "statusDescription=", "..", ".", "~", "\u00e9", "\U0001F600", " ",
          "a" * 100, "/a" * 50]
HEADER_NAMES = ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Content-Length",
                "Transfer-Encoding", "ServiceBusAuthorization", "Authorization", "traceparent", "Sec-WebSocket-Protocol",
                "X-Custom", "Expect", "Via"]
HEADER_VALUES = ["websocket", "Upgrade", "dGhlIHNhbXBsZSBub25jZQ==", "13", "0", "5", "-1", "99999999999999999999",
                 "chunked", "SharedAccessSignature sr=x&sig=y&se=9223372036854775807&skn=z",
                 "SharedAccessSignature sr=x&sig=y&se=-9223372036854775808&skn=z", "Bearer x", "100-continue",
                 "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "00-zz", "", " ", "\t", "x" * 5000]


def random_target(rng):
    prefix = rng.choice(["", "/", "/$hc/hyco", "/$hc/open", "/hyco/", "/open", "/$hc/hyco?sb-hc-action=listen"])
    target = prefix + "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
    if rng.random() < 0.1:
        target = "/" + "x/" * rng.randint(1000, 12000)
    if rng.random() < 0.05:
        target = "/" + "y" * rng.randint(16000, 40000)
    return target if rng.random() < 0.9 else target.lstrip("/")


def random_request(rng):
    method = rng.choice(["GET", "GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "CONNECT", "G\x00T", "get"])
    lines = ["%s %s HTTP/1.%d" % (method, random_target(rng), rng.choice([0, 1, 1, 1]))]
    for _ in range(rng.randint(0, 12)):
        name = rng.choice(HEADER_NAMES)
        if rng.random() < 0.05:
            name += rng.choice(["\x00", " ", ":", "\x7f", "\u00e9"])
        value = rng.choice(HEADER_VALUES)
        if rng.random() < 0.05:
            value += rng.choice(["\x00", "\x01", "\x7f", "\u00ff"])
        lines.append("%s: %s" % (name, value))
    if rng.random() < 0.05:
        lines += ["X-Pad-%d: %s" % (i, "p" * 1000) for i in range(rng.randint(10, 100))]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        data += os.urandom(rng.randint(0, 2000))
    if rng.random() < 0.1:
        data = data[:rng.randint(0, len(data))]
    return data


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    process = SecurityRelay(tmp_path_factory.mktemp("wirefuzz"), limits={"handshakeTimeoutSeconds": 1},
                            name="wirefuzz")
    yield process
    process.stop()


def test_random_requests_get_an_answer_or_a_close(relay):
    rng = random.Random(SEED)
    statuses = {}
    for index in range(ITERATIONS):
        data = random_request(rng)
        sock = socket.create_connection((relay.host, relay.port), timeout=5)
        try:
            sock.sendall(data)
        except OSError:
            pass  # the relay may refuse and close before everything was sent
        reply = b""
        try:
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError("no answer within 5 s (seed %d, request %d): %r" % (SEED, index, data[:200]))
        finally:
            sock.close()
        line = reply.split(b"\r\n")[0]
        status = line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"
        statuses[status] = statuses.get(status, 0) + 1
        assert status != "500", "internal error (seed %d, request %d): %r -> %r" % (SEED, index, data[:200], line)
        assert relay.alive(), "relay died (seed %d, request %d): %r\n%s" % (SEED, index, data[:200], relay.log()[-2000:])
    print("seed", SEED, "statuses", sorted(statuses.items()))
    assert_tunnel_works(relay)
