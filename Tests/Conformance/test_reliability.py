"""Load and faults through real processes: 1000 concurrent tunnels byte-exact with memory and
file descriptors accounted for, and the processes of a tunnel dying mid-stream."""
import asyncio
import hashlib
import os
import signal
import socket
import time

import pytest

import agents
from agents import fds, rss
from conftest import free_port

TUNNELS = int(os.environ.get("HYRELAY_LOAD_TUNNELS", "1000"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reliability")
    # Every device of the load test comes from 127.0.0.1: two connections a tunnel, a listener per edge.
    relay = agents.start_relay(directory, ["load", "faults"], name="load",
                               extra=["--max-connections-per-source", str(2 * TUNNELS + 1000)])
    relay.url = "ws://127.0.0.1:%d" % relay.port
    yield relay, directory
    relay.stop()


def test_thousand_concurrent_tunnels_byte_exact_with_bounded_memory(chain):
    relay, directory = chain

    async def echo(reader, writer):
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    async def run():
        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=2048)
        target_port = server.sockets[0].getsockname()[1]
        edge = agents.start_edge(directory, relay.url, ["load:127.0.0.1:%d" % target_port])
        client_port = free_port()
        client = agents.start_client(directory, relay.url, ["127.0.0.1:%d:load" % client_port], [client_port])
        processes = {"relay": relay.popen.pid, "edge": edge.popen.pid, "client": client.popen.pid}
        before = {name: (rss(pid), fds(pid)) for name, pid in processes.items()}

        async def load_round():
            """TUNNELS tunnels open at once; returns each process's RSS while they are all open."""
            opened = asyncio.Event()
            ready = 0
            peak = {}

            async def tunnel(index):
                nonlocal ready
                reader, writer = await asyncio.open_connection("127.0.0.1", client_port)
                payload = os.urandom(16 * 1024 + index)
                writer.write(payload)
                await writer.drain()
                echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 120)
                ready += 1
                if ready == TUNNELS:
                    opened.set()
                await opened.wait()  # every tunnel is open at once here
                writer.write_eof()
                rest = await asyncio.wait_for(reader.read(), 60)
                writer.close()
                return hashlib.sha256(echoed + rest).digest() == hashlib.sha256(payload).digest()

            async def sample():
                await opened.wait()
                for name, pid in processes.items():
                    peak[name] = rss(pid)

            results, _ = await asyncio.gather(asyncio.gather(*(tunnel(i) for i in range(TUNNELS))), sample())
            assert all(results), "%d of %d tunnels were not byte-exact" % (results.count(False), TUNNELS)
            await asyncio.sleep(1.5)
            return peak

        try:
            first = await load_round()
            second = await load_round()
            after = {name: (rss(pid), fds(pid)) for name, pid in processes.items()}
            per_tunnel = sum(first[name] - before[name][0] for name in processes) / TUNNELS
            print("\n%d tunnels; RSS growth per open tunnel across client+relay+edge: %.1f KiB" % (TUNNELS, per_tunnel / 1024))
            for name in processes:
                print("  %s: RSS %d -> peak %d, second round peak %d -> %d KiB; fds %d -> %d" % (
                    name, before[name][0] // 1024, first[name] // 1024, second[name] // 1024, after[name][0] // 1024,
                    before[name][1], after[name][1]))
                assert after[name][1] <= before[name][1] + 5, "%s leaked file descriptors" % name
                # A leak would grow every round; reused memory keeps the second round's peak near the first.
                assert second[name] <= first[name] * 1.15 + 16 * 1024 * 1024, "%s memory grows per round" % name
            # Sanitizer builds shadow every allocation, so their runs raise the bound.
            limit = int(os.environ.get("HYRELAY_MAX_KIB_PER_TUNNEL", "256"))
            assert per_tunnel < limit * 1024, "memory per tunnel is bounded"
        finally:
            client.stop()
            edge.stop()
            server.close()

    asyncio.run(run())


