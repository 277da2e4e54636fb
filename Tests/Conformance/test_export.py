"""The exporter against fake Entra / IMDS / Logs Ingestion / Application Insights endpoints (fake_azure.py).

Each test drives the real hyrelay binary: `export replay` for bulk and fault scenarios, and running roles for
live export. The fakes enforce the documented contract; `violations` must stay empty.
"""
import gzip
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from agents import binary, metric_value, start_client, start_edge, start_relay, wait_port, wait_until
from conftest import free_port
from fake_azure import IKEY, FakeAzure

STREAMS = {"spans": "Custom-HyRelaySpans", "logs": "Custom-HyRelayLogs", "metrics": "Custom-HyRelayMetrics"}
# One asymmetric transfer: bytes toward the service, and back.
UP, DOWN = 100_000, 10_000


@pytest.fixture
def fake():
    server = FakeAzure()
    yield server
    server.close()


def log_row(index, message=None):
    return {"TimeGenerated": "2026-11-29T12:00:00.000Z", "Role": "test", "Instance": "replay",
            "Level": "info", "Logger": "hyrelay.test", "Message": message or "record-%d" % index,
            "TraceId": "", "SpanId": "", "Attributes": {"n": str(index)}}


def write_file(path, rows):
    with gzip.open(path, "wb") as f:
        for table, row in rows:
            f.write(json.dumps({"table": table, "row": row}).encode() + b"\n")
    return str(path)


def replay(fake, files, tmp_path, *extra, env_kind="secret", timeout=240):
    env = fake.env(env_kind, tmp_path)
    env["HYRELAY_STATE_DIR"] = str(tmp_path / "state")
    result = subprocess.run([binary(), "export", "replay", *files, *fake.flags(), "--export-interval", "0.2",
                             "--export-shutdown-seconds", "60", *extra],
                            capture_output=True, text=True, env=env, timeout=timeout)
    return result


def messages(fake):
    return [row["Message"] for row in fake.all_rows(STREAMS["logs"])]


