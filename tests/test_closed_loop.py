"""The closed-loop throttle evaluation (models/sim/closed_loop/, issue 13): the provider model,
the fleet that obeys limits, the KumoMTA-style rules, the metrics and their targets, and one small
closed loop through the real Pipeline, Monitor and throttle controller."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from bench.evaluate import CLOSED_LOOP_TARGETS, closed_loop_verdicts, render_closed_loop_html
from models.act.throttle_record import most_restrictive
from models.sim.closed_loop import (
    KUMO_RULES,
    SHAPING_HEADROOM,
    ClosedLoop,
    ClosedLoopScenario,
    Incident,
    KumoControl,
    Limits,
    Provider,
    RepmonControl,
    StepEvents,
    closed_loop_metrics,
    quick_scenarios,
    recovery_time,
    reversals,
    run_closed_loop,
)
from models.sim.config import K_BOUNCED, K_DEFERRED
from models.sim.replies import REPLIES, R

START = 1_794_787_200.0  # 2026-11-16T00:00Z
ONSET_S = 3600.0
LENGTH_S = 1800.0


def scenario(incident: Incident, act: str = "provider:microsoft") -> ClosedLoopScenario:
    return ClosedLoopScenario("t", "test", act, incident, after_s=1800.0)


OUTAGE = Incident("outage", "microsoft", ONSET_S, LENGTH_S, ("ms_unavail", "timeout"))
BLOCK = Incident("block", "microsoft", ONSET_S, LENGTH_S, ("ms_block",), ips=("192.0.2.12",))
IP_LIMIT = Incident(
    "rate_limit", "google", ONSET_S, LENGTH_S, ("g_rate",), ips=("203.0.113.6",), key="ip"
)
PROV_LIMIT = Incident(
    "rate_limit", "yahoo", ONSET_S, LENGTH_S, ("y_tss04",), key="provider", limit_share=0.6
)


@pytest.fixture(scope="module")
def loop() -> ClosedLoop:
    """A fleet (no incident in the first hour) for the unit tests; rate 20 msgs/s."""
    return ClosedLoop(scenario(OUTAGE), "none", seed=3, rate=20.0, start=START)


def quiet_provider(loop: ClosedLoop, incident: Incident) -> Provider:
    """The provider of ``incident`` without background noise (every valid recipient's
    attempt is delivered unless the incident says otherwise)."""
    outcomes = copy.copy(loop.outcomes)
    outcomes.noise_cum = np.zeros_like(loop.outcomes.noise_cum)
    return Provider(loop.fleet, outcomes, loop.index, incident, START)


def dom_id(loop: ClosedLoop, name: str) -> int:
    return loop.fleet.dom_names.index(name)


def ip_id(loop: ClosedLoop, ip: str) -> int:
    return loop.fleet.ip_names.index(ip)


# ------------------------------------------------------------------------------ provider
@pytest.mark.parametrize(
    ("incident", "at_s", "domain", "ip", "n", "expected"),
    [
        # outage: every attempt to the provider fails with one of its replies, only in the window
        (OUTAGE, ONSET_S + 10, "hotmail.com", "192.0.2.10", 50, ("ms_unavail", "timeout")),
        (OUTAGE, ONSET_S + 10, "gmail.com", "192.0.2.10", 50, ()),
        (OUTAGE, ONSET_S - 60, "hotmail.com", "192.0.2.10", 50, ()),
        (OUTAGE, ONSET_S + LENGTH_S, "hotmail.com", "192.0.2.10", 50, ()),
        # block: every attempt from the blocked IP to that provider is refused (a bounce)
        (BLOCK, ONSET_S + 10, "outlook.com", "192.0.2.12", 50, ("ms_block",)),
        (BLOCK, ONSET_S + 10, "outlook.com", "192.0.2.13", 50, ()),
        (BLOCK, ONSET_S + 10, "gmail.com", "192.0.2.12", 50, ()),
        (BLOCK, ONSET_S + LENGTH_S + 1, "outlook.com", "192.0.2.12", 50, ()),
    ],
)
def test_provider_outage_and_block(
    loop: ClosedLoop,
    incident: Incident,
    at_s: float,
    domain: str,
    ip: str,
    n: int,
    expected: tuple[str, ...],
) -> None:
    prov = quiet_provider(loop, replace(OUTAGE, intensity=1.0) if incident is OUTAGE else incident)
    t = np.full(n, START + at_s)
    reply = prov.replies(
        np.random.default_rng(1),
        t,
        np.full(n, dom_id(loop, domain)),
        np.full(n, ip_id(loop, ip)),
        np.ones(n, dtype=np.int64),
        np.ones(n, dtype=np.bool_),
        60.0,
    )
    if not expected:
        assert (reply == -1).all()
        return
    assert set(reply.tolist()) <= {R[k] for k in expected}
    if incident is BLOCK:
        assert all(REPLIES[r].kind == "bounced" for r in reply.tolist())
    else:
        assert all(REPLIES[r].kind == "deferred" and REPLIES[r].code < 500 for r in reply.tolist())


@pytest.mark.parametrize(
    ("incident", "domain", "ips", "per_step"),
    [
        # per IP: only the limited IP's attempts to the provider count, and are cut to the limit
        (IP_LIMIT, "gmail.com", ["203.0.113.6"], (40, 200, 10)),
        # per provider: all of our IPs together
        (PROV_LIMIT, "yahoo.com", ["198.51.100.20", "198.51.100.21", "203.0.113.5"], (30, 500, 0)),
    ],
)
def test_provider_rate_limit_refuses_above_the_hidden_rate(
    loop: ClosedLoop,
    incident: Incident,
    domain: str,
    ips: list[str],
    per_step: tuple[int, ...],
) -> None:
    prov = quiet_provider(loop, incident)
    ((_, per_s),) = prov.limits
    cap = per_s * 60.0
    assert cap > 1.0
    tokens = 0.0
    rng = np.random.default_rng(2)
    for k, n in enumerate(per_step):
        t = np.full(n, START + ONSET_S + 60.0 * k)
        ip = np.array([ip_id(loop, ips[j % len(ips)]) for j in range(n)], dtype=np.int64)
        reply = prov.replies(
            rng, t, np.full(n, dom_id(loop, domain)), ip, np.ones(n, dtype=np.int64),
            np.ones(n, dtype=np.bool_), 60.0,
        )  # fmt: skip
        tokens = min(tokens, max(cap, 1.0)) + cap
        accepted = min(n, int(tokens))
        tokens -= accepted
        assert int((reply == R[incident.replies[0]]).sum()) == n - accepted
        assert int((reply == -1).sum()) == accepted
    # another IP (per-IP limit) or another provider is not limited; after the end nobody is
    other = np.full(20, ip_id(loop, "192.0.2.10"))
    after = prov.replies(
        rng, np.full(20, START + ONSET_S + LENGTH_S), np.full(20, dom_id(loop, domain)), other,
        np.ones(20, dtype=np.int64), np.ones(20, dtype=np.bool_), 60.0,
    )  # fmt: skip
    assert (after == -1).all()


def test_provider_limit_is_a_share_of_the_normal_rate(loop: ClosedLoop) -> None:
    prov = Provider(loop.fleet, loop.outcomes, loop.index, IP_LIMIT, START)
    ((key, per_s),) = prov.limits
    assert key == "203.0.113.6"
    normal = loop.index.normal_rate("ip:203.0.113.6|provider:google")
    assert per_s == pytest.approx(IP_LIMIT.limit_share * normal)
    assert 0 < normal < loop.index.normal_rate("ip:203.0.113.6")


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "flood"},
        {"key": "pool"},
        {"replies": ("no_such_reply",)},
        {"kind": "block", "ips": ()},
        {"intensity": 0.0},
        {"limit_share": 1.0},
        {"length_s": 0.0},
    ],
)
def test_incident_rejects_bad_parameters(bad: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "kind": "outage", "provider": "microsoft", "onset_s": 0.0, "length_s": 60.0,
        "replies": ("timeout",), "ips": ("192.0.2.12",),
    }  # fmt: skip
    with pytest.raises(ValueError):
        Incident(**{**base, **bad})


# ------------------------------------------------------------------------------ scopes
def test_scope_masks_agree_with_message_scopes(loop: ClosedLoop) -> None:
    """The vectorised scope test, the normal rates and the scope names of the ingest agree."""
    ix = loop.index
    rng = np.random.default_rng(5)
    rows = rng.choice(len(ix.lane_dom), 400, replace=False)
    dom, ip, snd = ix.lane_dom[rows], ix.lane_ip[rows], ix.lane_sender[rows]
    names = [ix.scopes(int(d), int(i), int(s)) for d, i, s in zip(dom, ip, snd, strict=True)]
    probe = [*sorted({s for n in names[:40] for s in n}), "provider:nowhere", "ip:10.0.0.1"]
    for scope in probe:
        mask = ix.mask(scope, dom, ip, snd)
        assert mask.tolist() == [scope in n for n in names], scope
    total = float(ix.lane_rate.sum())
    assert total == pytest.approx(20.0)
    provs = sorted(set(loop.fleet.dom_provider))
    assert sum(ix.normal_rate(f"provider:{p}") for p in provs) == pytest.approx(total)
    assert sum(ix.normal_rate(f"pool:{p}") for p in loop.fleet.pool_names) == pytest.approx(total)
    assert ix.normal_rate("provider:nowhere") == 0.0


# ------------------------------------------------------------------------------ fleet
class FixedLimit:
    """A controller that holds the act scope's traffic at ``factor`` x its normal rate."""

    name = "fixed"

    def __init__(self, loop: ClosedLoop, factor: float | None) -> None:
        self.loop = loop
        self.factor = factor

    def limits(self, now: float, dom: Any, ip: Any, sender: Any) -> Limits:
        if self.factor is None:
            return Limits.unlimited(len(dom))
        act = self.loop.scenario.act_scope
        m = self.loop.index.mask(act, dom, ip, sender)
        rate = self.factor * self.loop.index.normal_rate(act)
        return Limits(
            np.where(m, 0, -1).astype(np.int64), [act], np.array([rate]),
            np.where(m, self.factor, 1.0),
        )  # fmt: skip

    def observe(self, step: StepEvents) -> None:
        return None


