"""The Grafana dashboard (docs/grafana/cloudq.json) as its tests read it: every panel's query,
Grafana's variables replaced by what Prometheus can run, and the metric names a query uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.cluster.harness import ROOT

DASHBOARD = ROOT / "docs" / "grafana" / "cloudq.json"

# What Grafana puts in place of its variables when it runs a query: windows and the worker
# selector (all workers, as the dashboard's "All" does with its allValue).
VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "worker": ".*"}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]")

# Every word outside label lists and matchers that is not a metric name: PromQL's functions,
# aggregations and keywords.
PROMQL_WORDS = frozenset((
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "histogram_quantile", "abs", "ceil", "floor", "round", "clamp_min", "clamp_max",
    "label_replace", "label_join", "time", "vector", "scalar", "absent", "absent_over_time",
    "sum_over_time", "avg_over_time", "max_over_time", "min_over_time", "count_over_time",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
))


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves left out."""
    for panel in dashboard["panels"]:
        if panel.get("type") != "row":
            yield panel
        yield from (p for p in panel.get("panels", []) if p.get("type") != "row")


def targets(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel."""
    return [(panel["title"], target["refId"], target["expr"])
            for panel in panels(dashboard) for target in panel.get("targets", [])]


def substitute(expr: str) -> str:
    """The query as Grafana would send it to Prometheus."""
    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in VARIABLES, f"{expr}: unknown Grafana variable ${name}"
        return VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a query reads: its words, less strings, label matchers, ranges, the
    label lists of by/on/group_left..., numbers and PromQL's own words."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', substitute(expr))  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range windows
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:.])\d+(\.\d+)?(e[+-]?\d+)?", " ", text)  # numbers, 3.6e6 too
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {word for word in words if word not in PROMQL_WORDS}
