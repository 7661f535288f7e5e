"""Every PromQL expression that ops will run: Grafana dashboards, alert and recording rules.

`all_expressions()` gives them ready to send to Prometheus: Grafana template variables are
replaced (`$channel` by `.*`, an interval variable by its current value, `$__rate_interval`
and `$__interval` by `1m`, `$__range` by `1h`). `metric_names()` lists the metric names an
expression reads, so tests can hold dashboards to the metrics the engine exposes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "targets.yml", PROMETHEUS_DIR / "alerts.yml")

# Grafana's own variables, with values that make a sensible query.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)")
_KEYWORDS = {
    "and", "or", "unless", "atan2", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan",
}  # fmt: skip


@dataclass(frozen=True)
class Expression:
    source: str  # where it comes from, e.g. "pipeline-health.json: panel 'Events / s' A"
    raw: str  # as written
    expr: str  # ready for Prometheus


class UndefinedVariable(ValueError):
    pass


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_variables(dashboard: dict) -> dict[str, str]:
    """Variable name -> the text that stands in for it in a query."""
    values = dict(BUILTIN_VARIABLES)
    for var in dashboard.get("templating", {}).get("list", []):
        kind, name = var.get("type"), var["name"]
        if kind in ("query", "adhoc"):
            values[name] = ".*"  # used as a regex matcher: channel=~"$channel"
        elif kind in ("interval", "custom", "constant", "textbox"):
            current = var.get("current", {}).get("value")
            if isinstance(current, list):
                current = current[0] if current else None
            if not current or current == "$__all":
                options = [o.strip() for o in str(var.get("query", "")).split(",") if o.strip()]
                current = options[0] if options else ""
            values[name] = str(current)
        elif kind == "datasource":
            values[name] = "prometheus"
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            raise UndefinedVariable(f"${name} is not a variable of this dashboard (in {expr!r})")
        return variables[name]

    return _VARIABLE.sub(replace, expr)


def dashboard_expressions(path: Path) -> Iterator[Expression]:
    dashboard = load_dashboard(path)
    variables = dashboard_variables(dashboard)
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query" and isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            match = _LABEL_VALUES.match(query)
            if match:  # label_values(SELECTOR, label): the selector is PromQL
                yield Expression(f"{path.name}: variable {var['name']}", query, substitute(match.group(1), variables))
            elif not query.startswith(("label_names(", "metrics(", "label_values(")):
                yield Expression(f"{path.name}: variable {var['name']}", query, substitute(query, variables))
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            raw = target.get("expr")
            if raw:
                source = f"{path.name}: panel {panel.get('title', panel.get('id'))!r} {target.get('refId', '')}"
                yield Expression(source.strip(), raw, substitute(raw, variables))


def rule_expressions(path: Path) -> Iterator[Expression]:
    for group in yaml.safe_load(path.read_text()).get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            yield Expression(f"{path.name}: {group['name']}/{name}", rule["expr"], rule["expr"])


def all_expressions() -> list[Expression]:
    found: list[Expression] = []
    for path in dashboard_files():
        found.extend(dashboard_expressions(path))
    for path in RULE_FILES:
        found.extend(rule_expressions(path))
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels or keywords).

    A lexical approximation that is enough for the expressions in this repository: strings,
    label matchers, ranges and grouping clauses are removed first; what is left that is not
    followed by `(` and not a keyword is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(1)
        if text[match.end() :].lstrip().startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
