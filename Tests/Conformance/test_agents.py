"""End to end through real processes on 127.0.0.1: hyrelay client -> hyrelay relay -> hyrelay edge -> target."""
import asyncio
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest
from websockets.asyncio.client import connect

import agents
import hc
from agents import metric_value
from conftest import free_port


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    directory = tmp_path_factory.mktemp("agents")
    process = agents.start_relay(
        directory, ["tcp", "multi", "refused", "pyedge", "pylisten", "gig", "usock", "udp", "mixed"])
    process.url = "ws://127.0.0.1:%d" % process.port
    process.directory = directory
    yield process
    process.stop()


@pytest.fixture(scope="module")
def echo_tunnel(relay):
    """The script forms of the issue, verbatim: edge -T NAME:HOST:PORT, client -L HOST:PORT:NAME."""
    target = agents.TcpServer("echo")
    edge = agents.start_edge(relay.directory, relay.url, ["tcp:127.0.0.1:%d" % target.port])
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d:tcp" % port], [port])
    yield port, edge, client, target
    client.stop()
    edge.stop()
    target.close()


def test_echo_through_the_tunnel(echo_tunnel):
    port = echo_tunnel[0]
    payload = os.urandom(3 * 1024 * 1024 + 17)
    sent, received, count = agents.echo_roundtrip(port, payload)
    assert count == len(payload) and sent == received


def test_one_gib_both_ways_is_byte_exact(relay):
    target = agents.TcpServer("echo")
    edge = agents.start_edge(relay.directory, relay.url, ["gig:127.0.0.1:%d" % target.port])
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d:gig" % port], [port])
    try:
        block = os.urandom(1 << 20)
        payload = block * 1024
        started = time.time()
        sent, received, count = agents.echo_roundtrip(port, payload)
        elapsed = time.time() - started
        assert count == 1 << 30 and sent == received
        print("1 GiB each way in %.1f s" % elapsed)
        client.wait_for_log("bytes_down=1073741824")
        client.wait_for_log("bytes_up=1073741824")
    finally:
        client.stop()
        edge.stop()
        target.close()


def test_two_hundred_concurrent_tunnels(echo_tunnel):
    port = echo_tunnel[0]

    async def one(index):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = os.urandom(32 * 1024 + index)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(-1), 60)
        writer.close()
        return data == payload

    async def run():
        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(run())
    assert all(results), "%d of 200 tunnels were not byte-exact" % results.count(False)


def test_half_close_request_reply(relay):
    target = agents.TcpServer("reply")
    edge = agents.start_edge(relay.directory, relay.url, ["refused:127.0.0.1:%d" % target.port])
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d:refused" % port], [port])
    try:
        request = os.urandom(500_000)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = hc.read_to_end(sock, 65536)
        sock.close()
        assert reply == ("%d %s" % (len(request), hashlib.sha256(request).hexdigest())).encode()
    finally:
        client.stop()
        edge.stop()
        target.close()


@pytest.mark.parametrize("form", ["one -T", "two -T"])
def test_two_port_names_reach_two_targets(relay, form):
    a = agents.TcpServer("echo", tag=b"A")
    b = agents.TcpServer("echo", tag=b"B")
    if form == "one -T":
        specs = ["multi:one/127.0.0.1:%d;two/127.0.0.1:%d" % (a.port, b.port)]
    else:
        # Two entries for one hybrid connection are one listener with both bindings, not two listeners that
        # each refuse the other's port name.
        specs = ["multi:one/127.0.0.1:%d" % a.port, "multi:two/127.0.0.1:%d" % b.port]
    edge = agents.start_edge(relay.directory, relay.url, specs)
    port_a, port_b = free_port(), free_port()
    client = agents.start_client(
        relay.directory, relay.url, ["127.0.0.1:%d/one;127.0.0.1:%d/two:multi" % (port_a, port_b)], [port_a, port_b])
    try:
        for _ in range(10):
            for port, tag in ((port_a, b"A"), (port_b, b"B")):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                assert sock.recv(1) == tag
                sock.sendall(b"ping")
                assert sock.recv(4) == b"ping"
                sock.close()
        assert edge.log().count("listener online") == 1
    finally:
        client.stop()
        edge.stop()
        a.close()
        b.close()


