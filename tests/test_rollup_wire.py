"""streams.worker.wire rollup helpers: wire format and ownership split keep totals exact."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.schema import N_COLUMNS
from models.state.deltas import Deltas
from streams.worker.wire import (
    chunk_deltas,
    decode_deltas,
    decode_message,
    encode_deltas,
    owner_partition,
    split_by_owner,
)

SCOPES = [f"{k}:{v}" for k in ("domain", "provider", "ip") for v in ("a", "b", "c", "d")]


@st.composite
def deltas(draw: st.DrawFn) -> Deltas:
    n = draw(st.integers(min_value=0, max_value=40))
    used = draw(st.lists(st.sampled_from(SCOPES), min_size=1, max_size=len(SCOPES), unique=True))
    idx = np.array([draw(st.integers(0, len(used) - 1)) for _ in range(n)], dtype=np.int32)
    buckets = np.array([60 * draw(st.integers(0, 100)) for _ in range(n)], dtype=np.int64)
    counts = np.array(
        [[draw(st.integers(0, 1000)) for _ in range(N_COLUMNS)] for _ in range(n)], dtype=np.int64
    ).reshape(n, N_COLUMNS)
    replies = [(int(i), f"reply {i}", 3) for i in range(len(used)) if draw(st.booleans())]
    members = [
        (f"ip:{i}", f"pool:{draw(st.sampled_from('xyz'))}") for i in range(draw(st.integers(0, 3)))
    ]
    return Deltas(used, idx, buckets, counts, replies, watermark=12345.5, members=members)


@settings(max_examples=50, deadline=None)
@given(deltas())
def test_roundtrip(d: Deltas) -> None:
    back, src, seq = decode_deltas(encode_deltas(d, "w1/3", 42))
    _, env = decode_message(encode_deltas(d, "w1/3", 42, part=3, idle=True))
    assert (env.part, env.idle) == (3, True)
    assert (src, seq) == ("w1/3", 42)
    assert back.scopes == d.scopes and back.replies == d.replies
    assert back.watermark == d.watermark and back.members == d.members
    np.testing.assert_array_equal(back.scope_idx, d.scope_idx)
    np.testing.assert_array_equal(back.bucket_start, d.bucket_start)
    np.testing.assert_array_equal(back.counts, d.counts)


@settings(max_examples=50, deadline=None)
@given(deltas(), st.integers(1, 8))
def test_split_by_owner_preserves_totals(d: Deltas, partitions: int) -> None:
    parts = split_by_owner(d, partitions)
    for owner, part in parts.items():
        assert all(owner_partition(s, partitions) == owner for s in part.scopes)
    for scope in d.scopes:
        owner = owner_partition(scope, partitions)
        got = parts[owner].totals(scope) if owner in parts else np.zeros(N_COLUMNS, np.int64)
        np.testing.assert_array_equal(got, d.totals(scope))
    assert sum(len(p) for p in parts.values()) == len(d)
    # every owner that gets rows gets the IP -> pool pairs: it may hold both scopes
    assert all(p.members == d.members for p in parts.values())


def test_a_message_without_members_still_decodes() -> None:
    """A rollup message written before ``members`` existed (a rolling upgrade) decodes with
    none."""
    import msgspec

    d = Deltas(
        ["ip:a"], np.zeros(1, np.int32), np.zeros(1, np.int64), np.ones((1, N_COLUMNS), np.int64)
    )
    fields = [d.watermark, d.scopes, d.scope_idx.tobytes(), d.bucket_start.tobytes()]
    old = msgspec.msgpack.encode(["w/0", 7, *fields, d.counts.tobytes(), N_COLUMNS, [], 0, False])
    back, src, seq = decode_deltas(old)
    assert (src, seq, back.members) == ("w/0", 7, [])
    np.testing.assert_array_equal(back.counts, d.counts)


def test_owner_is_stable() -> None:
    assert owner_partition("provider:google", 6) == owner_partition("provider:google", 6)
    assert {owner_partition(s, 6) for s in SCOPES} <= set(range(6))


@settings(max_examples=50, deadline=None)
@given(deltas(), st.integers(min_value=1, max_value=15))
def test_chunks_keep_every_total_and_reply(d: Deltas, max_rows: int) -> None:
    pieces = chunk_deltas(d, max_rows)
    assert all(len(p) <= max_rows for p in pieces) or len(pieces) == 1
    assert sum(len(p) for p in pieces) == len(d)
    for scope in set(d.scopes):
        want = d.totals(scope)
        got = sum((p.totals(scope) for p in pieces), np.zeros(N_COLUMNS, dtype=np.int64))
        np.testing.assert_array_equal(got, want)
    used = set(d.scope_idx.tolist())
    want_replies = sorted((d.scopes[i], t, c) for i, t, c in d.replies if i in used)
    got_replies = sorted((p.scopes[i], t, c) for p in pieces for i, t, c in p.replies)
    assert got_replies == want_replies or len(pieces) == 1
    assert [m for p in pieces for m in p.members] == d.members
