#!/usr/bin/env python3
"""Builds hybridrelay.workbook.json from queries/*.kql, so the workbook runs exactly the saved queries, and
puts the same workbook into deploy/azure-monitor.json (variable `workbook`), bound to the deployed workspace.

The query files take their parameters from `let` lines; here they become workbook parameters:
`ago(Lookback)` -> the TimeRange picker, `Grain` -> {TimeRange:grain}, `EntityFilter` -> {Entity},
`Trace` -> {TraceId}. Every query runs against {Workspace}, a required workspace picker: a workbook imported
through Monitor -> Workbooks has no workspace of its own. Run it after changing a query; a test checks the
committed files match (`--check`).
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
        items.append({"type": 3, "name": name, "customWidth": WIDTH.get(name, "50"), "content": {
            "version": "KqlItem/1.0", "query": workbook_query(kql), "size": 0,
            "title": name.replace("_", " ").capitalize() + " — " + purpose(kql),
            "timeContextFromParameter": "TimeRange", "queryType": 0,
            "resourceType": "microsoft.operationalinsights/workspaces",
            "crossComponentResources": ["{Workspace}"],
            "visualization": CHARTS.get(name, "table")}})
    return {"version": "Notebook/1.0", "items": items, "fallbackResourceIds": [],
            "$schema": "https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json"}


def purpose(kql):
    """The first sentence of a query's Purpose comment, whole, however many lines it spans."""
    lines = []
    for line in kql.splitlines():
        if not line.startswith("//") or (lines and line.startswith("// Parameters:")):
            break
        lines.append(line[2:].replace("Purpose:", "", 1).strip())
    text = " ".join(lines)
    match = re.search(r"[.?!](\s|$)", text)
    sentence = text[:match.end()].strip() if match else text
    return sentence[0].upper() + sentence[1:]


def workspace_parameter(value=None):
    """A required resource picker listing the Log Analytics workspaces the reader can see."""
    parameter = {
        "id": "6f1d7c0e-2b1a-4c55-9d6e-1a2b3c4d5e00", "version": "KqlParameterItem/1.0", "name": "Workspace",
        "label": "Log Analytics workspace", "type": 5, "isRequired": True, "multiSelect": False,
        "query": "where type =~ 'microsoft.operationalinsights/workspaces'\n| project id",
        "crossComponentResources": ["value::all"],
        "typeSettings": {"resourceTypeFilter": {"microsoft.operationalinsights/workspaces": True},
                         "additionalResourceOptions": [], "showDefault": False},
        "queryType": 1, "resourceType": "microsoft.resourcegraph/resources"}
    if value:
        parameter["value"] = value
    return parameter


def standalone():
    book = build()
    book["items"][1]["content"]["parameters"].insert(0, workspace_parameter())
    return book


# In the template the picker starts on the workspace the template deploys into.
TEMPLATE_WORKSPACE = "[resourceId('Microsoft.OperationalInsights/workspaces', parameters('workspaceName'))]"


def deployed():
    book = build()
    book["items"][1]["content"]["parameters"].insert(0, workspace_parameter(TEMPLATE_WORKSPACE))
    return book


def workbook_text():
    return json.dumps(standalone(), indent=2, ensure_ascii=False) + "\n"


def template_text(path):
    with open(path) as f:
        template = json.load(f)
    template["variables"]["workbook"] = deployed()
    return json.dumps(template, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    outputs = {os.path.join(ROOT, "dashboards", "hybridrelay.workbook.json"): workbook_text,
               os.path.join(ROOT, "deploy", "azure-monitor.json"): lambda: template_text(
                   os.path.join(ROOT, "deploy", "azure-monitor.json"))}
    if sys.argv[1:] == ["--check"]:
        stale = []
        for path, make in outputs.items():
            with open(path, encoding="utf-8") as f:
                if f.read() != make():
                    stale.append(os.path.relpath(path, ROOT))
        sys.exit("stale, run dashboards/build-workbook.py: " + ", ".join(stale) if stale else 0)
    for path, make in outputs.items():
        text = make()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
