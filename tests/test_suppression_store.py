"""streams.worker.suppression_store: the durable per-recipient store of the suppression policy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.act.suppression import RecipientStore
from streams.worker.suppression_store import (
    MAX_VALUE_BYTES,
    RocksRecipientStore,
    StoreTuning,
    restore_plan,
)

REPO = Path(__file__).resolve().parents[1]
#: small sizes: a test store opens fast and uses little memory
SMALL = StoreTuning(cache_bytes=8 << 20, write_buffer_bytes=2 << 20, memtable_bytes=1 << 20)
EDGE = [0, 1, 255, 256, 1 << 56, (1 << 63) + 7, (1 << 64) - 256, (1 << 64) - 1]


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.uint64)


def value(ident: int, tag: int = 0) -> bytes:
    """A 64-byte record that names its ident and a tag."""
    return ident.to_bytes(8, "little") + tag.to_bytes(8, "little") + bytes(48)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksRecipientStore]:
    with RocksRecipientStore(tmp_path / "s", SMALL) as s:
        yield s


def test_it_is_a_recipient_store(store: RocksRecipientStore) -> None:
    s: RecipientStore = store  # the protocol the policy types against
    assert s.get_many(ids(1)) == [None]


def test_round_trip_in_the_order_asked(store: RocksRecipientStore) -> None:
    store.put_many([(i, value(i)) for i in EDGE])
    ask = [EDGE[3], 12345, EDGE[0], EDGE[-1], EDGE[3], EDGE[4]]
    assert store.get_many(np.array(ask, dtype=np.uint64)) == [
        value(EDGE[3]),
        None,
        value(EDGE[0]),
        value(EDGE[-1]),
        value(EDGE[3]),
        value(EDGE[4]),
    ]
    # ascending ident order (big-endian keys), trailing zero bytes kept
    assert list(store.items()) == [(i, value(i)) for i in sorted(EDGE)]


def test_missing_keys_and_empty_inputs(store: RocksRecipientStore) -> None:
    assert store.get_many(np.array([], dtype=np.uint64)) == []
    assert store.get_many(ids(*EDGE)) == [None] * len(EDGE)
    store.put_many([])
    assert list(store.items()) == []
    # any integer array of idents (a view, a signed copy of small values) is accepted
    store.put_many([(7, b"x")])
    assert store.get_many(ids(5, 6, 7, 8)[2:3]) == [b"x"]
    assert store.get_many(np.array([7], dtype=np.int64)) == [b"x"]


def test_values_are_raw_bytes_of_at_most_64(store: RocksRecipientStore) -> None:
    raw = bytes(range(64))
    store.put_many([(1, raw), (2, b""), (3, b"\x80\x04pickle-looking")])
    assert store.get_many(ids(1, 2, 3)) == [raw, b"", b"\x80\x04pickle-looking"]
    with pytest.raises(ValueError, match="at most 64"):
        store.put_many([(4, b"ok"), (5, bytes(MAX_VALUE_BYTES + 1))], offsets={0: 9})
    # the failed batch wrote nothing, not even its first item or its offsets
    assert store.get_many(ids(4, 5)) == [None, None]
    assert store.applied_offsets() is None


def test_deletes_and_last_write_wins_in_a_batch(store: RocksRecipientStore) -> None:
    store.put_many([(1, value(1)), (2, value(2)), (3, value(3))])
    store.put_many([(2, None), (99, None)])  # deleting a missing ident is no error
    assert store.get_many(ids(1, 2, 3, 99)) == [value(1), None, value(3), None]
    store.put_many([(5, value(5, 1)), (5, None), (6, None), (6, value(6, 2)), (1, value(1, 3))])
    assert store.get_many(ids(1, 5, 6)) == [value(1, 3), None, value(6, 2)]
    assert [i for i, _ in store.items()] == [1, 3, 6]


@pytest.mark.parametrize("n", [1, 999, 10_000, 50_001])
def test_batch_sizes(store: RocksRecipientStore, n: int) -> None:
    rng = np.random.default_rng(n)
    idents = np.unique(rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True))
    store.put_many([(i, value(i)) for i in idents.tolist()])
    misses = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    ask = np.concatenate([idents, misses])
    rng.shuffle(ask)
    got = store.get_many(ask)
    present = set(idents.tolist())
    assert got == [value(i) if i in present else None for i in ask.tolist()]
    assert store.count_estimate() == pytest.approx(len(idents), rel=0.1, abs=2)
    assert store.disk_bytes() > 0


def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with RocksRecipientStore(path, SMALL) as s:
        s.put_many([(i, value(i)) for i in EDGE], offsets={0: 41, 3: 7})
        s.put_many([(EDGE[0], None)], offsets={0: 42})
    assert s.closed
    with pytest.raises(RuntimeError, match="closed"):
        s.get_many(ids(1))
    with RocksRecipientStore(path, SMALL) as s:
        assert list(s.items()) == [(i, value(i)) for i in sorted(EDGE[1:])]
        assert s.applied_offsets() == {0: 42, 3: 7}
        s.flush()
        s.compact()
        assert s.count_estimate() == len(EDGE) - 1
    with RocksRecipientStore(path, SMALL) as s:
        assert s.get_many(ids(*EDGE)) == [None] + [value(i) for i in EDGE[1:]]


def test_one_writer_per_directory(tmp_path: Path) -> None:
    with RocksRecipientStore(tmp_path / "s", SMALL), pytest.raises(Exception, match="lock"):
        RocksRecipientStore(tmp_path / "s", SMALL)


# -- crashes -----------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from streams.worker.suppression_store import RocksRecipientStore, StoreTuning
    s = RocksRecipientStore({path!r}, StoreTuning(cache_bytes=8 << 20,
        write_buffer_bytes=2 << 20, memtable_bytes=1 << 20))
    k = 0
    while {batches} < 0 or k < {batches}:
        rec = k.to_bytes(8, "little") * 8
        items = [(k * 1000 + j, rec) for j in range(1000)]
        if k:
            items.append(((k - 1) * 1000, None))  # each batch deletes one of the previous one
        s.put_many(items, offsets={{0: k, 1: 10 * k}})
        print(k, flush=True)
        k += 1
    print("done", flush=True)
    import time
    time.sleep(600)
    """
)


