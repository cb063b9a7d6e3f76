"""The scoring of bench/evaluate.py: detection, right scope (issue 11), targets."""

from __future__ import annotations

from typing import Any

import pytest

from bench.evaluate import (
    GRACE_S,
    RUNS,
    TARGET_DELAY_ISSUE11,
    RunResult,
    ScopeVerdict,
    _match,
    better,
    meets_issue11,
    right_scope,
    summarise,
)
from models.sim.simulator import SCENARIOS

ACT = "ip:203.0.113.6|provider:google"
TRUTH: dict[str, Any] = {
    "type": "rate_limited",
    "scopes": [ACT, "ip:203.0.113.6", "provider:google"],
    "act_scope": ACT,
    "onset": 1000.0,
    "end": 4000.0,
}


def inc(
    scope: str, at: float, type_: str = "rate_limited", widened_from: tuple[str, ...] = ()
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"{type_}/{scope}/{int(at)}",
        "type": type_,
        "scope": scope,
        "opened_at": at,
        "evidence": {},
    }
    if widened_from:
        out["widened_from"] = list(widened_from)
    return out


PART = "ip:203.0.113.6|provider:google"
WIDE_ACT = "ip:203.0.113.6"
WIDE_TRUTH: dict[str, Any] = {**TRUTH, "act_scope": WIDE_ACT}


@pytest.mark.parametrize(
    ("incidents", "first", "right", "delay", "act_delay"),
    [
        # no incident at all, or none of the type, or none in the window: not judged
        ([], None, None, None, None),
        ([inc(ACT, 1100.0, "block")], None, None, None, None),
        ([inc(ACT, 900.0)], None, None, None, None),  # before the onset
        ([inc(ACT, 4000.0 + GRACE_S + 1.0)], None, None, None, None),  # after end + grace
        # the first incident of the type decides
        ([inc(ACT, 1060.0)], ACT, True, 60.0, 60.0),
        ([inc("provider:google", 1300.0)], "provider:google", False, 300.0, None),
        (
            [inc(ACT, 1500.0), inc("provider:google", 1200.0)],
            "provider:google",
            False,
            200.0,
            500.0,
        ),
        # a wrong scope that is not even acceptable still makes the detection wrong
        (
            [inc("pool:dedicated-acme", 1100.0), inc(ACT, 1200.0)],
            "pool:dedicated-acme",
            False,
            100.0,
            200.0,
        ),
        # incidents of other types before it do not count
        (
            [inc("provider:google", 1010.0, "provider_outage"), inc(ACT, 1090.0)],
            ACT,
            True,
            90.0,
            90.0,
        ),
        # end + grace is inside the window
        ([inc(ACT, 4000.0 + GRACE_S)], ACT, True, 3000.0 + GRACE_S, 3000.0 + GRACE_S),
    ],
)
def test_right_scope(
    incidents: list[dict[str, Any]],
    first: str | None,
    right: bool | None,
    delay: float | None,
    act_delay: float | None,
) -> None:
    v = right_scope(incidents, TRUTH)
    assert v == ScopeVerdict(ACT, first, delay, first, right, act_delay)


@pytest.mark.parametrize(
    ("incidents", "final", "right", "act_delay"),
    [
        # the part opened first and was widened into the act scope: right, named at 1200
        (
            [inc(PART, 1060.0), inc(WIDE_ACT, 1200.0, widened_from=(f"rate_limited/{PART}/1060",))],
            WIDE_ACT,
            True,
            200.0,
        ),
        # the act scope opened later on its own, without widening: the part stays the answer
        ([inc(PART, 1060.0), inc(WIDE_ACT, 1200.0)], PART, False, 200.0),
        # widened into a scope that is not the act scope
        (
            [
                inc(PART, 1060.0),
                inc("provider:google", 1200.0, widened_from=(f"rate_limited/{PART}/1060",)),
            ],
            "provider:google",
            False,
            None,
        ),
    ],
)
def test_right_scope_follows_widening(
    incidents: list[dict[str, Any]], final: str, right: bool, act_delay: float | None
) -> None:
    v = right_scope(incidents, WIDE_TRUTH)
    assert v == ScopeVerdict(WIDE_ACT, PART, 60.0, final, right, act_delay)


def test_right_scope_open_ended_truth() -> None:
    truth = {**TRUTH, "end": None}  # until the end of the run
    assert right_scope([inc(ACT, 1e9)], truth).right is True


def test_right_scope_defaults_to_the_first_acceptable_scope() -> None:
    truth = {k: v for k, v in TRUTH.items() if k != "act_scope"}
    assert right_scope([inc(ACT, 1100.0)], truth).right is True
    assert right_scope([inc("ip:203.0.113.6", 1100.0)], truth).right is False


