#!/usr/bin/env python3
"""Builds hybridrelay.workbook.json from queries/*.kql, so the workbook runs exactly the saved queries.

The query files take their parameters from `let` lines; here they become workbook parameters:
`ago(Lookback)` -> the TimeRange picker, `Grain` -> {TimeRange:grain}, `EntityFilter` -> {Entity},
`Trace` -> {TraceId}. Run it after changing a query; a test checks the committed workbook matches.
"""
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARTS = {"rendezvous_latency": "timechart", "bytes_per_entity": "timechart"}
WIDTH = {"trace_timeline": "100", "tunnel_inventory": "100"}


def workbook_query(kql):
    body = "\n".join(line for line in kql.splitlines() if not line.startswith("//"))
    body = re.sub(r"^let Lookback = .*;\n", "", body, flags=re.M)
    body = body.replace("TimeGenerated > ago(Lookback)", "TimeGenerated {TimeRange}")
    body = re.sub(r"^let Grain = .*;$", "let Grain = {TimeRange:grain};", body, flags=re.M)
    body = re.sub(r'^let EntityFilter = "";$', 'let EntityFilter = "{Entity}";', body, flags=re.M)
    body = re.sub(r'^let Trace = "";$', 'let Trace = "{TraceId}";', body, flags=re.M)
    assert "Lookback" not in body, body
    return body.strip() + "\n"


def build():
    items = [{"type": 1, "name": "title", "content": {"json": (
        "## HybridRelay tunnels\nSpans, logs and metric snapshots exported by relay, edge and client agents "
        "(tables HyRelaySpans_CL, HyRelayLogs_CL, HyRelayMetrics_CL). See docs/diagnosis.md for what each "
        "panel means and what to do.")}}]
    items.append({"type": 9, "name": "parameters", "content": {
        "version": "KqlParameterItem/1.0", "style": "pills", "queryType": 0,
        "resourceType": "microsoft.operationalinsights/workspaces",
        "parameters": [
            {"id": "6f1d7c0e-2b1a-4c55-9d6e-1a2b3c4d5e01", "version": "KqlParameterItem/1.0", "name": "TimeRange",
             "label": "Time range", "type": 4, "isRequired": True, "value": {"durationMs": 3600000},
             "typeSettings": {"selectableValues": [{"durationMs": 900000}, {"durationMs": 3600000},
                                                   {"durationMs": 14400000}, {"durationMs": 86400000},
                                                   {"durationMs": 604800000}], "allowCustom": True}},
            {"id": "6f1d7c0e-2b1a-4c55-9d6e-1a2b3c4d5e02", "version": "KqlParameterItem/1.0", "name": "Entity",
             "label": "Hybrid connection (empty = all)", "type": 1, "value": ""},
            {"id": "6f1d7c0e-2b1a-4c55-9d6e-1a2b3c4d5e03", "version": "KqlParameterItem/1.0", "name": "TraceId",
             "label": "Trace id (empty = latest failed tunnel)", "type": 1, "value": ""},
        ]}})
    for path in sorted(glob.glob(os.path.join(ROOT, "queries", "*.kql"))):
        name = os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            kql = f.read()
        purpose = kql.splitlines()[0].replace("// Purpose:", "").strip()
        items.append({"type": 3, "name": name, "customWidth": WIDTH.get(name, "50"), "content": {
            "version": "KqlItem/1.0", "query": workbook_query(kql), "size": 0,
            "title": name.replace("_", " ").capitalize() + ": " + purpose,
            "timeContextFromParameter": "TimeRange", "queryType": 0,
            "resourceType": "microsoft.operationalinsights/workspaces",
            "visualization": CHARTS.get(name, "table")}})
    return {"version": "Notebook/1.0", "items": items, "fallbackResourceIds": [],
            "$schema": "https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json"}


def text():
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    target = os.path.join(ROOT, "dashboards", "hybridrelay.workbook.json")
    if sys.argv[1:] == ["--check"]:
        with open(target) as f:
            sys.exit(0 if f.read() == text() else "dashboards/hybridrelay.workbook.json is stale: run dashboards/build-workbook.py")
    with open(target, "w") as f:
        f.write(text())
