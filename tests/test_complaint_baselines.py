"""Complaint baselines of young scopes: the lagged exposure and the parent floor.

Complaints become known tens of minutes to hours after the delivery they are about
(docs/incidents.md, ``complaint_spike``). Two rules follow, both tested here:

* the denominator of a complaint window is the largest delivery count of a window of the same
  span within the lag range (the fine ring, then whole coarse hours): the complaints counted
  now come from deliveries some unknown lag earlier, so after a blast its complaint wave is
  compared with the blast, not with the quiet minutes after it;
* a scope's own history may raise its complaint baseline above its parent's but never lower it
  below (its own complaints have not all arrived yet).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.detect.config import MonitorConfig
from models.detect.detectors import DEFAULT_DETECTORS, DetectorSpec, run_window
from models.detect.monitor import Monitor
from models.detect.windows import WindowTests
from models.schema import COL, N_COLUMNS
from models.state.deltas import Deltas

T0 = 1_795_420_800  # 2026-11-23T00:00:00Z, a multiple of 3600
COMPLAINTS: DetectorSpec = next(s for s in DEFAULT_DETECTORS if s.type == "complaint_spike")


def scopes_of(campaign: str, provider: str) -> tuple[str, ...]:
    """The scopes ingest counts a message of tenant acme's ``campaign`` at ``provider`` in."""
    return (
        f"provider:{provider}",
        "tenant:acme",
        f"tenant:acme|provider:{provider}",
        f"campaign:{campaign}",
        f"campaign:{campaign}|provider:{provider}",
    )


def minute(m: int, traffic: dict[tuple[str, ...], tuple[int, int]]) -> Deltas:
    """One minute's Deltas: per scope set (delivered, complained), fanned out to each scope."""
    names: list[str] = []
    rows: dict[str, np.ndarray] = {}
    for scopes, (delivered, complained) in traffic.items():
        for sc in scopes:
            if sc not in rows:
                names.append(sc)
                rows[sc] = np.zeros(N_COLUMNS, dtype=np.int64)
            rows[sc][COL["delivered"]] += delivered
            rows[sc][COL["complained"]] += complained
    start = T0 + m * 60
    return Deltas(
        scopes=names,
        scope_idx=np.arange(len(names), dtype=np.int32),
        bucket_start=np.full(len(names), start, dtype=np.int64),
        counts=np.stack([rows[n] for n in names]),
        watermark=float(start + 59),
    )


def background(
    m: int, rng: np.random.Generator, yahoo_rate: float
) -> dict[tuple[str, ...], tuple[int, int]]:
    """Steady transactional mail: Yahoo with chance complaints, Google with none."""
    return {
        scopes_of("acme-tx", "yahoo"): (300, int(rng.binomial(300, yahoo_rate))),
        scopes_of("acme-tx", "google"): (600, 0),
    }


def run(
    extra: dict[int, dict[tuple[str, ...], tuple[int, int]]],
    minutes: int,
    yahoo_rate: float = 0.0004,
    config: MonitorConfig | None = None,
) -> tuple[Monitor, list[tuple[str, str]]]:
    rng = np.random.default_rng(3)
    mon = Monitor(config)
    out: list[tuple[str, str]] = []
    for m in range(minutes):
        traffic = background(m, rng, yahoo_rate)
        for scopes, (d, c) in extra.get(m, {}).items():
            od, oc = traffic.get(scopes, (0, 0))
            traffic[scopes] = (od + d, oc + c)
        d = minute(m, traffic)
        mon.add(d)
        out += [
            (c.incident.type, c.incident.scope)
            for c in mon.advance(d.watermark)
            if c.action == "opened"
        ]
    return mon, out


BLAST = scopes_of("acme-news", "yahoo")
BLAST_GOOGLE = scopes_of("acme-news", "google")  # Gmail sends no per-message complaints


def blast_then_wave(complaints: int) -> dict[int, dict[tuple[str, ...], tuple[int, int]]]:
    """A 20 min blast of 10,000 Yahoo (and 20,000 Gmail) deliveries from minute 180; its
    Yahoo ``complaints`` arrive 30-40 min after it started, when the campaign no longer sends."""
    plan: dict[int, dict[tuple[str, ...], tuple[int, int]]] = {}
    for m in range(180, 200):
        plan[m] = {BLAST: (500, 0), BLAST_GOOGLE: (1000, 0)}
    for i in range(complaints):
        m = 210 + i % 10
        d, c = plan.get(m, {}).get(BLAST, (0, 0))
        plan.setdefault(m, {})[BLAST] = (d, c + 1)
    return plan


@pytest.mark.parametrize(
    ("complaints", "spike", "why"),
    [
        (0, False, "no complaints"),
        (8, False, "0.08 % of the blast: a marketing campaign's usual rate, arriving late"),
        (80, True, "0.8 % of the blast: a spike, whenever the reports arrive"),
    ],
)
def test_complaint_wave_after_a_blast(complaints: int, spike: bool, why: str) -> None:
    _, changes = run(blast_then_wave(complaints), minutes=240)
    got = [s for t, s in changes if t == "complaint_spike"]
    assert bool(got) is spike, (why, got)
    if spike:  # on the campaign at Yahoo, the narrowest scope that explains it
        assert got[0] == "campaign:acme-news|provider:yahoo", got