def _writer(path: Path, batches: int) -> subprocess.Popen[str]:
    code = _WRITER.format(repo=str(REPO), path=str(path), batches=batches)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, bufsize=1
    )


def _check_batches(s: RocksRecipientStore, upto: int) -> None:
    """Batches 0..upto are there, whole (with their deletes), and nothing of later ones."""
    for k in range(upto + 2):
        got = s.get_many(np.arange(k * 1000, k * 1000 + 1000, dtype=np.uint64))
        rec = k.to_bytes(8, "little") * 8
        if k <= upto:
            first = None if k < upto else rec  # the next batch deleted the first ident
            assert got == [first] + [rec] * 999, f"batch {k} of {upto}"
        else:
            assert got == [None] * 1000, f"batch {k} past the marker {upto}"


def test_kill_9_after_put_many_returned_loses_nothing(tmp_path: Path) -> None:
    """The process is SIGKILLed after put_many returned: no flush, no close, the batches are
    only in the WAL; all of them and their offsets are there at the next open."""
    path = tmp_path / "s"
    proc = _writer(path, batches=25)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "done":
            break
    else:
        pytest.fail(f"writer exited early: {proc.wait()}")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert any(p.suffix == ".log" and p.stat().st_size > 0 for p in path.iterdir())
    with RocksRecipientStore(path, SMALL) as s:
        assert s.applied_offsets() == {0: 24, 1: 240}
        _check_batches(s, 24)


def test_offsets_move_atomically_with_the_data_under_kill_9(tmp_path: Path) -> None:
    """Killed at a random moment while writing: the marker names exactly the last batch
    whose data is there (each batch and its offsets are one WriteBatch)."""
    rng = np.random.default_rng(int(time.time()))
    for _ in range(3):
        path = tmp_path / f"s{_}"
        proc = _writer(path, batches=-1)
        assert proc.stdout is not None
        target = int(rng.integers(5, 60))
        for line in proc.stdout:
            if int(line) >= target:
                break
        time.sleep(float(rng.uniform(0, 0.02)))  # somewhere inside a later put_many
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with RocksRecipientStore(path, SMALL) as s:
            off = s.applied_offsets()
            assert off is not None and off[0] >= target and off[1] == 10 * off[0]
            _check_batches(s, off[0])


# -- offsets and restore ------------------------------------------------------------------


def test_offsets_marker(store: RocksRecipientStore, tmp_path: Path) -> None:
    assert store.applied_offsets() is None and store.marker_written_at() is None
    store.put_many([(1, b"a")], offsets={0: 5})
    store.put_many([(2, b"b")], offsets={1: 3})
    store.put_many([(3, b"c")])  # no offsets: the marker stays
    assert store.applied_offsets() == {0: 5, 1: 3}
    store.set_applied_offsets({0: 6})
    assert store.applied_offsets() == {0: 6, 1: 3}
    store.set_applied_offsets({2: 0}, replace=True)
    assert store.applied_offsets() == {2: 0}
    written = store.marker_written_at()
    assert written is not None and abs(written - time.time()) < 60
    time.sleep(0.01)
    store.touch_marker()  # a caught-up worker refreshes the marker's time, not its offsets
    assert store.applied_offsets() == {2: 0}
    touched = store.marker_written_at()
    assert touched is not None and touched > written
    store.clear_applied_offsets()
    assert store.applied_offsets() is None
    store.touch_marker()  # no marker: nothing to refresh
    assert store.applied_offsets() is None
    # the marker is not a recipient: items() has only the records
    assert [i for i, _ in store.items()] == [1, 2, 3]


