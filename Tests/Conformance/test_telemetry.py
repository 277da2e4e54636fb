"""Telemetry of real processes: /metrics of relay, edge and client after real traffic, checked by
promtool and scraped by a real Prometheus whose query API must agree with the bytes and tunnels moved."""
import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest

import agents
from conftest import free_port

TUNNELS = 12
PAYLOAD = 300_000


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def parse_metrics(text):
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def start_prometheus(stack, tmp_path, *flags):
    return agents.start_prometheus(list(stack["ports"].values()), tmp_path, *flags)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("telemetry")
    ports = {role: free_port() for role in ("relay", "edge", "client")}
    relay_port = free_port()
    relay = agents.Process(
        ["relay", "--listen", "127.0.0.1:%d" % relay_port, "--hybrid-connection", "tele", "--sas-key-name",
         agents.KEY_NAME, "--sas-key", agents.KEY, "--metrics", "127.0.0.1:%d" % ports["relay"], "--log-format", "json"],
        str(directory / "relay.log"))
    relay.wait_for_log("relay listening")
    url = "ws://127.0.0.1:%d" % relay_port
    target = agents.TcpServer("echo")
    closed = free_port()
    edge = agents.start_edge(directory, url, ["tele:ok/127.0.0.1:%d;down/127.0.0.1:%d" % (target.port, closed)],
                             extra=["--metrics", "127.0.0.1:%d" % ports["edge"], "--log-format", "json"])
    client_port, refused_port = free_port(), free_port()
    client = agents.start_client(directory, url, ["127.0.0.1:%d/ok;127.0.0.1:%d/down:tele" % (client_port, refused_port)],
                                 [client_port, refused_port],
                                 extra=["--metrics", "127.0.0.1:%d" % ports["client"], "--log-format", "json"])
    for _ in range(TUNNELS):
        sent, received, count = agents.echo_roundtrip(client_port, os.urandom(PAYLOAD))
        assert count == PAYLOAD and sent == received
    import socket
    sock = socket.create_connection(("127.0.0.1", refused_port), timeout=10)
    assert sock.recv(10) == b""
    sock.close()
    time.sleep(0.5)
    yield {"ports": ports, "relay": relay, "edge": edge, "client": client, "directory": directory}
    for process in (client, edge, relay):
        process.stop()
    target.close()


def test_metrics_of_every_role_pass_promtool(stack):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"
    for role, port in stack["ports"].items():
        status, text = get("http://127.0.0.1:%d/metrics" % port)
        assert status == 200
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, "%s: %s%s" % (role, check.stdout, check.stderr)
        assert "hyrelay_" in text


def test_counters_match_the_traffic(stack):
    values = {role: parse_metrics(get("http://127.0.0.1:%d/metrics" % port)[1]) for role, port in stack["ports"].items()}
    client, edge, relay = values["client"], values["edge"], values["relay"]
    moved = TUNNELS * PAYLOAD
    assert client['hyrelay_transferred_bytes_total{role="client",direction="up"}'] == moved
    assert client['hyrelay_transferred_bytes_total{role="client",direction="down"}'] == moved
    assert edge['hyrelay_transferred_bytes_total{role="edge",direction="up"}'] == moved
    assert edge['hyrelay_transferred_bytes_total{role="edge",direction="down"}'] == moved
    # The relay is protocol-blind: it also carries each preamble (4 + len("ok") bytes up, 3 down; the
    # refused tunnel sent 4 + len("down") and got no answer).
    assert relay['hyrelay_transferred_bytes_total{role="relay",direction="up"}'] == moved + TUNNELS * 6 + 8
    assert relay['hyrelay_transferred_bytes_total{role="relay",direction="down"}'] == moved + TUNNELS * 3
    assert relay['hyrelay_rendezvous_total{entity="tele",outcome="accepted",status="101"}'] == TUNNELS + 1
    assert relay['hyrelay_rendezvous_duration_seconds_count{entity="tele"}'] == TUNNELS + 1
    assert edge['hyrelay_dials_total{outcome="connected"}'] == TUNNELS
    assert edge['hyrelay_dials_total{outcome="failed"}'] == 1, "the refused dial is counted"
    assert edge['hyrelay_tunnels_closed_total{role="edge",cause="dial_failed"}'] == 1
    assert client['hyrelay_tunnels_closed_total{role="client",cause="refused_by_peer"}'] == 1
    assert client['hyrelay_connection_duration_seconds_count{role="client"}'] == TUNNELS + 1
    assert client['hyrelay_client_connect_duration_seconds_count'] == TUNNELS + 1
    assert relay['hyrelay_listeners{role="relay",entity="tele"}'] == 1
    assert edge['hyrelay_listeners{role="edge",entity="tele"}'] == 1
    assert client['hyrelay_active_tunnels{role="client"}'] == 0