def test_steady_spike_is_not_slowed_by_the_exposure() -> None:
    """A campaign sending steadily whose Yahoo complaints jump opens as soon as the window's
    own deliveries allow: the earlier windows of a steady stream are no larger."""
    camp = scopes_of("acme-flash", "yahoo")
    plan: dict[int, dict[tuple[str, ...], tuple[int, int]]] = {}
    rng = np.random.default_rng(11)
    for m in range(120, 260):
        plan[m] = {camp: (50, int(rng.binomial(50, 0.0004 if m < 200 else 0.01)))}
    base = MonitorConfig()
    # the same run with the window's own deliveries as the denominator
    own = dataclasses.replace(COMPLAINTS, den_coarse_h=0)
    plain = MonitorConfig(detectors=tuple(own if s.type == own.type else s for s in base.detectors))

    def first(cfg: MonitorConfig) -> float | None:
        mon, _ = run(plan, minutes=260, config=cfg)
        at = [i.opened_at for i in mon.open_incidents() if i.type == "complaint_spike"]
        return min(at) if at else None

    with_exposure, without = first(base), first(plain)
    assert with_exposure is not None and without is not None
    assert with_exposure <= without
    assert with_exposure - (T0 + 200 * 60) <= 45 * 60


# ------------------------------------------------------------------------------ exposure unit


def brute_exposure(series: list[int], k: int, scale: float) -> float:
    """Reference: ``series`` newest bucket first; the newest k-window or the largest earlier
    k-window times ``scale``."""
    n = len(series)
    if k >= n:
        return float(sum(series))
    own = float(sum(series[:k]))
    earlier = max(float(sum(series[j : j + k])) for j in range(1, n - k + 1))
    return max(own, scale * earlier)


@pytest.mark.parametrize(
    ("series", "k", "scale", "want", "why"),
    [
        ([10] * 12, 3, 1.0, 30.0, "steady: every window holds the same"),
        ([10] * 12, 3, 2 / 3, 30.0, "steady, partial newest bucket: the own window binds"),
        ([0, 0, 0, 0, 500, 500, 500, 500, 0, 0, 0, 0], 3, 1.0, 1500.0, "a blast 20-35 min ago"),
        ([0, 0, 0, 0, 500, 500, 500, 500, 0, 0, 0, 0], 3, 0.5, 750.0, "the same, newest half"),
        ([90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60], 3, 1.0, 90.0, "now larger than before"),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 12, 1.0, 78.0, "the whole ring: no shift"),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 6, 1.0, 57.0, "the oldest six buckets"),
    ],
)
def test_lagged_exposure_table(
    series: list[int], k: int, scale: float, want: float, why: str
) -> None:
    csum = np.cumsum(np.asarray([series], dtype=np.float64), axis=1)
    got = float(WindowTests._lagged_exposure(csum, k, scale)[0])
    assert got == pytest.approx(want), why
    assert got == pytest.approx(brute_exposure(series, k, scale)), why


@settings(max_examples=200, deadline=None)
@given(
    series=st.lists(st.integers(0, 2000), min_size=12, max_size=12),
    k=st.sampled_from(COMPLAINTS.windows),
    scale=st.floats(0.5, 1.0),
    bump=st.tuples(st.integers(0, 11), st.integers(1, 500)),
)
def test_property_exposure_bounds_every_lag(
    series: list[int], k: int, scale: float, bump: tuple[int, int]
) -> None:
    """The exposure equals the reference, is at least the window's own deliveries and at
    least every earlier window (scaled), and more deliveries anywhere never lower it."""
    csum = np.cumsum(np.asarray([series], dtype=np.float64), axis=1)
    got = float(WindowTests._lagged_exposure(csum, k, scale)[0])
    assert got == pytest.approx(brute_exposure(series, k, scale))
    assert got >= sum(series[:k]) - 1e-9
    for j in range(1, len(series) - k + 1):
        assert got >= scale * sum(series[j : j + k]) - 1e-6
    more = list(series)
    more[bump[0]] += bump[1]
    c2 = np.cumsum(np.asarray([more], dtype=np.float64), axis=1)
    assert float(WindowTests._lagged_exposure(c2, k, scale)[0]) >= got - 1e-9


# ------------------------------------------------------------------------------ parent floor


def baselines(mon: Monitor, spec: DetectorSpec) -> dict[str, tuple[float, float]]:
    """scope -> (baseline p0, parent baseline) of ``spec`` at the Monitor's clock."""
    f = mon._windows.frame(mon.store.watermark, mon._parents(), mon._first_t)
    assert f is not None
    res = mon._windows.test(spec, f)
    out: dict[str, tuple[float, float]] = {}
    for p, r in enumerate(f.rows.tolist()):
        name = mon.store.names[r]
        if name is not None:
            out[name] = (float(res.p0[p]), float(res.p_parent[p]))
    return out


