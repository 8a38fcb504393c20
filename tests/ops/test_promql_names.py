"""The metric-name extraction the dashboard and alert tests rely on, on tricky PromQL."""

import pytest

from tests.ops.support import as_recording_rules, metric_names, promtool, without_grafana_variables

CASES = [
    ("up", {"up"}),
    ("rate(carnet_events_appended_total[5m])", {"carnet_events_appended_total"}),
    (
        "sum by (le, route) "
        '(rate(carnet_http_request_duration_seconds_bucket{route!~"/analyst.*"}[5m]))',
        {"carnet_http_request_duration_seconds_bucket"},
    ),
    # Label values that look like names, or hold braces, or a comma.
    (
        'sum(rate(carnet_http_requests_total{method="POST", '
        'route="/appointments/{appointment_id}/cancel", status=~"2..|on"}[1m]))',
        {"carnet_http_requests_total"},
    ),
    # Modifiers after the aggregation, and vector matching.
    (
        "sum(a_total) without (instance) / on (job) group_left (version) carnet_build_info",
        {"a_total", "carnet_build_info"},
    ),
    (
        "max by (projection) (x) > 60 unless on (projection) max by (projection) (y) == bool 1",
        {"x", "y"},
    ),
    # Numbers in every notation, offsets, @, subqueries, functions without arguments.
    (
        "time() - max(ts offset 5m) > 1e3 and deriv(g[10m:1m] @ 1609746000) < -0.5 or vector(Inf)",
        {"ts", "g"},
    ),
    ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
    ('{__name__="carnet_db_pool_size", instance="a"}', {"carnet_db_pool_size"}),
    ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > 0.05", {"h_bucket"}),
    ("count(up{job=~'carnet.*'} == 1) > 0 # a comment naming nothing_total", {"up"}),
    ("recording:rule:name", {"recording:rule:name"}),
]


@pytest.mark.parametrize(("expr", "names"), CASES)
def test_metric_names_are_found_and_nothing_else(expr, names):
    assert metric_names(expr) == names


def test_grafana_variables_become_what_prometheus_receives():
    expr = 'rate(x{instance=~"$instance"}[$__rate_interval]) + increase(y[$__range])'
    assert without_grafana_variables(expr) == 'rate(x{instance=~".*"}[5m]) + increase(y[1h])'


def test_the_tricky_cases_are_valid_promql(tmp_path):
    rules = tmp_path / "cases.yml"
    rules.write_text(as_recording_rules({str(i): expr for i, (expr, _) in enumerate(CASES)}))
    checked = promtool("check", "rules", rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