@pytest.mark.parametrize(
    ("factor", "steps"),
    [
        (None, 8),  # no limit: everything due is sent at once
        (0.0, 8),  # paused without probes: nothing of the scope is sent
        (0.05, 20),  # paused with 5 % probes
        (0.5, 12),  # throttled to half
    ],
)
def test_fleet_sends_the_rate_factor_of_the_normal_rate(factor: float | None, steps: int) -> None:
    lp = ClosedLoop(scenario(OUTAGE), "none", seed=4, rate=20.0, start=START)
    lp.control = FixedLimit(lp, factor)
    normal = lp.index.normal_rate("provider:microsoft") * 60.0
    sent = new = 0.0
    for k in range(steps):
        _, vals = lp.step(k)
        sent += vals["attempts_act"]
        new += vals["new_act"]
        assert vals["factor_act"] == pytest.approx(1.0 if factor is None else factor)
    if factor is None:
        assert sent >= 0.95 * new
        assert vals["queued_act"] <= 0.05 * normal
        return
    # the bucket's tokens: factor x normal per step, fractions carried (at most one saved)
    assert abs(sent - factor * normal * steps) <= 1.0 + 1e-9
    # the rest is queued, not dropped
    assert vals["queued_act"] >= new - sent - 0.05 * new


def test_held_mail_is_delayed_then_sent_oldest_first_within_the_shaping() -> None:
    lp = ClosedLoop(scenario(OUTAGE), "none", seed=6, rate=20.0, start=START)
    ctl = FixedLimit(lp, 0.0)
    lp.control = ctl
    for k in range(10):
        lp.step(k)
    a = lp.store.a
    queued = lp._active[a["act"][lp._active]]
    assert len(queued) > 0 and (a["held"][queued] == 0).all()
    oldest = set(queued[np.argsort(a["ready"][queued])][:50].tolist())
    ctl.factor = 0.02  # a trickle: the oldest due go first
    _, vals = lp.step(10)
    sent_ids = {int(i) for i in queued if a["attempts"][i] > 0 or a["done"][i]}
    assert 0 < len(sent_ids) <= math.ceil(0.02 * lp.index.normal_rate("provider:microsoft") * 60)
    assert sent_ids <= oldest
    ctl.factor = None  # lifted: the backlog goes out, at most `headroom` x normal per path
    sent = 0.0
    for k in range(11, 30):
        _, vals = lp.step(k)
        sent += vals["attempts_act"]
    normal = lp.index.normal_rate("provider:microsoft") * 60.0
    assert vals["queued_act"] <= 0.05 * normal
    assert sent <= SHAPING_HEADROOM * normal * 19 + 1
    held = a["held"][queued]
    assert (held > 0).all() and held.max() >= 9 * 60.0


