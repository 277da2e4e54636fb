"""Helpers that check the shipped queries and dashboards against data: Grafana expressions with their macros
resolved, KQL run with duckdb-kql on tables built the way Azure builds them (captured rows -> `source` ->
the DCR's transformKql -> table), and the workbook's structure."""
import glob
import json
import os
import re

from conftest import ROOT

DASHBOARDS = os.path.join(ROOT, "dashboards")
QUERIES = os.path.join(ROOT, "queries")
DUCK_TYPES = {"string": "VARCHAR", "datetime": "TIMESTAMP", "dynamic": "JSON", "long": "BIGINT", "int": "INTEGER",
              "real": "DOUBLE", "boolean": "BOOLEAN"}
# Operators a DCR transform may use (reference: transformKql rules).
TRANSFORM_OPERATORS = {"extend", "project", "print", "where", "parse", "project-away", "project-rename", "datatable",
                       "columnifexists"}


def grafana_expressions():
    """(panel title, PromQL) for every target, with Grafana's macros and variables resolved."""
    with open(os.path.join(DASHBOARDS, "grafana-hybridrelay.json")) as f:
        dashboard = json.load(f)
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$__interval", "15s")
            expr = expr.replace("$__range", "1h").replace("$instance", ".*")
            assert "$" not in expr, expr
            out.append((panel["title"], expr))
    return out


def template():
    with open(os.path.join(ROOT, "deploy", "azure-monitor.json")) as f:
        return json.load(f)


def data_flows():
    """(input stream, columns {name: type}, transformKql, output table) per DCR data flow."""
    rule = next(r for r in template()["resources"] if r["type"] == "Microsoft.Insights/dataCollectionRules")
    declarations = rule["properties"]["streamDeclarations"]
    flows = []
    for flow in rule["properties"]["dataFlows"]:
        stream = flow["streams"][0]
        columns = {c["name"]: c["type"] for c in declarations[stream]["columns"]}
        table = flow["outputStream"][len("Custom-"):]
        flows.append((stream, columns, flow["transformKql"], table))
    return flows


def transform_operators(kql):
    return {m.group(1) for m in re.finditer(r"\|\s*([a-z-]+)", kql)}


def load_tables(connection, rows_by_stream, directory):
    """Builds each custom table from the rows the fake endpoint accepted, through the DCR's transform."""
    import duckdb_kql
    for stream, columns, transform, table in data_flows():
        path = os.path.join(str(directory), "%s.json" % stream)
        rows = [{k: v for k, v in row.items() if k in columns} for row in rows_by_stream.get(stream, [])]
        with open(path, "w") as f:
            json.dump(rows, f)
        spec = ", ".join("%s: '%s'" % (name, DUCK_TYPES[kind]) for name, kind in columns.items())
        connection.execute("CREATE OR REPLACE TABLE source AS SELECT * FROM read_json('%s', format='array', columns={%s})"
                           % (path, spec))
        connection.execute('CREATE OR REPLACE TABLE "%s" AS %s' % (table, duckdb_kql.to_sql(transform)))
    connection.execute("DROP TABLE source")


def query_files():
    return sorted(glob.glob(os.path.join(QUERIES, "*.kql")))


def header(path):
    """The leading comment block of a saved query, as one string."""
    lines = []
    with open(path) as f:
        for line in f:
            if not line.startswith("//"):
                break
            lines.append(line[2:].strip())
    return "\n".join(lines)


def with_parameters(kql, **values):
    """Overrides `let Name = …;` parameter lines of a saved query."""
    for name, value in values.items():
        kql, count = re.subn(r"^let %s = .*;$" % name, "let %s = %s;" % (name, value), kql, flags=re.M)
        assert count == 1, "no parameter %s" % name
    return kql


def run(connection, kql, now):
    import duckdb_kql
    relation = duckdb_kql.query(connection, kql, query_now=now)
    names = relation.columns
    return [dict(zip(names, row)) for row in relation.fetchall()]


def workbook():
    with open(os.path.join(DASHBOARDS, "hybridrelay.workbook.json")) as f:
        return json.load(f)


def workbook_queries(book, substitutions):
    """Every KqlItem's query with the workbook parameters substituted; fails on one left unresolved."""
    out = []

    def walk(items):
        for item in items:
            if item.get("type") == 12:
                walk(item["content"]["items"])
            if item.get("type") == 3:
                query = item["content"]["query"]
                for token, value in substitutions.items():
                    query = query.replace(token, value)
                left = re.findall(r"\{[A-Za-z][A-Za-z0-9_:]*\}", query)
                assert not left, "unresolved %s in %s" % (left, item["name"])
                out.append((item["name"], query))
    walk(book["items"])
    return out