def test_unknown_port_name_and_refused_target_are_reported(relay):
    closed_port = free_port()
    edge = agents.start_edge(relay.directory, relay.url, ["pyedge:known/127.0.0.1:%d" % closed_port])
    refused_port, unknown_port = free_port(), free_port()
    client = agents.start_client(
        relay.directory, relay.url, ["127.0.0.1:%d/known;127.0.0.1:%d/unknown:pyedge" % (refused_port, unknown_port)],
        [refused_port, unknown_port])
    try:
        for port in (refused_port, unknown_port):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"hello")
            try:
                data = sock.recv(100)
            except ConnectionResetError:
                data = b""  # closed with the unread "hello" still queued: a reset
            assert data == b"", "the client closes the local connection"
            sock.close()
        client.wait_for_log("failed")
        client.wait_for_log("unknown port name 'unknown'")
        edge.wait_for_log("target dial failed")
        edge.wait_for_log("unknown port name")
    finally:
        client.stop()
        edge.stop()


def test_relay_restart_edge_reconnects(tmp_path):
    chain = agents.Chain(tmp_path, "restart")
    relay, edge, client, port, client_port = chain.relay, chain.edge, chain.client, chain.port, chain.client_port
    try:
        assert agents.echo_roundtrip(client_port, b"before")[2] == 6
        relay.stop(signal.SIGKILL)
        edge.wait_for_log("listener offline")
        relay = agents.start_relay(tmp_path, ["restart"], port=port, name="restart")
        edge.wait_for_log("listener reconnected", timeout=30)
        sent, received, count = agents.echo_roundtrip(client_port, b"after restart")
        assert count == 13 and sent == received
    finally:
        client.stop()
        edge.stop()
        relay.stop()
        chain.target.close()


def test_wss_with_self_signed_ca(tmp_path):
    ca = agents.make_ca(tmp_path)
    ca_cert = ca[1]
    cert, key = agents.make_server_certificate(tmp_path, ca, "127.0.0.1")
    relay = agents.start_relay(tmp_path, ["secure"], tls={"cert": str(cert), "key": str(key)}, name="tls")
    url = "wss://127.0.0.1:%d" % relay.port
    target = agents.TcpServer("echo")
    edge = agents.start_edge(tmp_path, url, ["secure:127.0.0.1:%d" % target.port], extra=["--ca-file", str(ca_cert)])
    client_port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:secure" % client_port], [client_port],
                                 extra=["--ca-file", str(ca_cert)])
    untrusting_port = free_port()
    untrusting = agents.start_client(tmp_path, url, ["127.0.0.1:%d:secure" % untrusting_port], [untrusting_port])
    try:
        payload = os.urandom(2_000_000)
        sent, received, count = agents.echo_roundtrip(client_port, payload)
        assert count == len(payload) and sent == received
        sock = socket.create_connection(("127.0.0.1", untrusting_port), timeout=10)
        assert sock.recv(10) == b""
        sock.close()
        untrusting.wait_for_log("cannot reach relay")
    finally:
        for process in (untrusting, client, edge, relay):
            process.stop()
        target.close()


async def open_python_sender(relay, entity, port_name, **options):
    """An azbridge -L style sender on `entity`: the preamble naming `port_name`, and the edge's answer."""
    token = hc.sas_token(hc.dotnet_audience("127.0.0.1", entity), agents.KEY_NAME, agents.KEY)
    sender = await connect(relay.url + "/$hc/" + entity, additional_headers={"ServiceBusAuthorization": token},
                           **options)
    await sender.send(bytes([1, 0, 0, len(port_name)]))
    await sender.send(port_name.encode())
    assert await sender.recv() == bytes([1, 0, 0])
    return sender


async def open_python_listener(relay, entity):
    token = hc.sas_token(hc.dotnet_audience("127.0.0.1", entity), agents.KEY_NAME, agents.KEY)
    return await connect(hc.listen_uri(relay.url, entity), additional_headers={"ServiceBusAuthorization": token})


async def accept_python_tunnel(control, port_name, **options):
    """An azbridge -T style listener's side of the next tunnel: accept, read the preamble, answer it."""
    kind, accept = hc.parse_control(await asyncio.wait_for(control.recv(), 10))
    assert kind == "accept"
    rendezvous = await connect(accept["address"], **options)
    assert await rendezvous.recv() == bytes([1, 0, 0, len(port_name)])
    assert await rendezvous.recv() == port_name.encode()
    await rendezvous.send(bytes([1, 0, 0]))
    return rendezvous


