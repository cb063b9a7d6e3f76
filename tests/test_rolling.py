"""RollingStore: window totals, lateness, eviction, growth, baselines."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.schema import COL, N_COLUMNS
from models.state.deltas import Deltas
from models.state.rolling import (
    COARSE_IDX,
    N_ROLL,
    REDUCE,
    ROLL_COLUMNS,
    RollingConfig,
    RollingStore,
)

T0 = 1_795_420_800  # a multiple of 3600


def make_deltas(
    rows: list[tuple[str, int, dict[str, int]]], watermark: float | None = None
) -> Deltas:
    """rows: (scope, bucket_start, {column: count})."""
    scopes: list[str] = []
    idx: list[int] = []
    starts: list[int] = []
    counts = np.zeros((len(rows), N_COLUMNS), dtype=np.int64)
    for i, (scope, start, cols) in enumerate(rows):
        if scope not in scopes:
            scopes.append(scope)
        idx.append(scopes.index(scope))
        starts.append(start)
        for c, v in cols.items():
            counts[i, COL[c]] = v
    wm = watermark if watermark is not None else (max(starts) + 59 if starts else 0.0)
    return Deltas(
        scopes=scopes,
        scope_idx=np.asarray(idx, dtype=np.int32),
        bucket_start=np.asarray(starts, dtype=np.int64),
        counts=counts,
        watermark=float(wm),
    )


def feed(store: RollingStore, d: Deltas) -> None:
    """What the Monitor does per tick: add the counts, then move the clock to the watermark."""
    store.add(d)
    store.advance_to(d.watermark)


@pytest.mark.parametrize(
    ("cols", "expected"),
    [
        ({"delivered": 5}, {"attempts": 5, "delivered": 5}),
        ({"deferred": 2, "class_transient": 2}, {"attempts": 2, "deferred": 2, "transient": 2}),
        (
            {"bounced": 3, "rejected": 1, "class_hard": 4, "user_unknown": 4},
            {"attempts": 4, "failed": 4, "hard": 4, "user_unknown": 4},
        ),
        ({"complained": 1, "sent": 9, "opened": 3}, {"complained": 1}),
        (
            {"bounced": 2, "class_config": 2, "auth_failure": 2},
            {"attempts": 2, "failed": 2, "config": 2, "auth_failure": 2},
        ),
        ({"user_unknown_known_good": 1}, {"user_unknown_known_good": 1}),
    ],
)
def test_reduction(cols: dict[str, int], expected: dict[str, int]) -> None:
    v = np.zeros(N_COLUMNS, dtype=np.int64)
    for c, n in cols.items():
        v[COL[c]] = n
    got = v @ REDUCE
    want = np.zeros(N_ROLL, dtype=np.int64)
    for c, n in expected.items():
        want[ROLL_COLUMNS.index(c)] = n
    assert got.tolist() == want.tolist()


def test_window_totals_and_rotation() -> None:
    st_ = RollingStore()
    feed(st_, make_deltas([("provider:google", T0, {"delivered": 10})]))
    feed(st_, make_deltas([("provider:google", T0 + 60, {"delivered": 5, "deferred": 1})]))
    tot = st_.window_totals("provider:google", 300)
    assert tot[ROLL_COLUMNS.index("attempts")] == 16
    # one hour later the first buckets have left the fine ring and been folded into the baseline
    st_.advance_to(T0 + 3600 + 300)
    assert st_.window_totals("provider:google", 3600).sum() == 0
    assert st_.baseline[st_.rows["provider:google"], ROLL_COLUMNS.index("delivered")] > 14
    # coarse ring still holds the hour
    r = np.array([st_.rows["provider:google"]])
    assert st_.coarse_sum(3, r)[0, 0] == 16


def test_late_rows_dropped_and_counted() -> None:
    st_ = RollingStore(RollingConfig(lateness_s=600))
    feed(st_, make_deltas([("provider:p", T0 + 3000, {"delivered": 1})]))
    d = make_deltas(
        [
            ("provider:p", T0 + 3000 - 540, {"delivered": 2}),
            ("provider:p", T0 + 3000 - 900, {"bounced": 7}),
            ("ip:1", T0 + 3000 - 900, {"bounced": 7}),  # same events, another scope
        ],
        watermark=T0 + 3000,
    )
    feed(st_, d)
    assert st_.late_dropped == 7  # events, counted once (on the provider row)
    assert st_.late_rows_dropped == 2
    assert st_.window_totals("provider:p", 3600)[0] == 3
    assert st_.window_totals("ip:1", 3600)[0] == 0


def test_eviction_frees_rows_and_reuses_them() -> None:
    st_ = RollingStore(RollingConfig(idle_evict_s=1800, initial_capacity=2))
    feed(st_, make_deltas([("domain:a.com", T0, {"delivered": 1})]))
    feed(st_, make_deltas([("domain:b.com", T0, {"delivered": 1})]))
    old_row = st_.rows["domain:a.com"]
    # b stays active, a goes idle
    for k in range(1, 12):
        feed(st_, make_deltas([("domain:b.com", T0 + k * 300, {"delivered": 1})]))
    assert "domain:a.com" not in st_
    assert st_.evicted == 1
    feed(st_, make_deltas([("domain:c.com", T0 + 12 * 300, {"delivered": 4})]))
    assert st_.rows["domain:c.com"] == old_row  # freed row reused
    assert st_.window_totals("domain:c.com", 300)[0] == 4  # and it starts from zero
    assert st_.capacity == 2


def test_growth_by_doubling() -> None:
    st_ = RollingStore(RollingConfig(initial_capacity=1))
    rows = [(f"domain:d{i}.com", T0, {"delivered": i + 1}) for i in range(37)]
    feed(st_, make_deltas(rows))
    assert st_.capacity == 64
    assert len(st_) == 37
    for i in range(37):
        assert st_.window_totals(f"domain:d{i}.com", 60)[0] == i + 1


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        RollingStore(RollingConfig(lateness_s=5000))
    with pytest.raises(ValueError):
        RollingStore(RollingConfig(coarse_s=1000))


def test_memory_per_scope_budget() -> None:
    st_ = RollingStore()
    assert st_.nbytes_per_scope() <= 2048 - 300  # room for the dict entry and the name


_rows = st.lists(
    st.tuples(
        st.sampled_from(["provider:a", "ip:1", "domain:x.org"]),
        st.integers(min_value=0, max_value=200),  # minute offset
        st.integers(min_value=0, max_value=50),
        st.integers(min_value=0, max_value=5),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(_rows)
def test_property_window_equals_sum_of_accepted(rows: list[tuple[str, int, int, int]]) -> None:
    """Totals over the ring == the sum of the added rows that were not dropped as late."""
    cfg = RollingConfig(lateness_s=1200)
    st_ = RollingStore(cfg)
    expected: dict[str, int] = {}
    dropped = 0
    for scope, minute, dlv, bnc in rows:  # one row per tick, in arbitrary event-time order
        start = T0 + minute * 60
        wm_before = st_.watermark
        feed(
            st_,
            make_deltas([(scope, start, {"delivered": dlv, "bounced": bnc})], watermark=start + 30),
        )
        # late: the row's whole fine bucket ended before the clock (as it was) minus the lateness
        if wm_before and (start // cfg.fine_s + 1) * cfg.fine_s <= wm_before - cfg.lateness_s:
            dropped += (dlv + bnc) if scope.startswith("provider:") else 0
        else:
            expected[scope] = expected.get(scope, 0) + dlv + bnc
    assert st_.late_dropped == dropped
    head_start = (int(st_.watermark) // cfg.fine_s) * cfg.fine_s
    for scope, total in expected.items():
        r = st_.rows[scope]
        in_ring = int(st_.fine[r, :, 0].sum(dtype=np.int64))
        folded = float(st_.baseline[r, 0])
        # everything accepted is either in the fine ring or was folded (with decay) into the
        # baseline; with no fold, the ring holds it all
        if folded == 0.0:
            assert in_ring == total
        else:
            assert in_ring < total
        # coarse ring (48 h) keeps every accepted row
        assert int(st_.coarse[r, :, 0].sum(dtype=np.int64)) == total
    assert head_start <= st_.watermark


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=40))
def test_property_fine_sum_last_hour(values: list[int]) -> None:
    """One row per 5-min bucket in order: the 12-bucket sum is the sum of the last 12 values."""
    st_ = RollingStore()
    for k, v in enumerate(values):
        feed(st_, make_deltas([("pool:p", T0 + k * 300, {"delivered": v})]))
    r = np.array([st_.rows["pool:p"]])
    assert int(st_.fine_sum(12, r)[0, 0]) == sum(values[-12:])
    assert int(st_.fine_sum(3, r)[0, 0]) == sum(values[-3:])
    assert int(st_.coarse_sum(48, r)[0, COARSE_IDX.tolist().index(0)]) == sum(values)


def test_add_never_moves_the_clock_and_holds_rows_ahead() -> None:
    """One partition far ahead (a backlog, clock skew) neither moves time nor is lost."""
    st_ = RollingStore()
    feed(st_, make_deltas([("provider:p", T0, {"delivered": 1})], watermark=T0 + 30))
    ahead = make_deltas([("provider:p", T0 + 2 * 3600, {"delivered": 5})], watermark=T0 + 2 * 3600)
    before = st_.early_events  # the very first rows wait for the clock to start too
    st_.add(ahead)
    assert st_.watermark == T0 + 30
    assert st_.early_rows == 1 and st_.early_events - before == 5
    # a slower partition's event, 10 min behind the far one, is not late: the clock did not move
    feed(st_, make_deltas([("provider:p", T0 + 60, {"bounced": 2})], watermark=T0 + 90))
    assert st_.late_dropped == 0
    assert st_.window_totals("provider:p", 600)[0] == 3
    # the held row is counted in its own bucket once the clock reaches it
    st_.advance_to(T0 + 2 * 3600 + 10)
    assert st_.early_rows == 0 and st_.merged_early
    assert st_.window_totals("provider:p", 300)[0] == 5
    r = np.array([st_.rows["provider:p"]])
    assert int(st_.coarse_sum(3, r)[0, 0]) == 8


def test_early_buffer_is_bounded_and_counts_what_it_drops() -> None:
    st_ = RollingStore(RollingConfig(max_early_rows=2))
    feed(st_, make_deltas([("provider:p", T0, {"delivered": 1})]))
    st_.add(
        make_deltas(
            [("provider:p", T0 + 600, {"delivered": 4}), ("ip:1", T0 + 600, {"delivered": 4})]
        )
    )
    st_.add(make_deltas([("provider:p", T0 + 900, {"delivered": 3})]))
    assert st_.early_events == 1 + 4 and st_.early_dropped == 3


@pytest.mark.parametrize(
    ("late_by", "counted"),
    [
        (0, True),
        (299, True),
        (600, True),  # exactly the lateness, whatever the bucket boundary
        (780, True),  # past the lateness, but its bucket overlaps the lateness window
        (900, False),  # its whole bucket ended before watermark - lateness
        (1200, False),
    ],
)
def test_every_event_within_the_lateness_is_counted(late_by: int, counted: bool) -> None:
    st_ = RollingStore(RollingConfig(lateness_s=600))
    wm = T0 + 3000 + 240  # 4 minutes into a 5-minute bucket
    feed(st_, make_deltas([("provider:p", T0 + 3000, {"delivered": 1})], watermark=wm))
    ts = wm - late_by
    feed(st_, make_deltas([("provider:p", (ts // 60) * 60, {"bounced": 1})], watermark=wm))
    assert (st_.late_dropped == 0) is counted
    st_.advance_to(wm + 60)  # an event at the watermark itself waits for the clock to pass it
    assert int(st_.window_totals("provider:p", 3600)[0]) == (2 if counted else 1)


@pytest.mark.parametrize(
    ("late_h", "in_own_hour"),
    [
        (3, True),  # an FBL report 3 h after the message, stamped with the send time
        (47, True),  # its hour is still in the 48 h coarse ring
        (60, False),  # counted in the current hour: the send hour has left the coarse ring
    ],
)
def test_late_complaints_are_counted_now_and_in_their_hour(late_h: int, in_own_hour: bool) -> None:
    st_ = RollingStore()
    now = T0 + 3 * 86400 + 1800
    feed(st_, make_deltas([("provider:yahoo", now - 60, {"delivered": 100})], watermark=now))
    sent = now - late_h * 3600
    late = make_deltas(
        [
            ("provider:yahoo", (sent // 60) * 60, {"complained": 2, "delivered": 5}),
            ("campaign:c", (sent // 60) * 60, {"complained": 2, "delivered": 5}),
        ],
        watermark=now,
    )
    feed(st_, late)
    assert st_.late_complaints == 2  # counted once per event (provider rows)
    assert st_.late_dropped == 5  # the late deliveries are dropped as before
    for scope in ("provider:yahoo", "campaign:c"):
        # the fine ring (the detector) sees them in the current bucket
        assert st_.window_totals(scope, 300)[ROLL_COLUMNS.index("complained")] == 2
        r = np.array([st_.rows[scope]])
        col = COARSE_IDX.tolist().index(ROLL_COLUMNS.index("complained"))
        cur_hour = st_.coarse_sum(1, r)[0, col]
        assert cur_hour == (0 if in_own_hour else 2)
        assert st_.coarse_sum(48, r)[0, col] == 2


def test_complaints_beyond_their_lateness_are_dropped_and_counted() -> None:
    st_ = RollingStore(RollingConfig(complaint_lateness_s=6 * 3600))
    now = T0 + 86400
    feed(st_, make_deltas([("provider:yahoo", now - 60, {"delivered": 1})], watermark=now))
    feed(st_, make_deltas([("provider:yahoo", now - 7 * 3600, {"complained": 3})], watermark=now))
    assert st_.late_complaints == 0 and st_.late_dropped == 3


def test_a_complaint_behind_the_clock_counts_when_it_becomes_known() -> None:
    """Within the lateness too: the fine ring (detectors) counts it now, the coarse ring in its
    own hour, so log order (FBL stamped with the send time) and event order detect alike."""
    st_ = RollingStore()
    now = T0 + 2 * 3600 + 120  # two minutes into an hour and a 5-minute bucket
    feed(st_, make_deltas([("provider:yahoo", now - 60, {"delivered": 10})], watermark=now))
    sent = now - 600  # 10 min before: the previous hour, another fine bucket, within lateness
    feed(
        st_,
        make_deltas([("provider:yahoo", sent, {"complained": 1, "delivered": 1})], watermark=now),
    )
    c = ROLL_COLUMNS.index("complained")
    assert st_.late_dropped == 0 and st_.late_complaints == 0
    assert st_.window_totals("provider:yahoo", 60)[c] == 1  # the current bucket
    r = np.array([st_.rows["provider:yahoo"]])
    col = COARSE_IDX.tolist().index(c)
    assert st_.coarse_sum(1, r)[0, col] == 0 and st_.coarse_sum(2, r)[0, col] == 1


def test_a_flood_of_new_scopes_stays_under_the_cap() -> None:
    """Past max_scopes the least recently active scopes go, never one with an open incident nor
    one the delta being added uses; the new counts all land."""
    st_ = RollingStore(RollingConfig(max_scopes=100, initial_capacity=16))
    feed(st_, make_deltas([("provider:google", T0, {"delivered": 5})]))
    st_.frozen[st_.rows["provider:google"]] = True  # an open incident holds it
    for k in range(1, 30):  # 30 ticks of 20 brand-new domains each
        t = T0 + 60 * k
        rows = [(f"domain:d{k}-{i}.example", t, {"delivered": 1}) for i in range(20)]
        feed(st_, make_deltas(rows, watermark=t + 30))
        assert len(st_) <= 100
        for scope, _, _ in rows:  # this tick's scopes are all there with their counts
            assert st_.window_totals(scope, 300)[0] == 1
    assert "provider:google" in st_
    assert st_.evicted_for_room >= 29 * 20 + 1 - 100
    assert "domain:d1-0.example" not in st_ and "domain:d29-0.example" in st_


def test_one_delta_larger_than_the_cap_keeps_its_own_rows() -> None:
    st_ = RollingStore(RollingConfig(max_scopes=10))
    rows = [(f"domain:x{i}.example", T0, {"delivered": 1}) for i in range(25)]
    feed(st_, make_deltas(rows))
    assert all(st_.window_totals(s, 300)[0] == 1 for s, _, _ in rows)
