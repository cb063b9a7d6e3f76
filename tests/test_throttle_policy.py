"""Throttle policy (models/act/): controller transitions, its invariants (hypothesis), the
configuration's validation, the record format and the most-restrictive-wins lookup."""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.act.throttle import Observation, ThrottleController, observations_of
from models.act.throttle_config import (
    DEFAULTS,
    ThrottleConfig,
    ThrottleConfigError,
    default_config,
    load_config,
    loads_config,
    max_ramp_s,
    parse_config,
    provider_of,
    ramp_factor,
    ramp_steps,
    scope_kind_of,
)
from models.act.throttle_record import (
    RECORD_KEYS,
    STATE_RANK,
    RecordError,
    ThrottleRecord,
    effective_factor,
    message_scopes,
    most_restrictive,
)
from models.detect.incidents import Incident, IncidentChange, incident_id
from models.state.snapshot import SnapshotError, decode, encode
from tests.conftest import REPO

T0 = 1_794_794_400.0  # a detector run time (multiple of 60)
MIN = 60.0
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


# ------------------------------------------------------------------------------ a small driver
@dataclass
class Run:
    """Feeds a controller minute by minute like the Monitor side would: changes of the run,
    then one observation per open incident."""

    config: ThrottleConfig | None = None
    ctl: ThrottleController = field(init=False)
    incidents: dict[str, Incident] = field(default_factory=dict)  # name -> open incident
    hot: dict[str, bool] = field(default_factory=dict)
    rate: dict[str, float | None] = field(default_factory=dict)
    records: list[ThrottleRecord] = field(default_factory=list)
    pending: list[IncidentChange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ctl = ThrottleController(self.config)

    def open(
        self,
        t: float,
        name: str,
        type_: str,
        scope: str,
        severity: str = "warning",
        rate: float | None = None,
    ) -> None:
        ev: dict[str, Any] = {} if rate is None else {"rate": rate}
        inc = Incident(incident_id(type_, scope, t), type_, scope, t, severity, ev, last_hot=t)
        self.incidents[name] = inc
        self.hot[name] = True
        self.rate[name] = rate
        self.pending.append(IncidentChange.of("opened", inc))

    def close(self, t: float, name: str) -> None:
        inc = self.incidents.pop(name)
        inc.closed_at = t
        self.pending.append(IncidentChange.of("closed", inc))

    def tick(self, t: float) -> list[ThrottleRecord]:
        for name, inc in self.incidents.items():
            if self.hot[name]:
                inc.last_hot = t
        rates = {
            inc.id: r for name, inc in self.incidents.items() if (r := self.rate[name]) is not None
        }
        obs = observations_of(self.incidents.values(), t, rates)
        out = self.ctl.step(t, self.pending, obs)
        self.pending = []
        self.records.extend(out)
        return out


def reversals(records: list[ThrottleRecord], scope: str) -> int:
    """Decreases of the factor that follow an increase (refreshes do not move it)."""
    n, last, prev = 0, 0, 1.0
    for r in records:
        if r.scope != scope:
            continue
        d = r.rate_factor - prev
        if d < -1e-9:
            if last > 0:
                n += 1
            last = -1
        elif d > 1e-9:
            last = 1
        prev = r.rate_factor
    return n


# ------------------------------------------------------------------------------ transitions
IP_G = "ip:203.0.113.6|provider:google"
CASES: list[dict[str, Any]] = [
    {
        "id": "outage: cut, persist, pause at the floor, ramp back (doubling) while open",
        "incidents": {"o": ("provider_outage", "provider:yahoo", "critical")},
        "script": [
            (0, "open", "o", 0.6),
            (1, "hot", "o", 0.7),
            (20, "cold", "o", 0.05),
            (30, "close", "o", None),
        ],
        "horizon": 40,
        "expect": [
            (0, "throttled", 0.25, "opened"),
            (3, "throttled", 0.1, "persists"),
            (6, "paused", 0.05, "persists"),
            (21, "recovering", 0.25, "healthy"),
            (23, "recovering", 0.5, "ramp"),
            (25, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "rate limit: proportional cut, no cut while improving, first test at retest_after_s",
        "incidents": {"r": ("rate_limited", IP_G, "warning")},
        "script": [
            (0, "open", "r", 0.4),
            (1, "hot", "r", 0.4),
            (6, "hot", "r", 0.1),
            (12, "cold", "r", 0.0),
        ],
        "horizon": 40,
        "expect": [
            (0, "throttled", 0.5, "opened"),
            (5, "throttled", 0.3, "persists"),
            (20, "recovering", 0.45, "healthy"),
            (25, "recovering", 0.675, "ramp"),
            (30, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "rate limit: a rate that stops falling while hot is cut in the next period",
        "incidents": {"r": ("rate_limited", IP_G, "warning")},
        "script": [(0, "open", "r", 0.4), (1, "hot", "r", 0.4), (6, "hot", "r", 0.2)],
        "horizon": 16,
        "expect": [
            (0, "throttled", 0.5, "opened"),
            (5, "throttled", 0.3, "persists"),
            (15, "throttled", 0.21, "persists"),
        ],
    },
    {
        "id": "rate limit: a failed test steps back to the last good factor, not the bottom",
        "incidents": {"r": ("rate_limited", IP_G, "warning")},
        "script": [(0, "open", "r", 0.7), (2, "cold", "r", 0.0), (27, "hot", "r", 0.3)],
        "horizon": 30,
        "expect": [
            (0, "throttled", 0.3, "opened"),
            (20, "recovering", 0.45, "healthy"),
            (25, "recovering", 0.675, "ramp"),
            (27, "throttled", 0.45, "relapse"),
        ],
    },
    {
        "id": "rate limit: the next test waits 2 x retest_after_s from the failed one, close or not",
        "incidents": {"r": ("rate_limited", IP_G, "warning")},
        "script": [
            (0, "open", "r", 0.5),
            (3, "cold", "r", 0.0),
            (22, "hot", "r", 0.3),
            (23, "cold", "r", 0.0),
            (40, "close", "r", None),
        ],
        "horizon": 70,
        "expect": [
            (0, "throttled", 0.5, "opened"),
            (20, "recovering", 0.75, "healthy"),
            (22, "throttled", 0.5, "relapse"),
            (42, "throttled", 0.5, "relapse"),
            (60, "recovering", 0.75, "closed"),
            (65, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "rate limit: a rate 1.5x worse cuts at once",
        "incidents": {"r": ("rate_limited", IP_G, "warning")},
        "script": [(0, "open", "r", 0.2), (1, "hot", "r", 0.35)],
        "horizon": 3,
        "expect": [(0, "throttled", 0.5, "opened"), (1, "throttled", 0.325, "worsened")],
    },
    {
        "id": "rate limit: a zero reference rate is not 'worse' at every run",
        "incidents": {"r": ("rate_limited", IP_G, "warning")},
        "script": [(0, "open", "r", 0.0), (1, "hot", "r", 0.0)],
        "horizon": 6,
        "expect": [(0, "throttled", 0.5, "opened"), (5, "throttled", 0.35, "persists")],
    },
    {
        "id": "block: paused, probes refused but too few to be hot: no ramp; clean: ramp",
        "incidents": {"b": ("block", "ip:192.0.2.12", "critical")},
        "script": [(0, "open", "b", None), (20, "cold", "b", 1.0), (30, "cold", "b", 0.0)],
        "horizon": 45,
        "expect": [
            (0, "paused", 0.02, "opened"),
            (20, "paused", 0.02, "opened"),
            (31, "recovering", 0.2, "healthy"),
            (33, "recovering", 0.4, "ramp"),
            (35, "recovering", 0.8, "ramp"),
            (37, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "block: a relapse while ramping pauses again; the next ramp after hold_s",
        "incidents": {"b": ("block", "ip:192.0.2.12", "critical")},
        "script": [
            (0, "open", "b", None),
            (12, "cold", "b", 0.0),
            (15, "hot", "b", 1.0),
            (16, "cold", "b", 0.0),
        ],
        "horizon": 35,
        "expect": [
            (0, "paused", 0.02, "opened"),
            (13, "recovering", 0.2, "healthy"),
            (15, "paused", 0.02, "relapse"),
            (25, "recovering", 0.2, "healthy"),
            (27, "recovering", 0.4, "ramp"),
            (29, "recovering", 0.8, "ramp"),
            (31, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "auth failure: paused until the incident closes, then a quick ramp",
        "incidents": {"a": ("auth_failure", "sender:news.example|provider:microsoft", "critical")},
        "script": [(0, "open", "a", None), (5, "cold", "a", None), (30, "close", "a", None)],
        "horizon": 40,
        "expect": [
            (0, "paused", 0.02, "opened"),
            (20, "paused", 0.02, "opened"),
            (30, "recovering", 0.5, "closed"),
            (32, "recovering", 0.75, "ramp"),
            (34, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "complaint spike on a campaign at a provider: paused, no probes",
        "incidents": {"c": ("complaint_spike", "campaign:winback|provider:yahoo", "warning")},
        "script": [(0, "open", "c", None), (40, "close", "c", None)],
        "horizon": 50,
        "expect": [
            (0, "paused", 0.0, "opened"),
            (20, "paused", 0.0, "opened"),
            (40, "recovering", 0.1, "closed"),
            (50, "recovering", 0.2, "ramp"),
        ],
    },
    {
        "id": "complaint spike on a whole provider: slowed, not stopped",
        "incidents": {"c": ("complaint_spike", "provider:yahoo", "warning")},
        "script": [(0, "open", "c", None)],
        "horizon": 15,
        "expect": [(0, "throttled", 0.5, "opened")],
    },
    {
        "id": "false hard bounces: a mild hold, no further cut",
        "incidents": {"f": ("false_hard_bounces", "mx:mimecast", "critical")},
        "script": [(0, "open", "f", None), (10, "cold", "f", None)],
        "horizon": 30,
        "expect": [
            (0, "throttled", 0.5, "opened"),
            (19, "recovering", 0.75, "healthy"),
            (24, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "hard bounce spike: campaign paused with probes",
        "incidents": {"h": ("hard_bounce_spike", "campaign:spring", "warning")},
        "script": [(0, "open", "h", None)],
        "horizon": 5,
        "expect": [(0, "paused", 0.05, "opened")],
    },
    {
        "id": "flapping: relapses back off, then the ramp waits for the close",
        "incidents": {"o": ("provider_outage", "provider:yahoo", "warning")},
        "script": [
            (0, "open", "o", None),
            (2, "cold", "o", None),
            (8, "hot", "o", None),
            (9, "cold", "o", None),
            (16, "hot", "o", None),
            (17, "cold", "o", None),
            (30, "close", "o", None),
        ],
        "horizon": 35,
        "expect": [
            (0, "throttled", 0.25, "opened"),
            (3, "recovering", 0.5, "healthy"),
            (5, "normal", 1.0, "recovered"),
            (8, "throttled", 0.25, "relapse"),
            (12, "recovering", 0.5, "healthy"),
            (14, "normal", 1.0, "recovered"),
            (16, "throttled", 0.25, "relapse"),
            (30, "recovering", 0.5, "closed"),
            (32, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "flapping rate limit: tests every retest_after_s x 2^reversals, back to last good",
        "incidents": {"r": ("rate_limited", "pool:shared-2|provider:yahoo", "warning")},
        "script": [
            (0, "open", "r", None),
            (6, "cold", "r", None),
            (14, "hot", "r", None),
            (15, "cold", "r", None),
            (30, "hot", "r", None),
            (31, "cold", "r", None),
            (60, "close", "r", None),
        ],
        "horizon": 75,
        "expect": [
            (0, "throttled", 0.5, "opened"),
            (5, "throttled", 0.35, "persists"),
            (14, "throttled", 0.245, "persists"),
            (20, "recovering", 0.3675, "healthy"),
            (25, "recovering", 0.55125, "ramp"),
            (30, "throttled", 0.3675, "relapse"),
            (50, "throttled", 0.3675, "relapse"),
            (60, "recovering", 0.55125, "closed"),
            (65, "recovering", 0.826875, "ramp"),
            (70, "normal", 1.0, "recovered"),
        ],
    },
    {
        "id": "a warning rate limit that turns critical is cut to the critical factor",
        "incidents": {"r": ("rate_limited", IP_G, "warning")},
        "script": [(0, "open", "r", None), (2, "critical", "r", None)],
        "horizon": 3,
        "expect": [(0, "throttled", 0.5, "opened"), (2, "throttled", 0.3, "critical")],
    },
    {
        "id": "two incidents on one scope: the pause wins, then the rate limit drives",
        "incidents": {"r": ("rate_limited", IP_G, "warning"), "b": ("block", IP_G, "critical")},
        "script": [
            (0, "open", "r", None),
            (2, "open", "b", None),
            (10, "close", "b", None),
            (10, "cold", "r", None),
        ],
        "horizon": 26,
        "expect": [
            (0, "throttled", 0.5, "opened"),
            (2, "paused", 0.02, "opened"),
            (10, "paused", 0.02, "closed"),
            (20, "recovering", 0.3, "healthy"),
            (25, "recovering", 0.45, "ramp"),
        ],
    },
]


def play(case: dict[str, Any], config: ThrottleConfig | None = None) -> Run:
    run = Run(config)
    by_minute: dict[int, list[tuple[str, str, float | None]]] = {}
    for m, op, name, rate in case["script"]:
        by_minute.setdefault(m, []).append((op, name, rate))
    for m in range(case["horizon"] + 1):
        t = T0 + m * MIN
        for op, name, rate in by_minute.get(m, []):
            type_, scope, sev = case["incidents"][name]
            if op == "open":
                run.open(t, name, type_, scope, sev, rate)
            elif op == "close":
                run.close(t, name)
            elif op == "critical":
                run.incidents[name].severity = "critical"
            else:
                run.hot[name] = op == "hot"
                run.rate[name] = rate
        run.tick(t)
    return run


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_transitions(case: dict[str, Any]) -> None:
    run = play(case)
    got = [(round((r.at - T0) / MIN), r.state, r.rate_factor, r.reason) for r in run.records]
    assert got == case["expect"]
    for r in run.records:
        assert r.incident is not None and r.scope in r.incident


def test_no_action_type_issues_nothing_and_provider_overrides_apply() -> None:
    cfg = loads_config(
        """
        [types.false_hard_bounces]
        action = "none"
        [providers.google.rate_limited]
        open_factor = 0.4
        """
    )
    run = Run(cfg)
    run.open(T0, "f", "false_hard_bounces", "mx:mimecast")
    run.open(T0, "g", "rate_limited", IP_G)
    run.open(T0, "y", "rate_limited", "ip:203.0.113.6|provider:yahoo")
    run.tick(T0)
    assert {r.scope: r.rate_factor for r in run.records} == {
        IP_G: 0.4,
        "ip:203.0.113.6|provider:yahoo": 0.5,
    }


def test_observation_adopts_an_open_incident_and_stale_ones_end() -> None:
    """A controller started without state catches up from the observations alone; an incident
    nobody reports any more counts as closed after stale_s (a decision never blocks forever)."""
    ctl = ThrottleController()
    iid = incident_id("block", "ip:192.0.2.9", T0 - 600)
    out = ctl.step(T0, (), [Observation(iid, "block", "ip:192.0.2.9", hot=True)])
    assert [(r.state, r.reason, r.incident) for r in out] == [("paused", "opened", iid)]
    stale_s = default_config().globals.stale_s
    reasons: list[str] = []
    t = T0
    while not reasons or reasons[-1] != "recovered":
        t += MIN
        reasons += [r.reason for r in ctl.step(t)]
    # re-issued (refresh) after refresh_s, then treated as closed after stale_s, then ramped
    assert reasons[:2] == ["opened", "stale"] and ctl.live == {}
    p = default_config().params("block", "ip:192.0.2.9")
    assert t <= T0 + stale_s + MIN + max_ramp_s(p)
    d = ctl.decision("ip:192.0.2.9")  # remembered (normal) for the relapse window
    assert d is not None and d.state == "normal"
    ctl.step(t + default_config().globals.relapse_window_s)
    assert ctl.scopes() == []


def test_live_decisions_feed_the_lookup() -> None:
    run = play(CASES[0])  # outage at provider:yahoo, back to normal at minute 27
    run2 = Run()
    run2.open(T0, "b", "block", "ip:192.0.2.12")
    run2.open(T0, "r", "rate_limited", "ip:192.0.2.12|provider:yahoo", rate=0.3)
    run2.tick(T0)
    scopes = message_scopes(
        domain="yahoo.com",
        provider="yahoo",
        ip="192.0.2.12",
        pool="shared-1",
        sender="news.example",
        tenant="acme",
        campaign="spring",
    )
    assert "ip:192.0.2.12|provider:yahoo" in scopes and "campaign:spring|provider:yahoo" in scopes
    win = most_restrictive(scopes, run2.ctl.live, T0)
    assert win is not None and (win.scope, win.state) == ("ip:192.0.2.12", "paused")
    assert effective_factor(scopes, run.ctl.live, T0 + 40 * MIN) == 1.0
    assert most_restrictive(scopes, run2.ctl.live, win.expires_at) is None  # expired


# ------------------------------------------------------------------------------ properties
TYPES = (
    "provider_outage",
    "rate_limited",
    "block",
    "auth_failure",
    "complaint_spike",
    "hard_bounce_spike",
    "false_hard_bounces",
)
SCOPES = {
    "provider_outage": ("provider:yahoo", "mx:mimecast", "domain:gmail.com"),
    "rate_limited": (IP_G, "pool:shared-2|provider:yahoo", "provider:google"),
    "block": ("ip:192.0.2.12", "pool:shared-1", "ip:192.0.2.12|provider:microsoft"),
    "auth_failure": ("sender:news.example|provider:microsoft", "sender:news.example"),
    "complaint_spike": ("campaign:c1|provider:yahoo", "provider:yahoo", "tenant:acme"),
    "hard_bounce_spike": ("campaign:c1", "tenant:acme"),
    "false_hard_bounces": ("mx:mimecast", "domain:corp.example"),
}

# one minute of a script: per incident (hot, rate, turns critical), and maybe a close/reopen
minute = st.tuples(
    st.booleans(),
    st.one_of(st.none(), st.floats(0.0, 1.0)),
    st.booleans(),
    st.integers(0, 40),
)


@st.composite
def scripts(draw: st.DrawFn, multi: bool) -> tuple[list[tuple[str, str]], list[Any], int]:
    n = draw(st.integers(1, 3)) if multi else 1
    incs = []
    for _ in range(n):
        t = draw(st.sampled_from(TYPES))
        incs.append((t, draw(st.sampled_from(SCOPES[t]))))
    if multi:  # several types on one scope too
        incs.append((draw(st.sampled_from(("block", "rate_limited"))), incs[0][1]))
    steps = draw(st.lists(st.lists(minute, min_size=len(incs), max_size=len(incs)), max_size=150))
    gap = draw(st.integers(1, 3))
    return incs, steps, gap


def drive(
    incs: list[tuple[str, str]], steps: list[Any], gap: int, run: Run | None = None
) -> tuple[Run, float]:
    """Open the incidents at T0, then play ``steps`` (one per ``gap`` minutes): hot/cold,
    rate, severity, and an occasional close followed by a reopen."""
    run = run or Run()
    t = T0
    names = [f"i{k}" for k in range(len(incs))]
    for name, (type_, scope) in zip(names, incs, strict=True):
        run.open(t, name, type_, scope)
    run.tick(t)
    for row in steps:
        t += gap * MIN
        for name, (type_, scope), (hot, rate, crit, roll) in zip(names, incs, row, strict=True):
            if name in run.incidents:
                if roll == 0:
                    run.close(t, name)
                    continue
                run.hot[name] = hot
                run.rate[name] = rate
                if crit and roll == 1:
                    run.incidents[name].severity = "critical"
            elif roll <= 3:
                run.open(t, name, type_, scope, rate=rate)
        run.tick(t)
    return run, t


def check_records(run: Run, exact: bool) -> None:
    cfg = run.ctl.config
    probes = [cfg.params(t, s).probe_share for t in TYPES for s in SCOPES[t]]
    for r in run.records:
        assert 0.0 <= r.rate_factor <= 1.0
        if r.state == "normal":
            assert r.rate_factor == 1.0 and r.expires_at == r.at
            continue
        assert r.expires_at > r.at
        assert r.rate_factor >= min(probes)
        if r.state != "paused":
            assert r.rate_factor < 1.0
        if exact:
            assert r.incident is not None
            p = cfg.params(r.incident.split("/")[0], r.scope)
            if r.state == "paused":
                assert r.rate_factor == p.probe_share
            else:
                assert p.min_factor - 1e-9 <= r.rate_factor < 1.0


@SETTINGS
@given(scripts(multi=False))
def test_factor_stays_within_bounds_single(script: Any) -> None:
    run, _ = drive(*script)
    check_records(run, exact=True)


@SETTINGS
@given(scripts(multi=True))
def test_factor_stays_within_bounds_and_closed_means_normal_soon(script: Any) -> None:
    incs, steps, gap = script
    run, t = drive(incs, steps, gap)
    check_records(run, exact=False)
    # every live decision is current after a step
    assert all(r.expires_at > t for r in run.ctl.decisions().values())
    assert run.ctl.decisions(t) == run.ctl.live
    # close everything: each scope is back to normal within the longer of hold_s and the
    # longest retest wait, then a full ramp (+ one tick)
    cfg = run.ctl.config
    bound = max(
        max(p.hold_s, p.retest_max_s) + max_ramp_s(p)
        for type_, scope in incs
        for p in [cfg.params(type_, scope)]
    ) + (gap * MIN)
    for name in list(run.incidents):
        run.close(t, name)
    end = t + bound
    while t < end:
        t += gap * MIN
        run.tick(t)
    assert run.ctl.live == {}, (bound, run.ctl.live)
    for _, scope in incs:
        d = run.ctl.decision(scope)
        assert d is None or d.state == "normal"


@settings(SETTINGS, max_examples=100)
@given(
    st.sampled_from(TYPES).flatmap(lambda t: st.tuples(st.just(t), st.sampled_from(SCOPES[t]))),
    st.lists(
        st.tuples(
            st.integers(1, 10),  # minutes hot
            st.integers(1, 120),  # minutes cold
            st.one_of(st.none(), st.floats(0, 1)),
            st.booleans(),  # turns critical
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_flapping_signal_reverses_at_most_max_reversals(
    inc: tuple[str, str], flaps: list[tuple[int, int, float | None, bool]]
) -> None:
    """One incident stays open while its signal flaps (hot for 1-10 min, cold for up to 2 h, up
    to 25 times): the factor turns down after an increase at most max_reversals times."""
    run = Run()
    t = T0
    run.open(t, "x", *inc)
    run.tick(t)
    for hot_min, cold_min, rate, crit in flaps:
        if crit:
            run.incidents["x"].severity = "critical"
        for hot, n in ((True, hot_min), (False, cold_min)):
            run.hot["x"], run.rate["x"] = hot, rate
            for _ in range(n):
                t += MIN
                run.tick(t)
    p = run.ctl.config.params(*inc)
    assert reversals(run.records, inc[1]) <= p.max_reversals


def _moves(run: Run, scope: str) -> list[tuple[ThrottleRecord, ThrottleRecord]]:
    """(previous, record) for each record of ``scope`` that changed its factor."""
    out, prev = [], None
    for r in run.records:
        if r.scope != scope:
            continue
        if prev is not None and abs(r.rate_factor - prev.rate_factor) > 1e-9:
            out.append((prev, r))
        prev = r
    return out


RATE_SCOPES = SCOPES["rate_limited"]
# a rate limit that comes and goes: hot for 1-10 min (at a rate), cold for 1-90 min, and
# maybe closed (after the detector's 15 quiet minutes) to reopen at the next hot spell
rate_flaps = st.lists(
    st.tuples(
        st.integers(1, 10), st.integers(1, 90), st.one_of(st.none(), st.floats(0, 1)), st.booleans()
    ),
    min_size=1,
    max_size=12,
)


def flap_rate_limit(scope: str, flaps: list[tuple[int, int, float | None, bool]]) -> Run:
    run = Run()
    t = T0
    run.open(t, "x", "rate_limited", scope, rate=flaps[0][2])
    run.tick(t)
    for hot_min, cold_min, rate, close in flaps:
        if "x" not in run.incidents:
            run.open(t, "x", "rate_limited", scope, rate=rate)
        for hot, n in ((True, hot_min), (False, cold_min)):
            run.hot["x"], run.rate["x"] = hot, (rate if hot else 0.0)
            for k in range(n):
                t += MIN
                if close and not hot and k == 15 and "x" in run.incidents:
                    run.close(t, "x")
                run.tick(t)
    return run


@SETTINGS
@given(st.sampled_from(RATE_SCOPES), rate_flaps)
def test_rate_limit_relapse_returns_to_the_last_good_factor(
    scope: str, flaps: list[tuple[int, int, float | None, bool]]
) -> None:
    """A rate limit that comes back while ramping (or just after) sends the factor back to
    where the ramp's last step came from (never below min_factor), not to the bottom."""
    run = flap_rate_limit(scope, flaps)
    p = run.ctl.config.params("rate_limited", scope)
    before_up: float | None = None  # the factor before the last increase
    recs = [r for r in run.records if r.scope == scope]
    for prev, r in itertools.pairwise(recs):
        if r.rate_factor > prev.rate_factor + 1e-9:
            before_up = prev.rate_factor
        elif (
            r.rate_factor < prev.rate_factor - 1e-9
            and prev.state in ("recovering", "normal")
            and r.reason in ("relapse", "critical")
        ):
            assert before_up is not None
            assert r.rate_factor == pytest.approx(max(p.min_factor, before_up)), (prev, r)


@SETTINGS
@given(st.sampled_from(RATE_SCOPES), rate_flaps)
def test_rate_limit_tests_are_spaced_by_the_retest_schedule(
    scope: str, flaps: list[tuple[int, int, float | None, bool]]
) -> None:
    """A ramp (a test of whether the limit is gone) starts no earlier than retest_after_s after
    the episode's first cut, and after a failed one no earlier than retest_after_s x
    flap_backoff^reversals after that one started, whether or not the incident closed."""
    run = flap_rate_limit(scope, flaps)
    p = run.ctl.config.params("rate_limited", scope)
    first_cut: float | None = None
    last_test: float | None = None
    reversals = 0
    recs = [r for r in run.records if r.scope == scope]
    for prev, r in zip([None, *recs], recs, strict=False):
        if abs(r.rate_factor - (1.0 if prev is None else prev.rate_factor)) <= 1e-9:
            continue  # a refresh
        if prev is None or (prev.state == "normal" and r.reason == "opened"):
            # an episode starts (a scope forgotten after relapse_window_s opens afresh; one
            # remembered relapses)
            first_cut, last_test, reversals = r.at, None, 0
        elif r.rate_factor > prev.rate_factor and prev.state in ("throttled", "paused"):
            assert first_cut is not None
            assert r.at >= first_cut + p.retest_after_s - 1e-6, (prev, r)
            if last_test is not None and reversals:
                wait = min(p.retest_max_s, p.retest_after_s * p.flap_backoff**reversals)
                assert r.at >= last_test + wait - 1e-6, (prev, r, reversals)
            last_test = r.at
        elif r.rate_factor < prev.rate_factor and prev.state in ("recovering", "normal"):
            reversals += 1


@SETTINGS
@given(scripts(multi=True), st.lists(st.integers(1, 400), min_size=1, max_size=20))
def test_expiry_is_honoured_with_sparse_steps(script: Any, gaps: list[int]) -> None:
    """Steps far apart (a stalled worker): after every step every live decision expires in the
    future, and the lookup never returns an expired one."""
    incs, steps, gap = script
    run, t = drive(incs, steps[:20], gap)
    scopes = [s for _, s in incs]
    for g in gaps:
        t += g * MIN
        before = dict(run.ctl.live)
        for r in before.values():  # what a consumer sees between the steps
            if r.expires_at <= t:
                assert most_restrictive([r.scope], before, t) is None
        run.tick(t)
        for r in run.ctl.live.values():
            assert r.at <= t < r.expires_at
        win = most_restrictive(scopes, run.ctl.live, t)
        assert win is None or win.live(t)


@SETTINGS
@given(scripts(multi=True), st.integers(0, 150))
def test_snapshot_restore_continues_identically(script: Any, cut: int) -> None:
    incs, steps, gap = script
    cut = min(cut, len(steps))
    a, _ = drive(incs, steps[:cut], gap)
    n = len(a.records)
    state = json.loads(json.dumps(a.ctl.state()))
    b = Run()
    b.ctl = ThrottleController.from_state(state)
    b.incidents, b.hot, b.rate = dict(a.incidents), dict(a.hot), dict(a.rate)
    c = Run()
    c.ctl = ThrottleController.restore(decode(encode(a.ctl.snapshot())))
    c.incidents, c.hot, c.rate = dict(a.incidents), dict(a.hot), dict(a.rate)
    t = T0 + cut * gap * MIN
    for row in steps[cut:]:
        t += gap * MIN
        for run in (a, b, c):
            for name, (hot, rate, _, _) in zip(sorted(run.incidents), row, strict=False):
                run.hot[name], run.rate[name] = hot, rate
            run.tick(t)
    assert a.records[n:] == b.records == c.records
    assert a.ctl.state() == b.ctl.state() == c.ctl.state()


def test_restore_reads_a_state_written_before_last_good_and_retests() -> None:
    """A state without ``good``, ``last_unclean``, ``last_check``, ``next_test`` and
    ``tested_at`` (written by the version before them) is read as a controller that never
    knew them: no last good factor, no test due, the cold time from the last hot run."""
    run2 = Run()
    run2.open(T0, "r", "rate_limited", IP_G, rate=0.4)
    run2.tick(T0)
    state = json.loads(json.dumps(run2.ctl.state()))
    for sc in state["scopes"]:
        for key in ("good", "last_unclean", "last_check", "next_test", "tested_at"):
            del sc[key]
    old = ThrottleController.from_state(state)
    new = ThrottleController.from_state(json.loads(json.dumps(run2.ctl.state())))
    assert old.live == new.live
    # the old one has no test scheduled: it ramps after hold_s and recover_after_s of cold
    for ctl in (old, new):
        out: list[ThrottleRecord] = []
        for m in range(1, 40):
            obs = [Observation(run2.incidents["r"].id, "rate_limited", IP_G, hot=m < 2, rate=0.0)]
            out += ctl.step(T0 + m * MIN, (), obs)
        first_ramp = next(r for r in out if r.state == "recovering")
        p = default_config().params("rate_limited", IP_G)
        want = p.retest_after_s if ctl is new else max(p.hold_s, MIN + p.recover_after_s)
        assert first_ramp.at - T0 == want


RAMP_CASES = [
    # (ramp_multiplier, ramp_step, start, factors after 1, 2, 3 steps, steps to normal)
    (1.0, 0.25, 0.25, (0.5, 0.75, 1.0), 3),
    (2.0, 0.25, 0.25, (0.5, 1.0, 1.0), 2),
    (1.5, 0.1, 0.5, (0.75, 1.0, 1.0), 2),
    (1.5, 0.1, 0.1, (0.2, 0.3, 0.45), 5),  # the additive step wins while f x 1.5 is smaller
    (2.0, 0.1, 0.02, (0.12, 0.24, 0.48), 5),  # 0.96 is one step short of 1
]


@pytest.mark.parametrize(("mult", "step", "start", "after", "steps"), RAMP_CASES)
def test_ramp_steps_take_the_larger_of_multiplicative_and_additive(
    mult: float, step: float, start: float, after: tuple[float, ...], steps: int
) -> None:
    p = loads_config(
        f"[types.rate_limited]\nramp_multiplier = {mult}\nramp_step = {step}\n"
    ).params("rate_limited", IP_G)
    assert [round(ramp_factor(p, start, k), 6) for k in (1, 2, 3)] == list(after)
    assert ramp_factor(p, start, 0) == start and ramp_factor(p, start, 1000) == 1.0
    assert ramp_steps(p, start) == steps
    assert ramp_factor(p, start, steps) == 1.0 and ramp_factor(p, start, steps - 1) < 1.0


def test_max_ramp_s_bounds_every_ramp() -> None:
    """From a pause (ramp_start) or one step above min_factor, the ramp never takes longer."""
    cfg = default_config()
    for t, s in itertools.product(TYPES, [s for ss in SCOPES.values() for s in ss]):
        p = cfg.params(t, s)
        if p.action == "none":
            continue
        for start in (p.ramp_start, ramp_factor(p, p.min_factor, 1), 0.99):
            assert ramp_steps(p, start) * p.ramp_every_s <= max_ramp_s(p)


def test_restore_refuses_other_formats() -> None:
    with pytest.raises(SnapshotError):
        ThrottleController.from_state({"format": 99})
    with pytest.raises(SnapshotError):
        ThrottleController.from_state({"format": 1, "now": 0.0, "scopes": [{"scope": "x"}]})


@SETTINGS
@given(scripts(multi=True))
def test_deterministic(script: Any) -> None:
    a, _ = drive(*script)
    b, _ = drive(*script)
    assert [r.to_json() for r in a.records] == [r.to_json() for r in b.records]


# ------------------------------------------------------------------------------ lookup
LOOKUP_SCOPES = ["ip:1", "ip:2", "pool:a", "provider:google", "ip:1|provider:google", "tenant:t"]
record_st = st.builds(
    lambda scope, state, factor, at, life: ThrottleRecord(
        scope,
        state,
        1.0 if state == "normal" else factor,
        "opened",
        None,
        at,
        at if state == "normal" else at + life,
    ),
    st.sampled_from(LOOKUP_SCOPES),
    st.sampled_from(("normal", "throttled", "paused", "recovering")),
    st.sampled_from((0.0, 0.02, 0.1, 0.25, 0.5, 0.9)),
    st.sampled_from((0.0, 10.0, 50.0)),
    st.sampled_from((1.0, 30.0, 100.0)),
)


@settings(SETTINGS, max_examples=400)
@given(
    st.lists(record_st, min_size=1, max_size=8),
    st.lists(st.sampled_from([*LOOKUP_SCOPES, "campaign:c"]), min_size=1, max_size=8),
    st.sampled_from((0.0, 5.0, 20.0, 60.0, 120.0)),
    st.randoms(use_true_random=False),
)
def test_most_restrictive_wins_in_any_order(
    records: list[ThrottleRecord], scopes: list[str], now: float, rnd: Any
) -> None:
    table = {r.scope: r for r in records}
    live = [table[s] for s in set(scopes) if s in table and table[s].live(now)]
    want = min(live, key=lambda r: (r.rate_factor, -STATE_RANK[r.state], r.scope), default=None)
    got = most_restrictive(scopes, table, now)
    assert got == want
    shuffled = list(scopes)
    rnd.shuffle(shuffled)
    assert most_restrictive(shuffled, table, now) == got
    assert most_restrictive(reversed(scopes), table, now) == got
    assert effective_factor(scopes, table, now) == (1.0 if got is None else got.rate_factor)


def test_message_scopes() -> None:
    assert message_scopes(domain="gmail.com", provider="google", ip="192.0.2.7") == (
        "domain:gmail.com",
        "provider:google",
        "ip:192.0.2.7",
        "ip:192.0.2.7|provider:google",
    )
    assert message_scopes(ip="192.0.2.7", campaign="c") == ("ip:192.0.2.7", "campaign:c")


# ------------------------------------------------------------------------------ record
def test_record_round_trip_and_errors() -> None:
    r = ThrottleRecord(IP_G, "throttled", 0.35, "persists", f"rate_limited/{IP_G}/1", T0, T0 + 1)
    d = r.to_json()
    assert tuple(d) == RECORD_KEYS
    assert ThrottleRecord.from_json(json.loads(json.dumps(d))) == r
    assert ThrottleRecord.from_json({**d, "future_field": 1}) == r  # unknown keys are ignored
    bad: list[tuple[dict[str, Any], str]] = [
        ({**d, "kind": "incident"}, "kind"),
        ({k: v for k, v in d.items() if k != "at"}, "missing"),
        ({**d, "state": "slow"}, "state"),
        ({**d, "rate_factor": 1.5}, "rate_factor"),
        ({**d, "rate_factor": True}, "rate_factor"),
        ({**d, "at": "now"}, "at"),
        ({**d, "expires_at": T0 - 1}, "expires_at"),
        ({**d, "scope": "nocolon"}, "scope"),
        ({**d, "incident": 3}, "incident"),
        ({**d, "state": "normal"}, "normal"),
    ]
    for rec, word in bad:
        with pytest.raises(RecordError, match=word):
            ThrottleRecord.from_json(rec)
    with pytest.raises(RecordError):
        ThrottleRecord.from_json([])  # type: ignore[arg-type]


def _doc() -> str:
    return (REPO / "docs" / "throttle.md").read_text()


def test_records_match_the_documented_schema() -> None:
    m = re.search(r"### JSON Schema\s+```json\n(.*?)```", _doc(), re.S)
    assert m, "docs/throttle.md has a JSON Schema block"
    schema = json.loads(m.group(1))
    jsonschema.Draft202012Validator.check_schema(schema)
    run = play(CASES[0])
    for case in CASES[1:]:
        run.records += play(case).records
    for r in run.records:
        jsonschema.validate(r.to_json(), schema)
    assert set(schema["properties"]["state"]["enum"]) == set(STATE_RANK)


def test_documented_defaults_table_matches_the_config() -> None:
    rows = [ln for ln in _doc().splitlines() if re.match(r"\| `[a-z_]+` \|", ln)]
    header = next(ln for ln in _doc().splitlines() if ln.startswith("| type | action |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    seen = set()
    for ln in rows:
        cells = [c.strip().strip("`") for c in ln.strip("|").split("|")]
        if cells[0] not in DEFAULTS["types"] or len(cells) != len(cols):
            continue
        seen.add(cells[0])
        want = DEFAULTS["types"][cells[0]]
        for col, cell in zip(cols[1:], cells[1:], strict=True):
            v = want[col]
            if isinstance(v, bool):
                assert cell == ("yes" if v else "no"), (cells[0], col)
            elif isinstance(v, str):
                assert cell == v, (cells[0], col)
            else:
                assert float(cell) == v, (cells[0], col, cell, v)
    assert seen == set(TYPES)


# ------------------------------------------------------------------------------ config
def test_shipped_file_equals_the_compiled_defaults() -> None:
    with open(REPO / "models" / "act" / "data" / "throttle.toml", "rb") as fh:
        data = tomllib.load(fh)
    assert {**data, "providers": data.get("providers", {})} == DEFAULTS
    assert load_config(REPO / "models" / "act" / "data" / "throttle.toml").types == (
        default_config().types
    )


def test_layers_kind_and_provider() -> None:
    cfg = loads_config(
        """
        [throttle]
        expire_s = 7200
        [types.rate_limited]
        ramp_step = 0.2
        [types.rate_limited.kinds."ip|provider"]
        open_factor = 0.6
        [providers.microsoft.rate_limited]
        decrease = 0.5
        """
    )
    assert cfg.globals.expire_s == 7200.0
    p = cfg.params("rate_limited", "ip:1.2.3.4|provider:microsoft")
    assert (p.open_factor, p.decrease, p.ramp_step) == (0.6, 0.5, 0.2)
    p = cfg.params("rate_limited", "pool:p|provider:microsoft")
    assert (p.open_factor, p.decrease, p.ramp_step) == (0.5, 0.5, 0.2)
    p = cfg.params("rate_limited", "ip:1.2.3.4|provider:google")
    assert (p.open_factor, p.decrease) == (0.6, 0.7)
    assert cfg.params("rate_limited", "domain:hotmail.com").decrease == 0.5  # provider table
    assert cfg.params("rate_limited", "mx:microsoft").decrease == 0.5
    assert cfg.params("no_such_type", "ip:1").action == "none"
    # the default kind override survives a user change of the type
    cfg = loads_config("[types.complaint_spike]\nprobe_share = 0.01\n")
    assert cfg.params("complaint_spike", "provider:yahoo").action == "throttle"
    assert cfg.params("complaint_spike", "campaign:c").probe_share == 0.01


def test_scope_helpers() -> None:
    assert scope_kind_of("ip:1.2.3.4|provider:google") == "ip|provider"
    assert scope_kind_of("domain:x.org") == "domain"
    assert provider_of("ip:1.2.3.4|provider:google") == "google"
    assert provider_of("provider:yahoo") == "yahoo"
    assert provider_of("domain:gmail.com") == "google"
    assert provider_of("domain:corp.example") is None
    assert provider_of("ip:1.2.3.4") is None


BAD_CONFIGS = [
    ("[nope]\nx = 1\n", "unknown top-level key"),
    ("[throttle]\nexpire = 1\n", "throttle.expire: unknown key"),
    ("[throttle]\nrefresh_s = 4000\n", "throttle.refresh_s: must be less than expire_s"),
    ("[throttle]\nexpire_s = -1\n", "throttle.expire_s: must be in"),
    ("[types.outage]\naction = 'pause'\n", "types.outage: unknown incident type"),
    ("[types.block]\nactoin = 'pause'\n", "types.block.actoin: unknown key"),
    ("[types.block]\naction = 'stop'\n", "types.block.action: must be one of"),
    ("[types.rate_limited]\nopen_factor = 1.5\n", "types.rate_limited.open_factor: must be in"),
    ("[types.rate_limited]\ndecrease = 0\n", "types.rate_limited.decrease: must be in (0, 1]"),
    ("[types.rate_limited]\ndecrease = '0.5'\n", "must be a finite number"),
    ("[types.rate_limited]\nmin_factor = true\n", "must be a finite number"),
    ("[types.rate_limited]\nproportional = 1\n", "must be true or false"),
    ("[types.rate_limited]\nmax_reversals = 1.5\n", "must be an integer"),
    ("[types.rate_limited]\nmax_reversals = -1\n", "max_reversals: must be in"),
    ("[types.rate_limited]\nramp_every_s = 0\n", "ramp_every_s: must be in (0"),
    ("[types.rate_limited]\nworsen_ratio = 1.0\n", "worsen_ratio: must be in (1"),
    ("[types.rate_limited]\ncritical_open_factor = 0.9\n", "must be at most open_factor"),
    ("[types.rate_limited]\nmin_factor = 0.4\n", "min_factor: must be at most critical"),
    ("[types.block]\nprobe_share = 0.2\n", "probe_share: must be at most min_factor"),
    ("[types.block]\nramp_start = 0.05\n", "ramp_start: must be at least min_factor"),
    ("[types.rate_limited]\nramp_step = 0.001\n", "ramp_step: must be in [0.01, 1]"),
    ("[types.rate_limited]\nramp_multiplier = 0.5\n", "ramp_multiplier: must be in [1, 10]"),
    ("[types.rate_limited]\nclean_rate = 1.5\n", "clean_rate: must be in [0, 1]"),
    ("[types.rate_limited]\nretest_after_s = -1\n", "retest_after_s: must be in [0"),
    ("[types.rate_limited]\nretest_max_s = 600\n", "retest_max_s: must be at least retest_after"),
    ("[types.rate_limited]\nrelapse_to = 'bottom'\n", "relapse_to: must be one of last_good"),
    ("[types.block]\nrelapse_to = 'last_good'\n", "types.block.relapse_to: must be open for a"),
    ("[types.block.kinds.planet]\nopen_factor = 0.5\n", "types.block.kinds.planet: unknown scope"),
    ("[types.block]\nkinds = 3\n", "types.block.kinds: must be a table"),
    ("[providers.google.blok]\nopen_factor = 0.5\n", "providers.google.blok: unknown incident"),
    ("[providers.google]\nrate_limited = 1\n", "providers.google.rate_limited: must be a table"),
    (
        "[providers.yahoo.complaint_spike]\nramp_start = 0.2\n",
        "providers.yahoo.complaint_spike (with types.complaint_spike.kinds.provider).ramp_start",
    ),
    ("[types.block\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_config_errors_name_the_key(text: str, message: str, tmp_path: Any) -> None:
    f = tmp_path / "throttle.toml"
    f.write_text(text)
    with pytest.raises(ThrottleConfigError) as exc:
        load_config(f)
    assert str(exc.value).startswith(str(f)), exc.value
    assert message in str(exc.value), exc.value


def test_config_missing_file_and_non_table() -> None:
    with pytest.raises(ThrottleConfigError, match="cannot read"):
        load_config("/nonexistent/throttle.toml")
    with pytest.raises(ThrottleConfigError, match="types: must be a table"):
        parse_config({"types": 3})


def test_every_combination_is_validated_once_at_load() -> None:
    cfg = default_config()
    for t, s in itertools.product(TYPES, [s for ss in SCOPES.values() for s in ss]):
        p = cfg.params(t, s)
        assert p.probe_share <= p.min_factor <= p.critical_open_factor <= p.open_factor <= 1
