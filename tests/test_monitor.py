"""Monitor: detection on synthetic per-minute Deltas, hysteresis, related scopes, API shape.

Synthetic traffic: a list of *streams*, each one combination of scopes (domain, provider, mx, ip,
pool, sender, tenant, campaign) with a per-minute volume and outcome probabilities; every minute
counts are drawn from a multinomial (fixed seed) and fanned out to each scope, as ingest does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.detect.monitor import Monitor, MonitorConfig
from models.schema import COL, N_COLUMNS
from models.state.deltas import Deltas

T0 = 1_795_420_800  # 2026-11-23T00:00:00Z, a multiple of 3600


@dataclass
class Stream:
    scopes: tuple[str, ...]
    per_min: int
    #: probabilities of outcomes among attempts (rest = delivered)
    probs: dict[str, float] = field(default_factory=dict)
    complaint_per_delivered: float = 0.0002


#: outcome -> columns it increments
OUTCOMES: dict[str, tuple[str, ...]] = {
    "delivered": ("delivered",),
    "transient": ("deferred", "class_transient"),
    "throttle": ("deferred", "class_throttle"),
    "block": ("bounced", "class_block"),
    "hard": ("bounced", "class_hard", "user_unknown"),
    "hard_known_good": ("bounced", "class_hard", "user_unknown", "user_unknown_known_good"),
    "auth": ("bounced", "class_config", "auth_failure"),
    "soft": ("deferred", "class_soft"),
}


def default_streams() -> list[Stream]:
    base = {"transient": 0.02, "hard": 0.005, "block": 0.002, "throttle": 0.002}
    out = []
    for prov, doms, mx in (
        ("google", ("gmail.com",), "google"),
        ("microsoft", ("outlook.com", "hotmail.com"), "microsoft"),
        ("yahoo", ("yahoo.com",), "yahoo"),
    ):
        for dom in doms:
            for ip in ("192.0.2.1", "192.0.2.2"):
                out.append(
                    Stream(
                        (
                            f"domain:{dom}",
                            f"provider:{prov}",
                            f"mx:{mx}",
                            f"ip:{ip}",
                            "pool:shared",
                            "sender:news.example.com",
                            "tenant:acme",
                            "campaign:c1",
                        ),
                        per_min=60,
                        probs=dict(base),
                    )
                )
    return out


def minute_deltas(streams: list[Stream], minute: int, rng: np.random.Generator) -> Deltas:
    scopes: list[str] = []
    sidx: dict[str, int] = {}
    agg: dict[int, np.ndarray] = {}
    start = T0 + minute * 60
    for s in streams:
        names = ["delivered", *[k for k in s.probs if k != "delivered"]]
        p_rest = [s.probs[k] for k in names[1:]]
        p = np.array([max(0.0, 1 - sum(p_rest)), *p_rest])
        draws = rng.multinomial(s.per_min, p / p.sum())
        row = np.zeros(N_COLUMNS, dtype=np.int64)
        for name, n in zip(names, draws, strict=True):
            for c in OUTCOMES[name]:
                row[COL[c]] += n
        row[COL["complained"]] += rng.binomial(
            int(row[COL["delivered"]]), s.complaint_per_delivered
        )
        for sc in s.scopes:
            i = sidx.get(sc)
            if i is None:
                i = sidx[sc] = len(scopes)
                scopes.append(sc)
                agg[i] = np.zeros(N_COLUMNS, dtype=np.int64)
            agg[i] += row
    keys = sorted(agg)
    return Deltas(
        scopes=scopes,
        scope_idx=np.asarray(keys, dtype=np.int32),
        bucket_start=np.full(len(keys), start, dtype=np.int64),
        counts=np.stack([agg[k] for k in keys]) if keys else np.zeros((0, N_COLUMNS), np.int64),
        watermark=float(start + 59),
    )


def run(
    streams: list[Stream],
    minutes: int,
    seed: int = 7,
    mutate: Callable[[int, list[Stream]], None] | None = None,
    mon: Monitor | None = None,
) -> tuple[Monitor, list[dict[str, object]]]:
    rng = np.random.default_rng(seed)
    mon = mon or Monitor()
    out: list[dict[str, object]] = []
    for m in range(minutes):
        if mutate is not None:
            mutate(m, streams)
        d = minute_deltas(streams, m, rng)
        mon.add(d)
        out.extend(c.to_json() for c in mon.advance(d.watermark))
    return mon, out


def opened(changes: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(c["type"], c["scope"], c["opened_at"]) for c in changes if c["action"] == "opened"]


def test_stationary_noise_opens_nothing() -> None:
    _, changes = run(default_streams(), minutes=8 * 60)
    assert opened(changes) == []


ONSET = 180  # minutes


def _set(pred: Callable[[Stream], bool], **probs: float) -> Callable[[int, list[Stream]], None]:
    def mutate(m: int, streams: list[Stream]) -> None:
        if m == ONSET:
            for s in streams:
                if pred(s):
                    s.probs.update(probs)

    return mutate


@pytest.mark.parametrize(
    ("mutate", "want_type", "want_scopes", "max_delay_min"),
    [
        (
            _set(lambda s: "provider:yahoo" in s.scopes, transient=0.7),
            "provider_outage",
            {"provider:yahoo", "mx:yahoo", "domain:yahoo.com"},
            5,
        ),
        (
            _set(lambda s: "provider:microsoft" in s.scopes, throttle=0.5),
            "rate_limited",
            {"provider:microsoft", "mx:microsoft"},
            5,
        ),
        (
            _set(
                lambda s: "provider:microsoft" in s.scopes and "ip:192.0.2.1" in s.scopes,
                block=0.9,
            ),
            "block",
            {"ip:192.0.2.1"},
            5,
        ),
        (
            _set(lambda s: "provider:google" in s.scopes, auth=0.6),
            "auth_failure",
            {"sender:news.example.com"},
            5,
        ),
        (
            _set(lambda s: True, hard=0.2),
            "hard_bounce_spike",
            {"campaign:c1", "tenant:acme"},
            15,
        ),
        (
            _set(lambda s: "domain:yahoo.com" in s.scopes, hard_known_good=0.3),
            "false_hard_bounces",
            {"mx:yahoo", "domain:yahoo.com"},
            15,
        ),
    ],
)
def test_scenarios_detected_once_with_right_scope(
    mutate: Callable[[int, list[Stream]], None],
    want_type: str,
    want_scopes: set[str],
    max_delay_min: int,
) -> None:
    _, changes = run(default_streams(), minutes=ONSET + 40, mutate=mutate)
    op = opened(changes)
    assert op, "nothing detected"
    typ, scope, at = op[0]
    assert typ == want_type
    assert scope in want_scopes
    assert 0 <= float(at) - (T0 + ONSET * 60) <= max_delay_min * 60  # type: ignore[arg-type]
    # related scopes are folded into one incident: no other incident opens
    assert len(op) == 1, op


def test_complaint_spike_detected_within_45_min() -> None:
    def mutate(m: int, streams: list[Stream]) -> None:
        if m == ONSET:
            for s in streams:
                if "provider:google" in s.scopes:
                    s.complaint_per_delivered = 0.01

    _, changes = run(default_streams(), minutes=ONSET + 60, mutate=mutate)
    op = opened(changes)
    assert op and op[0][0] == "complaint_spike"
    assert float(op[0][2]) - (T0 + ONSET * 60) <= 45 * 60  # type: ignore[arg-type]


def test_hysteresis_closes_after_quiet_period() -> None:
    def mutate(m: int, streams: list[Stream]) -> None:
        for s in streams:
            if "provider:yahoo" in s.scopes:
                s.probs["transient"] = 0.7 if ONSET <= m < ONSET + 20 else 0.02

    mon, changes = run(default_streams(), minutes=ONSET + 90, mutate=mutate)
    kinds = [(c["action"], c["type"]) for c in changes]
    assert kinds == [("opened", "provider_outage"), ("closed", "provider_outage")]
    closed = changes[1]
    assert closed["closed_at"] is not None
    assert float(closed["closed_at"]) >= T0 + (ONSET + 20) * 60 + 900  # type: ignore[arg-type]
    assert mon.open_incidents() == []


def test_change_json_shape_and_status_metrics() -> None:
    mon, changes = run(
        default_streams(),
        minutes=ONSET + 10,
        mutate=_set(lambda s: "provider:yahoo" in s.scopes, transient=0.8),
    )
    c = changes[0]
    assert set(c) == {
        "kind",
        "action",
        "id",
        "type",
        "scope",
        "opened_at",
        "closed_at",
        "severity",
        "evidence",
    }
    assert c["kind"] == "incident" and c["action"] == "opened" and c["closed_at"] is None
    ev = c["evidence"]
    assert isinstance(ev, dict)
    assert {"count", "volume", "rate", "baseline", "top_replies"} <= set(ev)
    json.dumps(c)
    status = mon.status(top=3)
    json.dumps(status)
    assert len(status["scopes"]["domain"]) == 3
    assert status["open_incidents"][0]["type"] == "provider_outage"
    prov = {s["scope"]: s for s in status["scopes"]["provider"]}
    assert prov["provider:yahoo"]["m15"]["rates"]["transient"] > 0.5
    met = mon.metrics()
    json.dumps(met)
    assert met["incidents_open"]["provider_outage"] == 1
    assert met["active_scopes"] == len(mon.store)
    assert met["memory_bytes"] > 0


def test_warmup_suppresses_openings() -> None:
    mon = Monitor(MonitorConfig(warmup_s=4 * 3600))
    _, changes = run(
        default_streams(),
        minutes=ONSET + 10,
        mutate=_set(lambda s: "provider:yahoo" in s.scopes, transient=0.8),
        mon=mon,
    )
    assert opened(changes) == []


def test_advance_is_idempotent_without_new_data() -> None:
    mon, _ = run(default_streams(), minutes=30)
    wm = mon.store.watermark
    n = mon.advances
    assert mon.advance(wm) == []
    assert mon.advances == n  # nothing recomputed


@settings(max_examples=6, deadline=None)
@given(st.integers(min_value=0, max_value=2**31 - 1), st.floats(min_value=0.01, max_value=0.2))
def test_property_constant_rate_noise_is_quiet(seed: int, transient: float) -> None:
    """Stationary traffic at any constant deferral rate never opens an incident."""
    streams = default_streams()
    for s in streams:
        s.probs["transient"] = transient
    _, changes = run(streams, minutes=150, seed=seed)
    assert opened(changes) == []


def test_throttling_during_outage_is_explained_not_reported() -> None:
    """Outage replies that classify as throttle (Microsoft 'Server busy') raise no rate_limited."""
    _, changes = run(
        default_streams(),
        minutes=ONSET + 30,
        mutate=_set(lambda s: "provider:microsoft" in s.scopes, transient=0.5, throttle=0.25),
    )
    assert [c[0] for c in opened(changes)] == ["provider_outage"]


def test_late_rows_show_in_metrics() -> None:
    mon, _ = run(default_streams(), minutes=40)
    rng = np.random.default_rng(1)
    late = minute_deltas(default_streams(), 0, rng)  # 40 minutes old > 15 min lateness
    prov = [i for i, sc in enumerate(late.scopes) if sc.startswith("provider:")]
    n_events = int(late.counts[np.isin(late.scope_idx, prov), :9].sum())
    assert 0 < n_events < int(late.counts[:, :9].sum())
    mon.add(late)
    assert mon.metrics()["late_dropped"] == n_events


def test_advance_through_detects_a_jump_step_by_step() -> None:
    """A backlog added before the clock starts (or one jump of the watermark) is detected at the
    event time a replay ticking every step would see, not once at the end of the jump."""
    onset = ONSET

    def mutate(m: int, streams: list[Stream]) -> None:
        if m == onset:
            for s in streams:
                if "provider:microsoft" in s.scopes:
                    s.probs["transient"] = 0.6

    _ticked, changes = run(default_streams(), minutes=onset + 30, mutate=mutate)
    want = opened(changes)
    assert want and want[0][0] == "provider_outage"
    # the same minutes added all at once, then one advance_through to the end
    rng = np.random.default_rng(7)
    streams = default_streams()
    mon = Monitor()
    last = 0.0
    for m in range(onset + 30):
        mutate(m, streams)
        d = minute_deltas(streams, m, rng)
        mon.add(d)
        last = d.watermark
    got = [c.to_json() for c in mon.advance_through(last, 60.0)]
    first = next((c["type"], c["scope"], c["opened_at"]) for c in got if c["action"] == "opened")
    assert first[:2] == want[0][:2]
    assert abs(float(first[2]) - float(want[0][2])) <= 60.0


def _two_senders() -> list[Stream]:
    """Two sender domains on two shared IPs at three providers, with the combined scopes."""
    base = {"transient": 0.02, "hard": 0.005, "block": 0.002, "throttle": 0.002}
    out = []
    for prov, dom in (
        ("google", "gmail.com"),
        ("microsoft", "outlook.com"),
        ("yahoo", "yahoo.com"),
    ):
        for ip in ("192.0.2.1", "192.0.2.2"):
            for sender in ("news.example.com", "shop.example.com"):
                scopes = (
                    f"domain:{dom}",
                    f"provider:{prov}",
                    f"mx:{prov}",
                    f"ip:{ip}",
                    "pool:shared",
                    f"sender:{sender}",
                    f"ip:{ip}|provider:{prov}",
                    f"pool:shared|provider:{prov}",
                    f"sender:{sender}|provider:{prov}",
                )
                out.append(Stream(scopes, per_min=40, probs=dict(base)))
    return out


def test_a_block_that_an_open_auth_failure_explains_is_not_reported() -> None:
    """A sender's DMARC fails: Gmail and Outlook.com answer with authentication replies, Yahoo
    with a policy block (``554 5.7.9``). The auth_failure opens on the sender; the block at
    ``sender:...|provider:yahoo`` is part of the same cause (the sender holds all of its
    mail), whichever way the block candidate is reached (directly, or attributed from the
    sender), so no block incident is reported."""

    def mutate(m: int, streams: list[Stream]) -> None:
        if m != ONSET:
            return
        for s in streams:
            if "sender:news.example.com" in s.scopes:
                if "provider:yahoo" in s.scopes:
                    s.probs["block"] = 0.6
                else:
                    s.probs["auth"] = 0.6

    _, changes = run(_two_senders(), minutes=ONSET + 30, mutate=mutate)
    got = opened(changes)
    assert [t for t, _, _ in got] == ["auth_failure"], got
    assert got[0][1] == "sender:news.example.com"


def test_an_outage_at_one_provider_does_not_explain_a_block_at_another() -> None:
    """Microsoft has an outage while Google blocks one IP: the block is not part of the outage
    (the scopes are at two providers, so disjoint), however large the outage's excess; both
    open. Before, the block, reached as the IP's Google part, was hidden by the outage."""

    def mutate(m: int, streams: list[Stream]) -> None:
        if m != ONSET:
            return
        for s in streams:
            if "provider:microsoft" in s.scopes:
                s.probs["transient"] = 0.7
            if "provider:google" in s.scopes and "ip:192.0.2.1" in s.scopes:
                s.probs["block"] = 0.6

    _, changes = run(_two_senders(), minutes=ONSET + 30, mutate=mutate)
    got = {(t, s) for t, s, _ in opened(changes)}
    assert ("provider_outage", "provider:microsoft") in got, got
    assert ("block", "ip:192.0.2.1|provider:google") in got, got


