"""ops/grafana: the dashboard imports and provisions as it stands, has the issue's
rows, and every panel's PromQL parses and names only metrics that Carnet exports."""

from typing import Any

from tests.ops.support import (
    DASHBOARD,
    OPS,
    PROMETHEUS_SERIES,
    all_panels,
    as_recording_rules,
    declared_families,
    load_dashboard,
    load_yaml,
    metric_names,
    promtool,
    without_grafana_variables,
)

ROWS = [
    "Traffic",
    "Errors",
    "Latency",
    "Bookings",
    "Ledger and security",
    "Projections and relay",
    "Database and runtime",
]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def queries() -> dict[str, str]:
    """Every target's expression, keyed by panel id and refId."""
    found = {}
    for panel in all_panels(load_dashboard()["panels"]):
        for target in panel.get("targets", []):
            found[f"panel_{panel['id']}_{target['refId']}"] = target["expr"]
    return found


def test_the_dashboard_has_the_rows_of_the_issue_in_order_each_with_panels():
    dashboard = load_dashboard()
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [row["title"] for row in rows] == ROWS
    # A collapsed row holds its panels; an open one is followed by them.
    top = dashboard["panels"]
    for row in rows:
        if row["collapsed"]:
            assert row["panels"], row["title"]
        else:
            following = top[top.index(row) + 1 :]
            assert following and following[0]["type"] != "row", row["title"]
            assert not row["panels"], row["title"]


def test_every_panel_has_a_unique_id_and_queries_the_chosen_data_source():
    panels = list(all_panels(load_dashboard()["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel["id"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_dashboard_imports_and_provisions_as_it_stands():
    """No `${DS_…}` input to fill in (file provisioning would leave it unfilled): the
    data source is a variable, and the instance one is a query through it."""
    dashboard = load_dashboard()
    assert dashboard["id"] is None and dashboard["uid"] and dashboard["title"]
    assert "__inputs" not in dashboard and "${DS_" not in DASHBOARD.read_text()
    assert dashboard["schemaVersion"] >= 36  # Grafana 9+
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["datasource"] == DATASOURCE
    assert variables["instance"]["allValue"] == ".*"
    assert metric_names(variables["instance"]["query"]["query"].replace("label_values", "f")) <= {
        "carnet_build_info",
        "instance",
    }


def test_the_provisioning_examples_point_at_the_dashboard_and_a_prometheus():
    providers = load_yaml(OPS / "grafana" / "provisioning" / "dashboards.yml")
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and providers["apiVersion"] == 1
    assert provider["options"]["path"]
    sources = load_yaml(OPS / "grafana" / "provisioning" / "datasources.yml")
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and sources["apiVersion"] == 1


def test_every_panel_query_parses(tmp_path):
    exprs = {name: without_grafana_variables(expr) for name, expr in queries().items()}
    assert len(exprs) >= 40
    assert not [e for e in exprs.values() if "$" in e], "a Grafana variable is left"
    rules = tmp_path / "dashboard.yml"
    rules.write_text(as_recording_rules(exprs))
    checked = promtool("check", "rules", rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_every_panel_query_names_only_metrics_that_carnet_exports(exported_metrics: set[str]):
    unknown: dict[str, Any] = {}
    used: set[str] = set()
    for name, expr in queries().items():
        names = metric_names(without_grafana_variables(expr))
        assert names, f"{name} selects no metric: {expr}"
        used |= names
        if names - exported_metrics - PROMETHEUS_SERIES:
            unknown[name] = sorted(names - exported_metrics - PROMETHEUS_SERIES)
    assert not unknown
    # And every metric of Carnet's is on the dashboard somewhere (the registry now
    # holds the metrics that only a live app exports, too).
    hidden = [
        family
        for family, series in declared_families().items()
        if family.startswith("carnet_") and not series & used
    ]
    assert not hidden, "metrics the dashboard does not show"