@pytest.mark.parametrize(
    ("verdict", "target", "met"),
    [
        (ScopeVerdict(ACT, ACT, 120.0, ACT, True, 120.0), 180.0, True),
        (ScopeVerdict(ACT, ACT, 180.0, ACT, True, 180.0), 180.0, True),
        (ScopeVerdict(ACT, ACT, 181.0, ACT, True, 181.0), 180.0, False),  # too late
        # wrong scope
        (ScopeVerdict(ACT, "provider:google", 60.0, "provider:google", False, None), 180.0, False),
        (ScopeVerdict(ACT, None, None, None, None, None), 180.0, False),  # missed
        (ScopeVerdict(ACT, ACT, 5000.0, ACT, True, 5000.0), None, True),  # no delay target
        # widened into the act scope: the time the act scope opened counts
        (ScopeVerdict(ACT, "x", 60.0, ACT, True, 170.0), 180.0, True),
        (ScopeVerdict(ACT, "x", 60.0, ACT, True, 200.0), 180.0, False),
    ],
)
def test_meets_issue11(verdict: ScopeVerdict, target: float | None, met: bool) -> None:
    assert meets_issue11(verdict, target) is met


def test_issue11_targets() -> None:
    assert TARGET_DELAY_ISSUE11["rate_limited"] == 180.0
    assert TARGET_DELAY_ISSUE11["block"] == 180.0
    assert TARGET_DELAY_ISSUE11["auth_failure"] == 180.0
    assert TARGET_DELAY_ISSUE11["complaint_spike"] == 900.0


def test_match_counts_wrong_types_and_scopes_as_false_alarms() -> None:
    alarms = [inc("provider:google", 1100.0), inc("sender:x", 1100.0, "block"), inc(ACT, 1200.0)]
    delays, n_false, false = _match(alarms, [TRUTH], typed=True)
    assert delays == [100.0]  # provider:google is an acceptable scope for the detection
    assert n_false == 1 and false[0]["scope"] == "sender:x"


def _result(name: str, truth: list[dict[str, Any]], monitor: list[dict[str, Any]]) -> RunResult:
    return RunResult(name, name, 8 / 24, 0, 0.0, truth, monitor=monitor)


def test_summary_reports_right_scope_and_issue11_targets() -> None:
    quiet = _result("normal", [], [])
    quiet.days = 1.0
    good = _result("good", [TRUTH], [inc(ACT, 1120.0)])
    wide = _result("wide", [TRUTH], [inc("provider:google", 1060.0)])
    table, summary = summarise([quiet, good, wide])
    assert "ip:203.0.113.6\\|provider:google" in table  # escaped in markdown cells
    assert "| good | rate_limited @ ip:203.0.113.6\\|provider:google | 2.0 min | yes |" in table
    assert "no (provider:google)" in table
    v = {x["run"]: x for x in summary["verdicts"]}
    assert v["good"]["right_scope"] is True and v["good"]["meets_issue11"] is True
    assert v["wide"]["right_scope"] is False and v["wide"]["meets_issue11"] is False
    assert v["wide"]["delay_s"] == 60.0  # detected (an acceptable scope), on the wrong one
    i11 = summary["issue11"]
    assert (i11["right_scope"], i11["truth_entries"], i11["within_target"]) == (1, 2, 1)
    assert i11["false_alarms_per_day_met"] is True and i11["all_targets_met"] is False
    good_only, s2 = summarise([quiet, good])
    assert s2["issue11"]["all_targets_met"] is True
    del good_only


def test_summary_false_alarm_target() -> None:
    fa = _result("normal", [], [inc("provider:yahoo", 5000.0, "complaint_spike")])
    fa.days = 1.0
    _, summary = summarise([fa])
    assert summary["false_alarms_per_day"]["repmon"] == 1.0
    assert summary["issue11"]["false_alarms_per_day_met"] is False


def test_runs_cover_the_issue11_scenarios() -> None:
    names = {r[0]: r for r in RUNS}
    for sc in (
        "ip-rate-limited-gmail",
        "pool-blocked-yahoo",
        "sender-auth-microsoft-ramp",
        "campaign-complaints-one-provider",
    ):
        assert names[sc][1] == sc and names[sc][2] == 8.0
    assert names["normal-24h-gmail-no-fbl"][2] == 24.0
    assert {r[1] for r in RUNS} <= set(SCENARIOS)


@pytest.mark.parametrize(
    ("mine", "my_fa", "my_day", "other", "other_fa", "other_day", "want"),
    [
        (None, 0, 0.0, None, 0, 0.0, False),  # repmon missed
        (60.0, 0, 0.0, None, 0, 0.0, True),  # the baseline missed
        (60.0, 3, 5.0, 120.0, 0, 0.0, True),  # faster
        (120.0, 0, 0.0, 60.0, 2, 0.0, True),  # slower, fewer false alarms in the run
        (120.0, 0, 0.0, 60.0, 0, 30.0, False),  # slower, as clean in the run
        (60.0, 0, 0.3, 60.0, 0, 34.4, True),  # a tie goes to fewer false alarms overall
        (60.0, 0, 0.3, 60.0, 0, 0.3, False),  # a tie with as many is not better
        (60.0, 1, 0.3, 60.0, 1, 0.1, False),
    ],
)
def test_better_than_a_baseline(
    mine: float | None,
    my_fa: int,
    my_day: float,
    other: float | None,
    other_fa: int,
    other_day: float,
    want: bool,
) -> None:
    assert better(mine, my_fa, my_day, other, other_fa, other_day) is want