def test_python_sender_talks_to_our_edge(relay):
    """The conformance client acts as an azbridge -L sender: preamble, answer, payload."""
    target = agents.TcpServer("echo")
    edge = agents.start_edge(relay.directory, relay.url, ["pyedge:web/127.0.0.1:%d" % target.port])

    async def run():
        sender = await open_python_sender(relay, "pyedge", "web")
        await sender.send(b"payload")
        received = b""
        while len(received) < 7:
            received += await sender.recv()
        assert received == b"payload"
        await sender.close()

    try:
        asyncio.run(run())
    finally:
        edge.stop()
        target.close()


def test_python_listener_serves_our_client(relay):
    """The conformance client acts as an azbridge -T listener for our client agent."""
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d/svc:pylisten" % port], [port])

    async def run():
        control = await open_python_listener(relay, "pylisten")
        loop = asyncio.get_running_loop()

        def local_peer():
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"from tcp")
            data = sock.recv(100)
            sock.close()
            return data

        peer = loop.run_in_executor(None, local_peer)
        rendezvous = await accept_python_tunnel(control, "svc")
        assert await rendezvous.recv() == b"from tcp"
        await rendezvous.send(b"from listener")
        assert await peer == b"from listener"
        await control.close()

    try:
        asyncio.run(run())
    finally:
        client.stop()


def test_bytes_of_a_tunnel_that_never_opened_are_not_counted(tmp_path):
    """The relay refuses the sender (no listener): the bytes the local application had already written never
    left the client, so the client's byte counter stays at 0."""
    relay = agents.start_relay(tmp_path, ["nobody"])
    port, metrics = free_port(), free_port()
    client = agents.start_client(tmp_path, "ws://127.0.0.1:%d" % relay.port, ["127.0.0.1:%d:nobody" % port], [port],
                                 extra=["--metrics", "127.0.0.1:%d" % metrics])
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"x" * 10_000)
        # The FIN makes the client drain the socket although it withholds reads until the tunnel opens.
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        sock.close()
        client.wait_for_log("sender refused")
        assert metric_value(metrics, "hyrelay_transferred_bytes_total", role="client", direction="up") == 0
        assert metric_value(metrics, "hyrelay_client_connects_total", outcome="refused_404") == 1
    finally:
        client.stop()
        relay.stop()


BIG_FRAME = 48 << 20


def test_our_edge_takes_a_48_mib_frame_and_passes_it_on_byte_exact(relay):
    """An SDK-style sender writes a whole 48 MiB buffer as one frame: the edge streams it to the service
    (which echoes it) without holding the frame."""
    target = agents.TcpServer("echo")
    edge = agents.start_edge(relay.directory, relay.url, ["pyedge:web/127.0.0.1:%d" % target.port])
    payload = os.urandom(BIG_FRAME)

    async def run():
        sender = await open_python_sender(relay, "pyedge", "web", max_size=None, ping_interval=None)
        sending = asyncio.ensure_future(sender.send(payload))
        digest, received = hashlib.sha256(), 0
        while received < BIG_FRAME:
            chunk = await asyncio.wait_for(sender.recv(), 60)
            digest.update(chunk)
            received += len(chunk)
        await sending
        assert received == BIG_FRAME and digest.digest() == hashlib.sha256(payload).digest()
        await sender.close()

    try:
        asyncio.run(run())
    finally:
        edge.stop()
        target.close()


def test_our_client_takes_a_48_mib_frame_and_passes_it_on_byte_exact(relay):
    """An SDK-style listener answers with one 48 MiB frame: the client streams it to the local connection."""
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d/svc:pylisten" % port], [port])
    payload = os.urandom(BIG_FRAME)

    async def run():
        control = await open_python_listener(relay, "pylisten")
        loop = asyncio.get_running_loop()

        def local_peer():
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(b"go")
            digest, received = hashlib.sha256(), 0
            while received < BIG_FRAME:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                received += len(chunk)
            sock.close()
            return received, digest.digest()

        peer = loop.run_in_executor(None, local_peer)
        rendezvous = await accept_python_tunnel(control, "svc", max_size=None, ping_interval=None)
        assert await rendezvous.recv() == b"go"
        await rendezvous.send(payload)
        assert await peer == (BIG_FRAME, hashlib.sha256(payload).digest())
        await rendezvous.close()
        await control.close()

    try:
        asyncio.run(run())
    finally:
        client.stop()


