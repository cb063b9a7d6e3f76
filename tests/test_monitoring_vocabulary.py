"""One severity vocabulary from the incident to the metric, the alert and the page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.detect.incidents import BASE_SEVERITY, SEVERITIES, severity_of
from models.schema import INCIDENT_TYPES
from streams.worker.metrics import Metrics

RULES = Path(__file__).resolve().parents[1] / "deploy/prometheus/rules/repmon.yml"


def test_every_incident_type_has_a_severity_of_the_vocabulary() -> None:
    assert set(BASE_SEVERITY) == set(INCIDENT_TYPES)
    assert set(BASE_SEVERITY.values()) <= set(SEVERITIES)


@pytest.mark.parametrize(
    ("type_", "rate", "critical_rate", "want"),
    [
        ("block", 0.01, 0.3, "critical"),  # a block pages whatever its rate
        ("provider_outage", 0.2, 0.5, "critical"),
        ("rate_limited", 0.2, 0.3, "warning"),
        ("rate_limited", 0.3, 0.3, "critical"),  # 30 % of attempts throttled: raised to critical
        ("complaint_spike", 0.002, 0.003, "warning"),
        ("complaint_spike", 0.004, 0.003, "critical"),  # past Gmail's 0.3 % line
        ("hard_bounce_spike", 0.05, 0.1, "warning"),
    ],
)
def test_severity_of(type_: str, rate: float, critical_rate: float, want: str) -> None:
    assert severity_of(type_, rate, critical_rate) == want


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def incident_alerts() -> dict[str, dict[str, Any]]:
    """incident type -> its alerting rule (the rule over repmon_incident_open_info{type=...})."""
    out: dict[str, dict[str, Any]] = {}
    for rule in rules():
        m = re.search(r'repmon_incident_open_info\{type="(\w+)"\}', rule.get("expr", ""))
        if "alert" in rule and m is not None:
            assert m.group(1) not in out, f"two alerts for {m.group(1)}"
            out[m.group(1)] = rule
    return out


def test_incident_alerts_carry_the_incidents_severity() -> None:
    alerts = incident_alerts()
    assert set(alerts) == set(INCIDENT_TYPES)
    for rule in alerts.values():
        # no severity of its own: the metric's label (the incident's severity) is the page's
        assert "severity" not in rule.get("labels", {}), rule["alert"]
        assert "severity" in by_labels(rule["expr"]), rule["alert"]


def by_labels(expr: str) -> list[str]:
    m = re.search(r"sum by \(([^)]*)\)", expr)
    assert m is not None, expr
    return [x.strip() for x in m.group(1).split(",")]


def test_incident_alerts_page_per_scope_with_the_exported_labels() -> None:
    """One alert per open incident: the alerts keep every label the worker exports on
    repmon_incident_open_info (and job, for the inhibition), never instance (a scope moving to
    another worker stays the same alert)."""
    m = Metrics()
    exported = list(m.incident_info._labelnames)
    assert exported == ["type", "severity", "scope_kind", "provider", "scope"]
    for rule in incident_alerts().values():
        assert by_labels(rule["expr"]) == ["job", *exported], rule["alert"]
        assert "instance" not in rule["expr"], rule["alert"]
    # the queries of the annotations select on labels these series have
    assert set(m.incident_rate._labelnames) == {*exported, "value"}
    assert {"state", "scope"} <= set(m.throttle_factor._labelnames)


def test_incident_alerts_annotations() -> None:
    for rule in incident_alerts().values():
        ann = rule["annotations"]
        name = rule["alert"]
        assert {
            "summary",
            "description",
            "runbook_url",
            "scope",
            "evidence",
            "action",
            "throttle",
        } <= set(ann), name
        assert "repmon_incident_rate_ratio" in ann["evidence"], name
        assert "humanizePercentage" in ann["evidence"], name
        assert "repmon_throttle_factor_ratio" in ann["throttle"], name
        assert "not throttled" in ann["throttle"], name
        # the overflow series pages too and says where the unlisted incidents are
        for key in ("summary", "scope", "description"):
            assert '$labels.scope "other"' in ann[key], (name, key)
        assert "GET /incidents?state=open" in ann["description"], name
        assert ann["runbook_url"].endswith("#" + name.lower()), name


def test_the_overflow_is_the_series_the_rules_expect() -> None:
    """The cap's overflow is one series per type and severity with scope="other" (the rules
    branch on it) and the number of incidents as its value (the page says how many)."""
    m = Metrics(max_incidents=1)
    m.observe_incidents(
        [
            {
                "type": "block",
                "severity": "critical",
                "scope": "ip:192.0.2.1",
                "opened_at": 3.0,
                "evidence": {"rate": 0.3, "baseline": 0.002},
            },
            {"type": "block", "severity": "critical", "scope": "ip:192.0.2.2", "opened_at": 2.0},
            {
                "type": "block",
                "severity": "critical",
                "scope": "pool:p|provider:google",
                "opened_at": 1.0,
            },
        ]
    )
    got = {
        s.labels["scope"]: (s.labels, s.value)
        for fam in m.incident_info.collect()
        for s in fam.samples
    }
    assert got["other"] == (
        {
            "type": "block",
            "severity": "critical",
            "scope_kind": "other",
            "provider": "other",
            "scope": "other",
        },
        2.0,
    )
    assert got["ip:192.0.2.1"][0]["provider"] == "any"


def test_alert_severities_are_of_the_vocabulary() -> None:
    for rule in rules():
        if "alert" in rule and "severity" in rule.get("labels", {}):
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
