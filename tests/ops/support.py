"""What the ops/ tests share: where ops/ is, promtool, and the metric names in PromQL."""

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERTS_TEST = OPS / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = OPS / "prometheus" / "prometheus.yml"
DASHBOARD = OPS / "grafana" / "carnet-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"

MISSING = (
    "{tool} not found: these tests need Debian's `prometheus` package "
    "(`apt-get install --no-install-recommends prometheus`, which `make test` runs as root)"
)


def tool(name: str) -> str:
    """The path of promtool or prometheus, or skip the test saying what to install."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(MISSING.format(tool=name))
    return found


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def load_yaml(path: Path) -> Any:
    return msgspec.yaml.decode(path.read_bytes())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def load_dashboard() -> Any:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


# Grafana's variables, as Prometheus would receive them. `$instance` is a
# regex matcher's value ("All" is `.*`).
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${instance}": ".*",
    "$instance": ".*",
}


def without_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# -- metric names in PromQL ----------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'" r"|`[^`]*`")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+", re.IGNORECASE)
_AT = re.compile(r"@\s*(?:-?[0-9.]+|start\s*\(\s*\)|end\s*\(\s*\))")
# The whole identifier (no backtracking into `rat` of `rate(`), not a function's.
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects.

    Strings, label matchers, ranges and label lists go first (their contents are
    no metric names); what is left are names, keywords, functions (followed by a
    parenthesis) and numbers (the lookbehind keeps `1e3` or `0.5` out).
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _AT.sub(" ", text)
    text = re.sub(r"#[^\n]*", " ", text)  # comments
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS} | set(
        re.findall(r'__name__\s*=\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', expr)
    )


# Series that Prometheus makes, not Carnet.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def as_recording_rules(exprs: dict[str, str]) -> str:
    """A rules file with one recording rule per expression, for `promtool check rules`."""
    rules = [{"record": f"check:{name}", "expr": expr} for name, expr in exprs.items()]
    return msgspec.json.encode({"groups": [{"name": "check", "rules": rules}]}).decode()


# -- what Carnet exports -------------------------------------------------------

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
    "info": ("_info",),
}


def declared_families() -> dict[str, set[str]]:
    """Every metric in this process's registry, with the names of its series, whether
    it has children yet or not (a labelled gauge nobody has set still names its series)."""
    families: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        series = {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        families[family.name] = series | {sample.name for sample in family.samples}
    return families


def declared_names() -> set[str]:
    return {name for series in declared_families().values() for name in series}