# ------------------------------------------------------------------------------ KumoMTA
def fail_events(lp: ClosedLoop, rows: list[tuple[float, str, str, str]]) -> StepEvents:
    """Failed attempts (time, reply key, recipient domain, sending IP) as one step's table."""
    n = len(rows)
    sender = lp.fleet.sender_names.index("notify.globex.io")
    tab: dict[str, Any] = {
        "t": np.array([r[0] for r in rows], dtype=np.float64),
        "kind": np.array(
            [K_DEFERRED if REPLIES[R[r[1]]].kind == "deferred" else K_BOUNCED for r in rows],
            dtype=np.int64,
        ),
        "reply": np.array([R[r[1]] for r in rows], dtype=np.int64),
        "dom": np.array([dom_id(lp, r[2]) for r in rows], dtype=np.int64),
        "ip": np.array([ip_id(lp, r[3]) for r in rows], dtype=np.int64),
        "sender": np.full(n, sender, dtype=np.int64),
    }
    for k in ("msg", "tenant", "campaign", "rcpt", "tok"):
        tab[k] = np.zeros(n, dtype=np.int64)
    return StepEvents(rows[0][0], rows[-1][0] + 1, tab, lp.output)


def path_rate(kc: KumoControl, lp: ClosedLoop, now: float, domain: str, ip: str) -> float | None:
    lim = kc.limits(
        now,
        np.array([dom_id(lp, domain)]),
        np.array([ip_id(lp, ip)]),
        np.array([lp.fleet.sender_names.index("notify.globex.io")]),
    )
    b = int(lim.bucket[0])
    return None if b < 0 else float(lim.rate[b])


