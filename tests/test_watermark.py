"""WatermarkTracker: the rollup owner's event time is the minimum over live input partitions."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.state.watermark import PartitionClock, WatermarkTracker

SILENT = 60.0


def test_min_over_partitions_and_rollup_partitions() -> None:
    w = WatermarkTracker(SILENT)
    w.expect(2, now=0)
    w.report(0, 0, 1000.0, False, now=1)
    assert w.watermark(now=1) == 0.0  # partition 1 has not reported: do not move
    w.report(1, 0, 400.0, False, now=1)
    assert w.watermark(now=1) == 400.0
    w.report(0, 1, 300.0, False, now=2)  # the same partition lags on another rollup partition
    w.report(1, 1, 900.0, False, now=2)
    assert w.watermark(now=2) == 300.0


def test_a_partition_far_ahead_does_not_move_time() -> None:
    w = WatermarkTracker(SILENT)
    w.expect(3, now=0)
    for p, wm in ((0, 7200.0), (1, 10.0), (2, 20.0)):  # a backlog read unevenly
        w.report(p, 0, wm, False, now=1)
    assert w.watermark(now=1) == 10.0


def test_idle_and_silent_partitions_stop_holding_time_back() -> None:
    w = WatermarkTracker(SILENT)
    w.expect(3, now=0)
    w.report(0, 0, 500.0, False, now=1)
    w.report(1, 0, 100.0, True, now=1)  # its reader is caught up and quiet: excluded
    w.report(2, 0, 50.0, False, now=1)
    assert w.watermark(now=1) == 50.0
    w.report(0, 0, 550.0, False, now=40)  # partition 2 silent for 39 s: a rebalance, wait
    assert w.watermark(now=40) == 50.0
    w.report(0, 0, 600.0, False, now=70)  # partition 2's reader died: silent after silent_s
    assert w.watermark(now=70) == 600.0
    # everything idle or silent: the lowest report, nothing moves past a partition's data
    w.report(0, 0, 700.0, True, now=140)
    assert w.watermark(now=140) == 50.0


def test_a_partition_that_never_reports_is_waited_for_silent_s_only() -> None:
    w = WatermarkTracker(SILENT)
    w.expect(2, now=0)  # partition 1 is empty and nobody reports for it
    w.report(0, 0, 100.0, False, now=1)
    assert w.watermark(now=10) == 0.0
    assert w.watermark(now=61) == 100.0


def test_a_moved_partition_holds_time_back_until_its_new_reader_caught_up() -> None:
    w = WatermarkTracker(SILENT)
    w.expect(2, now=0)
    w.report(0, 0, 1000.0, False, now=1)
    w.report(1, 0, 1000.0, False, now=1)
    assert w.watermark(now=1) == 1000.0
    w.report(1, 0, 0.0, False, now=2)  # the new reader has read nothing yet
    assert w.watermark(now=2) == 0.0
    w.report(1, 0, 1100.0, False, now=3)
    assert w.watermark(now=3) == 1000.0


def test_revoked_rollup_partition_is_forgotten() -> None:
    w = WatermarkTracker(SILENT)
    w.expect(1, now=0)
    w.report(0, 0, 100.0, False, now=1)
    w.report(0, 1, 5.0, False, now=1)
    assert w.watermark(now=1) == 5.0
    w.forget_owner(1)
    assert w.watermark(now=1) == 100.0


def test_a_new_owner_starts_from_the_reports_of_its_snapshot() -> None:
    old = WatermarkTracker(SILENT)
    old.expect(3, now=0)
    for p, wm, idle in ((0, 500.0, False), (1, 300.0, False), (2, 900.0, True)):
        old.report(p, 7, wm, idle, now=1)
    old.report(0, 8, 1.0, False, now=1)  # another rollup partition's reports stay out
    saved = old.reports(7)
    assert saved == {"0": [500.0, False], "1": [300.0, False], "2": [900.0, True]}
    new = WatermarkTracker(SILENT)
    new.expect(3, now=100)
    new.seed(7, saved, now=100)
    # partition 1 has nothing new to say, yet it still holds the clock back
    new.report(0, 7, 800.0, False, now=101)
    assert new.watermark(now=101) == 300.0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.floats(0, 1e6), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_never_above_a_live_partition(reports: list[tuple[int, int, float, bool]]) -> None:
    """All reports at one instant: the watermark never exceeds a live (non-idle) report."""
    w = WatermarkTracker(SILENT)
    w.expect(4, now=0)
    last: dict[tuple[int, int], tuple[float, bool]] = {}
    for part, owner, wm, idle in reports:
        w.report(part, owner, wm, idle, now=1)
        last[(part, owner)] = (wm, idle)
    got = w.watermark(now=1)
    live = [wm for wm, idle in last.values() if not idle]
    if live:
        assert got <= min(live)
    assert got <= max(wm for wm, _ in last.values())


def clock_run(ts: list[float], max_ahead_s: float = 300.0) -> list[float]:
    return PartitionClock(max_ahead_s).running(np.array(ts, dtype=np.float64)).tolist()


def test_clock_follows_ordered_events() -> None:
    ts = [100.0, 100.5, 103.0, 102.0, 110.0, 400.0, 650.0]
    assert clock_run(ts) == [100.0, 100.5, 103.0, 103.0, 110.0, 400.0, 650.0]


def test_clock_ignores_a_lone_event_far_ahead() -> None:
    # one line stamped 20 minutes ahead (a skewed node) among ordered traffic
    ts = [1000.0, 1001.0, 2200.0, 1002.0, 1003.0, 1004.0]
    assert clock_run(ts) == [1000.0, 1001.0, 1001.0, 1002.0, 1003.0, 1004.0]


def test_clock_follows_a_real_gap_on_the_second_event() -> None:
    ts = [100.0, 101.0, 1000.0, 1001.0, 1002.0]
    assert clock_run(ts) == [100.0, 101.0, 101.0, 1001.0, 1002.0]


def test_clock_state_carries_over_batches() -> None:
    c = PartitionClock()
    c.running(np.array([10.0, 20.0]))
    assert c.running(np.array([2000.0])).tolist() == [20.0]
    assert c.running(np.array([2001.0])).tolist() == [2001.0]
    assert c.held_events == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=1.0, max_value=1e5), min_size=1, max_size=80))
def test_clock_never_ahead_of_the_data_and_never_back(ts: list[float]) -> None:
    got = clock_run(ts)
    assert all(b >= a for a, b in itertools.pairwise(got))
    assert all(w <= max(ts[: i + 1]) for i, w in enumerate(got))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=299.0), min_size=1, max_size=80))
def test_clock_equals_the_running_max_without_jumps(steps: list[float]) -> None:
    ts = list(np.cumsum([1.0, *steps]))
    assert clock_run(ts) == list(np.maximum.accumulate(ts))
