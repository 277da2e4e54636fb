"""Running the relay as an operator does: strict configuration files, a graceful stop on SIGTERM, and a
reload on SIGHUP (hybrid connections, keys, the TLS certificate) that keeps open tunnels."""
import asyncio
import hashlib
import signal
import socket
import ssl
import subprocess
import time

from websockets.asyncio.client import connect

import agents
import hc
from conftest import free_port

RELAY_CONFIG = """listen: "127.0.0.1:{port}"
namespaceRules:
  - keyName: {key_name}
    primaryKey: "{key}"
    rights: [Listen, Send]
hybridConnections:
{entities}
{extra}"""


def write_config(path, port, entities, key=agents.KEY, extra=""):
    path.write_text(RELAY_CONFIG.format(port=port, key_name=agents.KEY_NAME, key=key, extra=extra,
                                        entities="".join("  - name: %s\n" % name for name in entities)))


def start_relay_from(path, tmp_path, port, extra=()):
    process = agents.Process(["relay", "--config", str(path)] + list(extra),
                             str(tmp_path / ("relay-%d.log" % time.time_ns())))
    process.port = port
    process.wait_for_log("relay listening")
    return process


def listen_status(port, entity, key=agents.KEY):
    token = hc.sas_token("http://127.0.0.1/%s/" % entity, key_name=agents.KEY_NAME, key=key)
    ws = hc.RawWebSocket("127.0.0.1", port, hc.listen_uri("", entity), headers={"ServiceBusAuthorization": token})
    status = ws.status
    ws.close()
    return status


