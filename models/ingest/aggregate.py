"""The per-tick half of the ingest Pipeline: pending columns -> ``Deltas``.

Accepted events wait as a handful of integers in :class:`Columns`. Once per tick
:func:`aggregate` turns them into numpy arrays and, in bulk: remembers delivered recipients in
the known-good Bloom filter and looks up the unknown-user bounces, counts per (scope
combination, event-time bucket, column), then fans the counts out to the eight scope
dimensions (docs/architecture.md).
"""

from __future__ import annotations

import numpy as np

from models.ingest.replies import ReplyTable
from models.ingest.scopes import N_DIMS, ScopeTable
from models.schema import (
    CLASS_COLUMN_OFFSET,
    COL,
    EVENT_KIND_CODE,
    N_COLUMNS,
    NO_CLASS,
    REASON_CODE,
)
from models.state.bloom import RotatingBloom
from models.state.deltas import Deltas

_KIND_DELIVERED = EVENT_KIND_CODE["delivered"]
_KIND_BOUNCED = EVENT_KIND_CODE["bounced"]
_KIND_REJECTED = EVENT_KIND_CODE["rejected"]
_REASON_USERUNKNOWN = REASON_CODE["userunknown"]
_REASON_AUTH = REASON_CODE["authfailure"]


class Columns:
    """The accepted events not flushed yet, one list per column, in feed order."""

    __slots__ = ("cls", "combo", "kind", "reason", "reply", "rkey", "ts")

    def split(self, k: int) -> Columns:
        """Keep the first ``k`` rows here; return the others as new columns."""
        tail = Columns()
        for name in self.__slots__:
            col = getattr(self, name)
            getattr(tail, name).extend(col[k:])
            del col[k:]
        return tail

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.ts: list[float] = []
        self.cls: list[int] = []
        self.reason: list[int] = []
        self.rkey: list[int] = []
        self.reply: list[int] = []
        self.combo: list[int] = []


def aggregate(
    c: Columns,
    *,
    bucket_s: int,
    scopes: ScopeTable,
    replies: ReplyTable,
    bloom: RotatingBloom,
    watermark: float,
) -> Deltas:
    """The Deltas of the events in ``c`` (counts per scope, bucket and column, top replies)."""
    n = len(c.ts)
    if n == 0:
        d = Deltas.empty()
        d.watermark = watermark
        return d
    kind = np.asarray(c.kind, dtype=np.int64)
    ts = np.asarray(c.ts, dtype=np.float64)
    cls = np.asarray(c.cls, dtype=np.int64)
    reason = np.asarray(c.reason, dtype=np.int64)
    rkey = np.asarray(c.rkey, dtype=np.uint64)
    reply = np.asarray(c.reply, dtype=np.int64)
    combo = np.asarray(c.combo, dtype=np.int64)
    combo_scopes = scopes.combo_array()
    bucket = (np.floor(ts / bucket_s) * bucket_s).astype(np.int64)

    # known-good memory: remember delivered recipients, then look up unknown-user bounces
    delivered = (kind == _KIND_DELIVERED) & (rkey != 0)
    if delivered.any():
        bloom.add(rkey[delivered])
    uu = (reason == _REASON_USERUNKNOWN) & ((kind == _KIND_BOUNCED) | (kind == _KIND_REJECTED))
    known_good = np.zeros(n, dtype=np.bool_)
    if uu.any():
        idx = np.flatnonzero(uu & (rkey != 0))
        known_good[idx] = bloom.contains(rkey[idx])

    # (event, column) increments
    ev_parts = [np.arange(n)]
    col_parts = [kind]
    has_cls = cls != NO_CLASS
    ev_parts.append(np.flatnonzero(has_cls))
    col_parts.append(cls[has_cls] + CLASS_COLUMN_OFFSET)
    for mask, col in (
        (reason == _REASON_AUTH, COL["auth_failure"]),
        (uu, COL["user_unknown"]),
        (known_good, COL["user_unknown_known_good"]),
    ):
        ev_parts.append(np.flatnonzero(mask))
        col_parts.append(np.full(int(mask.sum()), col, dtype=np.int64))
    ev = np.concatenate(ev_parts)
    col_of = np.concatenate(col_parts)

    # 1) aggregate per (combo, bucket, column): events of one tick share few combos
    b0 = int(bucket.min())
    nb = int((bucket.max() - b0) // bucket_s) + 1
    bidx = (bucket[ev] - b0) // bucket_s
    k1, w1 = np.unique((combo[ev] * nb + bidx) * N_COLUMNS + col_of, return_counts=True)
    col1 = k1 % N_COLUMNS
    cb1 = k1 // N_COLUMNS
    # 2) fan the aggregated triples out to every scope dimension of their combo
    sid = combo_scopes[cb1 // nb].T.ravel()
    rb = np.tile(cb1 % nb, N_DIMS)
    cc = np.tile(col1, N_DIMS)
    ww = np.tile(w1, N_DIMS)
    keep = sid >= 0
    sid, rb, cc, ww = sid[keep], rb[keep], cc[keep], ww[keep]
    uniq, inv = np.unique(sid * nb + rb, return_inverse=True)
    counts = (
        np.bincount(inv * N_COLUMNS + cc, weights=ww, minlength=uniq.shape[0] * N_COLUMNS)
        .astype(np.int64)
        .reshape(uniq.shape[0], N_COLUMNS)
    )
    gsid = uniq // nb
    gbucket = b0 + (uniq % nb) * bucket_s
    local_sids, scope_idx = np.unique(gsid, return_inverse=True)
    names = [scopes.names[int(s)] for s in local_sids]
    top = replies.top(combo_scopes, combo, reply, local_sids)
    return Deltas(
        scopes=names,
        scope_idx=scope_idx.astype(np.int32),
        bucket_start=gbucket.astype(np.int64),
        counts=counts,
        replies=top,
        watermark=watermark,
    )