def test_health_and_readiness(stack):
    for port in stack["ports"].values():
        assert get("http://127.0.0.1:%d/healthz" % port) == (200, "ok\n")
        status, text = get("http://127.0.0.1:%d/readyz" % port)
        assert status == 200, text


def test_json_logs_carry_fields_and_no_secrets(stack):
    for role in ("relay", "edge", "client"):
        text = stack[role].log()
        assert agents.KEY not in text, "the key leaked into the %s log" % role
        assert "sig=" not in text
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert lines, role
        for line in lines:
            for field in ("time", "level", "role", "message"):
                assert field in line
            assert line["role"] == role
    closed = [json.loads(l) for l in stack["client"].log().splitlines() if '"tunnel closed"' in l]
    assert len(closed) == TUNNELS + 1 and all("bytes_up" in line and "cause" in line for line in closed)


def test_real_prometheus_scrapes_all_roles(stack, tmp_path):
    process, port = start_prometheus(stack, tmp_path)
    try:
        def query(expression):
            url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (port, urllib.request.quote(expression))
            body = json.loads(get(url)[1])
            assert body["status"] == "success", body
            return body["data"]["result"]

        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if len(query("up == 1")) == 3:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("Prometheus did not scrape all three roles: " + open(tmp_path / "prometheus.log").read())
        moved = TUNNELS * PAYLOAD
        up = query('sum(hyrelay_transferred_bytes_total{role="client",direction="up"})')
        assert float(up[0]["value"][1]) == moved
        down = query('sum(hyrelay_transferred_bytes_total{role="edge",direction="down"})')
        assert float(down[0]["value"][1]) == moved
        rendezvous = query('sum(hyrelay_rendezvous_duration_seconds_count)')
        assert float(rendezvous[0]["value"][1]) == TUNNELS + 1
        p99 = query('histogram_quantile(0.99, sum by (le) (hyrelay_rendezvous_duration_seconds_bucket))')
        assert 0 < float(p99[0]["value"][1]) <= 30
    finally:
        process.terminate()
        process.wait(timeout=20)


def spans_of(process):
    return [json.loads(line) for line in process.log().splitlines()
            if line.startswith("{") and '"message":"span"' in line]


def test_one_trace_per_tunnel_across_three_processes(stack):
    spans = spans_of(stack["client"]) + spans_of(stack["relay"]) + spans_of(stack["edge"])
    by_trace = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], {})[span["span_name"]] = span
    roots = [span for span in spans if span["span_name"] == "client.accept"]
    assert len(roots) == TUNNELS + 1
    complete = 0
    for root in roots:
        trace = by_trace[root["trace_id"]]
        assert "parent_span_id" not in root, "client.accept is the root"
        assert trace["client.connect"]["parent_span_id"] == root["span_id"]
        assert trace["client.bridge"]["parent_span_id"] == root["span_id"]
        rendezvous = trace["relay.rendezvous"]
        assert rendezvous["parent_span_id"] == trace["client.connect"]["span_id"], "the relay continues the client's trace"
        assert rendezvous["outcome"] == "accepted" and rendezvous["entity"] == "tele"
        assert trace["relay.bridge"]["parent_span_id"] == rendezvous["span_id"]
        assert trace["edge.dial"]["parent_span_id"] == rendezvous["span_id"], "the edge continues the relay's trace"
        assert trace["edge.bridge"]["parent_span_id"] == rendezvous["span_id"]
        if trace["edge.dial"]["outcome"] == "connected":
            complete += 1
            assert trace["client.bridge"]["bytes_up"] == str(PAYLOAD)
            assert trace["edge.bridge"]["bytes_down"] == str(PAYLOAD)
            assert trace["relay.bridge"]["bytes_up"] == str(PAYLOAD + 6)
        else:
            dial = trace["edge.dial"]
            assert dial["status"] == "error" and dial["outcome"] == "failed" and "refused" in dial["error"].lower()
            assert trace["client.bridge"]["status"] == "error"
    assert complete == TUNNELS


