"""``repmon run``'s summary: the line-based form (output not a terminal) says each incident
change once, with its rate against baseline, top reply and throttle; the event-time lag is
explained."""

from __future__ import annotations

from typing import Any

import pytest

from streams.cli.run import incident_cells, lag_text, plain_lines

STATUS = {"ingest": {"accepted": 1234, "rejected": {"bad_json": 2}}, "rollup": {"watermark": 1e9}}


def _inc(closed: float | None = None) -> dict[str, Any]:
    return {
        "id": "provider_outage/provider:yahoo/999990000",
        "type": "provider_outage",
        "scope": "provider:yahoo",
        "severity": "critical",
        "opened_at": 999_990_000.0,
        "closed_at": closed,
        "evidence": {"rate": 0.62, "baseline": 0.011, "top_replies": [["421 4.7.0 [TS01]", 40]]},
    }


def test_each_change_is_said_once() -> None:
    known: dict[str, str] = {}
    thr = {"provider:yahoo": {"state": "throttled", "rate_factor": 0.25}}
    first = plain_lines(STATUS, [_inc()], thr, known)
    assert "accepted 1,234 rejected 2" in first[0] and "throttled scopes 1" in first[0]
    assert len(first) == 2 and first[1].split(" ", 1)[1].startswith("OPENED provider_outage")
    assert "62.00% vs 1.10%" in first[1] and "[TS01]" in first[1] and "throttled x0.25" in first[1]
    assert len(plain_lines(STATUS, [_inc()], thr, known)) == 1  # nothing new
    closed = plain_lines(STATUS, [_inc(closed=999_999_000.0)], {}, known)
    assert len(closed) == 2 and " CLOSED provider_outage on provider:yahoo" in closed[1]
    assert plain_lines(None, [], {}, {})[0].endswith("waiting for the worker ...")


@pytest.mark.parametrize(
    ("lag_s", "says"),
    [(0.0, "0 s behind"), (90.0, "90 s behind"), (6 * 3600.0, "360 min behind the wall clock: ")],
)
def test_lag_is_explained(lag_s: float, says: str) -> None:
    assert says in lag_text(1e9 - lag_s, 1e9)


def test_incident_cells_without_evidence() -> None:
    cells = incident_cells({"type": "block", "scope": "ip:x", "severity": "warning"}, {})
    assert cells[4] == "- vs -" and cells[5] == "-" and cells[6] == "-"