@pytest.mark.parametrize(
    ("own_rate", "floor", "relation", "why"),
    [
        (0.0, True, "==", "immature history without complaints: the parent's baseline"),
        (0.0, False, "<", "the same without the floor: pulled below the parent"),
        (0.004, True, ">", "a campaign complaining more than its provider keeps its own"),
    ],
)
def test_parent_floor(own_rate: float, floor: bool, relation: str, why: str) -> None:
    """A campaign at Yahoo with three hours of its own history (rate ``own_rate``) under a
    provider complaining at 0.1 % (the baseline floor does not bind)."""
    spec = dataclasses.replace(COMPLAINTS, parent_floor=floor)
    camp = scopes_of("acme-daily", "yahoo")
    plan = {m: {camp: (200, round(200 * own_rate))} for m in range(0, 240)}
    mon, _ = run(plan, minutes=240, yahoo_rate=0.001)
    p0, parent = baselines(mon, spec)["campaign:acme-daily|provider:yahoo"]
    assert parent > spec.min_baseline, "the test needs a parent above the floor"
    if relation == "==":
        assert p0 == pytest.approx(parent), why
    elif relation == "<":
        assert p0 < parent, why
    else:
        assert p0 > parent, why


# ------------------------------------------------------------------------------ spread


def opens_with(x: float, n: float, p0: float, w_parent: float) -> tuple[bool, float]:
    cv = np.array([np.sqrt(COMPLAINTS.cv**2 + w_parent * COMPLAINTS.spread**2)])
    t = run_window(COMPLAINTS, np.array([x]), np.array([n]), np.array([p0]), cv=cv)
    return bool(t.opens[0]), float(t.z[0])


@pytest.mark.parametrize(
    ("x", "n", "p0", "w_parent", "opens", "why"),
    [
        (53, 37853, 0.00033, 1.0, False, "a big campaign at 4x its provider's mixed rate"),
        (53, 37853, 0.00033, 0.0, True, "the same against its own mature history: a spike"),
        (6, 1707, 0.0002, 1.0, True, "a few complaints: the Poisson tail binds, as before"),
        (150, 37853, 0.00033, 1.0, True, "12x the provider's rate: beyond any campaign's spread"),
    ],
)
def test_spread_table(x: int, n: int, p0: float, w_parent: float, opens: bool, why: str) -> None:
    assert opens_with(x, n, p0, w_parent)[0] is opens, why


def test_spread_leaves_small_counts_alone() -> None:
    """Where the expected count is small the Poisson tail binds: the spread changes no z."""
    assert opens_with(6, 1707, 0.0002, 1.0)[1] == pytest.approx(opens_with(6, 1707, 0.0002, 0)[1])


@settings(max_examples=200, deadline=None)
@given(
    x=st.integers(0, 500),
    n=st.integers(1, 100_000),
    p0=st.floats(1e-5, 0.01),
    w=st.floats(0.0, 1.0),
    dw=st.floats(0.0, 1.0),
)
def test_property_more_spread_never_more_significant(
    x: int, n: int, p0: float, w: float, dw: float
) -> None:
    """A larger borrowed share (more spread) never raises z, so never opens what less did not."""
    o1, z1 = opens_with(x, n, p0, min(1.0, w + dw))
    o0, z0 = opens_with(x, n, p0, w)
    if z0 > 0:  # above the expectation (below it more spread only brings z toward 0)
        assert z1 <= z0 + 1e-9
    assert not (o1 and not o0)


def test_borrowed_baseline_uses_the_spread() -> None:
    """Where the parent floor overrules the own history the whole spread applies."""
    camp = scopes_of("acme-daily", "yahoo")
    plan = {m: {camp: (200, 0)} for m in range(0, 240)}
    mon, _ = run(plan, minutes=240, yahoo_rate=0.001)
    f = mon._windows.frame(mon.store.watermark, mon._parents(), mon._first_t)
    assert f is not None
    seen: dict[str, float] = {}
    orig = run_window

    def spy(spec: DetectorSpec, *a: object, **kw: object) -> object:
        cv = kw.get("cv")
        if spec.type == COMPLAINTS.type and cv is not None:
            for p, r in enumerate(f.rows.tolist()):
                seen[str(mon.store.names[r])] = float(np.asarray(cv)[p])
        return orig(spec, *a, **kw)  # type: ignore[arg-type]

    import models.detect.windows as windows

    windows.run_window = spy  # type: ignore[assignment]
    try:
        mon._windows.test(COMPLAINTS, f)
    finally:
        windows.run_window = orig
    full = float(np.sqrt(COMPLAINTS.cv**2 + COMPLAINTS.spread**2))
    assert seen["campaign:acme-daily|provider:yahoo"] == pytest.approx(full)
    assert seen["provider:yahoo"] < 0.5 * full  # a long history: its own rate, little spread