def test_a_senders_auth_failure_at_one_provider_explains_its_blocks_at_another() -> None:
    """A sender's DMARC fails: Gmail answers with authentication replies, Yahoo with policy
    blocks (``554 5.7.9``). The cause is on the sending side (``sender_side``), so the open
    ``auth_failure`` explains the blocks at Yahoo although its scope names Google."""

    def mutate(m: int, streams: list[Stream]) -> None:
        if m != ONSET:
            return
        for s in streams:
            if "sender:news.example.com" in s.scopes:
                if "provider:google" in s.scopes:
                    s.probs["auth"] = 0.6
                elif "provider:yahoo" in s.scopes:
                    s.probs["block"] = 0.6

    _, changes = run(_two_senders(), minutes=ONSET + 30, mutate=mutate)
    got = opened(changes)
    assert {t for t, _, _ in got} == {"auth_failure"}, got


def test_an_outage_at_one_provider_does_not_explain_an_ips_block_at_the_others() -> None:
    """Microsoft has an outage while Google and Yahoo block one IP: the block opens on the IP
    as a whole (it is not a part of one provider), a scope that spans Microsoft too. The
    outage can account only for the IP's Microsoft mail, which holds none of the block's
    excess, so it does not explain the block, however large its own excess."""

    def mutate(m: int, streams: list[Stream]) -> None:
        if m != ONSET:
            return
        for s in streams:
            if "provider:microsoft" in s.scopes:
                s.probs["transient"] = 0.7
            elif "ip:192.0.2.1" in s.scopes:
                s.probs["block"] = 0.6

    mon, changes = run(_two_senders(), minutes=ONSET + 30, mutate=mutate)
    got = {(t, s) for t, s, _ in opened(changes)}
    assert ("provider_outage", "provider:microsoft") in got, got
    assert ("block", "ip:192.0.2.1") in got, got
    assert not [i for i in mon._open.values() if i.explained_by is not None]