IP = "192.0.2.10"
MIN = 60.0


@pytest.mark.parametrize(
    ("reply", "domain", "times", "expected"),
    [
        # the shipped default: Immediate, 1/minute and one connection for 90 min
        ("ms_busy", "hotmail.com", [0.0], 1 / 60),
        ("ms_block", "hotmail.com", [0.0], 1 / 60),
        # the community outlook.com rules apply to outlook.com's site only: 3/hr -> 1/minute,
        # 5/hr -> suspended 30 min
        ("ms_busy", "outlook.com", [0.0, MIN, 2 * MIN], 1 / 60),
        ("ms_busy", "outlook.com", [0.0, MIN, 2 * MIN, 3 * MIN, 4 * MIN], 0.0),
        # Yahoo's provider rule (every yahoodns.net site): Immediate suspension for 2 h
        ("y_tss04", "aol.com", [0.0], 0.0),
        ("y_tss04", "yahoo.com", [0.0], 0.0),
        # Gmail's community rule: 2 per hour -> 10/minute for 30 min
        ("g_rate", "gmail.com", [0.0], None),
        ("g_rate", "gmail.com", [0.0, 30 * MIN], 10 / 60),
        ("g_rate", "gmail.com", [0.0, 61 * MIN], None),
        # Comcast's RL0000: 2 per hour -> max_connection_rate 10,000/h (not binding here)
        ("c_rate", "comcast.net", [0.0, MIN], 10000 / 3600 * 100),
        # replies no rule knows
        ("timeout", "hotmail.com", [0.0] * 20, None),
        ("ms_unavail", "outlook.com", [0.0] * 20, None),
    ],
)
def test_kumo_rules_trigger_per_egress_path(
    loop: ClosedLoop, reply: str, domain: str, times: list[float], expected: float | None
) -> None:
    kc = KumoControl(loop.index)
    t0 = START + ONSET_S
    kc.observe(fail_events(loop, [(t0 + dt, reply, domain, IP) for dt in times]))
    now = t0 + times[-1] + MIN
    got = path_rate(kc, loop, now, domain, IP)
    assert got == (None if expected is None else pytest.approx(expected))
    # another sending IP to the same site is another path: untouched
    assert path_rate(kc, loop, now, domain, "192.0.2.11") is None


def test_kumo_actions_last_their_duration_after_the_last_trigger(loop: ClosedLoop) -> None:
    kc = KumoControl(loop.index)
    t0 = START + ONSET_S
    kc.observe(fail_events(loop, [(t0, "ms_busy", "hotmail.com", IP)]))
    assert path_rate(kc, loop, t0 + 89 * MIN, "hotmail.com", IP) == pytest.approx(1 / 60)
    assert path_rate(kc, loop, t0 + 90 * MIN + 1, "hotmail.com", IP) is None
    kc = KumoControl(loop.index)
    kc.observe(
        fail_events(loop, [(t0, "ms_busy", "hotmail.com", IP), (t0 + 60 * MIN, "ms_busy",
                                                                "hotmail.com", IP)])
    )  # fmt: skip
    assert path_rate(kc, loop, t0 + 149 * MIN, "hotmail.com", IP) == pytest.approx(1 / 60)
    assert path_rate(kc, loop, t0 + 150 * MIN + 1, "hotmail.com", IP) is None
    # every rule acts for a fixed duration: no rule ramps
    assert all(r.duration_s > 0 and r.actions for r in KUMO_RULES)