def test_check_validates_azbridge_files(tmp_path):
    good = tmp_path / "good.yml"
    good.write_text("AzureRelayEndpoint: sb://ns.servicebus.windows.net/\nAzureRelaySharedAccessKeyName: k\n"
                    "AzureRelaySharedAccessKey: v\nLocalForward:\n  - RelayName: db\n    BindPort: 1433\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("LocalForward:\n  - RelayName: db\n    BindPort: 1433\n    RemoteHostName: x\n")
    ok = subprocess.run([agents.binary(), "check", "-f", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    failed = subprocess.run([agents.binary(), "check", "-f", str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2 and "line 4: unknown key 'RemoteHostName'" in failed.stdout
    twice = tmp_path / "twice.yml"
    twice.write_text("RemoteForward:\n  - RelayName: db\n    HostPort: 5432\n  - RelayName: db\n    HostPort: 5432\n")
    failed = subprocess.run([agents.binary(), "check", "-f", str(twice)], capture_output=True, text=True)
    assert failed.returncode == 2 and "line 4: relay 'db' names port '5432' twice" in failed.stdout


def test_client_from_azbridge_config_file(relay, echo_tunnel, tmp_path):
    port = free_port()
    config = tmp_path / "azbridge.yml"
    config.write_text("AzureRelayEndpoint: %s\nAzureRelaySharedAccessKeyName: %s\nAzureRelaySharedAccessKey: %s\n"
                      "LocalForward:\n  - RelayName: tcp\n    BindAddress: 127.0.0.1\n    BindPort: %d\n"
                      % (relay.url, agents.KEY_NAME, agents.KEY, port))
    client = agents.Process(["client", "-f", str(config)], str(tmp_path / "cfg-client.log"))
    try:
        client.wait_for_log("client port bound")
        sent, received, count = agents.echo_roundtrip(port, b"configured")
        assert count == 10 and sent == received
    finally:
        client.stop()


def test_sigterm_drains_open_tunnels(relay, echo_tunnel):
    port, edge, _, target = echo_tunnel
    client_port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d:tcp" % client_port], [client_port],
                                 extra=["--grace", "5"])
    sock = socket.create_connection(("127.0.0.1", client_port), timeout=10)
    sock.sendall(b"first")
    assert sock.recv(5) == b"first"
    client.popen.send_signal(signal.SIGTERM)
    client.wait_for_log("draining")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
    sock.sendall(b"still open")
    assert sock.recv(10) == b"still open"
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(10) == b""
    sock.close()
    assert client.popen.wait(timeout=10) == 0
    client.stop()


def test_frozen_relay_is_detected_and_the_edge_comes_back(tmp_path):
    """SIGSTOP the relay past the keep-alive: the edge sees a dead control channel, retries, and is back
    online once the relay runs again."""
    port = free_port()
    relay = agents.start_relay(tmp_path, ["frozen"], port=port, name="frozen")
    url = "ws://127.0.0.1:%d" % port
    target = agents.TcpServer("echo")
    edge = agents.start_edge(tmp_path, url, ["frozen:127.0.0.1:%d" % target.port])  # -a 1
    client_port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:frozen" % client_port], [client_port])
    try:
        relay.popen.send_signal(signal.SIGSTOP)
        edge.wait_for_log("control channel dead: no pong", timeout=15)
        relay.popen.send_signal(signal.SIGCONT)
        edge.wait_for_log("listener reconnected", timeout=40)
        sent, received, count = agents.echo_roundtrip(client_port, b"thawed")
        assert count == 6 and sent == received
    finally:
        relay.popen.send_signal(signal.SIGCONT)
        for process in (client, edge, relay):
            process.stop()
        target.close()


def test_edge_renews_its_token_before_the_relay_would_drop_it(tmp_path):
    port = free_port()
    relay = agents.start_relay_from_config(
        tmp_path, "listen: 127.0.0.1:%d\nnamespaceRules:\n  - {keyName: %s, primaryKey: '%s', rights: [Listen, Send]}\n"
        "hybridConnections:\n  - name: renew\nlimits:\n  pingIntervalSeconds: 30\n  tokenGraceSeconds: 1\n"
        "  clockSkewSeconds: 0\n" % (port, agents.KEY_NAME, agents.KEY), name="renew-relay")
    url = "ws://127.0.0.1:%d" % port
    renewing = agents.start_edge(tmp_path, url, ["renew:127.0.0.1:1"], extra=["--token-ttl", "3"])
    # A pre-made token cannot be renewed: the relay drops that listener once se + grace has passed, then and
    # not at its next ping (30 s away here).
    expiring = agents.Process(
        ["edge", "-e", url, "-a", "1", "-s", hc.sas_token(hc.dotnet_audience("127.0.0.1", "renew"), agents.KEY_NAME,
                                                        agents.KEY, expiry=int(time.time()) + 3),
         "-T", "renew:127.0.0.1:1"], str(tmp_path / "renew-expiring.log"))
    try:
        expiring.wait_for_log("listener online")
        time.sleep(8)
        assert relay.log().count("listener token renewed") >= 2, relay.log()
        assert "listener offline" not in renewing.log(), renewing.log()
        assert "listener token expired" in relay.log()
        assert "listener offline" in expiring.log()
    finally:
        for process in (expiring, renewing, relay):
            process.stop()


def test_client_allow_list_refuses_other_sources(relay, echo_tunnel):
    closed_port, open_port = free_port(), free_port()
    refusing = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d:tcp" % closed_port], [closed_port],
                                   extra=["--allow", "10.0.0.0/8"])
    allowing = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d:tcp" % open_port], [open_port],
                                   extra=["--allow", "127.0.0.0/8", "--allow", "::1"])
    try:
        sock = socket.create_connection(("127.0.0.1", closed_port), timeout=10)
        try:
            data = sock.recv(10)
        except ConnectionResetError:
            data = b""
        assert data == b""
        sock.close()
        refusing.wait_for_log("connection refused: source not allowed")
        assert "sender connected" not in refusing.log()
        sent, received, count = agents.echo_roundtrip(open_port, b"allowed")
        assert count == 7 and sent == received
    finally:
        refusing.stop()
        allowing.stop()


def test_two_relays_behind_haproxy_share_one_hybrid_connection(tmp_path):
    """Beyond one relay: the edge listens on both relays, haproxy spreads senders over them, and killing
    one relay loses no new tunnel."""
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy (Debian package) is required"
    ports = [free_port(), free_port()]
    relays = [agents.start_relay(tmp_path, ["lb"], port=port, name="lb%d" % i) for i, port in enumerate(ports)]
    balancer = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n"
        "  option redispatch\nfrontend fe\n  bind 127.0.0.1:%d\n  default_backend relays\nbackend relays\n"
        "  balance roundrobin\n%s" % (balancer, "".join(
            "  server r%d 127.0.0.1:%d check inter 200ms fall 1 rise 2\n" % (i, port) for i, port in enumerate(ports))))
    log = open(tmp_path / "haproxy.log", "w")
    lb = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT)
    target = agents.TcpServer("echo")
    edge = agents.Process(["edge", "-e", "ws://127.0.0.1:%d" % ports[0], "-e", "ws://127.0.0.1:%d" % ports[1],
                           "-K", agents.KEY_NAME, "-k", agents.KEY, "-a", "1", "-T", "lb:127.0.0.1:%d" % target.port],
                          str(tmp_path / "lb-edge.log"))
    client_port = free_port()
    client = agents.start_client(tmp_path, "ws://127.0.0.1:%d" % balancer, ["127.0.0.1:%d:lb" % client_port],
                                 [client_port])
    try:
        deadline = time.time() + 20
        while edge.log().count("listener online") < 2:
            assert time.time() < deadline, edge.log()
            time.sleep(0.05)
        agents.wait_port(balancer)
        for i in range(20):
            sent, received, count = agents.echo_roundtrip(client_port, b"tunnel %02d" % i)
            assert count == 9 and sent == received
        assert all("rendezvous joined" in relay.log() for relay in relays), "both relays served tunnels"
        relays[0].stop(signal.SIGKILL)
        for i in range(20):
            sent, received, count = agents.echo_roundtrip(client_port, b"after %02d" % i)
            assert count == 8 and sent == received, "tunnel %d after the kill" % i
    finally:
        for process in (client, edge):
            process.stop()
        for relay in relays:
            relay.stop()
        lb.terminate()
        lb.wait(timeout=10)
        log.close()
        target.close()


