"""A flood of distinct recipient domains: memory and tick time stay bounded.

In-process: the ingest interning tables (models/ingest/scopes.py) stay under their
``max_scopes`` while a flood of one-off domains goes through a Pipeline, with counts equal to
an unbounded Pipeline's, and reply verdicts unchanged across the resets.

On the real broker (fails, never skips, without one: conftest.kafka_bootstrap): a `repmon
worker` with ``REPMON_MAX_SCOPES`` set low takes 100,000 distinct recipient domains. Every event
is counted (exactly), the rolling state holds at most the cap and counts its evictions, the RSS
grows by at most the budget of docs/performance.md ("Memory in the live worker") and the ticks
stay under the bound documented there. Waits poll /metrics until a condition holds, with a
deadline (bench/memory.py ``LiveWorker``, shared with ``bench/memory.py --live``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.memory import FLOOD_SHARED_SCOPES, MIB, LiveWorker, parse_metrics
from models.ingest.pipeline import Pipeline
from models.ingest.scopes import ScopeTable

REPO = Path(__file__).resolve().parents[1]
DOMAINS = 100_000
CAP = 20_000
PARTITIONS = 3
WARMUP = 2_000


def documented_budget() -> dict[str, float]:
    """The live memory budget and tick bounds as docs/performance.md states them (one line
    each, in the section "Memory in the live worker")."""
    text = (REPO / "docs/performance.md").read_text()
    section = text.split("## Memory in the live worker", 1)[1].split("\n## ", 1)[0]
    out: dict[str, float] = {}
    keys = (
        "bytes per active scope",
        "bytes per interned name per input partition",
        "fixed base",
        "headroom",
        "flood tick bound",
        "idle tick bound",
    )
    for key in keys:
        m = re.search(rf"^- {key}: \*\*([0-9,.]+)\*\*", section, re.M)
        assert m, f"docs/performance.md does not state the {key!r} of the live budget"
        out[key] = float(m.group(1).replace(",", ""))
    return out


# ------------------------------------------------------------------------------ in-process
def _flood_pipeline(p: Pipeline, n: int, t0: float, tick: int) -> list[dict[str, object]]:
    """Feed ``n`` one-off domains (with some bounces) in ticks of ``tick`` events; per tick,
    the Deltas as {scope: its counts per column} and their top replies."""
    out = []
    for s in range(0, n, tick):
        raws = []
        for i in range(s, min(n, s + tick)):
            ev: dict[str, object] = {
                "event": "delivered",
                "timestamp": t0 + i * 0.01,
                "recipient": f"u@d{i}.flood-example.com",
                "sending_ip": f"192.0.2.{i % 7}",
                "campaign": "c1",
                "mx_host": "mx.example.net",
            }
            if i % 10 == 0:
                ev.update(
                    event="bounced",
                    smtp_code=550,
                    enhanced_code="5.1.1",
                    response="550 5.1.1 user unknown",
                    recipient=f"u@{('gmail.com', 'outlook.com')[i // 10 % 2]}",
                    mx_host=None,
                )
            raws.append(orjson.dumps(ev))
        assert p.feed_many(raws) == []
        d = p.flush()
        per: dict[str, object] = {}
        for j, i in enumerate(d.scope_idx.tolist()):
            row = d.counts[j]
            have = per.get(d.scopes[i])
            per[d.scopes[i]] = row if have is None else have + row  # type: ignore[operator]
        out.append({k: tuple(np.asarray(v).tolist()) for k, v in per.items()})
        out[-1]["replies"] = tuple(sorted((d.scopes[i], t, c) for i, t, c in d.replies))
    return out


def test_interning_is_bounded_and_exact() -> None:
    """A Pipeline whose tables hold at most 1,000 names: the same Deltas as an unbounded one
    (the verdicts of replies included), the tables reset and stay bounded."""
    t0 = time.time() - 3600
    small = Pipeline(max_scopes=1_000)  # the worker passes REPMON_MAX_SCOPES
    big = Pipeline()
    got = _flood_pipeline(small, 12_000, t0, 500)
    want = _flood_pipeline(big, 12_000, t0, 500)
    assert got == want
    table = small._scopes
    assert table.resets >= 5
    # bounded between ticks by the cap plus one tick's new names
    assert len(table) <= 1_000 + 500 + 16
    assert len(table.domain) <= 1_000 + 500
    assert small.resolver.cache_len() == 1  # per MX host, not per domain
    assert len(big._scopes) > 10_800  # the unbounded one kept every domain
    assert small.stats.accepted == big.stats.accepted == 12_000


def test_stable_ids_survive_a_reset() -> None:
    """provider: and mx: scopes keep their ids (reply caches are keyed by them); others go."""
    t = ScopeTable(Pipeline().resolver, max_scopes=10)
    keys = [(f"d{i}.example", "mx.google.com", None, None, None, None, None) for i in range(20)]
    ids = [t.resolve(k) for k in keys]
    assert all(isinstance(c, int) for c in ids)
    before = {t.names[s] for s in t.combo_scopes[0][1:3]}
    prov_ids = t.combo_scopes[0][1:3]
    t.bound()
    assert t.resets == 1 and len(t.combos) == 0
    assert len(t) == 2  # the two kept names; the forgotten slot below them does not count
    c = t.resolve(("x.example", "mx.google.com", None, None, None, None, None))
    assert isinstance(c, int) and c == 0
    assert t.combo_scopes[c][1:3] == prov_ids
    assert {t.names[s] for s in prov_ids} == before == {"provider:google", "mx:google"}
    assert t.names[t.combo_scopes[c][0]] == "domain:x.example"
    assert t.combo_provider[c] == ("google", "google")
    assert t.combo_array().shape == (1, 8)


# ------------------------------------------------------------------------------ live worker
@pytest.mark.kafka
def test_flood_of_domains_is_bounded(kafka_bootstrap: str, tmp_path: Path) -> None:
    budget = documented_budget()
    w = LiveWorker(kafka_bootstrap, tmp_path, CAP, PARTITIONS)
    try:
        w.start()
        w.flood(WARMUP)  # imports, first allocations, consumer buffers
        before = w.sample()
        after, _, longest = w.flood(DOMAINS, timeout_s=75.0)
        # then a few ticks with nothing new to read
        idle_from = len(w.tick_series)
        w.wait_for(lambda s: s.ticks.count >= after.ticks.count + 4, 30.0, "4 idle ticks")
        longest_idle = w.longest_tick(idle_from)
        text = w.proc.get("/metrics").decode()
    finally:
        w.stop()
    m = parse_metrics(text)
    # every event counted, exactly once, none dead-lettered nor taken for a duplicate
    assert after.events - before.events == DOMAINS
    assert sum(v for k, v in m.items() if k.startswith("repmon_events_rejected_total")) == 0
    assert m.get("repmon_events_duplicate_total", 0.0) == 0
    # the rolling state holds at most the cap; every scope past it was evicted and counted
    assert 0 < after.active_scopes <= CAP
    assert m["repmon_active_scopes"] <= CAP
    distinct = WARMUP + DOMAINS + FLOOD_SHARED_SCOPES  # at least: shared scopes may churn
    assert after.evicted_for_room >= distinct - CAP, (after.evicted_for_room, distinct)
    # RSS: the documented bytes per active scope at the cap, with headroom, plus a fixed base
    per_scope = (
        budget["bytes per active scope"]
        + PARTITIONS * budget["bytes per interned name per input partition"]
    )
    allowed = CAP * per_scope * budget["headroom"] + budget["fixed base"] * MIB
    growth = after.rss - before.rss
    ticks = after.ticks.minus(before.ticks)
    figures = (
        f"RSS {before.rss / MIB:.0f} -> {after.rss / MIB:.0f} MiB (+{growth / MIB:.0f}, budget "
        f"{allowed / MIB:.0f}); {growth / CAP:,.0f} B per active scope; active "
        f"{after.active_scopes:,.0f}, evicted {after.evicted_for_room:,.0f}; flood ticks "
        f"{ticks.count:.0f}, mean {ticks.mean:.2f} s, p99 <= {ticks.quantile_bound(0.99)} s, "
        f"longest {longest:.2f} s; idle ticks: longest {longest_idle:.2f} s"
    )
    print(figures)
    assert growth <= allowed, figures
    # tick time, from the histogram's running sum: the longest tick while the flood is read,
    # and once it is read
    assert ticks.count > 0
    assert longest <= budget["flood tick bound"], figures
    assert longest_idle <= budget["idle tick bound"], figures
