"""Faults on a real network path (network namespaces, veth, tc and iptables): the relay and the edge in
namespaces of their own, the link between them slowed, thinned out or cut, the client on a clean link. What an
edge behind a bad uplink sees, measured: byte-exact transfers through loss, a black-holed relay noticed and
left, a short partition ridden out, and a tunnel into a cut edge failing with its cause instead of hanging."""
import socket
import subprocess
import sys
import time

import pytest

import agents
import netns
from conftest import free_port

pytestmark = pytest.mark.skipif(not netns.can_use_namespaces(),
                                reason="network namespaces and iptables need root and iptables (CI has both)")

TARGET_PORT = 7000


class Path:
    def __init__(self, tmp_path, keepalive="30", relay_extra=()):
        self.topology = netns.Topology()
        self.processes = []
        try:
            self.target = subprocess.Popen(self.topology.in_edge([sys.executable, "-c", netns.ECHO_SERVER,
                                                                  str(TARGET_PORT)]))
            self.relay = self.start(tmp_path, "relay", self.topology.in_relay, [
                "relay", "--listen", "0.0.0.0:9350", "--public-url", "ws://%s:9350" % self.topology.RELAY_BACK,
                "--hybrid-connection", "hc", "--sas-key-name", agents.KEY_NAME, "--sas-key", agents.KEY,
                "--log-level", "debug"] + list(relay_extra), "relay listening")
            self.edge = self.start(tmp_path, "edge", self.topology.in_edge, [
                "edge", "-e", "ws://%s:9350" % self.topology.RELAY_BACK, "-K", agents.KEY_NAME, "-k", agents.KEY,
                "-a", keepalive, "-T", "hc:127.0.0.1:%d" % TARGET_PORT], "listener online")
            self.port = free_port()
            self.client = agents.start_client(tmp_path, "ws://%s:9350" % self.topology.RELAY_FRONT,
                                              ["127.0.0.1:%d:hc" % self.port], [self.port])
            self.processes.append(self.client)
        except Exception:
            self.close()
            raise

    def start(self, tmp_path, name, inside, args, ready):
        process = agents.Process(args, str(tmp_path / ("%s-%d.log" % (name, time.time_ns()))), prefix=inside([]))
        self.processes.append(process)
        process.wait_for_log(ready)
        return process

    def close(self):
        for process in reversed(self.processes):
            process.stop()
        if getattr(self, "target", None):
            self.target.kill()
            self.target.wait()
        self.topology.close()


@pytest.fixture
def make_path(tmp_path):
    paths = []

    def make(**options):
        paths.append(Path(tmp_path, **options))
        return paths[-1]

    yield make
    for path in paths:
        path.close()


def wait_for_log(process, text, timeout):
    started = time.monotonic()
    process.wait_for_log(text, timeout=timeout)
    return time.monotonic() - started


def test_a_lossy_slow_link_moves_64_mib_byte_exact(make_path):
    """20 Mbit/s each way and 1 % of packets dropped between relay and edge: 64 MiB there and back, byte-exact."""
    path = make_path()
    path.topology.shape(rate="20mbit", loss=0.01)
    payload = bytes(range(256)) * (1 << 18)
    started = time.monotonic()
    sent, received, count = agents.echo_roundtrip(path.port, payload)
    seconds = time.monotonic() - started
    assert count == len(payload) and sent == received
    # 64 MiB at 20 Mbit/s takes 27 s on an idle link; loss and TCP's recovery add to it, not more than twice.
    assert seconds < 60, seconds
    print("64 MiB each way through 20 Mbit/s and 1 %% loss: %.1f s" % seconds)


def test_a_black_holed_relay_is_noticed_and_left(make_path):
    """Every packet between relay and edge dropped (no reset, no ICMP): with -a 1 the edge declares its control
    channel dead after two unanswered pings, keeps retrying, and is back online soon after the path heals."""
    path = make_path(keepalive="1", relay_extra=["--ping-interval", "1"])
    path.topology.cut()
    noticed = wait_for_log(path.edge, "control channel dead", timeout=10)
    assert noticed <= 4, noticed
    time.sleep(2)
    path.topology.heal()
    back = wait_for_log(path.edge, "listener reconnected", timeout=30)
    sent, received, count = agents.echo_roundtrip(path.port, b"x" * 100_000)
    assert count == 100_000 and sent == received
    print("black hole noticed after %.1f s; online again %.1f s after the path healed" % (noticed, back))


def test_a_10_second_partition_is_ridden_out(make_path):
    """With the default keep-alive (30 s) a 10 s partition costs nothing: the listener stays, an open tunnel's
    bytes sent during the partition arrive once it heals, and new tunnels work."""
    path = make_path()
    held = socket.create_connection(("127.0.0.1", path.port), timeout=60)
    held.sendall(b"before")
    assert held.recv(100) == b"before"
    path.topology.cut()
    held.sendall(b"during the partition")
    time.sleep(10)
    path.topology.heal()
    started = time.monotonic()
    data = b""
    while len(data) < len(b"during the partition"):
        data += held.recv(100)
    assert data == b"during the partition"
    print("bytes sent during a 10 s partition arrived %.1f s after it healed" % (time.monotonic() - started))
    held.close()
    assert "listener offline" not in path.edge.log() and "reconnected" not in path.edge.log()
    sent, received, count = agents.echo_roundtrip(path.port, b"y" * 50_000)
    assert count == 50_000 and sent == received


def test_a_tunnel_into_a_cut_edge_fails_with_its_cause(make_path):
    """The edge's control channel is cut but not yet noticed: the relay's accept never arrives, the sender is
    answered when the accept timeout runs out, and the client closes the local connection and logs why."""
    path = make_path(relay_extra=["--accept-timeout", "3"])
    path.topology.cut()
    started = time.monotonic()
    local = socket.create_connection(("127.0.0.1", path.port), timeout=30)
    local.sendall(b"anyone there?")
    try:
        # Closed with unread bytes in it, the local connection ends with a reset rather than a FIN: either way not
        # left hanging.
        assert local.recv(100) == b""
    except ConnectionResetError:
        pass
    seconds = time.monotonic() - started
    assert seconds < 10, seconds
    local.close()
    path.client.wait_for_log("sender refused by relay", timeout=5)
    log = path.client.log()
    assert "status=504" in log and "accepted the connection within the allowed timeout" in log, log[-2000:]
    assert "close_cause=relay_refused" in log
    print("a tunnel into a cut edge failed after %.1f s" % seconds)