def test_a_senders_auth_failure_does_not_explain_a_block_its_mail_does_not_hold() -> None:
    """news.example.com fails authentication at Gmail (``sender_side``), while Yahoo blocks
    all mail of one IP, both senders alike: the sender's Yahoo mail holds only half of the
    block's excess, so its auth failure does not explain the block, which opens."""

    def mutate(m: int, streams: list[Stream]) -> None:
        if m != ONSET:
            return
        for s in streams:
            if "sender:news.example.com" in s.scopes and "provider:google" in s.scopes:
                s.probs["auth"] = 0.6
            if "ip:192.0.2.2" in s.scopes and "provider:yahoo" in s.scopes:
                s.probs["block"] = 0.6

    _, changes = run(_two_senders(), minutes=ONSET + 30, mutate=mutate)
    got = {(t, s) for t, s, _ in opened(changes)}
    assert ("auth_failure", "sender:news.example.com|provider:google") in got, got
    assert ("block", "ip:192.0.2.2|provider:yahoo") in got, got


def test_an_incident_an_outage_explained_opens_when_the_outage_closes() -> None:
    """Microsoft has a 10 min outage while it also blocks one IP, for an hour. During the
    outage the block is explained (not reported); once the outage closes, the block is no
    longer explained and opens at the next detector run, instead of staying silent for as
    long as it lasts."""

    def mutate(m: int, streams: list[Stream]) -> None:
        for s in streams:
            if "provider:microsoft" not in s.scopes:
                continue
            if m == ONSET:
                s.probs["transient"] = 0.5
                if "ip:192.0.2.1" in s.scopes:
                    s.probs["block"] = 0.4
            if m == ONSET + 10:
                s.probs["transient"] = 0.02

    mon, changes = run(_two_senders(), minutes=ONSET + 90, mutate=mutate)
    outage = [c for c in changes if c["type"] == "provider_outage"]
    assert [c["action"] for c in outage] == ["opened", "closed"], outage
    closed_at = float(str(outage[1]["closed_at"]))
    blocks = [c for c in changes if c["type"] == "block" and c["action"] == "opened"]
    assert [c["scope"] for c in blocks] == ["ip:192.0.2.1|provider:microsoft"], blocks
    assert closed_at <= float(str(blocks[0]["opened_at"])) <= closed_at + 60.0
    assert not [i for i in mon._open.values() if i.explained_by is not None]
