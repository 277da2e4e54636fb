"""OTLP export: the three processes of a tunnel send spans, logs and metrics to an OTLP/HTTP receiver that
decodes them with the official protobuf definitions (fake_otlp.py). No OpenTelemetry Collector installs from
Debian or PyPI on this machine, so the receiver is the test's own, strict about the OTLP/HTTP contract."""
import os
import signal
import time

from agents import TcpServer, echo_roundtrip, metric_value, start_client, start_edge, start_relay, stop_all
from conftest import free_port
from fake_azure import FakeAzure
from fake_otlp import FakeOTLP, attributes

PAYLOAD = 300_000


def otlp_environment(monkeypatch, receiver, **extra):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1000")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,team=edge%20ops")
    monkeypatch.setenv("HYRELAY_STATE_DIR", str(receiver.state))
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


def test_one_trace_across_three_processes_in_an_otlp_backend(tmp_path, monkeypatch):
    receiver = FakeOTLP()
    receiver.state = tmp_path / "state"
    try:
        otlp_environment(monkeypatch, receiver, OTEL_EXPORTER_OTLP_HEADERS="x-tenant=blue,Authorization=Bearer%20t0k")
        relay = start_relay(tmp_path, ["hc1"])
        url = "ws://127.0.0.1:%d" % relay.port
        target = TcpServer("echo")
        edge = start_edge(tmp_path, url, ["hc1:127.0.0.1:%d" % target.port])
        port = free_port()
        client = start_client(tmp_path, url, ["127.0.0.1:%d:hc1" % port], [port])
        try:
            payload = os.urandom(PAYLOAD)
            sent, received, count = echo_roundtrip(port, payload)
            assert received == sent and count == PAYLOAD
            time.sleep(0.5)
        finally:
            stop_all(client, edge, relay, sig=signal.SIGTERM)
        for process in (client, edge, relay):
            assert process.popen.returncode == 0, process.log()

        spans = receiver.spans()
        services = {resource["service.name"] for resource, _, _ in spans}
        assert services == {"hyrelay-relay", "hyrelay-edge", "hyrelay-client"}, services
        for resource, scope, _ in spans:
            assert resource["deployment.environment"] == "test" and resource["team"] == "edge ops"
            assert resource["service.instance.id"] and resource["service.version"] and resource["host.name"]
            assert scope.name == "hyrelay"
        by_name = {span.name: (resource, span) for resource, _, span in spans}
        root = by_name["client.accept"][1]
        trace = [(resource, span) for resource, _, span in spans if span.trace_id == root.trace_id]
        names = {span.name for _, span in trace}
        assert {"client.accept", "client.connect", "client.bridge", "relay.rendezvous", "relay.bridge",
                "edge.dial", "edge.bridge"} <= names, names
        ids = {span.span_id for _, span in trace}
        for resource, span in trace:
            assert len(span.trace_id) == 16 and len(span.span_id) == 8
            assert span.end_time_unix_nano >= span.start_time_unix_nano > 1_700_000_000 * 10**9
            if span.name == "client.accept":
                assert span.parent_span_id == b""
            else:
                assert span.parent_span_id in ids, "%s's parent is in the trace" % span.name
        spans_by = {span.name: span for _, span in trace}
        assert spans_by["relay.rendezvous"].parent_span_id == spans_by["client.connect"].span_id
        assert spans_by["edge.dial"].parent_span_id == spans_by["relay.rendezvous"].span_id
        bridge = attributes(spans_by["client.bridge"].attributes)
        assert bridge["bytes_up"] == PAYLOAD and bridge["bytes_down"] == PAYLOAD
        dial = attributes(spans_by["edge.dial"].attributes)
        assert dial["server.address"] == "127.0.0.1" and dial["server.port"] == target.port
        assert spans_by["client.bridge"].kind in (1, 2, 3) and spans_by["client.bridge"].status.code in (0, 1)

        # Log records of the tunnel carry its trace id; severity is mapped.
        logs = receiver.logs()
        traced = [record for _, record in logs if record.trace_id == root.trace_id]
        assert traced, "some tunnel log record carries the trace id"
        assert all(record.severity_number >= 9 for _, record in logs)
        assert {resource["service.name"] for resource, _ in logs} >= {"hyrelay-relay", "hyrelay-edge"}

        # Metrics: the byte counter as a monotonic cumulative sum, per role.
        byte_points = {}
        for resource, metric in receiver.metrics():
            if metric.name == "hyrelay_transferred_bytes":
                assert metric.WhichOneof("data") == "sum" and metric.sum.is_monotonic
                assert metric.sum.aggregation_temporality == 2 and metric.unit == "By"
                for point in metric.sum.data_points:
                    labels = attributes(point.attributes)
                    value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
                    key = (resource["service.name"], labels["direction"])
                    byte_points[key] = max(byte_points.get(key, 0), value)
            if metric.name == "hyrelay_rendezvous_duration_seconds":
                assert metric.WhichOneof("data") == "histogram" and metric.unit == "s"
                point = metric.histogram.data_points[0]
                assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
                assert sum(point.bucket_counts) == point.count >= 1
        assert byte_points[("hyrelay-client", "up")] >= PAYLOAD and byte_points[("hyrelay-edge", "down")] >= PAYLOAD
        # Headers from OTEL_EXPORTER_OTLP_HEADERS, percent-decoded.
        assert all(h.get("x-tenant") == "blue" and h.get("Authorization") == "Bearer t0k" for h in receiver.headers)
        assert all(h.get("Content-Encoding") == "gzip" for h in receiver.headers)
        assert receiver.violations == []
    finally:
        receiver.close()


