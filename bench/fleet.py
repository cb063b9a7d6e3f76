"""Fleet client lookup throughput on this machine (issue 13: >= 1,000,000 cached lookups/s).

Run from the repository root: ``.venv/bin/python bench/fleet.py``. No broker: the decisions are
fed to a :class:`streams.fleet.ThrottleClient` directly (the lookup path is the same: a lookup
never touches Kafka). The table holds ``--decisions`` live decisions over providers, IPs, pools,
senders, tenants and campaigns; the messages are ``--messages`` distinct (recipient domain,
provider, IP, pool, sender, tenant, campaign) tuples, about a third of them under a decision,
looked up round-robin as a sending fleet would:

* ``factor (cached)``: ``client.factor(domain=..., ...)`` with the default clock: the figure the
  target is about (a dict lookup on the message tuple and the validity check);
* ``decision (cached)``: the same returning the record;
* ``factor (uncached)``: every message distinct (a miss each time: scopes built, most
  restrictive decision computed, entry stored), the cost of the first lookup of a tuple;
* ``RateLimiter.acquire``: the lookup plus the token bucket of the winning scope;
* ``update``: one record applied (the table copied, the caches dropped) at that table size.

Prints the best of ``--repeat`` rounds per case and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.act.throttle_record import ThrottleRecord  # noqa: E402
from streams.fleet.client import RateLimiter, ThrottleClient  # noqa: E402

TARGET_CACHED = 1_000_000

PROVIDERS = ["google", "microsoft", "yahoo", "apple", "comcast", "att", "other"]
DOMAINS = {
    "google": ["gmail.com", "googlemail.com"],
    "microsoft": ["outlook.com", "hotmail.com", "live.com"],
    "yahoo": ["yahoo.com", "aol.com"],
    "apple": ["icloud.com"],
    "comcast": ["comcast.net"],
    "att": ["att.net"],
    "other": ["example.org", "example.net", "corp.example"],
}
Msg = tuple[str, str, str, str, str, str, str]


def build(n_decisions: int, n_messages: int, seed: int) -> tuple[ThrottleClient, list[Msg]]:
    rnd = random.Random(seed)
    ips = [f"10.0.{i // 256}.{i % 256}" for i in range(1024)]
    pools = [f"pool-{i}" for i in range(32)]
    senders = [f"news{i}.example.com" for i in range(500)]
    tenants = [f"tenant-{i}" for i in range(400)]
    campaigns = [f"camp-{i}" for i in range(4000)]
    now = time.time()
    client = ThrottleClient()
    scopes: set[str] = set()
    scopes.add("provider:yahoo")  # one provider-wide decision (an outage)
    kinds = [
        lambda: f"ip:{rnd.choice(ips)}|provider:{rnd.choice(PROVIDERS)}",
        lambda: f"pool:{rnd.choice(pools)}|provider:{rnd.choice(PROVIDERS)}",
        lambda: f"sender:{rnd.choice(senders)}|provider:{rnd.choice(PROVIDERS)}",
        lambda: f"campaign:{rnd.choice(campaigns)}|provider:{rnd.choice(PROVIDERS)}",
        lambda: f"tenant:{rnd.choice(tenants)}",
        lambda: f"ip:{rnd.choice(ips)}",
    ]
    while len(scopes) < n_decisions:
        scopes.add(rnd.choice(kinds)())
    recs = [
        ThrottleRecord(
            s,
            rnd.choice(["throttled", "paused", "recovering"]),
            rnd.choice([0.0, 0.05, 0.1, 0.25, 0.5, 0.75]),
            "opened",
            None,
            now,
            now + 3600 + rnd.random() * 3600,
        )
        for s in sorted(scopes)
    ]
    client.apply((r.scope, r) for r in recs)
    msgs: set[Msg] = set()
    while len(msgs) < n_messages:
        p = rnd.choice(PROVIDERS)
        msgs.add(
            (
                rnd.choice(DOMAINS[p]),
                p,
                rnd.choice(ips),
                rnd.choice(pools),
                rnd.choice(senders),
                rnd.choice(tenants),
                rnd.choice(campaigns),
            )
        )
    return client, sorted(msgs)


def timed(fn: Callable[[], int], repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t
        best = max(best, n / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=300)
    ap.add_argument("--messages", type=int, default=5_000)
    ap.add_argument("--lookups", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N timed rounds per case")
    ap.add_argument("--seed", type=int, default=13)
    a = ap.parse_args()

    client, msgs = build(a.decisions, a.messages, a.seed)
    passes = max(1, a.lookups // len(msgs))
    throttled = sum(
        client.factor(domain=d, provider=p, ip=i, pool=po, sender=s, tenant=t, campaign=c) < 1.0
        for d, p, i, po, s, t, c in msgs
    )

    def cached_factor() -> int:
        f = client.factor
        for _ in range(passes):
            for d, p, i, po, s, t, c in msgs:
                f(domain=d, provider=p, ip=i, pool=po, sender=s, tenant=t, campaign=c)
        return passes * len(msgs)

    def cached_decision() -> int:
        f = client.decision
        for _ in range(passes):
            for d, p, i, po, s, t, c in msgs:
                f(domain=d, provider=p, ip=i, pool=po, sender=s, tenant=t, campaign=c)
        return passes * len(msgs)

    uncached_n = min(200_000, a.lookups // 10)
    counter = [0]

    def uncached_factor() -> int:
        f = client.factor
        base = counter[0]
        counter[0] += uncached_n
        k = len(msgs)
        for j in range(uncached_n):
            d, p, i, po, s, t, _ = msgs[j % k]
            f(domain=d, provider=p, ip=i, pool=po, sender=s, tenant=t, campaign=f"u{base + j}")
        return uncached_n

    limiter = RateLimiter(client, {}, default_rate=1e9, burst_s=1.0)

    def acquire() -> int:
        acq = limiter.acquire
        for d, p, i, po, s, t, c in msgs * max(1, passes // 4):
            acq(domain=d, provider=p, ip=i, pool=po, sender=s, tenant=t, campaign=c)
        return len(msgs) * max(1, passes // 4)

    updates = 2_000
    some = next(iter(client.decisions().values()))

    def update() -> int:
        for _ in range(updates):
            client.apply([(some.scope, some)])
        return updates

    r = {
        "factor_cached": timed(cached_factor, a.repeat),
        "decision_cached": timed(cached_decision, a.repeat),
        "factor_uncached": timed(uncached_factor, a.repeat),
        "rate_limiter_acquire": timed(acquire, a.repeat),
        "updates": timed(update, a.repeat),
    }
    print(
        f"fleet client: {a.decisions} live decisions, {len(msgs):,} distinct messages "
        f"({throttled:,} under a decision), python {platform.python_version()}, "
        f"{os.cpu_count()} cores, best of {a.repeat} rounds"
    )
    print(
        f"factor (cached):        {r['factor_cached']:>12,.0f}/s  "
        f"target {TARGET_CACHED:,}/s  ratio {r['factor_cached'] / TARGET_CACHED:.2f}"
    )
    print(f"decision (cached):      {r['decision_cached']:>12,.0f}/s")
    print(f"factor (uncached):      {r['factor_uncached']:>12,.0f}/s")
    print(f"RateLimiter.acquire:    {r['rate_limiter_acquire']:>12,.0f}/s")
    print(f"update (apply 1 rec):   {r['updates']:>12,.0f}/s")
    if hasattr(os, "getloadavg"):
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(json.dumps({k: round(v) for k, v in r.items()}))
    if r["factor_cached"] < TARGET_CACHED:
        sys.exit(1)


if __name__ == "__main__":
    main()