def test_openmetrics_exemplars_reach_prometheus(stack, tmp_path):
    request = urllib.request.Request("http://127.0.0.1:%d/metrics" % stack["ports"]["relay"],
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = response.read().decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE hyrelay_rendezvous counter" in text
    exemplar_lines = [line for line in text.splitlines() if "_bucket{" in line and ' # {trace_id="' in line]
    assert exemplar_lines, "latency buckets carry trace-id exemplars"
    relay_traces = {span["trace_id"] for span in spans_of(stack["relay"]) if span["span_name"] == "relay.rendezvous"}
    exemplar_traces = {line.split('trace_id="')[1].split('"')[0] for line in exemplar_lines}
    assert exemplar_traces <= relay_traces, "exemplars name real traces"
    # promtool's linter reads only the 0.0.4 text format (checked above); Prometheus itself parses this.

    process, port = start_prometheus(stack, tmp_path, "--enable-feature=exemplar-storage")
    try:
        deadline = time.time() + 30
        found = []
        while time.time() < deadline and not found:
            time.sleep(1)
            now = time.time()
            url = "http://127.0.0.1:%d/api/v1/query_exemplars?query=%s&start=%f&end=%f" % (
                port, urllib.request.quote("hyrelay_rendezvous_duration_seconds_bucket"), now - 600, now + 60)
            try:
                body = json.loads(get(url)[1])
            except OSError:
                continue
            found = [e for series in body.get("data") or [] for e in series["exemplars"]]
        assert found, "Prometheus stored no exemplars: " + open(tmp_path / "prometheus.log").read()[-2000:]
        assert {e["labels"]["trace_id"] for e in found} <= relay_traces
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_http_mode_requests_have_a_span_metrics_and_carry_the_trace_on(tmp_path):
    """An HTTP-mode request through the relay: a `relay.http` span continuing the caller's trace, whose
    context the listener receives in `traceparent`; requests counted by status class with their duration;
    body bytes in the relay's byte counters. A request nobody answers is a 5xx."""
    import asyncio
    import hc
    from websockets.asyncio.client import connect

    metrics_port, relay_port = free_port(), free_port()
    relay = agents.Process(
        ["relay", "--listen", "127.0.0.1:%d" % relay_port, "--hybrid-connection", "web", "--sas-key-name",
         agents.KEY_NAME, "--sas-key", agents.KEY, "--metrics", "127.0.0.1:%d" % metrics_port, "--log-format", "json",
         "--config", str(_http_limits(tmp_path))],
        str(tmp_path / "relay.log"))
    relay.wait_for_log("relay listening")
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {"ServiceBusAuthorization": hc.sas_token(hc.dotnet_audience("127.0.0.1", "web"), agents.KEY_NAME,
                                                       agents.KEY), "traceparent": caller}

    async def run():
        control = await connect(hc.listen_uri("ws://127.0.0.1:%d" % relay_port, "web"),
                                additional_headers={"ServiceBusAuthorization": headers["ServiceBusAuthorization"]})
        loop = asyncio.get_running_loop()
        answered = loop.run_in_executor(None, lambda: hc.http_request(
            "127.0.0.1", relay_port, "POST", "/web/api", headers=headers, body=b"q" * 1000))
        kind, request = hc.parse_control(await asyncio.wait_for(control.recv(), 10))
        assert kind == "request" and await control.recv() == b"q" * 1000
        forwarded = {k.lower(): v for k, v in request["requestHeaders"].items()}
        await control.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 201, "body": True}}))
        await control.send(b"r" * 5000)
        status, _, _, body = await answered
        assert (status, body) == (201, b"r" * 5000)
        # Nobody answers this one: the relay's 504 after httpResponseTimeoutSeconds.
        unanswered = await loop.run_in_executor(None, lambda: hc.http_request(
            "127.0.0.1", relay_port, "GET", "/web/slow", headers=headers))
        await control.close()
        return forwarded, unanswered[0]

    try:
        forwarded, late = asyncio.run(run())
        assert late == 504
        trace_id = caller.split("-")[1]
        version, forwarded_trace, forwarded_parent, _ = forwarded["traceparent"].split("-")
        assert forwarded_trace == trace_id and forwarded_parent != caller.split("-")[2]
        values = parse_metrics(get("http://127.0.0.1:%d/metrics" % metrics_port)[1])
        assert values['hyrelay_http_requests_total{entity="web",code="2xx"}'] == 1
        assert values['hyrelay_http_requests_total{entity="web",code="5xx"}'] == 1
        assert values['hyrelay_http_request_duration_seconds_count{entity="web"}'] == 2
        assert values['hyrelay_transferred_bytes_total{role="relay",direction="up"}'] == 1000
        assert values['hyrelay_transferred_bytes_total{role="relay",direction="down"}'] == 5000
        spans = [json.loads(line) for line in relay.log().splitlines() if '"relay.http"' in line]
        ok = next(s for s in spans if s.get("http.response.status_code") == "201")
        assert ok["trace_id"] == trace_id and ok["span_id"] == forwarded_parent
        assert ok["bytes_up"] == "1000" and ok["bytes_down"] == "5000" and ok["entity"] == "web"
    finally:
        relay.stop()


def _http_limits(directory):
    path = directory / "limits.yaml"
    path.write_text("limits:\n  httpResponseTimeoutSeconds: 1\n")
    return path
