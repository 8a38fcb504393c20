"""ops/prometheus: the alert rules parse, each is complete and unit-tested by
`promtool test rules`, each names only metrics Carnet exports, and each runbook exists."""

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.ops.support import (
    ALERTS,
    ALERTS_TEST,
    OPERATIONS,
    PROMETHEUS_CONFIG,
    PROMETHEUS_SERIES,
    alert_rules,
    load_yaml,
    metric_names,
    promtool,
)

# The issue's list, each with the alert that covers it.
REQUIRED = {
    "5xx ratio": "CarnetHighErrorRatio",
    "p99 over the SLO": "CarnetLatencySLOBreach",
    "projection lag": "CarnetProjectionLagging",
    "stopped projection": "CarnetProjectionStopped",
    "relay stalled": "CarnetRelayStalled",
    "enumeration suspected": "CarnetEnumerationSuspected",
    "ledger chain verification failed": "CarnetLedgerVerificationFailed",
    "database unreachable": "CarnetDatabaseUnreachable",
}


def test_the_alert_rules_pass_promtool_check_rules():
    checked = promtool("check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_every_alert_passes_its_promtool_unit_tests():
    tested = promtool("test", "rules", ALERTS_TEST)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_example_prometheus_config_is_valid_and_loads_the_alerts():
    checked = promtool("check", "config", PROMETHEUS_CONFIG)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"carnet", "carnet-project", "carnet-relay"} <= jobs
    # CarnetTargetDown watches the jobs named carnet*.
    assert all(job.startswith("carnet") for job in jobs)


def test_every_issue_alert_exists_and_each_has_for_a_severity_and_a_runbook():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert len(rules) == len(alert_rules()), "two alerts share a name"
    missing = {need: name for need, name in REQUIRED.items() if name not in rules}
    assert not missing, missing
    for name, rule in rules.items():
        assert re.fullmatch(r"Carnet[A-Z][A-Za-z0-9]+", name), name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == f"docs/operations.md#alert-{name.lower()}", name


def _cases() -> dict[str, dict[str, list[Any]]]:
    """For each alert, the expected alerts of each of its evaluations in the unit tests."""
    found: dict[str, dict[str, list[Any]]] = defaultdict(lambda: {"fires": [], "quiet": []})
    for test in load_yaml(ALERTS_TEST)["tests"]:
        for case in test.get("alert_rule_test", []):
            expected = case.get("exp_alerts") or []
            found[case["alertname"]]["fires" if expected else "quiet"].append(expected)
    return found


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_must_not():
    cases = _cases()
    assert load_yaml(ALERTS_TEST)["rule_files"] == ["alerts.yml"]
    for rule in alert_rules():
        name = rule["alert"]
        assert cases[name]["fires"], f"{name}: no case where it fires"
        assert cases[name]["quiet"], f"{name}: no case where it must not fire"
        for expected in cases[name]["fires"]:
            for alert in expected:
                # promtool compares the whole sets: the test pins every label and annotation.
                assert alert["exp_labels"]["severity"] == rule["labels"]["severity"], name
                assert set(alert["exp_annotations"]) == set(rule["annotations"]), name
    assert set(cases) <= {rule["alert"] for rule in alert_rules()}, "a test of no alert"


def test_the_alerts_name_only_metrics_that_carnet_exports(exported_metrics):
    unknown = {
        rule["alert"]: sorted(metric_names(rule["expr"]) - exported_metrics - PROMETHEUS_SERIES)
        for rule in alert_rules()
    }
    assert not {name: names for name, names in unknown.items() if names}
    assert all(metric_names(rule["expr"]) for rule in alert_rules())


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes for a document's headings (lower case, punctuation
    dropped, spaces to hyphens; a repeated heading gets -1, -2 …), and explicit ids."""
    anchors: set[str] = set()
    seen: dict[str, int] = defaultdict(int)
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_", "", heading.group(1)).lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    anchors |= set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', markdown))
    return anchors


def test_github_anchors_are_made_as_github_makes_them():
    doc = "# Ops\n## Alerts\n### Alert: CarnetDatabaseUnreachable\n```sh\n# not a heading\n```\n"
    doc += "## A `stopped` projection\n## Alerts\n"
    assert github_anchors(doc) == {
        "ops",
        "alerts",
        "alert-carnetdatabaseunreachable",
        "a-stopped-projection",
        "alerts-1",
    }


def test_every_runbook_link_leads_to_a_section_of_docs_operations_md():
    """The anchors are `## Alerts` subsections of docs/operations.md."""
    anchors = github_anchors(OPERATIONS.read_text())
    for rule in alert_rules():
        target, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert Path(target) == OPERATIONS.relative_to(OPERATIONS.parents[1])
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no #{anchor}"
