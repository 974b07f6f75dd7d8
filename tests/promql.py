"""The metric names a PromQL expression reads (for checks of rules and dashboards)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "etc" / "prometheus" / "angosd-rules.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "angosd-dashboard.json"
_MATCHERS = re.compile(r"\{[^}]*\}")
_NAME = re.compile(r"\b((?:angosd|process|python)_[a-zA-Z0-9_]+)\b")


def metric_names(expression: str) -> set[str]:
    """The exported series an expression selects (label matchers and values ignored)."""
    return set(_NAME.findall(_MATCHERS.sub("", expression)))


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    found += [variable["query"]["query"] for variable in dashboard["templating"]["list"]
              if isinstance(variable.get("query"), dict)]
    return found


def series_names(exposition: str) -> set[str]:
    """Every series name of a text exposition (``_bucket``/``_sum``/``_count`` included)."""
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in exposition.splitlines()
            if line and not line.startswith("#")}
