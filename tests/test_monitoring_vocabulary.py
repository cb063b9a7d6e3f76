"""One severity vocabulary from the incident to the metric, the alert and the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from models.detect.incidents import BASE_SEVERITY, SEVERITIES, severity_of
from models.schema import INCIDENT_TYPES

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


def test_incident_alerts_carry_the_incidents_severity() -> None:
    doc = yaml.safe_load(RULES.read_text())
    seen: set[str] = set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            m = re.search(r'repmon_incidents_open\{type="(\w+)"\}', rule.get("expr", ""))
            if "alert" not in rule or m is None:
                continue
            seen.add(m.group(1))
            assert "by (type, severity)" in rule["expr"], rule["alert"]
            # no severity of its own: the metric's label (the incident's severity) is the page's
            assert "severity" not in rule.get("labels", {}), rule["alert"]
    assert seen == set(INCIDENT_TYPES)
