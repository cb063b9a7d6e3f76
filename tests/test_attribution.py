"""Attribution: an incident opens on the narrowest scope whose surge explains the signal
(models/detect/attribution.py, docs/incidents.md "Attribution")."""

from __future__ import annotations

import numpy as np
import pytest

from models.detect.monitor import Monitor
from models.schema import COL, N_COLUMNS
from models.state.deltas import Deltas

T0 = 1_795_420_800
IPS = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")
PROVIDERS = ("google", "yahoo")


def minute(t: int, rng: np.random.Generator, throttled: dict[tuple[str, str], float]) -> Deltas:
    """One minute of traffic: every IP (pool shared-1) sends 60 attempts to each provider; a
    share ``throttled[(ip, provider)]`` of them is deferred with a rate-limit reply (0.2 %
    otherwise)."""
    names: list[str] = []
    idx: list[int] = []
    rows: list[np.ndarray] = []

    def sid(name: str) -> int:
        if name not in names:
            names.append(name)
        return names.index(name)

    for ip in IPS:
        for prov in PROVIDERS:
            n = 60
            k = int(rng.binomial(n, throttled.get((ip, prov), 0.002)))
            c = np.zeros(N_COLUMNS, dtype=np.int64)
            c[COL["delivered"]] = n - k
            c[COL["deferred"]] = k
            c[COL["class_throttle"]] = k
            for scope in (
                f"provider:{prov}",
                f"ip:{ip}",
                f"ip:{ip}|provider:{prov}",
                "pool:shared-1",
                f"pool:shared-1|provider:{prov}",
            ):
                idx.append(sid(scope))
                rows.append(c)
    counts = np.array(rows)
    # one row per (scope, bucket): sum the rows of each scope
    scope_idx = np.array(idx)
    uniq = np.unique(scope_idx)
    summed = np.stack([counts[scope_idx == u].sum(axis=0) for u in uniq])
    return Deltas(
        scopes=[names[u] for u in uniq],
        scope_idx=np.arange(len(uniq), dtype=np.int32),
        bucket_start=np.full(len(uniq), t, dtype=np.int64),
        counts=summed,
        replies=[],
        watermark=float(t + 60),
    )


def run(throttled: dict[tuple[str, str], float]) -> tuple[list[dict[str, object]], Monitor]:
    rng = np.random.default_rng(7)
    mon = Monitor()
    opened: list[dict[str, object]] = []
    onset = 3 * 3600
    for m in range(0, onset + 40 * 60, 60):
        d = minute(T0 + m, rng, throttled if m >= onset else {})
        mon.add(d)
        for ch in mon.advance(d.watermark):
            rec = ch.to_json()
            if rec["action"] == "opened":
                opened.append(rec)
    return opened, mon


@pytest.mark.parametrize(
    ("throttled", "want_scope", "wider"),
    [
        # one IP at Google: not all of Google, not the IP everywhere
        (
            {(IPS[0], "google"): 0.6},
            f"ip:{IPS[0]}|provider:google",
            {"provider:google", f"ip:{IPS[0]}"},
        ),
        # every IP at Google alike: Google (the provider asks everyone to slow down)
        ({(ip, "google"): 0.6 for ip in IPS}, "provider:google", set()),
        # one IP at every provider: the IP
        ({(IPS[1], p): 0.6 for p in PROVIDERS}, f"ip:{IPS[1]}", set()),
    ],
)
def test_rate_limit_opens_on_the_scope_to_act_on(
    throttled: dict[tuple[str, str], float], want_scope: str, wider: set[str]
) -> None:
    records, mon = run(throttled)
    opened = [r for r in records if r["type"] == "rate_limited"]
    assert opened, "no rate_limited incident"
    assert opened[0]["scope"] == want_scope, [r["scope"] for r in opened]
    assert len(opened) == 1, [r["scope"] for r in opened]
    # the wider scopes the surge also shows on are listed as related (as they turn hot)
    inc = next(i for i in mon.open_incidents() if i.id == opened[0]["id"])
    assert wider <= set(inc.related), inc.related