def test_relay_killed_mid_transfer_fails_tunnels_cleanly_and_edges_return(tmp_path):
    chain = agents.Chain(tmp_path, "midway")
    relay, edge, client, port, client_port = chain.relay, chain.edge, chain.client, chain.port, chain.client_port
    try:
        sock = socket.create_connection(("127.0.0.1", client_port), timeout=10)
        sock.sendall(b"x" * 100_000)
        got = 0
        while got < 100_000:
            got += len(sock.recv(65536))
        relay.stop(signal.SIGKILL)
        # The running tunnel ends: the client closes the local connection, with the cause logged.
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        sock.close()
        client.wait_for_log("cause_label=relay_lost")
        edge.wait_for_log("listener offline")
        relay = agents.start_relay(tmp_path, ["midway"], port=port, name="midway")
        edge.wait_for_log("listener reconnected", timeout=30)
        sent, received, count = agents.echo_roundtrip(client_port, b"again")
        assert count == 5 and sent == received
    finally:
        for process in (client, edge, relay):
            process.stop()
        chain.target.close()


def test_target_dying_mid_stream_and_edge_killed(tmp_path):
    port = free_port()
    relay = agents.start_relay(tmp_path, ["dying"], port=port, name="dying")
    url = "ws://127.0.0.1:%d" % port
    # A target that answers once and then drops the connection hard.
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    edge = agents.start_edge(tmp_path, url, ["dying:127.0.0.1:%d" % server.getsockname()[1]])
    client_port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:dying" % client_port], [client_port])
    try:
        sock = socket.create_connection(("127.0.0.1", client_port), timeout=10)
        sock.sendall(b"hello")
        conn, _ = server.accept()
        assert conn.recv(5) == b"hello"
        conn.sendall(b"partial")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST
        data = b""
        try:
            while True:
                chunk = sock.recv(100)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        assert data == b"partial", "what the target sent before dying still arrives"
        sock.close()
        edge.wait_for_log("tunnel closed")
        # The edge dies: the relay drops its listener, and new senders get a clear 404 at the client.
        edge.stop(signal.SIGKILL)
        relay.wait_for_log("listener disconnected")
        sock = socket.create_connection(("127.0.0.1", client_port), timeout=10)
        assert sock.recv(10) == b""
        sock.close()
        client.wait_for_log("There are no listeners connected for the endpoint")
    finally:
        for process in (client, edge, relay):
            process.stop()
        server.close()


def test_sighup_reloads_agents_without_dropping_open_tunnels(chain, tmp_path):
    relay, _ = chain
    a, b = agents.TcpServer("echo", tag=b"A"), agents.TcpServer("echo", tag=b"B")
    head = ("AzureRelayEndpoint: %s\nAzureRelaySharedAccessKeyName: %s\nAzureRelaySharedAccessKey: %s\n"
            % (relay.url, agents.KEY_NAME, agents.KEY))
    edge_file, client_file = tmp_path / "edge.yml", tmp_path / "client.yml"
    edge_file.write_text(head + "RemoteForward:\n  - {RelayName: faults, Host: 127.0.0.1, HostPort: %d, PortName: a}\n" % a.port)
    port_a, port_b = free_port(), free_port()
    client_file.write_text(head + "LocalForward:\n  - {RelayName: faults, BindAddress: 127.0.0.1, BindPort: %d, PortName: a}\n" % port_a)
    edge = agents.Process(["edge", "-f", str(edge_file), "-a", "1"], str(tmp_path / "hup-edge.log"))
    client = agents.Process(["client", "-f", str(client_file)], str(tmp_path / "hup-client.log"))
    try:
        edge.wait_for_log("listener online")
        client.wait_for_log("client port bound")
        held = socket.create_connection(("127.0.0.1", port_a), timeout=10)
        assert held.recv(1) == b"A"
        # Replace port a by port b on both sides and reload.
        edge_file.write_text(head + "RemoteForward:\n  - {RelayName: faults, Host: 127.0.0.1, HostPort: %d, PortName: b}\n" % b.port)
        client_file.write_text(head + "LocalForward:\n  - {RelayName: faults, BindAddress: 127.0.0.1, BindPort: %d, PortName: b}\n" % port_b)
        edge.popen.send_signal(signal.SIGHUP)
        client.popen.send_signal(signal.SIGHUP)
        edge.wait_for_log("configuration reloaded")
        client.wait_for_log("configuration reloaded")
        deadline = time.time() + 20
        while edge.log().count("listener online") < 2:
            assert time.time() < deadline, edge.log()
            time.sleep(0.05)
        fresh = socket.create_connection(("127.0.0.1", port_b), timeout=10)
        assert fresh.recv(1) == b"B"
        fresh.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port_a), timeout=2).close()
        held.sendall(b"still here")
        assert held.recv(10) == b"still here", "the tunnel opened before the reload keeps working"
        held.close()
        # A broken file is refused and the running configuration stays.
        client_file.write_text("LocalForward: [\n")
        client.popen.send_signal(signal.SIGHUP)
        client.wait_for_log("reload failed")
        again = socket.create_connection(("127.0.0.1", port_b), timeout=10)
        assert again.recv(1) == b"B"
        again.close()
    finally:
        client.stop()
        edge.stop()
        a.close()
        b.close()