def test_100k_records_arrive_exactly_once_within_the_limits(fake, tmp_path):
    rows = []
    for index in range(100_000):
        table = ("logs", "logs", "metrics")[index % 3]
        if table == "logs":
            rows.append((table, log_row(index, "record-%d-%s" % (index, "x" * (index % 200)))))
        else:
            rows.append((table, {"TimeGenerated": "2026-11-29T12:00:00.000Z", "Role": "test", "Instance": "replay",
                                 "Name": "metric-%d" % index, "Labels": {"le": "+Inf"}, "Value": index * 0.5}))
    result = replay(fake, [write_file(tmp_path / "bulk.ndjson.gz", rows)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivered 100000, dropped 0" in result.stdout
    got = messages(fake) + [row["Name"] for row in fake.all_rows(STREAMS["metrics"])]
    assert len(got) == 100_000 and len(set(got)) == 100_000
    calls = fake.accepted_calls()
    assert all(call["wire"] <= 1048576 and call["raw"] <= 1_000_000 for call in calls)
    # Batches are packed: a few dozen calls, not thousands.
    assert len(calls) < 100, len(calls)
    assert max(call["raw"] for call in calls) > 900_000
    assert len({call["request_id"] for call in calls}) == len(calls)
    assert fake.violations == []


def test_429_retry_after_is_honoured_with_the_same_request_id(fake, tmp_path):
    fake.faults = [(429, [("Retry-After", "2")], {"error": {"code": "TooManyRequests", "message": "slow down"}})]
    rows = [("logs", log_row(i)) for i in range(50)]
    result = replay(fake, [write_file(tmp_path / "r.ndjson.gz", rows)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    first, second = fake.calls[0], fake.calls[1]
    assert first["status"] == 429 and second["status"] == 204
    assert second["time"] - first["time"] >= 1.9
    assert first["request_id"] == second["request_id"]
    assert sorted(messages(fake)) == sorted("record-%d" % i for i in range(50))
    assert fake.violations == []


def test_503_storm_then_recovery_loses_nothing(fake, tmp_path):
    fake.faults = [(503, [], {"error": {"code": "ServiceUnavailable", "message": "busy"}})] * 6
    rows = [("logs", log_row(i, "storm-%d-%s" % (i, "y" * 3000))) for i in range(2000)]
    result = replay(fake, [write_file(tmp_path / "s.ndjson.gz", rows)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    got = messages(fake)
    assert len(got) == 2000 and len(set(got)) == 2000
    assert [c["status"] for c in fake.calls[:6]] == [503] * 6
    # Every retried batch was delivered under the id of its first attempt.
    failed_ids = {c["request_id"] for c in fake.calls if c["status"] == 503}
    assert failed_ids <= {c["request_id"] for c in fake.accepted_calls()}
    assert fake.violations == []


def test_400_is_final_and_counted(fake, tmp_path):
    fake.faults = [(400, [("x-ms-error-code", "InvalidPayload")],
                    {"error": {"code": "InvalidPayload", "message": "schema mismatch"}})]
    rows = [("logs", log_row(i)) for i in range(10)]
    result = replay(fake, [write_file(tmp_path / "b.ndjson.gz", rows)], tmp_path)
    assert result.returncode == 1
    assert "delivered 0, dropped 10" in result.stdout
    assert "InvalidPayload" in result.stderr and "export records dropped" in result.stderr
    assert [c["status"] for c in fake.calls] == [400]
    assert os.path.exists(tmp_path / "b.ndjson.gz"), "a failed replay gives the file its name back"
    assert not os.path.exists(tmp_path / "b.ndjson.gz.delivered")


def test_oversize_record_is_dropped_and_counted(fake, tmp_path):
    rows = [("logs", log_row(0)), ("logs", log_row(1, "z" * 1_100_000)), ("logs", log_row(2))]
    result = replay(fake, [write_file(tmp_path / "o.ndjson.gz", rows)], tmp_path)
    assert result.returncode == 1
    assert "delivered 2, dropped 1" in result.stdout
    assert "oversize" in result.stderr
    assert sorted(messages(fake)) == ["record-0", "record-2"]
    assert fake.violations == []


def test_workload_and_managed_identity_tokens(fake, tmp_path):
    for kind in ("workload", "managed"):
        rows = [("logs", log_row(i, "%s-%d" % (kind, i))) for i in range(5)]
        result = replay(fake, [write_file(tmp_path / ("%s.ndjson.gz" % kind), rows)], tmp_path, env_kind=kind)
        assert result.returncode == 0, result.stdout + result.stderr
    kinds = [kind for _, kind, _ in fake.token_requests]
    assert kinds == ["workload", "managed"]
    assert len(messages(fake)) == 10


def test_206_partial_success_resends_only_the_failed_items(fake, tmp_path):
    def partial(items):
        errors = [{"index": 1, "statusCode": 500, "message": "try again"},
                  {"index": 2, "statusCode": 400, "message": "bad item"}]
        accepted = [item for i, item in enumerate(items) if i not in (1, 2)]
        return 206, [], {"itemsReceived": len(items), "itemsAccepted": len(accepted), "errors": errors}, accepted

    fake.track_faults = [partial]
    rows = [("logs", log_row(i)) for i in range(5)]
    env = fake.env("none")
    env["HYRELAY_STATE_DIR"] = str(tmp_path / "state")
    env["APPLICATIONINSIGHTS_CONNECTION_STRING"] = "InstrumentationKey=%s;IngestionEndpoint=%s/" % (IKEY, fake.url)
    result = subprocess.run([binary(), "export", "replay", write_file(tmp_path / "p.ndjson.gz", rows),
                             "--export-interval", "0.2"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr  # one item refused for good
    assert "delivered 4, dropped 1" in result.stdout
    assert [c["count"] for c in fake.track_calls] == [5, 1]
    resent = fake.track_calls[1]["items"][0]["data"]["baseData"]["message"]
    assert resent == "record-1"
    got = sorted(e["data"]["baseData"]["message"] for e in fake.envelopes)
    assert got == ["record-0", "record-1", "record-3", "record-4"]
    assert fake.violations == []


def test_a_token_for_another_cloud_is_retried_once_then_dropped_and_reported(tmp_path):
    """An Azure Government endpoint refuses public-cloud tokens: one fresh token is tried, then the batch is
    dropped and counted with the cause, instead of 401s retried silently forever."""
    fake = FakeAzure(audience="https://monitor.azure.us")
    try:
        batch = write_file(tmp_path / "gov.ndjson.gz", [("logs", log_row(i)) for i in range(10)])
        result = replay(fake, [batch], tmp_path, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "delivered 0, dropped 10" in result.stdout
        assert [c["status"] for c in fake.calls] == [401, 401]
        assert len(fake.token_requests) == 2
        assert "a freshly fetched token was refused too" in result.stderr and "InvalidToken" in result.stderr
        # The endpoint's cloud given as the audience, the same file goes through.
        fake.calls.clear()
        result = replay(fake, [batch], tmp_path, "--logs-ingestion-audience", "https://monitor.azure.us", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert [c["status"] for c in fake.calls] == [204]
        assert fake.token_requests[-1][2]["scope"] == "https://monitor.azure.us/.default"
        assert fake.violations == []
    finally:
        fake.close()


def test_an_endpoint_and_a_sign_in_in_different_clouds_are_refused_at_start(fake, tmp_path):
    env = fake.env("secret")
    env["AZURE_AUTHORITY_HOST"] = "https://login.microsoftonline.com/"
    result = subprocess.run(
        [binary(), "export", "replay", str(tmp_path / "none.ndjson.gz"), "--logs-ingestion-endpoint",
         "https://hyrelay-telemetry-a1b2-usgovvirginia.logs.z1.ingest.monitor.azure.us", "--dcr-immutable-id",
         "dcr-" + "0" * 32], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "AzureUSGovernment" in result.stderr and "AzureCloud" in result.stderr


def test_application_insights_items_stay_inside_the_service_limits(fake, tmp_path):
    """Huge attributes and a long multi-byte message: each item reaches the fake (which refuses items over
    64 KB and property values over 8,192 characters) cut to fit, saying what was cut."""
    row = log_row(0, "é€" * 16_000)
    row["Attributes"] = {"a%d" % i: "v" * 9_000 for i in range(10)}
    env = fake.env("none")
    env["HYRELAY_STATE_DIR"] = str(tmp_path / "state")
    env["APPLICATIONINSIGHTS_CONNECTION_STRING"] = "InstrumentationKey=%s;IngestionEndpoint=%s/" % (IKEY, fake.url)
    result = subprocess.run([binary(), "export", "replay", write_file(tmp_path / "big.ndjson.gz", [("logs", row)]),
                             "--export-interval", "0.2"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake.violations == []
    [item] = fake.envelopes
    base = item["data"]["baseData"]
    assert len(json.dumps(item, ensure_ascii=False).encode()) <= 65536
    assert base["message"].startswith("é€é€") and len(base["message"]) > 10_000
    kept = [key for key in base["properties"] if key.startswith("a")]
    assert kept and all(len(base["properties"][key]) == 8192 for key in kept)
    truncated = base["properties"]["hyrelay.truncated"].split(",")
    assert truncated[0] == "message" and set(truncated[1:]) | set(kept) == {"a%d" % i for i in range(10)}


def export_flags(url, spool, *extra):
    from fake_azure import DCR_ID
    return ["--logs-ingestion-endpoint", url, "--dcr-immutable-id", DCR_ID, "--export-interval", "0.3",
            "--export-metrics-interval", "1", "--spool-dir", str(spool), *extra]


def test_endpoint_down_then_up_drains_the_spool_and_a_crash_spool_is_delivered(tmp_path, monkeypatch):
    port = free_port()
    fake_env = FakeAzure(port=free_port())  # only for the environment shape; it serves no ingestion here
    env = fake_env.env("secret")
    fake_env.close()
    down = "http://127.0.0.1:%d" % port
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", down + "/")
    metrics_port = free_port()
    spool = tmp_path / "spool"
    relay = start_relay(tmp_path, ["hc1"], name="first")
    relay.stop()
    first = start_relay_with(tmp_path, export_flags(down, spool, "--instance", "first", "--metrics",
                                                    "127.0.0.1:%d" % metrics_port), "first")
    wait_until(lambda: metric_value(metrics_port, "hyrelay_export_spool_batches") >= 3, what="spooled batches")
    rss = int(open("/proc/%d/status" % first.popen.pid).read().split("VmRSS:")[1].split()[0])
    assert rss < 200_000, rss
    # The endpoint comes up on the address the relay has been trying: the spool drains while it runs.
    fake = FakeAzure(port=port)
    try:
        wait_until(lambda: metric_value(metrics_port, "hyrelay_export_spool_batches") == 0, timeout=60,
                   what="spool drained")
        wait_until(lambda: "relay listening" in messages(fake), what="startup log delivered")
        assert messages(fake).count("relay listening") == 1
        assert metric_value(metrics_port, "hyrelay_export_retries_total") >= 1
        assert metric_value(metrics_port, "hyrelay_export_dropped_records_total") == 0
        first.stop()
    finally:
        fake.close()
    # Down again; a second relay spools and is killed -9; the next start delivers what it left.
    second = start_relay_with(tmp_path, export_flags(down, spool, "--instance", "second", "--metrics",
                                                     "127.0.0.1:%d" % metrics_port), "second")
    wait_until(lambda: metric_value(metrics_port, "hyrelay_export_spool_batches") >= 2, what="second spool")
    second.stop(signal.SIGKILL)
    assert [name for name in os.listdir(spool / "logs_ingestion") if name.endswith(".json.gz")]
    fake = FakeAzure(port=port)
    try:
        third = start_relay_with(tmp_path, export_flags(down, spool, "--instance", "third"), "third")
        wait_until(lambda: any(r["Instance"] == "second" and r["Message"] == "relay listening"
                               for r in fake.all_rows(STREAMS["logs"])), what="crash spool delivered")
        third.stop()
        from_second = [r for r in fake.all_rows(STREAMS["logs"]) if r["Instance"] == "second"]
        assert sum(1 for r in from_second if r["Message"] == "relay listening") == 1
        assert fake.violations == []
    finally:
        fake.close()


def start_relay_with(tmp_path, extra, name):
    from agents import KEY, KEY_NAME, Process
    port = free_port()
    process = Process(["relay", "--listen", "127.0.0.1:%d" % port, "--sas-key-name", KEY_NAME, "--sas-key", KEY,
                       "--hybrid-connection", "hc1", "--log-format", "json"] + list(extra),
                      str(tmp_path / ("%s-%d.log" % (name, time.time_ns()))))
    process.port = port
    process.wait_for_log("relay listening")
    return process


def test_token_expiry_and_401_lead_to_a_refresh(tmp_path, monkeypatch):
    fake = FakeAzure(token_lifetime=4)
    try:
        for key, value in fake.env("secret").items():
            monkeypatch.setenv(key, value)
        relay = start_relay_with(tmp_path, export_flags(fake.url, tmp_path / "spool"), "tokens")
        time.sleep(7)
        # Tokens are renewed at half-life: several were fetched and no call met an expired one.
        assert len(fake.token_requests) >= 3
        assert not [c for c in fake.calls if c["status"] == 401]
        # Next a long-lived token, then revoked behind the exporter's back: only the 401 can tell it.
        fake.token_lifetime = 3600
        issued = len(fake.token_requests)
        wait_until(lambda: len(fake.token_requests) > issued, what="a long-lived token")
        time.sleep(0.5)
        fake.revoke_tokens()
        before = len(fake.token_requests)
        wait_until(lambda: [c for c in fake.calls if c["status"] == 401], what="a 401 after revocation")
        wait_until(lambda: len(fake.token_requests) > before, what="a new token")
        refused = next(c for c in fake.calls if c["status"] == 401)
        wait_until(lambda: any(c["status"] == 204 and c["request_id"] == refused["request_id"] for c in fake.calls),
                   what="the refused batch delivered with a fresh token")
        relay.stop()
        assert fake.violations == []
    finally:
        fake.close()


def test_relay_edge_and_client_export_with_flags_and_environment_only(tmp_path, monkeypatch):
    fake = FakeAzure()
    try:
        # Three credential kinds, one per role.
        relay_env = fake.env("secret")
        for key, value in relay_env.items():
            monkeypatch.setenv(key, value)
        ports = {role: free_port() for role in ("relay", "edge", "client")}
        relay = start_relay_with(tmp_path, export_flags(fake.url, tmp_path / "s1", "--metrics",
                                                        "127.0.0.1:%d" % ports["relay"]), "live-relay")
        monkeypatch.delenv("AZURE_CLIENT_SECRET")
        for key, value in fake.env("workload", tmp_path).items():
            monkeypatch.setenv(key, value)
        target = free_port()
        import socket
        import threading
        server = socket.socket()
        server.bind(("127.0.0.1", target))
        server.listen(16)

        def serve():
            # Asymmetric on purpose: 100,000 bytes toward the service, 10,000 back, so a hop that swaps
            # the directions cannot pass.
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                received = 0
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    received += len(chunk)
                conn.sendall(b"r" * (received // 10))
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        edge = start_edge(tmp_path, relay.ws if hasattr(relay, "ws") else "ws://127.0.0.1:%d" % relay.port,
                          ["hc1:127.0.0.1:%d" % target],
                          extra=export_flags(fake.url, tmp_path / "s2", "--metrics", "127.0.0.1:%d" % ports["edge"]))
        for key in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST"):
            monkeypatch.delenv(key)
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", fake.url)
        local = free_port()
        client = start_client(tmp_path, "ws://127.0.0.1:%d" % relay.port, ["127.0.0.1:%d:hc1" % local], [local],
                              extra=export_flags(fake.url, tmp_path / "s3", "--metrics",
                                                 "127.0.0.1:%d" % ports["client"]))
        for i in range(3):
            with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
                conn.sendall(b"u" * UP)
                conn.shutdown(socket.SHUT_WR)
                reply = b""
                while len(reply) < DOWN:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
                assert reply == b"r" * DOWN
        wait_until(lambda: len({r["TraceId"] for r in fake.all_rows(STREAMS["spans"]) if r["Name"] == "edge.bridge"}) >= 3,
                   what="edge spans")
        metrics_seen = {}
        for role in ("client", "relay", "edge"):
            text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % ports[role], timeout=5).read().decode()
            for direction in ("up", "down"):
                line = next(l for l in text.splitlines() if l.startswith("hyrelay_transferred_bytes_total{")
                            and 'role="%s"' % role in l and 'direction="%s"' % direction in l)
                metrics_seen[role, direction] = float(line.rsplit(" ", 1)[1])
        client.stop()
        edge.stop()
        relay.stop()
        server.close()
        spans = fake.all_rows(STREAMS["spans"])
        roots = [s for s in spans if s["Name"] == "client.accept"]
        assert len(roots) == 3
        for root in roots:
            hops = {s["Name"]: s for s in spans if s["TraceId"] == root["TraceId"]}
            assert {"client.accept", "client.connect", "relay.rendezvous", "relay.bridge", "edge.dial",
                    "edge.bridge", "client.bridge"} <= set(hops)
            assert {hops[n]["Role"] for n in hops} == {"client", "relay", "edge"}
            assert hops["edge.dial"]["Outcome"] == "connected"
            # bytes_up flows from the device toward the service at every hop; the relay also carries the
            # preamble (a few bytes each way).
            for name in ("client.bridge", "edge.bridge"):
                assert (hops[name]["BytesUp"], hops[name]["BytesDown"]) == (UP, DOWN), (name, hops[name])
            assert 0 <= hops["relay.bridge"]["BytesUp"] - UP < 64 and 0 <= hops["relay.bridge"]["BytesDown"] - DOWN < 64
        closed_logs = [r for r in fake.all_rows(STREAMS["logs"]) if r["Message"] == "tunnel closed"]
        assert sorted(r["Role"] for r in closed_logs) == ["client"] * 3 + ["edge"] * 3
        for row in closed_logs:
            assert (row["Attributes"]["bytes_up"], row["Attributes"]["bytes_down"]) == (str(UP), str(DOWN)), row
        for role in ("client", "edge"):
            assert (metrics_seen[role, "up"], metrics_seen[role, "down"]) == (3 * UP, 3 * DOWN), (role, metrics_seen)
        assert 3 * UP <= metrics_seen["relay", "up"] < 3 * UP + 200
        assert 3 * DOWN <= metrics_seen["relay", "down"] < 3 * DOWN + 200
        kinds = sorted({kind for _, kind, _ in fake.token_requests})
        assert kinds == ["managed", "secret", "workload"]
        metric_roles = {r["Role"] for r in fake.all_rows(STREAMS["metrics"])}
        assert metric_roles == {"relay", "edge", "client"}
        assert any(r["Name"] == "hyrelay_dials_total" and r["Value"] >= 3 for r in fake.all_rows(STREAMS["metrics"]))
        assert fake.violations == []
    finally:
        fake.close()


def test_roles_write_files_by_default_and_replay_ships_them(fake, tmp_path):
    state = tmp_path / "state-default"
    env = dict(os.environ, HYRELAY_STATE_DIR=str(state))
    port = free_port()
    process = subprocess.Popen([binary(), "demo", "--once", "--relay-port", "0", "--client-port", "0",
                                "--connections", "2", "--bytes", "1000"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err
    assert "exported to gzip NDJSON files in %s/telemetry" % state in out
    files = [str(state / "telemetry" / name) for name in os.listdir(state / "telemetry")]
    assert files
    result = replay(fake, files, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    spans = fake.all_rows(STREAMS["spans"])
    assert len([s for s in spans if s["Name"] == "client.accept"]) == 2
    assert fake.all_rows(STREAMS["metrics"]), "a final metric snapshot at shutdown"
    assert fake.violations == []
    # Replay marks what it delivered: the same command again sends nothing twice.
    assert sorted(os.listdir(state / "telemetry")) == sorted(os.path.basename(f) + ".delivered" for f in files)
    assert "marked %d file(s) delivered" % len(files) in result.stdout
    rows_before = len(fake.all_rows(STREAMS["spans"]))
    again = replay(fake, files, tmp_path)
    assert again.returncode == 0 and "skipped" in again.stdout, again.stdout + again.stderr
    delivered = [str(state / "telemetry" / name) for name in os.listdir(state / "telemetry")]
    again = replay(fake, delivered, tmp_path)
    assert again.returncode == 0 and "already delivered, skipped" in again.stdout, again.stdout + again.stderr
    assert len(fake.all_rows(STREAMS["spans"])) == rows_before


def test_a_replay_cut_short_by_an_absent_sink_sends_nothing_twice(fake, tmp_path):
    """The sink is away for the whole of a replay: what was not delivered waits in replay's spool and the file is
    marked delivered (handed over); the next replay, naming the same file, skips it and sends the spool: every
    record arrives once (a rerun used to read the file again and send the spool too: every record twice)."""
    fake.faults = [(503, [], {"error": {"code": "ServiceUnavailable", "message": "away"}})] * 10_000
    rows = [("logs", log_row(i, "once-%d" % i)) for i in range(300)]
    path = write_file(tmp_path / "away.ndjson.gz", rows)
    first = replay(fake, [path], tmp_path, "--export-shutdown-seconds", "2")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "wait in replay's spool" in first.stdout, first.stdout
    assert os.path.exists(path + ".delivered") and not os.path.exists(path)
    assert messages(fake) == []
    fake.faults = []
    second = replay(fake, [path], tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    got = messages(fake)
    assert len(got) == 300 and len(set(got)) == 300, (len(got), len(set(got)))
    assert fake.violations == []


def test_replay_refuses_otlp_as_a_target(fake, tmp_path):
    path = write_file(tmp_path / "o.ndjson.gz", [("logs", log_row(0))])
    result = replay(fake, [path], tmp_path, "--otlp-endpoint", "http://127.0.0.1:4318")
    assert result.returncode != 0 and "OTLP is not a replay target" in result.stderr, result.stderr
    assert os.path.exists(path), "nothing claimed"