def test_rebuild_replaces_everything(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with RocksRecipientStore(path, SMALL) as s:
        s.put_many([(i, value(i)) for i in range(100)], offsets={0: 99})
        records = [(5, value(5, 1)), (500, value(500)), (5, None), (7, value(7, 2))]
        assert s.rebuild(iter(records), {0: 3, 1: -1}, batch=2) == 4
        assert list(s.items()) == [(7, value(7, 2)), (500, value(500))]
        assert s.applied_offsets() == {0: 3, 1: -1}
    with RocksRecipientStore(path, SMALL) as s:
        assert list(s.items()) == [(7, value(7, 2)), (500, value(500))]
        assert s.applied_offsets() == {0: 3, 1: -1}


def test_a_rebuild_that_fails_half_way_leaves_no_marker(tmp_path: Path) -> None:
    path = tmp_path / "s"

    def records() -> Iterator[tuple[int, bytes | None]]:
        for i in range(25_000):
            yield i, value(i)
        raise ConnectionError("broker went away")

    with RocksRecipientStore(path, SMALL) as s:
        s.put_many([(1, b"old")], offsets={0: 1})
        with pytest.raises(ConnectionError):
            s.rebuild(records(), {0: 25_000})
        assert s.applied_offsets() is None
    with RocksRecipientStore(path, SMALL) as s:
        assert s.applied_offsets() is None  # the next start rebuilds
        assert restore_plan(s.applied_offsets(), {0: (0, 10)}).rebuild


def test_restore_plan() -> None:
    bounds = {0: (0, 100), 1: (20, 20), 2: (5, 50)}
    up = restore_plan({0: 99, 1: 19, 2: 49}, bounds)
    assert not up.rebuild and up.start == {} and up.reason == "up to date"
    catch = restore_plan({0: 40, 1: 19, 2: 4}, bounds, marker_age_s=10.0)
    assert not catch.rebuild and catch.start == {0: 41, 2: 5}
    for applied, age, why in [
        (None, None, "no marker"),
        ({0: 99, 1: 19}, None, "assigned are [0, 1, 2]"),
        ({0: 99, 1: 19, 2: 49, 3: 0}, None, "covers partitions [0, 1, 2, 3]"),
        ({0: 100, 1: 19, 2: 49}, None, "past its end"),  # topic deleted and re-created
        ({0: 99, 1: 19, 2: 2}, None, "deleted unread"),
        ({0: 99, 1: 19, 2: 49}, 2 * 86_400.0, "old"),
    ]:
        plan = restore_plan(applied, bounds, marker_age_s=age)
        assert plan.rebuild and why in plan.reason, (applied, plan)
        assert plan.start == {0: 0, 2: 5}  # every non-empty partition from its start


# -- against a model ----------------------------------------------------------------------

_ident = st.one_of(st.sampled_from(EDGE), st.integers(0, 40), st.integers(0, 2**64 - 1))
_value = st.one_of(st.none(), st.binary(max_size=MAX_VALUE_BYTES))
_op = st.one_of(
    st.tuples(st.just("put"), st.lists(st.tuples(_ident, _value), max_size=30)),
    st.tuples(st.just("reopen"), st.none()),
    st.tuples(st.just("flush"), st.none()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_op, max_size=12), st.lists(_ident, max_size=20))
def test_behaves_like_a_dict(ops: list[tuple[str, object]], probes: list[int]) -> None:
    model: dict[int, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s")
        s = RocksRecipientStore(path, SMALL)
        try:
            for k, (op, arg) in enumerate(ops):
                if op == "put":
                    assert isinstance(arg, list)
                    s.put_many(arg, offsets={0: k})
                    for ident, v in arg:
                        if v is None:
                            model.pop(ident, None)
                        else:
                            model[ident] = v
                elif op == "reopen":
                    s.close()
                    s = RocksRecipientStore(path, SMALL)
                else:
                    s.flush()
                ask = sorted(model)[:10] + probes
                assert s.get_many(np.array(ask, dtype=np.uint64)) == [model.get(i) for i in ask]
            assert list(s.items()) == sorted(model.items())
        finally:
            s.close()