def test_a_mistyped_relay_key_is_refused_with_its_line_and_the_fix(tmp_path):
    port = free_port()
    config = tmp_path / "relay.yml"
    write_config(config, port, ["hc1"], extra="tsl:\n  certificate: /etc/hyrelay/cert.pem\n  key: /etc/hyrelay/key.pem\n")
    result = subprocess.run([agents.binary(), "relay", "--config", str(config)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert "line 9: unknown key 'tsl' in the configuration (did you mean 'tls'?)" in result.stderr + result.stdout
    checked = subprocess.run([agents.binary(), "check", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 2 and "unknown key 'tsl'" in checked.stdout
    write_config(config, port, ["hc1", "hc2"])
    checked = subprocess.run([agents.binary(), "check", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0 and "OK (relay, 2 hybrid connections, tls off)" in checked.stdout, checked.stdout


def test_wss_public_url_on_a_plain_relay_is_called_out(tmp_path):
    port = free_port()
    config = tmp_path / "relay.yml"
    write_config(config, port, ["hc1"], extra="publicURL: wss://relay.example.com\n")
    relay = start_relay_from(config, tmp_path, port)
    try:
        relay.wait_for_log("publicURL is wss:// but this relay serves plain ws")
        assert "tls=off" in relay.log()
    finally:
        relay.stop()


def test_sigterm_drains_the_relay_and_open_tunnels_finish(tmp_path):
    port = free_port()
    config = tmp_path / "relay.yml"
    write_config(config, port, ["hc1"])
    relay = start_relay_from(config, tmp_path, port, extra=["--grace", "20"])
    url = "ws://127.0.0.1:%d" % port
    target = agents.TcpServer("echo")
    edge = agents.start_edge(tmp_path, url, ["hc1:127.0.0.1:%d" % target.port])
    client_port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:hc1" % client_port], [client_port])
    try:
        open_tunnel = socket.create_connection(("127.0.0.1", client_port), timeout=10)
        open_tunnel.sendall(b"before")
        assert open_tunnel.recv(6) == b"before"
        relay.popen.send_signal(signal.SIGTERM)
        relay.wait_for_log("draining")
        # Listeners are told to go elsewhere (1001) and cannot come back to a draining relay.
        edge.wait_for_log("listener refused by relay", timeout=15)
        assert listen_status(port, "hc1") == 503
        ws = hc.RawWebSocket("127.0.0.1", port, "/$hc/hc1", headers={
            "ServiceBusAuthorization": hc.sas_token("http://127.0.0.1/hc1/", key_name=agents.KEY_NAME, key=agents.KEY)})
        assert ws.status == 503 and "shutting down" in ws.reason
        ws.close()
        # The tunnel that was open keeps working, and the relay waits for it.
        open_tunnel.sendall(b"during drain")
        assert open_tunnel.recv(12) == b"during drain"
        time.sleep(1)
        assert relay.popen.poll() is None, "the relay waits for the open tunnel"
        started = time.time()
        open_tunnel.close()
        relay.popen.wait(timeout=15)
        assert relay.popen.returncode == 0 and time.time() - started < 5, "exits once the last tunnel closed"
        assert "relay stopped" in relay.log() and "open_tunnels=0" in relay.log()
    finally:
        client.stop()
        edge.stop()
        relay.stop()
        target.close()


def test_sighup_reloads_entities_and_keys_and_refuses_a_broken_file(tmp_path):
    port = free_port()
    config = tmp_path / "relay.yml"
    write_config(config, port, ["keep", "gone"])
    relay = start_relay_from(config, tmp_path, port)
    url = "ws://127.0.0.1:%d" % port
    target = agents.TcpServer("echo")
    edge = agents.start_edge(tmp_path, url, ["keep:127.0.0.1:%d" % target.port])
    client_port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:keep" % client_port], [client_port])

    async def gone_listener():
        token = hc.sas_token("http://127.0.0.1/gone/", key_name=agents.KEY_NAME, key=agents.KEY)
        return await connect(hc.listen_uri(url, "gone"), additional_headers={"ServiceBusAuthorization": token},
                             ping_interval=None)

    loop = asyncio.new_event_loop()
    try:
        listener = loop.run_until_complete(gone_listener())
        open_tunnel = socket.create_connection(("127.0.0.1", client_port), timeout=10)
        open_tunnel.sendall(b"one")
        assert open_tunnel.recv(3) == b"one"
        assert listen_status(port, "added") == 404
        # Add an entity, remove another, rotate the key: all on SIGHUP, the process stays.
        new_key = "cm90YXRlZC1rZXktYWZ0ZXItcmVsb2FkLTEyMzQ1Ng=="
        write_config(config, port, ["keep", "added"], key=new_key)
        relay.popen.send_signal(signal.SIGHUP)
        relay.wait_for_log("configuration reloaded")
        assert "hybrid_connections_added=added" in relay.log() and "hybrid_connections_removed=gone" in relay.log()
        assert listen_status(port, "added", key=new_key) == 101
        assert listen_status(port, "added", key=agents.KEY) == 401, "the old key is gone"
        with_close = loop.run_until_complete(listener.wait_closed()) or listener.close_code
        assert listener.close_code == 1001, with_close
        open_tunnel.sendall(b"two")
        assert open_tunnel.recv(3) == b"two", "open tunnels survive a reload"
        # A broken file is refused and the running configuration stays.
        config.write_text("listen: [this is not\n")
        relay.popen.send_signal(signal.SIGHUP)
        relay.wait_for_log("reload failed, the running configuration stays")
        assert relay.popen.poll() is None
        assert listen_status(port, "added", key=new_key) == 101
        open_tunnel.sendall(b"three")
        assert open_tunnel.recv(5) == b"three"
        open_tunnel.close()
    finally:
        loop.close()
        client.stop()
        edge.stop()
        relay.stop()
        target.close()


def test_sighup_renews_the_tls_certificate_without_dropping_tunnels(tmp_path):
    ca = agents.make_ca(tmp_path)
    cert, key = agents.make_server_certificate(tmp_path, ca, "first")
    port = free_port()
    config = tmp_path / "relay.yml"
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    write_config(config, port, ["secure"], extra="tls:\n  certificate: %s\n  key: %s\n" % (live_cert, live_key))
    relay = start_relay_from(config, tmp_path, port)
    url = "wss://127.0.0.1:%d" % port
    target = agents.TcpServer("echo")
    edge = agents.start_edge(tmp_path, url, ["secure:127.0.0.1:%d" % target.port], extra=["--ca-file", str(ca[1])])
    client_port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:secure" % client_port], [client_port],
                                 extra=["--ca-file", str(ca[1])])

    def served_certificate():
        context = ssl.create_default_context(cafile=str(ca[1]))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()

    try:
        first = served_certificate()
        open_tunnel = socket.create_connection(("127.0.0.1", client_port), timeout=10)
        open_tunnel.sendall(b"before")
        assert open_tunnel.recv(6) == b"before"
        renewed, renewed_key = agents.make_server_certificate(tmp_path, ca, "second")
        live_cert.write_bytes(renewed.read_bytes())
        live_key.write_bytes(renewed_key.read_bytes())
        relay.popen.send_signal(signal.SIGHUP)
        relay.wait_for_log("configuration reloaded")
        assert served_certificate() != first, "new connections get the renewed certificate"
        open_tunnel.sendall(b"after")
        assert open_tunnel.recv(5) == b"after", "the tunnel opened before the renewal runs on"
        open_tunnel.close()
        sent, received, count = agents.echo_roundtrip(client_port, b"new tunnel")
        assert count == 10 and sent == received
        # A certificate that does not load is refused; the one in use stays.
        live_cert.write_text("not a certificate")
        relay.popen.send_signal(signal.SIGHUP)
        relay.wait_for_log("reload failed")
        assert served_certificate() != first
    finally:
        client.stop()
        edge.stop()
        relay.stop()
        target.close()


def test_errors_say_what_failed_where_and_what_to_try(tmp_path):
    ca = agents.make_ca(tmp_path)
    cert, key = agents.make_server_certificate(tmp_path, ca, "named", subject_alt="DNS:relay.example")
    relay = agents.start_relay(tmp_path, ["hc1"], tls={"cert": str(cert), "key": str(key)}, name="named")
    url = "wss://127.0.0.1:%d" % relay.port
    untrusting = agents.Process(["edge", "-e", url, "-K", agents.KEY_NAME, "-k", agents.KEY, "-T", "hc1:127.0.0.1:1"],
                                str(tmp_path / "untrusting.log"))
    wrong_host = agents.Process(["edge", "-e", url, "-K", agents.KEY_NAME, "-k", agents.KEY, "-T", "hc1:127.0.0.1:1",
                                 "--ca-file", str(ca[1])], str(tmp_path / "wrong-host.log"))
    try:
        untrusting.wait_for_log("cannot reach relay")
        wrong_host.wait_for_log("cannot reach relay")
        for process, expected in ((untrusting, "pass --ca-file"), (wrong_host, "does not name 127.0.0.1")):
            line = next(l for l in process.log().splitlines() if "cannot reach relay" in l)
            assert expected in line and "127.0.0.1:%d" % relay.port in line, line
            assert "handshake.cc" not in line and "BoringSSL" not in line, line
        # A port already in use: the address in the error, a non-zero exit, no crash.
        result = subprocess.run([agents.binary(), "client", "-e", url, "-K", agents.KEY_NAME, "-k", agents.KEY, "-L",
                                 "127.0.0.1:%d:hc1" % relay.port], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert "cannot listen on 127.0.0.1:%d for relay 'hc1': the address is in use" % relay.port in result.stderr
        assert "crashed" not in result.stderr and "Fatal error" not in result.stderr, result.stderr[-2000:]
    finally:
        untrusting.stop()
        wrong_host.stop()
        relay.stop()


def test_a_refused_dial_is_a_warning_with_a_whole_reason(tmp_path):
    relay = agents.start_relay(tmp_path, ["hc1"])
    url = "ws://127.0.0.1:%d" % relay.port
    closed_port = free_port()
    edge = agents.start_edge(tmp_path, url, ["hc1:127.0.0.1:%d" % closed_port])
    client_port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:hc1" % client_port], [client_port])
    try:
        sock = socket.create_connection(("127.0.0.1", client_port), timeout=10)
        assert sock.recv(10) == b""
        sock.close()
        client.wait_for_log("tunnel closed")
        line = next(l for l in client.log().splitlines() if "tunnel closed" in l)
        assert " warning " in line, line
        assert "dial 127.0.0.1:%d failed: connection refused)" % closed_port in line, line
    finally:
        client.stop()
        edge.stop()
        relay.stop()


def readyz(port):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_runtime_information_answers_as_azure_does(tmp_path):
    relay = agents.start_relay(tmp_path, ["hc1"])
    try:
        token = hc.sas_token("http://127.0.0.1/hc1", key_name=agents.KEY_NAME, key=agents.KEY)
        # The .NET SDK's GetRuntimeInformationAsync: GET with api-version, X-PROCESS-AT and the token.
        status, _, headers, body = hc.http_request("127.0.0.1", relay.port, "GET", "/hc1?api-version=2016-07",
                                                   headers={"X-PROCESS-AT": "ServiceBus", "Authorization": token})
        assert status == 200 and "type=entry" in headers["content-type"], (status, headers)
        text = body.decode()
        assert "<HybridConnectionDescription" in text and "<ListenerCount>0</ListenerCount>" in text
        assert text.index("<RequiresClientAuthorization>") < text.index("<ListenerCount>"), "data-contract order"
        status, _, headers, body = hc.http_request("127.0.0.1", relay.port, "GET", "/nothere?api-version=2016-07",
                                                   headers={"X-PROCESS-AT": "ServiceBus", "Authorization": token})
        assert status == 200 and "type=feed" in headers["content-type"] and b"<feed" in body
        status, _, _, _ = hc.http_request("127.0.0.1", relay.port, "GET", "/hc1?api-version=2016-07",
                                          headers={"X-PROCESS-AT": "ServiceBus"})
        assert status == 401
    finally:
        relay.stop()


def test_a_client_probes_its_relay_at_start_and_readyz_says_why(tmp_path):
    relay = agents.start_relay(tmp_path, ["hc1"])
    url = "ws://127.0.0.1:%d" % relay.port
    clients = []
    try:
        cases = {"good": ("hc1", agents.KEY), "missing": ("nosuch", agents.KEY),
                 "badkey": ("hc1", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")}
        for name, (entity, key) in cases.items():
            port, metrics = free_port(), free_port()
            process = agents.Process(["client", "-e", url, "-K", agents.KEY_NAME, "-k", key, "-L",
                                      "127.0.0.1:%d:%s" % (port, entity), "--metrics", "127.0.0.1:%d" % metrics],
                                     str(tmp_path / ("%s.log" % name)))
            process.metrics_port = metrics
            clients.append((name, process))
        for name, process in clients:
            process.wait_for_log("relay probed")
        results = {name: readyz(process.metrics_port) for name, process in clients}
        # The relay answers for hc1, but no edge listens on it yet: a balancer should not send users here.
        assert results["good"][0] == 503 and "no listener online" in results["good"][1], results
        assert results["missing"][0] == 503 and "no such hybrid connection" in results["missing"][1], results
        assert results["badkey"][0] == 503 and "refused the credentials" in results["badkey"][1], results
        missing_log = dict(clients)["missing"].log()
        assert any(" warning " in l and "relay probed" in l for l in missing_log.splitlines())
        # An edge registers: the good client is ready at its next ask (every 10 s), and not again once it leaves.
        target = agents.TcpServer("echo")
        edge = agents.start_edge(tmp_path, url, ["hc1:127.0.0.1:%d" % target.port])
        good = dict(clients)["good"]
        agents.wait_until(lambda: readyz(good.metrics_port)[0] == 200, timeout=25, what="ready with a listener")
        edge.stop()
        target.close()
        agents.wait_until(lambda: readyz(good.metrics_port)[0] == 503, timeout=25, what="not ready without one")
    finally:
        for _, process in clients:
            process.stop()
        relay.stop()


def test_check_online_tries_the_relay_with_the_configured_credentials(tmp_path):
    relay = agents.start_relay(tmp_path, ["hc1"])
    url = "ws://127.0.0.1:%d" % relay.port
    try:
        def config(entity, key=agents.KEY):
            path = tmp_path / ("%s-%d.yml" % (entity, time.time_ns()))
            path.write_text("AzureRelayEndpoint: %s\nAzureRelaySharedAccessKeyName: %s\nAzureRelaySharedAccessKey: %s\n"
                            "LocalForward:\n  - RelayName: %s\n    BindPort: 5000\n"
                            "RemoteForward:\n  - RelayName: %s\n    HostPort: 5432\n"
                            % (url, agents.KEY_NAME, key, entity, entity))
            return subprocess.run([agents.binary(), "check", "--online", "-f", str(path)], capture_output=True,
                                  text=True, timeout=60)
        good = config("hc1")
        assert good.returncode == 0, good.stdout + good.stderr
        assert "LocalForward hc1 at ws://127.0.0.1:%d: the hybrid connection exists" % relay.port in good.stdout
        assert "RemoteForward hc1 at ws://127.0.0.1:%d: listening works" % relay.port in good.stdout
        missing = config("nosuch")
        assert missing.returncode == 2 and "no such hybrid connection" in missing.stdout, missing.stdout
        bad = config("hc1", key="d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")
        assert bad.returncode == 2 and "refused the credentials" in bad.stdout, bad.stdout
    finally:
        relay.stop()


def test_exit_on_forward_failure_stops_an_edge_that_cannot_start(tmp_path):
    relay = agents.start_relay(tmp_path, ["hc1"])
    url = "ws://127.0.0.1:%d" % relay.port

    def edge(key, exit_on_failure):
        path = tmp_path / ("edge-%d.yml" % time.time_ns())
        path.write_text("AzureRelayEndpoint: %s\nAzureRelaySharedAccessKeyName: %s\nAzureRelaySharedAccessKey: %s\n"
                        "%sRemoteForward:\n  - RelayName: hc1\n    HostPort: 5432\n"
                        % (url, agents.KEY_NAME, key, "ExitOnForwardFailure: true\n" if exit_on_failure else ""))
        return agents.Process(["edge", "-f", str(path)], str(tmp_path / ("edge-%d.log" % time.time_ns())))

    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    stopping, retrying, working = edge(wrong, True), edge(wrong, False), edge(agents.KEY, True)
    try:
        stopping.popen.wait(timeout=20)
        assert stopping.popen.returncode == 1
        assert "a forwarder cannot start; stopping (ExitOnForwardFailure)" in stopping.log()
        assert "the relay refused the listener: 401" in stopping.log()
        working.wait_for_log("listener online")
        time.sleep(1.5)
        assert retrying.popen.poll() is None and working.popen.poll() is None, "without it the edge keeps trying"
        assert retrying.log().count("listener refused by relay") >= 2
    finally:
        for process in (stopping, retrying, working):
            process.stop()
        relay.stop()


def test_version():
    result = subprocess.run([agents.binary(), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip().count(".") == 2, result.stdout
