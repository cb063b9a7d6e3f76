"""Cost of an owner snapshot: encode time and compressed size per active scope.

    .venv/bin/python bench/snapshot.py            # 20,000 and 100,000 scopes

Fills a Monitor with N distinct scopes over two hours of 5-minute buckets (synthetic Deltas, the
shape bench/memory.py uses), then times ``Monitor.snapshot()`` (the synchronous copy the worker
takes on the event loop), ``encode`` (done in a thread), ``decode`` and ``Monitor.restore``, and
prints the bytes per scope. One run, ratios only: no target is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from models.detect.monitor import Monitor, MonitorConfig
from models.schema import COL, N_COLUMNS, SCOPE_KINDS
from models.state.deltas import Deltas
from models.state.rolling import RollingConfig
from models.state.snapshot import decode, encode

T0 = 1_795_420_800


def fill(n: int, rng: np.random.Generator) -> Monitor:
    names = [f"{SCOPE_KINDS[i % len(SCOPE_KINDS)]}:scope-{i:07d}.example" for i in range(n)]
    mon = Monitor(MonitorConfig(rolling=RollingConfig(max_scopes=max(n, 1000))))
    for b in range(24):  # two hours of 5-minute buckets
        start = T0 + b * 300
        counts = np.zeros((n, N_COLUMNS), dtype=np.int64)
        counts[:, COL["delivered"]] = rng.integers(0, 40, n)
        counts[:, COL["deferred"]] = rng.integers(0, 3, n)
        counts[:, COL["bounced"]] = rng.integers(0, 2, n)
        d = Deltas(
            scopes=names,
            scope_idx=np.arange(n, dtype=np.int32),
            bucket_start=np.full(n, start, dtype=np.int64),
            counts=counts,
            replies=[],
            watermark=float(start + 300),
        )
        mon.add(d)
        mon.advance(float(start + 300))
    return mon


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scopes", type=int, nargs="*", default=[20_000, 100_000])
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    print("| scopes | snapshot() ms | encode ms | bytes | bytes/scope | decode+restore ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.scopes:
        mon = fill(n, rng)
        t0 = time.perf_counter()
        snap = mon.snapshot()
        t1 = time.perf_counter()
        data = encode(snap)
        t2 = time.perf_counter()
        back = Monitor.restore(decode(data), mon.config)
        t3 = time.perf_counter()
        assert len(back.store.rows) == len(mon.store.rows)
        print(
            f"| {n:,} | {1e3 * (t1 - t0):.0f} | {1e3 * (t2 - t1):.0f} | {len(data):,} "
            f"| {len(data) / n:.0f} | {1e3 * (t3 - t2):.0f} |"
        )


if __name__ == "__main__":
    main()