def test_a_stalled_otlp_endpoint_does_not_slow_the_azure_sink(tmp_path, monkeypatch):
    stalled = FakeOTLP(stall=True)
    stalled.state = tmp_path / "state"
    azure = FakeAzure()
    try:
        otlp_environment(monkeypatch, stalled, OTEL_EXPORTER_OTLP_TIMEOUT="1500")
        for key, value in azure.env("secret").items():
            monkeypatch.setenv(key, value)
        metrics_port = free_port()
        relay = start_relay(tmp_path, ["hc1"], extra=azure.flags() + [
            "--export-interval", "0.2", "--metrics", "127.0.0.1:%d" % metrics_port])
        stalled.relay = relay
        # The Azure sink delivers the start-up log within a second or two although every OTLP request hangs.
        started = time.time()
        deadline = started + 10
        while time.time() < deadline:
            if any(row["Message"] == "relay listening" for row in azure.all_rows("Custom-HyRelayLogs")):
                break
            time.sleep(0.05)
        waited = time.time() - started
        assert waited < 3, "Azure delivery waited %.1fs behind the stalled OTLP endpoint" % waited
        # The OTLP sink times its requests out (1.5 s) and counts them for retry.
        deadline = time.time() + 15
        while metric_value(metrics_port, "hyrelay_export_attempts_total", sink="otlp", status="timeout") < 2:
            assert time.time() < deadline, "OTLP timeouts not counted"
            time.sleep(0.2)
        assert metric_value(metrics_port, "hyrelay_export_dropped_records_total", sink="logs_ingestion") == 0
        relay.stop(signal.SIGTERM)
        assert azure.violations == []
    finally:
        if hasattr(stalled, "relay"):
            stalled.relay.stop()
        stalled.close()
        azure.close()


def test_otlp_settings_that_cannot_work_stop_the_process_with_the_reason(tmp_path, monkeypatch):
    import subprocess
    from agents import binary
    for variable, value, expected in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "use http/protobuf"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip or none"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue", "is not key=value"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "positive number of milliseconds"),
    ]:
        env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1", HYRELAY_STATE_DIR=str(tmp_path))
        env[variable] = value
        result = subprocess.run([binary(), "relay", "--listen", "127.0.0.1:0", "--hybrid-connection", "hc1",
                                 "--sas-key-name", "k", "--sas-key", "x"], env=env, capture_output=True, text=True,
                                timeout=20)
        assert result.returncode != 0 and expected in result.stderr, (variable, result.stderr)
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT="ftp://collector", HYRELAY_STATE_DIR=str(tmp_path))
    result = subprocess.run([binary(), "relay", "--listen", "127.0.0.1:0", "--hybrid-connection", "hc1"], env=env,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode != 0 and "is not an http:// or https:// URL" in result.stderr
