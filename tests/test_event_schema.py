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
    # smtp_code as three digits; blank optional strings are absent
    {"event": "deferred", "timestamp": BASE, "recipient": "a@gmail.com", "smtp_code": "451"},
    {
        "event": "bounced",
        "timestamp": BASE,
        "recipient": "a@gmail.com",
        "recipient_domain": "",
        "message_id": "",
        "smtp_code": "",
        "enhanced_code": " ",
        "pool": "",
        "tenant": " ",
        "campaign": "\t",
        "sender_domain": "",
        "response": "",
    },
    {"event": "sent", "timestamp": BASE, "recipient": "", "recipient_domain": "corp.example"},
    # RFC 3339 as documented
    *(
        {"event": "sent", "timestamp": ts, "recipient": "a@gmail.com"}
        for ts in (
            "2026-11-22t00:00:00z",
            "2026-11-22 00:00:00Z",
            "2026-11-22T01:00:00.123456789+01:00",
            "2026-11-21T19:00:00-05:00",
            "2026-11-21T23:59:60Z",
        )
    ),
]
BAD: list[dict[str, Any]] = [
    {"timestamp": BASE, "recipient": "a@gmail.com"},
    {"event": "sent", "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": BASE},
    {"event": "teleported", "timestamp": BASE, "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": True, "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": 12, "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": BASE, "recipient": "no-at-sign"},
    {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", "smtp_code": 999},
    {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", "enhanced_code": "5.1"},
    {"event": "sent", "timestamp": BASE, "recipient": "a@gmail.com", "campaign": 7},
    *(
        {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", "smtp_code": code}
        for code in ("55O", "45", "4510", " 451 ", "451\n", "999", "099", "\u0664\u0665\u0661")
    ),
    *(
        {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", "enhanced_code": e}
        for e in ("5.1.1\n", "5.\u0661.1", " 5.1.1")
    ),
    *(
        {"event": "sent", "timestamp": ts, "recipient": "a@gmail.com"}
        for ts in (
            "2026-11-22",
            "20261122T000000Z",
            "2026-W47-7T00:00:00Z",
            "2026-11-22T00:00:00",
            "2026-11-22 00:00:00",
            "2026-11-22T00:00:00+0100",
            "2026-11-22T00:00:00Z\n",
            "1795305600",
            "",
        )
    ),
    {"event": "sent", "timestamp": BASE, "recipient": ""},
    {"event": "sent", "timestamp": BASE, "recipient": " ", "recipient_domain": "\t"},
    {"event": "", "timestamp": BASE, "recipient": "a@gmail.com"},
]


@pytest.mark.parametrize("ev", GOOD)
def test_good_events_pass_schema_and_pipeline(ev: dict[str, Any]) -> None:
    assert VALIDATOR.is_valid(ev)
    assert Pipeline(TableClassifier(), normalize=str.lower).feed_obj(ev) is None


@pytest.mark.parametrize("ev", BAD)
def test_bad_events_fail_schema_and_pipeline(ev: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(ev)
    assert Pipeline(TableClassifier(), normalize=str.lower).feed_obj(ev) is not None
