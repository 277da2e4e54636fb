"""Saved queries, the workbook, the Grafana dashboard and the Prometheus rules, each checked against data
that real tunnels with injected faults produced (scenario.py): KQL runs with duckdb-kql on tables built from
the rows the exporter really sent, PromQL runs on a real Prometheus that scraped the processes."""
import datetime
import json
import os
import re
import shutil
import subprocess
from collections import Counter

import duckdb
import duckdb_kql
import pytest

import dashboard_checks as checks
from conftest import ROOT
from scenario import COUNTS, RUNBOOKS, SLOW_SECONDS, FaultScenario

PAYLOAD = 10_000  # toward the service; it answers a tenth (REPLY)
REPLY = 1_000


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return FaultScenario(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def kusto(scenario, tmp_path_factory):
    connection = duckdb.connect()
    checks.load_tables(connection, scenario.fake.rows, tmp_path_factory.mktemp("tables"))
    now = datetime.datetime.fromtimestamp(scenario.ended + 60, datetime.timezone.utc)
    return lambda kql: checks.run(connection, kql, now)


def saved(name, **parameters):
    with open(os.path.join(checks.QUERIES, name + ".kql")) as f:
        return checks.with_parameters(f.read(), **parameters) if parameters else f.read()


def test_the_exporter_sent_clean_rows(scenario):
    assert scenario.fake.violations == []
    assert all(scenario.fake.rows.get(stream) for stream in ("Custom-HyRelaySpans", "Custom-HyRelayLogs",
                                                               "Custom-HyRelayMetrics"))


def test_tunnel_inventory(kusto):
    rows = {r["Entity"]: r for r in kusto(saved("tunnel_inventory"))}
    hc1, hc2 = rows["hc1"], rows["hc2"]
    delivered = COUNTS["ok"] + COUNTS["slow"]
    assert hc1["Tunnels"] == delivered + COUNTS["refused"] + COUNTS["bad_token"]
    assert hc1["Failed"] == COUNTS["refused"] + COUNTS["bad_token"]
    assert (hc1["BytesUp"], hc1["BytesDown"]) == (delivered * PAYLOAD, delivered * REPLY)
    assert (hc2["Tunnels"], hc2["Failed"], hc2["SuccessPercent"]) == (COUNTS["no_listener"], COUNTS["no_listener"], 0)
    only = kusto(saved("tunnel_inventory", EntityFilter='"hc2"'))
    assert [r["Entity"] for r in only] == ["hc2"]


def test_failed_tunnels_by_hop_name_each_fault_once(kusto):
    got = {(r["Hop"], r["Reason"]): r["Tunnels"] for r in kusto(saved("failed_tunnels_by_hop"))}
    assert got == {("edge.dial", "connection_refused"): COUNTS["refused"],
                   ("relay.rendezvous", "no_listener"): COUNTS["no_listener"],
                   ("relay.rendezvous", "invalid_signature"): COUNTS["bad_token"]}


def test_rendezvous_latency_percentiles(kusto):
    rows = kusto(saved("rendezvous_latency", Grain="1m"))
    assert {r["Entity"] for r in rows} == {"hc1"}
    assert sum(r["Rendezvous"] for r in rows) == COUNTS["ok"] + COUNTS["slow"] + COUNTS["refused"]
    for row in rows:
        assert 0 < row["P50Ms"] <= row["P95Ms"] <= row["P99Ms"] < 5000


def test_edge_dial_failures_name_the_target(scenario, kusto):
    rows = kusto(saved("edge_dial_failures"))
    assert [(r["Target"], r["Reason"], r["Failures"], r["Entity"]) for r in rows] == [
        (scenario.closed_target, "connection_refused", COUNTS["refused"], "hc1")]


def test_trace_timeline(kusto):
    latest_failed = kusto(saved("trace_timeline"))
    assert len({r["TraceId"] for r in latest_failed}) == 1
    assert any(not r["Success"] for r in latest_failed)
    talker = kusto(saved("top_talkers"))[0]["TraceId"]
    hops = kusto(saved("trace_timeline", Trace='"%s"' % talker))
    assert [r["OffsetMs"] for r in hops] == sorted(r["OffsetMs"] for r in hops) and hops[0]["OffsetMs"] == 0
    assert hops[0]["Name"] == "client.accept"
    assert {r["Name"] for r in hops} == {"client.accept", "client.connect", "relay.rendezvous", "relay.bridge",
                                         "edge.dial", "edge.bridge", "client.bridge"}
    assert {r["Role"] for r in hops} == {"client", "relay", "edge"}
    spans = {r["SpanId"] for r in hops}
    assert all(r["ParentSpanId"] in spans for r in hops if r["Name"] != "client.accept")


def test_bytes_per_entity_and_top_talkers(kusto):
    rows = kusto(saved("bytes_per_entity", Grain="1m"))
    delivered = COUNTS["ok"] + COUNTS["slow"]
    assert sum(r["BytesUp"] for r in rows if r["Entity"] == "hc1") == delivered * PAYLOAD
    assert sum(r["BytesDown"] for r in rows if r["Entity"] == "hc1") == delivered * REPLY
    talkers = kusto(saved("top_talkers"))
    assert len(talkers) == COUNTS["ok"] + COUNTS["slow"]
    assert all((r["BytesUp"], r["BytesDown"]) == (PAYLOAD, REPLY) and r["Peer"].startswith("127.0.0.1:")
               for r in talkers)


def test_listener_flaps(kusto):
    rows = {(r["Entity"], r["Event"], r["Cause"]): r["Events"] for r in kusto(saved("listener_flaps"))}
    assert rows[("hc1", "connected", "")] == 1 + COUNTS["flaps"]
    assert rows[("hc1", "disconnected", "closed")] >= COUNTS["flaps"]


def test_auth_failures_by_reason_and_source(kusto):
    rows = kusto(saved("auth_failures"))
    # The intruder's tunnels, and the start-up probe it made with the same wrong key.
    assert [(r["Reason"], r["Source"], r["Entity"], r["Failures"]) for r in rows] == [
        ("invalid_signature", "127.0.0.1", "hc1", COUNTS["bad_token"] + 1)]


def test_exporter_health(kusto):
    rows = {r["Instance"]: r for r in kusto(saved("exporter_health"))}
    assert set(rows) == {"relay-1", "edge-1", "client-1", "intruder-1"}
    for row in rows.values():
        assert row["Delivered"] > 0 and row["Dropped"] == 0 and row["SpoolBatches"] == 0


def test_slow_tunnels(scenario, kusto):
    rows = kusto(saved("slow_tunnels"))
    assert len(rows) == COUNTS["slow"]
    assert all(r["Target"] == scenario.slow_target and r["TtfbMs"] >= SLOW_SECONDS * 1000 for r in rows)


def test_every_query_is_documented_and_parses():
    files = checks.query_files()
    assert len(files) >= 9
    for path in files:
        head = checks.header(path)
        for part in ("Purpose:", "Parameters:", "Returns:"):
            assert part in head, "%s: header lacks %s" % (path, part)
        with open(path) as f:
            assert duckdb_kql.validate(f.read()) == [], path


def test_dcr_transforms_use_only_transform_operators():
    for _, _, transform, _ in checks.data_flows():
        assert checks.transform_operators(transform) <= checks.TRANSFORM_OPERATORS, transform


def test_workbook_is_current_and_every_item_runs(kusto):
    built = subprocess.run(["python3", os.path.join(ROOT, "dashboards", "build-workbook.py"), "--check"])
    assert built.returncode == 0, "the workbook or its copy in deploy/azure-monitor.json is stale"
    book = checks.workbook()
    assert book["version"] == "Notebook/1.0"
    parameters = {p["name"]: p for item in book["items"] if item["type"] == 9 for p in item["content"]["parameters"]}
    assert parameters["TimeRange"]["type"] == 4
    # Imported through Monitor -> Workbooks a workbook has no workspace: the reader must pick one, and only
    # Log Analytics workspaces are offered.
    workspace = parameters["Workspace"]
    assert workspace["type"] == 5 and workspace["isRequired"] and "value" not in workspace
    assert workspace["typeSettings"]["resourceTypeFilter"] == {"microsoft.operationalinsights/workspaces": True}
    assert "microsoft.operationalinsights/workspaces" in workspace["query"] and workspace["queryType"] == 1
    queries = [item for item in book["items"] if item["type"] == 3]
    assert len(queries) == len(checks.query_files())
    for item in queries:
        content = item["content"]
        assert content["version"] == "KqlItem/1.0" and content["queryType"] == 0
        assert content["resourceType"] == "microsoft.operationalinsights/workspaces"
        assert content["crossComponentResources"] == ["{Workspace}"], item["name"]
        assert content["visualization"] in ("table", "timechart", "barchart", "piechart", "tiles")
        assert content["timeContextFromParameter"] in parameters
        # A whole sentence of the query's Purpose, not a line of it.
        purpose = " ".join(line.strip() for line in checks.header(
            os.path.join(checks.QUERIES, item["name"] + ".kql")).split("Parameters:")[0].splitlines())
        sentence = content["title"].split(" — ", 1)[1]
        assert sentence[-1] in ".?!" and sentence[1:] in purpose, content["title"]
    substitutions = {"{TimeRange}": "> ago(1h)", "{TimeRange:grain}": "1m", "{Entity}": "", "{TraceId}": ""}
    answers = {name: kusto(query) for name, query in checks.workbook_queries(book, substitutions)}
    assert answers["failed_tunnels_by_hop"] and answers["auth_failures"] and answers["edge_dial_failures"]
    assert all(answers.values()), [name for name, rows in answers.items() if not rows]


def test_template_deploys_a_working_set():
    """What a real deployment trips on: the DCR in the workspace's region, the publisher role where the
    exporter sends, and the workbook bound to the workspace it was deployed with."""
    template = checks.template()
    parameters = template["parameters"]
    assert "defaultValue" not in parameters["location"], "the DCR's region must be the workspace's: required"
    resources = {}
    for resource in template["resources"]:
        resources.setdefault(resource["type"], []).append(resource)
    [rule] = resources["Microsoft.Insights/dataCollectionRules"]
    assert rule["location"] == "[parameters('location')]" and rule["kind"] == "Direct"
    publisher = template["variables"]["monitoringMetricsPublisher"]
    assert publisher == "3913510d-42f4-4e42-8a64-420c390055eb"
    roles = {r["scope"].split("/")[1]: r for r in resources["Microsoft.Authorization/roleAssignments"]}
    assert set(roles) == {"dataCollectionRules", "components"}
    for role in roles.values():
        assert "variables('monitoringMetricsPublisher')" in role["properties"]["roleDefinitionId"]
        assert role["properties"]["principalId"] == "[parameters('exporterPrincipalId')]"
    assert "applicationInsightsName" in roles["components"]["condition"]
    [workbook] = resources["Microsoft.Insights/workbooks"]
    assert workbook["kind"] == "shared" and workbook["location"] == "[parameters('location')]"
    assert workbook["properties"]["serializedData"] == "[string(variables('workbook'))]"
    assert "parameters('workspaceName')" in workbook["properties"]["sourceId"]
    # The deployed copy is the shipped workbook with the picker starting on the deployed workspace; no other
    # string in it may start with "[", which ARM would evaluate.
    deployed = template["variables"]["workbook"]
    shipped = checks.workbook()
    workspace = deployed["items"][1]["content"]["parameters"][0]
    assert workspace.pop("value") == "[resourceId('Microsoft.OperationalInsights/workspaces', parameters('workspaceName'))]"
    assert deployed == shipped
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', json.dumps(shipped))
    assert not [text for text in strings if text.startswith("[")]


def test_grafana_dashboard_structure():
    with open(os.path.join(checks.DASHBOARDS, "grafana-hybridrelay.json")) as f:
        dashboard = json.load(f)
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        assert panel["datasource"]["uid"] == "${datasource}"


def test_grafana_and_rule_expressions_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"
    wrapped = {"groups": [{"name": "grafana", "rules": [
        {"record": "grafana:panel_%d" % i, "expr": expr} for i, (_, expr) in enumerate(checks.grafana_expressions())]}]}
    path = tmp_path / "grafana-rules.json"
    path.write_text(json.dumps(wrapped))  # promtool reads YAML, and JSON is YAML
    for rules in (str(path), os.path.join(checks.DASHBOARDS, "prometheus-rules.yml")):
        result = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    test = subprocess.run([promtool, "test", "rules", "prometheus-rules.test.yml"], cwd=checks.DASHBOARDS,
                          capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_grafana_expressions_return_data_from_prometheus(scenario):
    empty = [title for (title, _), result in scenario.prometheus_results["grafana"].items() if not result]
    assert not empty, "no data for: %s" % empty
    results = {title: result for (title, _), result in scenario.prometheus_results["grafana"].items()}
    dials = {r["metric"].get("outcome"): float(r["value"][1]) for r in results["Edge dials by outcome"]}
    assert dials["failed"] > 0 and dials["connected"] > 0
    auth = {r["metric"].get("reason") for r in results["Authentication failures by reason"]}
    assert "invalid_signature" in auth


def test_rules_evaluate_on_the_live_data(scenario):
    rules = [rule for group in scenario.prometheus_results["rules"]["groups"] for rule in group["rules"]]
    assert len(rules) == 13
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
    # Every expression has data, each alert's without its threshold: the series it needs exist, at zero
    # where nothing happened yet (auth failures by reason, spool bytes against the bound).
    empty = [name for name, result in scenario.prometheus_results["rule_data"].items() if not result]
    assert not empty, "rule expressions without data: %s" % empty
    states = {rule["name"]: rule["state"] for rule in rules if rule["type"] == "alerting"}
    # What the scenario broke, each pending (the rules' `for` outlasts the scenario): 3 of 11 dials failed,
    # two senders for hc2 found no listener, and one edge never registered. Nothing else is wrong.
    for name in ("HyRelayDialFailureRatioHigh", "HyRelaySendersRefusedNoListener", "HyRelayListenerDown"):
        assert states.pop(name) in ("pending", "firing"), name
    assert set(states.values()) == {"inactive"}, states
    alerts = {a["labels"]["alertname"]: a for a in scenario.prometheus_results["alerts"]["alerts"]}
    down = alerts["HyRelayListenerDown"]
    assert down["labels"]["instance"] == "127.0.0.1:%d" % scenario.metrics_ports["lost"]
    assert down["labels"]["entity"] == "hc1"
    assert down["annotations"]["runbook_url"] == RUNBOOKS + "/diagnosis.md#the-edge-listener-is-down"
    assert alerts["HyRelaySendersRefusedNoListener"]["labels"]["entity"] == "hc2"


def test_every_alert_explains_itself_and_links_a_runbook_that_exists():
    import yaml
    with open(os.path.join(checks.DASHBOARDS, "prometheus-rules.yml")) as f:
        rules = yaml.safe_load(f)
    with open(os.path.join(ROOT, "docs", "diagnosis.md")) as f:
        anchors = {re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
                   for line in f if line.startswith("## ")}
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    for alert in alerts:
        annotations = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), alert["alert"]
        assert annotations["runbook_url"].split("#")[1] in anchors, alert["alert"]
        # A bare {{ $value }} prints an extrapolated increase as 38.362610169491525: every value is formatted.
        for text in (annotations["summary"], annotations["description"]):
            for use in re.findall(r"\{\{[^}]*\$value[^}]*\}\}", text):
                assert "humanize" in use or "printf" in use, (alert["alert"], use)
    records = [rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule]
    assert all(re.fullmatch(r"[a-z_]+:hyrelay_[a-z_]+:[a-z0-9_]+", name) for name in records), records
    assert not re.search(r"\[[1-4]m\]|\[\d+s\]", json.dumps(rules)), "windows under 5m hold too few samples"


def test_rule_tests_hold_with_left_open_windows_as_in_prometheus_3(tmp_path):
    """Prometheus 3 leaves a range's left edge out: on minute samples `[5m]` holds what `[4m59s]` holds on
    Prometheus 2. The rules and their tests, rewritten so, must fire the same alerts at the same times
    (annotations quoting an increase() differ by the 1 s and are left out). `[1m]` windows fail this: one
    sample, no rate."""
    import yaml
    with open(os.path.join(checks.DASHBOARDS, "prometheus-rules.yml")) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[(\d+)m\]", lambda m: "[%dm59s]" % (int(m.group(1)) - 1), rule["expr"])
            rule.pop("annotations", None)
    assert "[4m59s]" in json.dumps(rules)
    (tmp_path / "prometheus-rules.yml").write_text(json.dumps(rules))
    with open(os.path.join(checks.DASHBOARDS, "prometheus-rules.test.yml")) as f:
        tests = yaml.safe_load(f)
    for group in tests["tests"]:
        group.pop("promql_expr_test", None)
        for case in group["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                alert.pop("exp_annotations", None)
    (tmp_path / "rules.test.yml").write_text(json.dumps(tests))
    result = subprocess.run([shutil.which("promtool"), "test", "rules", "rules.test.yml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