# ------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize(
    ("factors", "expected"),
    [
        ([1.0, 1.0, 1.0], (0, 0)),
        ([1.0, 0.25, 0.1, 0.05, 0.25, 0.5, 1.0], (0, 1)),  # down, then the ramp: no reversal
        ([1.0, 0.5, 0.6, 0.5, 0.6, 0.5, 1.0], (2, 5)),
        ([1.0, 0.5, 0.5, 0.6, 0.6, 0.3, 0.3, 1.0], (1, 3)),
        ([0.5, 1.0, 0.5, 1.0], (1, 2)),
    ],
)
def test_reversals(factors: list[float], expected: tuple[int, int]) -> None:
    assert reversals(factors) == expected


T = [float(60 * i) for i in range(20)]


@pytest.mark.parametrize(
    ("share", "recovered_at", "expected"),
    [
        ([1.0] * 20, 300.0, 0.0),
        ([0.1] * 5 + [1.0] * 15, 120.0, 180.0),
        ([0.1] * 5 + [0.96] * 15, 0.0, 300.0),
        ([0.1] * 5 + [1.0, 1.0, 0.5] + [1.0] * 12, 0.0, 480.0),  # a relapse resets it
        ([0.1] * 17 + [1.0] * 3, 0.0, 1020.0),  # the end of the run ends the window
        ([0.1] * 20, 0.0, None),
    ],
)
def test_recovery_time(share: list[float], recovered_at: float, expected: float | None) -> None:
    assert recovery_time(share, T, recovered_at) == expected


def _m(failed: float, rec: float | None, rev: int) -> dict[str, Any]:
    return {"failed_incident": failed, "recovery_s": rec, "reversals": rev}


@pytest.mark.parametrize(
    ("kind", "repmon", "none", "kumo", "met"),
    [
        ("outage", _m(100, 600.0, 0), _m(1000, 0.0, 0), _m(500, None, 3), True),
        ("outage", _m(300, 600.0, 0), _m(1000, 0.0, 0), _m(500, None, 3), False),  # 70 % fewer
        ("outage", _m(100, 960.0, 0), _m(1000, 0.0, 0), _m(500, None, 3), False),  # 16 min
        ("outage", _m(100, None, 0), _m(1000, 0.0, 0), _m(500, None, 3), False),  # never back
        ("outage", _m(100, 600.0, 3), _m(1000, 0.0, 0), _m(500, None, 3), False),  # 3 reversals
        # the 80 % target is for outages only; Kumo is beaten on failures or on recovery
        ("rate_limit", _m(300, 600.0, 2), _m(1000, 0.0, 0), _m(200, 1200.0, 0), True),
        ("rate_limit", _m(300, 600.0, 2), _m(1000, 0.0, 0), _m(200, 300.0, 0), False),
        ("rate_limit", _m(100, 600.0, 2), _m(1000, 0.0, 0), _m(200, 300.0, 0), True),
    ],
)
def test_closed_loop_verdicts(
    kind: str, repmon: dict[str, Any], none: dict[str, Any], kumo: dict[str, Any], met: bool
) -> None:
    inc = OUTAGE if kind == "outage" else IP_LIMIT
    (v,) = closed_loop_verdicts(
        {"s": {"repmon": repmon, "none": none, "kumo": kumo}}, {"s": scenario(inc)}
    )
    assert v["met"] is met
    assert (v["outage_80pct_fewer"] is None) is (kind != "outage")
    assert CLOSED_LOOP_TARGETS["recovery_s"] == 900.0