def test_oversized_frame_closes_only_that_connection(chain):
    relay, _ = chain
    import hc
    headers = {"ServiceBusAuthorization": hc.sas_token(hc.dotnet_audience("127.0.0.1", "load"), agents.KEY_NAME, agents.KEY)}
    listener = hc.RawWebSocket("127.0.0.1", relay.port, "/$hc/load?sb-hc-action=listen&sb-hc-id=x", headers=headers)
    assert listener.status == 101
    # A frame header announcing 100 MiB on a control channel, past maxFrameBytes (64 MiB): the relay says so
    # with Close 1009 and a reason, then closes.
    listener.sock.sendall(bytes([0x82, 0x80 | 127]) + (100 << 20).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 1000)
    listener.sock.settimeout(10)
    while True:
        fin, opcode, payload = listener.recv_frame()
        if opcode == 0x8:
            break
    assert int.from_bytes(payload[:2], "big") == 1009 and b"Message too big" in payload
    try:
        while listener.sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    listener.close()
    # The relay keeps serving everyone else.
    other = hc.RawWebSocket("127.0.0.1", relay.port, "/$hc/load?sb-hc-action=listen&sb-hc-id=y", headers=headers)
    assert other.status == 101
    other.close()


def test_relay_unreachable_at_start_then_rotated_key(tmp_path):
    """Agents started before their relay wait for it; a relay restarted with another key refuses the old
    one with 401, which the edge logs and counts while it keeps retrying."""
    port = free_port()
    url = "ws://127.0.0.1:%d" % port
    target = agents.TcpServer("echo")
    edge = agents.Process(["edge", "-e", url, "-K", agents.KEY_NAME, "-k", agents.KEY, "-a", "1",
                           "-T", "late:127.0.0.1:%d" % target.port], str(tmp_path / "late-edge.log"))
    client_port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:late" % client_port], [client_port])
    relay = None
    try:
        edge.wait_for_log("cannot reach relay")
        sock = socket.create_connection(("127.0.0.1", client_port), timeout=10)
        assert sock.recv(10) == b""
        sock.close()
        client.wait_for_log("cannot reach relay")
        relay = agents.start_relay(tmp_path, ["late"], port=port, name="late")
        edge.wait_for_log("listener online", timeout=30)
        sent, received, count = agents.echo_roundtrip(client_port, b"late start")
        assert count == 10 and sent == received
        # Rotate the key: the old one is refused from now on.
        relay.stop()
        rotated = agents.Process(["relay", "--listen", "127.0.0.1:%d" % port, "--hybrid-connection", "late",
                                  "--sas-key-name", agents.KEY_NAME, "--sas-key", "cm90YXRlZC1rZXk="],
                                 str(tmp_path / "rotated.log"))
        relay = rotated
        rotated.wait_for_log("relay listening")
        edge.wait_for_log("status=401", timeout=30)
        rotated.wait_for_log("InvalidSignature")
    finally:
        agents.stop_all(client, edge, relay)
        target.close()
