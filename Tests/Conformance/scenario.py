"""Real tunnels with injected faults: relay, edge and two clients export to a fake Logs Ingestion endpoint
and are scraped by a real Prometheus evaluating dashboards/prometheus-rules.yml. The saved queries,
the workbook, the Grafana dashboard and the rules are all checked against what this produced."""
import json
import os
import re
import signal
import socket
import time
import urllib.parse
import urllib.request

import agents
from conftest import ROOT, free_port
from fake_azure import DCR_ID, FakeAzure

# What is injected, and how often. The tests expect exactly these counts back.
COUNTS = {"ok": 6, "refused": 3, "no_listener": 2, "bad_token": 2, "slow": 2, "flaps": 1}
SLOW_SECONDS = 1.2
RULES = os.path.join(ROOT, "dashboards", "prometheus-rules.yml")
RUNBOOKS = "https://runbooks.example.test/hyrelay"


def export_flags(fake, metrics_port, instance):
    return ["--logs-ingestion-endpoint", fake.url, "--dcr-immutable-id", DCR_ID, "--export-interval", "0.3",
            "--export-metrics-interval", "1", "--metrics", "127.0.0.1:%d" % metrics_port, "--instance", instance,
            "--log-format", "json"]


def tunnel(port, payload=b"x" * 10_000):
    """One tunnel: send, half-close, read the answer. Returns the bytes received (none when the tunnel is
    refused: the client then closes, or resets, the connection)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    received = b""
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        # A refused tunnel: the client may close while the payload is still being written.
        pass
    finally:
        sock.close()
    return received


class FaultScenario:
    def __init__(self, directory):
        self.directory = directory
        self.fake = FakeAzure()
        self.processes = []
        self.servers = []
        env_before = dict(os.environ)
        os.environ.update(self.fake.env("secret"))
        try:
            self._run()
        finally:
            os.environ.clear()
            os.environ.update(env_before)

    def _run(self):
        d = self.directory
        self.metrics_ports = {name: free_port() for name in ("relay", "edge", "client", "intruder", "lost")}
        relay_port = free_port()
        relay = agents.Process(
            ["relay", "--listen", "127.0.0.1:%d" % relay_port, "--hybrid-connection", "hc1", "--hybrid-connection",
             "hc2", "--sas-key-name", agents.KEY_NAME, "--sas-key", agents.KEY, "--ping-interval", "1"]
            + export_flags(self.fake, self.metrics_ports["relay"], "relay-1"), str(d / "relay.log"))
        relay.wait_for_log("relay listening")
        self.processes.append(relay)
        url = "ws://127.0.0.1:%d" % relay_port
        # Services answer a tenth of what they get: every hop must agree on which way the bytes went.
        echo, slow = agents.TcpServer("shrink"), agents.TcpServer("shrink", delay=SLOW_SECONDS)
        self.servers += [echo, slow]
        self.closed_target = "127.0.0.1:%d" % free_port()
        self.slow_target = "127.0.0.1:%d" % slow.port
        edge_spec = "hc1:ok/127.0.0.1:%d;bad/%s;slow/%s" % (echo.port, self.closed_target, self.slow_target)
        edge_flags = export_flags(self.fake, self.metrics_ports["edge"], "edge-1")
        edge = agents.start_edge(d, url, [edge_spec], extra=edge_flags)
        # An edge that never registers (its relay address answers nothing), exporting nothing: only its
        # /metrics tells, and the listener-down alert must see it.
        self.processes.append(agents.Process(
            ["edge", "-e", "ws://127.0.0.1:%d" % free_port(), "-K", agents.KEY_NAME, "-k", agents.KEY, "-T",
             "hc1:127.0.0.1:%d" % echo.port, "--no-export", "--metrics", "127.0.0.1:%d" % self.metrics_ports["lost"]],
            str(d / "lost-edge.log")))
        self.prometheus, self.prometheus_port = agents.start_prometheus(
            list(self.metrics_ports.values()), d, rule_files=[RULES], external_labels={"runbook_base": RUNBOOKS})
        ports = {name: free_port() for name in ("ok", "bad", "slow", "none", "intruder")}
        client = agents.start_client(
            d, url, ["127.0.0.1:%d/ok;127.0.0.1:%d/bad;127.0.0.1:%d/slow:hc1" % (ports["ok"], ports["bad"], ports["slow"]),
                     "127.0.0.1:%d:hc2" % ports["none"]],
            [ports["ok"], ports["bad"], ports["slow"], ports["none"]],
            extra=export_flags(self.fake, self.metrics_ports["client"], "client-1"))
        self.processes.append(client)
        intruder = agents.Process(
            ["client", "-e", url, "-K", agents.KEY_NAME, "-k", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=", "-L",
             "127.0.0.1:%d:hc1" % ports["intruder"]] + export_flags(self.fake, self.metrics_ports["intruder"], "intruder-1"),
            str(d / "intruder.log"))
        intruder.wait_for_log("client port bound")
        self.processes.append(intruder)
        self._wait_for_scrapes()
        self.started = time.time()
        # A listener flap first: the edge goes away and comes back; every tunnel below uses the new one.
        edge.stop()
        time.sleep(1.5)
        edge = agents.start_edge(d, url, [edge_spec], extra=edge_flags)
        self.processes.insert(1, edge)
        self._wait_for_scrapes()
        for _ in range(COUNTS["ok"]):
            assert len(tunnel(ports["ok"])) == 1_000
        for _ in range(COUNTS["refused"]):
            assert tunnel(ports["bad"]) == b""
        for _ in range(COUNTS["no_listener"]):
            assert tunnel(ports["none"]) == b""
        for _ in range(COUNTS["bad_token"]):
            assert tunnel(ports["intruder"]) == b""
        for _ in range(COUNTS["slow"]):
            assert len(tunnel(ports["slow"])) == 1_000
        # Let Prometheus scrape and evaluate the rules over the faults.
        time.sleep(6)
        self.prometheus_results = self._query_prometheus()
        self.ended = time.time()
        for process in reversed(self.processes):
            process.stop()
        self.prometheus.send_signal(signal.SIGTERM)
        self.prometheus.wait(timeout=30)
        for server in self.servers:
            server.close()
        self.fake.close()

    def _wait_for_scrapes(self, timeout=60):
        """Until Prometheus has scraped every role at least twice (so counters have a baseline)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                result = self.prometheus_api("query", query="count_over_time(up[1m])")["result"]
                if len(result) == len(self.metrics_ports) and all(float(r["value"][1]) >= 2 for r in result):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("Prometheus did not scrape every role: " + (self.directory / "prometheus.log").read_text())

    def prometheus_api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s?%s" % (self.prometheus_port, path, urllib.parse.urlencode(params))
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def _query_prometheus(self):
        """Every Grafana panel expression and the rule states, while the processes still run."""
        from dashboard_checks import grafana_expressions
        results = {"grafana": {}, "rules": self.prometheus_api("rules"), "alerts": self.prometheus_api("alerts")}
        for title, expr in grafana_expressions():
            results["grafana"][(title, expr)] = self.prometheus_api("query", query=expr)["result"]
        # Each rule's expression, an alert's without its threshold: what it measures must have data.
        results["rule_data"] = {}
        for group in results["rules"]["groups"]:
            for rule in group["rules"]:
                expr = re.sub(r"\s*([<>]=?|==)\s*[0-9.]+\s*$", "", rule["query"])
                results["rule_data"][rule["name"]] = self.prometheus_api("query", query=expr)["result"]
        return results
