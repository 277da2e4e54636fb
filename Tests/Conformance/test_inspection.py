"""Live inspection: /v1/tunnels on every role and /v1/listeners on the relay during an open tunnel, `hyrelay
status`, the agent identity a relay shows, and readiness that follows the relay."""
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

from agents import TcpServer, binary, metric_value, start_client, start_edge, start_relay, stop_all, wait_until
from conftest import free_port


def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as response:
        return response.status, json.loads(response.read())


def status_code(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def recv_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def test_open_tunnels_and_listeners_are_visible_live_in_every_role(tmp_path):
    ports = {role: free_port() for role in ("relay", "edge", "client")}
    relay = start_relay(tmp_path, ["hc1"], extra=["--metrics", "127.0.0.1:%d" % ports["relay"]])
    url = "ws://127.0.0.1:%d" % relay.port
    target = TcpServer("echo")
    edge = start_edge(tmp_path, url, ["hc1:127.0.0.1:%d" % target.port],
                      extra=["--name", "edge-berlin", "--metrics", "127.0.0.1:%d" % ports["edge"]])
    local = free_port()
    client = start_client(tmp_path, url, ["127.0.0.1:%d:hc1" % local], [local],
                          extra=["--metrics", "127.0.0.1:%d" % ports["client"]])
    try:
        for role in ports:
            assert get(ports[role], "/v1/tunnels") == (200, {"tunnels": []})
        sock = socket.create_connection(("127.0.0.1", local), timeout=10)
        sock.sendall(b"a" * 100_000)
        assert recv_exactly(sock, 100_000) == b"a" * 100_000
        views = {}
        for role in ports:
            wait_until(lambda: len(get(ports[role], "/v1/tunnels")[1]["tunnels"]) == 1, what=role + " tunnel")
            views[role] = get(ports[role], "/v1/tunnels")[1]["tunnels"][0]
        trace = views["client"]["traceId"]
        assert len(trace) == 32 and all(view["traceId"] == trace for view in views.values()), views
        for role, view in views.items():
            assert set(view) == {"id", "traceId", "entity", "portName", "peer", "state", "openedAt", "bytesUp",
                                 "bytesDown", "lastActivity"}
            assert view["entity"] == "hc1" and view["state"] == "open", (role, view)
            assert view["bytesUp"] >= 100_000 and view["bytesDown"] >= 100_000, (role, view)
            assert view["openedAt"].endswith("Z") and view["lastActivity"] >= view["openedAt"]
        assert views["client"]["portName"] == str(target.port) or views["client"]["portName"]
        assert views["edge"]["portName"] == views["client"]["portName"]
        assert views["relay"]["id"].startswith(views["client"]["id"]), "the relay's rendezvous id extends the sender's"
        assert views["edge"]["id"] == views["client"]["id"], "the accept carries the sender's tracking id"
        assert views["client"]["peer"].startswith("127.0.0.1:")

        # Live: more bytes on the same open tunnel move the counters without closing it.
        sock.sendall(b"b" * 50_000)
        assert recv_exactly(sock, 50_000) == b"b" * 50_000
        for role in ports:
            wait_until(lambda: get(ports[role], "/v1/tunnels")[1]["tunnels"][0]["bytesUp"]
                       >= views[role]["bytesUp"] + 50_000, what=role + " live bytes")

        listeners = get(ports["relay"], "/v1/listeners")[1]["listeners"]
        assert len(listeners) == 1
        listener = listeners[0]
        assert listener["entity"] == "hc1" and listener["agent"] == "edge-berlin"
        assert listener["host"] == socket.gethostname()[:64] and listener["version"] and listener["tunnels"] == 1
        assert status_code(ports["edge"], "/v1/listeners")[0] == 404
        assert metric_value(ports["relay"], "hyrelay_listener_agents", entity="hc1", agent="edge-berlin") == 1
        assert "agent=edge-berlin" in relay.log() or '"agent":"edge-berlin"' in relay.log() or \
            "edge-berlin" in relay.log()

        # hyrelay status: tables and JSON.
        result = subprocess.run([binary(), "status", "--endpoint", "127.0.0.1:%d" % ports["relay"]],
                                capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        assert "TUNNELS (1 open)" in result.stdout and trace in result.stdout
        assert "LISTENERS (1 registered)" in result.stdout and "edge-berlin" in result.stdout
        header = [line for line in result.stdout.splitlines() if line.startswith("ID ")][0]
        assert header.split() == ["ID", "TRACE", "ENTITY", "PORT", "PEER", "STATE", "AGE", "UP", "DOWN", "IDLE"]
        result = subprocess.run([binary(), "status", "--endpoint", "127.0.0.1:%d" % ports["client"], "--json"],
                                capture_output=True, text=True, timeout=20)
        body = json.loads(result.stdout)
        assert body["tunnels"][0]["traceId"] == trace and "listeners" not in body
        down = subprocess.run([binary(), "status", "--endpoint", "127.0.0.1:%d" % free_port()],
                              capture_output=True, text=True, timeout=20)
        assert down.returncode == 1 and "did not answer" in down.stdout

        sock.close()
        for role in ports:
            wait_until(lambda: get(ports[role], "/v1/tunnels")[1]["tunnels"] == [], what=role + " tunnel gone")
        wait_until(lambda: get(ports["relay"], "/v1/listeners")[1]["listeners"][0]["tunnels"] == 0,
                   what="listener tunnel count back to 0")
    finally:
        stop_all(client, edge, relay)
        target.close()


def test_readiness_follows_the_relay(tmp_path):
    ports = {role: free_port() for role in ("edge", "client")}
    relay_port = free_port()
    relay = start_relay(tmp_path, ["hc1"], port=relay_port)
    url = "ws://127.0.0.1:%d" % relay_port
    target = TcpServer("echo")
    edge = start_edge(tmp_path, url, ["hc1:127.0.0.1:%d" % target.port],
                      extra=["--metrics", "127.0.0.1:%d" % ports["edge"]])
    local = free_port()
    client = start_client(tmp_path, url, ["127.0.0.1:%d:hc1" % local], [local],
                          extra=["--metrics", "127.0.0.1:%d" % ports["client"]])
    try:
        wait_until(lambda: status_code(ports["edge"], "/readyz")[0] == 200, what="edge ready")
        wait_until(lambda: status_code(ports["client"], "/readyz")[0] == 200, what="client ready")
        assert "1 listener(s) registered" in status_code(ports["edge"], "/readyz")[1]
        relay.stop()
        # The edge notices at once (its control channel closes); the client at its next ask (every 10 s).
        wait_until(lambda: status_code(ports["edge"], "/readyz")[0] == 503, what="edge not ready")
        code, detail = status_code(ports["edge"], "/readyz")
        assert "not registered: hc1 on ws://127.0.0.1:%d" % relay_port in detail, detail
        wait_until(lambda: status_code(ports["client"], "/readyz")[0] == 503, timeout=25, what="client not ready")
        assert "hc1" in status_code(ports["client"], "/readyz")[1]
        relay = start_relay(tmp_path, ["hc1"], port=relay_port, name="relay-again")
        wait_until(lambda: status_code(ports["edge"], "/readyz")[0] == 200, timeout=30, what="edge ready again")
        wait_until(lambda: status_code(ports["client"], "/readyz")[0] == 200, timeout=25, what="client ready again")
    finally:
        stop_all(client, edge, relay)
        target.close()