# ------------------------------------------------------------------------------ the loop
def test_repmon_control_buckets_follow_the_most_restrictive_decision(loop: ClosedLoop) -> None:
    """Limits of the repmon controller: per message, the decision `most_restrictive` picks,
    at rate_factor x the normal rate of that decision's scope."""
    from models.act.throttle_record import ThrottleRecord

    ctl = RepmonControl(loop.index)
    now = START + ONSET_S
    live = ctl.acting.controller.live
    live["provider:microsoft"] = ThrottleRecord(
        "provider:microsoft", "throttled", 0.25, "opened", None, now - 60, now + 3600
    )
    live["ip:192.0.2.12|provider:microsoft"] = ThrottleRecord(
        "ip:192.0.2.12|provider:microsoft", "paused", 0.02, "opened", None, now - 60, now + 3600
    )
    live["provider:google"] = ThrottleRecord(
        "provider:google",
        "throttled",
        0.5,
        "opened",
        None,
        now - 7200,
        now - 1,  # expired
    )
    ix = loop.index
    rows = np.random.default_rng(8).choice(len(ix.lane_dom), 3000, replace=False)
    dom, ip, snd = ix.lane_dom[rows], ix.lane_ip[rows], ix.lane_sender[rows]
    lim = ctl.limits(now, dom, ip, snd)
    for j in range(len(rows)):
        rec = most_restrictive(ix.scopes(int(dom[j]), int(ip[j]), int(snd[j])), live, now)
        b = int(lim.bucket[j])
        if rec is None:
            assert b == -1 and lim.factor[j] == 1.0
        else:
            assert lim.keys[b] == rec.scope and lim.factor[j] == rec.rate_factor
            assert lim.rate[b] == pytest.approx(rec.rate_factor * ix.normal_rate(rec.scope))
    assert {lim.keys[b] for b in set(lim.bucket.tolist()) if b >= 0} == {
        "provider:microsoft",
        "ip:192.0.2.12|provider:microsoft",
    }


@pytest.fixture(scope="module")
def outage_runs() -> dict[str, Any]:
    sc = quick_scenarios()["provider-outage"]
    return {c: run_closed_loop(sc, c, seed=2, rate=10.0) for c in ("repmon", "none", "kumo")}


def test_demand_is_the_same_for_every_controller(outage_runs: dict[str, Any]) -> None:
    new = [r.series["new_act"] for r in outage_runs.values()]
    assert new[0] == new[1] == new[2]
    assert sum(new[0]) > 0
    again = run_closed_loop(quick_scenarios()["provider-outage"], "none", seed=2, rate=10.0)
    assert again.series == outage_runs["none"].series


def test_closed_loop_outage_throttle_cuts_failures_and_volume_recovers(
    outage_runs: dict[str, Any],
) -> None:
    me, none = outage_runs["repmon"], outage_runs["none"]
    # the events went through the real ingest: all accepted
    assert me.events > 0 and me.rejected == 0
    # the Monitor found the outage and the controller throttled the provider
    opened = [i for i in me.incidents if i["action"] == "opened"]
    assert any(i["type"] == "provider_outage" and i["scope"] == me.act_scope for i in opened)
    mine = [r for r in me.records if r["scope"] == me.act_scope]
    assert mine and min(r["rate_factor"] for r in mine) < 0.5
    assert mine[-1]["state"] == "normal"
    m_me, m_none = closed_loop_metrics(me), closed_loop_metrics(none)
    # directional: throttling fails far fewer attempts than sending into the outage ...
    assert m_none["failed_incident"] > 0
    assert m_me["failed_incident"] < 0.5 * m_none["failed_incident"]
    # ... holds mail back instead of losing it ...
    assert m_me["delayed_act"] > 0 and m_me["queued_at_end"] == 0
    # ... and comes back: full capacity again after the provider recovered, the volume back
    assert m_me["recovery_s"] is not None and m_me["volume_recovery_s"] is not None
    assert me.series["factor_act"][-1] == 1.0
    tail = me.series["attempts_act"][-15:]
    assert sum(tail) / len(tail) >= 0.8 * me.normal_per_step
    # no throttle: never below full capacity, so nothing to recover from
    assert m_none["recovery_s"] == 0.0 and m_none["min_factor"] == 1.0


def test_closed_loop_report_renders(outage_runs: dict[str, Any]) -> None:
    sc = quick_scenarios()["provider-outage"]
    results = {
        "provider-outage": {
            c: {
                "metrics": closed_loop_metrics(r), "series": r.series, "onset": r.onset,
                "end": r.end, "step_s": r.step_s, "normal_per_step": r.normal_per_step,
            }
            for c, r in outage_runs.items()
        }
    }  # fmt: skip
    runs = {n: {c: r["metrics"] for c, r in by.items()} for n, by in results.items()}
    verdicts = closed_loop_verdicts(runs, {"provider-outage": sc})
    page = render_closed_loop_html(results, {"provider-outage": sc}, verdicts, "test")
    assert page.count("<svg") == 1 and "viewBox=" in page and "width:100%" in page
    for label in ("repmon policy", "no throttle", "KumoMTA-style rules", "Rate factor"):
        assert label in page
    assert "<script" not in page and "http" not in page.split("<body>")[1]
