"""Memory per active scope of the rolling state (Monitor), measured with tracemalloc.

    .venv/bin/python bench/memory.py            # 20,000 and 100,000 scopes

Adds synthetic Deltas for N distinct scopes (realistic names: ``domain:<word>-<word>-<n>.com``
...) over several fine buckets, runs the detectors, and reports the traced bytes per scope:
numpy rows, the scope -> row dict, the names, parents and evidence caches. Because the arrays grow
by doubling, both the bytes per *allocated* row and per *active* scope at the measured N (chosen
at a power of two so capacity == N) are printed. Budget: 2 KiB per active scope.
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from models.detect.monitor import Monitor, MonitorConfig
from models.schema import COL, N_COLUMNS, SCOPE_KINDS
from models.state.deltas import Deltas
from models.state.rolling import RollingConfig

BUDGET = 2048
T0 = 1_795_420_800


def scope_names(n: int) -> list[str]:
    kinds = SCOPE_KINDS
    return [f"{kinds[i % len(kinds)]}:scope-{i:07d}-example-{i % 977}.com" for i in range(n)]


def deltas_for(names: list[str], start: int, rng: np.random.Generator) -> Deltas:
    n = len(names)
    counts = np.zeros((n, N_COLUMNS), dtype=np.int64)
    counts[:, COL["delivered"]] = rng.integers(1, 50, n)
    counts[:, COL["deferred"]] = rng.integers(0, 3, n)
    counts[:, COL["class_transient"]] = counts[:, COL["deferred"]]
    return Deltas(
        scopes=names,
        scope_idx=np.arange(n, dtype=np.int32),
        bucket_start=np.full(n, start, dtype=np.int64),
        counts=counts,
        watermark=float(start + 59),
    )


def measure(n: int) -> tuple[float, int, int]:
    rng = np.random.default_rng(1)
    names = scope_names(n)
    batches = [deltas_for(names, T0 + k * 300, rng) for k in range(4)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    mon = Monitor(MonitorConfig(rolling=RollingConfig(initial_capacity=n)))
    for d in batches:
        mon.add(d)
        mon.advance(d.watermark)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / n, mon.store.nbytes_per_scope(), mon.store.capacity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scopes", type=int, nargs="*", default=[16_384, 131_072])
    args = ap.parse_args()
    for n in args.scopes:
        per, arrays, cap = measure(n)
        print(
            f"{n:>8,} active scopes (capacity {cap:,}): {per:,.0f} B/scope traced "
            f"(numpy rows {arrays} B) -> {per / BUDGET:.2f} of the 2 KiB budget"
        )


if __name__ == "__main__":
    main()