def unix_path(directory, name):
    """A socket path short enough for sockaddr_un, under the test's directory when that fits."""
    path = os.path.join(str(directory), name)
    return path if len(path) < 100 else os.path.join(tempfile.mkdtemp(prefix="hyr"), name)


def test_unix_sockets_at_both_ends(relay):
    """azbridge's socket forms: -L /path/port_name:relay and -T relay:port_name//path. 64 MiB byte-exact,
    concurrent connections, the socket's mode as asked, and the file gone when the client stops."""
    target_path = unix_path(relay.directory, "target.sock")
    client_path = unix_path(relay.directory, "client.sock")
    target = agents.TcpServer("echo", path=target_path)
    edge = agents.start_edge(relay.directory, relay.url, ["usock:echo/%s" % target_path])
    client = agents.start_client(relay.directory, relay.url, ["%s/echo:usock" % client_path], [client_path],
                                 extra=["--socket-mode", "600"])
    try:
        assert stat.S_IMODE(os.stat(client_path).st_mode) == 0o600
        payload = os.urandom(64 << 20)
        sent, received, count = agents.echo_roundtrip(client_path, payload)
        assert count == len(payload) and sent == received

        async def one(index):
            reader, writer = await asyncio.open_unix_connection(client_path)
            data = os.urandom(10_000 + index)
            writer.write(data)
            await writer.drain()
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(-1), 60)
            writer.close()
            return echoed == data

        async def many():
            return await asyncio.gather(*(one(i) for i in range(50)))

        assert all(asyncio.run(many()))
        assert "unix:%s" % target_path in edge.log()
    finally:
        client.stop()
        edge.stop()
        target.close()
    assert not os.path.exists(client_path), "the client removes its socket file when it stops"


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(relay):
    path = unix_path(relay.directory, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a crashed process leaves
    client = agents.start_client(relay.directory, relay.url, ["%s/x:usock" % path], [path])
    client.stop()

    live = agents.TcpServer("echo", path=path)
    try:
        process = agents.Process(["client", "-e", relay.url, "-K", agents.KEY_NAME, "-k", agents.KEY, "-L",
                                  "%s/x:usock" % path], str(relay.directory / "client-live.log"))
        assert process.popen.wait(timeout=20) != 0
        assert "another process listens on it" in process.log()
        sent, received, _ = agents.echo_roundtrip(path, b"still mine")
        assert sent == received, "the live service keeps its socket"
    finally:
        live.close()

    regular = unix_path(relay.directory, "not-a-socket")
    open(regular, "w").close()
    process = agents.Process(["client", "-e", relay.url, "-K", agents.KEY_NAME, "-k", agents.KEY, "-L",
                              "%s/x:usock" % regular], str(relay.directory / "client-file.log"))
    assert process.popen.wait(timeout=20) != 0
    assert "exists and is not a socket" in process.log()
    assert os.path.isfile(regular)


def test_a_missing_target_socket_is_reported(relay):
    edge = agents.start_edge(relay.directory, relay.url, ["usock:gone//nonexistent/dir/app.sock"])
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d/gone:usock" % port], [port])
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"hello")
        try:
            assert sock.recv(100) == b"", "the client's connection closes"
        except ConnectionResetError:
            pass  # closed with "hello" unread: a reset, which is a close all the same
        sock.close()
        edge.wait_for_log("no socket at /nonexistent/dir/app.sock")
    finally:
        client.stop()
        edge.stop()


