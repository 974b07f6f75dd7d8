"""The files operators load: docs/metrics.md matches the code, the Prometheus rules pass
promtool (syntax and unit tests) and have a runbook each, and the rules and the Grafana
dashboard read only metrics angosd defines."""

from __future__ import annotations

import json
import re
import subprocess

from angosd.observability.catalog import families, markdown
from tests.integration.upstreams import require_tool
from tests.promql import DASHBOARD, ROOT, RULES, alert_names, dashboard_expressions, metric_names, rule_expressions

PROMTOOL = "/usr/bin/promtool"


def defined_series() -> set[str]:
    names = set()
    for family in families():
        names.add(family.name)
        if family.kind == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def test_metrics_document_matches_the_code() -> None:
    assert (ROOT / "docs" / "metrics.md").read_text() == markdown(), \
        "docs/metrics.md is out of date: python -m angosd.observability.catalog > docs/metrics.md"


def test_metrics_document_lists_every_family_once() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for family in families():
        assert text.count(f"| `{family.name}` |") == 1


def test_promtool_checks_the_rules() -> None:
    require_tool(PROMTOOL, "prometheus")
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    require_tool(PROMTOOL, "prometheus")
    tested = subprocess.run([PROMTOOL, "test", "rules", str(RULES.with_name("angosd-rules.test.yml"))],
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_unit_tested_and_has_a_runbook() -> None:
    tests = RULES.with_name("angosd-rules.test.yml").read_text()
    operations = (ROOT / "docs" / "operations.md").read_text()
    for alert in alert_names():
        assert f"alertname: {alert}\n" in tests, alert
        assert re.search(rf"^### {alert}\n\n\S", operations, re.M), f"no runbook paragraph for {alert}"
        assert f"docs/operations.md#{alert.lower()}" in RULES.read_text()


def test_rules_read_only_defined_metrics() -> None:
    defined = defined_series()
    for expression in rule_expressions():
        unknown = metric_names(expression) - defined - {"process_start_time_seconds"}
        assert not unknown, (expression, unknown)


def test_dashboard_reads_only_defined_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    standard = {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    used: set[str] = set()
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        used |= names
        assert not names - defined_series() - standard, expression
    for wanted in ("angosd_http_requests_total", "angosd_http_request_duration_seconds_bucket",
                   "angosd_http_request_bytes_total", "angosd_http_response_bytes_total",
                   "angosd_pull_through_hits_total", "angosd_pull_through_misses_total",
                   "angosd_pull_through_stale_served_total", "angosd_storage_filesystem_avail_bytes",
                   "angosd_gc_running", "angosd_uploads_in_progress", "angosd_auth_attempts_total"):
        assert wanted in used, wanted
