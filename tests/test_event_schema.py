"""docs/events.schema.json agrees with the ingest pipeline and the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.classify.context import _PHASE_ALIASES, DSN_ACTIONS, SMTP_PHASES
from models.ingest.pipeline import Pipeline
from models.ingest.validate import IGNORED, reply_context
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
    # the reply context, in the documented spellings (any case), or blank
    *(
        {
            "event": "bounced",
            "timestamp": BASE,
            "recipient": "a@gmail.com",
            "smtp_code": 550,
            "response": "550 User unknown",
            "smtp_command": cmd,
            "dsn_action": act,
        }
        for cmd, act in (
            ("DATA", "failed"),
            ("RCPT TO", "Failed (permanent)"),
            ("rcpt", "EXPIRED"),
            ("end of DATA", "delayed"),
            ("after DATA", ""),
            ("MAIL FROM:", " "),
            ("ehlo", "relayed"),
            ("", "expanded"),
            (" ", "delivered"),
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


#: fail the schema, accepted by ingest: the reply context is optional, ingest ignores a value it
#: does not recognise (counted per field in ``ignored_fields``) and keeps the event
LENIENT: list[tuple[dict[str, Any], dict[str, int]]] = [
    ({"smtp_command": "STARTTLS"}, {"smtp_command": 1, "dsn_action": 0}),
    ({"smtp_command": "BDAT"}, {"smtp_command": 1, "dsn_action": 0}),
    ({"smtp_command": "RCPT TO:<a@gmail.com>"}, {"smtp_command": 1, "dsn_action": 0}),
    ({"smtp_command": ":"}, {"smtp_command": 1, "dsn_action": 0}),
    ({"smtp_command": 25}, {"smtp_command": 1, "dsn_action": 0}),
    ({"smtp_command": ["RCPT"]}, {"smtp_command": 1, "dsn_action": 0}),
    ({"smtp_command": "RCPT" * 1100}, {"smtp_command": 1, "dsn_action": 0}),
    ({"dsn_action": "bounced"}, {"smtp_command": 0, "dsn_action": 1}),
    ({"dsn_action": "failed\tpermanently"}, {"smtp_command": 0, "dsn_action": 1}),
    ({"dsn_action": True}, {"smtp_command": 0, "dsn_action": 1}),
    ({"smtp_command": "quit", "dsn_action": "gone"}, {"smtp_command": 1, "dsn_action": 1}),
]


@pytest.mark.parametrize("ev", GOOD)
def test_good_events_pass_schema_and_pipeline(ev: dict[str, Any]) -> None:
    assert VALIDATOR.is_valid(ev)
    p = Pipeline(TableClassifier(), normalize=str.lower)
    assert p.feed_obj(ev) is None
    assert not any(p.stats.ignored_fields.values())  # the schema's context ingest recognises


@pytest.mark.parametrize("ev", BAD)
def test_bad_events_fail_schema_and_pipeline(ev: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(ev)
    assert Pipeline(TableClassifier(), normalize=str.lower).feed_obj(ev) is not None


@pytest.mark.parametrize(("fields", "ignored"), LENIENT, ids=lambda v: json.dumps(v)[:40])
def test_unrecognised_context_fails_schema_but_is_accepted(
    fields: dict[str, Any], ignored: dict[str, int]
) -> None:
    ev = {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", **fields}
    assert not VALIDATOR.is_valid(ev)
    p = Pipeline(TableClassifier(), normalize=str.lower)
    assert p.feed_obj(ev) is None
    assert p.stats.accepted == 1 and p.stats.ignored_fields == ignored


def _variants(word: str) -> list[str]:
    return [word, word.lower(), word.upper(), word.title(), f" {word}\t", f"{word}:"]


def _context_valid(name: str, value: str) -> bool:
    return VALIDATOR.is_valid(
        {"event": "bounced", "timestamp": BASE, "recipient": "a@gmail.com", name: value}
    )


def test_schema_accepts_every_spelling_ingest_documents() -> None:
    """The schema's spellings are the classifier's (models.classify.context), in any case."""
    for alias, phase in _PHASE_ALIASES.items():
        for v in _variants(alias):
            assert _context_valid("smtp_command", v), v
            assert reply_context("smtp_command", v) == phase, v
    for phase in SMTP_PHASES:
        assert phase in SCHEMA["properties"]["smtp_command"]["description"]
    for action in DSN_ACTIONS:
        for v in [*_variants(action)[:-1], f"{action} (comment)", f"{action}(x)"]:
            assert _context_valid("dsn_action", v), v
            assert reply_context("dsn_action", v) == action, v
        assert action in SCHEMA["properties"]["dsn_action"]["description"]


_PHASE_TEXT = st.text(
    st.sampled_from(sorted(set("".join(_PHASE_ALIASES)) | set("aceilmnorstx :\t\n-./"))),
    max_size=14,
)
_ACTION_TEXT = st.text(st.sampled_from(sorted(set("".join(DSN_ACTIONS)) | set("FX ()\t\n"))))


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        _PHASE_TEXT,
        st.sampled_from(sorted(_PHASE_ALIASES)).flatmap(
            lambda a: st.tuples(_PHASE_TEXT, _PHASE_TEXT).map(lambda t: t[0] + a + t[1])
        ),
    ),
    st.one_of(
        _ACTION_TEXT,
        st.sampled_from(DSN_ACTIONS).flatmap(
            lambda a: st.tuples(_ACTION_TEXT, _ACTION_TEXT).map(lambda t: t[0] + a + t[1])
        ),
    ),
)
def test_schema_and_ingest_agree_on_ascii_context(command: str, action: str) -> None:
    """For ASCII text the schema accepts exactly what ingest recognises (or blank)."""
    for name, v in (("smtp_command", command), ("dsn_action", action)):
        assert _context_valid(name, v) == (reply_context(name, v) is not IGNORED), (name, v)