class UdpEcho:
    """A UDP service answering every datagram with b"echo:" and the datagram, to its sender."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except OSError:
                return
            self.received += 1
            self.sock.sendto(b"echo:" + data, source)

    def close(self):
        self.sock.close()


def test_udp_datagrams_from_several_sources_come_back_to_each(relay):
    """azbridge's UDP tunnels (-L portU, -T host:portU): one tunnel per source address, every datagram framed
    in the stream, each answer back at its own source; sizes from 0 bytes to 60 KB."""
    service = UdpEcho()
    edge = agents.start_edge(relay.directory, relay.url, ["udp:127.0.0.1:%dU" % service.port])
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%dU:udp" % port], [port],
                                 extra=["--metrics", "127.0.0.1:%d" % (metrics := free_port())])
    failures = []

    def source(index):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        try:
            for n in range(500):
                size = [0, 1, 100, 1400, 60_000][n % 5]
                payload = os.urandom(size)
                for attempt in range(3):  # loopback may drop under load; UDP's contract allows a retry
                    sock.sendto(payload, ("127.0.0.1", port))
                    try:
                        answer, _ = sock.recvfrom(65535)
                        break
                    except socket.timeout:
                        continue
                else:
                    failures.append("source %d: datagram %d unanswered" % (index, n))
                    return
                if answer != b"echo:" + payload:
                    failures.append("source %d: datagram %d came back wrong" % (index, n))
                    return
        finally:
            sock.close()

    try:
        threads = [threading.Thread(target=source, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures
        assert service.received >= 2000
        assert metric_value(metrics, "hyrelay_udp_datagrams_total", direction="up") >= 2000
        assert metric_value(metrics, "hyrelay_udp_datagrams_total", direction="down") >= 2000
        # Bytes as for TCP: what the client put into its tunnels, framed (4 sources x 500 datagrams, 61,501 bytes
        # of payload per 5, plus two bytes of length each).
        assert metric_value(metrics, "hyrelay_transferred_bytes_total", direction="up") >= 4 * 100 * 61_501 + 4000
        # One tunnel per source address: four sources, four tunnels.
        assert client.log().count("sender connected") == 4 or metric_value(
            metrics, "hyrelay_client_connects_total", outcome="connected") == 4
    finally:
        client.stop()
        edge.stop()
        service.close()


def test_a_tcp_sender_to_a_udp_port_is_told_and_counted(relay):
    """azbridge answers a mode mismatch with [0,0,1] or [0,0,255] and says nothing (its issue #10); here both
    sides log it with the names involved, and the edge counts it."""
    service = UdpEcho()
    metrics = free_port()
    edge = agents.start_edge(relay.directory, relay.url, ["mixed:dns/127.0.0.1:%dU" % service.port],
                             extra=["--metrics", "127.0.0.1:%d" % metrics])
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d/dns:mixed" % port], [port])
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
        sock.close()
        edge.wait_for_log("but the sender asked for a stream (TCP)")
        client.wait_for_log("the listener's port is a datagram (UDP) port")
        assert metric_value(metrics, "hyrelay_dials_total", outcome="mode_mismatch") == 1
    finally:
        client.stop()
        edge.stop()
        service.close()


def test_an_idle_udp_flow_closes_after_its_time(relay):
    service = UdpEcho()
    # The edge waits longer than the client, so the client's timer is the one that ends the flow (with both at 1 s
    # either side may end it first, and the client then logs the edge's close instead).
    edge = agents.start_edge(relay.directory, relay.url, ["udp:127.0.0.1:%dU" % service.port],
                             extra=["--udp-idle", "30"])
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%dU:udp" % port], [port],
                                 extra=["--udp-idle", "1"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    try:
        sock.sendto(b"ping", ("127.0.0.1", port))
        assert sock.recvfrom(100)[0] == b"echo:ping"
        client.wait_for_log("cause_label=idle", timeout=10)
        # A new datagram from the same source opens a new flow.
        sock.sendto(b"again", ("127.0.0.1", port))
        assert sock.recvfrom(100)[0] == b"echo:again"
    finally:
        sock.close()
        client.stop()
        edge.stop()
        service.close()


class Tinyproxy:
    """A real HTTP proxy (tinyproxy) on a free loopback port, with Basic credentials, logging each CONNECT."""

    def __init__(self, directory, user="relayuser", password="s3cret"):
        self.port = free_port()
        self.log_path = str(directory / ("tinyproxy-%d.log" % self.port))
        config = directory / ("tinyproxy-%d.conf" % self.port)
        config.write_text("\n".join([
            "Port %d" % self.port, "Listen 127.0.0.1", "Timeout 60", "LogLevel Connect",
            "LogFile \"%s\"" % self.log_path, "MaxClients 100", "Allow 127.0.0.1",
            "BasicAuth %s %s" % (user, password), ""]))
        self.popen = subprocess.Popen(["tinyproxy", "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        agents.wait_port(self.port)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        self.popen.terminate()
        self.popen.wait(10)


@pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is installed by scripts/setup.sh")
def test_agents_reach_the_relay_through_an_http_proxy(relay):
    """--proxy (and HTTP_PROXY from the environment) carry every relay connection through CONNECT with Basic
    credentials; a wrong password is reported as the proxy's refusal, with its status line."""
    proxy = Tinyproxy(relay.directory)
    target = agents.TcpServer("echo")
    try:
        proxied_tunnel_and_wrong_password(relay, proxy, target)
    finally:
        proxy.stop()
        target.close()


def proxied_tunnel_and_wrong_password(relay, proxy, target):
    url = "http://relayuser:s3cret@127.0.0.1:%d" % proxy.port
    os.environ["HTTP_PROXY"] = url
    try:
        edge = agents.start_edge(relay.directory, relay.url, ["tcp:proxied/127.0.0.1:%d" % target.port])
    finally:
        del os.environ["HTTP_PROXY"]
    port = free_port()
    client = agents.start_client(relay.directory, relay.url, ["127.0.0.1:%d/proxied:tcp" % port], [port],
                                 extra=["--proxy", url])
    try:
        payload = os.urandom(1 << 20)
        sent, received, count = agents.echo_roundtrip(port, payload)
        assert count == len(payload) and sent == received
        relay_address = "127.0.0.1:%d" % relay.port
        # The edge's listen and rendezvous and the client's probe and sender: every one a CONNECT.
        assert proxy.log().count("CONNECT") >= 3, proxy.log()[-2000:]
        assert relay_address in proxy.log()
    finally:
        client.stop()
        edge.stop()

    wrong = agents.Process(
        ["edge", "-e", relay.url, "-K", agents.KEY_NAME, "-k", agents.KEY, "-a", "1", "--proxy",
         "http://relayuser:wrong@127.0.0.1:%d" % proxy.port, "-T", "tcp:127.0.0.1:%d" % target.port],
        str(relay.directory / "edge-wrong-proxy.log"))
    try:
        wrong.wait_for_log("refused CONNECT")
        # tinyproxy answers a wrong password 401 (squid 407): the proxy's own status line is in the log.
        assert "401 Unauthorized" in wrong.log() and "proxy_refused" in wrong.log()
    finally:
        wrong.stop()


def test_recycled_control_channels_lose_no_tunnel(tmp_path):
    """Azure Relay recycles listener control channels (about daily, Close 1011); limits.listenerRecycleSeconds does
    it here every 2 s: the edge reconnects at once each time, a tunnel held open across several recycles goes on
    echoing, and new tunnels work between them."""
    port = free_port()
    relay = agents.start_relay_from_config(
        tmp_path, "listen: \"127.0.0.1:%d\"\nhybridConnections: [{name: hc}]\nnamespaceRules:\n"
        "  - {keyName: %s, primaryKey: \"%s\", rights: [Listen, Send]}\n"
        "limits:\n  listenerRecycleSeconds: 2\n" % (port, agents.KEY_NAME, agents.KEY), name="relay-recycle")
    target = agents.TcpServer("echo")
    edge = client = None
    try:
        edge = agents.start_edge(tmp_path, "ws://127.0.0.1:%d" % port, ["hc:127.0.0.1:%d" % target.port])
        local = free_port()
        client = agents.start_client(tmp_path, "ws://127.0.0.1:%d" % port, ["127.0.0.1:%d:hc" % local], [local])
        held = socket.create_connection(("127.0.0.1", local), timeout=10)
        deadline = time.time() + 30
        rounds = 0
        while relay.log().count("listener control channel recycled") < 3:
            assert time.time() < deadline, relay.log()[-2000:]
            message = b"round %d" % rounds
            held.sendall(message)
            assert held.recv(100) == message
            rounds += 1
            time.sleep(0.3)
        held.sendall(b"after")
        assert held.recv(100) == b"after"
        held.close()
        edge.wait_for_log("listener reconnected")
        assert "code=1011" in edge.log()
        sent, received, count = agents.echo_roundtrip(local, os.urandom(100_000))
        assert count == 100_000 and sent == received
    finally:
        agents.stop_all(client, edge, relay)
        target.close()
