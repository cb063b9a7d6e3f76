"""docs/events.schema.json agrees with the ingest pipeline and the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from models.ingest.pipeline import Pipeline
from models.sim.simulator import SimConfig, Simulator
from tests.test_pipeline import BASE, TableClassifier

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "events.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_simulator_output_conforms() -> None:
    sim = Simulator(SimConfig(seed=5, duration_s=1800, rate=10, scenario="mixed"))
    n = 0
    for ev in sim.iter_events():
        errors = list(VALIDATOR.iter_errors(ev))
        assert not errors, (ev, errors[0].message)
        n += 1
    assert n > 1000


GOOD: list[dict[str, Any]] = [
    {"event": "sent", "timestamp": BASE, "recipient": "a@gmail.com"},
    {
        "event": "bounced",
        "timestamp": "2026-11-22T00:00:00Z",
        "recipient_domain": "corp.example",
        "smtp_code": 550,
        "enhanced_code": "5.1.1",
        "response": "550 5.1.1 user unknown",
    },
    {
        "event": "complained",
        "timestamp": BASE,
        "recipient": "a@yahoo.com",
        "feedback_type": "abuse",
        "x_extra": {"anything": 1},
    },
]
BAD: list[dict[str, Any]] = [
    {"timestamp": BASE, "recipient": "a@gmail.com"},
    {"event": "sent", "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": BASE},
    {"event": "teleported", "timestamp": BASE, "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": True, "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": 12, "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": BASE, "recipient": "no-at-sign"},
    {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", "smtp_code": "550"},
    {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", "smtp_code": 999},
    {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", "enhanced_code": "5.1"},
    {"event": "sent", "timestamp": BASE, "recipient": "a@gmail.com", "campaign": 7},
]


@pytest.mark.parametrize("ev", GOOD)
def test_good_events_pass_schema_and_pipeline(ev: dict[str, Any]) -> None:
    assert VALIDATOR.is_valid(ev)
    assert Pipeline(TableClassifier(), normalize=str.lower).feed_obj(ev) is None


@pytest.mark.parametrize("ev", BAD)
def test_bad_events_fail_schema_and_pipeline(ev: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(ev)
    assert Pipeline(TableClassifier(), normalize=str.lower).feed_obj(ev) is not None
