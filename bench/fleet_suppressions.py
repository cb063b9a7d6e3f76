"""The fleet's suppression client: memory per recipient and lookups per second (issue 14).

Run from the repository root: ``.venv/bin/python bench/fleet_suppressions.py``. No broker: the
table is built the way the client builds it when it catches up with the topic (rows staged in
numpy chunks, one row per key kept, loaded at once), from ``--entries`` random recipients
(70 % suppressed, 25 % suspended, 5 % quarantined); a lookup never touches Kafka either way.

* **memory**: the table's columns (bytes per recipient) and the process's resident memory
  before the build and after it (the staging freed), per recipient;
* ``parse``: topic messages (JSON records as the worker writes them) parsed to rows per second:
  the client's own cost of a catch-up, Kafka's fetch aside;
* ``may_send(recipient_key=...)``: one recipient at a time by its 32-byte key, half of them
  listed, half not; ``may_send(address)``: the same with the address hashed here (SHA-256);
* ``may_send_many``: a batch of 100,000 keys at once (numpy), keys per second;
* the same lookups with ``--delta`` recent changes not folded yet (the dict in front);
* ``apply``: live changes per second (poll batches of 500), folds included; ``fold``: the time
  to fold a full delta into the columns at this size.

Prints the best of ``--repeat`` rounds per case and a JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.act.suppression import QUARANTINED, SUPPRESSED, SUSPENDED  # noqa: E402
from models.ingest.recipients import recipient_digest  # noqa: E402
from streams.fleet.suppressions import (  # noqa: E402
    NO_UNTIL,
    ROW_BYTES,
    Staging,
    SuppressionClient,
    parse_message,
)

NOW = 1_800_000_000.0


def rss() -> int:
    """Resident memory of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> bool:
    """Hand the heap's free pages back to the OS (glibc), so that resident memory shows what
    is held rather than what the allocator kept from the build's transient objects."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn: Callable[[], int], repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def address(i: int) -> str:
    return f"recipient{i}@example{i % 97}.com"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=2_000_000)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--delta", type=int, default=50_000, help="recent changes not yet folded")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timed rounds per case")
    ap.add_argument("--seed", type=int, default=14)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n = a.entries

    # -- build: listed recipients are addresses 0..n-1 (so that lookups by address can hit)
    gc.collect()
    rss0 = rss()
    t0 = time.perf_counter()
    client = SuppressionClient(clock=lambda: NOW, delta_max=max(a.delta, 1) * 2)
    states = rng.choice(
        np.array([SUPPRESSED, SUSPENDED, QUARANTINED], dtype=np.uint8), size=n, p=[0.7, 0.25, 0.05]
    )
    untils = rng.integers(int(NOW) - 86_400, int(NOW) + 30 * 86_400, size=n).astype(np.uint32)
    untils[states != SUSPENDED] = NO_UNTIL
    staged = Staging()
    step = 1 << 16
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        staged.add(
            (recipient_digest(address(i)), int(states[i]), 3, 1, int(untils[i]), NOW, None, None)
            for i in range(lo, hi)
        )
    client.table.load_staged(staged)
    del staged, states, untils
    gc.collect()
    build_s = time.perf_counter() - t0
    rss_built = rss()
    trimmed = trim()
    rss1 = rss()
    peak = peak_rss()
    assert len(client) == n

    # -- parse rate of topic messages
    sample = 100_000
    msgs = []
    for i in range(sample):
        k = recipient_digest(address(n + i)).hex()
        rec = {
            "kind": "suppression",
            "recipient_key": k,
            "state": "suspended",
            "reason": "mailboxfull",
            "count": 1,
            "until": int(NOW) + 86_400,
            "permanent": False,
            "incident": None,
            "at": NOW,
            "cause": "bounce",
            "tombstone": False,
            "first_seen": int(NOW),
            "last_seen": int(NOW),
            "held": 0,
            "last_incident": None,
            "resume": None,
            "forget_at": None,
            "message_hash": 762618360,
        }
        msgs.append((k.encode(), json.dumps(rec).encode()))

    def parse() -> int:
        for k, v in msgs:
            parse_message(k, v)
        return len(msgs)

    # -- lookups: half listed, half not
    m = a.lookups
    hit_idx = rng.integers(0, n, size=m // 2)
    miss_idx = rng.integers(n + sample, 2 * n + sample, size=m - m // 2)
    idx = np.concatenate([hit_idx, miss_idx])
    rng.shuffle(idx)
    addrs = [address(int(i)) for i in idx]
    keys = [recipient_digest(x) for x in addrs]
    key_arr = np.array(keys[:100_000], dtype="S32")

    def by_key() -> int:
        f = client.may_send
        for k in keys:
            f(recipient_key=k, now=NOW)
        return len(keys)

    def by_address() -> int:
        f = client.may_send
        for x in addrs:
            f(x, now=NOW)
        return len(addrs)

    def table_raw() -> int:
        f = client.table.may_send
        for k in keys:
            f(k, NOW)
        return len(keys)

    def many() -> int:
        client.may_send_many(recipient_keys=key_arr, now=NOW)
        return key_arr.shape[0]

    allowed = sum(client.may_send(recipient_key=k, now=NOW) for k in keys[:20_000])
    r: dict[str, float] = {
        "parse_per_s": timed(parse, a.repeat),
        "may_send_key_per_s": timed(by_key, a.repeat),
        "may_send_address_per_s": timed(by_address, a.repeat),
        "table_may_send_per_s": timed(table_raw, a.repeat),
        "may_send_many_keys_per_s": timed(many, a.repeat),
    }

    # -- with recent changes in front of the columns
    delta_rows = [parse_message(k, v) for k, v in msgs[: min(a.delta, len(msgs))]]
    client.apply(delta_rows)
    r["may_send_key_with_delta_per_s"] = timed(by_key, a.repeat)
    r["may_send_many_with_delta_keys_per_s"] = timed(many, a.repeat)

    t = time.perf_counter()
    client.table.fold()
    r["fold_s"] = time.perf_counter() - t

    # -- live changes, poll batches of 500, folds included (delta_max as configured)
    live = [parse_message(k, v) for k, v in msgs]
    client.table.delta_max = 1 << 16

    def apply() -> int:
        for lo in range(0, len(live), 500):
            client.apply(live[lo : lo + 500])
        return len(live)

    r["apply_per_s"] = timed(apply, 1)

    print(
        f"suppression client: {n:,} recipients listed, {m:,} lookups (half listed), "
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cores, "
        f"best of {a.repeat} rounds"
    )
    print(
        f"columns:                     {ROW_BYTES} bytes/recipient ({client.table.nbytes / 2**20:,.1f} MiB)"
    )
    print(
        f"resident memory:             {(rss1 - rss0) / n:.1f} bytes/recipient held after the "
        f"build ({rss0 / 2**20:,.0f} -> {rss1 / 2**20:,.0f} MiB"
        + (f"; {rss_built / 2**20:,.0f} MiB before malloc_trim" if trimmed else "")
        + f"; build peak {peak / 2**20:,.0f} MiB)"
    )
    print(f"build (staged, loaded):      {build_s:.2f} s ({n / build_s:,.0f} rows/s)")
    print(f"parse (topic messages):      {r['parse_per_s']:>12,.0f}/s")
    print(f"may_send(recipient_key=):    {r['may_send_key_per_s']:>12,.0f}/s")
    print(f"may_send(address):           {r['may_send_address_per_s']:>12,.0f}/s")
    print(f"table.may_send(key):         {r['table_may_send_per_s']:>12,.0f}/s")
    print(f"may_send_many (100k keys):   {r['may_send_many_keys_per_s']:>12,.0f} keys/s")
    print(
        f"may_send(key), {len(delta_rows):,} in delta: {r['may_send_key_with_delta_per_s']:>9,.0f}/s"
    )
    print(f"may_send_many with delta:    {r['may_send_many_with_delta_keys_per_s']:>12,.0f} keys/s")
    print(f"fold {len(delta_rows):,} changes:        {r['fold_s']:.3f} s")
    print(f"apply (batches of 500):      {r['apply_per_s']:>12,.0f}/s")
    print(f"allowed among 20,000 looked up: {allowed:,}")
    if hasattr(os, "getloadavg"):
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    out = {k: round(v, 3) if k.endswith("_s") else round(v) for k, v in r.items()}
    out.update(
        entries=n,
        row_bytes=ROW_BYTES,
        rss_bytes_per_entry=round((rss1 - rss0) / n, 1),
        rss_bytes_per_entry_untrimmed=round((rss_built - rss0) / n, 1),
        build_peak_rss_mib=round(peak / 2**20),
        build_s=round(build_s, 2),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
