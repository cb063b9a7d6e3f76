"""Snapshots: a Monitor (and the ingest memories) restored from bytes continues exactly as the
original would have: same incidents, same counts, same baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models.detect.monitor import Monitor, MonitorConfig
from models.ingest.pipeline import Pipeline
from models.sim.simulator import SimConfig, Simulator
from models.state.rolling import RollingConfig, RollingStore
from models.state.snapshot import Snap, SnapshotError, decode, encode

HOUR = 3600.0


def _drive(
    sim_chunks: list[list[dict[str, Any]]], pipe: Pipeline, mon: Monitor
) -> list[dict[str, Any]]:
    out = []
    for chunk in sim_chunks:
        for ev in chunk:
            pipe.feed_obj(ev)
        d = pipe.flush()
        mon.add(d)
        out.extend(ch.to_json() for ch in mon.advance(d.watermark))
    return out


@pytest.mark.parametrize(
    ("scenario", "cut_h"),
    [
        ("provider-outage", 2.2),  # before the outage: the restored Monitor must open it
        ("provider-outage", 3.2),  # during it: the restored Monitor must close it, not reopen
        ("complaint-spike", 3.5),
        ("b2b-false-bounces", 2.9),
    ],
)
def test_restored_monitor_continues_exactly(scenario: str, cut_h: float) -> None:
    sim = Simulator(SimConfig(seed=3, scenario=scenario, duration_s=5 * HOUR, rate=8.0, params={}))
    chunks = list(sim.chunks(60.0))
    cut = int(cut_h * HOUR / 60.0)
    pipe = Pipeline()
    mon = Monitor(MonitorConfig())
    before = _drive(chunks[:cut], pipe, mon)
    snap = decode(encode(mon.snapshot()))
    twin = Monitor.restore(snap, MonitorConfig())
    pipe_twin = Pipeline()
    pipe_twin.restore_memories(decode(encode(pipe.memories_snapshot())))
    # the same input from here on, one copy into each
    rest = chunks[cut:]
    after = _drive(rest, pipe, mon)
    after_twin = _drive(rest, pipe_twin, twin)
    assert after_twin == after
    assert before or after, "the scenario opened nothing: the test would prove nothing"
    assert twin.status(50) == mon.status(50)
    volatile = ("memory_bytes", "capacity_rows")  # the restored arrays are sized to fit
    assert {k: v for k, v in twin.metrics().items() if k not in volatile} == {
        k: v for k, v in mon.metrics().items() if k not in volatile
    }
    fine = {n: mon.store.fine[r].tolist() for n, r in mon.store.rows.items()}
    assert fine == {n: twin.store.fine[r].tolist() for n, r in twin.store.rows.items()}
    a = {n: mon.store.baseline[r].tolist() for n, r in mon.store.rows.items()}
    b = {n: twin.store.baseline[r].tolist() for n, r in twin.store.rows.items()}
    assert a == b


def test_store_snapshot_keeps_rows_held_ahead_of_the_clock() -> None:
    from models.schema import COL, N_COLUMNS
    from models.state.deltas import Deltas

    st = RollingStore()
    st.advance_to(1_000_000.0)
    counts = np.zeros((2, N_COLUMNS), dtype=np.int64)
    counts[:, COL["delivered"]] = [3, 4]
    d = Deltas(
        scopes=["provider:x", "domain:a.example"],
        scope_idx=np.array([0, 1], dtype=np.int32),
        bucket_start=np.array([1_000_200, 1_000_200], dtype=np.int64),
        counts=counts,
        replies=[],
        watermark=1_000_000.0,
    )
    st.add(d)
    assert st.early_rows == 2
    back = RollingStore.restore(decode(encode(st.snapshot())))
    assert back.early_rows == 2
    back.advance_to(1_000_400.0)
    assert back.window_totals("domain:a.example", 600)[1] == 4
    assert back.window_totals("provider:x", 600)[1] == 3


def test_snapshot_refuses_another_ring_geometry() -> None:
    st = RollingStore(RollingConfig(fine_s=300))
    st.advance_to(1_000_000.0)
    with pytest.raises(SnapshotError, match="fine_s"):
        RollingStore.restore(st.snapshot(), RollingConfig(fine_s=60, n_fine=60, lateness_s=600))


def test_damaged_or_foreign_bytes_are_refused_without_unpickling() -> None:
    with pytest.raises(SnapshotError):
        decode(b"not a snapshot")
    good = encode(Snap(meta={"a": 1}, arrays={"x/y": np.arange(3)}))
    back = decode(good)
    assert back.meta == {"a": 1}
    assert back.arrays["x/y"].tolist() == [0, 1, 2]
    with pytest.raises(SnapshotError):
        decode(good[: len(good) // 2])


def test_restored_pipeline_remembers_duplicates_and_known_good() -> None:
    sim = Simulator(SimConfig(seed=5, scenario="baseline", duration_s=1200, rate=20.0, params={}))
    events = [ev for chunk in sim.chunks(60.0) for ev in chunk]
    pipe = Pipeline()
    for ev in events:
        assert pipe.feed_obj(ev) is None
    pipe.flush()
    twin = Pipeline()
    twin.restore_memories(decode(encode(pipe.memories_snapshot())))
    for ev in events[-500:]:  # a producer re-sends the last 500 events
        twin.feed_obj(ev)
    assert twin.stats.duplicates == 500
    assert len(twin.flush()) == 0
    fresh = Pipeline()
    for ev in events[-500:]:
        fresh.feed_obj(ev)
    assert fresh.stats.duplicates == 0
    for name in ("recent", "bloom"):
        a = getattr(pipe, name).snapshot().arrays
        b = getattr(twin, name).snapshot().arrays
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


_SNAPSHOT_IN_CHILD = """
import sys
from models.ingest.pipeline import Pipeline
from models.sim.simulator import SimConfig, Simulator
from models.state.snapshot import encode
sim = Simulator(SimConfig(seed=5, scenario="baseline", duration_s=1200, rate=20.0, params={}))
pipe = Pipeline()
for chunk in sim.chunks(60.0):
    for ev in chunk:
        assert pipe.feed_obj(ev) is None
pipe.flush()
sys.stdout.buffer.write(encode(pipe.memories_snapshot()))
"""


@pytest.mark.parametrize("seeds", [("1", "2"), ("3", "random")])
def test_ingest_memories_are_the_same_in_every_process(seeds: tuple[str, str]) -> None:
    """The duplicate keys and message hashes kept in the snapshot do not depend on the process's
    string-hash salt: a worker restarted (another process, another salt) still recognises the
    events it saw before its restart."""
    import os
    import subprocess
    import sys

    outs = []
    for seed in seeds:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", _SNAPSHOT_IN_CHILD], env=env, capture_output=True, check=True
        )
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    # and this process (a third salt) recognises the re-sent events as duplicates
    sim = Simulator(SimConfig(seed=5, scenario="baseline", duration_s=1200, rate=20.0, params={}))
    events = [ev for chunk in sim.chunks(60.0) for ev in chunk]
    twin = Pipeline()
    twin.restore_memories(decode(outs[0]))
    for ev in events[-500:]:
        twin.feed_obj(ev)
    assert twin.stats.duplicates == 500
